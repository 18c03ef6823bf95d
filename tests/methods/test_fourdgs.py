"""4DGS baseline: HexPlane conventions, training improves quality, exact encode/decode, PLY export."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from evalkit.codec.container import Bitstream, BitstreamError
from evalkit.data.detect import load_scene
from evalkit.methods.fourdgs import FourDGS, codec
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.models.fourdgs.export import export_ply
from evalkit.models.fourdgs.hexplane import PLANE_PAIRS, TIME_PLANES, HexPlane, HexPlaneConfig
from evalkit.models.fourdgs.trainer import build_model, train
from evalkit.metrics.image import psnr

TINY = dict(feature_dim=8, resolution=[16, 16, 16, 8], multires=[1, 2], net_width=32)


def test_hexplane_feature_is_product_of_plane_values_at_grid_nodes():
    """At a grid node, bilinear sampling returns the node value: the feature must equal the
    product over the six planes of the values stored at that node (computed independently)."""
    torch.manual_seed(0)
    cfg = HexPlaneConfig(feature_dim=4, resolution=[5, 7, 9, 3], multires=[1], full_time_range=True)
    hp = HexPlane(cfg, torch.tensor([[-1.0, -2.0, 0.0], [1.0, 2.0, 4.0]]))
    for p in hp.planes():
        p.data.uniform_(0.5, 1.5)
    idx = [2, 5, 7, 1]  # node indices along x, y, z, t
    res = cfg.resolution
    lo, hi = hp.aabb
    xyz = lo + (hi - lo) * torch.tensor([idx[i] / (res[i] - 1) for i in range(3)])
    t = idx[3] / (res[3] - 1)
    feat = hp(xyz[None], t)[0]
    expected = torch.ones(4)
    for plane, (a, b) in zip(hp.planes(), PLANE_PAIRS):
        expected = expected * plane[0, :, idx[b], idx[a]]
    torch.testing.assert_close(feat, expected, rtol=1e-5, atol=1e-6)


def test_hexplane_init_and_regulariser():
    hp = HexPlane(HexPlaneConfig(**{k: v for k, v in TINY.items() if k != "net_width"}), torch.tensor([[0.0] * 3, [1.0] * 3]))
    shapes = [p.shape for p in hp.planes()]
    assert len(shapes) == 12  # 6 planes x 2 scales
    assert shapes[0] == (1, 8, 16, 16) and shapes[6] == (1, 8, 32, 32)  # xy at scale 1 and 2
    assert shapes[2] == (1, 8, 8, 16)  # xt: time on the height axis, not multi-scaled
    for s in hp.grids:
        for i in TIME_PLANES:
            assert torch.all(s[i] == 1.0)
    # Time planes at 1 contribute nothing to the L1 term; smoothness of linear ramps is zero.
    assert hp.regulariser(0.0, 0.0, 1.0).item() == 0.0
    for p in hp.planes():
        p.data = torch.arange(p.shape[2], dtype=torch.float32).view(1, 1, -1, 1).expand_as(p).clone()
    assert hp.regulariser(1.0, 1.0, 0.0).item() == pytest.approx(0.0, abs=1e-10)


@pytest.fixture(scope="module")
def tiny_scene(synth_scene_dir):
    return load_scene(synth_scene_dir("dnerf"), resolution_scale=0.5)


@pytest.fixture(scope="module")
def trained(tiny_scene):
    cfg = FourDGSConfig(**TINY).scaled_schedule(240)
    torch.manual_seed(0)
    initial = build_model(tiny_scene, cfg, torch.device("cpu"))
    model, stages = train(tiny_scene, cfg, torch.device("cpu"), seed=0)
    return initial, model, cfg, stages


def _test_psnr(model, scene) -> float:
    with torch.no_grad():
        vals = [psnr(model.render(f.camera, f.time), torch.from_numpy(f.load())).item() for f in scene.test]
    return float(np.mean(vals))


def test_training_beats_initial_psnr(trained, tiny_scene):
    initial, model, cfg, stages = trained
    assert [s.stage for s in stages] == ["coarse", "fine"]
    p0, p1 = _test_psnr(initial, tiny_scene), _test_psnr(model, tiny_scene)
    assert p1 > p0 + 3.0, f"test PSNR {p1:.2f} dB vs {p0:.2f} dB before training"


def test_encode_decode_renders_identical(trained, tiny_scene, tmp_path):
    _, model, cfg, _ = trained
    path = tmp_path / "m.evk"
    n = codec.encode(model, cfg).write(path)
    assert path.stat().st_size == n
    decoded, cfg2 = codec.decode(Bitstream.read(path), torch.device("cpu"))
    assert cfg2 == cfg and decoded.num_primitives() == model.num_primitives()
    for f in tiny_scene.test[:3]:
        assert torch.equal(model.render(f.camera, f.time), decoded.render(f.camera, f.time))
    # float32 storage: 59 floats per Gaussian plus the deformation field.
    sizes = Bitstream.read(path).sizes()
    assert sizes["means"] + sizes["scales"] + sizes["quats"] + sizes["opacities"] + sizes["sh0"] + sizes["shN"] \
        == 59 * 4 * model.num_primitives()
    n_params = sum(p.numel() for p in model.deformation.parameters())
    assert sizes["hexplane"] + sizes["deformation_mlp"] == 4 * n_params


def test_decode_rejects_foreign_bitstream():
    with pytest.raises(BitstreamError, match="x.evk: header key 'sh_degree' is missing"):
        codec.decode(Bitstream(header={"method": "4dgs"}, components={}), torch.device("cpu"), source="x.evk")


def test_ply_export_matches_parameters(trained, tmp_path):
    _, model, _, _ = trained
    path = export_ply(model, tmp_path / "c.ply")
    v = PlyData.read(str(path))["vertex"]
    g = model.gaussians
    n = model.num_primitives()
    assert len(v) == n and len(v.properties) == 62  # 3DGS layout for SH degree 3
    np.testing.assert_array_equal(v["x"], g["means"][:, 0].detach().numpy())
    np.testing.assert_array_equal(v["opacity"], g["opacities"].detach().numpy())
    # f_rest is channel-major: f_rest_0..14 are the red coefficients 1..15.
    np.testing.assert_array_equal(v["f_rest_1"], g["shN"][:, 1, 0].detach().numpy())
    np.testing.assert_array_equal(v["f_rest_15"], g["shN"][:, 0, 1].detach().numpy())
    deformed = export_ply(model, tmp_path / "t.ply", t=0.5)
    means_t = model.deformed(0.5)[0]
    np.testing.assert_allclose(PlyData.read(str(deformed))["vertex"]["y"], means_t[:, 1].detach().numpy())


def test_scaled_schedule_keeps_structure():
    cfg = FourDGSConfig().scaled_schedule(800)
    assert cfg.coarse_iterations + cfg.iterations == 800
    assert cfg.densify_from_iter < cfg.densify_until_iter <= cfg.iterations
    assert cfg.densification_interval >= 10 and cfg.opacity_reset_interval >= 3 * cfg.densification_interval
    assert FourDGSConfig().scaled_schedule(None) == FourDGSConfig()


def test_unknown_option_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown 4DGS option"):
        FourDGSConfig.from_dict({"itrations": 5}, source="methods/4dgs.toml")


def test_regulariser_matches_per_plane_reference_formula():
    """The vectorised regulariser equals the reference's per-plane sums (computed here directly)."""
    torch.manual_seed(1)
    hp = HexPlane(HexPlaneConfig(feature_dim=4, resolution=[8, 8, 6, 5], multires=[1, 2]),
                  torch.tensor([[0.0] * 3, [1.0] * 3]))
    for p in hp.planes():
        p.data.normal_()

    def smooth(t):  # compute_plane_smoothness of the reference, one plane at a time
        h = t.shape[2]
        d1 = t[..., 1:, :] - t[..., : h - 1, :]
        return (d1[..., 1:, :] - d1[..., : h - 2, :]).square().mean()

    space = sum(smooth(s[i]) for s in hp.grids for i in (0, 1, 3))
    time = sum(smooth(s[i]) for s in hp.grids for i in TIME_PLANES)
    l1 = sum((1 - s[i]).abs().mean() for s in hp.grids for i in TIME_PLANES)
    torch.testing.assert_close(hp.regulariser(0.1, 0.2, 0.3), 0.1 * space + 0.2 * time + 0.3 * l1)


