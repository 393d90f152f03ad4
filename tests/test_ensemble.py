"""Ensembles and per-example gradients: vmapped == looped, member by member."""

from functools import partial

import pytest
import torch
import torch._dynamo
from conftest import VARIANTS, tiny_config

from yocto_fn import ensemble, models, optim, params, rng
from yocto_fn.core.train import loss_fn, make_train_step

SEEDS = (3, 4, 5)
LRS = (1e-2, 3e-3, 0.0)  # the last member must not move
DECAYS = (0.1, 0.0, 0.5)


def _adamw(clip: float = 1.0, fused: bool | None = None, **values):
    """AdamW with its rate and decay injected, clipped at `clip`, as a run builds it."""
    values = {"lr": 1e-3, "weight_decay": 0.1} | values
    adamw = optim.inject_hyperparams(optim.adamw)(fused=fused, **values)
    return optim.chain(optim.clip_by_global_norm(clip), adamw)


def _tokens(cfg, shape, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, cfg.vocab_size, (*shape, cfg.block_size + 1), generator=g)
    return data[..., :-1], data[..., 1:]


def _autograd_grads(model, cfg, p, batch):
    """The batch gradient by plain autograd: an independent reference for torch.func."""
    leaves = [t.detach().requires_grad_() for t in params.tree_leaves(p)]
    tree = params.tree_unflatten_like(p, leaves)
    loss = loss_fn(tree, batch, None, model=model, cfg=cfg, train=False)
    return params.tree_unflatten_like(p, list(torch.autograd.grad(loss, leaves)))


def test_stack_unstack_round_trip_params_and_optimizer_state():
    m = models.get("gpt")
    cfg = tiny_config()
    members = [m.init(cfg, s) for s in SEEDS]
    stacked = params.stack(members)
    assert params.tree_leaves(stacked)[0].shape[0] == 3
    for got, want in zip(ensemble.unstack(stacked), members, strict=True):
        assert params.max_abs_diff(got, want) == 0
    tx = _adamw()
    state = torch.func.vmap(tx.init)(stacked)
    adam = state[1].inner[0]
    assert isinstance(adam, optim.AdamState) and adam.count.shape == (3,)
    assert optim.hparams(state)["lr"].shape == (3,)
    for s, p in zip(ensemble.unstack(state), members, strict=True):
        assert params.max_abs_diff(s, tx.init(p)) == 0


def test_ensemble_init_members_are_exactly_model_init():
    m = models.get("gpt-plus")
    cfg = tiny_config()
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    for seed, member in zip(SEEDS, ensemble.unstack(stacked), strict=True):
        assert params.max_abs_diff(member, m.init(cfg, seed)) == 0


@pytest.mark.parametrize("name", VARIANTS)
def test_ensemble_step_equals_separate_train_steps(name):
    """Two steps of 3 members (own data, dropout key, lr and weight decay; grad accumulation
    over 2 micro-batches; clipping tight enough to bite) == 3 separate `make_train_step` runs."""
    cfg = tiny_config(dropout=0.1)
    m = models.get(name)
    tx = _adamw(clip=0.5)
    step = ensemble.make_ensemble_step(m, cfg, tx, label_smoothing=0.1)
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    state = torch.func.vmap(tx.init)(stacked)
    keys = torch.stack([rng.key(s) for s in SEEDS])
    lr, wd = torch.tensor(LRS), torch.tensor(DECAYS)
    batches = [_tokens(cfg, (3, 2, 4), seed) for seed in range(2)]  # [E, A, B, T]
    for i, batch in enumerate(batches):
        stacked, state, metrics = step(
            stacked, state, batch, rng.fold_in(keys, i), lr=lr, weight_decay=wd
        )

    # The ensemble's update is Adam's leaf-by-leaf form (under vmap), in the `_foreach_*`
    # form's order; the reference here runs that form. The eager default (torch's fused
    # kernel) agrees to an ulp per step (tests/test_optim.py), but where Adam divides by a
    # second moment near zero an ulp at step 1 is 2e-5 at step 2.
    for e, seed in enumerate(SEEDS):
        one_tx = _adamw(clip=0.5, fused=False, lr=LRS[e], weight_decay=DECAYS[e])
        one = make_train_step(m, cfg, one_tx, label_smoothing=0.1)
        p = m.init(cfg, seed)
        s = one_tx.init(p)
        for i, (x, y) in enumerate(batches):
            p, s, want = one(p, s, (x[e], y[e]), rng.fold_in(keys[e], i))
        assert params.max_abs_diff(ensemble.unstack(stacked)[e], p) < 1e-5
        assert params.max_abs_diff(ensemble.unstack(state)[e], s) < 1e-5
        assert ensemble.unstack(state)[e][1].inner[0].count.item() == 2
        torch.testing.assert_close(metrics["loss"][e], want["loss"], atol=1e-5, rtol=0)
        torch.testing.assert_close(metrics["grad_norm"][e], want["grad_norm"], atol=1e-5, rtol=0)
        assert want["grad_norm"].item() > 0.5  # clipping was active
    frozen = ensemble.unstack(stacked)[2]
    assert params.max_abs_diff(frozen, m.init(cfg, SEEDS[2])) == 0


