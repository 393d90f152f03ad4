"""Muon: torch.optim.Muon as the reference, routing by label, ensembles, compile, accumulation."""

import pytest
import torch
import torch._dynamo
from conftest import VARIANTS, tiny_config

from yocto_fn import ensemble, models, optim, params
from yocto_fn.core import muon
from yocto_fn.core.train import make_train_step

SEEDS = (3, 4)


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
    hp = muon.Muon(muon_lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
                   ns_dtype=torch.bfloat16)  # fmt: skip
    p = _matrices(0)
    state = hp.init(p)

    def pieces(tree):  # torch's parameters: q, k, v split out of qkv_w
        b = tree["blocks"][0]
        return [*b["attn"]["qkv_w"].chunk(3), b["attn"]["proj_w"], b["mlp"]["fc_w"],
                b["mlp"]["proj_w"]]  # fmt: skip

    ref = [t.clone().requires_grad_() for t in pieces(p)]
    opt = torch.optim.Muon(ref, lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.1,
                           adjust_lr_fn="original")  # fmt: skip
    for i in range(3):
        grads = _matrices(10 + i)
        p, state = hp.update(grads, state, p, 1e-3)
        for t, g in zip(ref, pieces(grads), strict=True):
            t.grad = g.clone()
        opt.step()
    for got, want, start in zip(pieces(p), ref, pieces(_matrices(0)), strict=True):
        assert (want.detach() - start).abs().max() > 0.01  # three steps of 0.02 moved it
        torch.testing.assert_close(got, want.detach(), atol=2e-3, rtol=0)
    assert state.step.item() == 3


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
    new, _, _ = make_train_step(m, cfg, muon.Muon(weight_decay=0.1))(
        p, muon.Muon().init(p), batch, 3e-3, None
    )
    ref, _, _ = make_train_step(m, cfg, optim.AdamW(weight_decay=0.1))(
        p, optim.init(p), batch, 3e-3, None
    )
    got, want = params.named_leaves(new), params.named_leaves(ref)
    for n, t in got.items():
        if muon.label(n, t) == "adamw":
            torch.testing.assert_close(t, want[n], atol=1e-6, rtol=0)
        else:
            assert (t - want[n]).abs().max() > 1e-4, n  # Muon moved it otherwise


@pytest.mark.parametrize("name", VARIANTS)
def test_ensemble_member_equals_a_single_run(name):
    """Two steps of 2 members with their own muon_lr, momentum, weight decay and lr (and
    2 micro-batches) == 2 separate runs, each with its settings in the dataclass."""
    cfg = tiny_config()
    m = models.get(name)
    hp = muon.Muon()
    step = ensemble.make_ensemble_step(m, cfg, hp, grad_clip=0.5)
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    state = ensemble.opt_init(stacked, hp)
    settings = {"muon_lr": (0.02, 0.05), "momentum": (0.95, 0.8), "weight_decay": (0.0, 0.1)}
    lrs = (1e-3, 4e-3)
    batches = [_tokens(cfg, (2, 2, 3), seed) for seed in range(2)]  # [E, A, B, T]
    for x, y in batches:
        stacked, state, _ = step(
            stacked, state, (x, y), torch.tensor(lrs), None,
            **{k: torch.tensor(v) for k, v in settings.items()},
        )  # fmt: skip
    for e, seed in enumerate(SEEDS):
        one = make_train_step(m, cfg, muon.Muon(**{k: v[e] for k, v in settings.items()}),
                              grad_clip=0.5)  # fmt: skip
        p = m.init(cfg, seed)
        s = muon.Muon().init(p)
        for x, y in batches:
            p, s, _ = one(p, s, (x[e], y[e]), lrs[e], None)
        assert params.max_abs_diff(ensemble.unstack(stacked)[e], p) < 1e-5
        assert params.max_abs_diff(ensemble.unstack(state.momentum)[e], s.momentum) < 1e-5
        assert state.step[e].item() == s.step.item() == 2


def test_ensemble_refuses_a_setting_its_optimizer_lacks():
    cfg = tiny_config()
    m = models.get("gpt")
    step = ensemble.make_ensemble_step(m, cfg, optim.AdamW())
    stacked = ensemble.ensemble_init(m, cfg, SEEDS)
    with pytest.raises(TypeError, match="muon_lr"):
        step(stacked, ensemble.opt_init(stacked), _tokens(cfg, (2, 2), 0), 1e-3, None,
             muon_lr=0.02)  # fmt: skip


def test_accumulated_micro_batches_equal_one_batch():
    cfg = tiny_config()
    m = models.get("gpt-fast")
    hp = muon.Muon()
    step = make_train_step(m, cfg, hp)
    x, y = _tokens(cfg, (4,), 0)
    p = m.init(cfg, 0)
    one, s1, _ = step(p, hp.init(p), (x, y), 1e-3, None)
    two, s2, _ = step(p, hp.init(p), (x.view(2, 2, -1), y.view(2, 2, -1)), 1e-3, None)
    assert params.max_abs_diff(one, two) < 1e-5
    assert params.max_abs_diff(s1.momentum, s2.momentum) < 1e-6


@pytest.mark.slow  # about 25-45 s on 2 cores
def test_compiled_step_equals_eager_without_recompiling_as_rates_move():
    torch._dynamo.reset()
    cfg = tiny_config(n_layer=1)
    m = models.get("gpt-plus")
    hp = muon.Muon(weight_decay=0.1)
    runs = {}
    for label, compiled in (("eager", False), ("compiled", True)):
        step = make_train_step(m, cfg, hp, compile=compiled)
        p = m.init(cfg, 0)
        s = hp.init(p)
        for i in range(3):
            torch._dynamo.config.error_on_recompile = compiled and i > 0
            try:
                p, s, _ = step(p, s, _tokens(cfg, (4,), i), 1e-3 * (i + 1), None,
                               muon_lr=0.02 / (i + 1), momentum=0.85 + 0.05 * i)  # fmt: skip
            finally:
                torch._dynamo.config.error_on_recompile = False
        runs[label] = p
    assert params.max_abs_diff(runs["compiled"], runs["eager"]) < 1e-4


def test_overflowing_loss_scaled_step_is_skipped_and_the_state_kept():
    cfg = tiny_config()
    m = models.get("gpt")
    hp = muon.Muon()
    scale = optim.DynamicLossScale(3e38)  # loss x scale overflows fp32 -> inf grads
    step = make_train_step(m, cfg, hp, loss_scale=scale)
    p = m.init(cfg, 0)
    s = optim.init(p, scale, hp)
    new, s2, metrics = step(p, s, _tokens(cfg, (4,), 0), 1e-3, None)
    assert not torch.isfinite(metrics["grad_norm"])
    assert params.max_abs_diff(new, p) == 0 and s2.inner.step.item() == 0
    assert params.max_abs_diff(s2.inner.momentum, s.inner.momentum) == 0
    assert s2.loss_scale.scale.item() == pytest.approx(1.5e38)
