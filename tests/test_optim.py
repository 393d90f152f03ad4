"""Gradient transformations: AdamW against torch.optim.AdamW, the links and combinators
(chain, partition, inject_hyperparams), clipping against torch, the decay mask, schedules."""

import math
from typing import NamedTuple

import pytest
import torch
from conftest import tiny_config

from yocto_fn import models, optim, params, schedules
from yocto_fn.core import adam_kernels


def _decay_groups(tree):
    leaves = params.named_leaves(tree)
    decay = [t for n, t in leaves.items() if optim.decay_mask(n, t)]
    no_decay = [t for n, t in leaves.items() if not optim.decay_mask(n, t)]
    return decay, no_decay


def _torch_adamw(tree, lr, b1, b2, eps, wd):
    """torch.optim.AdamW over a copy of `tree`, with this project's decay groups."""
    theirs = params.clone(tree)
    decay, no_decay = _decay_groups(theirs)
    for t in decay + no_decay:
        t.requires_grad_(True)
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return theirs, torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, foreach=True)


def _step(tx, grads, state, p):
    updates, state = tx.update(grads, state, p)
    return optim.apply_updates(p, updates), state


def test_decay_mask_skips_norms_biases_and_embeddings():
    p = models.get("gpt").init(tiny_config(), 0)
    mask = {n: optim.decay_mask(n, t) for n, t in params.named_leaves(p).items()}
    assert mask["blocks.0.attn.qkv_w"] and mask["blocks.1.mlp.proj_w"] and mask["lm_head"]
    assert not mask["wte"] and not mask["wpe"]
    assert not mask["blocks.0.ln1.w"] and not mask["blocks.0.attn.qkv_b"]


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("lr_as_tensor", [False, True])
def test_adamw_matches_torch_over_five_steps(lr_as_tensor, fused):
    """Both forms of Adam's direction, `_foreach_*` and torch's fused kernel, against
    torch.optim.AdamW."""
    lr = 1e-2
    tx = optim.adamw(torch.tensor(lr) if lr_as_tensor else lr, 0.9, 0.95, 1e-8, 0.1, fused=fused)
    ours = models.get("gpt").init(tiny_config(), 0)
    theirs, torch_opt = _torch_adamw(ours, lr, 0.9, 0.95, 1e-8, 0.1)
    state = tx.init(ours)
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = params.tree_map(lambda p: torch.randn(p.shape, generator=gen), ours)
        for t, g in zip(params.tree_leaves(theirs), params.tree_leaves(grads), strict=True):
            t.grad = g.clone()
        torch_opt.step()
        ours, state = _step(tx, grads, state, ours)
    assert int(state[0].count) == 5
    assert params.max_abs_diff(ours, theirs) < 1e-6


def test_adamw_under_vmap_takes_the_leaf_path_and_matches_torch():
    """`_foreach_*` kernels have no vmap rule, so under a transform the links run leaf by
    leaf: two stacked members stepped three times (the second moment only matters from
    step two), each at its own injected rate, must each match torch.optim.AdamW."""
    tx = optim.inject_hyperparams(optim.adamw)(lr=1e-2, b1=0.9, b2=0.95, weight_decay=0.1)
    members = [models.get("gpt-fast").init(tiny_config(), seed) for seed in (0, 1)]
    lrs = (1e-2, 3e-3)
    stacked = params.stack(members)
    state = optim.set_hparams(torch.func.vmap(tx.init)(stacked), lr=torch.tensor(lrs))
    refs = [_torch_adamw(m, lr, 0.9, 0.95, 1e-8, 0.1) for m, lr in zip(members, lrs, strict=True)]
    step = torch.func.vmap(lambda g, s, q: _step(tx, g, s, q))
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        grads = params.tree_map(lambda q: torch.randn(q.shape, generator=gen), stacked)
        for i, (theirs, opt) in enumerate(refs):
            for t, g in zip(params.tree_leaves(theirs), params.tree_leaves(grads), strict=True):
                t.grad = g[i].clone()
            opt.step()
        stacked, state = step(grads, state, stacked)
    for i, (theirs, _) in enumerate(refs):
        assert params.max_abs_diff(params.unstack(stacked)[i], theirs) < 1e-6


