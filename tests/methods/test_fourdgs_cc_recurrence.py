"""NVCC's training recurrence (hand-written backward, optional CUDA graph) against autograd and
against the coding path's step-by-step attention."""
from __future__ import annotations

import shutil

import pytest
import torch

from evalkit.models.fourdgs.hexplane import HexPlaneConfig
from evalkit.methods.fourdgs_cc.nvcc import NVCC
from evalkit.methods.fourdgs_cc.recurrence import recurrence, reference_recurrence
from tests.methods.triton_interpreter import run_in_interpreter


def _inputs(T1=7, N=11, K=5, C=4, dtype=torch.float64, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=dtype).to(device).requires_grad_(True)  # noqa: E731
    bias = torch.randn(N, K, generator=g, dtype=dtype)
    bias[:3, :2] -= 1e4  # masked window slots, as at row ends
    return mk(N, C), mk(T1, N, K, C), bias.to(device).requires_grad_(True), mk(T1, N, K, C)


def test_recurrence_matches_autograd_forward_and_gradients() -> None:
    xs = _inputs()
    w = torch.randn(7, 11, 4, dtype=torch.float64)
    out = recurrence(*xs)
    grads = torch.autograd.grad((out * w).sum(), xs)
    ref = reference_recurrence(*xs)
    ref_grads = torch.autograd.grad((ref * w).sum(), xs)
    assert torch.allclose(out, ref, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-10)


def test_recurrence_passes_gradcheck() -> None:
    xs = _inputs(T1=3, N=4, K=3, C=2)
    assert torch.autograd.gradcheck(recurrence, xs)


def test_training_priors_equal_the_coding_path() -> None:
    """The batched training recurrence gives the hidden states the coder computes row by row."""
    torch.manual_seed(0)
    hp = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 6], multires=[1, 2])
    nvcc = NVCC(hp, 1 / 64, hidden=8, window=2).double()
    with torch.no_grad():  # a non-trivial attention, not the near-identity start
        for lin in (nvcc.attn.q, nvcc.attn.k, nvcc.attn.v):
            lin.weight.normal_(0, 0.5)
    V = [torch.randn(3, 6, w, 4, dtype=torch.float64) for w in (8, 16)]
    train = nvcc._temporal_priors(V)
    for s, v in enumerate(V):
        h = v[:, 0]
        for t in range(1, 6):
            h = nvcc.attn(h, v[:, t - 1])
            assert torch.allclose(train[s][:, t - 1], h, atol=1e-10), (s, t)


def test_triton_kernels_match_the_pytorch_loop_in_the_interpreter() -> None:
    """The CUDA path's Triton kernels, run by Triton's CPU interpreter, against autograd."""
    assert "triton recurrence agrees" in run_in_interpreter("_triton_recurrence_check.py")


@pytest.mark.gpu
def test_triton_recurrence_on_cuda_matches_autograd() -> None:
    from evalkit.methods.fourdgs_cc.recurrence import _TRITON
    # Contractive weights, as in NVCC (random O(1) keys make a 99-step recurrence chaotic: float32
    # and float64 then differ by 1e-3 whatever the implementation).
    xs = _inputs(T1=99, N=768, K=5, C=32, dtype=torch.float32, device="cuda")
    with torch.no_grad():
        xs[1].mul_(0.05)
    out = recurrence(*xs)
    w = torch.randn_like(out)
    grads = torch.autograd.grad((out * w).sum(), xs)
    ref = reference_recurrence(*xs)
    ref_grads = torch.autograd.grad((ref * w).sum(), xs)
    assert _TRITON["failed"] is None
    assert torch.allclose(out, ref, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4)


def _rate_models(configs: list[dict], device: str = "cuda"):
    """(Gaussians, models): 4DGS-CC models sharing one small 4DGS base (Gaussians and HexPlane),
    one per CCConfig override in ``configs``, on ``device`` with the same initial state."""
    from evalkit.models.fourdgs.deformation import DeformationConfig, DeformationField
    from evalkit.models.fourdgs.model import FourDGSModel
    from evalkit.methods.fourdgs_cc.config import CCConfig
    from evalkit.methods.fourdgs_cc.model import FourDGSCCModel

    torch.manual_seed(0)
    dev = torch.device(device)
    hp = HexPlaneConfig(feature_dim=8, resolution=[16, 16, 16, 12], multires=[1, 2])
    deform = DeformationField(DeformationConfig(hexplane=hp, depth=0, width=16), torch.tensor([[-1.0] * 3, [1.0] * 3]))
    n = 300
    g = torch.nn.ParameterDict({k: torch.nn.Parameter(v) for k, v in dict(
        means=torch.randn(n, 3), scales=torch.full((n, 3), -3.0), quats=torch.randn(n, 4), opacities=torch.zeros(n),
        sh0=torch.rand(n, 1, 3), shN=0.1 * torch.randn(n, 15, 3)).items()})
    base = FourDGSModel(g, deform, 3, torch.zeros(3), 0.2).to(dev)
    models = []
    for over in configs:
        cc = CCConfig(codebook_size=64, vqcc_hidden=8, vqcc_latent=4, nvcc_hidden=8, quantization="ste", **over)
        m = FourDGSCCModel(base, cc)
        m.vq.pending = "init"
        m.canonical_sh()
        models.append(m)
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
        m.nvcc.initialised = m.vqcc.initialised = False
    return g, models


