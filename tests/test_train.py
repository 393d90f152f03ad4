"""The pure train step: gradients, compiled == eager without recompiles, overfitting, bf16,
per-token loss weights (the chat mask)."""

import math
from functools import partial

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from conftest import tiny_config

from yocto_fn import layers, models, optim, params, rng
from yocto_fn.core.train import accumulate_grads, grad_and_value, loss_fn, make_train_step


def _adamw(clip: float = 1.0, **values) -> optim.GradientTransformation:
    """AdamW with its rate and decay injected, clipped at `clip`, as a run builds it."""
    values = {"lr": 1e-3, "weight_decay": 0.1} | values
    adamw = optim.inject_hyperparams(optim.adamw)(**values)
    return optim.chain(optim.clip_by_global_norm(clip), adamw)


ADAMW = _adamw()


def _count(state) -> int:
    """Adam's update count in an `_adamw` state (under a loss scale, too)."""
    state = state.inner if isinstance(state, optim.LossScaleState) else state
    return int(state[1].inner[0].count)


def _batch(cfg, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, cfg.vocab_size, (b, cfg.block_size + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def _mask(shape, seed=1, ones=0.4):
    """A random 0/1 float32 loss mask with about `ones` of its entries 1, some of each."""
    w = (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < ones).float()
    assert 0 < w.sum() < w.numel()
    return w


def _autograd_grads(loss, p, *args):
    leaves = [t.detach().requires_grad_() for t in params.tree_leaves(p)]
    value = loss(params.tree_unflatten_like(p, leaves), *args)
    return params.tree_unflatten_like(p, list(torch.autograd.grad(value, leaves))), value


@pytest.mark.parametrize("name", ["gpt", "gpt-plus"])
def test_grad_and_value_equals_plain_autograd(name):
    cfg = tiny_config(dropout=0.1)
    m = models.get(name)
    p = m.init(cfg, 0)
    loss = partial(loss_fn, model=m, cfg=cfg, label_smoothing=0.1)
    args = (_batch(cfg), rng.key(3))
    ref_grads, ref_value = _autograd_grads(loss, p, *args)
    for fn in (grad_and_value(loss), torch.func.grad_and_value(loss)):
        grads, value = fn(p, *args)
        torch.testing.assert_close(value, ref_value.detach(), atol=1e-6, rtol=0)
        assert params.max_abs_diff(grads, ref_grads) < 1e-6


def test_vmap_of_grad_uses_the_transform_and_matches_separate_grads():
    cfg = tiny_config()
    m = models.get("gpt")
    members = [m.init(cfg, 1), m.init(cfg, 2)]
    loss = partial(loss_fn, model=m, cfg=cfg)
    batch = _batch(cfg)
    grads, values = torch.func.vmap(grad_and_value(loss), in_dims=(0, None, None))(
        params.stack(members), batch, None
    )
    for i, p in enumerate(members):
        g, v = grad_and_value(loss)(p, batch, None)
        assert params.max_abs_diff(params.unstack(grads, 2)[i], g) < 1e-5
        torch.testing.assert_close(values[i], v, atol=1e-6, rtol=0)


def test_train_step_is_pure_and_reports_metrics():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    state = ADAMW.init(p)
    before = params.clone(p)
    step = make_train_step(m, cfg, ADAMW)
    new_p, new_state, metrics = step(p, state, _batch(cfg))
    assert params.max_abs_diff(p, before) == 0.0
    assert params.max_abs_diff(new_p, p) > 0.0
    assert _count(new_state) == 1 and _count(state) == 0
    assert metrics["loss"].ndim == 0 and metrics["grad_norm"].item() > 0


@pytest.mark.parametrize("masked", [False, True])
def test_the_stop_flag_rides_the_one_grad_sync_call_and_leaves_the_step_alone(masked):
    """With `stop`, grad_sync still runs once per step, on [loss, flag]: the flag costs no
    collective of its own, and metrics["stop"] is its reduced value (also for a batch with
    loss weights, whose loss is what grad_sync averages)."""
    cfg = tiny_config()
    m = models.get("gpt")
    p, batch = m.init(cfg, 0), _batch(cfg)
    if masked:
        batch = (*batch, _mask(batch[1].shape))
    calls = []

    def other_rank_at_zero(grads, value):  # another rank's loss and flag, both 0, averaged in
        calls.append(value.shape)
        return grads, value / 2

    step = make_train_step(m, cfg, ADAMW, grad_sync=other_rank_at_zero)
    plain = step(p, ADAMW.init(p), batch)
    flagged = step(p, ADAMW.init(p), batch, stop=torch.tensor(1.0))
    assert calls == [torch.Size([]), torch.Size([2])]
    assert float(flagged[2]["stop"]) == 0.5 and "stop" not in plain[2]
    assert torch.equal(flagged[2]["loss"], plain[2]["loss"])
    assert params.max_abs_diff(flagged[0], plain[0]) == 0.0
    alone = make_train_step(m, cfg, ADAMW)(p, ADAMW.init(p), batch)[2]["loss"]
    torch.testing.assert_close(plain[2]["loss"], alone / 2, atol=0, rtol=0)


def test_tiny_model_overfits_one_batch():
    cfg = tiny_config(n_layer=2, n_embd=64, n_head=4)
    m = models.get("gpt-plus")
    p, batch = m.init(cfg, 0), _batch(cfg, b=4)
    tx = optim.adamw(1e-2, weight_decay=0.0)
    state = tx.init(p)
    step = make_train_step(m, cfg, tx)
    losses = []
    for _ in range(150):
        p, state, metrics = step(p, state, batch)
        losses.append(metrics["loss"].item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_bf16_autocast_on_cpu_trains_close_to_fp32():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    batch = _batch(cfg)
    fp32 = make_train_step(m, cfg, ADAMW)(p, ADAMW.init(p), batch)[2]["loss"]
    bf16 = make_train_step(m, cfg, ADAMW, amp_dtype=torch.bfloat16)
    new_p, _, metrics = bf16(p, ADAMW.init(p), batch)
    assert abs(metrics["loss"].item() - fp32.item()) < 0.05
    assert all(t.dtype == torch.float32 for t in params.tree_leaves(new_p))


def test_compiled_step_equals_eager_and_does_not_recompile():
    """One compile of a step with dropout, label smoothing and a loss mask (the chat batch,
    which the plain batch's loss is the all-1 case of): the same losses and params as eager,
    and a new rate, dropout key or mask each step does not recompile."""
    torch._dynamo.reset()
    cfg = tiny_config(dropout=0.1)
    m = models.get("gpt")
    p0 = m.init(cfg, 0)
    eager = make_train_step(m, cfg, ADAMW, label_smoothing=0.1)
    compiled = make_train_step(m, cfg, ADAMW, label_smoothing=0.1, compile=True)
    runs = {}
    for name, step in (("eager", eager), ("compiled", compiled)):
        p, state, losses = p0, ADAMW.init(p0), []
        for i in range(4):
            x, y = _batch(cfg, seed=i)
            batch = (x, y, _mask(y.shape, seed=i))
            lr = 1e-3 * (i + 1)
            torch._dynamo.config.error_on_recompile = name == "compiled" and i > 0
            try:
                p, state, metrics = step(p, state, batch, rng.fold_in(rng.key(0), i), lr=lr)
            finally:
                torch._dynamo.config.error_on_recompile = False
            losses.append(metrics["loss"].item())
        runs[name] = (p, losses)
    torch.testing.assert_close(runs["compiled"][1], runs["eager"][1], atol=1e-4, rtol=0)
    assert params.max_abs_diff(runs["compiled"][0], runs["eager"][0]) < 1e-4


@pytest.mark.slow  # about a minute of compiling on 2 cores; the eager checkpointing test stays
def test_compiled_step_with_activation_checkpointing_equals_eager(monkeypatch):
    """--compile with --activation-checkpointing: the forward compiled alone (its blocks
    recomputed in the compiled backward), the optimizer compiled apart; both run the
    checkpointed blocks, and the steps match eager's without checkpointing. Dropout keys
    make the recomputation exact."""
    torch._dynamo.reset()
    cfg = tiny_config(dropout=0.1)
    m = models.get("gpt-plus")
    p0 = m.init(cfg, 0)
    runs = {}
    for name, kw in (
        ("eager", {}),
        ("compiled", dict(compile=True, activation_checkpointing=True)),
    ):
        step = make_train_step(m, cfg, ADAMW, **kw)
        p, state = p0, ADAMW.init(p0)
        for i in range(3):
            if name == "compiled" and i == 1:
                torch._dynamo.config.error_on_recompile = True
            try:
                p, state, metrics = step(p, state, _batch(cfg, seed=i), rng.key(i))
            finally:
                torch._dynamo.config.error_on_recompile = False
        runs[name] = (p, metrics["loss"].item(), metrics["grad_norm"].item())
    assert params.max_abs_diff(runs["compiled"][0], runs["eager"][0]) < 1e-5
    assert runs["compiled"][1:] == pytest.approx(runs["eager"][1:], abs=1e-5)
    torch._dynamo.reset()  # traced afresh, every block goes through checkpoint
    wrapped, real = [], torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(
        torch.utils.checkpoint, "checkpoint", lambda *a, **k: wrapped.append(1) or real(*a, **k)
    )
    step = make_train_step(m, cfg, ADAMW, compile=True, activation_checkpointing=True)
    step(p0, ADAMW.init(p0), _batch(cfg, seed=0), rng.key(0))
    assert len(wrapped) >= cfg.n_layer


@pytest.mark.parametrize("name", ["gpt", "gpt-plus"])
def test_vmapped_train_step_equals_a_loop_over_the_ensemble(name):
    """One step of a K=3 ensemble under vmap (dropout, clipping, AdamW) == 3 separate steps."""
    cfg = tiny_config(dropout=0.1)
    m = models.get(name)
    members = [m.init(cfg, seed) for seed in range(3)]
    tx = _adamw(clip=0.5)
    states = [tx.init(p) for p in members]
    step = make_train_step(m, cfg, tx)
    batch, key = _batch(cfg), rng.key(3)
    vstep = torch.func.vmap(partial(step, lr=1e-2), in_dims=(0, 0, None, None))
    new, new_state, metrics = vstep(params.stack(members), params.stack(states), batch, key)
    for i, (p, s) in enumerate(zip(members, states, strict=True)):
        want, want_state, want_metrics = step(p, s, batch, key, lr=1e-2)
        assert params.max_abs_diff(params.unstack(new, 3)[i], want) < 1e-5
        assert params.max_abs_diff(params.unstack(new_state, 3)[i], want_state) < 1e-5
        assert abs(metrics["loss"][i].item() - want_metrics["loss"].item()) < 1e-5


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("accum", [False, True])
def test_loss_scaling_unscales_exactly(accum, masked):
    """fp32 with a loss scale of 1024 takes the same step as no scaling (power of two):
    the same params, loss and gradient norm (AdamW alone would hide a wrong unscaling),
    with dropout drawing from the same key and the same (not default) AdamW settings, with
    and without gradient accumulation and loss weights."""
    cfg = tiny_config(dropout=0.2)
    m = models.get("gpt-plus")
    p = m.init(cfg, 0)
    batch = _batch(cfg)
    if masked:
        batch = (*batch, _mask(batch[1].shape))
    if accum:
        batch = tuple(t.reshape(2, 2, -1) for t in batch)
    tx = _adamw(lr=1e-2, b1=0.5, weight_decay=0.5)
    scaled_tx = optim.dynamic_loss_scale(tx, init_scale=1024.0)
    plain = make_train_step(m, cfg, tx)(p, tx.init(p), batch, rng.key(5))
    scaled = make_train_step(m, cfg, scaled_tx)(p, scaled_tx.init(p), batch, rng.key(5))
    assert params.max_abs_diff(plain[0], scaled[0]) < 1e-6
    for name in ("loss", "grad_norm"):
        assert scaled[2][name].item() == pytest.approx(plain[2][name].item(), rel=1e-6), name
    assert scaled[1].good_steps.item() == 1 and _count(scaled[1]) == 1


@pytest.mark.parametrize("accum", [False, True])
def test_overflowing_step_is_skipped_and_the_scale_backs_off(accum):
    cfg = tiny_config()
    m = models.get("gpt")
    p = m.init(cfg, 0)
    tx = optim.dynamic_loss_scale(ADAMW, init_scale=3e38)  # loss x scale: inf grads
    state = tx.init(p)
    x, y = _batch(cfg)
    batch = (x.reshape(2, 2, -1), y.reshape(2, 2, -1)) if accum else (x, y)
    new_p, new_state, metrics = make_train_step(m, cfg, tx)(p, state, batch)
    assert not torch.isfinite(metrics["grad_norm"])
    assert params.max_abs_diff(new_p, p) == 0 and _count(new_state) == 0
    assert params.max_abs_diff(new_state.inner, state.inner) == 0
    assert new_state.scale.item() == pytest.approx(1.5e38)


def test_loss_scale_grows_after_finite_steps_and_fp16_autocast_trains():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    tx = optim.dynamic_loss_scale(ADAMW, init_scale=256.0, growth_interval=2)
    step = make_train_step(m, cfg, tx, amp_dtype=torch.float16)
    state, losses = tx.init(p), []
    for i in range(4):
        p, state, metrics = step(p, state, _batch(cfg, seed=i))
        losses.append(metrics["loss"].item())
    assert all(math.isfinite(v) for v in losses) and _count(state) == 4
    assert state.scale.item() == 1024.0  # doubled after steps 2 and 4


@pytest.mark.parametrize("amp", [None, torch.bfloat16, torch.float16])
def test_amp_dtype_reaches_the_forward(amp, monkeypatch):
    """The logits the loss sees are computed in the autocast dtype (fp32 without amp)."""
    seen = []
    original = layers.cross_entropy

    def spy(logits, *args, **kwargs):
        seen.append(logits.dtype)
        return original(logits, *args, **kwargs)

    monkeypatch.setattr(layers, "cross_entropy", spy)
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    make_train_step(m, cfg, ADAMW, amp_dtype=amp)(p, ADAMW.init(p), _batch(cfg))
    assert seen == [amp or torch.float32]


def test_make_train_step_passes_activation_checkpointing_to_the_forward(monkeypatch):
    """With checkpointing each block's attention runs again in the backward pass."""
    cfg, m = tiny_config(), models.get("gpt")
    p = m.init(cfg, 0)
    calls, real = [], layers.causal_self_attention
    monkeypatch.setattr(
        layers, "causal_self_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    for remat, per_step in ((False, cfg.n_layer), (True, 2 * cfg.n_layer)):
        calls.clear()
        step = make_train_step(m, cfg, ADAMW, activation_checkpointing=remat)
        step(p, ADAMW.init(p), _batch(cfg, seed=0))
        assert len(calls) == per_step


@pytest.mark.parametrize(("flags", "compiled"), [
    ({}, []), ({"compile": True}, ["pure_step"]),
    ({"compile": True, "activation_checkpointing": True}, ["loss_fn", "apply"]),
])  # fmt: skip
def test_which_functions_the_step_gives_the_jit(monkeypatch, flags, compiled):
    """--compile compiles the whole pure step; with activation checkpointing, the forward
    and the optimizer apart (see make_train_step). Recorded, not compiled: the values of
    the compiled paths are compared with eager in the compile tests. (Named without that
    word, so mutation runs keep it.)"""
    seen = []

    def record(fn, **kwargs):
        seen.append(getattr(fn, "__name__", None) or fn.func.__name__)
        return fn

    monkeypatch.setattr(torch, "compile", record)
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    step = make_train_step(m, cfg, ADAMW, **flags)
    step(p, ADAMW.init(p), _batch(cfg), rng.key(0))
    assert seen == compiled


def test_grad_and_value_matches_torch_func_with_aux_kwargs_and_an_unused_leaf():
    """The eager shortcut and the transformed path (under vmap) against
    torch.func.grad_and_value: keyword arguments reach fn, aux comes back detached, and a
    leaf the loss does not use gets zeros, not None or an error."""

    def fn(p, x, *, scale):
        return (p["w"] * x).sum() * scale, {"norm": p["w"].norm()}

    p = {"w": torch.tensor([1.0, -2.0, 3.0]), "unused": torch.ones(2)}
    x = torch.tensor([0.5, 0.25, 2.0])
    want_g, (want_v, want_aux) = torch.func.grad_and_value(fn, has_aux=True)(p, x, scale=3.0)
    g, (v, aux) = grad_and_value(fn, has_aux=True)(p, x, scale=3.0)
    assert torch.equal(g["w"], want_g["w"]) and torch.equal(g["unused"], torch.zeros(2))
    assert v.item() == want_v.item() == 18.0 and torch.equal(aux["norm"], want_aux["norm"])
    assert not v.requires_grad and not aux["norm"].requires_grad
    xs = torch.stack([x, 2 * x])
    vg, (vv, _) = torch.vmap(grad_and_value(fn, has_aux=True), in_dims=(None, 0))(p, xs, scale=3.0)
    assert torch.equal(vg["w"], 3.0 * xs) and vv.tolist() == [18.0, 36.0]


# Per-token loss weights: batch = (x, y, w), the loss the mean over the weighted tokens.


def _token_losses(m, cfg, p, x, y, label_smoothing=0.0):
    """Each token's cross-entropy by F.cross_entropy of the model's logits, [B, T]."""
    logits = m.forward(p, x, cfg, train=False)[0]
    ce = F.cross_entropy(
        logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=label_smoothing
    )
    return ce.view(y.shape)


def test_masked_loss_is_the_mean_cross_entropy_over_the_selected_tokens():
    cfg = tiny_config()
    m = models.get("gpt")
    p = m.init(cfg, 0)
    x, y = _batch(cfg)
    w = _mask(y.shape)
    want = _token_losses(m, cfg, p, x, y)[w == 1].mean()
    got = loss_fn(p, (x, y, w), None, model=m, cfg=cfg, train=False)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert abs(got.item() - loss_fn(p, (x, y), None, model=m, cfg=cfg).item()) > 1e-4


def test_masked_label_smoothing_is_the_hand_computed_smoothed_mean():
    """Smoothing eps: per token (1 - eps) * -log p[y] + eps * mean over v of -log p[v]."""
    eps = 0.1
    cfg = tiny_config()
    m = models.get("gpt-plus")
    p = m.init(cfg, 0)
    x, y = _batch(cfg)
    w = _mask(y.shape, seed=2)
    logp = m.forward(p, x, cfg, train=False)[0].log_softmax(-1)
    per_token = (1 - eps) * -logp.gather(-1, y[..., None])[..., 0] - eps * logp.mean(-1)
    want = (per_token * w).sum() / w.sum()
    got = loss_fn(p, (x, y, w), None, model=m, cfg=cfg, label_smoothing=eps)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_a_masked_out_target_moves_neither_the_loss_nor_the_gradients():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    p = m.init(cfg, 0)
    x, y = _batch(cfg)
    w = _mask(y.shape)
    grads_of = grad_and_value(partial(loss_fn, model=m, cfg=cfg))
    base_grads, base = grads_of(p, (x, y, w), None)

    def with_target_changed_at(b, t):
        changed = y.clone()
        changed[b, t] = (y[b, t] + 1) % cfg.vocab_size
        return grads_of(p, (x, changed, w), None)

    grads, value = with_target_changed_at(*(w == 0).nonzero()[0])
    assert torch.equal(value, base) and params.max_abs_diff(grads, base_grads) == 0
    grads, value = with_target_changed_at(*(w == 1).nonzero()[0])
    assert abs(value.item() - base.item()) > 1e-4 and params.max_abs_diff(grads, base_grads) > 1e-4


def test_an_all_zero_mask_gives_loss_zero_and_exactly_zero_finite_gradients():
    """Nothing to learn from, and no 0/0: the step's loss and gradient norm are 0 too."""
    cfg = tiny_config()
    m = models.get("gpt")
    p = m.init(cfg, 0)
    x, y = _batch(cfg)
    batch = (x, y, torch.zeros(y.shape))
    grads, value = grad_and_value(partial(loss_fn, model=m, cfg=cfg))(p, batch, None)
    assert value.item() == 0.0
    assert all(torch.equal(g, torch.zeros_like(g)) for g in params.tree_leaves(grads))
    _, _, metrics = make_train_step(m, cfg, ADAMW)(p, ADAMW.init(p), batch)
    assert metrics["loss"].item() == 0.0 and metrics["grad_norm"].item() == 0.0


def test_a_mask_of_all_ones_is_the_unweighted_loss():
    cfg = tiny_config()
    m = models.get("gpt")
    p = m.init(cfg, 0)
    x, y = _batch(cfg)
    grads_of = grad_and_value(partial(loss_fn, model=m, cfg=cfg, label_smoothing=0.1))
    plain_grads, plain = grads_of(p, (x, y), None)
    grads, value = grads_of(p, (x, y, torch.ones(y.shape)), None)
    torch.testing.assert_close(value, plain, atol=1e-6, rtol=0)
    assert params.max_abs_diff(grads, plain_grads) < 1e-6


def test_accumulating_a_masked_batch_averages_the_micro_batch_losses_and_gradients():
    """Each micro-batch's loss is its own weighted mean, and the step averages those (here
    micro-batches of different total weight, one all 0): a manual loop over them."""
    cfg = tiny_config()
    m = models.get("gpt-plus")
    p = m.init(cfg, 0)
    x, y = _batch(cfg, b=6)
    w = _mask(y.shape)
    w[4:] = 0.0
    A = 3
    batch = tuple(t.reshape(A, 2, -1) for t in (x, y, w))
    grads_of = grad_and_value(partial(loss_fn, model=m, cfg=cfg))
    micro = [grads_of(p, tuple(t[i] for t in batch), None) for i in range(A)]
    want_loss = sum(v for _, v in micro) / A
    want = params.tree_map(lambda *g: sum(g) / A, *[g for g, _ in micro])
    descend = optim.scale(-1.0)  # the new params are p - grads
    new, _, metrics = make_train_step(m, cfg, descend)(p, descend.init(p), batch)
    torch.testing.assert_close(metrics["loss"], want_loss, atol=1e-6, rtol=0)
    assert params.max_abs_diff(params.tree_map(torch.sub, p, new), want) < 1e-6
    grads, value = accumulate_grads(lambda b, k: grads_of(p, b, k), batch, None)
    assert params.max_abs_diff(grads, want) < 1e-6 and abs(value - want_loss) < 1e-6


def test_masked_member_losses_equal_each_members_own_loss():
    """members=True with w [E, B, T]: each member's weighted mean, one member all masked."""
    cfg = tiny_config()
    m = models.get("gpt")
    members = [m.init(cfg, seed) for seed in range(3)]
    batches = [(*_batch(cfg, seed=e), _mask((4, cfg.block_size), seed=e)) for e in range(3)]
    batches[2][2].zero_()
    stacked = tuple(torch.stack(t) for t in zip(*batches, strict=True))
    got = loss_fn(params.stack(members), stacked, None, model=m, cfg=cfg, members=True)
    want = torch.stack(
        [loss_fn(p, b, None, model=m, cfg=cfg) for p, b in zip(members, batches, strict=True)]
    )
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert got[2].item() == 0.0
