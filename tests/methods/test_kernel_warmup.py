"""Kernel compilation before the training timer (``kernel_warmup``) and the unspecialised point
count of the HexPlane kernels."""
from __future__ import annotations

import pytest
import torch

from evalkit.methods.fourdgs.config import FourDGSConfig
from evalkit.methods.fourdgs.kernel_warmup import compile_kernels

TINY = dict(feature_dim=8, resolution=[16, 16, 16, 8], multires=[1, 2], net_width=32)


def test_nothing_to_compile_off_cuda():
    assert compile_kernels(FourDGSConfig(**TINY), torch.device("cpu")) == (0.0, [])


def test_a_kernel_falling_back_is_logged(monkeypatch):
    from evalkit.methods.fourdgs import kernel_warmup

    monkeypatch.setattr(kernel_warmup, "compile_kernels", lambda cfg, device: (1.0, ["HexPlane lookup: boom"]))
    lines: list[str] = []
    kernel_warmup.prepare(FourDGSConfig(**TINY), torch.device("cuda"), lines.append)
    assert lines == ["Triton kernel unavailable, training uses the PyTorch path: HexPlane lookup: boom"]


@pytest.mark.gpu
def test_one_compiled_variant_for_any_point_count():
    """After the warm-up, lookups with point counts of every residue mod 16 reuse its kernels:
    Triton compiles no second variant in the middle of training."""
    from evalkit.methods.fourdgs import hexplane_triton as ht
    from evalkit.methods.fourdgs.deformation import DeformationField

    device = torch.device("cuda")
    cfg = FourDGSConfig(**TINY)
    torch.manual_seed(123)
    expected = torch.rand(4, device=device), torch.rand(4)
    torch.manual_seed(123)
    seconds, failed = compile_kernels(cfg, device)
    assert seconds > 0 and failed == []
    # training's initialisation draws from the global generators: the warm-up must not move them
    assert torch.equal(torch.rand(4, device=device), expected[0]) and torch.equal(torch.rand(4), expected[1])
    kernels = (ht._forward_kernel, ht._backward_kernel)
    dev = torch.cuda.current_device()
    variants = [len(k.device_caches[dev][0]) for k in kernels]
    assert all(v >= 1 for v in variants)  # other shapes may have been compiled by earlier tests
    field = DeformationField(cfg.deformation_config(), torch.tensor([[-1.0] * 3, [1.0] * 3])).to(device)
    for n in (1000, 1001, 1008, 1016, 3):
        xyz = (torch.rand(n, 3, device=device) * 2 - 1).requires_grad_(True)
        field.grid(xyz, 0.3).sum().backward()
    torch.cuda.synchronize()
    assert [len(k.device_caches[dev][0]) for k in kernels] == variants
