"""ADC-GS's training units (quantisation + F_theta; a view's deformation), replayed from CUDA graphs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evalkit.methods.adc_gs.mem import quantise, stream_names
from evalkit.methods.adc_gs.model import flat
from evalkit.methods.adc_gs.training import DeformStep, canonical_step, view_primitives
from evalkit.train.cuda_graphs import GraphedCalls
from tests.methods.adc_gs_common import random_model

ANCHORS = ("xyz", "fv", "fg", "sigma", "color")


def _loss(prim, fv, bits) -> torch.Tensor:
    """A scalar that reads every output (weights break symmetries between them)."""
    total = sum((i + 1) * t.sin().sum() for i, t in enumerate(
        (prim.means, prim.quats, prim.scales, prim.opacity_logits, prim.colors, fv)))
    return total + (0.01 * sum(bits.values()) if bits else 0.0)


def _reference(model, quant: bool, mode: str):
    feats, bits = model.features(), None
    if quant:
        feats, bits = quantise(model.mem, feats, mode)
    return model.canonical(feats), feats["fv"], bits


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("quant,mode", [(False, "noise"), (True, "round"), (True, "noise")])
def test_canonical_step_is_the_models_quantisation_and_canonical(quant: bool, mode: str) -> None:
    """The trainer's unit gives what quantise + ADCModel.canonical give, gradients included (noise:
    under the same seed)."""
    model = random_model(n=40, seed=1)
    torch.manual_seed(5)
    ref = _reference(model, quant, mode)
    ref_grads = _grads(model, _loss(*ref))
    torch.manual_seed(5)
    out = canonical_step(GraphedCalls(), model, quant, mode)
    grads = _grads(model, _loss(*out[:3]))
    for a, b in zip((out[0].means, out[0].colors, out[0].opacity_logits, out[1]),
                    (ref[0].means, ref[0].colors, ref[0].opacity_logits, ref[1])):
        assert torch.equal(a, b)
    if quant:
        assert list(out[2]) == stream_names(model.cfg)
        assert all(torch.equal(out[2][k], ref[2][k]) for k in ref[2])
    else:
        assert out.bits is None and torch.equal(out.fv, model.fv)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None) and (g is None or torch.equal(g, r))
    if quant:  # the rate's gradient reaches the entropy model through the unit
        bits = canonical_step(GraphedCalls(), model, quant, mode)[2]
        assert all(g is not None and g.abs().sum() > 0 for g in _grads(model.mem.e_fv, sum(bits.values())))


def test_view_primitives_are_the_models_deformed_frame() -> None:
    """The trainer's deformation unit gives flat(ADCModel.at_time), gradients included; with the
    deformation off, the canonical primitives."""
    model = random_model(n=30, seed=6)
    for deform in (True, False):
        prim, fv, *_ = canonical_step(GraphedCalls(), model, True, "round")
        ref = flat(model.at_time(prim, fv, 0.37, deform))
        ref_grads = _grads(model, sum((i + 1) * t.sin().sum() for i, t in enumerate(ref)))
        out = view_primitives(GraphedCalls(), model, canonical_step(GraphedCalls(), model, True, "round"), 0.37,
                              deform, slot=0)
        grads = _grads(model, sum((i + 1) * t.sin().sum() for i, t in enumerate(out)))
        assert all(torch.equal(a, b) for a, b in zip(out, ref))
        for g, r in zip(grads, ref_grads):
            assert (g is None) == (r is None) and (g is None or torch.equal(g, r))
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        reached = [g is not None and bool(g.abs().sum() > 0) for n, g in zip(names, grads) if n.startswith("deform.")]
        assert all(reached) if deform else not any(reached)


class _Double(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor]:
        return (2 * x,)


def test_graphed_calls_recapture_on_new_shapes_and_drop_stale_ones(monkeypatch) -> None:
    """With ``evict_stale``, a unit (a key's first element) keeps only its newest capture (a growing
    model's old graphs go, as do those of a setting it left); replays return copies, not the graph's
    static buffers."""
    captured = []

    def fake_capture(module, samples, allow_unused_input=False):
        captured.append(tuple(s.shape for s in samples))
        static = {}

        def replay(*xs):  # one static output buffer per capture, as a CUDA graph has
            static.setdefault("out", torch.empty_like(xs[0])).copy_(module(*xs)[0])
            return (static["out"],)
        return replay

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_capture)
    monkeypatch.setattr(GraphedCalls, "usable", lambda self, tensors: True)
    for evict, held in ((True, 1), (False, 2)):
        captured.clear()
        g = GraphedCalls(evict_stale=evict)
        a, b = torch.ones(3), torch.ones(5)
        first = g(("k",), _Double, a)[0]
        second = g(("k",), _Double, a + 1)[0]
        assert torch.equal(first, 2 * a) and torch.equal(second, 2 * (a + 1))  # a copy survives the next replay
        g(("k",), _Double, b)
        g(("other",), _Double, a)
        assert captured == [(torch.Size([3]),), (torch.Size([5]),), (torch.Size([3]),)]
        assert g.captures == 3 and g.captured == held + 1
        assert g.status() == "replayed from CUDA graphs (3 captured)"
        g(("k", "another setting"), _Double, b)
        assert g.captures == 4 and g.captured == (2 if evict else 4)  # evicting: unit "k"'s old shape went


@pytest.mark.gpu
def test_graphed_canonical_step_equals_eager() -> None:
    """Replays equal the eager unit (round mode: deterministic) as the anchors and networks change
    between steps and when the anchor count changes (a recapture); noise replays draw fresh noise."""
    dev = torch.device("cuda")
    model = random_model(n=64, seed=2).to(dev)
    graphs, eager = GraphedCalls(True, evict_stale=True), GraphedCalls(False)
    for step in range(4):
        if step == 2:  # growth: new anchor parameters with more rows
            with torch.no_grad():
                for k in ANCHORS:
                    old = getattr(model, k)
                    setattr(model, k, nn.Parameter(torch.cat([old, old[:8] + 0.01])))
        with torch.no_grad():  # as after an optimiser step
            for p in model.parameters():
                p.add_(0.001 * torch.randn_like(p))
        res = []
        for calls in (graphs, eager):
            out = canonical_step(calls, model, True, "round")
            loss = _loss(*out[:3])
            for slot, t in enumerate((0.1 * step, 0.9 - 0.2 * step)):  # a batch of two views
                loss = loss + sum((i + 2) * x.cos().sum() for i, x in enumerate(
                    view_primitives(calls, model, out, t, True, slot)))
            res.append((loss.detach(), _grads(model, loss)))
        assert torch.allclose(res[0][0], res[1][0], rtol=1e-5)
        for a, b in zip(res[0][1], res[1][1]):
            assert (a is None) == (b is None) and (a is None or torch.allclose(a, b, rtol=1e-4, atol=1e-6))
    assert graphs.failed is None and graphs.captures == 6 and graphs.captured == 3  # 3 units, anchors grew once
    fv1 = canonical_step(graphs, model, True, "noise")[1]
    fv2 = canonical_step(graphs, model, True, "noise")[1]
    assert not torch.equal(fv1, fv2)  # fresh noise on each replay


@pytest.mark.parametrize("growth", [0.0, 1.25], ids=["exact", "padded"])
@pytest.mark.parametrize("mode", ["noise", "round"])
def test_the_graphed_units_have_nothing_a_capture_refuses(mode: str, growth: float) -> None:
    """The canonical and deformation units, forward and backward, make no host read and no copy
    of host data once warm (CUDA-graph capture refuses both; the time table read at a 0-d tensor
    once did the first, and the first GPU capture failed)."""
    from tests.train.capture_safety import capture_blockers

    model = _padded(random_model(n=16, seed=3), growth)
    graphs = GraphedCalls(False)
    t = torch.full((), 0.37)

    def step() -> None:
        prim, fv, bits, _ = canonical_step(graphs, model, True, mode)
        loss = _loss(prim, fv, bits)
        for _view in (0, 1):  # two views a step, as training
            loss = loss + sum((i + 2) * x.cos().sum() for i, x in enumerate(
                DeformStep(model)(model.xyz, fv, t, prim.means, prim.quats, prim.scales, prim.opacity_logits,
                                  prim.colors)))
        loss.backward()

    step()  # warm-up, as make_graphed_callables runs before capturing
    assert capture_blockers(step) == []


def test_graph_capacity_is_a_few_dozen_sizes_that_hold_the_anchors() -> None:
    """``graph_capacity_growth``: each count maps to a capacity that holds it, the capacities grow
    geometrically (a model growing from 2,000 to 60,000 anchors is captured at 16 sizes with 1.25,
    where exact counts would re-capture at every refinement), and 0 keeps the exact count."""
    from evalkit.methods.adc_gs.training import graph_capacity

    assert [graph_capacity(n, 0.0) for n in (1, 300, 4097)] == [1, 300, 4097]
    caps = [graph_capacity(n, 1.25) for n in range(1, 60_001)]
    assert all(c >= n for n, c in zip(range(1, 60_001), caps))
    assert caps[0] == 256 and caps == sorted(caps)
    assert [graph_capacity(n, 1.25) for n in (256, 257, 320, 321)] == [256, 320, 320, 400]
    assert len(set(caps[1999:])) == 16
    assert all(b <= 1.25 * a + 1 for a, b in zip(sorted(set(caps)), sorted(set(caps))[1:]))


def _padded(model, growth: float):
    import dataclasses
    model.cfg = dataclasses.replace(model.cfg, graph_capacity_growth=growth)
    return model


def test_padded_units_give_the_unpadded_outputs_bits_and_gradients() -> None:
    """With ``graph_capacity_growth`` the units run on zero rows appended up to the capacity: the
    primitives, f_v, every stream's bits (the padding weighs nothing) and every gradient are the
    unpadded units' (round mode: deterministic)."""
    from evalkit.methods.adc_gs.training import graph_capacity

    model = random_model(n=300, seed=4)  # 300 anchors -> capacity 320 at 1.25
    assert graph_capacity(300, 1.25) == 320
    results = []
    for growth in (0.0, 1.25):
        _padded(model, growth)
        canon = canonical_step(GraphedCalls(), model, True, "round")
        assert (canon.unit_rows is None) == (growth == 0) and (growth == 0 or canon.unit_rows[0].shape[0] == 320)
        frames = [view_primitives(GraphedCalls(), model, canon, t, True, slot=s) for s, t in enumerate((0.2, 0.7))]
        loss = _loss(*canon[:3]) + sum((i + 2) * x.cos().sum() for f in frames for i, x in enumerate(f))
        results.append((*canon[:3], frames, _grads(model, loss)))
    (p0, fv0, b0, f0, g0), (p1, fv1, b1, f1, g1) = results
    assert p1.means.shape == p0.means.shape and fv1.shape == fv0.shape == (300, model.cfg.fv_dim)
    for a, b in zip((p0.means, p0.quats, p0.scales, p0.opacity_logits, p0.colors, fv0),
                    (p1.means, p1.quats, p1.scales, p1.opacity_logits, p1.colors, fv1)):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6)
    assert list(b1) == list(b0) and all(torch.allclose(b1[k], b0[k], rtol=1e-5) for k in b0)
    for x0, x1 in zip(f0, f1):
        assert all(a.shape == b.shape and torch.allclose(a, b, rtol=1e-6, atol=1e-6) for a, b in zip(x0, x1))
    # gradients equal up to float32 summation order (the deformation sums the padded canonical rows'
    # gradients in another order: an elementwise rtol 1e-4 fails on entries near zero)
    for a, b in zip(g0, g1):
        assert (a is None) == (b is None) and (a is None or float((a - b).norm() / b.norm().clamp_min(1e-30)) < 1e-4)


