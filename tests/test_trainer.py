"""The training CLI: exact resume, accumulation, checkpointing, features and bad input."""

import datetime
import json
import shutil
import signal
from pathlib import Path

import conftest
import pytest
import torch
from conftest import VARIANTS, ckpt, tiny_config
from conftest import metrics_rows as rows

from yocto_fn import cli, layers, models, optim, rng
from yocto_fn.core.params import max_abs_diff, named_leaves, tree_leaves
from yocto_fn.core.train import grad_and_value, loss_fn, make_train_step
from yocto_fn.run.trainer import Trainer

RUN = ("--eval-iters", "2", "--eval-interval", "4")


def train(data_dir: Path, ckpt_dir: Path, *flags: str) -> int:
    """conftest's tiny run, evaluating every 4 steps."""
    return conftest.train(data_dir, ckpt_dir, *RUN, *flags)


def snapshot(directory: Path) -> dict[str, bytes]:
    if not directory.exists():
        return {}
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


LOSSES = ("iter", "train_loss", "val_loss", "val_loss_raw", "best_val_loss", "grad_norm", "lr")


# ----------------------------------------------------------------------------- exactness


def test_resume_equals_uninterrupted_run(char_dir, tmp_path):
    """8 steps == 4 steps + --resume 4 more, with dropout on (data and dropout RNG restored)."""
    common = ("--model", "gpt-plus", "--optimizer", "adamw", "--dropout", "0.2", "--max-iters")
    assert train(char_dir, tmp_path / "full", *common, "8") == 0
    assert train(char_dir, tmp_path / "half", *common, "4") == 0
    latest = tmp_path / "half" / "latest.pt"
    assert train(char_dir, tmp_path / "half", *common, "4", "--resume", str(latest)) == 0

    full, resumed = rows(tmp_path / "full"), rows(tmp_path / "half")
    assert [r["iter"] for r in resumed] == ["4", "8"]
    assert [{k: r[k] for k in LOSSES} for r in full] == [{k: r[k] for k in LOSSES} for r in resumed]
    a, b = ckpt(tmp_path / "full" / "latest.pt"), ckpt(latest)
    assert b["iter"] == 8 and b["progress"]["tokens_seen"] == 8 * 4 * 16
    assert max_abs_diff(a["params"], b["params"]) == 0.0
    assert max_abs_diff(a["opt_state"]["state"], b["opt_state"]["state"]) == 0.0


def test_muon_resume_equals_uninterrupted_run_and_records_the_optimizer(char_dir, tmp_path):
    """The same with --optimizer muon: the momentum and AdamW's moments come back exactly,
    the checkpoint names its optimizer, and a later --resume takes it without the flag."""
    common = ("--optimizer", "muon", "--muon-lr", "0.03", "--schedule", "constant",
              "--dropout", "0.1", "--max-iters")  # fmt: skip
    assert train(char_dir, tmp_path / "full", *common, "8") == 0
    assert train(char_dir, tmp_path / "half", *common, "4") == 0
    latest = tmp_path / "half" / "latest.pt"
    again = ("--max-iters", "4", "--dropout", "0.1", "--muon-lr", "0.03", "--schedule", "constant")
    assert train(char_dir, tmp_path / "half", *again, "--resume", str(latest)) == 0
    full, resumed = rows(tmp_path / "full"), rows(tmp_path / "half")
    assert [{k: r[k] for k in LOSSES} for r in full] == [{k: r[k] for k in LOSSES} for r in resumed]
    a, b = ckpt(tmp_path / "full" / "latest.pt"), ckpt(latest)
    state = b["opt_state"]["state"]
    assert b["opt_state"]["optimizer"] == "muon" and state["1.inner.adamw.0.count"].item() == 8
    assert any(".momentum." in n for n in state) and any(".nu." in n for n in state)
    assert max_abs_diff(a["params"], b["params"]) == 0.0
    assert max_abs_diff(a["opt_state"]["state"], state) == 0.0
    meta = json.loads((tmp_path / "half" / "run_meta.json").read_text())["optimizer"]
    assert meta["name"] == "muon" and meta["muon_lr"] == 0.03 and meta["schedule"] == "constant"


