"""Muon: torch.optim.Muon as the reference, the partition against the optimizer it replaced,
routing by label, ensembles, compile, accumulation."""

from pathlib import Path

import pytest
import torch
import torch._dynamo
from conftest import VARIANTS, tiny_config

from yocto_fn import ensemble, models, optim, params
from yocto_fn.core import muon
from yocto_fn.core.train import make_train_step

SEEDS = (3, 4)
FIXTURES = Path(__file__).resolve().parent / "fixtures"
MUON_SETTINGS = ("lr", "muon_lr", "momentum", "weight_decay")


def _muon(**settings) -> optim.GradientTransformation:
    """Muon with its rates, momentum and decay injected, clipped at 1 as a run clips."""
    values = {"lr": 1e-3, "muon_lr": 0.05, "momentum": 0.95, "weight_decay": 0.1} | settings
    return optim.chain(
        optim.clip_by_global_norm(1.0), optim.inject_hyperparams(muon.muon)(**values)
    )


def _apply(tx, grads, state, p):
    updates, state = tx.update(grads, state, p)
    return optim.apply_updates(p, updates), state


def _tokens(cfg, shape, seed):
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(0, cfg.vocab_size, (*shape, cfg.block_size + 1), generator=g)
    return data[..., :-1], data[..., 1:]


def _matrices(seed: int, c: int = 16) -> dict:
    g = torch.Generator().manual_seed(seed)

    def draw(*shape):
        return torch.randn(shape, generator=g)

    attn = {"qkv_w": draw(3 * c, c), "proj_w": draw(c, c)}
    return {"blocks": [{"attn": attn, "mlp": {"fc_w": draw(4 * c, c), "proj_w": draw(c, 4 * c)}}]}


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("nesterov", [True, False])
def test_update_equals_torch_optim_muon(nesterov):
    """Three steps on block matrices (qkv as its three [C, C] maps), with weight decay, equal
    torch.optim.Muon's "original" shape scaling; both orthogonalise in bf16."""
    tx = muon.muon(muon_lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
                   ns_dtype=torch.bfloat16)  # fmt: skip
    p = _matrices(0)
    state = tx.init(p)

    def pieces(tree):  # torch's parameters: q, k, v split out of qkv_w
        b = tree["blocks"][0]
        return [*b["attn"]["qkv_w"].chunk(3), b["attn"]["proj_w"], b["mlp"]["fc_w"],
                b["mlp"]["proj_w"]]  # fmt: skip

    ref = [t.clone().requires_grad_() for t in pieces(p)]
    opt = torch.optim.Muon(ref, lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
                           adjust_lr_fn="original")  # fmt: skip
    for i in range(3):
        grads = _matrices(10 + i)
        p, state = _apply(tx, grads, state, p)
        for t, g in zip(ref, pieces(grads), strict=True):
            t.grad = g.clone()
        opt.step()
    for got, want, start in zip(pieces(p), ref, pieces(_matrices(0)), strict=True):
        assert (want.detach() - start).abs().max() > 0.01  # three steps of 0.02 moved it
        torch.testing.assert_close(got, want.detach(), atol=2e-3, rtol=0)
    assert set(state) == {"muon"}  # only matrices: AdamW's part holds no state


def test_the_partition_moves_as_the_muon_it_replaced():
    """Three steps of `muon.muon` (a partition of two chains) from fixed gradients end where
    the monolithic Muon class of before the chains ended (its parameters and momentum,
    saved by that code in monolith-muon-steps.pt): the routing, the shape scale, the decay
    at each optimizer's rate and AdamW's leaves are all the same."""
    want = torch.load(FIXTURES / "monolith-muon-steps.pt", weights_only=True)
    s = want["settings"]
    tx = muon.muon(lr=s["lr"], muon_lr=s["muon_lr"], momentum=s["momentum"],
                   weight_decay=s["weight_decay"])  # fmt: skip
    p = models.get("gpt").init(tiny_config(), 0)
    state = tx.init(p)
    gen = torch.Generator().manual_seed(0)
    grads = [params.tree_map(lambda t: torch.randn(t.shape, generator=gen), p) for _ in range(3)]
    for g in grads:
        p, state = _apply(tx, g, state, p)
    assert params.max_abs_diff(p, want["after"]) < 1e-6
    momentum = state["muon"][0].momentum
    assert momentum.keys() == want["momentum"].keys()
    assert params.max_abs_diff(momentum, want["momentum"]) < 1e-6


def test_newton_schulz_sets_every_singular_value_near_one():
    """Input singular values spread over two decades all come out in the quintic's band
    around one, for tall and wide matrices alike (five steps lift a value by at most
    3.4445^5, about 500x, so far smaller ones would stay small)."""
    g = torch.Generator().manual_seed(0)
    for shape in ((3, 64, 16), (3, 16, 64)):
        u, _, vh = torch.linalg.svd(torch.randn(shape, generator=g), full_matrices=False)
        s = torch.logspace(0, 2, min(shape[1:])).expand(3, -1)
        x = u @ torch.diag_embed(s) @ vh
        sv = torch.linalg.svdvals(muon.newton_schulz(x))
        assert sv.min() > 0.6 and sv.max() < 1.25, (shape, sv.min(), sv.max())


