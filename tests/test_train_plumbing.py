"""Training plumbing: EMA, best.pt, flags reaching the step, resume, sample --ema, OOM, auto-tie."""

import json
import math
import re
from pathlib import Path

import conftest
import pytest
import torch
from conftest import TINY, ckpt, metrics_rows

from yocto_fn import cli, models, optim
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.params import clone, max_abs_diff, tree_leaves
from yocto_fn.device import amp_dtype
from yocto_fn.errors import UserError
from yocto_fn.formats import checkpoint
from yocto_fn.formats import tokenizer as tokenizers
from yocto_fn.run import runstate, trainer
from yocto_fn.run.trainer import Trainer


def train(data_dir: Path, ckpt_dir: Path, *flags: str) -> int:
    """conftest's tiny run, evaluating at its end only (unless flags say otherwise)."""
    return conftest.train(data_dir, ckpt_dir, "--eval-interval", "100", *flags)


def record_steps(monkeypatch) -> list[dict]:
    """Patch the step the trainer builds: each call appends its lr and the params it returns."""
    calls: list[dict] = []
    real = trainer.make_train_step

    def build(*args, **kwargs):
        step = real(*args, **kwargs)

        def recorded(params, opt_state, batch, key, **hparams):
            out = step(params, opt_state, batch, key, **hparams)
            calls.append({"lr": float(hparams["lr"]), "params": clone(out[0])})
            return out

        return recorded

    monkeypatch.setattr(trainer, "make_train_step", build)
    return calls


def hand_ema(initial, steps: list, decay: float):
    """ema_k = decay * ema_{k-1} + (1 - decay) * params_k, leaf by leaf, from `initial`."""
    ema = [t.clone() for t in tree_leaves(initial)]
    for params in steps:
        ema = [decay * e + (1 - decay) * p for e, p in zip(ema, tree_leaves(params), strict=True)]
    return ema


def leaves_diff(a: list[torch.Tensor], b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, tree_leaves(b), strict=True))


def test_ema_is_the_moving_average_of_the_step_params(char_dir, tmp_path, monkeypatch):
    """--ema-decay d: the saved EMA is d-weighted over the initial params and every step's."""
    calls = record_steps(monkeypatch)
    assert train(char_dir, tmp_path, "--max-iters", "4", "--ema-decay", "0.8", "--lr", "1e-2") == 0
    c = ckpt(tmp_path / "latest.pt")
    initial = models.get("gpt").init(ModelConfig.from_dict(c["model_config"]), 1337)
    expected = hand_ema(initial, [call["params"] for call in calls], 0.8)
    assert len(calls) == 4 and max_abs_diff(c["params"], calls[-1]["params"]) == 0.0
    assert leaves_diff(expected, c["ema"]) < 1e-6
    assert max_abs_diff(c["ema"], c["params"]) > 1e-3
    last = metrics_rows(tmp_path)[-1]  # val_loss is the EMA model's, the raw one beside it
    assert last["val_loss"] == last["val_loss_ema"] != last["val_loss_raw"]
    assert last["best_val_loss_ema"]


def test_ema_off_leaves_ema_columns_empty(char_dir, tmp_path):
    assert train(char_dir, tmp_path, "--max-iters", "4") == 0
    last = metrics_rows(tmp_path)[-1]
    assert last["val_loss_ema"] == "" and last["val_loss"] == last["val_loss_raw"]
    assert ckpt(tmp_path / "latest.pt")["ema"] is None


def test_best_checkpoint_is_written_only_on_improvement(char_dir, tmp_path, monkeypatch):
    """best.pt stays at the best evaluation while latest.pt follows every evaluation."""
    val_losses = iter([3.0, 2.0, 2.5, 2.6])
    monkeypatch.setattr(
        Trainer, "estimate", lambda self, params, split: next(val_losses) if split == "val" else 1.0
    )
    assert train(char_dir, tmp_path, "--max-iters", "4", "--eval-interval", "1") == 0
    assert ckpt(tmp_path / "best.pt")["iter"] == 2
    assert ckpt(tmp_path / "best.pt")["best_val_loss"] == 2.0
    assert ckpt(tmp_path / "latest.pt")["iter"] == 4


