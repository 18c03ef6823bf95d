"""The hidden-state recurrence of NVCC (paper Eq. 1) for training, fast.

During training every previous row is known (teacher forcing), so keys and values of all rows
come from one batched projection; only the query side is sequential:

    h_t = softmax(h_{t-1} . KQ_t + A) V_t,    t = 1 .. T-1,

with KQ_t = W_q^T-projected, 1/sqrt(d)-scaled keys of row t-1 gathered per query window, A the
relative-position bias plus the window mask, V_t the windowed values. Written with autograd,
each step records ~10 tiny kernels forward and ~20 backward, and a 100-row time plane makes the
rate term launch-bound (tens of ms per training step). Here the loop is 3 batched matmul /
softmax kernels per step forward and 6 backward, with the per-step gradients of KQ, V and A
computed after the loop in three batched kernels (and on CUDA the training step replays the
whole rate term from a CUDA graph, ``cuda_graphs.GraphedCalls``).
"""
from __future__ import annotations

import torch


_TRITON = {"failed": None}  # set to the error if the Triton kernels ever fail: PyTorch loop from then on


def _use_triton(x: torch.Tensor) -> bool:
    from evalkit.methods.fourdgs_cc import recurrence_triton
    return x.is_cuda and x.dtype == torch.float32 and recurrence_triton.available() and _TRITON["failed"] is None


class AttentionRecurrence(torch.autograd.Function):
    """h0 (N, C), kq (T1, N, K, C), bias (N, K), v (T1, N, K, C) -> hidden states (T1, N, C).

    N tokens (rows x positions) run independently; K is the window size. On CUDA the loops run
    as Triton kernels (``recurrence_triton``), elsewhere as batched PyTorch ops."""

    @staticmethod
    def forward(ctx, h0: torch.Tensor, kq: torch.Tensor, bias: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ctx.triton = False
        if _use_triton(h0):
            from evalkit.methods.fourdgs_cc import recurrence_triton
            try:
                H, P = recurrence_triton.forward(h0, kq, bias, v)
                ctx.triton = True
                ctx.save_for_backward(h0, kq, v, H, P)
                return H
            except Exception as exc:  # noqa: BLE001 - compile/launch failure: same numbers from PyTorch
                _TRITON["failed"] = f"{type(exc).__name__}: {exc}"
        T1, N, K, C = kq.shape
        kq_t = kq.transpose(-1, -2)  # (T1, N, C, K) view: bmm reads it transposed
        b = bias[:, None, :]
        H = torch.empty(T1, N, 1, C, dtype=h0.dtype, device=h0.device)
        attn = []
        h = h0[:, None, :]
        for t in range(T1):
            a = torch.baddbmm(b, h, kq_t[t]).softmax(-1)  # (N, 1, K)
            h = torch.bmm(a, v[t], out=H[t])
            attn.append(a)
        P = torch.stack(attn)  # (T1, N, 1, K)
        ctx.save_for_backward(h0, kq, v, H, P)
        return H[:, :, 0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gH: torch.Tensor):
        h0, kq, v, H, P = ctx.saved_tensors
        if ctx.triton:
            from evalkit.methods.fourdgs_cc import recurrence_triton
            return recurrence_triton.backward(gH, h0, H, P, kq, v)
        T1, N, K, C = kq.shape
        gH = gH.reshape(T1, N, 1, C)
        G = torch.empty_like(H)  # total gradient reaching h_t
        dL = torch.empty_like(P)  # gradient of the logits of step t
        carry = torch.zeros(N, 1, C, dtype=h0.dtype, device=h0.device)
        v_t = v.transpose(-1, -2)  # (T1, N, C, K)
        for t in range(T1 - 1, -1, -1):
            g = torch.add(gH[t], carry, out=G[t])
            da = torch.bmm(g, v_t[t])  # (N, 1, K)
            a = P[t]
            s = torch.bmm(a, da.transpose(1, 2))  # (N, 1, 1): sum_j a_j da_j
            torch.mul(a, da - s, out=dL[t])  # softmax backward
            carry = torch.bmm(dL[t], kq[t])  # (N, 1, C)
        Hprev = torch.cat([h0[None, :, None, :], H[:-1]], 0)  # (T1, N, 1, C)
        flat = lambda x: x.reshape(T1 * N, *x.shape[2:])  # noqa: E731
        dkq = torch.bmm(flat(dL).transpose(1, 2), flat(Hprev)).reshape(T1, N, K, C)
        dv = torch.bmm(flat(P).transpose(1, 2), flat(G)).reshape(T1, N, K, C)
        dbias = dL.sum(0)[:, 0]
        return carry[:, 0], dkq, dbias, dv


@torch.compiler.disable  # already fused (Triton on CUDA): ``rate_compile`` compiles around it, not into it
def recurrence(h0: torch.Tensor, kq: torch.Tensor, bias: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return AttentionRecurrence.apply(h0, kq, bias, v)


def reference_recurrence(h0: torch.Tensor, kq: torch.Tensor, bias: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The same recurrence written with plain autograd (tests compare against it)."""
    h, out = h0, []
    for t in range(kq.shape[0]):
        a = ((h[:, None, :] * kq[t]).sum(-1) + bias).softmax(-1)
        h = (a[..., None] * v[t]).sum(1)
        out.append(h)
    return torch.stack(out)
