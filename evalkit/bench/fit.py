"""Does a finished job under-fit its training views? Decodes the job's bitstream (any method) and
scores the decoded model's renders of the training and the test views:

    python -m evalkit.bench.fit RECORD.json [RECORD.json ...] --data-root DATA [--every 8] [--test-every 1] [--full-only]

For the training views (every ``--every``-th, in time order) and the test views (the job's
evaluation split: val for a run with ``--eval-split val``) it prints the mean PSNR. A train PSNR
far under the scene's other methods' says the model under-fits (capacity or optimisation), not
that it generalises poorly to the test cameras. For an adc-gs job also what each
part of the deformation (Eqs. 2-5) adds, on the training views: ``coarse`` (F_varpi's Delta O and
Delta C zero), ``position`` (the anchor's Delta X alone) and ``canonical`` (no deformation).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from evalkit.codec.container import Bitstream
from evalkit.methods.adc_gs import ADCGSDecoded
from evalkit.methods.adc_gs.model import AnchorDeformation, deformed, flat

PARTS = ("full", "coarse", "position", "canonical")


def _zero(x: torch.Tensor | None) -> torch.Tensor | None:
    return None if x is None else torch.zeros_like(x)


@torch.no_grad()
def part_primitives(decoded: ADCGSDecoded, t: float, part: str) -> tuple[torch.Tensor, ...]:
    """Flat primitives of frame t with only ``part`` of the deformation (see ``PARTS``)."""
    fr = decoded.frame_renderer
    model, can = fr.model, fr.canonical
    if part == "canonical" or model.cfg.deformation == "none":
        return flat(can)
    d = model.deform(model.xyz, fr.feats["fv"], t)
    if part == "coarse":
        d = AnchorDeformation(d.dxyz, d.dlog_scale, d.dquat, d.dcolor, _zero(d.dopacity), _zero(d.dcolor_k),
                              _zero(d.dxyz_k))
    elif part == "position":
        d = AnchorDeformation(d.dxyz, _zero(d.dlog_scale), _zero(d.dquat), _zero(d.dcolor), _zero(d.dopacity),
                              _zero(d.dcolor_k), _zero(d.dxyz_k))
    elif part != "full":
        raise ValueError(f"unknown deformation part {part!r} (one of {PARTS})")
    return flat(deformed(can, d))


def render_part(decoded: ADCGSDecoded, camera, t: float, part: str) -> torch.Tensor:
    return decoded.frame_renderer.draw(part_primitives(decoded, t, part), camera)


def main() -> None:
    from evalkit.codec.container import BitstreamError
    from evalkit.methods.base import ContractError
    from evalkit.methods.registry import UnknownMethod, get_method
    from evalkit.results import RecordError, read_record
    from evalkit.views import ViewsError, record_scene, image_u8, psnr_u8

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("records", type=Path, nargs="+")
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--every", type=int, default=8, help="every k-th training view, in time order")
    ap.add_argument("--test-every", type=int, default=1,
                    help="every k-th test view, in time order (default all; the printout says how many)")
    ap.add_argument("--full-only", action="store_true",
                    help="adc-gs: score only the full model, not its parts (a quicker bench on CPU)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    for path in args.records:
        bits_path = path.with_suffix(".evk")
        try:
            record = read_record(path)
            scene = record_scene(record, args.data_root)
            bits = Bitstream.read(bits_path)
            decoded = get_method(bits.header.get("method", "?")).decode(bits, dev, str(bits_path))
        except (RecordError, ViewsError, BitstreamError, UnknownMethod, ContractError) as exc:
            raise SystemExit(f"error: {exc}") from None
        parts = PARTS if isinstance(decoded, ADCGSDecoded) and not args.full_only else PARTS[:1]
        train = sorted(scene.train, key=lambda f: f.time)[::max(args.every, 1)]
        scores: dict[str, list[float]] = {p: [] for p in parts}
        for f in train:
            gt = image_u8(torch.from_numpy(f.load()))
            for p in parts:
                img = decoded.render(f.camera, f.time) if p == "full" else render_part(decoded, f.camera, f.time, p)
                scores[p].append(psnr_u8(image_u8(img.float().cpu()), gt))
        test = [psnr_u8(image_u8(decoded.render(f.camera, f.time).float().cpu()), image_u8(torch.from_numpy(f.load())))
                for f in sorted(scene.test, key=lambda f: f.time)[::max(args.test_every, 1)]]
        extra = ", ".join(f"{p} {np.mean(scores[p]):.3f}" for p in parts[1:])
        extra = f" [without parts of the deformation: {extra}]" if extra else ""
        print(f"{path}: train ({len(train)} views) {np.mean(scores['full']):.3f} dB{extra}; "
              f"{record.eval_split or 'test'} ({len(test)} views) {np.mean(test):.3f} dB")
        print("  train PSNR by time: " + " ".join(f"{f.time:.2f}:{s:.1f}" for f, s in zip(train, scores["full"])))


if __name__ == "__main__":
    main()
