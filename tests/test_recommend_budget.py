"""recommend --time-budget: durations, the probe and its cache, the plan's time and loss,
and the calibration behind it."""

import shlex
from pathlib import Path

import pytest
import torch
from conftest import real_text, script

from yocto_fn import cli, models
from yocto_fn.config import TrainConfig
from yocto_fn.core.config import ModelConfig
from yocto_fn.core.params import count
from yocto_fn.data import Dataset
from yocto_fn.errors import UserError
from yocto_fn.plan import law, probe, recommend

ROOT = Path(__file__).resolve().parents[1]


def fake_step_time(model: str, cfg: ModelConfig, batch: int) -> float:
    """A device where a step costs 5 ms plus 6·N·tokens FLOPs at 50 GFLOP/s (deterministic)."""
    n = recommend.estimate_params(model, cfg.n_layer, cfg.n_embd, cfg.vocab_size,
                                  cfg.block_size, False)  # fmt: skip
    return 0.005 + 6 * n * batch * cfg.block_size / 50e9


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    (root / "c.txt").write_text(real_text()[:60_000], encoding="utf-8")
    argv = ["prepare-char", "--text-path", str(root / "c.txt"), "--out-dir", str(root / "d")]
    assert cli.main(argv) == 0
    return root / "d"


DURATIONS = [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150),
             ("10min", 600), (" 45S ", 45)]  # fmt: skip


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_budget_durations(text, seconds):
    assert recommend.parse_budget(text) == seconds


@pytest.mark.parametrize(("text", "needle"), [("5", "not a duration"), ("", "not a duration"),
                         ("five m", "not a duration"), ("-5m", "not a duration"),
                         ("5m30", "not a duration"), ("0s", "leaves no time"),
                         ("10s", "leaves no time")])  # fmt: skip
def test_bad_budgets_are_one_line_exit_2(data_dir, capsys, text, needle):
    argv = ["recommend", "--data-dir", str(data_dir), "--device", "cpu", "--time-budget", text]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err


def test_the_plan_fills_the_budget_by_the_probe_and_prints_runnable_commands(data_dir, capsys):
    cfg = cli.parse(["recommend", "--data-dir", str(data_dir), "--device", "cpu",
                     "--time-budget", "5m", "--ckpt-dir", "ck/b"])  # fmt: skip
    train, resume = recommend.recommend(cfg, step_time=fake_step_time)
    out = capsys.readouterr().out
    t = cli.parse(shlex.split(train)[2:])
    assert isinstance(t, TrainConfig) and t.amp == "off" and t.schedule == "cosine"
    assert t.optimizer == "adamw"  # the law was fitted on AdamW runs
    assert (t.block_size, t.batch_size) == (recommend.BUDGET_BLOCK, recommend.BUDGET_BATCH)
    r = cli.parse(shlex.split(resume)[2:])
    assert r.resume == Path("ck/b/latest.pt") and r.n_layer == t.n_layer
    # the printed time is start-up + steps at the probe's rate + the evaluations
    vocab = int(out.split("vocab ")[1].split(",")[0])
    shape = ModelConfig(vocab_size=vocab, block_size=t.block_size, n_layer=t.n_layer,
                        n_head=t.n_head, n_embd=t.n_embd)  # fmt: skip
    step = fake_step_time(t.model, shape, t.batch_size)
    evals = recommend.EVALS * 2 * recommend.EVAL_ITERS * step / 3
    expected = recommend.STARTUP_SECONDS + t.max_iters * step + evals
    assert f"in about {expected:.0f} s here" in out
    assert t.eval_interval * recommend.EVALS >= t.max_iters and t.eval_iters == recommend.EVAL_ITERS
    # the expected loss is the committed law at this model's parameters and tokens seen
    n = count(models.get(t.model).init(shape, 0))
    ds = Dataset(data_dir)
    train_tokens = len(ds.splits["train"])
    h = law.corpus_hardness(ds.splits["train"], ds.splits["val"], ds.meta["vocab_size"])

    def expect(iters: int) -> float:
        return law.load().predict(n, iters * t.batch_size * t.block_size, train_tokens, h)

    assert f"expected: val loss {expect(t.max_iters):.2f} in about" in out
    # this corpus is small (54k tokens): the law expects the model to overfit before the
    # budget's end, so the run stops at the steps it expects to do best, and says so
    most = int((300 - recommend.STARTUP_SECONDS - evals) / step)
    assert t.max_iters < 0.8 * most and "shorter than the budget" in out
    for other in (most, int(t.max_iters * 1.1), int(t.max_iters / 1.1)):
        assert expect(t.max_iters) <= expect(other)


