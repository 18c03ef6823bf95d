"""ADC-GS model pieces: rate gradients, causal steps, Eq. 11, refinement and snapping."""
from __future__ import annotations

import pytest
import torch

from evalkit.methods.adc_gs.mem import bits_per_value, quantise
from evalkit.methods.adc_gs.model import flat
from evalkit.methods.adc_gs.refine import PSI_EPS, RefineStats, in_frustum
from evalkit.methods.adc_gs.training import refine, snap_positions, _groups
from evalkit.render.api import camera_tensors, rasterize

from tests.methods.adc_gs_common import look_at_camera, random_model, small_config


def test_rate_gradient_reaches_features_entropy_nets_and_step_heads() -> None:
    model = random_model(n=40, seed=0)
    # move the step heads off zero so every path carries gradient
    with torch.no_grad():
        for lin in (model.mem.step_fv, model.mem.step_sigma, model.mem.step_color, *model.mem.step_fg):
            lin.weight.normal_(0, 0.1)
    torch.manual_seed(0)
    _, bits = quantise(model.mem, model.features(), "noise")
    bits_per_value(model.mem, bits, model.num_anchors).backward()
    for name in ("fv", "fg", "sigma", "color"):
        assert getattr(model, name).grad.abs().sum() > 0, name
    mem = model.mem
    for part in (mem.e_fv, mem.e_sigma, mem.e_color, *mem.e_fg, mem.step_fv, mem.step_sigma, mem.step_color,
                 *mem.step_fg, mem.h_a, mem.prior):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), part


def test_a_step_never_depends_on_its_own_symbols() -> None:
    model = random_model(n=16, seed=1)
    mem = model.mem
    with torch.no_grad():
        for lin in (mem.step_fv, mem.step_sigma, mem.step_color, *mem.step_fg):
            lin.weight.normal_(0, 0.5)
    steps = {}

    class Spy:
        def __init__(self, feats):
            self.feats = feats

        def hyper(self, m, fv, n):
            return torch.round(m.h_a(fv))

        def gauss(self, name, x, mean, scale, step):
            steps[name] = step.clone()
            return torch.round(x / step) * step

    feats = {k: v.detach().clone() for k, v in model.features().items()}
    with torch.no_grad():
        mem.walk(feats, 16, Spy(feats))
    before = dict(steps)
    for name in ("sigma", "color"):
        changed = {**feats, name: feats[name] + 5.0}
        with torch.no_grad():
            mem.walk(changed, 16, Spy(changed))
        assert torch.equal(steps[name], before[name]), name
    for m in range(model.cfg.fg_chunks):  # chunk m's own channels do not move its step
        fg = feats["fg"].clone()
        c = mem.chunk
        fg[:, :, m * c:(m + 1) * c] += 5.0
        with torch.no_grad():
            mem.walk({**feats, "fg": fg}, 16, Spy(feats))
        assert torch.equal(steps[f"fg{m}"], before[f"fg{m}"]), m
        if m + 1 < model.cfg.fg_chunks:
            assert not torch.equal(steps[f"fg{m + 1}"], before[f"fg{m + 1}"])  # later chunks see it


def test_eq11_significance_on_a_hand_example() -> None:
    stats = RefineStats(num_anchors=1, k=2, device=torch.device("cpu"))
    # two frames, two primitives; gradients given in pixels for a 2x2 image (x W/2 = x1)
    g = [torch.tensor([[3.0, 4.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [6.0, 8.0]])]
    psi = [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 0.5])]
    radii = torch.ones(2, 2)
    for gi, pi in zip(g, psi):
        stats.add(gi, radii, pi, torch.tensor([0.5, 0.5]), 2, 2, torch.ones(2, dtype=torch.bool))
    # primitive 0: (1*5 + 3*1) / 4 = 2; primitive 1: (2*1 + 0.5*10) / 2.5 = 2.8
    assert torch.allclose(stats.significance(True), torch.tensor([2.0, 2.8]))
    assert torch.allclose(stats.significance(False), torch.tensor([3.0, 5.5]))  # plain means


