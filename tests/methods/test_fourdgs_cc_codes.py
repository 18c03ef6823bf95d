"""4DGS-CC building blocks without training: integer codes, canonical quantisation, SH vector
quantisation and index run-length coding, configuration and rate points (paper Table 4)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evalkit.codec.container import BitstreamError
from evalkit.methods.base import Budget, RatePoint, TrainContext
from evalkit.models.fourdgs.config import FourDGSConfig
from evalkit.codec import intcode
from evalkit.methods.fourdgs_cc import resolve_config
from evalkit.codec.canonical import (decode_symbols, dequantize_attribute, encode_symbols,
                                     params_from_json, params_to_json, quantize_attribute)
from evalkit.methods.fourdgs_cc.config import CCConfig, split_config
from evalkit.methods.fourdgs_cc.training import VQSchedule
from evalkit.train.vq import (SHVectorQuantizer, compact_and_sort, decode_runs, encode_runs,
                              indices_from_runs, kmeans, nearest_code)
from evalkit.specs import load_method_spec

from tests.methods.fourdgs_cc_common import single_thread_torch  # noqa: F401


# -- integer codes ----------------------------------------------------------------------
@pytest.mark.parametrize("values,bits", [
    (np.random.default_rng(0).integers(0, 256, 1000), 8),
    (np.clip(np.random.default_rng(1).normal(30000, 300, 4000), 0, 65535).astype(np.int64), 16),
    (np.zeros(17, np.int64), 8),
    (np.array([255]), 8),
    (np.zeros(0, np.int64), 8),
])
@pytest.mark.parametrize("entropy", [True, False])
def test_auto_code_round_trips_and_never_exceeds_fixed_length(values, bits, entropy) -> None:
    data = intcode.encode_auto(values, bits, entropy)
    assert np.array_equal(intcode.decode_auto(data, len(values), bits, "t"), values)
    assert len(data) <= 1 + math.ceil(len(values) * bits / 8)


def test_histogram_code_approaches_empirical_entropy() -> None:
    v = np.random.default_rng(2).geometric(0.3, 20000)  # skewed: ~2.9 bits of entropy, 8-bit range
    counts = np.bincount(v)
    p = counts[counts > 0] / len(v)
    entropy_bytes = -(p * np.log2(p)).sum() * len(v) / 8
    data = intcode.encode_histogram(v)
    assert np.array_equal(intcode.decode_histogram(data, len(v), "t"), v)
    assert len(data) < entropy_bytes * 1.01 + 64


def test_histogram_code_handles_ranges_wider_than_a_table() -> None:
    v = np.random.default_rng(3).integers(-40000, 40000, 3000)
    assert np.array_equal(intcode.decode_histogram(intcode.encode_histogram(v), len(v), "t"), v)


def test_unsigned_code_round_trips_heavy_tails() -> None:
    v = np.concatenate([np.random.default_rng(4).geometric(0.05, 500) - 1, [0, 1, 2**40]])
    assert np.array_equal(intcode.decode_unsigned(intcode.encode_unsigned(v), len(v), "t"), v)


def test_corrupt_integer_stream_raises_bitstream_error() -> None:
    data = bytearray(intcode.encode_auto(np.random.default_rng(5).integers(0, 8, 400), 8))
    with pytest.raises(BitstreamError):
        intcode.decode_auto(bytes(data[:-3]), 400, 8, "t")
    data[0] = 7
    with pytest.raises(BitstreamError, match="tag"):
        intcode.decode_auto(bytes(data), 400, 8, "t")


# -- canonical attributes ---------------------------------------------------------------
@pytest.mark.parametrize("bits", [8, 16])
def test_canonical_attribute_codes_are_exact_and_error_is_half_a_step(bits) -> None:
    x = torch.randn(500, 3) * torch.tensor([1.0, 10.0, 0.1])
    q, params = quantize_attribute(x, bits)
    data, fixed = encode_symbols(q, bits, entropy=True)
    assert fixed == math.ceil(q.numel() * bits / 8)
    back = decode_symbols(data, 500, 3, bits, "t")
    assert torch.equal(back, q)
    p2 = params_from_json(params_to_json(params), "t")
    assert torch.equal(p2.lo, params.lo) and torch.equal(p2.hi, params.hi) and p2.bits == bits
    err = (dequantize_attribute(back, p2, "means") - x).abs().max(0).values
    assert torch.all(err <= (params.hi - params.lo) / (2 ** bits - 1) / 2 * 1.0001 + 1e-6)


def test_opacity_is_quantised_per_gaussian_scalar() -> None:
    o = torch.randn(50)
    q, params = quantize_attribute(o, 8)
    assert q.shape == (50, 1)
    assert dequantize_attribute(q, params, "opacities").shape == (50,)


# -- vector quantisation ---------------------------------------------------------------------
def test_nearest_code_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(0)
    x, c = torch.randn(300, 48, generator=g), torch.randn(37, 48, generator=g)
    brute = torch.cdist(x, c).argmin(1)
    assert torch.equal(nearest_code(x, c, chunk_elements=1000), brute)


def test_kmeans_recovers_separated_clusters() -> None:
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(5, 6, generator=g) * 10
    labels = torch.arange(500) % 5
    x = centres[labels] + 0.1 * torch.randn(500, 6, generator=g)
    found, idx = kmeans(x, 5, iters=10, seed=0)
    # every true cluster maps to exactly one found code, and the codes sit on the true centres
    mapping = {int(labels[i]): int(idx[i]) for i in range(500)}
    assert len(set(mapping.values())) == 5
    assert all(int(idx[i]) == mapping[int(labels[i])] for i in range(500))
    for t, f in mapping.items():
        assert torch.allclose(found[f], centres[t], atol=0.05)


def test_quantizer_renders_member_means_with_straight_through_gradients() -> None:
    """Compact3D's VQ: a code is the mean of its members' continuous SH, rendered on the grid; the
    render's gradient goes straight to each member, the rate's through the means."""
    sh = torch.randn(64, 16, 3, generator=torch.Generator().manual_seed(4)).requires_grad_()
    vq = SHVectorQuantizer(8, 48, step=1 / 64, kmeans_iters=3)
    assert torch.equal(vq(sh), sh)  # before VQ starts: the continuous SH
    vq.pending = "init"
    out = vq(sh)
    flat = sh.detach().reshape(64, 48)
    means = torch.stack([flat[vq.indices == k].mean(0) for k in range(8)])
    assert torch.allclose(vq.codebook, means, atol=1e-6)
    codes = torch.round(means * 64) / 64
    assert torch.allclose(out.detach().reshape(64, 48), codes[vq.indices], atol=1e-6)
    w = torch.randn(64, 16, 3)
    (out * w).sum().backward()
    assert torch.equal(sh.grad, w)  # straight through: each member gets its own gradient
    sh.grad = None
    vq.code_vectors(sh.reshape(64, 48))[3].sum().backward()  # a rate term on code 3
    members = vq.indices == 3
    expected = torch.zeros(64, 48)
    expected[members] = 1.0 / int(members.sum())
    assert torch.allclose(sh.grad.reshape(64, 48), expected)


def test_codes_follow_their_members_through_training_and_reassignment() -> None:
    """Straight-through training moves each member's continuous SH on its own; the codes are
    the member means at every step and after every re-assignment, so the codes follow the
    members and re-clustering keeps the codebook in use (a free codebook parameter did not: the
    members drifted from their codes and re-assignment gathered them on a few codes)."""
    g = torch.Generator().manual_seed(3)
    sh = torch.randn(2000, 16, 3, generator=g).requires_grad_()
    target = torch.randn(2000, 16, 3, generator=g)  # each Gaussian "wants" its own colour
    vq = SHVectorQuantizer(256, 48, step=1 / 64, kmeans_iters=5)
    vq.pending = "init"
    opt = torch.optim.Adam([sh], lr=0.05)

    def check_means() -> None:
        flat = sh.detach().reshape(2000, 48)
        for k in torch.unique(vq.indices)[:20].tolist():
            assert torch.allclose(vq.codebook[k], flat[vq.indices == k].mean(0), atol=1e-5)

    for step in range(60):
        if step and step % 20 == 0:
            vq.pending = "assign"
        loss = (vq(sh) - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        vq(sh)  # the codes as the next step renders them
        check_means()
    assert vq.usage()["used"] >= 0.9 * 256
    first = (torch.randn(2000, 16, 3, generator=torch.Generator().manual_seed(3)) - target).square().mean()
    assert loss.item() < first.item()  # the quantised model learned


def test_quantizer_follows_a_changed_gaussian_set_and_small_sets() -> None:
    vq = SHVectorQuantizer(100, 48, step=1 / 64, kmeans_iters=2)
    vq.pending = "init"
    vq(torch.randn(30, 16, 3))
    assert vq.n_codes == 30  # fewer Gaussians than codes: one code each
    out = vq(torch.randn(45, 16, 3))  # densification added Gaussians: re-assigned
    assert vq.indices.shape == (45,) and out.shape == (45, 16, 3)


def test_index_sorting_and_run_lengths_round_trip() -> None:
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 50, (1000,), generator=g)
    idx[idx == 7] = 8  # an unused code is dropped
    codebook = torch.randint(-100, 100, (50, 48), generator=g)
    order, runs, used = compact_and_sort(idx, codebook)
    assert len(runs) == 49 and int(runs.min()) >= 1 and int(runs.sum()) == 1000
    new_idx = indices_from_runs(runs)
    # Gaussian order[j] now sits at position j and still gets its own code vector
    assert torch.equal(used[new_idx], codebook[idx[order]])
    data = encode_runs(runs)
    assert torch.equal(decode_runs(data, 49, 1000, "t"), runs)
    assert len(data) < 1000 * 6 / 8 / 4  # far below 6-bit indices per Gaussian
    with pytest.raises(BitstreamError, match="cover"):
        decode_runs(data, 49, 999, "t")


# -- configuration and rate points -------------------------------------------------------------
def test_config_errors_name_the_spec() -> None:
    with pytest.raises(ValueError, match="4dgs-cc.toml.*unknown option"):
        split_config({}, {"lambda_x": 1})
    with pytest.raises(ValueError, match="power of two"):
        CCConfig(hexplane_qstep=0.01)


@pytest.mark.parametrize("dataset,sizes", [("dnerf", (4096, 6144, 8192)), ("neu3d", (4096, 8192, 16384)),
                                           ("hypernerf", (4096, 8192, 16384))])
def test_rate_points_follow_table_4(dataset, sizes) -> None:
    spec = load_method_spec("4dgs-cc")
    rates = {r.name: r.params for r in spec.rate_points(dataset)}
    assert list(rates) == ["low", "mid", "high"]
    for name, lam, size in zip(("low", "mid", "high"), (1e-3, 1e-4, 1e-5), sizes):
        assert rates[name]["lambda_e"] == lam and rates[name]["codebook_size"] == size
    assert spec.config(dataset, "")["lambda_c"] == 0.01


def test_4dgs_hyperparameters_are_inherited_per_scene() -> None:
    ctx = TrainContext(device=torch.device("cpu"), budget=Budget(),
                       config=load_method_spec("4dgs-cc").config("dnerf", "lego"), dataset="dnerf", scene_name="lego")
    fcfg, cc = resolve_config(ctx, RatePoint("mid", {"lambda_e": 1e-4, "codebook_size": 6144}))
    ref = FourDGSConfig.from_dict(load_method_spec("4dgs").config("dnerf", "lego"))
    assert fcfg == ref and fcfg.resolution == [64, 64, 64, 25]
    assert cc.lambda_e == 1e-4 and cc.codebook_size == 6144 and cc.lambda_c == 0.01


def test_vq_starts_when_densification_stops() -> None:
    fcfg = FourDGSConfig()  # D-NeRF: 20k fine iterations, densification until 15k
    sched = VQSchedule.of(fcfg, CCConfig())
    assert sched.start == 15000 and sched.action(15000) == "init"
    assert sched.action(15100) == "assign" and sched.action(15050) is None
    assert sched.until == 15000 + int(0.67 * 5000) and sched.action(19900) is None


def test_vq_start_fraction_scales_with_the_schedule_and_the_diagnostic_variants_set_it() -> None:
    """`4dgs-cc:vq-early` starts VQ at 3/8 of the fine stage whatever --iterations makes it (D-NeRF:
    step 7,500 of 20,000); `4dgs-cc:vq-once` assigns the codes once (no re-assignment after init)."""
    early = CCConfig.from_dict(load_method_spec("4dgs-cc:vq-early").config("dnerf", "lego"))
    assert VQSchedule.of(FourDGSConfig(), early).start == 7500
    assert VQSchedule.of(FourDGSConfig(iterations=4000), early).start == 1500
    once = VQSchedule.of(FourDGSConfig(), CCConfig.from_dict(load_method_spec("4dgs-cc:vq-once").config("dnerf", "lego")))
    assert once.start == 15000 and once.action(15000) == "init"
    assert [s for s in range(15001, 20001) if once.action(s)] == []
    with pytest.raises(ValueError, match="vq_start_fraction"):
        CCConfig(vq_start=10, vq_start_fraction=0.5)


def base_rate_compile() -> bool:
    return bool(load_method_spec("4dgs-cc").config("dnerf", "lego").get("rate_compile", False))


def test_ablations_are_spec_variants_of_the_method() -> None:
    """Paper Figs. 5-7: each ablation is `4dgs-cc:<variant>`, the same method and rate points with
    one component switched off, recorded under its own name."""
    from evalkit.methods.registry import get_method
    from evalkit.specs import SpecError, method_variants
    expected = {"wo-cg": ("compress_canonical", False), "wo-nv": ("compress_hexplane", False),
                "wo-vqcc": ("vqcc", False), "wo-nvcc": ("nvcc", False),
                "wo-sp": ("nvcc_spatial_prior", False), "wo-hf": ("nvcc_hidden_update", False)}
    diagnostics = {"vq-early", "vq-once"}  # issue 27's experiments, tested below
    speed = {"compiled"}  # the same terms, fused by torch.compile (issue 27's timing)
    assert sorted(v.partition(":")[2] for v in method_variants("4dgs-cc")) == sorted({*expected, *diagnostics, *speed})
    compiled = load_method_spec("4dgs-cc:compiled").config("dnerf", "lego")
    assert compiled["rate_compile"] is True and not base_rate_compile()
    assert {k: v for k, v in compiled.items() if k != "rate_compile"} == {
        k: v for k, v in load_method_spec("4dgs-cc").config("dnerf", "lego").items() if k != "rate_compile"}
    base = load_method_spec("4dgs-cc")
    for variant, (key, value) in expected.items():
        spec = load_method_spec(f"4dgs-cc:{variant}")
        assert spec.name == f"4dgs-cc:{variant}" and not spec.uncompressed
        cfg = spec.config("dnerf", "lego")
        assert cfg[key] == value and base.config("dnerf", "lego")[key] != value
        assert {k: v for k, v in cfg.items() if k != key} == {k: v for k, v in base.config("dnerf", "lego").items() if k != key}
        assert [r.params for r in spec.rate_points("dnerf")] == [r.params for r in base.rate_points("dnerf")]
        assert type(get_method(spec.name)).__name__ == "FourDGSCC"
        _, cc = split_config({}, cfg)
        assert getattr(cc, key) == value
    with pytest.raises(SpecError, match="4dgs-cc.toml.*unknown variant 'wo-xyz'.*wo-cg"):
        load_method_spec("4dgs-cc:wo-xyz")


@pytest.mark.parametrize("moves_codes", [False, True])
def test_vqcc_rate_trains_vqcc_and_moves_codes_only_when_asked(moves_codes: bool) -> None:
    """Default: the VQCC rate trains the VQCC networks and leaves the SH (hence the render) alone,
    VQCC being lossless coding of the codebook; ``vqcc_rate_moves_codes`` lets it reach the SH."""
    from evalkit.models.fourdgs.deformation import DeformationConfig, DeformationField
    from evalkit.models.fourdgs.hexplane import HexPlaneConfig
    from evalkit.models.fourdgs.model import FourDGSModel
    from evalkit.methods.fourdgs_cc.config import CCConfig
    from evalkit.methods.fourdgs_cc.model import FourDGSCCModel

    torch.manual_seed(0)
    hp = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 4], multires=[1])
    deform = DeformationField(DeformationConfig(hexplane=hp, depth=0, width=8), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    n = 200
    g = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in dict(
        means=torch.randn(n, 3), scales=torch.full((n, 3), -3.0), quats=torch.randn(n, 4), opacities=torch.zeros(n),
        sh0=torch.rand(n, 1, 3), shN=0.1 * torch.randn(n, 15, 3)).items()})
    cc = CCConfig(codebook_size=16, vqcc_hidden=8, vqcc_latent=4, nvcc_hidden=8, compress_hexplane=False,
                  cuda_graphs=False, vqcc_rate_moves_codes=moves_codes)
    model = FourDGSCCModel(FourDGSModel(g, deform, 3, torch.zeros(3), 0.2), cc)
    model.vq.pending = "init"
    model.canonical_sh()
    bits, count = model.rate_terms("noise")["vqcc"]
    bits.backward()
    sh_grad = [model.gaussians[k].grad for k in ("sh0", "shN")]
    trained = {n for n, p in model.vqcc.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert {"h_a.0.weight", "h_s.2.weight", "prior.matrices.0"} <= trained  # hyper-analysis, -synthesis, prior
    if moves_codes:
        assert all(gr is not None and gr.abs().sum() > 0 for gr in sh_grad)
    else:
        assert all(gr is None or not gr.any() for gr in sh_grad)
    # either way the rate is that of the codes the render used: the members' means
    flat = FourDGSModel.canonical_sh(model).reshape(n, -1).detach()
    with torch.no_grad():
        expect = model.vqcc.bits(model.vq.code_vectors(flat), "ste")[0]
        got = model.rate_terms("ste")["vqcc"][0]
    torch.testing.assert_close(got, expect)


def test_a_checkpoint_resumes_with_the_rate_terms_compiled_or_not() -> None:
    """``rate_compile`` fuses the same terms (a speed option, as ``cuda_graphs``): a run killed with it
    off resumes with it on and the other way round; a setting that changes the model does not."""
    from dataclasses import replace

    from evalkit.methods.fourdgs_cc import FourDGSCC, merged_config
    from evalkit.methods.fourdgs_cc.config import CCConfig
    from evalkit.train.checkpoint import checkpoint_key

    def key(cc: CCConfig) -> str:
        return checkpoint_key("4dgs-cc", merged_config("4dgs", FourDGSConfig(), cc), 0, FourDGSCC.speed_options)

    cc = CCConfig()
    assert key(replace(cc, rate_compile=True)) == key(replace(cc, rate_compile=False))
    assert key(replace(cc, cuda_graphs=not cc.cuda_graphs)) == key(cc)
    assert key(replace(cc, lambda_e=cc.lambda_e * 10)) != key(cc)