def test_step_flags_reach_the_train_step(char_dir, tmp_path, monkeypatch):
    """--label-smoothing, --activation-checkpointing and --amp (bf16) are passed on to
    make_train_step, which the run then steps with; --grad-clip and --weight-decay reach
    its optimizer's chain (the clip link, the injected decay the step is given)."""
    seen, steps, clips = {}, [], []
    real, real_clip = trainer.make_train_step, optim.clip_by_global_norm

    def build(model, cfg, tx, **kwargs):
        seen.update(kwargs)
        step = real(model, cfg, tx, **kwargs)
        return lambda *args, **kw: steps.append(kw["weight_decay"]) or step(*args, **kw)

    monkeypatch.setattr(trainer, "make_train_step", build)
    monkeypatch.setattr(optim, "clip_by_global_norm", lambda m: clips.append(m) or real_clip(m))
    flags = ("--label-smoothing", "0.1", "--weight-decay", "0.05", "--grad-clip", "0.5",
             "--activation-checkpointing", "--amp", "--amp-dtype", "bf16")  # fmt: skip
    assert train(char_dir, tmp_path, "--max-iters", "1", *flags) == 0
    assert seen["label_smoothing"] == 0.1 and seen["activation_checkpointing"] is True
    assert seen["amp_dtype"] == torch.bfloat16 and clips and set(clips) == {0.5}
    assert steps == [0.05]


def test_the_jit_flag_reaches_the_train_step(char_dir, tmp_path, monkeypatch):
    """--compile is passed on as compile=True (named so that mutation runs, which leave out
    tests named for compiling, keep it; the step itself is then built eagerly here:
    the compiled step has its own tests, which compile)."""
    seen = {}
    real = trainer.make_train_step

    def build(model, cfg, tx, **kwargs):
        seen.update(kwargs)
        return real(model, cfg, tx, **(kwargs | {"compile": False}))

    monkeypatch.setattr(trainer, "make_train_step", build)
    assert train(char_dir, tmp_path, "--max-iters", "1", "--compile") == 0
    assert seen["compile"] is True


def hand_cosine(step: int, lr: float, warmup: int, end: int, min_lr: float) -> float:
    """Linear warmup to `lr`, then cosine from `lr` to `min_lr` at step `end`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * (step - warmup) / (end - warmup)))


def test_resume_restores_the_ema_and_continues_the_cosine_schedule(char_dir, tmp_path, monkeypatch):
    """3 steps + --resume 3 steps == 6 steps for the EMA; the resumed run's cosine schedule
    runs from the checkpoint's step to that step + --max-iters."""
    flags = ("--ema-decay", "0.8", "--lr", "1e-2", "--cosine-lr", "--warmup-iters", "2",
             "--min-lr", "1e-3", "--max-iters")  # fmt: skip
    assert train(char_dir, tmp_path / "full", *flags, "6") == 0
    assert train(char_dir, tmp_path / "half", *flags, "3") == 0
    latest = tmp_path / "half" / "latest.pt"
    calls = record_steps(monkeypatch)
    assert train(char_dir, tmp_path / "half", *flags, "3", "--resume", str(latest)) == 0
    expected = [hand_cosine(it, 1e-2, 2, 6, 1e-3) for it in (3, 4, 5)]
    assert [c["lr"] for c in calls] == pytest.approx(expected, rel=1e-6)
    full, resumed = ckpt(tmp_path / "full" / "latest.pt"), ckpt(latest)
    assert resumed["iter"] == 6
    assert max_abs_diff(full["ema"], resumed["ema"]) < 1e-6
    assert max_abs_diff(resumed["ema"], resumed["params"]) > 1e-3


