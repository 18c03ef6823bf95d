"""4DGS-CC end to end on a tiny synthetic scene (CPU): train through the Method API, encode, decode
from the bytes alone, and check that every quantised symbol and every render survives exactly,
that the coded size matches the training-time rate estimate, that lambda_e trades size, and that
the ablation variants run and cost more bytes than the full method where the scale allows."""
from __future__ import annotations


import pytest
import torch

from evalkit.codec.container import Bitstream
from evalkit.methods.base import Budget, RatePoint, TrainContext
from evalkit.methods.fourdgs_cc import FourDGSCC, codec
from evalkit.codec.canonical import ATTRIBUTES

from tests.methods.fourdgs_cc_common import TINY_4DGS, TINY_CC, single_thread_torch, tiny_scene  # noqa: F401

CPU = torch.device("cpu")


def _ctx(cache: dict, **over) -> TrainContext:
    return TrainContext(device=CPU, budget=Budget(seed=0), config={**TINY_4DGS, **TINY_CC, **over}, cache=cache)


def _round_trip(method: FourDGSCC, trained):
    bits = trained.encode()
    return bits, method.decode(Bitstream.from_bytes(bits.to_bytes()), CPU)


@pytest.fixture(scope="module")
def trained(tiny_scene):
    """Two rate points of one scene sharing the coarse stage: lambda_e 1e-5 and 1."""
    method, cache = FourDGSCC(), {}
    high = method.train(tiny_scene, RatePoint("high", {"lambda_e": 1e-5}), _ctx(cache))
    low = method.train(tiny_scene, RatePoint("low", {"lambda_e": 1.0}), _ctx(cache))
    return method, high, low, cache


@pytest.fixture(scope="module")
def coded(trained):
    method, high, _, _ = trained
    return _round_trip(method, high)


def test_every_quantised_symbol_decodes_exactly(trained, coded) -> None:
    _, high, _, _ = trained
    enc = high.finalize()
    bits, decoded = coded
    dec = decoded.coded
    assert dec.num_gaussians == enc.num_gaussians == high.num_primitives() == decoded.num_primitives()
    for name in ATTRIBUTES:
        (qe, pe), (qd, pd) = enc.canonical[name], dec.canonical[name]
        assert torch.equal(qe, qd) and torch.equal(pe.lo, pd.lo) and torch.equal(pe.hi, pd.hi)
    assert torch.equal(enc.runs, dec.runs) and torch.equal(enc.codebook, dec.codebook)
    for le, ld in zip(enc.plane_symbols, dec.plane_symbols):
        for qe, qd in zip(le, ld):
            assert qe.dtype == torch.int64 and torch.equal(qe, qd)
    assert enc.mlp_state.keys() == dec.mlp_state.keys()
    assert all(torch.equal(enc.mlp_state[k], dec.mlp_state[k]) for k in enc.mlp_state)
    # VQ really quantised: at most codebook_size distinct colours, the indices run-length coded
    assert len(enc.runs) <= TINY_CC["codebook_size"] and int(enc.runs.sum()) == enc.num_gaussians
    sizes = bits.sizes()
    assert sizes["vq_indices"] < enc.num_gaussians * 7 / 8 / 4


def test_decoded_renders_equal_the_quantised_model(tiny_scene, trained, coded) -> None:
    _, high, _, _ = trained
    _, decoded = coded
    for f in tiny_scene.test[:3]:
        a, b = high.render(f.camera, f.time), decoded.render(f.camera, f.time)
        assert a.shape == (f.camera.height, f.camera.width, 3)
        assert torch.equal(a, b)
    # and the quantised model is what was trained (the straight-through planes and code vectors):
    f = tiny_scene.test[0]
    with torch.no_grad():
        trained_img = high.model.rasterize(f.camera, f.time).image.clamp(0, 1)
    assert (trained_img - decoded.render(f.camera, f.time)).abs().mean() < 0.02