@pytest.mark.parametrize(
    ("flags", "want"),
    [
        (("--amp", "on"), "float32"),  # the default
        (("--amp", "on", "--muon-ns-dtype", "auto"), "bfloat16"),  # follows the autocast
        (("--amp", "off", "--muon-ns-dtype", "auto"), "float32"),
        (("--amp", "off", "--muon-ns-dtype", "bf16"), "bfloat16"),
    ],
)
def test_newton_schulz_runs_in_the_dtype_the_flags_ask_for(char_dir, tmp_path, flags, want):
    """run_meta.json records the precision the step was built with: fp32 unless asked,
    auto following the autocast dtype."""
    assert train(char_dir, tmp_path, "--optimizer", "muon", "--max-iters", "2", *flags) == 0
    meta = json.loads((tmp_path / "run_meta.json").read_text())["optimizer"]
    assert meta["ns_dtype"] == want


def test_a_wsd_run_extended_from_pre_decay_equals_the_longer_run(char_dir, tmp_path):
    """WSD keeps pre_decay.pt (the state before the first decay step). Resumed with more
    steps it continues exactly as the longer run asked for from the start: same rows, same
    weights, because both were still in the stable phase there."""
    wsd = ("--schedule", "wsd", "--warmup-iters", "2", "--decay-fraction", "0.5",
           "--eval-interval", "2", "--lr", "3e-3")  # fmt: skip
    assert train(char_dir, tmp_path / "long", *wsd, "--max-iters", "12") == 0
    assert train(char_dir, tmp_path / "short", *wsd, "--max-iters", "8") == 0
    pre = tmp_path / "short" / "pre_decay.pt"
    assert ckpt(pre)["iter"] == 4  # round(8 * 0.5)
    assert train(char_dir, tmp_path / "short", *wsd, "--max-iters", "8", "--resume", str(pre)) == 0
    long, extended = rows(tmp_path / "long"), rows(tmp_path / "short")
    assert [r["iter"] for r in extended] == [str(i) for i in range(2, 13, 2)]
    assert [{k: r[k] for k in LOSSES} for r in long] == [
        {k: r[k] for k in LOSSES} for r in extended
    ]
    a, b = ckpt(tmp_path / "long" / "latest.pt"), ckpt(tmp_path / "short" / "latest.pt")
    assert max_abs_diff(a["params"], b["params"]) == 0.0
    assert float(extended[-1]["lr"]) == pytest.approx(1e-4)  # decayed to --min-lr at the end


def test_init_from_a_muon_run_starts_a_fresh_adamw_state(char_dir, tmp_path):
    assert train(char_dir, tmp_path / "a", "--optimizer", "muon", "--max-iters", "2") == 0
    src = tmp_path / "a" / "latest.pt"
    assert train(char_dir, tmp_path / "b", "--optimizer", "adamw", "--max-iters", "2",
                 "--init-from", str(src)) == 0  # fmt: skip
    state = ckpt(tmp_path / "b" / "latest.pt")["opt_state"]
    assert state["optimizer"] == "adamw" and state["state"]["1.inner.0.count"].item() == 2


def test_the_muon_rate_follows_the_lr_schedule_in_proportion(char_dir, tmp_path, monkeypatch):
    """Each step gets lr(it) and muon_lr * lr(it) / --lr: warmup, stable and decay alike."""
    seen = []
    real = Trainer._build_step

    def spy(self):
        real(self)
        step = self.step

        def watched(params, state, batch, key, **kw):
            seen.append((kw["lr"], kw.get("muon_lr")))
            return step(params, state, batch, key, **kw)

        self.step = watched

    monkeypatch.setattr(Trainer, "_build_step", spy)
    flags = ("--optimizer", "muon", "--lr", "2e-3", "--muon-lr", "0.04", "--schedule", "wsd",
             "--warmup-iters", "2", "--decay-fraction", "0.5", "--min-lr", "2e-4",
             "--max-iters", "8")  # fmt: skip
    assert train(char_dir, tmp_path / "r", *flags) == 0
    lrs = [lr for lr, _ in seen]
    assert lrs == pytest.approx([1e-3, 2e-3, 2e-3, 2e-3, 1.55e-3, 1.1e-3, 6.5e-4, 2e-4])
    assert [m for _, m in seen] == pytest.approx([20 * lr for lr in lrs])