def greedy_text(c: dict, weights, prompt: str, n: int) -> str:
    """Greedy decoding by full forwards over the whole context (no KV cache)."""
    tok = tokenizers.from_dict(c["tokenizer"])
    cfg = ModelConfig.from_dict(c["model_config"])
    model = models.get(c["arch"])
    ids = tok.encode(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model.forward(weights, torch.tensor([ids]), cfg)
            ids.append(int(logits[0, -1].argmax()))
    return tok.decode(ids[len(tok.encode(prompt)) :])


def test_sample_ema_generates_from_the_ema_weights(char_dir, tmp_path, capsys):
    """sample --ema decodes with the checkpoint's EMA tree, without it with the raw params."""
    assert train(char_dir, tmp_path, "--max-iters", "2", "--ema-decay", "0.9") == 0
    path = tmp_path / "latest.pt"
    c = ckpt(path)
    c["ema"] = models.get(c["arch"]).init(ModelConfig.from_dict(c["model_config"]), 0)
    checkpoint.save(path, c)
    prompt = "The "
    want = {ema: greedy_text(c, c["ema" if ema else "params"], prompt, 8) for ema in (True, False)}
    assert want[True] != want[False]
    base = ["sample", "--ckpt", str(path), "--prompt", prompt, "--temperature", "0",
            "--max-new-tokens", "8", "--device", "cpu"]  # fmt: skip
    for ema in (True, False):
        capsys.readouterr()
        assert cli.main(base + ["--ema"] * ema) == 0
        assert capsys.readouterr().out == prompt + want[ema] + "\n"


def oom_once(monkeypatch) -> None:
    """The built step raises CUDA out-of-memory on its first call, then runs normally."""
    real = trainer.make_train_step

    def build(*args, **kwargs):
        step, raised = real(*args, **kwargs), []

        def flaky(*step_args, **hparams):
            if not raised:
                raised.append(1)
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return step(*step_args, **hparams)

        return flaky

    monkeypatch.setattr(trainer, "make_train_step", build)


def test_auto_microbatch_halves_the_micro_batch_on_oom(char_dir, tmp_path, monkeypatch, capsys):
    """After an OOM the run goes on with micro-batch B/2 x 2A over the same rows, so it ends
    where --batch-size B/2 --grad-accum-steps 2A ends."""
    assert train(char_dir, tmp_path / "ref", "--max-iters", "3", "--batch-size", "2",
                 "--grad-accum-steps", "2") == 0  # fmt: skip
    oom_once(monkeypatch)
    capsys.readouterr()
    assert train(char_dir, tmp_path / "auto", "--max-iters", "3", "--auto-microbatch") == 0
    assert "out of memory: micro-batch 2 x 2" in capsys.readouterr().err
    ref, auto = ckpt(tmp_path / "ref" / "latest.pt"), ckpt(tmp_path / "auto" / "latest.pt")
    assert auto["iter"] == 3
    assert max_abs_diff(ref["params"], auto["params"]) < 1e-5


@pytest.mark.parametrize(("batch", "accum", "after"), [(8, 1, "4 x 2"), (2, 1, "1 x 2"),
                                                      (4, 2, "2 x 4")])  # fmt: skip
def test_auto_microbatch_halves_any_batch_down_to_one(char_dir, tmp_path, monkeypatch, capsys,
                                                      batch, accum, after):  # fmt: skip
    oom_once(monkeypatch)
    capsys.readouterr()
    argv = ("--max-iters", "1", "--auto-microbatch", "--batch-size", str(batch),
            "--grad-accum-steps", str(accum))  # fmt: skip
    assert train(char_dir, tmp_path, *argv) == 0
    assert f"out of memory: micro-batch {after}\n" in capsys.readouterr().err


def test_oom_without_auto_microbatch_is_a_one_line_error(char_dir, tmp_path, monkeypatch, capsys):
    """Without --auto-microbatch an OOM is a one-line error (exit 2) and nothing is saved."""
    oom_once(monkeypatch)
    capsys.readouterr()
    assert train(char_dir, tmp_path, "--max-iters", "3") == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: out of memory at micro-batch 4; lower --batch-size, raise --grad-accum-steps, "
        "or use --auto-microbatch / --activation-checkpointing"
    )
    assert not tmp_path.joinpath("latest.pt").exists()


def test_each_evaluation_prints_its_losses_and_lr(char_dir, tmp_path, capsys):
    capsys.readouterr()
    assert train(char_dir, tmp_path, "--max-iters", "4", "--eval-interval", "2") == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in lines] == ["step 2", "step 4"]
    assert "parameters on" not in out  # the header is for terminals, with the bar
    assert lines == out.splitlines()[:-1]  # then "done: ...": no header, no stop message
    for line in lines:
        assert re.fullmatch(r"step \d: train \d\.\d{4}, val \d\.\d{4} \(best \d\.\d{4}\), "
                            r"lr \d\.\d\de[-+]\d\d", line), line  # fmt: skip


