"""Input validation and backend selection of evalkit.render.rasterize."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.data.scene import Camera
from evalkit.render import available_backends, rasterize
from evalkit.render.api import GsplatUnavailable, camera_tensors, select_backend
from evalkit.render.synthetic import random_gaussians

K = np.array([[20.0, 0, 8.0], [0, 20.0, 8.0], [0, 0, 1.0]])
VIEW = np.eye(4)
VIEW[2, 3] = 3.0


def _args(n=4, **over):
    g = random_gaussians(n, seed=0)
    a = dict(means=g.means, quats=g.quats, scales=g.scales, opacities=g.opacities, colors=g.colors,
             viewmat=VIEW, K=K, width=16, height=16)
    a.update(over)
    return a


@pytest.mark.parametrize("over, match", [
    (dict(opacities=torch.rand(4, 1)), r"opacities must be \(4,\)"),
    (dict(quats=torch.rand(4, 3)), r"quats must be \(4, 4\)"),
    (dict(colors=torch.rand(4, 4, 3)), r"colors must be \(4, D\)"),
    (dict(scales=torch.rand(4, 3, dtype=torch.float64)), "dtype"),
    (dict(K=np.array([[20.0, 0.5, 8.0], [0, 20.0, 8.0], [0, 0, 1.0]])), "no skew"),
    (dict(viewmat=np.eye(3)), r"viewmat must be \(4, 4\)"),
    (dict(width=0), "positive integers"),
])
def test_bad_inputs_raise_clear_errors(over, match):
    with pytest.raises(ValueError, match=match):
        rasterize(**_args(**over))


def test_sh_shape_checked_and_background_shape_checked():
    with pytest.raises(ValueError, match=r"K>=4"):
        rasterize(**_args(colors=torch.rand(4, 1, 3)), sh_degree=1)
    with pytest.raises(ValueError, match=r"background must be \(3,\)"):
        rasterize(**_args(), background=torch.zeros(4))


def test_cpu_uses_torch_and_gsplat_request_on_cpu_is_refused():
    out = rasterize(**_args(), backend="auto")
    assert out.backend == "torch" and out.image.shape == (16, 16, 3) and out.alpha.shape == (16, 16, 1)
    assert "torch" in available_backends()
    assert select_backend("auto", torch.device("cpu"), torch.float32) == "torch"
    with pytest.raises(GsplatUnavailable, match="CUDA"):
        rasterize(**_args(), backend="gsplat")
    with pytest.raises(ValueError, match="backend must be"):
        rasterize(**_args(), backend="cuda")


def test_info_dict_has_gsplat_fields():
    a = _args()
    for k in ("means", "quats", "scales", "opacities", "colors"):
        a[k] = a[k].clone().requires_grad_(True)
    out = rasterize(**a)
    info = out.info
    assert info["means2d"].shape == (1, 4, 2) and info["radii"].shape == (1, 4, 2)
    assert info["radii"].dtype == torch.int32 and info["gaussian_ids"] is None
    assert (info["width"], info["height"], info["n_cameras"]) == (16, 16, 1)
    packed = rasterize(**a, packed=True).info
    nnz = int((info["radii"] > 0).all(-1).sum())
    assert packed["means2d"].shape == (nnz, 2) and packed["gaussian_ids"].dtype == torch.int64
    assert torch.equal(packed["radii"], info["radii"][0, packed["gaussian_ids"]])


def test_camera_tensors_roundtrip():
    cam = Camera(K=K, w2c=VIEW, width=16, height=16)
    vm, kk = camera_tensors(cam, dtype=torch.float64)
    assert np.array_equal(vm.numpy(), VIEW) and np.array_equal(kk.numpy(), K)
    out_cam = rasterize(**_args(viewmat=vm.float(), K=kk.float()))
    out_np = rasterize(**_args())
    assert torch.equal(out_cam.image, out_np.image)


def _views_args(**over):
    """Two views, each of its own 4 Gaussians (as a deformed scene at two times)."""
    from evalkit.render.synthetic import random_gaussians as rg
    g0, g1 = rg(4, seed=0), rg(4, seed=1)
    view2 = VIEW.copy()
    view2[0, 3] = 0.3
    a = dict(means=torch.stack([g0.means, g1.means]), quats=torch.stack([g0.quats, g1.quats]),
             scales=torch.stack([g0.scales, g1.scales]), opacities=torch.stack([g0.opacities, g1.opacities]),
             colors=torch.stack([g0.colors, g1.colors]),
             viewmats=torch.tensor(np.stack([VIEW, view2]), dtype=torch.float32),
             Ks=torch.tensor(np.stack([K, K]), dtype=torch.float32), width=16, height=16,
             background=torch.tensor([1.0, 0.5, 0.0]))
    a.update(over)
    return a


def test_rasterize_views_gives_each_views_rasterize():
    from evalkit.render.api import rasterize_views
    a = _views_args()
    out = rasterize_views(**a, backend="torch")
    assert out.images.shape == (2, 16, 16, 3) and out.alphas.shape == (2, 16, 16, 1)
    for b in range(2):
        one = rasterize(a["means"][b], a["quats"][b], a["scales"][b], a["opacities"][b], a["colors"][b],
                        a["viewmats"][b], a["Ks"][b], 16, 16, background=a["background"], backend="torch")
        assert torch.equal(out.images[b], one.image)
    assert not torch.equal(out.images[0], out.images[1])


@pytest.mark.parametrize("over, match", [
    (dict(Ks=torch.eye(3)[None].repeat(3, 1, 1)), r"K must be \(2, 3, 3\)"),
    (dict(opacities=torch.rand(2, 5)), r"opacities must be \(2, 4\)"),
    (dict(colors=torch.rand(2, 4, 16, 3)), r"colors must be \(2, 4, D\)"),
    (dict(Ks=torch.tensor([[[20.0, 0.5, 8.0], [0, 20.0, 8.0], [0, 0, 1.0]]] * 2)), "no skew"),
    (dict(background=torch.ones(4)), r"background must be \(3,\)"),
    (dict(height=0), "positive integers"),
])
def test_rasterize_views_bad_inputs_raise_clear_errors(over, match):
    from evalkit.render.api import rasterize_views
    with pytest.raises(ValueError, match=match):
        rasterize_views(**_views_args(**over), backend="torch")