class _ScaleByHandAdamState(NamedTuple):
    count: torch.Tensor
    mu: dict
    nu: dict


def _hand_written_adam(b1: float, b2: float, eps: float) -> optim.GradientTransformation:
    """Adam's direction as a user would write a link: plain tensor ops, leaf by leaf."""

    def init(p):
        zeros = params.tree_map(torch.zeros_like, p)
        return _ScaleByHandAdamState(torch.zeros(()), zeros, params.clone(zeros))

    def update(g, state, p=None):
        n = state.count + 1
        mu = params.tree_map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, g)
        nu = params.tree_map(lambda v, x: b2 * v + (1 - b2) * x * x, state.nu, g)
        out = params.tree_map(
            lambda m, v: (m / (1 - b1**n)) / ((v / (1 - b2**n)).sqrt() + eps), mu, nu
        )
        return out, _ScaleByHandAdamState(n, mu, nu)

    return optim.GradientTransformation(init, update)


def test_a_hand_written_chain_equals_adamw():
    """A chain of a user's own Adam link, the decay and the rate moves exactly as `adamw`
    (clipped in front, both): the protocol composes links it has never seen."""
    mine = optim.chain(
        optim.clip_by_global_norm(0.5),
        _hand_written_adam(0.9, 0.99, 1e-8),
        optim.add_decayed_weights(0.1, optim.decay_mask),
        optim.scale_by_learning_rate(3e-3),
    )
    theirs = optim.chain(optim.clip_by_global_norm(0.5), optim.adamw(3e-3, 0.9, 0.99))
    p = models.get("gpt").init(tiny_config(), 0)
    a, sa, b, sb = p, mine.init(p), p, theirs.init(p)
    gen = torch.Generator().manual_seed(2)
    for _ in range(4):
        grads = params.tree_map(lambda t: torch.randn(t.shape, generator=gen), p)
        a, sa = _step(mine, grads, sa, a)
        b, sb = _step(theirs, grads, sb, b)
    assert params.max_abs_diff(a, p) > 1e-3  # it moved
    assert params.max_abs_diff(a, b) < 1e-6


def test_partition_gives_each_transformation_only_its_leaves():
    """Matrices to one chain, the rest to another: each label's leaves move exactly as
    that chain alone over them, and a label no leaf has keeps no state."""
    is_matrix = lambda name, leaf: "m" if leaf.dim() == 2 else "v"  # noqa: E731
    sgd = optim.scale_by_learning_rate(0.5)
    routed = optim.partition({"m": optim.adamw(1e-2), "v": sgd, "unused": sgd}, is_matrix)
    p = models.get("gpt").init(tiny_config(), 0)
    state = routed.init(p)
    assert set(state) == {"m", "v"}
    grads = params.tree_map(torch.ones_like, p)
    new, _ = _step(routed, grads, state, p)
    flat_p, flat_new = params.named_leaves(p), params.named_leaves(new)
    matrices = {n: t for n, t in flat_p.items() if t.dim() == 2}
    alone, _ = _step(optim.adamw(1e-2), {n: torch.ones_like(t) for n, t in matrices.items()},
                     optim.adamw(1e-2).init(matrices), matrices)  # fmt: skip
    for n, t in flat_new.items():
        want = alone[n] if n in matrices else flat_p[n] - 0.5
        torch.testing.assert_close(t, want, atol=0, rtol=0)
    with pytest.raises(ValueError, match="label 'x'"):
        optim.partition({"m": sgd}, lambda n, t: "x").init(p)


