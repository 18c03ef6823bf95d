"""Front-to-back compositing, early termination, thresholds and background."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.render import rasterize
from evalkit.render.torch_reference import ALPHA_THRESHOLD

F64 = torch.float64
W, H = 33, 33
FX = FY = 40.0
CX = CY = 16.5  # the optical axis hits the centre of pixel (16, 16)
K = np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1.0]])
BG = torch.tensor([0.2, 0.3, 0.9], dtype=F64)


def _scene(depths, scales, opacities, colors):
    """Isotropic Gaussians on the optical axis of the identity camera."""
    n = len(depths)
    means = torch.tensor([[0.0, 0.0, z] for z in depths], dtype=F64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64)
    return (means, quats, torch.tensor(scales, dtype=F64)[:, None].repeat(1, 3),
            torch.tensor(opacities, dtype=F64), torch.tensor(colors, dtype=F64))


def _analytic_alpha(z, s, opacity):
    """Alpha image of one isotropic Gaussian on the axis: 2D variance (f s / z)^2 + 0.3."""
    u, v = CX, CY
    var_x, var_y = (FX * s / z) ** 2 + 0.3, (FY * s / z) ** 2 + 0.3
    rows, cols = np.mgrid[0:H, 0:W]
    a = opacity * np.exp(-0.5 * ((cols + 0.5 - u) ** 2 / var_x + (rows + 0.5 - v) ** 2 / var_y))
    a = np.minimum(a, 0.999)
    return np.where(a >= ALPHA_THRESHOLD, a, 0.0)


def test_two_gaussians_front_to_back_blend_matches_analytic():
    red, green = [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]
    depths, scales, opac = [2.0, 4.0], [0.15, 0.5], [0.6, 0.8]
    scene = _scene(depths, scales, opac, [red, green])
    out = rasterize(*scene, np.eye(4), K, W, H, background=BG, backend="torch")
    a1 = _analytic_alpha(2.0, 0.15, 0.6)[..., None]
    a2 = _analytic_alpha(4.0, 0.5, 0.8)[..., None]
    expected = a1 * np.array(red) + (1 - a1) * a2 * np.array(green) + (1 - a1) * (1 - a2) * BG.numpy()
    np.testing.assert_allclose(out.image.numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(out.alpha.numpy(), 1 - (1 - a1) * (1 - a2), atol=1e-12)
    # centre pixel: both alphas equal their opacities exactly
    t_after = 0.4 * 0.2
    assert out.image[16, 16].tolist() == pytest.approx(
        [0.6 + t_after * 0.2, 0.4 * 0.8 + t_after * 0.3, t_after * 0.9], abs=1e-12)

    # input order must not matter: the renderer sorts by depth
    rev = tuple(t.flip(0) for t in scene)
    out_rev = rasterize(*rev, np.eye(4), K, W, H, background=BG, backend="torch")
    assert torch.equal(out_rev.image, out.image)


def test_early_termination_is_exclusive_like_gsplat():
    # Three fully opaque Gaussians: alpha is clamped to 0.999, so after the first one
    # T = 1e-3 and the second would bring it to 1e-6 <= 1e-4: the pixel stops *before* it.
    cols = [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]
    out = rasterize(*_scene([1.0, 2.0, 3.0], [0.3, 0.3, 0.3], [1.0, 1.0, 1.0], cols),
                    np.eye(4), K, W, H, background=BG, backend="torch")
    expected = 0.999 * np.array(cols[0]) + 0.001 * BG.numpy()
    np.testing.assert_allclose(out.image[16, 16].numpy(), expected, atol=1e-12)
    assert out.alpha[16, 16, 0].item() == pytest.approx(0.999, abs=1e-12)


def test_faint_gaussians_below_threshold_leave_background_untouched():
    out = rasterize(*_scene([2.0], [0.2], [0.5], [[1.0, 1.0, 1.0]]), np.eye(4), K, W, H,
                    background=BG, backend="torch")
    a = _analytic_alpha(2.0, 0.2, 0.5)
    far_px = a == 0
    assert far_px.sum() > 50
    assert torch.equal(out.image[torch.from_numpy(far_px)], BG.expand(int(far_px.sum()), 3))


def test_empty_and_fully_culled_scenes_render_exactly_the_background():
    empty = tuple(torch.zeros(shape, dtype=F64) for shape in [(0, 3), (0, 4), (0, 3), (0,), (0, 3)])
    out = rasterize(*empty, np.eye(4), K, W, H, background=BG, backend="torch")
    assert torch.equal(out.image, BG.expand(H, W, 3)) and torch.equal(out.alpha, torch.zeros(H, W, 1, dtype=F64))
    # everything behind the camera: still exactly the background, and backward still runs
    scene = [t.clone().requires_grad_(True) for t in _scene([-1.0, -3.0], [0.3, 0.3], [0.9, 0.9],
                                                               [[1.0, 0, 0], [0, 1.0, 0]])]
    out = rasterize(*scene, np.eye(4), K, W, H, background=BG, backend="torch")
    assert torch.equal(out.image.detach(), BG.expand(H, W, 3))
    out.image.sum().backward()
    assert all(t.grad is not None and torch.all(t.grad == 0) for t in scene)
    # no background means black
    out = rasterize(*_scene([-1.0], [0.3], [0.9], [[1.0, 0, 0]]), np.eye(4), K, W, H, backend="torch")
    assert torch.equal(out.image, torch.zeros(H, W, 3, dtype=F64))
