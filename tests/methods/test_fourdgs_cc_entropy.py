"""NVCC and VQCC on data with known structure: every symbol decodes exactly, the coded size matches
the training-time rate estimate, and each context component saves bytes where the structure it
models is present (the paper's Figs. 6-7 ordering at the component level).

The planes are built like trained HexPlanes with motion: the time planes' rows are a
fine-textured signal shifted by one position per time step (an object moving along the axis),
the finer level is the upsampled coarser level plus noise. The codebook's 48 dimensions are
correlated (SH codebooks are: colour channels and bands co-vary), at the paper's size (4096).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from evalkit.codec.container import BitstreamError
from evalkit.models.fourdgs.hexplane import TIME_PLANES, HexPlaneConfig
from evalkit.codec.serialize import module_from_bytes, module_to_bytes
from evalkit.methods.fourdgs_cc.nvcc import NVCC, quantize_plane
from evalkit.methods.fourdgs_cc.vqcc import VQCC, fixed_codebook_decode, fixed_codebook_streams

from tests.methods.fourdgs_cc_common import single_thread_torch  # noqa: F401

HP = HexPlaneConfig(feature_dim=4, resolution=[16, 16, 16, 12], multires=[1, 2])
STEP = 1 / 64
STREAM_OVERHEAD = 16  # bytes per sub-stream: CRC, chunk header, range header, coder flush


def _smooth(g: torch.Generator, *shape: int, length: float = 1.5) -> torch.Tensor:
    x = torch.randn(*shape, generator=g)
    k = torch.exp(-0.5 * (torch.arange(-8, 9) / length) ** 2)
    return F.conv1d(x.reshape(-1, 1, shape[-1]), (k / k.sum())[None, None], padding=8).reshape(shape)


def structured_planes(seed: int = 0, amp: float = 0.3, noise: float = 0.5 * STEP) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    planes: list[list[torch.Tensor]] = []
    for s, level in enumerate(HP.plane_shapes()):
        out = []
        for i, shape in enumerate(level):
            c, h, w = shape[1:]
            if s == 0 and i in TIME_PLANES:  # rows: one signal moving by one position per step
                row = amp * _smooth(g, c, w + h)
                p = torch.stack([row[:, t:t + w] for t in range(h)], 1) + 1.0
            elif s == 0:
                p = 0.3 + amp * _smooth(g, c, h, w) + amp * _smooth(g, c, w, h).transpose(1, 2)
            elif i in TIME_PLANES:
                p = F.interpolate(planes[s - 1][i][0], size=w, mode="linear", align_corners=True)
            else:
                p = F.interpolate(planes[s - 1][i], size=(h, w), mode="bilinear", align_corners=True)[0]
            out.append((p + noise * torch.randn(p.shape, generator=g))[None])
        planes.append(out)
    return planes


def _fit(model: torch.nn.Module, loss_fn, steps: int, lr: float) -> None:
    """Entropy-model-only training (the data stay fixed), as in the fine stage's rate term."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        bits, count = loss_fn()
        opt.zero_grad()
        (bits / count).backward()
        opt.step()


@pytest.fixture(scope="module")
def planes():
    return structured_planes()


@pytest.fixture(scope="module")
def symbols(planes):
    return [[quantize_plane(p, i, STEP) for i, p in enumerate(level)] for level in planes]


@pytest.fixture(scope="module")
def fitted(planes):
    """NVCC variants fitted to the planes (entropy model only). name -> model."""
    out = {}
    for name, sp, hf, steps in (("full", True, True, 300), ("no_hidden_update", True, False, 300),
                                ("no_spatial_prior", False, True, 120)):
        torch.manual_seed(0)
        m = NVCC(HP, STEP, hidden=16, window=2, spatial_prior=sp, hidden_update=hf)
        m.initialise(planes)
        _fit(m, lambda: m.bits(planes, "noise"), steps, 1e-2)
        out[name] = m
    return out


def _equal(a, b) -> bool:
    return all(torch.equal(x, y) for la, lb in zip(a, b) for x, y in zip(la, lb))


def test_symbols_sit_on_the_grid_and_time_planes_start_at_zero(planes, symbols) -> None:
    for level, qs in zip(planes, symbols):
        for i, (p, q) in enumerate(zip(level, qs)):
            assert q.dtype == torch.int64
            o = 1.0 if i in TIME_PLANES else 0.0
            assert (p[0] - (o + q * STEP)).abs().max() <= STEP / 2 + 1e-6
    fresh = NVCC(HP, STEP)  # an untrained model codes time planes at their initial value 1 as zeros
    ones = [[torch.ones(s) if i in TIME_PLANES else torch.full(s, 0.25) for i, s in enumerate(lv)]
            for lv in HP.plane_shapes()]
    q = [[quantize_plane(p, i, STEP) for i, p in enumerate(lv)] for lv in ones]
    assert all(int(q[s][i].abs().max()) == 0 for s in range(2) for i in TIME_PLANES)
    assert _equal(fresh.decompress(fresh.compress(q)), q)


@pytest.mark.parametrize("variant", ["full", "no_hidden_update", "no_spatial_prior"])
def test_nvcc_decodes_every_feature_exactly(fitted, symbols, variant) -> None:
    m = fitted[variant]
    assert _equal(m.decompress(m.compress(symbols)), symbols)