def _perturb(g, model) -> None:
    """As after an optimiser step: planes and SH change (the models share the Gaussians and grid),
    so a replay that read stale inputs would differ from the eager reference."""
    with torch.no_grad():
        for p in model.deformation.grid.parameters():
            p.add_(0.01)
        g["shN"].add_(0.01)


def _rate_loss_and_grads(m):
    params = [p for p in m.parameters() if p.requires_grad]
    m.canonical_sh()  # as the render: stores this step's codebook
    terms = m.rate_terms("ste")
    loss = terms["nvcc"][0] / terms["nvcc"][1] + terms["vqcc"][0] / terms["vqcc"][1]
    return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.gpu
def test_graphed_rate_terms_equal_eager_rate_terms() -> None:
    """The CUDA-graph replay of the rate terms gives the eager bits and gradients, call after call,
    as planes and SH (so the codebook) change between calls."""
    g, models = _rate_models([dict(cuda_graphs=True), dict(cuda_graphs=False)])
    for step in range(3):  # capture, then replays
        _perturb(g, models[0])
        results = [_rate_loss_and_grads(m) for m in models]
        graphs = models[0]._graphs
        assert graphs.failed is None and len(graphs._graphed) == 1  # captured once, then replayed
        assert not models[1]._graphs._graphed  # the reference really ran eagerly
        assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
        for a, b in zip(results[0][1], results[1][1]):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-7))


def _relative_error(grads, reference) -> float:
    """|grads - reference| / |reference| over all parameters (float64)."""
    num = den = 0.0
    for a, b in zip(grads, reference):
        if a is not None and b is not None:
            num += float((a.double() - b.double()).norm() ** 2)
            den += float(b.double().norm() ** 2)
    return (num / den) ** 0.5


@pytest.mark.gpu
def test_compiled_rate_terms_are_as_accurate_as_eager() -> None:
    """``rate_compile`` (torch.compile inside the CUDA graph) against a float64 eager reference: its
    gradients are as close as float32 eager's own (fused kernels reorder float32 sums, so an
    elementwise match with eager, asked until stop 43, fails at 3e-4 relative on entries of 1e-7 to
    1e-5: stops 39, 42 and 43; on the CPU, float32 eager's gradients are 5e-5 to 1e-3 from float64's on
    this model, relative norm, three calls)."""
    import copy

    g, models = _rate_models([dict(cuda_graphs=True, rate_compile=True), dict(cuda_graphs=False)])
    for step in range(3):
        _perturb(g, models[0])
        exact = copy.deepcopy(models[1]).double()  # the eager model's state now, in float64
        (lc, gc), (le, ge), (lx, gx) = (_rate_loss_and_grads(m) for m in (*models, exact))
        assert models[0]._graphs.failed is None
        assert abs(float(lc) - float(lx)) <= 2 * abs(float(le) - float(lx)) + 1e-6 * abs(float(lx))
        err_c, err_e = _relative_error(gc, gx), _relative_error(ge, gx)
        assert err_c <= 2 * err_e + 1e-5, (step, err_c, err_e)


def _tiny_rate_unit(device: str = "cpu", spread: float = 0.0):
    """A small HexPlane's planes (moved off their start by N(0, ``spread``)), a codebook, and the
    rate unit's NVCC and VQCC, initialised on them."""
    from evalkit.models.fourdgs.deformation import DeformationConfig, DeformationField
    from evalkit.methods.fourdgs_cc.config import CCConfig
    from evalkit.methods.fourdgs_cc.model import _levels
    from evalkit.methods.fourdgs_cc.vqcc import VQCC

    torch.manual_seed(0)
    hp = HexPlaneConfig(feature_dim=4, resolution=[8, 8, 8, 6], multires=[1, 2])
    grid = DeformationField(DeformationConfig(hexplane=hp, depth=0, width=8),
                            torch.tensor([[-1.0] * 3, [1.0] * 3])).grid.to(device)
    with torch.no_grad():
        for p in grid.parameters():
            p.add_(spread * torch.randn_like(p))
    planes = [p for scale in grid.grids for p in scale]
    nvcc = NVCC(hp, CCConfig().hexplane_qstep, hidden=8).to(device)
    nvcc.initialise(_levels(planes, 2))
    codebook = torch.nn.Parameter(0.3 * torch.randn(32, 12, device=device))
    vqcc = VQCC(12, CCConfig().codebook_qstep, 8, 4).to(device)
    vqcc.initialise(codebook.detach())
    return planes, codebook, nvcc, vqcc


