"""Functional AdamW against torch.optim.AdamW, clipping, decay mask and schedules."""

import math

import pytest
import torch
from conftest import tiny_config

from yocto_fn import models, optim, params


def _decay_groups(tree):
    mask = params.named_leaves(optim.decay_mask(tree))
    leaves = params.named_leaves(tree)
    decay = [leaves[k] for k in leaves if mask[k]]
    no_decay = [leaves[k] for k in leaves if not mask[k]]
    return decay, no_decay


def test_decay_mask_skips_norms_biases_and_embeddings():
    p = models.get("gpt").init(tiny_config(), 0)
    mask = params.named_leaves(optim.decay_mask(p))
    assert mask["blocks.0.attn.qkv_w"] and mask["blocks.1.mlp.proj_w"] and mask["lm_head"]
    assert not mask["wte"] and not mask["wpe"]
    assert not mask["blocks.0.ln1.w"] and not mask["blocks.0.attn.qkv_b"]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("lr_as_tensor", [False, True])
def test_adamw_matches_torch_over_five_steps(lr_as_tensor, fused):
    """Both forms of the update, `_foreach_*` and torch's fused kernel, against torch.optim."""
    hp = optim.AdamW(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, fused=fused)
    lr = 1e-2
    ours = models.get("gpt").init(tiny_config(), 0)
    theirs = params.clone(ours)
    decay, no_decay = _decay_groups(theirs)
    for t in decay + no_decay:
        t.requires_grad_(True)
    torch_opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(hp.b1, hp.b2), eps=hp.eps, foreach=True,
    )  # fmt: skip
    state = optim.init(ours)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = params.tree_map(lambda p: torch.randn(p.shape, generator=gen), ours)
        for t, g in zip(params.tree_leaves(theirs), params.tree_leaves(grads), strict=True):
            t.grad = g.clone()
        torch_opt.step()
        ours, state = optim.update(grads, state, ours, torch.tensor(lr) if lr_as_tensor else lr, hp)
    assert int(state.step) == 5
    assert params.max_abs_diff(ours, theirs) < 1e-6


def test_adamw_under_vmap_takes_the_leaf_path_and_matches_torch():
    """`_foreach_*` kernels have no vmap rule, so under a transform `update` runs leaf by leaf:
    two stacked members stepped three times (the second moment only matters from step two)
    must each match torch.optim.AdamW."""
    hp = optim.AdamW(b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1)
    members = [models.get("gpt-fast").init(tiny_config(), seed) for seed in (0, 1)]
    stacked = params.stack(members)
    state = torch.func.vmap(optim.init)(stacked)
    gen = torch.Generator().manual_seed(0)
    refs = []
    for member in members:
        theirs = params.clone(member)
        decay, no_decay = _decay_groups(theirs)
        for t in decay + no_decay:
            t.requires_grad_(True)
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        refs.append((theirs, torch.optim.AdamW(groups, lr=1e-2, betas=(hp.b1, hp.b2), eps=hp.eps)))
    step = torch.func.vmap(lambda g, s, q: optim.update(g, s, q, 1e-2, hp))
    for _ in range(3):
        grads = params.tree_map(lambda q: torch.randn(q.shape, generator=gen), stacked)
        for i, (theirs, opt) in enumerate(refs):
            for t, g in zip(params.tree_leaves(theirs), params.tree_leaves(grads), strict=True):
                t.grad = g[i].clone()
            opt.step()
        stacked, state = step(grads, state, stacked)
    for i, (theirs, _) in enumerate(refs):
        assert params.max_abs_diff(params.tree_map(lambda t, i=i: t[i], stacked), theirs) < 1e-6


@pytest.mark.parametrize("fused", [False, True])
def test_update_is_pure(fused):
    """The fused kernel writes in place: it must write into copies, never the inputs."""
    p = models.get("gpt-fast").init(tiny_config(), 0)
    state = optim.init(p)
    state = optim.update(params.tree_map(torch.ones_like, p), state, p, 1e-3)[1]  # nu != 0
    grads = params.tree_map(torch.randn_like, p)
    p0, s0, g0 = params.clone(p), params.clone(state), params.clone(grads)
    new_p, new_s = optim.update(grads, state, p, 1e-3, optim.AdamW(fused=fused))
    assert params.max_abs_diff(p, p0) == 0.0 and params.max_abs_diff(state, s0) == 0.0
    assert params.max_abs_diff(grads, g0) == 0.0
    assert params.max_abs_diff(new_p, p) > 0.0 and int(new_s.step) == 2