def test_nvcc_uniform_first_feature_round_trips(symbols) -> None:
    m = NVCC(HP, STEP, hidden=8, first_feature="uniform")
    assert len(m.first_time) == 0 and len(m.first_space) == 0
    assert _equal(m.decompress(m.compress(symbols)), symbols)


def test_nvcc_decoder_uses_only_the_stored_weights(fitted, symbols) -> None:
    """A decoder rebuilt from the stored float16 weights decodes what the encoder (which codes
    with the same rounded weights) wrote."""
    from evalkit.methods.fourdgs_cc.coded import round_to_storage

    enc = NVCC(HP, STEP, hidden=16)
    enc.load_state_dict(fitted["full"].state_dict())
    round_to_storage(enc, "float16")
    data = enc.compress(symbols)
    dec = module_from_bytes(NVCC(HP, STEP, hidden=16), module_to_bytes(enc, "float16"), "float16", "t", "NVCC")
    assert _equal(dec.decompress(data), symbols)
    with pytest.raises(BitstreamError):  # a corrupted stream fails loudly (CRC), never silently
        bad = bytearray(data)
        bad[len(bad) // 2] ^= 0x40
        dec.decompress(bytes(bad))


def test_nvcc_coded_size_matches_the_training_rate_estimate(fitted, planes, symbols) -> None:
    m = fitted["full"]
    with torch.no_grad():
        estimate = float(m.bits(planes, "round")[0]) / 8
    data = m.compress(symbols)
    n_streams = 3 + 1 + 1 + (HP.resolution[3] - 1 + len(HP.multires) - 1)  # space, fine space, first rows, waves
    assert abs(len(data) - estimate) <= 0.03 * estimate + STREAM_OVERHEAD * n_streams


def test_nvcc_rate_is_differentiable_in_the_features(planes) -> None:
    p = [[x.clone().requires_grad_(True) for x in level] for level in planes]
    bits, _ = NVCC(HP, STEP, hidden=8).bits(p, "noise")
    bits.backward()
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for level in p for x in level)


def test_each_nvcc_context_saves_bytes(fitted, symbols) -> None:
    """Figure 6 ordering: the full model codes the planes in fewer bytes than without the
    hidden-state update (streams: on these 11k values its ~100 bytes of attention weights are as
    large as what it saves, so streams + weights is a coin toss there; on a trained HexPlane's
    millions of values they are negligible) and than without the spatial prior (streams + its
    own weights)."""
    streams = {k: len(m.compress(symbols)) for k, m in fitted.items()}
    total = {k: streams[k] + len(module_to_bytes(m, "float16")) for k, m in fitted.items()}
    assert streams["full"] < 0.99 * streams["no_hidden_update"]
    assert total["full"] < total["no_spatial_prior"]
    # the spatial prior carries the cross-level structure: a large saving
    assert total["no_spatial_prior"] > 1.5 * total["full"]
    # the attention learned the motion: the key one position ahead gets the largest bias
    bias = fitted["full"].attn.rel_bias.detach()
    assert int(torch.argmax(bias)) == 3


# -- VQCC -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def codebook():
    """4096 code vectors of 48 correlated dimensions (8 latent factors), on the 1/64 grid."""
    g = torch.Generator().manual_seed(3)
    latent = torch.randn(4096, 8, generator=g)
    mix = torch.randn(8, 48, generator=g) * torch.linspace(0.6, 0.05, 48)
    values = latent @ mix + 0.02 * torch.randn(4096, 48, generator=g)
    return torch.round(values / STEP).to(torch.int64)


@pytest.fixture(scope="module")
def vqcc(codebook):
    torch.manual_seed(0)
    m = VQCC(48, STEP, hidden=64, latent=16)
    values = codebook.float() * STEP
    m.initialise(values)
    _fit(m, lambda: m.bits(values, "noise"), 150, 1e-2)
    return m


def test_vqcc_decodes_every_code_exactly(vqcc, codebook) -> None:
    z, y = vqcc.compress_streams(codebook)
    assert torch.equal(vqcc.decompress_streams(z, y, len(codebook), "t"), codebook)
    dec = module_from_bytes(VQCC(48, STEP, 64, 16), module_to_bytes(vqcc, "float32"), "float32", "t", "VQCC")
    assert torch.equal(dec.decompress_streams(z, y, len(codebook), "t"), codebook)


def test_vqcc_coded_size_matches_the_training_rate_estimate(vqcc, codebook) -> None:
    with torch.no_grad():
        estimate = float(vqcc.bits(codebook.float() * STEP, "round")[0]) / 8
    z, y = vqcc.compress_streams(codebook)
    assert abs(len(z) + len(y) - estimate) <= 0.03 * estimate + 2 * STREAM_OVERHEAD + 2 * 16


def test_vqcc_saves_bytes_over_the_stored_codebook(vqcc, codebook) -> None:
    """Figure 7 ordering: VQCC streams + its weights (float16) < the quantised codebook stored
    directly (uniform codes per dimension)."""
    raw, ranges = fixed_codebook_streams(codebook)
    assert torch.equal(fixed_codebook_decode(raw, len(codebook), ranges, "t"), codebook)
    z, y = vqcc.compress_streams(codebook)
    assert len(z) + len(y) + len(module_to_bytes(vqcc, "float16")) < 0.8 * len(raw)

