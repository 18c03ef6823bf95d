"""The deformation field's MLP (trunk + heads + residual add) as one autograd node.

A 4DGS fine step is bound by host-side work (Python, kernel launches, the autograd engine), not
by the GPU. Written with ``nn.Linear`` / ``nn.ReLU`` modules the MLP records ~20 autograd nodes a
step (an addmm, a transpose and a ReLU per layer, the residual adds), each costing host time
in the forward and again in the engine during the backward. ``mlp_forward`` runs the same
matrix products as one ``autograd.Function`` whose backward applies the chain rule by hand: the
same kernels, one node. ``DeformationField`` uses it for training and rendering alike; a test
compares values and gradients with the module path in float64.

Layout: ``trunk`` is the list of (weight, bias) of ``feature_out`` (a ReLU between consecutive
layers); each head is ReLU -> Linear(W, W) -> ReLU -> Linear(W, out), as the reference's heads.
A head with a ``base`` returns ``base + head(h)`` (its gradient passes to ``base`` unchanged),
one without returns the head's output.
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

Linear = tuple[torch.Tensor, torch.Tensor]  # (weight (out, in), bias (out,))


def _relu_backward(grad: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """What autograd's ReLU backward computes: ``grad`` where the ReLU's output is positive, else 0."""
    return torch.ops.aten.threshold_backward(grad, out, 0)


class _DeformationMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, feat: torch.Tensor, n_trunk: int, n_heads: int, *tensors):
        # tensors: trunk (W, b) x n_trunk, then per head (base or None, W1, b1, W2, b2)
        trunk, heads = tensors[:2 * n_trunk], tensors[2 * n_trunk:]
        inputs = [feat]  # the input of each trunk layer
        x = torch.addmm(trunk[1], feat, trunk[0].t())
        for i in range(1, n_trunk):
            x = torch.relu(x)
            inputs.append(x)
            x = torch.addmm(trunk[2 * i + 1], x, trunk[2 * i].t())
        r = torch.relu(x)  # every head starts with a ReLU of the trunk's output
        outs, hidden = [], []
        for k in range(n_heads):
            base, w1, b1, w2, b2 = heads[5 * k:5 * k + 5]
            a = torch.relu(torch.addmm(b1, r, w1.t()))
            o = torch.addmm(b2, a, w2.t())
            if base is not None:
                o += base  # base + head(h): the same sum as the module path, in place on a fresh tensor
            hidden.append(a)
            outs.append(o)
        ctx.n = (n_trunk, n_heads)
        ctx.has_base = [heads[5 * k] is not None for k in range(n_heads)]
        weights = [t for t in trunk] + [t for k in range(n_heads) for t in heads[5 * k + 1:5 * k + 5]]
        ctx.save_for_backward(r, *inputs, *hidden, *weights)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: torch.Tensor):
        n_trunk, n_heads = ctx.n
        saved = ctx.saved_tensors
        r, inputs = saved[0], saved[1:1 + n_trunk]
        hidden = saved[1 + n_trunk:1 + n_trunk + n_heads]
        weights = saved[1 + n_trunk + n_heads:]
        trunk_w, head_w = weights[:2 * n_trunk], weights[2 * n_trunk:]
        head_grads: list = []
        gr = None
        for k in range(n_heads):
            g, a = grads[k], hidden[k]
            w1, w2 = head_w[4 * k], head_w[4 * k + 2]
            gz = _relu_backward(g.mm(w2), a)
            gr = gz.mm(w1) if gr is None else gr.addmm_(gz, w1)
            # in the order of the inputs: base, W1, b1, W2, b2
            head_grads += [g if ctx.has_base[k] else None, gz.t().mm(r), gz.sum(0), g.t().mm(a), g.sum(0)]
        gx = _relu_backward(gr, r)
        trunk_grads: list = [None] * (2 * n_trunk)
        gfeat = None
        for i in range(n_trunk - 1, -1, -1):
            w, inp = trunk_w[2 * i], inputs[i]
            trunk_grads[2 * i], trunk_grads[2 * i + 1] = gx.t().mm(inp), gx.sum(0)
            if i > 0:
                gx = _relu_backward(gx.mm(w), inp)
            elif ctx.needs_input_grad[0]:
                gfeat = gx.mm(w)
        # inputs that need no gradient (a frozen MLP) get None, as autograd would give them
        need = ctx.needs_input_grad[3:]
        grads_out = [g if n else None for g, n in zip([*trunk_grads, *head_grads], need)]
        return (gfeat, None, None, *grads_out)


def mlp_forward(feat: torch.Tensor, trunk: list[Linear], heads: list[tuple[torch.Tensor | None, Linear, Linear]]
                ) -> list[torch.Tensor]:
    """``[base_k + head_k(trunk(feat))]`` (or the head's output where ``base_k`` is None), one
    autograd node. ``feat`` (N, F); a base (N, out_k)."""
    if not trunk or not heads:
        raise ValueError("the deformation MLP needs at least one trunk layer and one head")
    flat: list = [t for layer in trunk for t in layer]
    for base, (w1, b1), (w2, b2) in heads:
        flat += [base, w1, b1, w2, b2]
    return list(_DeformationMLP.apply(feat, len(trunk), len(heads), *flat))