def test_fused_update_runs_in_plain_eager_code_only():
    """Where the fused kernel cannot serve (a transform, the compiler, an ensemble's
    per-member rates, a tensor decay), `fused=None` takes the `_foreach_*` form with the same
    result and `fused=True` says why it cannot."""
    p = models.get("gpt").init(tiny_config(), 0)
    leaves, one = params.tree_leaves(p), torch.ones(())
    assert optim.fused_refusal(leaves, one, 1e-3, 0.1) is None
    assert optim.fused_refusal(leaves, one, torch.tensor(1e-3), 0.1) is None
    assert "ensemble" in optim.fused_refusal(leaves, torch.ones(2), torch.ones(2), 0.1)
    assert "float" in optim.fused_refusal(leaves, one, 1e-3, torch.tensor(0.1))
    half = [leaves[0].half(), *leaves[1:]]
    assert "one device and dtype" in optim.fused_refusal(half, one, 1e-3, 0.1)
    assert "int64" in optim.fused_refusal([torch.zeros(2, dtype=torch.long)], one, 1e-3, 0.1)
    grads = params.tree_map(torch.randn_like, p)
    state = optim.init(p)
    with pytest.raises(ValueError, match=r"fused=True\) cannot run.*float"):
        optim.update(grads, state, p, 1e-3, optim.AdamW(fused=True), weight_decay=one / 10)
    auto = optim.update(grads, state, p, 1e-3, optim.AdamW(), weight_decay=one / 10)
    fused = optim.update(grads, state, p, 1e-3, optim.AdamW(fused=True), weight_decay=0.1)
    assert params.max_abs_diff(auto, fused) < 1e-6
    seen = []
    real = optim.fused_refusal
    try:
        optim.fused_refusal = lambda *a: seen.append(real(*a)) or real(*a)
        torch.func.vmap(lambda g: optim.update(g, state, p, 1e-3)[0])(
            params.tree_map(lambda t: t[None], grads)
        )
    finally:
        optim.fused_refusal = real
    assert seen and "eager code only" in seen[0]


def test_clip_by_global_norm_matches_torch():
    gen = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(4, 5, generator=gen), "b": [torch.randn(7, generator=gen)]}
    clipped, norm = optim.clip_by_global_norm(grads, 0.5)
    ref = [t.clone().requires_grad_() for t in params.tree_leaves(grads)]
    for t, g in zip(ref, params.tree_leaves(grads), strict=True):
        t.grad = g.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    torch.testing.assert_close(norm, ref_norm)
    for t, c in zip(ref, params.tree_leaves(clipped), strict=True):
        torch.testing.assert_close(t.grad, c)
    assert optim.global_norm(clipped).item() == pytest.approx(0.5, rel=1e-4)
    unclipped, _ = optim.clip_by_global_norm(grads, 0.0)
    assert unclipped is grads


@pytest.mark.parametrize("scale, max_norm", [(1e-3, 1e-4), (0.2, 1.0)])
def test_clip_by_global_norm_matches_torch_at_small_norms_and_below_the_limit(scale, max_norm):
    """A tiny norm shows the epsilon's sign (torch divides by norm + 1e-6); a norm below the
    limit leaves the gradients exactly as they were."""
    gen = torch.Generator().manual_seed(1)
    grads = {"a": torch.randn(4, 5, generator=gen), "b": [torch.randn(7, generator=gen)]}
    grads = params.tree_map(lambda g: g * scale / optim.global_norm(grads), grads)
    clipped, _ = optim.clip_by_global_norm(grads, max_norm)
    ref = [g.clone().requires_grad_() for g in params.tree_leaves(grads)]
    for t, g in zip(ref, params.tree_leaves(grads), strict=True):
        t.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, max_norm)
    for t, c in zip(ref, params.tree_leaves(clipped), strict=True):
        torch.testing.assert_close(c, t.grad, rtol=1e-7, atol=0)
    if scale < max_norm:
        assert params.max_abs_diff(clipped, grads) == 0.0


def test_cosine_schedule_warms_up_then_decays_to_min():
    kw = dict(lr=1.0, warmup_iters=10, max_iters=110, min_lr=0.1)
    lrs = [optim.cosine_with_warmup(s, **kw) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)  # the cosine starts at the peak
    assert all(a <= b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:109], lrs[11:110], strict=True))
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    short = dict(kw, max_iters=11)  # a one-step decay: the peak, then min_lr
    assert optim.cosine_with_warmup(10, **short) == pytest.approx(1.0)
    assert optim.cosine_with_warmup(11, **short) == pytest.approx(0.1)
    assert optim.constant(5, lr=0.3) == 0.3