def test_init_from_across_tokenizers_leaves_the_embedding_and_head_fresh(char_dir, tmp_path,
                                                                         capsys):  # fmt: skip
    """--no-strict-init across vocabularies loads every tensor but wte and lm_head, which
    keep this run's initialisation (their rows would mean other symbols)."""
    assert train(char_dir, tmp_path / "src", "--max-iters", "2") == 0
    other = tmp_path / "other"
    import shutil

    shutil.copytree(char_dir, other)
    chars = json.loads((other / "vocab.json").read_text())
    (other / "vocab.json").write_text(json.dumps([chars[1], chars[0], *chars[2:]]))
    capsys.readouterr()
    warm = ("--max-iters", "0", "--init-from", str(tmp_path / "src" / "latest.pt"))
    assert train(other, tmp_path / "warm", *warm, "--no-strict-init") == 0
    err = capsys.readouterr().err
    assert "  skipped: wte (other vocabulary), lm_head (other vocabulary)\n" in err
    assert train(other, tmp_path / "fresh", "--max-iters", "0") == 0
    src, got, fresh = (ckpt(tmp_path / d / "latest.pt")["params"] for d in ("src", "warm", "fresh"))
    for name in ("wte", "lm_head"):
        assert torch.equal(got[name], fresh[name]) and not torch.equal(got[name], src[name])
    assert torch.equal(got["blocks"][0]["attn"]["qkv_w"], src["blocks"][0]["attn"]["qkv_w"])
    assert train(other, tmp_path / "strict", *warm) == 2
    assert (
        "was trained with another vocabulary than "
        f"{other}; pass --no-strict-init to load all but the embedding and output head\n"
    ) in capsys.readouterr().err


@pytest.mark.parametrize("above, tied", [(1, True), (0, False)])
def test_auto_tie_weights_threshold(char_dir, tmp_path, monkeypatch, above, tied):
    """--auto-tie-weights ties below AUTO_TIE_TOKENS train tokens, not at the threshold."""
    train_tokens = json.loads((char_dir / "meta.json").read_text())["train_tokens"]
    monkeypatch.setattr(runstate, "AUTO_TIE_TOKENS", train_tokens + above)
    assert train(char_dir, tmp_path, "--max-iters", "0", "--auto-tie-weights") == 0
    c = ckpt(tmp_path / "latest.pt")
    assert c["model_config"]["tie_weights"] is tied and ("lm_head" not in c["params"]) is tied


def test_amp_on_and_off_are_rules_and_auto_is_left_to_the_run():
    cpu = torch.device("cpu")
    assert amp_dtype("on", "bf16", cpu) == torch.bfloat16 and amp_dtype("off", "bf16", cpu) is None
    with pytest.raises(UserError, match="fp16 needs CUDA"):
        amp_dtype("on", "fp16", cpu)
    with pytest.raises(ValueError, match="choose_amp"):
        amp_dtype("auto", "bf16", cpu)


def test_amp_switch_forms_still_parse():
    assert cli.amp_switches(["train", "--amp"]) == ["train", "--amp", "on"]
    assert cli.amp_switches(["--amp", "--compile"]) == ["--amp", "on", "--compile"]
    assert cli.amp_switches(["--no-amp", "--amp", "auto"]) == ["--amp", "off", "--amp", "auto"]
    assert cli.parse(cli.amp_switches(["train", "--amp"])).amp == "on"


