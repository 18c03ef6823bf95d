"""Export to the standard 3DGS PLY layout read by common splat viewers.

Properties: x y z nx ny nz f_dc_0..2 f_rest_0..(3*(K-1)-1) opacity scale_0..2 rot_0..3, with
f_rest channel-major (all red coefficients, then green, then blue) as 3DGS writes them.
Opacity is the logit and scales are logs, as in 3DGS files.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from evalkit.codec.container import atomic_write_bytes
from evalkit.models.fourdgs.model import FourDGSModel


def gaussians_to_ply_bytes(means, log_scales, quats, opacity_logits, sh) -> bytes:
    n = means.shape[0]
    a = lambda t: t.detach().float().cpu().numpy()
    sh = a(sh)  # (N, K, 3)
    f_dc = sh[:, 0, :]
    f_rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, -1)
    cols = [a(means), np.zeros((n, 3), np.float32), f_dc, f_rest, a(opacity_logits).reshape(n, 1),
            a(log_scales), a(quats)]
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(f_rest.shape[1])] + ["opacity"]
             + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])
    data = np.concatenate(cols, axis=1).astype(np.float32)
    rec = np.empty(n, dtype=[(nm, "f4") for nm in names])
    for i, nm in enumerate(names):
        rec[nm] = data[:, i]
    import io
    buf = io.BytesIO()
    PlyData([PlyElement.describe(rec, "vertex")]).write(buf)
    return buf.getvalue()


@torch.no_grad()
def export_ply(model: FourDGSModel, path: Path, t: float | None = None) -> Path:
    """Write the canonical Gaussians (t=None) or the Gaussians deformed to time t."""
    means, quats, log_scales, opa, sh = model.deformed(0.0 if t is None else t, deform=t is not None)
    atomic_write_bytes(Path(path), gaussians_to_ply_bytes(means, log_scales, quats, opa, sh))
    return Path(path)