def test_grad_accumulation_matches_full_batch():
    cfg = tiny_config()
    model = models.get("gpt-fast")
    params = model.init(cfg, 0)
    x = torch.randint(
        cfg.vocab_size, (8, cfg.block_size), generator=torch.Generator().manual_seed(1)
    )
    y = torch.roll(x, -1, 1)
    tx = optim.adamw()
    step = make_train_step(model, cfg, tx)
    full, _, m_full = step(params, tx.init(params), (x, y))
    micro = (x.reshape(2, 4, -1), y.reshape(2, 4, -1))
    accum, _, m_acc = step(params, tx.init(params), micro)
    assert max_abs_diff(full, accum) < 1e-5
    assert abs(m_full["loss"].item() - m_acc["loss"].item()) < 1e-5
    assert abs(m_full["grad_norm"].item() - m_acc["grad_norm"].item()) < 1e-5


def test_grad_accum_flag_matches_full_batch_run(char_dir, tmp_path):
    """The CLI draws the same rows for 2 x 2 as for 4 x 1, so the runs end equal (in fp32:
    bf16 autocast rounds the two batch shapes differently)."""
    flags = ("--model", "gpt", "--max-iters", "4", "--amp", "off")
    assert train(char_dir, tmp_path / "full", *flags) == 0
    assert (
        train(char_dir, tmp_path / "acc", *flags, "--batch-size", "2", "--grad-accum-steps", "2")
        == 0
    )
    a, b = ckpt(tmp_path / "full" / "latest.pt"), ckpt(tmp_path / "acc" / "latest.pt")
    assert max_abs_diff(a["params"], b["params"]) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_activation_checkpointing_gives_same_gradients(variant, monkeypatch):
    cfg = tiny_config(dropout=0.1)
    model = models.get(variant)
    params = model.init(cfg, 0)
    x = torch.randint(
        cfg.vocab_size, (3, cfg.block_size), generator=torch.Generator().manual_seed(2)
    )
    batch, key = (x, torch.roll(x, -1, 1)), rng.key(7)
    grads, calls = {}, {}
    real = layers.causal_self_attention
    for ckpt_on in (False, True):
        counted = []
        monkeypatch.setattr(layers, "causal_self_attention",
                            lambda *a, c=counted, **k: c.append(1) or real(*a, **k))  # fmt: skip
        fn = lambda p, b, k, on=ckpt_on: loss_fn(  # noqa: E731
            p, b, k, model=model, cfg=cfg, activation_checkpointing=on
        )
        grads[ckpt_on], _ = grad_and_value(fn)(params, batch, key)
        calls[ckpt_on] = len(counted)
    assert max_abs_diff(grads[False], grads[True]) < 1e-5
    # Checkpointing really recomputes: each block's attention runs again in the backward pass.
    assert calls == {False: cfg.n_layer, True: 2 * cfg.n_layer}


# ----------------------------------------------------------------------------- features


def test_early_stopping_stops_before_max_iters(char_dir, tmp_path, capsys):
    flags = ("--max-iters", "40", "--early-stopping-patience", "2")
    capsys.readouterr()
    assert train(char_dir, tmp_path, *flags, "--early-stopping-min-delta", "100") == 0
    assert capsys.readouterr().out.splitlines()[-2] == (
        "early stopping: no improvement in 2 evaluations"
    )
    assert [r["iter"] for r in rows(tmp_path)] == ["4", "8", "12"]
    assert ckpt(tmp_path / "latest.pt")["iter"] == 12


@pytest.mark.parametrize(
    "strategy, files",
    [("both", {"best.pt", "latest.pt"}), ("best", {"best.pt"}), ("latest", {"latest.pt"}),
     ("all", {"best.pt", "latest.pt", "iter-4.pt"}), ("none", set())],
)  # fmt: skip
def test_save_strategy_writes_only_what_it_says(char_dir, tmp_path, strategy, files):
    assert train(char_dir, tmp_path, "--max-iters", "4", "--save-strategy", strategy) == 0
    assert {p.name for p in tmp_path.glob("*.pt")} == files
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "run_meta.json").is_file()


