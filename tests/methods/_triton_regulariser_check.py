"""Run with TRITON_INTERPRET=1 (CPU): the fused regulariser kernel against autograd of
``HexPlane.regulariser`` (value and every plane gradient). Used by test_plane_regulariser.py in a
subprocess (the variable must be set before Triton compiles anything). Exits 0 when they agree."""
import sys

import torch

from evalkit.models.fourdgs.hexplane import HexPlane, HexPlaneConfig
from evalkit.models.fourdgs.plane_regulariser import PlaneRegulariser

torch.manual_seed(0)
ok = True
# time planes of another height than the space planes; 3 rows (one second difference); C = 5
for C, res, multires in ((3, [6, 7, 5, 4], [1, 2]), (5, [4, 3, 8, 3], [1, 3]), (2, [9, 9, 9, 12], [2])):
    hp = HexPlane(HexPlaneConfig(feature_dim=C, resolution=res, multires=multires),
                  torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]))
    with torch.no_grad():
        for p in hp.planes():
            p.normal_(1.0, 0.3)
        hp.planes()[2][0, 0, 1, :2] = 1.0  # |1 - p| at its kink: gradient 0, as torch's abs
    weights = (1e-2, 3e-2, 5e-2)
    value = hp.regulariser(*weights)
    want = torch.autograd.grad(value, hp.planes())
    reg = PlaneRegulariser(hp, *weights, backend="triton")
    got_value, got = reg.values()
    errs = [float((got_value - value.detach()).abs())] + [float((g - w).abs().max()) for g, w in zip(got, want)]
    good = torch.allclose(got_value, value.detach(), rtol=1e-5, atol=1e-9)
    good &= all(torch.allclose(g, w, rtol=1e-4, atol=1e-9) for g, w in zip(got, want))
    print(C, res, multires, "max errors", max(errs), "ok" if good else "MISMATCH")
    ok &= bool(good)
if ok:
    print("triton regulariser agrees")
sys.exit(0 if ok else 1)