def test_in_frustum_agrees_with_the_camera_projection_of_known_points() -> None:
    cam = look_at_camera((0.0, -4.0, 0.0), size=24, focal=30.0)
    pts = torch.tensor([[0.0, 0.0, 0.0],     # the centre of the image
                        [0.2, 0.0, 0.3],     # inside
                        [3.0, 0.0, 0.0],     # u = 30 * 3 / 4 + 12 = 34.5: right of the image
                        [0.0, 0.0, -2.0],    # below it
                        [0.0, -5.0, 0.0],    # behind the camera
                        [0.0, -3.9, 0.0]])   # in front of it, but nearer than the near plane 0.2
    got = in_frustum(pts, *camera_tensors(cam), 24, 24, near=0.2)
    uv, z = cam.project(pts.numpy())
    want = (z > 0.2) & (uv[:, 0] >= 0) & (uv[:, 0] < 24) & (uv[:, 1] >= 0) & (uv[:, 1] < 24)
    assert got.tolist() == want.tolist() == [True, True, False, False, False, False]


def test_a_faint_anchor_in_view_is_pruned_though_the_rasteriser_culls_it() -> None:
    """Anchor 0's primitives (opacity 0.001 < 1/255) are culled by the rasteriser (radii 0) but in
    view: its accumulated opacity is under tau_o and it is pruned. Anchor 1 is drawn and opaque;
    anchor 2 is never in view, so nothing is known about it and it stays."""
    stats = RefineStats(num_anchors=3, k=2, device=torch.device("cpu"))
    opac = torch.tensor([0.001, 0.001, 0.5, 0.4, 0.0, 0.0])
    radii = torch.tensor([[0, 0], [0, 0], [3, 3], [2, 2], [0, 0], [0, 0]])
    in_view = torch.tensor([True, True, True, True, False, False])
    for _ in range(100):
        stats.add(torch.zeros(6, 2), radii, torch.zeros(6), opac, 8, 8, in_view)
    assert stats.prune_mask(0.003, 80).tolist() == [True, False, False]


def test_psi_from_the_colour_gradient_is_the_blending_weight() -> None:
    """Two Gaussians, one in front of the other: Psi(front) = sum alpha_front (its solo render's
    alpha), Psi(back) = sum alpha_back * T = total alpha - Psi(front)."""
    cam = look_at_camera((0.0, -4.0, 0.0), size=24, focal=30.0)
    viewmat, K = camera_tensors(cam)
    means = torch.tensor([[0.05, -1.0, 0.0], [-0.05, 1.0, 0.02]])
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    scales = torch.full((2, 3), 0.25)
    opac = torch.tensor([0.7, 0.9])
    colors = torch.cat([torch.rand(2, 3), torch.ones(2, 1)], 1).requires_grad_(True)
    out = rasterize(means, quats, scales, opac, colors, viewmat, K, 24, 24,
                    background=torch.tensor([1.0, 1.0, 1.0, 0.0]), backend="torch")
    (PSI_EPS * out.image[..., 3].sum()).backward()
    psi = colors.grad[:, 3] / PSI_EPS
    front = rasterize(means[:1], quats[:1], scales[:1], opac[:1], colors[:1, :3].detach(), viewmat, K, 24, 24,
                      backend="torch")
    assert torch.allclose(psi[0], front.alpha.sum(), rtol=1e-4)
    assert torch.allclose(psi.sum(), out.alpha.sum(), rtol=1e-4)
    assert psi[1] < rasterize(means[1:], quats[1:], scales[1:], opac[1:], colors[1:, :3].detach(), viewmat, K,
                              24, 24, backend="torch").alpha.sum()