@pytest.mark.gpu
def test_graphed_render_equals_eager_render_on_gpu(trained, tiny_scene, tmp_path):
    _, model, cfg, _ = trained
    path = tmp_path / "m.evk"
    codec.encode(model, cfg).write(path)
    decoded, _ = codec.decode(Bitstream.read(path), torch.device("cuda"))
    assert decoded._graphed is not None
    for f in tiny_scene.test:
        fast = decoded.render(f.camera, f.time).clone()
        graphed, decoded._graphed = decoded._graphed, None
        slow = decoded.render(f.camera, f.time)  # the same model without the CUDA graph
        decoded._graphed = graphed
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)


def test_pruning_follows_the_reference_schedule():
    """The reference's densify() only clones/splits; it prunes every pruning_interval steps before
    densify_until_iter, and only above 200k Gaussians (D-NeRF: never)."""
    from evalkit.models.fourdgs.trainer import reference_prunes_at
    cfg = FourDGSConfig()
    assert not reference_prunes_at(cfg, 8000, 150_000)  # below the 200k gate
    assert reference_prunes_at(cfg, 8000, 250_000)
    assert not reference_prunes_at(cfg, 8100, 250_000)  # a refinement step, not a pruning step
    assert not reference_prunes_at(cfg, 16000, 250_000)  # after densify_until_iter
    quick = cfg.scaled_schedule(2300)  # the schedule scales with the iteration count
    assert quick.pruning_interval == 800 and quick.pruning_from_iter == 50