def test_padding_recaptures_only_when_the_capacity_changes(monkeypatch) -> None:
    """A model growing 300 -> 600 anchors in steps of 50 is captured at every count unpadded (7 times
    a unit), and at its capacities 320 / 400 / 500 / 625 with growth 1.25 (4 times)."""
    shapes = []

    def fake_capture(module, samples, allow_unused_input=False):
        shapes.append(samples[0].shape[0])
        return module

    monkeypatch.setattr(torch.cuda, "make_graphed_callables", fake_capture)
    monkeypatch.setattr(GraphedCalls, "usable", lambda self, tensors: True)
    for growth, expect in ((0.0, [300, 350, 400, 450, 500, 550, 600]), (1.25, [320, 400, 500, 625])):
        shapes.clear()
        model, graphs = _padded(random_model(n=300, seed=5), growth), GraphedCalls(True, evict_stale=True)
        for n in range(300, 601, 50):
            with torch.no_grad():
                for k in ANCHORS:
                    old = getattr(model, k)
                    setattr(model, k, nn.Parameter(old[torch.arange(n) % old.shape[0]].clone()))
            prim = canonical_step(graphs, model, True, "noise")[0]
            assert prim.means.shape[0] == n
        assert shapes == expect


def _grow_to(model, n: int) -> None:
    """The anchors' rows repeated up to n (as a refinement that adds anchors)."""
    with torch.no_grad():
        for k in ANCHORS:
            old = getattr(model, k)
            setattr(model, k, nn.Parameter(old[torch.arange(n, device=old.device) % old.shape[0]].clone()))