def test_refine_grows_at_the_primitive_and_prunes_transparent_anchors() -> None:
    model = random_model(n=6, seed=2)
    opt = torch.optim.Adam(_groups(model), eps=1e-15)
    k = model.cfg.k
    stats = RefineStats(6, k, torch.device("cpu"))
    stats.psi_grad[3] = 1.0   # primitive 3 of anchor 0 grows
    stats.psi[3] = 1.0
    stats.anchor_seen[:] = 100
    stats.opacity[:] = 1.0
    stats.opacity[5] = 0.0    # anchor 5 is transparent: pruned
    prim = model.canonical()
    expect_xyz, expect_color = prim.means[0, 3].detach().clone(), prim.colors[0, 3].detach().clone()
    parent_fv, parent_sigma = model.fv[0].detach().clone(), model.sigma[0].detach().clone()
    grown, pruned = refine(model, opt, stats, model.cfg)
    assert (grown, pruned) == (1, 1) and model.num_anchors == 6
    assert torch.equal(model.xyz[-1], expect_xyz) and torch.equal(model.color[-1], expect_color)
    assert torch.equal(model.fv[-1], parent_fv)
    assert torch.equal(model.sigma[-1], parent_sigma)  # grow_sigma = "parent" (the default)
    assert all(g["params"][0] is getattr(model, g["name"]) for g in opt.param_groups if g["name"] in
               ("xyz", "fv", "fg", "sigma", "color"))


def test_a_grown_anchor_can_take_its_primitives_own_scale() -> None:
    """grow_sigma = "primitive": the new anchor's base scale e^{Sigma_v[3:6]} is the grown
    primitive's scale, and its offsets shrink by the same factor per axis."""
    model = random_model(n=4, seed=5)
    model.cfg.grow_sigma = "primitive"
    opt = torch.optim.Adam(_groups(model), eps=1e-15)
    stats = RefineStats(4, model.cfg.k, torch.device("cpu"))
    stats.psi_grad[7] = stats.psi[7] = 1.0  # primitive 7 of anchor 0
    stats.anchor_seen[:] = 100
    stats.opacity[:] = 1.0
    scale = model.canonical().scales[0, 7].detach().clone()
    parent = model.sigma[0].detach().clone()
    assert refine(model, opt, stats, model.cfg) == (1, 0)
    child = model.sigma[-1].detach()
    torch.testing.assert_close(torch.exp(child[3:]), scale)
    torch.testing.assert_close(torch.exp(child[:3] - parent[:3]), scale / torch.exp(parent[3:]))
    assert (scale < torch.exp(parent[3:])).all()  # a primitive is never larger than its anchor's base


def test_snapping_merges_duplicates_and_freezes_positions() -> None:
    model = random_model(n=5, seed=3)
    with torch.no_grad():
        model.xyz[1] = model.xyz[0] + 0.0001  # same grid cell as anchor 0
    opt = torch.optim.Adam(_groups(model), eps=1e-15)
    merged = snap_positions(model, opt, model.cfg)
    assert merged == 1 and model.num_anchors == 4 and not model.xyz.requires_grad
    grid = model.xyz.double() / model.cfg.snap_grid
    assert torch.allclose(grid, grid.round(), atol=1e-3)


def test_growth_adds_one_anchor_per_free_voxel() -> None:
    """Candidates in a voxel that holds an anchor, or a second candidate in one voxel, add nothing."""
    model = random_model(n=3, seed=4)
    with torch.no_grad():
        model.xyz += 5.0  # every anchor and candidate inside the voxel [0, 10)^3
    model.cfg.grow_voxel = 10.0
    opt = torch.optim.Adam(_groups(model), eps=1e-15)
    stats = RefineStats(3, model.cfg.k, torch.device("cpu"))
    stats.psi_grad[:] = 1.0
    stats.psi[:] = 1.0
    assert refine(model, opt, stats, model.cfg) == (0, 0) and model.num_anchors == 3
    model.cfg.grow_voxel = 0.0  # off: every candidate grows (the code's rule)
    assert refine(model, opt, stats, model.cfg)[0] == 3 * model.cfg.k and model.num_anchors == 3 + 3 * model.cfg.k