def test_reference_pruning_removes_transparent_and_oversized_gaussians():
    from gsplat.strategy import DefaultStrategy
    from evalkit.models.fourdgs.model import FourDGSModel
    from evalkit.models.fourdgs.trainer import prune_as_reference
    from evalkit.data.scene import PointCloud
    from evalkit.models.fourdgs.model import init_gaussians
    from evalkit.models.fourdgs.deformation import DeformationField
    cfg = FourDGSConfig(**TINY)
    pts = PointCloud(xyz=np.random.default_rng(0).uniform(-1, 1, (6, 3)).astype(np.float32), rgb=None)
    g = init_gaussians(pts, 3, torch.device("cpu"))
    with torch.no_grad():
        g["scales"].fill_(np.log(0.01))
        g["opacities"][0] = torch.logit(torch.tensor(0.001))  # transparent
        g["scales"][1] = np.log(0.5)  # 0.5 > 0.1 x extent 2.0
    model = FourDGSModel(g, DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])),
                         3, torch.zeros(3), cfg.near_plane)
    opts = {k: torch.optim.Adam([{"params": [p], "lr": 1e-3, "name": k}]) for k, p in g.items()}
    state = DefaultStrategy(refine_scale2d_stop_iter=1).initialize_state(scene_scale=2.0)
    state["radii"] = torch.tensor([0.0, 0.0, 0.05, 0.0, 0.0, 0.0])  # 0.05 x 800 px = 40 px > 20
    info = {"width": 800, "height": 600}
    before = g["means"].detach().clone()
    early = prune_as_reference(model, opts, dict(state), cfg, 2000, 2.0, info)  # before the first reset
    assert early == 1 and torch.equal(g["means"].detach(), before[1:])
    state["radii"] = state["radii"][1:]
    late = prune_as_reference(model, opts, state, cfg, 9000, 2.0, info)
    assert late == 2 and torch.equal(g["means"].detach(), before[[3, 4, 5]])


