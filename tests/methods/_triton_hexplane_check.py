"""Run with TRITON_INTERPRET=1 (CPU): the fused Triton HexPlane kernels against the PyTorch path
(``HexPlane._product``), forward and all gradients, points on and beyond the borders included.
Used by test_hexplane_fused.py in a subprocess (the variable must be set before Triton compiles
anything). Exits 0 when they agree."""
import itertools
import sys
import warnings

import torch

from evalkit.models.fourdgs import hexplane_triton
from evalkit.models.fourdgs.hexplane import HexPlane, HexPlaneConfig

torch.manual_seed(0)


def coords_with_borders(n: int) -> torch.Tensor:
    """Random points plus points exactly on grid lines / borders and beyond them (x has W - 1 = 4 at
    scale 1, so -0.5, 0, 0.5 are grid lines in every formula; t is the time-grid coordinate)."""
    c = torch.rand(n, 4) * 2.6 - 1.3
    special = torch.tensor([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
    grid = torch.tensor(list(itertools.product(special, special[::2], special[1::2], special[::3])))
    return torch.cat([c, grid])


def compare(name: str, out, ref, grads, ref_grads, atol: float = 1e-5) -> bool:
    out, ref = out.detach(), ref.detach()
    errs = [float((out - ref).abs().max())] + [float((g - r).abs().max()) for g, r in zip(grads, ref_grads)]
    ok = torch.allclose(out, ref, atol=atol, rtol=1e-5)
    ok &= all(torch.allclose(g, r, atol=10 * atol, rtol=1e-4) for g, r in zip(grads, ref_grads))
    print(name, "ok" if ok else "MISMATCH", "max errors (out, grads...):", [f"{e:.1e}" for e in errs])
    return ok


ok = True
# (C, resolution, multires): 2 scales with differently shaped space planes (the per-plane branch of
# _product); C not a power of two with stacked planes; one scale, time axis of a single cell row.
for C, res, multires in ((4, [5, 6, 7, 4], [1, 2]), (6, [5, 5, 5, 9], [1, 3]), (16, [5, 4, 3, 1], [1])):
    grid = HexPlane(HexPlaneConfig(feature_dim=C, resolution=res, multires=multires), torch.zeros(2, 3))
    scales = [[torch.rand(p.shape) * 3 - 1.5 for p in s] for s in grid.grids]
    scales[0][1][0, 1] = 0.0  # zero features: the product rule must not divide by them
    scales[-1][4][0, :, 1:3] = 0.0
    leaves = [p.requires_grad_(True) for s in scales for p in s]
    coords = coords_with_borders(300).requires_grad_(True)
    ref = torch.cat([grid._product(s, coords, grid._space_pairs, grid._time_pairs) for s in scales], 1)
    gout = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, [coords, *leaves], gout)
    # non-leaf planes, as QuantizedHexPlane.sampled_planes returns
    out = hexplane_triton.sample(coords, [[p * 1.0 for p in s] for s in scales])
    grads = torch.autograd.grad(out, [coords, *leaves], gout)
    ok &= compare(f"kernels C={C} res={res} multires={multires}", out, ref, grads, ref_grads)
    # PyTorch's border semantics: no coordinate gradient on or beyond the border (both sides)
    clipped = coords.detach().abs() >= 1.0
    assert hexplane_triton.failed is None  # the kernels ran (sample() raises on a kernel error)
    if not ((grads[0][clipped] == 0).all() and (ref_grads[0][clipped] == 0).all()):
        print("nonzero coordinate gradient on or beyond a border")
        ok = False

# The module end to end: backend "triton" (the interpreter on CPU) against "torch".
grid = HexPlane(HexPlaneConfig(feature_dim=3, resolution=[6, 5, 4, 7], multires=[1, 2]),
                torch.tensor([[-1.0, 0.0, 2.0], [3.0, 1.0, 4.0]]))
with torch.no_grad():
    for p in grid.parameters():
        p.uniform_(-1.0, 1.5)
xyz = (torch.rand(200, 3) * 1.4 - 0.2) * (grid.aabb[1] - grid.aabb[0]) + grid.aabb[0]
xyz.requires_grad_(True)
t = torch.rand(200)
results = []
for backend in ("torch", "triton"):
    HexPlane.backend = backend
    feats = grid(xyz, t)
    results.append((feats.detach(), torch.autograd.grad(feats, [xyz, *grid.parameters()], torch.ones_like(feats))))
HexPlane.backend = "auto"
ok &= compare("HexPlane module", results[1][0], results[0][0], results[1][1], results[0][1])
assert hexplane_triton.failed is None


# A failing backward kernel (compile error, say): one warning, the same gradients from PyTorch.
def broken(*_):
    raise RuntimeError("planted")


hexplane_triton._backward = broken
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = hexplane_triton.sample(coords, scales, fallback=True)
    grads = torch.autograd.grad(out, [coords, *leaves], gout)
ok &= compare("backward fallback", out, ref, grads, ref_grads)
if not (hexplane_triton.failed and "planted" in hexplane_triton.failed and len(caught) == 1):
    print("no single warning for the backward fallback", hexplane_triton.failed, [str(w.message) for w in caught])
    ok = False
if not ok:
    sys.exit(1)
print("triton hexplane agrees")
