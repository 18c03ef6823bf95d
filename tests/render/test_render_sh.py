"""Spherical harmonics: gsplat's basis, the +0.5 offset, and their use in rendering."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evalkit.render import rasterize
from evalkit.render.sh import SH_C0, eval_sh, sh_bases, sh_to_color
from evalkit.render.synthetic import look_at_w2c

F64 = torch.float64


def test_degree0_colour_is_c_times_c0_plus_half_clamped():
    c = torch.tensor([[[1.2, -0.4, -3.0]]], dtype=F64)  # (N=1, K=1, 3)
    dirs = torch.tensor([[0.3, -2.0, 0.7]], dtype=F64)
    expected = torch.clamp_min(c[:, 0] * SH_C0 + 0.5, 0.0)
    assert expected[0, 2] == 0.0  # the clamp is exercised
    torch.testing.assert_close(sh_to_color(0, dirs, c), expected, rtol=0, atol=1e-15)
    assert SH_C0 == pytest.approx(1 / (2 * math.sqrt(math.pi)))


def test_degree1_matches_hand_computation_in_a_render():
    w2c = look_at_w2c(np.array([1.0, -0.5, -3.0]), target=np.array([0.2, 0.1, 0.0]))
    K = np.array([[30.0, 0, 16.0], [0, 30.0, 16.0], [0, 0, 1.0]])
    mean = np.array([0.3, 0.2, 0.25])
    coeffs = np.array([[0.4, -0.2, 0.1], [0.8, 0.3, -0.5], [-0.6, 0.9, 0.2], [0.25, -0.7, 0.6]])
    # By hand: camera centre = -R^T t, unit direction from camera to mean, 3DGS degree-1 basis.
    cam_centre = -w2c[:3, :3].T @ w2c[:3, 3]
    x, y, z = (mean - cam_centre) / np.linalg.norm(mean - cam_centre)
    c1 = math.sqrt(3 / (4 * math.pi))
    by_hand = np.maximum(0.5 + SH_C0 * coeffs[0] + c1 * (-y * coeffs[1] + z * coeffs[2] - x * coeffs[3]), 0)
    torch.testing.assert_close(
        sh_to_color(1, torch.tensor(mean - cam_centre)[None], torch.tensor(coeffs)[None])[0],
        torch.tensor(by_hand), rtol=0, atol=1e-12)

    def render(colors, sh_degree):
        return rasterize(torch.tensor(mean)[None], torch.tensor([[1.0, 0, 0, 0]], dtype=F64),
                         torch.full((1, 3), 0.3, dtype=F64), torch.tensor([0.7], dtype=F64),
                         colors, w2c, K, 32, 32, sh_degree=sh_degree, backend="torch")

    with_sh = render(torch.tensor(coeffs)[None], 1)
    with_rgb = render(torch.tensor(by_hand)[None], None)
    assert with_sh.alpha.max() > 0.5
    torch.testing.assert_close(with_sh.image, with_rgb.image, rtol=0, atol=1e-12)
    # degree 0 ignores the higher coefficients
    deg0 = render(torch.tensor(coeffs)[None], 0)
    torch.testing.assert_close(deg0.image, render(torch.tensor(0.5 + SH_C0 * coeffs[:1]), None).image,
                               rtol=0, atol=1e-12)


def test_bases_up_to_degree4_are_orthonormal_on_the_sphere():
    # Gauss-Legendre in cos(theta) x uniform phi integrates these degree-<=8 products exactly,
    # so this checks every constant of degrees 0..4 (up to each basis' sign).
    nodes, weights = np.polynomial.legendre.leggauss(12)
    phi = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    ct, ph = np.meshgrid(nodes, phi, indexing="ij")
    st = np.sqrt(1 - ct**2)
    dirs = torch.tensor(np.stack([st * np.cos(ph), st * np.sin(ph), ct], -1).reshape(-1, 3))
    w = torch.tensor((weights[:, None] * np.full_like(ph, 2 * np.pi / len(phi))).reshape(-1))
    Y = sh_bases(4, dirs)  # (M, 25)
    gram = (Y * w[:, None]).T @ Y
    torch.testing.assert_close(gram, torch.eye(25, dtype=F64), rtol=0, atol=1e-10)


def test_sh_signs_follow_gsplat_basis_order():
    # 3DGS/gsplat order: [C0, -C1 y, C1 z, -C1 x, ...]; check on the axes.
    c1 = math.sqrt(3 / (4 * math.pi))
    for d, expected in [((1.0, 0, 0), [0, 0, -c1]), ((0, 1.0, 0), [-c1, 0, 0]), ((0, 0, 1.0), [0, c1, 0])]:
        got = sh_bases(1, torch.tensor([d], dtype=F64))[0, 1:]
        torch.testing.assert_close(got, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-15)
    # degree-2 value at a generic direction, from the textbook real SH formulas
    x, y, z = np.array([0.3, -0.5, 0.7]) / np.linalg.norm([0.3, -0.5, 0.7])
    textbook = [0.5 * math.sqrt(15 / math.pi) * x * y, -0.5 * math.sqrt(15 / math.pi) * y * z,
                0.25 * math.sqrt(5 / math.pi) * (3 * z * z - 1), -0.5 * math.sqrt(15 / math.pi) * x * z,
                0.25 * math.sqrt(15 / math.pi) * (x * x - y * y)]
    got = sh_bases(2, torch.tensor([[x, y, z]]))[0, 4:9]
    torch.testing.assert_close(got, torch.tensor(textbook), rtol=0, atol=1e-12)


def test_eval_sh_rejects_too_few_coefficients():
    with pytest.raises(ValueError, match="K>=9"):
        eval_sh(2, torch.zeros(1, 3), torch.zeros(1, 4, 3))