def test_quality_stages_are_the_models_before_finalize(tiny_scene, trained) -> None:
    """The runner's coding-step breakdown: VQ with unrounded codes, then codes on the grid (the
    model training renders); the step after that is the decoded bitstream (tested above)."""
    _, high, _, _ = trained
    stages = dict(high.quality_stages())
    assert list(stages) == ["VQ, codes unrounded", "+ codes on the grid (as trained)"]
    f = tiny_scene.test[0]
    with torch.no_grad():
        as_trained = high.model.rasterize(f.camera, f.time).image.clamp(0, 1)
    assert torch.equal(stages["+ codes on the grid (as trained)"](f.camera, f.time), as_trained)
    unrounded = stages["VQ, codes unrounded"](f.camera, f.time)
    assert not torch.equal(unrounded, as_trained)  # rounding the codes changes colours ...
    assert (unrounded - as_trained).abs().max() < 0.05  # ... by little
    assert high.model.vq.round_codes  # and the stage put the rounding back
    assert torch.equal(stages["+ codes on the grid (as trained)"](f.camera, f.time), as_trained)


def test_coded_size_matches_the_rate_estimate(trained, coded) -> None:
    _, high, _, _ = trained
    bits, _ = coded
    sizes = bits.sizes()
    est = high.rate_estimate()
    nv_streams = 3 + 1 + 1 + (TINY_4DGS["resolution"][3] - 1 + len(TINY_4DGS["multires"]) - 1)
    nvcc_bytes, vqcc_bytes = est["nvcc"] / 8, est["vqcc"] / 8
    assert abs(sizes["hexplane_nvcc"] - nvcc_bytes) <= 0.05 * nvcc_bytes + 16 * nv_streams
    coded_cb = sizes["codebook_z"] + sizes["codebook_y"]
    assert abs(coded_cb - vqcc_bytes) <= 0.05 * vqcc_bytes + 64


def test_lower_lambda_gives_a_larger_file(trained) -> None:
    _, high, low, _ = trained
    hb, lb = high.encode().sizes(), low.encode().sizes()
    assert hb["hexplane_nvcc"] > 1.5 * lb["hexplane_nvcc"]
    assert hb["total"] > lb["total"]


def test_codebook_usage_is_reported(trained) -> None:
    """The fine stage records how many codes exist, stay distinct on the grid and are used."""
    _, high, _, _ = trained
    vq = high.model.vq
    usage = high.stats["vq"]
    assert usage["codes"] == vq.n_codes
    assert usage["used"] == len(set(vq.indices.tolist())) and 1 <= usage["used"] <= usage["codes"]
    q = torch.round(vq.codebook[:vq.n_codes] / vq.step)
    assert usage["distinct_quantised"] == len({tuple(r) for r in q.tolist()})


def test_coarse_stage_is_shared_between_rate_points(trained) -> None:
    _, high, low, cache = trained
    assert high.reused is None and low.reused == {
        "coarse_stage": "shared between rate points of this scene (trained by an earlier one)"}
    assert high.stats["coarse"] == low.stats["coarse"] and len(cache) == 1
    assert high.iterations == low.iterations == TINY_4DGS["coarse_iterations"] + TINY_4DGS["iterations"]


def test_bitstream_names_its_components(coded) -> None:
    bits, _ = coded
    assert set(bits.components) == {"xyz", "scale", "rotation", "opacity", "vq_indices", "codebook_z",
                                    "codebook_y", "vqcc_model", "hexplane_nvcc", "nvcc_model", "deformation_mlp"}
    assert set(bits.header["canonical_fixed_length_bytes"]) == set(ATTRIBUTES)


def test_wrong_method_bitstream_is_rejected(coded) -> None:
    from evalkit.codec.container import BitstreamError

    bits, _ = coded
    other = Bitstream(header={**bits.header, "method": "4dgs"}, components=bits.components)
    with pytest.raises(BitstreamError, match="not a 4dgs-cc bitstream"):
        codec.decode(other, "x.bin")


