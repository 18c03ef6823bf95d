"""The NVCC training recurrence (``recurrence.py``) as two Triton kernels, one for the forward
pass and one for the backward pass: each program carries a block of tokens through all T rows
in registers, so a 100-row time plane costs two launches instead of ~900 tiny ones.

Same arithmetic as the PyTorch version (float32, softmax with max subtraction); a GPU test and an
interpreter test (``TRITON_INTERPRET=1``, CPU) compare both. ``available()`` is False when Triton
is missing; callers then use the PyTorch loop.
"""
from __future__ import annotations

import torch

from evalkit.models.fourdgs.kernel_device import kernel_device

try:  # Triton ships with CUDA builds of PyTorch on Linux; absent elsewhere
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the platform
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:
    @triton.jit
    def _layout(N, K: tl.constexpr, C: tl.constexpr, KP: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr):
        """This program's token block: 2-D (token, slot / channel) and 3-D (token, slot, channel)
        index grids and their in-range masks (K, C padded to the powers of two KP, CP)."""
        n = tl.program_id(0) * BN + tl.arange(0, BN)
        k = tl.arange(0, KP)
        c = tl.arange(0, CP)
        nm, km, cm = n < N, k < K, c < C
        m_nc = nm[:, None] & cm[None, :]
        m_nk = nm[:, None] & km[None, :]
        m3 = nm[:, None, None] & km[None, :, None] & cm[None, None, :]
        return (n[:, None], k[None, :], c[None, :], n[:, None, None], k[None, :, None], c[None, None, :],
                km, m_nc, m_nk, m3)

    @triton.jit
    def _forward_kernel(h0, kq, bias, v, H, P, T1, N, K: tl.constexpr, C: tl.constexpr,
                        KP: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr):
        n2, k2, c2, n3, k3, c3, km, m_nc, m_nk, m3 = _layout(N, K, C, KP, CP, BN)
        h = tl.load(h0 + n2 * C + c2, mask=m_nc, other=0.0)
        b = tl.load(bias + n2 * K + k2, mask=m_nk, other=0.0)
        b = tl.where(km[None, :], b, float("-inf"))
        for t in range(0, T1):
            base = (t * N + n3) * K * C + k3 * C + c3
            kq_t = tl.load(kq + base, mask=m3, other=0.0)
            logits = tl.sum(h[:, None, :] * kq_t, axis=2) + b
            mx = tl.max(logits, axis=1)
            e = tl.exp(logits - mx[:, None])
            a = e / tl.sum(e, axis=1)[:, None]
            v_t = tl.load(v + base, mask=m3, other=0.0)
            h = tl.sum(a[:, :, None] * v_t, axis=1)
            tl.store(H + (t * N + n2) * C + c2, h, mask=m_nc)
            tl.store(P + (t * N + n2) * K + k2, a, mask=m_nk)

    @triton.jit
    def _backward_kernel(gH, Hprev, P, kq, v, dh0, dkq, dbias, dv, T1, N, K: tl.constexpr, C: tl.constexpr,
                         KP: tl.constexpr, CP: tl.constexpr, BN: tl.constexpr):
        n2, k2, c2, n3, k3, c3, km, m_nc, m_nk, m3 = _layout(N, K, C, KP, CP, BN)
        carry = tl.zeros((BN, CP), dtype=tl.float32)
        db = tl.zeros((BN, KP), dtype=tl.float32)
        for i in range(0, T1):
            t = T1 - 1 - i
            g = tl.load(gH + (t * N + n2) * C + c2, mask=m_nc, other=0.0) + carry
            a = tl.load(P + (t * N + n2) * K + k2, mask=m_nk, other=0.0)
            base = (t * N + n3) * K * C + k3 * C + c3
            v_t = tl.load(v + base, mask=m3, other=0.0)
            da = tl.sum(g[:, None, :] * v_t, axis=2)
            s = tl.sum(a * da, axis=1)
            dl = a * (da - s[:, None])
            hp = tl.load(Hprev + (t * N + n2) * C + c2, mask=m_nc, other=0.0)
            tl.store(dkq + base, dl[:, :, None] * hp[:, None, :], mask=m3)
            tl.store(dv + base, a[:, :, None] * g[:, None, :], mask=m3)
            db += dl
            kq_t = tl.load(kq + base, mask=m3, other=0.0)
            carry = tl.sum(dl[:, :, None] * kq_t, axis=1)
        tl.store(dh0 + n2 * C + c2, carry, mask=m_nc)
        tl.store(dbias + n2 * K + k2, db, mask=m_nk)


def _meta(kq: torch.Tensor) -> tuple[int, int, int, int, int, int, int]:
    T1, N, K, C = kq.shape
    KP, CP = triton.next_power_of_2(K), triton.next_power_of_2(C)
    BN = max(1, min(32, 4096 // (KP * CP)))
    return T1, N, K, C, KP, CP, BN


def forward(h0, kq, bias, v) -> tuple[torch.Tensor, torch.Tensor]:
    """-> H (T1, N, C), P (T1, N, K)."""
    h0, kq, bias, v = (x.contiguous().float() for x in (h0, kq, bias, v))
    T1, N, K, C, KP, CP, BN = _meta(kq)
    H = torch.empty(T1, N, C, device=kq.device, dtype=torch.float32)
    P = torch.empty(T1, N, K, device=kq.device, dtype=torch.float32)
    with kernel_device(h0):
        _forward_kernel[(triton.cdiv(N, BN),)](h0, kq, bias, v, H, P, T1, N, K=K, C=C, KP=KP, CP=CP, BN=BN)
    return H, P


def backward(gH, h0, H, P, kq, v) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> dh0 (N, C), dkq, dbias (N, K), dv."""
    gH, kq, v, P = (x.contiguous().float() for x in (gH, kq, v, P))
    T1, N, K, C, KP, CP, BN = _meta(kq)
    Hprev = torch.cat([h0.reshape(1, N, C).float(), H[:-1].reshape(T1 - 1, N, C)], 0).contiguous()
    dh0 = torch.empty(N, C, device=kq.device, dtype=torch.float32)
    dkq, dv = torch.empty_like(kq), torch.empty_like(v)
    dbias = torch.empty(N, K, device=kq.device, dtype=torch.float32)
    with kernel_device(kq):
        _backward_kernel[(triton.cdiv(N, BN),)](gH, Hprev, P, kq, v, dh0, dkq, dbias, dv, T1, N,
                                                 K=K, C=C, KP=KP, CP=CP, BN=BN)
    return dh0, dkq, dbias, dv
