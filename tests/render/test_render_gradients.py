"""Autograd through the torch reference vs finite differences (float64)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evalkit.render.synthetic import look_at_w2c, random_gaussians
from evalkit.render.torch_reference import rasterize_projected, rasterize_torch

F64 = torch.float64
W, H = 24, 20
VIEW = torch.tensor(look_at_w2c(np.array([0.4, -0.3, -3.0])), dtype=F64)
KMAT = torch.tensor([[26.0, 0, 12.7], [0, 24.0, 9.6], [0, 0, 1.0]], dtype=F64)
BG = torch.tensor([0.1, 0.5, 0.3], dtype=F64)


def _loss_fn(weights_img, weights_alpha, sh_degree, **kw):
    def loss(means, quats, scales, opacities, colors):
        out = rasterize_torch(means, quats, scales, opacities, colors, VIEW, KMAT, W, H,
                              sh_degree=sh_degree, background=BG, **kw)
        return (out.image * weights_img).sum() + (out.alpha * weights_alpha).sum(), out
    return loss


def _tiny_scene(n, sh_degree, seed):
    g = random_gaussians(n, seed=seed, sh_degree=sh_degree, dtype=F64, extent=0.6)
    g.scales = g.scales.clamp_min(0.12)  # a few px wide, so every parameter matters
    g.opacities = g.opacities.clamp(0.3, 0.9)
    return [t.clone().requires_grad_(True) for t in g.tensors()]


@pytest.mark.parametrize("sh_degree", [None, 1])
def test_gradients_match_central_differences_elementwise(sh_degree):
    params = _tiny_scene(3, sh_degree, seed=1)
    gen = torch.Generator().manual_seed(0)
    loss = _loss_fn(torch.rand(H, W, 3, generator=gen, dtype=F64),
                    torch.rand(H, W, 1, generator=gen, dtype=F64), sh_degree)
    value, out = loss(*params)
    assert (out.info["radii"] > 0).all()  # all three visible: the test is not vacuous
    grads = torch.autograd.grad(value, params)
    eps = 1e-6
    for name, p, g in zip(["means", "quats", "scales", "opacities", "colors"], params, grads):
        fd = torch.zeros_like(p)
        with torch.no_grad():
            for i in range(p.numel()):
                orig = p.view(-1)[i].item()
                p.view(-1)[i] = orig + eps
                up = loss(*params)[0].item()
                p.view(-1)[i] = orig - eps
                down = loss(*params)[0].item()
                p.view(-1)[i] = orig
                fd.view(-1)[i] = (up - down) / (2 * eps)
        assert g.abs().max() > 1e-3, name
        torch.testing.assert_close(g, fd, rtol=1e-4, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_gradients_with_segments_and_recompute_match_directional_differences():
    # 60 Gaussians and a tiny chunk budget: several tiles per group, lists split into
    # segments (transmittance carried across), recomputation in backward.
    params = _tiny_scene(60, 2, seed=3)
    gen = torch.Generator().manual_seed(1)
    wi, wa = torch.rand(H, W, 3, generator=gen, dtype=F64), torch.rand(H, W, 1, generator=gen, dtype=F64)
    small = _loss_fn(wi, wa, 2, chunk_elements=4096)  # 16 Gaussians per segment
    big = _loss_fn(wi, wa, 2)
    v_small, _ = small(*params)
    v_big, _ = big(*params)
    torch.testing.assert_close(v_small, v_big, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(v_small, params)
    grads_big = torch.autograd.grad(v_big, params)
    eps = 1e-6
    for p, g, gb in zip(params, grads, grads_big):
        torch.testing.assert_close(g, gb, rtol=1e-9, atol=1e-12)
        d = torch.randn(p.shape, generator=gen, dtype=F64)
        with torch.no_grad():
            p += eps * d
            up = small(*params)[0].item()
            p -= 2 * eps * d
            down = small(*params)[0].item()
            p += eps * d
        assert (g * d).sum().item() == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-6)


def test_means2d_gradient_and_absgrad():
    params = _tiny_scene(5, None, seed=4)
    gen = torch.Generator().manual_seed(2)
    wi = torch.rand(H, W, 3, generator=gen, dtype=F64) - 0.5  # mixed signs: absgrad > |grad|
    out = rasterize_torch(*params, VIEW, KMAT, W, H, background=BG, absgrad=True)
    (out.image * wi).sum().backward()
    m2d = out.info["means2d"]
    assert m2d.shape == (1, 5, 2) and m2d.grad is not None
    assert torch.all(m2d.absgrad >= m2d.grad.abs() - 1e-12)
    assert torch.any(m2d.absgrad > m2d.grad.abs() + 1e-6)

    # means2d.grad is the true derivative w.r.t. the 2D means (check through the rasteriser)
    mm = m2d.detach().clone()[0].requires_grad_(True)
    info = out.info
    args = (info["conics"][0].detach(), info["opacities"][0].detach(), params[4].detach(),
            info["depths"][0].detach(), info["radii"][0], W, H)

    def f(m):
        img, _ = rasterize_projected(m, *args, background=BG)
        return (img * wi).sum()

    torch.testing.assert_close(torch.autograd.grad(f(mm), mm)[0], m2d.grad[0], rtol=1e-10, atol=1e-12)
    # A loss on a single pixel: absgrad equals |grad| (one pixel, no sign cancellation).
    for recompute in (True, False):
        buf = torch.zeros(5, 2, dtype=F64)
        m = mm.detach().clone().requires_grad_(True)
        img, _ = rasterize_projected(m, *args, background=BG, absgrad=buf, recompute=recompute)
        img[10, 12].sum().backward()
        assert m.grad.abs().sum() > 0
        torch.testing.assert_close(buf, m.grad.abs(), rtol=1e-12, atol=1e-15)


def test_absgrad_identical_with_and_without_recompute_over_many_segments():
    # Regression: absgrad is written during backward; with recomputation over several
    # groups/segments it must neither break the checkpoint nor double count.
    params = [t.detach() for t in _tiny_scene(60, None, seed=5)]
    out = rasterize_torch(*params, VIEW, KMAT, W, H)
    info = out.info
    args = (info["conics"][0], info["opacities"][0], params[4], info["depths"][0], info["radii"][0], W, H)
    wi = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(3), dtype=F64) - 0.5
    results = []
    for recompute in (True, False):
        buf = torch.zeros(60, 2, dtype=F64)
        m = info["means2d"][0].clone().requires_grad_(True)
        img, _ = rasterize_projected(m, *args, background=BG, absgrad=buf, recompute=recompute,
                                     chunk_elements=4096)
        (img * wi).sum().backward()
        results.append((buf, m.grad))
    assert results[0][0].abs().sum() > 0
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-12, atol=1e-15)