def test_inject_hyperparams_reads_its_values_from_the_state():
    """Injected values live in the state as tensors: set_hparams moves them (a float or a
    tensor), the update uses the state's value, and a misspelt name is an error."""
    tx = optim.inject_hyperparams(optim.scale_by_learning_rate)(lr=0.1)
    g = {"w": torch.ones(3)}
    state = tx.init(g)
    assert optim.hparams(state) == {"lr": torch.tensor(0.1)}
    out, state = tx.update(g, optim.set_hparams(state, lr=0.25), g)
    torch.testing.assert_close(out["w"], torch.full((3,), -0.25))
    assert optim.hparams(state)["lr"].item() == 0.25
    with pytest.raises(TypeError, match="no hyper-parameter muon_lr.*it has: lr"):
        optim.set_hparams(state, muon_lr=0.02)


def test_a_schedule_rate_follows_the_count():
    tx = optim.scale_by_learning_rate(lambda n: 0.5**n)
    g = {"w": torch.ones(2)}
    state = tx.init(g)
    seen = []
    for _ in range(3):
        out, state = tx.update(g, state)
        seen.append(out["w"][0].item())
    assert seen == [-1.0, -0.5, -0.25]


@pytest.mark.parametrize("fused", [False, True])
def test_update_is_pure(fused):
    """The fused kernel writes in place: it must write into copies, never the inputs."""
    p = models.get("gpt-fast").init(tiny_config(), 0)
    tx = optim.adamw(1e-3, fused=fused)
    state = _step(tx, params.tree_map(torch.ones_like, p), tx.init(p), p)[1]  # nu != 0
    grads = params.tree_map(torch.randn_like, p)
    p0, s0, g0 = params.clone(p), params.clone(state), params.clone(grads)
    new_p, new_s = _step(tx, grads, state, p)
    assert params.max_abs_diff(p, p0) == 0.0 and params.max_abs_diff(state, s0) == 0.0
    assert params.max_abs_diff(grads, g0) == 0.0
    assert params.max_abs_diff(new_p, p) > 0.0 and int(new_s[0].count) == 2


def test_fused_direction_runs_in_plain_eager_code_only():
    """Where the fused kernel cannot serve (a transform, the compiler, mixed dtypes),
    `fused=None` takes the `_foreach_*` form with the same result and `fused=True` says
    why it cannot."""
    p = models.get("gpt").init(tiny_config(), 0)
    leaves = params.tree_leaves(p)
    assert adam_kernels.fused_refusal(leaves) is None
    half = [leaves[0].half(), *leaves[1:]]
    assert "one device and dtype" in adam_kernels.fused_refusal(half)
    assert "int64" in adam_kernels.fused_refusal([torch.zeros(2, dtype=torch.long)])
    grads = params.tree_map(torch.randn_like, p)
    state = optim.scale_by_adam().init(p)
    fused, _ = optim.scale_by_adam(fused=True).update(grads, state)
    plain, _ = optim.scale_by_adam(fused=False).update(grads, state)
    assert params.max_abs_diff(fused, plain) < 1e-5  # directions near 1: fp32 rounding
    stacked = params.tree_map(lambda t: t[None], grads)
    one = params.tree_map(lambda t: t[None], state)
    with pytest.raises(ValueError, match=r"fused=True\) cannot run.*eager code only"):
        torch.func.vmap(optim.scale_by_adam(fused=True).update)(stacked, one)
    auto, _ = torch.func.vmap(optim.scale_by_adam().update)(stacked, one)
    assert params.max_abs_diff(params.unstack(auto)[0], plain) < 1e-5


def _clip(grads, max_norm):
    return optim.clip_by_global_norm(max_norm).update(grads, optim.EmptyState())[0]