def test_sync_free_statistics_equal_gsplats():
    """accumulate_stats keeps the same running sums as gsplat's DefaultStrategy (its public
    ``step_post_backward`` before any refinement step only updates them)."""
    from gsplat.strategy import DefaultStrategy
    from evalkit.train.densify_stats import accumulate_stats
    g = torch.Generator().manual_seed(0)
    n = 50
    params = {"means": torch.zeros(n, 3)}
    strategy = DefaultStrategy(refine_scale2d_stop_iter=1)
    ours, theirs = strategy.initialize_state(1.0), strategy.initialize_state(1.0)
    for _ in range(3):
        means2d = torch.zeros(1, n, 2, requires_grad=True)
        means2d.grad = torch.randn(1, n, 2, generator=g)
        radii = torch.randint(0, 4, (1, n, 2), generator=g).to(torch.int32)
        info = {"width": 64, "height": 48, "n_cameras": 1, "radii": radii, "gaussian_ids": None,
                "means2d": means2d}
        accumulate_stats(strategy, params, ours, [info])
        strategy.step_post_backward(params, {}, theirs, 0, info, packed=False)
    for k in ("grad2d", "count", "radii"):
        assert torch.allclose(ours[k], theirs[k], atol=1e-6), k


def test_batch_statistics_sum_the_views_gradients_first():
    """With several views a step, the reference adds the norm of the views' summed view-space
    gradient (in NDC units) once, and counts a Gaussian once if any view sees it."""
    from gsplat.strategy import DefaultStrategy
    from evalkit.train.densify_stats import accumulate_stats
    n, w, h = 5, 64, 48
    strategy = DefaultStrategy(refine_scale2d_stop_iter=1)
    state = strategy.initialize_state(1.0)
    # pixel-space gradients of two views; Gaussian 3 only in view 0, Gaussian 4 in neither
    g0 = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.5, 0.0], [0.0, 0.0]])
    g1 = torch.tensor([[1.0, 0.0], [0.0, -2.0], [-1.0, 1.0], [7.0, 0.0], [0.0, 0.0]])  # 3: culled in view 1
    vis0 = torch.tensor([1, 1, 1, 1, 0])
    vis1 = torch.tensor([1, 1, 1, 0, 0])
    infos = []
    for g, vis in ((g0, vis0), (g1, vis1)):
        means2d = torch.zeros(1, n, 2, requires_grad=True)
        means2d.grad = g[None].clone()
        radii = (vis[None, :, None] * torch.tensor([3, 2])).to(torch.int32)
        infos.append({"width": w, "height": h, "n_cameras": 1, "radii": radii, "means2d": means2d})
    accumulate_stats(strategy, {"means": torch.zeros(n, 3)}, state, infos)
    ndc = torch.tensor([w / 2.0, h / 2.0])
    # a view's gradient counts only where that view sees the Gaussian (3: view 0 only)
    expected = torch.linalg.norm((g0 * vis0[:, None] + g1 * vis1[:, None]) * ndc, dim=-1)
    assert expected[3] == 0.5 * w / 2.0
    assert torch.allclose(state["grad2d"], expected)
    assert expected[1] == 0.0  # opposite gradients cancel (a per-view sum would give 2 x 48)
    assert torch.equal(state["count"], torch.tensor([1.0, 1, 1, 1, 0]))
    assert torch.allclose(state["radii"], torch.tensor([3.0, 3, 3, 3, 0]) / w)