def _unit_loss_and_grads(model, calls):
    canon = canonical_step(calls, model, True, "round")
    loss = _loss(*canon[:3]) + sum((i + 2) * x.cos().sum() for s, t in enumerate((0.2, 0.7))
                                   for i, x in enumerate(view_primitives(calls, model, canon, t, True, s)))
    return loss.detach(), _grads(model, loss)


def _relative_errors(grads, reference, names) -> dict[str, float]:
    """|g - ref| / |ref| per parameter (float64), the parameters with a gradient."""
    return {n: float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
            for n, a, b in zip(names, grads, reference) if a is not None and b is not None}


def _padded_against_float64(device: str) -> list[tuple[int, dict, dict]]:
    """The padded units (graphed where the device allows) and the unpadded eager units, both float32,
    against the unpadded eager units in float64, at 300 / 310 / 330 anchors (capacities 320, 320,
    400): per parameter, (anchors, padded's relative gradient error, eager float32's)."""
    import copy

    dev = torch.device(device)
    eager_model = random_model(n=300, seed=7).to(dev)
    model = _padded(copy.deepcopy(eager_model), 1.25)
    ref_model = copy.deepcopy(eager_model).double()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    graphs, eager = GraphedCalls(True, evict_stale=True), GraphedCalls(False)
    out = []
    for n in (300, 310, 330):
        for m in (model, eager_model, ref_model):
            _grow_to(m, n)
        loss_p, grads_p = _unit_loss_and_grads(model, graphs)
        loss_e, grads_e = _unit_loss_and_grads(eager_model, eager)
        loss_r, grads_r = _unit_loss_and_grads(ref_model, GraphedCalls(False))
        assert set(_relative_errors(grads_p, grads_r, names)) == set(_relative_errors(grads_e, grads_r, names))
        dp, de = (abs(float(x) - float(loss_r)) / abs(float(loss_r)) for x in (loss_p, loss_e))
        assert dp <= 2 * de + 1e-5, (n, dp, de)  # float32 sums of ~3e5: a few 1e-6 apart
        out.append((n, _relative_errors(grads_p, grads_r, names), _relative_errors(grads_e, grads_r, names)))
    if device == "cuda":
        assert graphs.failed is None and graphs.captures == 6  # 3 units at capacities 320 and 400
    return out