ABLATIONS = {
    "w/o CG": {"compress_canonical": False},
    "w/o NV": {"compress_hexplane": False},
    "w/o NVCC": {"nvcc": False},
    "w/o VQCC": {"vqcc": False},
    "w/o SP": {"nvcc_spatial_prior": False},
    "w/o HF": {"nvcc_hidden_update": False},
}


@pytest.mark.slow
def test_ablation_variants_run_and_cost_more_bytes(tiny_scene, trained) -> None:
    """Each variant trains (sharing the coarse stage), round-trips exactly, and the full method is
    smaller than the variants without canonical compression, HexPlane compression, NVCC or its
    spatial prior (paper Figs. 5-6). 30 fine iterations: lambda_e = 0.1 so that the rate term has
    shaped the planes. At this toy scale the VQCC network (5 KB) outweighs its 128-code codebook
    (400 B stored directly) and the hidden-state update saves about as much as its weights cost
    (8-row planes); those two savings are checked on paper-sized and structured data in
    test_fourdgs_cc_entropy."""
    method, _, _, cache = trained
    short = {"iterations": 30, "densify_until_iter": 15}
    rate = RatePoint("ablation", {"lambda_e": 0.1})
    full = method.train(tiny_scene, rate, _ctx(cache, **short))
    sizes = {"full": full.encode().sizes()["total"]}
    for name, flags in ABLATIONS.items():
        t = method.train(tiny_scene, rate, _ctx(cache, **short, **flags))
        bits, decoded = _round_trip(method, t)
        f = tiny_scene.test[0]
        assert torch.equal(t.render(f.camera, f.time), decoded.render(f.camera, f.time)), name
        sizes[name] = bits.sizes()["total"]
    for name in ("w/o CG", "w/o NV", "w/o NVCC", "w/o SP"):
        assert sizes["full"] < sizes[name], (name, sizes)


def test_vq_started_during_densification_follows_the_changing_gaussian_set(tiny_scene, trained) -> None:
    """vq_start before densification stops: every densify / prune step changes the Gaussian set and
    the clustering is redone, so at the end every Gaussian has an index, the member counts match
    and the codebook has not collapsed."""
    method, _, _, cache = trained
    early = method.train(tiny_scene, RatePoint("high", {"lambda_e": 1e-5}), _ctx(cache, vq_start=6))
    vq, n = early.model.vq, early.model.num_primitives()
    assert early.stats["vq"]["start"] == 6 < TINY_4DGS["densify_until_iter"]
    assert early.stats["fine"]["gaussians"] == n
    assert vq.indices.shape == (n,) and int(vq.counts.sum()) == n
    assert torch.equal(vq.counts, torch.bincount(vq.indices, minlength=vq.size).float())
    assert early.stats["vq"]["used"] >= 0.5 * early.stats["vq"]["codes"]


def test_coarse_stage_is_shared_through_a_sweeps_artefact_file(trained, tiny_scene, tmp_path) -> None:
    """Under a sweep (``evalkit.sweep.shared``) the cache entry is stored beside the records; a
    worker in another process loads it instead of training the coarse stage, and ``reused`` names
    the file."""
    from evalkit.sweep.shared import SharedStages

    cache = trained[3]
    (key, entry), = cache.items()
    SharedStages(tmp_path / "ds" / "sc" / "_shared", tmp_path, device="cpu")[key] = entry
    fresh = SharedStages(tmp_path / "ds" / "sc" / "_shared", tmp_path, device="cpu")  # another worker
    again = FourDGSCC().train(tiny_scene, RatePoint("low", {"lambda_e": 1.0}), _ctx(fresh))
    assert again.reused == {"coarse_stage": "shared between rate points of this scene (trained by an earlier one)",
                            "artefact": "ds/sc/_shared/4dgs-cc_coarse-stage.pt"}
    assert again.stats["coarse"] == entry["stats"]  # the stored stage, not a new one