def test_on_a_large_corpus_the_plan_fills_the_budget():
    p = recommend.plan_for_budget(300, 50_000_000, 100, 1.8, "speed", 24, fake_step_time)
    shape = ModelConfig(vocab_size=100, block_size=p.block_size, n_layer=p.n_layer,
                        n_head=p.n_head, n_embd=p.n_embd)  # fmt: skip
    step = fake_step_time(p.model, shape, p.batch_size)
    assert 300 - step < p.expected_seconds <= 300


def test_a_bigger_budget_never_expects_a_worse_loss():
    losses = []
    for seconds in (30, 60, 120, 300, 600, 1800, 3600, 4 * 3600):
        p = recommend.plan_for_budget(seconds, 400_000, 100, 1.2, "speed", 24, fake_step_time)
        assert p.expected_seconds <= seconds
        losses.append(p.expected_loss)
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]


def test_a_budget_too_small_for_any_model_says_so(data_dir, capsys):
    slow = lambda model, cfg, batch: 1.0  # noqa: E731
    with pytest.raises(UserError, match="too short .* for even a 2/2/64 model"):
        recommend.plan_for_budget(60, 400_000, 100, 1.2, "speed", 24, slow)
    with pytest.raises(UserError, match="too little"):
        recommend.plan_for_budget(600, 400_000, 100, 1.2, "speed", 1e-6, fake_step_time)


def test_the_probe_times_the_real_step_once_per_device_and_caches_it(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cfg = ModelConfig(vocab_size=20, block_size=8, n_layer=1, n_head=2, n_embd=16, dropout=0.0)
    calls = []
    real = probe.time_step
    monkeypatch.setattr(probe, "time_step", lambda *a: calls.append(a) or real(*a))
    first = probe.step_seconds("gpt-fast", cfg, 4, torch.device("cpu"))
    again = probe.step_seconds("gpt-fast", cfg, 4, torch.device("cpu"))
    assert first == again and 0 < first < 5 and len(calls) == 1
    assert (tmp_path / "yocto_fn" / "probe.json").is_file()
    other = probe.step_seconds("gpt-fast", cfg, 8, torch.device("cpu"))
    assert len(calls) == 2 and other > 0


@pytest.mark.slow  # about 25-45 s on 2 cores
def test_the_committed_grid_reproduces_the_committed_law():
    recommend_grid = script("recommend_grid")
    stats = recommend_grid.corpus_stats([])
    rows = recommend_grid.fit_rows(recommend_grid.load_rows(), stats)
    corpora = {"default", "stdlib-docs", "default-200k", "stdlib-docs-200k"}
    assert len(rows) >= 28 and {r["corpus"] for r in rows} == corpora
    committed, refit = law.load(), law.fit(rows)
    # The floor e sits at the edge of what the grid can tell apart from A/N**alpha, so its
    # fitted value moves with the numpy/torch build; the plans only see predictions, and
    # those the grid pins down (they agree to about 1e-5 nats across builds).
    for r in rows:
        point = (r["params"], r["tokens"], r["unique"], r["hardness"])
        assert refit.predict(*point) == pytest.approx(committed.predict(*point), abs=1e-3), r
    worst = max(abs(committed.predict(r["params"], r["tokens"], r["unique"], r["hardness"])
                    - r["val_loss"]) for r in rows)  # fmt: skip
    assert worst < 0.12