def _assert_as_accurate(results) -> None:
    """Padded float32 within 2x (+1e-5) of eager float32's distance from float64, parameter by parameter,
    where float32 eager itself is within 1e-4 of float64. An elementwise match of the two float32 runs
    is too strict (the padded matrix products sum in another order: stop 44's H100 run failed rtol 1e-4
    / atol 1e-6 on gradients of magnitude ~100). Left out are the parameters behind symbols that float64
    rounds to another integer (on the CPU: f_v, f_g, Sigma_v, their step nets, Sigma_v's entropy net and
    f_g's first chunk model, 1e-3 to 4 apart; 9 of f_v's 14 entropy-net tensors, 1e-4 to 3e-4; on the
    H100 all of f_v's entropy net). Kept:
    F_theta, the deformation, the time table, X_v, C_v, its entropy and step nets, the hyperprior,
    f_g's later chunk models and the rest of f_v's entropy net."""
    for n, err_p, err_e in results:
        checked = [k for k in err_e if err_e[k] < 1e-4]
        assert len(checked) > len(err_e) // 2, (n, len(checked), len(err_e))
        # (on the H100, stop 45: 154 of 205 kept, none of f_v's entropy net: its float32 gradients are
        # 1.07e-4 and more from float64 there)
        assert any(k.startswith("mem.") for k in checked) and any(k.startswith("deform.") for k in checked)
        worse = {k: (err_p[k], err_e[k]) for k in checked if not err_p[k] <= 2 * err_e[k] + 1e-5}
        assert not worse, (n, worse)


def test_padded_units_are_as_accurate_as_the_unpadded_ones() -> None:
    """The GPU test's comparison on the CPU (no graphs): the padded units' gradients are as close to
    a float64 reference as the unpadded units' are; a padding that leaked into the outputs or bits
    would be far off."""
    _assert_as_accurate(_padded_against_float64("cpu"))


@pytest.mark.gpu
def test_padded_graphed_units_are_as_accurate_as_the_unpadded_eager_units() -> None:
    """``graph_capacity_growth`` on CUDA: the graphed units on padded anchors are as close to a float64
    reference as the eager, unpadded units (round mode), and growing within one capacity replays,
    not re-captures."""
    _assert_as_accurate(_padded_against_float64("cuda"))


def test_a_canonical_part_of_another_capacity_is_refused() -> None:
    """A canonical part kept from a step before the anchors grew past the capacity is not deformed."""
    model = _padded(random_model(n=300, seed=3), 1.25)
    old = canonical_step(GraphedCalls(), model, True, "round")
    _grow_to(model, 330)  # capacity 320 -> 400
    with pytest.raises(ValueError, match="capacity of 400"):
        view_primitives(GraphedCalls(), model, old, 0.5, True, 0)