def test_init_from_no_strict_loads_the_matching_tensors(char_dir, tmp_path, capsys):
    assert (
        train(char_dir, tmp_path / "a", "--model", "gpt", "--n-layer", "2", "--max-iters", "4") == 0
    )
    src = tmp_path / "a" / "latest.pt"
    deeper = ("--model", "gpt", "--n-layer", "3", "--max-iters", "0", "--init-from", str(src))
    before = snapshot(tmp_path / "b")
    assert train(char_dir, tmp_path / "b", *deeper) == 2
    assert "--no-strict-init" in capsys.readouterr().err and snapshot(tmp_path / "b") == before
    assert train(char_dir, tmp_path / "b", *deeper, "--no-strict-init") == 0
    assert "blocks.2." in capsys.readouterr().err
    a = named_leaves(ckpt(src)["params"])
    b = named_leaves(ckpt(tmp_path / "b" / "latest.pt")["params"])
    fresh = named_leaves(
        models.get("gpt").init(tiny_config(vocab_size=a["wte"].shape[0], n_layer=3), 1337)
    )
    assert torch.equal(a["blocks.1.attn.qkv_w"], b["blocks.1.attn.qkv_w"])
    assert torch.equal(a["wte"], b["wte"]) and not torch.equal(a["wte"], fresh["wte"])
    assert torch.equal(b["blocks.2.attn.qkv_w"], fresh["blocks.2.attn.qkv_w"])
    assert ckpt(tmp_path / "b" / "latest.pt")["iter"] == 0


def test_ctrl_c_finishes_the_step_saves_and_resumes(char_dir, tmp_path, monkeypatch, capsys):
    original = Trainer.train_step

    def step_then_interrupt(self, it, end):
        out = original(self, it, end)
        if it == 2:
            signal.raise_signal(signal.SIGINT)
        return out

    monkeypatch.setattr(Trainer, "train_step", step_then_interrupt)
    capsys.readouterr()
    assert train(char_dir, tmp_path, "--max-iters", "100") == 0
    said, resume = capsys.readouterr().out.splitlines()[-2:]
    assert said == f"interrupted (SIGINT) at step 3; saved {tmp_path / 'latest.pt'}"
    assert resume.startswith("resume with: python cli.py train --mode char --data-dir ")
    assert resume.endswith(f"--resume {tmp_path / 'latest.pt'}")
    assert ckpt(tmp_path / "latest.pt")["iter"] == 3


# ----------------------------------------------------------------------------- bad input


def _expect_error(capsys, argv_fn, needle: str, watch: Path) -> None:
    before = snapshot(watch)
    capsys.readouterr()
    assert argv_fn() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err
    assert snapshot(watch) == before


def test_bad_inputs_exit_2_with_one_line(char_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(char_dir, run, "--model", "gpt", "--max-iters", "4") == 0
    capsys.readouterr()
    latest = str(run / "latest.pt")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (lambda: train(tmp_path / "nope", run), "meta.json missing"),
        (lambda: train(char_dir, run, "--block-size", "100000"), "larger than the"),
        (lambda: train(char_dir, run, "--n-embd", "30", "--n-head", "4"), "divisible"),
        (lambda: train(char_dir, run, "--resume", latest, "--model", "gpt-plus"), "architecture"),
        (lambda: train(char_dir, run, "--resume", latest, "--n-layer", "3"), "architecture"),
        (lambda: train(char_dir, run, "--batch-size", "0"), "--batch-size"),
        (lambda: train(char_dir, run, "--model", "gpt-huge"), "gpt-huge"),
        (lambda: train(char_dir, run, "--resume", str(tmp_path / "none.pt")), "not found"),
        (lambda: train(char_dir, run, "--resume", latest, "--optimizer", "adamw"), "muon, not"),
        (lambda: train(char_dir, run, "--optimizer", "sgd"), "sgd"),
        (lambda: train(char_dir, run, "--optimizer", "muon", "--muon-lr", "0"), "--muon-lr"),
        (lambda: train(char_dir, run, "--muon-momentum", "1.0"), "--muon-momentum"),
        (lambda: train(char_dir, run, "--schedule", "linear"), "linear"),
        (lambda: train(char_dir, run, "--cosine-lr", "--schedule", "wsd"), "--cosine-lr"),
        (lambda: train(char_dir, run, "--schedule", "wsd", "--decay-fraction", "0"), "fraction"),
    ]
    if not torch.cuda.is_available():
        cases.append((lambda: train(char_dir, run, "--device", "cuda"), "CUDA"))
    for fn, needle in cases:
        _expect_error(capsys, fn, needle, run)