def test_schedule_checks_and_the_decaying_prune_threshold() -> None:
    import pytest

    from evalkit.methods.adc_gs.config import ADCConfig

    with pytest.raises(ValueError, match="quant_from"):
        ADCConfig(quant_from=9000, rate_from=8000)
    ADCConfig(quant_from=9000, rate_from=8000, rate_distortion=False)  # no rate term: no order to keep
    banana = ADCConfig(prune_opacity=0.005, prune_opacity_final=0.0005, refine_until=50000)
    assert [round(banana.prune_threshold(s), 6) for s in (0, 25000, 50000, 60000)] == [0.005, 0.00275, 0.0005, 0.0005]
    assert ADCConfig(prune_opacity=0.003).prune_threshold(40000) == 0.003


def test_pe_scale_multiplies_every_frequency() -> None:
    """f_p with ``pe_scale`` s is the PE of s * x (the code's frequencies at s = 1: highest 1 rad
    per unit, lowest 10000^(-22/72))."""
    from evalkit.methods.adc_gs.nets import pe_inverse_frequencies, positional_encoding

    x = torch.randn(5, 3, dtype=torch.float64)
    inv = pe_inverse_frequencies(12, x.device, x.dtype)
    assert float(inv[0]) == 1.0 and float(inv[-1]) == pytest.approx(10000.0 ** (-22 / 72))
    torch.testing.assert_close(positional_encoding(x, 12, 8.0), positional_encoding(8.0 * x, 12))
    assert not torch.allclose(positional_encoding(x, 12, 8.0), positional_encoding(x, 12))


def test_coarse_pe_makes_the_anchor_motion_depend_on_its_position() -> None:
    """``coarse_pe``: F_omega also reads the PE of the canonical X_v (the code's input), so two
    anchors with the same f_v at different places move differently; without it (the paper's Eq. 2,
    f_v and f_t only) they move alike."""
    for coarse_pe in (False, True):
        model = random_model(n=8, seed=5, cfg=small_config(deformation="coarse", coarse_pe=coarse_pe))
        with torch.no_grad():
            model.fv[1] = model.fv[0]  # anchors 0 and 1: the same feature, different positions
            for head in model.deform.coarse.heads.values():
                head[-1].weight.normal_(0, 0.1)
        assert not torch.equal(model.xyz[0], model.xyz[1])
        d = model.deform(model.xyz, model.fv, 0.4).dxyz
        gap = float((d[0] - d[1]).abs().max())  # (equal rows of one matmul may round differently)
        assert (gap > 1e-3) if coarse_pe else (gap < 1e-6), (coarse_pe, gap)


def test_fine_xyz_moves_the_primitives_of_an_anchor_apart() -> None:
    """Eq. 5 moves an anchor's K primitives together (their offsets to each other never change);
    ``fine_xyz`` adds F_varpi's per-primitive shift, so the offsets change with t."""
    for fine_xyz in (False, True):
        model = random_model(n=8, seed=6, cfg=small_config(deformation="coarse-fine", fine_xyz=fine_xyz))
        with torch.no_grad():
            for net in (model.deform.coarse, model.deform.fine):
                for head in net.heads.values():
                    head[-1].weight.normal_(0, 0.1)
        canon = model.canonical()
        offsets = [(p.means - p.means[:, :1]) for p in (model.at_time(canon, model.fv, t) for t in (0.0, 0.6))]
        moved = float((offsets[0] - offsets[1]).abs().max())
        anchor = [model.at_time(canon, model.fv, t).means.mean(1) for t in (0.0, 0.6)]
        assert float((anchor[0] - anchor[1]).abs().max()) > 1e-3  # the anchors move either way
        assert (moved > 1e-3) if fine_xyz else (moved < 1e-6), (fine_xyz, moved)