def _mask(shape, seed):
    """A random 0/1 float32 loss mask, about 40% ones."""
    return (torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.4).float()


def test_masked_ensemble_step_equals_separate_masked_train_steps():
    """(x, y, w) of [E, A, B, T]: the member axis and the micro-batch axis on w too; member
    i steps as `make_train_step` on its own masked rows, a member masked all 0 included."""
    cfg = tiny_config(dropout=0.1)
    m = models.get("gpt-plus")
    tx = _adamw(clip=0.5, fused=False)
    step = ensemble.make_ensemble_step(m, cfg, tx, label_smoothing=0.1)
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    state = torch.func.vmap(tx.init)(stacked)
    keys = torch.stack([rng.key(s) for s in SEEDS])
    x, y = _tokens(cfg, (3, 2, 4), 0)
    w = _mask(y.shape, 1)
    w[1] = 0.0
    stacked, state, metrics = step(stacked, state, (x, y, w), keys, lr=1e-2)
    one = make_train_step(m, cfg, tx, label_smoothing=0.1)
    for e, seed in enumerate(SEEDS):
        p = m.init(cfg, seed)
        p, _, want = one(p, tx.init(p), (x[e], y[e], w[e]), keys[e], lr=1e-2)
        assert params.max_abs_diff(ensemble.unstack(stacked)[e], p) < 1e-5
        torch.testing.assert_close(metrics["loss"][e], want["loss"], atol=1e-5, rtol=0)
    assert metrics["loss"][1].item() == 0.0 and metrics["grad_norm"][1].item() == 0.0


def test_masked_per_example_grads_are_each_rows_own_weighted_gradient():
    cfg = tiny_config()
    m = models.get("gpt")
    p = m.init(cfg, 0)
    x, y = _tokens(cfg, (4,), 1)
    w = _mask(y.shape, 2)
    w[2] = 0.0
    grads = ensemble.per_example_grads(m, cfg)(p, (x, y, w))
    for b in (0, 2):
        row = _autograd_grads(m, cfg, p, (x[b : b + 1], y[b : b + 1], w[b : b + 1]))
        assert params.max_abs_diff(ensemble.unstack(grads)[b], row) < 1e-5
    assert all(torch.equal(g[2], torch.zeros_like(g[2])) for g in params.tree_leaves(grads))


def test_scalar_hyper_parameters_and_no_key_broadcast_to_every_member():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    tx = _adamw()
    step = ensemble.make_ensemble_step(m, cfg, tx)
    stacked = ensemble.ensemble_init(m, cfg, SEEDS[:2])
    batch = _tokens(cfg, (2, 4), 0)
    new, _, metrics = step(stacked, torch.func.vmap(tx.init)(stacked), batch, lr=3e-3)
    one = make_train_step(m, cfg, tx)
    for e, seed in enumerate(SEEDS[:2]):
        p = m.init(cfg, seed)
        want, _, _ = one(p, tx.init(p), (batch[0][e], batch[1][e]), lr=3e-3)
        assert params.max_abs_diff(ensemble.unstack(new)[e], want) < 1e-5
    assert metrics["loss"].shape == (2,)