def _step_views(model, scene, picks, *, batched: bool, device: torch.device, lambda_dssim: float = 0.0):
    """Loss, gradients, densification statistics and the most views any Gaussian is visible in,
    for one training step over ``picks``."""
    from gsplat.strategy import DefaultStrategy
    from evalkit.train.densify_stats import accumulate_stats
    from evalkit.train.images import ImageBank
    from evalkit.models.fourdgs.trainer import views_loss
    frames = scene.train
    bank = ImageBank(frames, device)
    times = torch.tensor([f.time for f in frames], device=device)
    model.zero_grad(set_to_none=True)
    cfg = FourDGSConfig(**TINY, lambda_dssim=lambda_dssim)
    loss, mse_sum, infos = views_loss(model, frames, bank, picks, times, cfg, True, 3, True, batched=batched)
    loss.backward()
    strategy = DefaultStrategy(refine_scale2d_stop_iter=1)
    state = strategy.initialize_state(1.0)
    accumulate_stats(strategy, model.gaussians, state, infos)
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
    n = model.num_primitives()
    seen_by = sum((i["radii"].reshape(-1, n, 2) > 0).all(-1).sum(0) for i in infos)
    return float(loss.detach()), float(mse_sum), grads, state, int(seen_by.max())


@pytest.mark.parametrize("device,lambda_dssim", [("cpu", 0.0), ("cpu", 0.2),
                                                 pytest.param("cuda", 0.0, marks=pytest.mark.gpu)])
def test_batched_views_step_equals_view_by_view(trained, tiny_scene, device, lambda_dssim):
    """Rendering a step's views in one call (deformation of B x N points, the rasteriser's batch
    axis) gives the loss, the gradients of every parameter and the densification statistics of
    rendering them one by one."""
    import copy
    _, model, _, _ = trained
    model = copy.deepcopy(model).to(device)
    picks = [0, 5, 9]  # three times
    assert len({tiny_scene.train[i].time for i in picks}) == 3
    one = _step_views(model, tiny_scene, picks, batched=False, device=torch.device(device), lambda_dssim=lambda_dssim)
    many = _step_views(model, tiny_scene, picks, batched=True, device=torch.device(device), lambda_dssim=lambda_dssim)
    assert many[0] == pytest.approx(one[0], rel=1e-5) and many[1] == pytest.approx(one[1], rel=1e-5)
    assert one[2].keys() == many[2].keys() and "deformation.grid.grids.0.2" in one[2]
    for k in one[2]:
        torch.testing.assert_close(many[2][k], one[2][k], rtol=1e-4, atol=1e-6, msg=k)
    for k in ("grad2d", "count", "radii"):
        torch.testing.assert_close(many[3][k], one[3][k], rtol=1e-4, atol=1e-6, msg=k)
    assert one[4] == many[4] == 3  # some Gaussians are seen by all three views ...
    assert one[3]["count"].max() == 1.0  # ... and count once a step


def _two_gaussians(near_plane: float):
    """A red Gaussian 0.1 in front of the camera (beside it, as a dome wall's Gaussian beside a
    camera set in that wall) and a green one at depth 3, both on the optical axis of a 16x16 view."""
    from evalkit.data.scene import Camera
    from evalkit.models.fourdgs.deformation import DeformationField
    from evalkit.models.fourdgs.model import FourDGSModel, init_gaussians
    from evalkit.data.scene import PointCloud

    cfg = FourDGSConfig(**TINY, near_plane=near_plane)
    pts = PointCloud(xyz=np.array([[0.0, 0.0, 0.1], [0.0, 0.0, 3.0]], np.float32), rgb=None)
    g = init_gaussians(pts, 3, torch.device("cpu"))
    with torch.no_grad():
        g["scales"].copy_(torch.log(torch.tensor([[0.05] * 3, [1.0] * 3])))
        g["opacities"].fill_(torch.logit(torch.tensor(0.99)))
        g["sh0"].zero_(); g["shN"].zero_()
        c0 = 0.28209479177387814  # SH band 0: colour = c0 * dc + 0.5
        g["sh0"][0, 0] = torch.tensor([0.5, -0.5, -0.5]) / c0
        g["sh0"][1, 0] = torch.tensor([-0.5, 0.5, -0.5]) / c0
    deform = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    model = FourDGSModel(g, deform, 3, torch.zeros(3), cfg.near_plane)
    K = np.array([[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]])
    return model, cfg, Camera(K=K, w2c=np.eye(4), width=16, height=16)