def test_missing_bin_is_an_error(char_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("meta.json", "vocab.json", "train.bin"):
        (broken / name).write_bytes((char_dir / name).read_bytes())
    _expect_error(capsys, lambda: train(broken, tmp_path / "run"), "val.bin", tmp_path / "run")


def test_resume_with_another_vocabulary_is_an_error(char_dir, tmp_path, capsys):
    other = tmp_path / "other"
    corpus = tmp_path / "abc.txt"
    corpus.write_text("abc abc cab\n\n" * 400, encoding="utf-8")
    assert cli.main(["prepare-char", "--text-path", str(corpus), "--out-dir", str(other)]) == 0
    assert train(char_dir, tmp_path / "run", "--max-iters", "1") == 0
    latest = str(tmp_path / "run" / "latest.pt")
    _expect_error(capsys, lambda: train(other, tmp_path / "run", "--resume", latest), "vocab",
                  tmp_path / "run")  # fmt: skip


def test_corrupt_checkpoint_is_an_error(char_dir, tmp_path, capsys):
    assert train(char_dir, tmp_path / "run", "--max-iters", "1") == 0
    latest = tmp_path / "run" / "latest.pt"
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(latest.read_bytes()[:2000])
    _expect_error(capsys, lambda: train(char_dir, tmp_path / "run", "--resume", str(truncated)),
                  "corrupt", tmp_path / "run")  # fmt: skip


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(char_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(char_dir, run, "--max-iters", "4") == 0
    capsys.readouterr()
    resume = ("--resume", str(run / "latest.pt"), "--lr", "1e30", "--grad-clip", "0")
    _expect_error(capsys, lambda: train(char_dir, run, *resume), " at step 6; stopped without "
                  "saving, so the last good checkpoint is intact: lower --lr, raise "
                  "--warmup-iters or use --grad-clip", run)  # fmt: skip


def test_train_step_metrics_have_no_leaves_left_behind():
    """Every parameter moves in one step: no leaf is silently dropped from the update."""
    cfg = tiny_config()
    model = models.get("gpt-plus")
    params = model.init(cfg, 0)
    x = torch.randint(cfg.vocab_size, (2, cfg.block_size))
    tx = optim.adamw(1e-2)
    new, _, _ = make_train_step(model, cfg, tx)(params, tx.init(params), (x, x))
    assert all(
        not torch.equal(a, b) for a, b in zip(tree_leaves(params), tree_leaves(new), strict=True)
    )


def test_loss_scaled_optimizer_state_round_trips_through_a_checkpoint(tmp_path):
    """The loss scale travels beside the chain's state; a run without one drops it, and a
    state that does not fit the optimizer is refused by name."""
    from yocto_fn.errors import UserError
    from yocto_fn.formats import checkpoint

    params = models.get("gpt").init(tiny_config(), 0)
    tx = optim.dynamic_loss_scale(optim.adamw(), init_scale=512.0)
    state = tx.init(params)
    state = state._replace(inner=(state.inner[0]._replace(count=torch.tensor(3.0)),) +
                           state.inner[1:])  # fmt: skip
    torch.save(checkpoint.opt_state_to_dict(state, "adamw"), tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    fresh = optim.dynamic_loss_scale(optim.adamw(), init_scale=2.0).init(params)
    back = checkpoint.opt_state_from_dict(saved, fresh, "--resume")
    assert isinstance(back, optim.LossScaleState) and back.scale.item() == 512.0
    assert max_abs_diff(back.inner, state.inner) == 0
    plain = checkpoint.opt_state_from_dict(saved, optim.adamw().init(params), "--resume")
    assert isinstance(plain, tuple) and plain[0].count.item() == 3
    with pytest.raises(UserError, match="--resume: the checkpoint's optimizer state does not"):
        checkpoint.opt_state_from_dict(saved, optim.scale_by_adam().init(params), "--resume")


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_run_checkpointed_before_the_chains_resumes_as_it_went_on(tmp_path, optimizer):
    """`monolith-<opt>-latest.pt` was written by the optimizers before they were chains of
    links (3 steps of a 1-layer gpt on the first 40k characters of the default corpus),
    and `monolith-<opt>-after.pt` holds that code's parameters after 3 more steps resumed
    from it: resumed now, the run ends at the same parameters."""
    from yocto_fn.data import default_corpus_text

    fixtures = Path(__file__).resolve().parent / "fixtures"
    text = tmp_path / "t.txt"
    text.write_text(default_corpus_text()[:40_000], encoding="utf-8")
    data, run = tmp_path / "d", tmp_path / "run"
    assert cli.main(["prepare-char", "--text-path", str(text), "--out-dir", str(data)]) == 0
    run.mkdir()
    shutil.copy(fixtures / f"monolith-{optimizer}-latest.pt", run / "latest.pt")
    assert cli.main(["train", "--data-dir", str(data), "--ckpt-dir", str(run), "--resume",
                     str(run / "latest.pt"), "--max-iters", "3", "--eval-interval", "3",
                     "--eval-iters", "1", "--device", "cpu", "--amp", "off"]) == 0  # fmt: skip
    got = ckpt(run / "latest.pt")
    want = torch.load(fixtures / f"monolith-{optimizer}-after.pt", weights_only=True)
    assert got["iter"] == want["iter"] == 6
    assert max_abs_diff(got["params"], want["params"]) < 1e-6
    assert (
        max_abs_diff(got["params"], ckpt(fixtures / f"monolith-{optimizer}-latest.pt")["params"])
        > 1e-4
    )


def test_strict_loading_names_the_first_six_mismatched_tensors():
    """Shape mismatches, missing and unused tensors are counted and the first six named;
    loaded tensors take the target's dtype."""
    from yocto_fn.errors import UserError
    from yocto_fn.formats.checkpoint import load_matching

    target = {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(3),
              "blocks": [{"w": torch.zeros(1)}]}  # fmt: skip
    source = {"a": torch.ones(2), "b": torch.ones(4)} | {f"x{i}": torch.ones(1) for i in range(5)}
    with pytest.raises(UserError) as err:
        load_matching(target, source, True, "--init-from f.pt")
    assert "f.pt does not match this model (7 tensors differ: b, blocks.0.w, x0, x1, x2, x3)" in (
        str(err.value)
    )
    loaded, skipped = load_matching(target, source, False, "--init-from f.pt")
    assert skipped == ["b", "blocks.0.w", *(f"x{i} (unused)" for i in range(5))]
    assert loaded["a"].tolist() == [1.0, 1.0] and loaded["a"].dtype == torch.float64
    assert loaded["b"].tolist() == [0.0] * 3


def test_checkpoint_load_refuses_pickled_objects_and_quotes_the_reason(tmp_path, monkeypatch):
    """Only tensors and plain values load (weights_only), and objects are named as such;
    other failures quote the first 120 characters of torch's reason, or the exception's
    name when it has no message."""
    import datetime

    from yocto_fn.errors import UserError
    from yocto_fn.formats import checkpoint

    plain = {"format": 1, "arch": "gpt", "model_config": {}, "params": {}, "iter": 7,
             "tokenizer": {}}  # fmt: skip
    torch.save(plain, tmp_path / "ok.pt")
    assert checkpoint.load(tmp_path / "ok.pt")["iter"] == 7
    torch.save(plain | {"saved": datetime.date(2026, 1, 1)}, tmp_path / "unsafe.pt")
    with pytest.raises(UserError, match="unsafe.pt holds Python objects besides tensors"):
        checkpoint.load(tmp_path / "unsafe.pt")
    reason = "storage is " + "x" * 200
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(RuntimeError(reason)))
    with pytest.raises(UserError) as err:
        checkpoint.load(tmp_path / "ok.pt")
    assert f"is corrupt or truncated ({reason[:120]});" in str(err.value)
    monkeypatch.setattr(torch, "load", real_load)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"empty.pt is truncated or not a checkpoint \(not a whole"):
        checkpoint.load(tmp_path / "empty.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: (_ for _ in ()).throw(EOFError()))
    with pytest.raises(UserError, match=r"corrupt or truncated \(EOFError\)"):
        checkpoint.load(tmp_path / "ok.pt")


def load_refusal(path) -> str:
    """The one-line message `checkpoint.load` refuses `path` with."""
    from yocto_fn.errors import UserError
    from yocto_fn.formats import checkpoint

    with pytest.raises(UserError) as err:
        checkpoint.load(path)
    return str(err.value)


def test_checkpoint_refusals_say_what_to_pass_instead(tmp_path, monkeypatch):
    """Each refusal of `checkpoint.load`, word for word: the message is all a user sees."""
    import pickle

    (tmp_path / "run").mkdir()
    assert load_refusal(tmp_path / "run") == (
        f"{tmp_path / 'run'} is a directory; pass the latest.pt or best.pt inside it (or a "
        "directory written by `cli.py export --format safetensors`)"
    )
    (tmp_path / "short.pt").write_bytes(b"PK")
    assert load_refusal(tmp_path / "short.pt") == (
        f"{tmp_path / 'short.pt'} is truncated or not a checkpoint (not a whole zip archive, "
        "which torch.save writes); pass the latest.pt or best.pt of a training run"
    )
    torch.save({"format": 1, "when": datetime.date(2026, 1, 1)}, tmp_path / "objects.pt")
    assert load_refusal(tmp_path / "objects.pt") == (
        f"{tmp_path / 'objects.pt'} holds Python objects besides tensors and plain values, so "
        "it is not a yocto_fn checkpoint and is not unpickled (that could run code)"
    )
    torch.save({"format": 1}, tmp_path / "ok.pt")
    failures = [
        (pickle.UnpicklingError("bad opcode"), "corrupt (bad opcode); use"),
        (RuntimeError("bad storage"), "corrupt or truncated (bad storage); use"),
    ]
    for error, reason in failures:
        monkeypatch.setattr(
            torch, "load", lambda *a, error=error, **k: (_ for _ in ()).throw(error)
        )
        advice = " (e.g. best.pt or latest.pt of the run) or start afresh" * ("truncated" in reason)
        assert load_refusal(tmp_path / "ok.pt") == (
            f"checkpoint {tmp_path / 'ok.pt'} is {reason} another checkpoint{advice}"
        )


def test_foreign_and_damaged_checkpoints_are_named_with_what_to_use_instead(tmp_path):
    """Missing keys, another format, and a failed checksum with the siblings it suggests:
    the others of best.pt and latest.pt that exist, never the damaged file itself."""
    from yocto_fn.formats import checkpoint

    torch.save({"format": 1, "params": {}}, tmp_path / "foreign.pt")
    assert load_refusal(tmp_path / "foreign.pt") == (
        f"{tmp_path / 'foreign.pt'} is not a yocto_fn checkpoint "
        "(missing arch, model_config, iter, tokenizer)"
    )
    good = {"format": 1, "arch": "gpt", "model_config": {}, "params": {"w": torch.ones(3)},
            "iter": 1, "tokenizer": {}}  # fmt: skip
    torch.save(good | {"format": 7}, tmp_path / "future.pt")
    assert load_refusal(tmp_path / "future.pt") == (
        f"{tmp_path / 'future.pt'} has checkpoint format 7, expected 1"
    )
    damaged = good | {"payload_sha256": "0" * 64}
    run = tmp_path / "run"
    run.mkdir()
    torch.save(damaged, run / "latest.pt")
    prefix = f"checkpoint {run / 'latest.pt'} is damaged (its tensors fail their checksum); "
    assert load_refusal(run / "latest.pt") == prefix + "start afresh"
    checkpoint.save(run / "best.pt", good)
    assert load_refusal(run / "latest.pt") == prefix + "use best.pt beside it"
    torch.save(damaged, run / "copy.pt")
    assert load_refusal(run / "copy.pt") == (
        f"checkpoint {run / 'copy.pt'} is damaged (its tensors fail their checksum); "
        "use best.pt or latest.pt beside it"
    )


def test_payload_digest_matches_a_hand_built_sha256():
    """The checksum's definition is part of the file format (old checkpoints must keep
    verifying): name, dtype and shape, then the raw bytes, of every tensor in key order
    (keys compared as strings, so 10 before 2); plain values and the digest itself are out."""
    import hashlib

    from yocto_fn.formats.checkpoint import payload_digest

    ckpt = {
        "params": {"b": torch.tensor([1, 2], dtype=torch.int16), "a": torch.zeros(0)},
        "opt": [torch.tensor([3], dtype=torch.uint8), {10: torch.tensor([4], dtype=torch.uint8),
                                                       2: torch.tensor([5], dtype=torch.uint8)}],
        "iter": 5,
        "payload_sha256": torch.ones(1),
    }  # fmt: skip
    want = hashlib.sha256(
        b".opt.0:torch.uint8:(1,);\x03"
        b".opt.1.10:torch.uint8:(1,);\x04"
        b".opt.1.2:torch.uint8:(1,);\x05"
        b".params.a:torch.float32:(0,);"
        b".params.b:torch.int16:(2,);\x01\x00\x02\x00"
    ).hexdigest()
    assert payload_digest(ckpt) == want