@pytest.mark.gpu
def test_compiled_graphed_rate_draws_fresh_noise_each_replay() -> None:
    """In the training relaxation ("noise"), the compiled rate unit replayed from a CUDA graph draws
    new noise on every replay (a graph that froze its random numbers would repeat one value), and
    its mean over replays matches the eager unit's."""
    from evalkit.methods.fourdgs_cc.model import _RateTerms, compiled_rate_unit
    from evalkit.train.cuda_graphs import GraphedCalls

    planes, _, nvcc, _ = _tiny_rate_unit("cuda")
    means = {}
    for compiled in (False, True):
        calls = GraphedCalls(enabled=compiled)
        unit = _RateTerms(nvcc, None, "noise", 2)
        unit = compiled_rate_unit(unit) if compiled else unit
        bits = [float(calls(("rate",), lambda: unit, *planes)[0]) for _ in range(8)]
        assert calls.failed is None and len(set(bits)) == len(bits)  # fresh noise every call
        means[compiled] = sum(bits) / len(bits)
    assert means[True] == pytest.approx(means[False], rel=0.01)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler; none found")
def test_compiled_rate_unit_equals_the_eager_unit_on_cpu() -> None:
    """``rate_compile``'s unit (torch.compile of the rate terms; on CUDA in training) gives the
    eager unit's bits and gradients: fused kernels, the same terms."""
    from evalkit.methods.fourdgs_cc.model import _RateTerms, compiled_rate_unit

    planes, codebook, nvcc, vqcc = _tiny_rate_unit(spread=0.05)  # every context differs
    params = [*planes, codebook, *nvcc.parameters(), *vqcc.parameters()]
    results = []
    for compiled in (False, True):
        unit = _RateTerms(nvcc, vqcc, "ste", 2)
        unit = compiled_rate_unit(unit) if compiled else unit
        bits = unit(*planes, codebook)
        assert getattr(unit, "failed", None) is None  # compiled, not the eager fallback
        loss = bits[0] / 1e4 + bits[1] / 1e3
        results.append((torch.stack(bits).detach(), torch.autograd.grad(loss, params, allow_unused=True)))
    (b0, g0), (b1, g1) = results
    assert torch.allclose(b0, b1, rtol=1e-5)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-3, atol=1e-5))


def test_the_rate_unit_has_nothing_a_capture_refuses() -> None:
    """The rate unit (NVCC + VQCC, training relaxation), forward and backward, makes no host read
    and no copy of host data once warm: what lets it replay from a CUDA graph."""
    from evalkit.methods.fourdgs_cc.model import _RateTerms
    from tests.train.capture_safety import capture_blockers

    planes, codebook, nvcc, vqcc = _tiny_rate_unit()
    unit = _RateTerms(nvcc, vqcc, "noise", 2)

    def step() -> None:
        nv, vq = unit(*planes, codebook)
        (nv / 1e4 + vq / 1e3).backward()

    step()  # warm-up: index tables are built once per device, before capture
    assert capture_blockers(step) == []


def test_a_failed_compilation_leaves_the_eager_rate_terms(monkeypatch) -> None:
    """``rate_compile`` where torch.compile cannot compile (no compiler, an inductor error): the rate
    terms run uncompiled, with the same bits, and the reason is kept, not a failed training job."""
    from evalkit.methods.fourdgs_cc.model import _RateTerms, compiled_rate_unit

    def broken_compile(module, **kw):
        def call(*a):
            raise RuntimeError("BackendCompilerFailed: no working C++ compiler\nlong trace")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    planes, codebook, nvcc, vqcc = _tiny_rate_unit(spread=0.05)
    eager = _RateTerms(nvcc, vqcc, "ste", 2)
    unit = compiled_rate_unit(_RateTerms(nvcc, vqcc, "ste", 2))
    for _ in range(2):  # the second call goes straight to the eager unit
        assert torch.equal(torch.stack(unit(*planes, codebook)), torch.stack(eager(*planes, codebook)))
    assert unit.failed == "RuntimeError: BackendCompilerFailed: no working C++ compiler"
