"""AdamSteps must step exactly as the optimisers' own step() would: same bits, same state."""
import copy

import pytest
import torch
import torch.nn as nn
from gsplat.strategy.ops import remove

from evalkit.train.adam_steps import AdamSteps


def _setup(device: str = "cpu", seed: int = 0):
    torch.manual_seed(seed)
    params = nn.ParameterDict({
        "means": nn.Parameter(torch.randn(40, 3, device=device)),
        "scales": nn.Parameter(torch.randn(40, 3, device=device)),
        "shN": nn.Parameter(torch.randn(40, 15, 3, device=device)),
    })
    mlp = nn.Linear(5, 4).to(device)
    grid = nn.Parameter(torch.randn(2, 8, 8, device=device))
    opts = {k: torch.optim.Adam([{"params": [p], "lr": lr, "name": k}], eps=1e-15, fused=True)
            for (k, p), lr in zip(params.items(), (1e-3, 5e-3, 1.25e-4))}
    deform = torch.optim.Adam([{"params": list(mlp.parameters()), "lr": 2e-3, "name": "deformation"},
                               {"params": [grid], "lr": 3e-2, "name": "grid", "weight_decay": 0.1}],
                              eps=1e-15, fused=True)
    extra = torch.optim.SGD([nn.Parameter(torch.randn(6, device=device))], lr=0.1, momentum=0.9)  # not batchable
    return params, mlp, grid, opts, deform, extra


def _grads(params, mlp, grid, extra, step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for i, p in enumerate([*params.values(), *mlp.parameters(), grid, *extra.param_groups[0]["params"]]):
        if i == 1 and step % 3 == 0:
            p.grad = None  # a parameter without a gradient is skipped, its step count unchanged
        else:
            p.grad = (torch.randn(p.shape, generator=gen) * 10.0 ** (i % 3 - 1)).to(p.device)


def _run(batched: bool, device: str = "cpu"):
    params, mlp, grid, opts, deform, extra = _setup(device)
    group = AdamSteps([*opts.values(), deform, extra])
    for step in range(1, 13):
        for g in opts["means"].param_groups:
            g["lr"] = 1e-3 * 0.9 ** step  # decaying learning rate, as the trainer's schedule
        _grads(params, mlp, grid, extra, step)
        if batched:
            group.step()
            group.zero_grad()
        else:
            for o in [*opts.values(), deform, extra]:
                o.step()
                o.zero_grad(set_to_none=True)
        if step == 6:  # gsplat's pruning swaps the parameters and slices their Adam state
            drop = torch.zeros(40, dtype=torch.bool, device=device)
            drop[::3] = True
            remove(params, opts, {}, drop)
    return params, mlp, grid, opts, deform, extra


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_matches_the_optimisers_own_step_bit_for_bit(device):
    ref, got = _run(False, device), _run(True, device)
    for a, b in zip([*ref[0].values(), *ref[1].parameters(), ref[2], *ref[5].param_groups[0]["params"]],
                    [*got[0].values(), *got[1].parameters(), got[2], *got[5].param_groups[0]["params"]]):
        assert a.shape == b.shape
        assert torch.equal(a, b)
    for (k, o_ref), o_got in zip([*ref[3].items(), ("deform", ref[4])], [*got[3].values(), got[4]]):
        for p_ref, p_got in zip([p for g in o_ref.param_groups for p in g["params"]],
                                [p for g in o_got.param_groups for p in g["params"]]):
            s_ref, s_got = o_ref.state[p_ref], o_got.state[p_got]
            assert s_ref.keys() == s_got.keys(), k
            for key in s_ref:
                assert torch.equal(s_ref[key], s_got[key]), (k, key)
    # 14 of 40 rows were pruned after step 6; "scales" missed steps 3, 6, 9, 12
    assert ref[0]["means"].shape[0] == 26
    assert float(got[3]["scales"].state[got[0]["scales"]]["step"]) == 8.0


def test_zero_grad_clears_every_gradient_and_unbatchable_optimisers_use_their_own_step():
    params, mlp, grid, opts, deform, extra = _setup()
    group = AdamSteps([*opts.values(), deform, extra, None])
    assert extra in group._others and deform in group._batched
    _grads(params, mlp, grid, extra, 1)
    before = extra.param_groups[0]["params"][0].detach().clone()
    group.step()
    assert not torch.equal(before, extra.param_groups[0]["params"][0])
    group.zero_grad()
    assert all(p.grad is None for o in group.optimizers for g in o.param_groups for p in g["params"])


@pytest.mark.parametrize("kwargs", [dict(fused=False), dict(fused=True, amsgrad=True),
                                    dict(fused=True, maximize=True), dict(fused=True, lr=torch.tensor(1e-3))])
def test_adam_variants_the_kernel_call_does_not_cover_fall_back(kwargs):
    p = nn.Parameter(torch.randn(4))
    opt = torch.optim.Adam([p], **kwargs)
    assert AdamSteps([opt])._others == [opt]
    ref = copy.deepcopy(p)
    ref_opt = torch.optim.Adam([ref], **kwargs)
    p.grad = torch.ones(4)
    ref.grad = torch.ones(4)
    AdamSteps([opt]).step()
    ref_opt.step()
    assert torch.equal(p, ref)