@pytest.mark.slow  # about 40 s of compilation; `sweep --compile` is its only user
def test_compiled_ensemble_step_equals_eager_without_recompiling():
    torch._dynamo.reset()
    cfg = tiny_config(dropout=0.1)
    m = models.get("gpt-fast")
    tx = _adamw()
    eager = ensemble.make_ensemble_step(m, cfg, tx)
    compiled = ensemble.make_ensemble_step(m, cfg, tx, compile=True)
    keys = torch.stack([rng.key(s) for s in SEEDS[:2]])
    runs = {}
    for label, step in (("eager", eager), ("compiled", compiled)):
        stacked = ensemble.ensemble_init(m, cfg, SEEDS[:2])
        state = torch.func.vmap(tx.init)(stacked)
        for i in range(3):
            lr = torch.tensor([1e-3, 3e-3]) * (i + 1)  # changing rates must not recompile
            wd = torch.tensor([0.1, 0.01 * i])
            torch._dynamo.config.error_on_recompile = label == "compiled" and i > 0
            try:
                batch = _tokens(cfg, (2, 4), i)
                stacked, state, _ = step(
                    stacked, state, batch, rng.fold_in(keys, i), lr=lr, weight_decay=wd
                )
            finally:
                torch._dynamo.config.error_on_recompile = False
        runs[label] = stacked
    assert params.max_abs_diff(runs["compiled"], runs["eager"]) < 1e-4


@pytest.mark.parametrize("name", VARIANTS)
def test_per_example_grads_average_to_the_batch_gradient(name):
    cfg = tiny_config()
    m = models.get(name)
    p = m.init(cfg, 0)
    x, y = _tokens(cfg, (5,), 1)
    grads = ensemble.per_example_grads(m, cfg)(p, (x, y))
    assert all(g.shape[0] == 5 for g in params.tree_leaves(grads))
    mean = params.tree_map(lambda g: g.mean(0), grads)
    assert params.max_abs_diff(mean, _autograd_grads(m, cfg, p, (x, y))) < 1e-5
    row = _autograd_grads(m, cfg, p, (x[3:4], y[3:4]))
    assert params.max_abs_diff(ensemble.unstack(grads)[3], row) < 1e-5
    loss = partial(loss_fn, model=m, cfg=cfg, train=False)
    one_row = torch.func.grad(lambda q, xb, yb: loss(q, (xb[None], yb[None]), None))
    by_vmap = torch.func.vmap(one_row, in_dims=(None, 0, 0))(p, x, y)
    assert params.max_abs_diff(grads, by_vmap) < 1e-5
    norms = ensemble.per_example_grad_norms(m, cfg)(p, (x, y))
    want = torch.linalg.vector_norm(torch.cat([g.flatten() for g in params.tree_leaves(row)]))
    torch.testing.assert_close(norms[3], want, atol=1e-5, rtol=1e-5)


def test_per_example_grads_with_a_key_use_one_dropout_key_per_row():
    cfg = tiny_config(dropout=0.2)
    m = models.get("gpt")
    p = m.init(cfg, 0)
    x, y = _tokens(cfg, (3,), 2)
    key = rng.key(7)
    grads = ensemble.per_example_grads(m, cfg)(p, (x, y), key)
    loss = partial(loss_fn, model=m, cfg=cfg)
    row_key = rng.split(key, 3)[1]
    want = torch.func.grad(loss)(p, (x[1:2], y[1:2]), row_key)
    assert params.max_abs_diff(ensemble.unstack(grads)[1], want) < 1e-5
    plain = ensemble.per_example_grads(m, cfg)(p, (x, y))
    assert params.max_abs_diff(grads, plain) > 1e-4  # dropout was applied
