"""Projection conventions of the torch reference, checked against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from evalkit.data.scene import Camera
from evalkit.render import rasterize
from evalkit.render.synthetic import look_at_w2c
from evalkit.render.torch_reference import ALPHA_THRESHOLD, covariance_3d, project_gaussians

F64 = torch.float64


def _camera(width: int = 64, height: int = 48) -> Camera:
    # Off-centre principal point, non-square focal, rotated and translated camera.
    K = np.array([[61.0, 0.0, 27.3], [0.0, 47.0, 26.1], [0.0, 0.0, 1.0]])
    w2c = look_at_w2c(np.array([0.7, -0.4, -3.0]), target=np.array([0.1, 0.05, 0.2]))
    return Camera(K=K, w2c=w2c, width=width, height=height)


def _render_one(cam: Camera, mean, scale, opacity=0.9, quat=(1.0, 0.0, 0.0, 0.0)):
    t = lambda x: torch.tensor(np.asarray(x, dtype=np.float64))
    return rasterize(t([mean]), t([quat]), t([scale]), t([opacity]), t([[1.0, 1.0, 1.0]]),
                     cam.w2c, cam.K, cam.width, cam.height, backend="torch")


@pytest.mark.parametrize("uv_target", [(20.25, 17.6), (40.7, 30.15), (31.0, 22.5)])
def test_single_gaussian_centroid_matches_camera_project(uv_target):
    cam = _camera()
    # Back-project the target pixel at depth 3.2 to a world point, then let Camera.project
    # (numpy, independent of the renderer) give the expected pixel.
    z = 3.2
    xc = np.array([(uv_target[0] - cam.K[0, 2]) / cam.K[0, 0] * z,
                   (uv_target[1] - cam.K[1, 2]) / cam.K[1, 1] * z, z])
    world = cam.c2w[:3, :3] @ xc + cam.c2w[:3, 3]
    uv, depth = cam.project(world[None])
    assert depth[0] == pytest.approx(z)
    out = _render_one(cam, world, [0.03, 0.03, 0.03])
    a = out.alpha[..., 0].numpy()
    rows, cols = np.mgrid[0:cam.height, 0:cam.width]
    cu = ((cols + 0.5) * a).sum() / a.sum()  # pixel (col, row) is centred at (col+0.5, row+0.5)
    cv = ((rows + 0.5) * a).sum() / a.sum()
    assert abs(cu - uv[0, 0]) < 0.01 and abs(cv - uv[0, 1]) < 0.01, (cu, cv, uv)
    # and the 2D mean reported for densification is the projected point itself
    np.testing.assert_allclose(out.info["means2d"][0, 0].detach().numpy(), uv[0], atol=1e-9)


def test_large_isotropic_gaussian_matches_analytic_profile():
    W, H, fx, fy, cx, cy = 64, 48, 40.0, 55.0, 30.5, 21.5
    K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    z, s, opacity = 2.5, 0.25, 0.8
    # Camera looks down +z from the origin; Gaussian on the optical axis, so the EWA
    # Jacobian is diag(fx/z, fy/z) and the 2D covariance is exact: (f s / z)^2 + 0.3.
    out = rasterize(torch.tensor([[0.0, 0.0, z]], dtype=F64),
                    torch.tensor([[0.3, -1.2, 0.4, 2.0]], dtype=F64),  # un-normalised, irrelevant
                    torch.full((1, 3), s, dtype=F64), torch.tensor([opacity], dtype=F64),
                    torch.ones(1, 3, dtype=F64), np.eye(4), K, W, H, backend="torch")
    var_x, var_y = (fx * s / z) ** 2 + 0.3, (fy * s / z) ** 2 + 0.3
    rows, cols = np.mgrid[0:H, 0:W]
    dx, dy = cols + 0.5 - cx, rows + 0.5 - cy
    expected = opacity * np.exp(-0.5 * (dx**2 / var_x + dy**2 / var_y))
    got = out.alpha[..., 0].numpy()
    shown = expected >= ALPHA_THRESHOLD * 1.001
    hidden = expected < ALPHA_THRESHOLD * 0.999
    assert shown.sum() > 500 and hidden.sum() > 100  # the test covers both regimes
    np.testing.assert_allclose(got[shown], expected[shown], rtol=1e-9, atol=1e-12)
    assert np.all(got[hidden] == 0.0)  # alpha < 1/255 is skipped, not blended
    rx = math.ceil(min(3.33, math.sqrt(2 * math.log(opacity * 255))) * math.sqrt(var_x))
    ry = math.ceil(min(3.33, math.sqrt(2 * math.log(opacity * 255))) * math.sqrt(var_y))
    assert out.info["radii"].tolist() == [[[rx, ry]]]
    assert out.info["radii"].dtype == torch.int32


def test_anisotropic_off_axis_covariance_matches_numeric_ewa():
    cam = _camera(80, 64)
    mean = np.array([0.35, -0.2, 0.4])
    q_wxyz = np.array([0.9, 0.3, -0.5, 0.2])
    scale = np.array([0.3, 0.08, 0.15])
    # Independent covariance: scipy rotation (x, y, z, w order) and a numerical Jacobian of
    # Camera.project at the mean (EWA = first-order Taylor expansion of the projection).
    Rm = Rotation.from_quat(np.roll(q_wxyz, -1)).as_matrix()
    cov3 = Rm @ np.diag(scale**2) @ Rm.T
    np.testing.assert_allclose(covariance_3d(torch.tensor(q_wxyz[None]), torch.tensor(scale[None]))[0],
                               cov3, atol=1e-12)
    eps = 1e-6
    Jw = np.stack([(cam.project((mean + eps * e)[None])[0][0] - cam.project((mean - eps * e)[None])[0][0]) / (2 * eps)
                   for e in np.eye(3)], axis=1)  # d(uv)/d(world)
    cov2 = Jw @ cov3 @ Jw.T + 0.3 * np.eye(2)
    uv = cam.project(mean[None])[0][0]
    out = _render_one(cam, mean, scale, opacity=0.7, quat=q_wxyz)
    rows, cols = np.mgrid[0:cam.height, 0:cam.width]
    d = np.stack([cols + 0.5 - uv[0], rows + 0.5 - uv[1]], axis=-1)
    maha = np.einsum("hwi,ij,hwj->hw", d, np.linalg.inv(cov2), d)
    expected = 0.7 * np.exp(-0.5 * maha)
    shown = expected >= ALPHA_THRESHOLD * 1.01
    assert shown.sum() > 100
    np.testing.assert_allclose(out.alpha[..., 0].numpy()[shown], expected[shown], rtol=1e-5)


def test_culling_near_far_and_offscreen():
    K = torch.tensor([[50.0, 0, 16], [0, 50.0, 16], [0, 0, 1]], dtype=F64)
    means = torch.tensor([[0, 0, 0.005],   # in front of near=0.01
                          [0, 0, -2.0],    # behind the camera
                          [0, 0, 50.0],    # beyond far=20
                          [30.0, 0, 2.0],  # far off-screen to the right
                          [0, 0, 2.0]],    # visible
                         dtype=F64)
    n = len(means)
    proj = project_gaussians(means, torch.tensor([[1.0, 0, 0, 0]] * n, dtype=F64),
                             torch.full((n, 3), 0.05, dtype=F64), torch.full((n,), 0.9, dtype=F64),
                             torch.eye(4, dtype=F64), K, 32, 32, near=0.01, far=20.0)
    assert (proj.radii > 0).all(-1).tolist() == [False, False, False, False, True]
    assert torch.isfinite(proj.means2d).all() and torch.isfinite(proj.conics).all()
    # opacity below 1/255 is culled as well (gsplat's opacity-aware bound)
    proj2 = project_gaussians(means[4:], torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
                              torch.full((1, 3), 0.05, dtype=F64), torch.tensor([0.003], dtype=F64),
                              torch.eye(4, dtype=F64), K, 32, 32)
    assert proj2.radii.tolist() == [[0, 0]]
