"""How far apart an anchor's K primitives sit in a decoded ADC-GS bitstream (canonical, Eq. 1).

    python -m evalkit.bench.adc_gs_anchors RESULT.evk [RESULT.evk ...]

For each anchor: the largest distance of a primitive's mean from the mean of its anchor's K means,
divided by the median over those K of a primitive's largest scale. Near 0, the K primitives sit on
top of each other and act nearly as one; above 1, they are apart. Also how many anchors have f_g
equal across their K primitives (F_theta then gives them equal primitives).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from evalkit.codec.container import Bitstream
from evalkit.methods.adc_gs import ADCGS
from evalkit.methods.adc_gs.model import ADCModel


@torch.no_grad()
def primitive_spread(model: ADCModel) -> torch.Tensor:
    """(N,) per anchor: max distance of a primitive from the anchor's primitive centroid over the
    median largest scale of its primitives."""
    prim = model.canonical()
    spread = (prim.means - prim.means.mean(1, keepdim=True)).norm(dim=-1).amax(1)
    return spread / prim.scales.amax(-1).median(1).values


@torch.no_grad()
def equal_fg_anchors(model: ADCModel) -> int:
    """Anchors whose K f_g rows are all equal."""
    fg = model.fg
    return int((fg == fg[:, :1]).all(dim=(1, 2)).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bitstreams", type=Path, nargs="+")
    args = ap.parse_args()
    for path in args.bitstreams:
        model = ADCGS().decode(Bitstream.read(path), torch.device("cpu"), str(path)).model
        s = primitive_spread(model)
        q = torch.quantile(s, torch.tensor([0.1, 0.5, 0.9]))
        print(f"{path}: {model.num_anchors} anchors x {model.cfg.k}; spread / primitive scale: "
              f"p10 {q[0]:.3f}, median {q[1]:.3f}, p90 {q[2]:.3f}; anchors with equal f_g rows: "
              f"{equal_fg_anchors(model)}")


if __name__ == "__main__":
    main()