@pytest.mark.parametrize("near, colour", [(0.2, [0.0, 1.0, 0.0]), (0.01, [1.0, 0.0, 0.0])])
def test_near_plane_drops_gaussians_beside_the_camera(near, colour):
    """The 3DGS / 4DGaussians rasteriser draws no Gaussian with view depth <= 0.2: at the 0.2
    default the near one is culled and the far one shows; at gsplat's 0.01 the near one covers
    the view."""
    model, _, cam = _two_gaussians(near)
    with torch.no_grad():
        img = model.rasterize(cam, 0.0, deform=False).image
    assert torch.allclose(img[8, 8], torch.tensor(colour), atol=0.02)


def test_near_plane_is_stored_and_old_bitstreams_keep_gsplats():
    model, cfg, cam = _two_gaussians(0.2)
    bits = codec.encode(model, cfg)
    assert codec.decode(Bitstream.from_bytes(bits.to_bytes()), torch.device("cpu"))[0].near_plane == 0.2
    del bits.header["config"]["near_plane"]  # as files written before the setting existed
    old, old_cfg = codec.decode(Bitstream.from_bytes(bits.to_bytes()), torch.device("cpu"))
    assert old.near_plane == old_cfg.near_plane == 0.01
    with torch.no_grad():
        assert torch.allclose(old.rasterize(cam, 0.0, deform=False).image[8, 8], torch.tensor([1.0, 0.0, 0.0]), atol=0.02)


@pytest.mark.parametrize("densify_below", [360000, 1])
def test_densification_steps_leave_gaussians_unstepped_and_last_step_updates_nothing(tiny_scene, densify_below):
    """As the reference: its densify() rebuilds the Gaussian tensors (dropping their gradients)
    even when nothing is added, so Adam skips the Gaussians at those steps while the deformation
    field is updated; on the fine stage's last step (``iteration < iterations`` fails) nothing is.
    At or above ``densify_below`` Gaussians there is no densification, so no skipped update."""
    cfg = FourDGSConfig(**TINY, coarse_iterations=0, iterations=12, densify_from_iter=2,
                        densification_interval=3, densify_until_iter=100, opacity_reset_interval=1000,
                        densify_grad_threshold=1e9,  # refinement steps 3, 6, 9, 12 that grow nothing
                        densify_below=densify_below)
    densifies = densify_below > 1
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def snapshot(model, stage, step):  # called before the step's backward: state after step - 1
        seen[step] = (model.gaussians["means"].detach().clone(), model.deformation.grid_parameters()[0].detach().clone())
        return torch.zeros((), device=model.device)

    torch.manual_seed(0)
    model = build_model(tiny_scene, cfg, torch.device("cpu"))
    model, _ = train(tiny_scene, cfg, torch.device("cpu"), model=model, stages=("fine",), extra_loss=snapshot)
    final = (model.gaussians["means"].detach(), model.deformation.grid_parameters()[0].detach())
    after = {s: seen[s + 1] for s in range(1, 12)} | {12: final}
    for s in range(1, 12):
        moved_means = not torch.equal(after[s][0], seen[s][0])
        moved_grid = not torch.equal(after[s][1], seen[s][1])
        assert moved_means == (s % 3 != 0 or not densifies), f"step {s}: Gaussians {'moved' if moved_means else 'stayed'}"
        assert moved_grid, f"step {s}: the deformation field was not updated"
    assert torch.equal(final[0], seen[12][0]) and torch.equal(final[1], seen[12][1])


def test_training_leaves_the_scene_points_as_loaded(trained, tiny_scene, synth_scene_dir):
    """The runner keeps one Scene for every job of a scene: training on the CPU must not move its
    points (the Gaussians once shared the float32 array, and the next job started from them)."""
    fresh = load_scene(synth_scene_dir("dnerf"), resolution_scale=0.5)
    np.testing.assert_array_equal(tiny_scene.points.xyz, fresh.points.xyz)