def test_clip_by_global_norm_matches_torch():
    gen = torch.Generator().manual_seed(0)
    grads = {"a": torch.randn(4, 5, generator=gen), "b": [torch.randn(7, generator=gen)]}
    clipped = _clip(grads, 0.5)
    ref = [t.clone().requires_grad_() for t in params.tree_leaves(grads)]
    for t, g in zip(ref, params.tree_leaves(grads), strict=True):
        t.grad = g.clone()
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, 0.5)
    torch.testing.assert_close(optim.global_norm(grads), ref_norm)
    for t, c in zip(ref, params.tree_leaves(clipped), strict=True):
        torch.testing.assert_close(t.grad, c)
    assert optim.global_norm(clipped).item() == pytest.approx(0.5, rel=1e-4)
    assert _clip(grads, 0.0) is grads


@pytest.mark.parametrize("scale, max_norm", [(1e-3, 1e-4), (0.2, 1.0)])
def test_clip_by_global_norm_matches_torch_at_small_norms_and_below_the_limit(scale, max_norm):
    """A tiny norm shows the epsilon's sign (torch divides by norm + 1e-6); a norm below the
    limit leaves the gradients exactly as they were."""
    gen = torch.Generator().manual_seed(1)
    grads = {"a": torch.randn(4, 5, generator=gen), "b": [torch.randn(7, generator=gen)]}
    grads = params.tree_map(lambda g: g * scale / optim.global_norm(grads), grads)
    clipped = _clip(grads, max_norm)
    ref = [g.clone().requires_grad_() for g in params.tree_leaves(grads)]
    for t, g in zip(ref, params.tree_leaves(grads), strict=True):
        t.grad = g.clone()
    torch.nn.utils.clip_grad_norm_(ref, max_norm)
    for t, c in zip(ref, params.tree_leaves(clipped), strict=True):
        torch.testing.assert_close(c, t.grad, rtol=1e-7, atol=0)
    if scale < max_norm:
        assert params.max_abs_diff(clipped, grads) == 0.0


def test_loss_scale_link_unscales_and_skips_a_step_that_overflowed():
    """The gradients arrive multiplied by the scale: a finite step equals the inner
    optimizer on the unscaled gradients; an overflow gives zero updates, keeps the inner
    state and halves the scale; `growth_interval` finite steps double it."""
    inner = optim.adamw(1e-2)
    tx = optim.dynamic_loss_scale(inner, init_scale=8.0, growth_interval=2)
    p = models.get("gpt").init(tiny_config(), 0)
    grads = params.tree_map(torch.randn_like, p)
    state = tx.init(p)
    assert optim.loss_scale(state).item() == 8.0 and optim.loss_scale(inner.init(p)) is None
    scaled = params.tree_map(lambda g: g * 8.0, grads)
    u, s1 = tx.update(scaled, state, p)
    want, _ = inner.update(grads, inner.init(p), p)
    assert params.max_abs_diff(u, want) < 1e-7 and s1.good_steps.item() == 1
    bad = params.tree_map(lambda g: g * float("inf"), grads)
    u, s2 = tx.update(bad, s1, p)
    assert all(t.abs().max() == 0 for t in params.tree_leaves(u))
    assert params.max_abs_diff(s2.inner, s1.inner) == 0 and s2.scale.item() == 4.0
    _, s3 = tx.update(scaled, s2, p)
    _, s4 = tx.update(scaled, s3, p)
    assert s4.scale.item() == 8.0 and s4.good_steps.item() == 0


def test_cosine_schedule_warms_up_then_decays_to_min():
    kw = dict(lr=1.0, warmup_iters=10, max_iters=110, min_lr=0.1)
    lrs = [schedules.cosine_with_warmup(s, **kw) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0)  # the cosine starts at the peak
    assert all(a <= b for a, b in zip(lrs[:9], lrs[1:10], strict=True))
    assert all(a >= b for a, b in zip(lrs[10:109], lrs[11:110], strict=True))
    assert lrs[60] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
    short = dict(kw, max_iters=11)  # a one-step decay: the peak, then min_lr
    assert schedules.cosine_with_warmup(10, **short) == pytest.approx(1.0)
    assert schedules.cosine_with_warmup(11, **short) == pytest.approx(0.1)
    assert schedules.constant(5, lr=0.3) == 0.3
