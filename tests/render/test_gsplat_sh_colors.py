"""The gsplat backend's own SH colour step (``_sh_colors``: camera centre -R^T t, no torch.inverse)."""
from __future__ import annotations

import math

import pytest
import torch

from evalkit.render.sh import eval_sh, sh_to_color


def _rigid(seed: int) -> torch.Tensor:
    """A world-to-camera matrix: a random rotation and translation."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.linalg.det(q))
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = q, torch.randn(3, generator=g, dtype=torch.float64) * 3
    return m


@pytest.mark.parametrize("batched", [False, True])
def test_colours_use_the_camera_centre(monkeypatch, batched):
    """With gsplat's SH kernel replaced by the PyTorch SH (same definition), the colours equal
    max(SH(mean - centre) + 0.5, 0) with the centre from a full matrix inverse, for one camera and
    for a batch of views with their own Gaussians and cameras."""
    gsplat = pytest.importorskip("gsplat")
    from evalkit.render.gsplat_backend import _sh_colors

    monkeypatch.setattr(gsplat, "spherical_harmonics", lambda deg, dirs, coeffs: eval_sh(deg, dirs, coeffs))
    g = torch.Generator().manual_seed(0)
    b, n = (3 if batched else 1), 50
    means = torch.randn(b, n, 3, generator=g, dtype=torch.float64)
    coeffs = torch.randn(b, n, 16, 3, generator=g, dtype=torch.float64)
    views = torch.stack([_rigid(i) for i in range(b)])
    if batched:
        got = _sh_colors(means, coeffs, views[:, None], 3)  # (B, 1, N, 3)
    else:
        got = _sh_colors(means[0], coeffs[0], views, 3)[None]  # (1, N, 3) -> (1, 1, N, 3)
    assert got.shape == (b, 1, n, 3)
    for i in range(b):
        centre = torch.linalg.inv(views[i])[:3, 3]
        want = sh_to_color(3, means[i] - centre, coeffs[i])
        torch.testing.assert_close(got[i, 0], want, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
def test_same_images_and_gradients_as_gsplats_own_sh_step():
    """On CUDA: ``rasterize_gsplat`` (colours from ``_sh_colors``) against gsplat's
    ``rasterization(sh_degree=3)``, which inverts the view matrix and masks hidden Gaussians:
    the same image and the same gradients for every input."""
    from evalkit.render.gsplat_backend import gsplat_status, rasterize_gsplat

    ok, reason = gsplat_status()
    if not ok:
        pytest.fail(f"CUDA is present but gsplat cannot run: {reason}")
    from gsplat import rasterization

    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(1)
    n, res = 3000, 96
    raw = {
        "means": torch.randn(n, 3, generator=g) * 1.2,  # some outside the view: masked by gsplat
        "quats": torch.randn(n, 4, generator=g),
        "scales": torch.rand(n, 3, generator=g) * 0.08 + 0.01,
        "opacities": torch.rand(n, generator=g) * 0.9 + 0.05,
        "colors": torch.randn(n, 16, 3, generator=g) * 0.4,
    }
    viewmat = _rigid(5).float()
    viewmat[:3, 3] = torch.tensor([0.1, -0.2, 4.0])  # the scene in front of the camera
    f = res / (2 * math.tan(math.radians(25)))
    K = torch.tensor([[f, 0, res / 2], [0, f, res / 2], [0, 0, 1]], dtype=torch.float32)
    bg = torch.tensor([1.0, 1.0, 1.0])

    def run(ours: bool):
        x = {k: v.to(dev).requires_grad_() for k, v in raw.items()}
        if ours:
            img = rasterize_gsplat(x["means"], x["quats"], x["scales"], x["opacities"], x["colors"],
                                   viewmat.to(dev), K.to(dev), res, res, sh_degree=3, background=bg.to(dev)).image
        else:
            img = rasterization(x["means"], x["quats"], x["scales"], x["opacities"], x["colors"],
                                viewmat.to(dev)[None], K.to(dev)[None], res, res, sh_degree=3, packed=False,
                                backgrounds=bg.to(dev)[None])[0][0]
        w = torch.linspace(0.5, 1.5, img.numel(), device=dev).reshape(img.shape)
        (img * w).sum().backward()
        return img.detach(), {k: v.grad for k, v in x.items()}

    img_a, grads_a = run(True)
    img_b, grads_b = run(False)
    torch.testing.assert_close(img_a, img_b, rtol=1e-5, atol=1e-5)
    for k in raw:
        torch.testing.assert_close(grads_a[k], grads_b[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    assert grads_a["colors"].abs().sum() > 0
