"""Run with TRITON_INTERPRET=1 (CPU): the Triton recurrence kernels against the PyTorch loop.
Used by test_fourdgs_cc_recurrence.py in a subprocess (the variable must be set before Triton
compiles anything). Exits 0 when they agree."""
import sys

import torch

from evalkit.methods.fourdgs_cc import recurrence_triton
from evalkit.methods.fourdgs_cc.recurrence import reference_recurrence

torch.manual_seed(0)
for T1, N, K, C in ((6, 37, 5, 8), (3, 5, 3, 32)):
    h0, kq, v = torch.randn(N, C), 0.5 * torch.randn(T1, N, K, C), torch.randn(T1, N, K, C)
    bias = torch.randn(N, K)
    bias[:2, :1] -= 1e4
    xs = [x.clone().requires_grad_(True) for x in (h0, kq, bias, v)]
    ref = reference_recurrence(*xs)
    gH = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, xs, gH)
    H, P = recurrence_triton.forward(h0, kq, bias, v)
    grads = recurrence_triton.backward(gH, h0, H, P, kq, v)
    ok = torch.allclose(H, ref.detach(), atol=1e-5)
    ok &= all(torch.allclose(g, r, atol=1e-4) for g, r in zip(grads, ref_grads))
    if not ok:
        print("mismatch", (T1, N, K, C), float((H - ref).abs().max()),
              [float((g - r).abs().max()) for g, r in zip(grads, ref_grads)])
        sys.exit(1)
print("triton recurrence agrees")
