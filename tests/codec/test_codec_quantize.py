"""Uniform N-bit quantisation and training-time rounding relaxations."""
from __future__ import annotations

import pytest
import torch

from evalkit.codec.container import BitstreamError
from evalkit.codec.quantize import (UniformQuantParams, add_uniform_noise, relaxed_round, round_ste,
                                    uniform_dequantize, uniform_quantize)


@pytest.mark.parametrize("bits", [8, 16])
def test_uniform_quantize_error_bound_per_channel(bits: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 3, generator=g) * torch.tensor([0.01, 5.0, 300.0]) + torch.tensor([2.0, -7.0, 1e3])
    q, p = uniform_quantize(x, bits)
    assert q.dtype == torch.int64 and q.min() == 0 and q.max() == 2**bits - 1
    assert torch.equal(q.min(0).values, torch.zeros(3, dtype=torch.int64))  # each channel spans the range
    step = (x.double().max(0).values - x.double().min(0).values) / (2**bits - 1)
    err = (uniform_dequantize(q, p, torch.float64) - x.double()).abs().max(0).values
    # half a step, plus float32 storage of lo/hi (relative 6e-8 of the channel's magnitude)
    assert torch.all(err <= step / 2 + 1e-7 * x.double().abs().max(0).values + 1e-12)


def test_uniform_quantize_global_constant_and_given_range() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    q, p = uniform_quantize(x, 2, per_channel=False)
    assert p.lo.shape == () and float(p.lo) == 1.0 and float(p.hi) == 4.0
    assert q.tolist() == [[0, 1], [2, 3]]
    c = torch.full((10, 2), 0.7)
    qc, pc = uniform_quantize(c, 8)
    assert torch.equal(qc, torch.zeros_like(qc))
    assert torch.equal(uniform_dequantize(qc, pc), c)  # degenerate range reconstructs exactly
    qg, _ = uniform_quantize(torch.tensor([-5.0, 0.5, 9.0]), 4, per_channel=False,
                             lo=torch.tensor(0.0), hi=torch.tensor(1.0))
    assert qg.tolist() == [0, 8, 15]  # clamped to the given range; 0.5 * 15 = 7.5 rounds to even 8


def test_uniform_params_bytes_round_trip() -> None:
    x = torch.randn(100, 4)
    q, p = uniform_quantize(x, 12)
    p2 = UniformQuantParams.from_bytes(p.to_bytes())
    assert p2.bits == 12 and torch.equal(p2.lo, p.lo) and torch.equal(p2.hi, p.hi)
    assert torch.equal(uniform_dequantize(q, p2), uniform_dequantize(q, p))
    with pytest.raises(BitstreamError, match="q.evk"):
        UniformQuantParams.from_bytes(p.to_bytes()[:-2], source="q.evk")


def test_uniform_quantize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        uniform_quantize(torch.tensor([1.0, float("nan")]), 8)
    with pytest.raises(ValueError, match="bits"):
        uniform_quantize(torch.ones(3), 0)


def test_round_ste_and_noise_gradients() -> None:
    x = torch.tensor([0.2, 1.5, -2.7, 3.49], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(4))

    x.grad = None
    z = add_uniform_noise(x.expand(10000, 4))
    d = z.detach() - x.detach()
    assert d.abs().max() <= 0.5 and abs(float(d.mean())) < 0.01 and float(d.var()) == pytest.approx(1 / 12, rel=0.05)
    z.sum().backward()
    assert torch.equal(x.grad, torch.full((4,), 10000.0))
    assert torch.equal(relaxed_round(x, "round"), torch.round(x))
    with pytest.raises(ValueError):
        relaxed_round(x, "floor")