@pytest.mark.parametrize("faster", ["fp32", "bf16"])
def test_amp_auto_takes_the_faster_dtype_as_timed_and_records_both_rates(
    char_dir, tmp_path, monkeypatch, faster
):
    """With native bf16, auto times both dtypes on this run's step (once: a second run of
    the same shape reads the cache) and trains with the faster; run_meta.json says which,
    from where, and at what rates."""
    from yocto_fn.plan import probe

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    timed, built = [], []
    rates = {"fp32": 1000.0, "bf16": 900.0} if faster == "fp32" else {"fp32": 900.0, "bf16": 1e3}
    monkeypatch.setattr(probe, "amp_rates", lambda spec, dev: timed.append(spec) or rates)
    real = trainer.make_train_step
    monkeypatch.setattr(trainer, "make_train_step",
                        lambda *a, **k: built.append(k["amp_dtype"]) or real(*a, **k))  # fmt: skip
    for run in ("first", "second"):
        assert (
            train(
                char_dir, tmp_path / run, "--max-iters", "1", "--batch-size", "3", "--amp", "auto"
            )
            == 0
        )
    spec = timed[0]
    assert len(timed) == 1 and (spec.model, spec.batch, spec.accum) == ("gpt", 3, 1)
    assert spec.cfg.n_layer == int(TINY[TINY.index("--n-layer") + 1]) and not spec.compile
    want = torch.bfloat16 if faster == "bf16" else None
    assert built == [want, want]
    metas = [json.loads((tmp_path / r / "run_meta.json").read_text()) for r in ("first", "second")]
    autocast = "bfloat16" if faster == "bf16" else "fp32"
    for meta, source in zip(metas, ("measured", "cache"), strict=True):
        assert meta["amp"] == {"flag": "auto", "autocast": autocast, "choice": faster,
                               "source": source, "tokens_per_sec": rates}  # fmt: skip


@pytest.mark.parametrize("amp, native, want", [("auto", False, "float32"), ("off", True, "float32"),
                                               ("on", False, "autocast bfloat16")])  # fmt: skip
def test_run_meta_records_the_amp_rule(char_dir, tmp_path, monkeypatch, amp, native, want):
    """Without native bf16, auto is fp32 with nothing timed; on and off are taken as given."""
    from yocto_fn.plan import probe

    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(probe, "amp_rates", lambda *a: pytest.fail("nothing should be timed"))
    assert train(char_dir, tmp_path, "--max-iters", "1", "--amp", amp) == 0
    meta = json.loads((tmp_path / "run_meta.json").read_text())
    assert meta["dtype"] == want and meta["amp"]["flag"] == amp
    assert ("source" in meta["amp"]) == (amp == "auto")


def test_time_and_throughput_columns_add_up_across_steps_and_resumes(char_dir, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """With a clock that advances 0.25 s per reading, every step takes 0.25 s: time_sec
    sums the steps of the run and of the runs it resumes, and throughput_tps is the
    tokens of the steps since the last evaluation over their seconds."""
    from types import SimpleNamespace

    from yocto_fn.run import metrics

    ticks = iter(range(10**6))
    monkeypatch.setattr(trainer, "time", SimpleNamespace(perf_counter=lambda: next(ticks) / 4))
    every = ("--eval-interval", "2")
    assert train(char_dir, tmp_path, "--max-iters", "4", *every) == 0
    resume = ("--resume", str(tmp_path / "latest.pt"))
    assert train(char_dir, tmp_path, "--max-iters", "2", *every, *resume) == 0
    rows = metrics.read(tmp_path / "metrics.csv")
    tokens = 4 * 16  # --batch-size 4, --block-size 16
    assert [(r["iter"], r["time_sec"], r["tokens_seen"]) for r in rows] == [
        (2, 0.5, 2 * tokens),
        (4, 1.0, 4 * tokens),
        (6, 1.5, 6 * tokens),
    ]
    assert [r["throughput_tps"] for r in rows] == [2 * tokens / 0.5] * 3


@pytest.mark.parametrize(("warmup", "lr"), [(10, 1e-4), (0, 1e-3)])
def test_max_iters_0_evaluates_once_at_a_terminal_too(char_dir, tmp_path, monkeypatch, capsys,
                                                      warmup, lr):  # fmt: skip
    """--max-iters 0 only evaluates: one row, at the cosine schedule's first rate (warm-up
    step 0: lr / warmup_iters; without warm-up the peak), with no throughput since no step
    ran; at a terminal its line goes through the progress bar."""
    from yocto_fn.run import metrics

    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    flags = ("--max-iters", "0", "--cosine-lr", "--lr", "1e-3", "--warmup-iters", str(warmup))
    assert train(char_dir, tmp_path, *flags) == 0
    [row] = metrics.read(tmp_path / "metrics.csv")
    assert row["iter"] == 0 and row["lr"] == pytest.approx(lr, rel=1e-12)
    assert row["throughput_tps"] is None and row["time_sec"] == 0.0
    assert "step 0: train " in capsys.readouterr().out
