"""ADC-GS fast frame path (``fast_frame``): the module path's primitives, in fewer kernels."""
from __future__ import annotations

import pytest
import torch

from evalkit.codec.container import Bitstream
from evalkit.methods.adc_gs import ADCGS, ADCGSTrained, FrameRenderer
from evalkit.methods.adc_gs.fast_frame import FastFrame
from evalkit.methods.adc_gs.model import ADCModel

from tests.methods.adc_gs_common import look_at_camera, random_model, small_config

MODES = ("none", "coarse", "coarse-fine")
# 4 table rows (small_config): ends, an exact row (1/3), between rows, and clamped outside [0, 1]
TIMES = (0.0, 1.0, 1 / 3, 0.5, 0.2, 0.9, 1.25, -0.1)
NAMES = ("means", "quats", "scales", "opacities", "colors")


def strong_model(mode: str, n: int = 60, seed: int = 7, **cfg) -> ADCModel:
    """A random model whose deformation visibly moves every deformed attribute (heads' last
    layers, zero at init, set to random values of a trained model's size)."""
    model = random_model(n=n, seed=seed, cfg=small_config(deformation=mode, **cfg))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for net in (model.deform.coarse, model.deform.fine):
            for head in (net.heads.values() if net is not None else ()):
                head[-1].weight.copy_(0.1 * torch.randn(head[-1].weight.shape, generator=g))
                head[-1].bias.copy_(0.1 * torch.randn(head[-1].bias.shape, generator=g))
    return model


def _close(a: torch.Tensor, ref: torch.Tensor, rel: float = 1e-5) -> None:
    """Equal to ``rel`` of each element and of the tensor's largest magnitude (near-zero entries)."""
    torch.testing.assert_close(a, ref, rtol=rel, atol=rel * float(ref.abs().max()))


@pytest.mark.parametrize("mode,knobs", [(m, {}) for m in MODES]
                         + [("coarse-fine", {"pe_scale": 16.0}), ("coarse", {"coarse_pe": True}),
                            ("coarse-fine", {"pe_scale": 16.0, "coarse_pe": True}), ("coarse-fine", {"fine_xyz": True})])
def test_fast_frame_equals_the_module_path(mode: str, knobs: dict) -> None:
    model = strong_model(mode, **knobs)
    renderer = FrameRenderer(model, [0.0, 0.0, 0.0], fast=True)
    assert renderer.fast is not None and not renderer.fast.graphed  # CPU: eager
    for t in TIMES:
        fast, ref = renderer.primitives(t), renderer.module_primitives(t)
        for name, a, b in zip(NAMES, fast, ref):
            assert a.shape == b.shape and a.dtype == b.dtype, (mode, t, name)
            _close(a, b)
    if mode == "none":
        return
    # the comparison has teeth: every deformed attribute moves by far more than the tolerance
    # between two frames (opacity only with the fine net)
    t0, t1 = renderer.module_primitives(0.0), renderer.module_primitives(0.55)
    moved = [n for n, a, b in zip(NAMES, t0, t1) if (a - b).abs().max() > 1e-2 * b.abs().max()]
    assert moved == [n for n in NAMES if n != "opacities" or mode == "coarse-fine"], moved


def test_fast_frame_keeps_the_model_unchanged() -> None:
    model = strong_model("coarse-fine", n=20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FastFrame(model, model.canonical(), model.fv)(0.4)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], v) for k, v in before.items())


@pytest.mark.parametrize("knobs", [{}, {"coarse_pe": True}, {"fine_xyz": True}])
def test_decoded_model_renders_from_the_fast_path(knobs: dict) -> None:
    model = strong_model("coarse-fine", n=80, seed=3, **knobs)
    trained = ADCGSTrained(model, model.deform.table.weight.shape[0], [1.0, 1.0, 1.0], {}, None)
    decoded = ADCGS().decode(Bitstream.from_bytes(trained.encode().to_bytes()), torch.device("cpu"))
    renderer = decoded.frame_renderer
    assert renderer.fast is not None
    cam = look_at_camera((0.0, -3.0, 0.5))
    for t in (0.0, 0.7):
        fast = decoded.render(cam, t)
        renderer.fast, saved = None, renderer.fast  # the module path, for comparison
        try:
            ref = decoded.render(cam, t)
        finally:
            renderer.fast = saved
        assert ref.std() > 0
        torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ("coarse", "coarse-fine"))
def test_fast_frame_replays_from_a_cuda_graph(mode: str) -> None:
    model = strong_model(mode, n=2000).cuda()
    renderer = FrameRenderer(model, [0.0, 0.0, 0.0], fast=True)
    assert renderer.fast.graphed, renderer.fast.graph_status
    for t in (0.0, 0.37, 1.0, 0.5):
        graphed = renderer.primitives(t)
        eager = renderer.fast.frame(torch.tensor(t, device="cuda"))
        ref = renderer.module_primitives(t)
        for a, b, c in zip(graphed, eager, ref):
            _close(a, b, 1e-6)  # replay vs eager: the same kernels
            _close(a, c, 1e-4)