@pytest.mark.parametrize("name", VARIANTS)
def test_labels_route_block_matrices_to_muon_and_the_rest_to_adamw(name):
    cfg = tiny_config(tie_weights=False)
    p = models.get(name).init(cfg, 0)
    labels = {n: muon.label(n, t) for n, t in params.named_leaves(p).items()}
    picked = sorted(n.split(".", 2)[2] for n, lab in labels.items() if lab == "muon")
    assert picked == sorted(["attn.qkv_w", "attn.proj_w", "mlp.fc_w", "mlp.proj_w"] * 2)
    for n in ("wte", "lm_head", "ln_f.w", "blocks.0.ln1.w"):
        assert labels[n] == "adamw"
    assert all(labels[n] == "adamw" for n in labels if n.endswith("_b"))


def test_adamw_leaves_move_exactly_as_adamw_alone():
    """The non-matrix leaves of a Muon step are an AdamW step over those leaves."""
    cfg = tiny_config()
    m = models.get("gpt")
    p = m.init(cfg, 0)
    batch = _tokens(cfg, (4,), 0)
    tx, ref_tx = muon.muon(3e-3, weight_decay=0.1), optim.adamw(3e-3, weight_decay=0.1)
    new, _, _ = make_train_step(m, cfg, tx)(p, tx.init(p), batch)
    ref, _, _ = make_train_step(m, cfg, ref_tx)(p, ref_tx.init(p), batch)
    got, want = params.named_leaves(new), params.named_leaves(ref)
    for n, t in got.items():
        if muon.label(n, t) == "adamw":
            torch.testing.assert_close(t, want[n], atol=1e-6, rtol=0)
        else:
            assert (t - want[n]).abs().max() > 1e-4, n  # Muon moved it otherwise


@pytest.mark.parametrize("name", VARIANTS)
def test_ensemble_member_equals_a_single_run(name):
    """Two steps of 2 members with their own muon_lr, momentum, weight decay and lr (and
    2 micro-batches) == 2 separate runs, each with its settings injected."""
    cfg = tiny_config()
    m = models.get(name)
    tx = _muon()
    step = ensemble.make_ensemble_step(m, cfg, tx)
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    state = torch.func.vmap(tx.init)(stacked)
    settings = {"muon_lr": (0.02, 0.05), "momentum": (0.95, 0.8), "weight_decay": (0.0, 0.1),
                "lr": (1e-3, 4e-3)}  # fmt: skip
    batches = [_tokens(cfg, (2, 2, 3), seed) for seed in range(2)]  # [E, A, B, T]
    for x, y in batches:
        stacked, state, _ = step(
            stacked, state, (x, y), None, **{k: torch.tensor(v) for k, v in settings.items()}
        )
    for e, seed in enumerate(SEEDS):
        mine = {k: v[e] for k, v in settings.items()}
        one = make_train_step(m, cfg, _muon(**mine))
        p = m.init(cfg, seed)
        s = _muon(**mine).init(p)
        for x, y in batches:
            p, s, _ = one(p, s, (x[e], y[e]))
        assert params.max_abs_diff(ensemble.unstack(stacked)[e], p) < 1e-5
        assert params.max_abs_diff(ensemble.unstack(state)[e], s) < 1e-5


def test_ensemble_refuses_a_setting_its_optimizer_lacks():
    cfg = tiny_config()
    m = models.get("gpt")
    tx = optim.inject_hyperparams(optim.adamw)(lr=1e-3)
    step = ensemble.make_ensemble_step(m, cfg, tx)
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    with pytest.raises(TypeError, match="muon_lr"):
        step(stacked, torch.func.vmap(tx.init)(stacked), _tokens(cfg, (2, 2), 0), None,
             muon_lr=0.02)  # fmt: skip


def test_accumulated_micro_batches_equal_one_batch():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    tx = muon.muon()
    step = make_train_step(m, cfg, tx)
    x, y = _tokens(cfg, (4,), 0)
    p = m.init(cfg, 0)
    one, s1, _ = step(p, tx.init(p), (x, y))
    two, s2, _ = step(p, tx.init(p), (x.view(2, 2, -1), y.view(2, 2, -1)))
    assert params.max_abs_diff(one, two) < 1e-5
    assert params.max_abs_diff(s1["muon"], s2["muon"]) < 1e-6


@pytest.mark.slow  # about 25-45 s on 2 cores
def test_compiled_step_equals_eager_without_recompiling_as_rates_move():
    torch._dynamo.reset()
    cfg = tiny_config(n_layer=1)
    m = models.get("gpt-plus")
    tx = _muon()
    runs = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        step = make_train_step(m, cfg, tx, compile=compiled)
        p = m.init(cfg, 0)
        s = tx.init(p)
        for i in range(3):
            torch._dynamo.config.error_on_recompile = compiled and i > 0
            try:
                p, s, _ = step(p, s, _tokens(cfg, (4,), i), lr=1e-3 * (i + 1),
                               muon_lr=0.02 / (i + 1), momentum=0.85 + 0.05 * i)  # fmt: skip
            finally:
                torch._dynamo.config.error_on_recompile = False
        runs[label] = p
    assert params.max_abs_diff(runs["compiled"], runs["eager"]) < 1e-4


def test_overflowing_loss_scaled_step_is_skipped_and_the_state_kept():
    cfg = tiny_config()
    m = models.get("gpt")
    tx = optim.dynamic_loss_scale(_muon(), init_scale=3e38)  # loss x scale: inf grads
    step = make_train_step(m, cfg, tx)
    p = m.init(cfg, 0)
    s = tx.init(p)
    new, s2, metrics = step(p, s, _tokens(cfg, (4,), 0))
    assert not torch.isfinite(metrics["grad_norm"])
    assert params.max_abs_diff(new, p) == 0 and params.max_abs_diff(s2.inner, s.inner) == 0
    assert s2.scale.item() == pytest.approx(1.5e38)
