"""The benchmark suite and its entry points: FLOP counts by hand, record schema, report
files, `cli.py bench`, and `python -m benchmarks` (the list, a run, every benchmark's flags)."""

import ast
import importlib
import subprocess
import sys
from dataclasses import MISSING, fields, replace
from pathlib import Path

import orjson
import pytest
import torch
from conftest import tiny_config

from benchmarks import command, flags
from benchmarks.__main__ import BENCHMARKS, main, parse
from yocto_fn import cli
from yocto_fn.bench import contenders, measure, memory, presets
from yocto_fn.bench import run as bench
from yocto_fn.bench.report import write_report
from yocto_fn.core import models

ROOT = Path(__file__).resolve().parents[1]


def test_matmul_params_and_flops_match_a_hand_count():
    cfg = tiny_config(vocab_size=10, n_embd=8, n_layer=1, n_head=2, block_size=4)
    # qkv 8x24 + proj 8x8 + fc 8x32 + proj 32x8 + head 10x8; no biases, norms or tables.
    hand_n = 192 + 64 + 256 + 256 + 80
    for variant in ("gpt", "gpt-fast"):
        n = measure.matmul_params(models.get(variant).init(cfg, 0), cfg)
        assert n == hand_n
        # 6N per token for the weights, 12 L C T for QK^T and AV forward and backward.
        assert measure.train_flops_per_token(n, cfg) == 6 * 848 + 12 * 1 * 8 * 4 == 5472
        assert measure.forward_flops_per_token(n, cfg, 3) == 2 * 848 + 4 * 1 * 8 * 3
    tied = replace(cfg, tie_weights=True)
    assert measure.matmul_params(models.get("gpt").init(tied, 0), tied) == hand_n
    # gpt-plus: SwiGLU hidden 8C/3 rounded up to 64 -> fc 8x(2*64), proj 64x8.
    plus = measure.matmul_params(models.get("gpt-plus").init(cfg, 0), cfg)
    assert plus == 192 + 64 + 8 * 128 + 64 * 8 + 80


MICRO = presets.Preset(1, 2, 32, 16, 4, new_tokens=4, prompt_tokens=24)
MICRO_CASE = presets.EnsembleCase(1, 2, 32, 16, 2, 2)


@pytest.fixture(scope="module")
def records():
    cpu = torch.device("cpu")
    ctx = ("tiny", MICRO, 2, lambda msg: None)
    peaks = {torch.float32: 1e11, torch.bfloat16: 1e11}
    return [
        *bench.bench_train(cpu, ["eager", "bf16"], peaks, ctx, memory_probe=False),
        *bench.bench_decode(cpu, ["no cache", "cache"], ctx),
        *bench.bench_ensemble(cpu, ["eager"], ctx, [MICRO_CASE]),
        *bench.bench_per_example(cpu, ctx, MICRO_CASE),
    ]


def test_records_cover_every_variant_and_follow_the_schema(records):
    for r in records:
        measure.validate(orjson.loads(orjson.dumps(r)))
    train = {(r["variant"], r["mode"]) for r in records if r["benchmark"] == "train"}
    assert train == {(v, m) for v in contenders.VARIANTS for m in ("eager", "bf16")}
    decode = {(r["variant"], r["mode"]) for r in records if r["benchmark"] == "decode"}
    assert ("reference", "no cache") in decode and ("gpt-fast", "cache") in decode
    assert {r["variant"] for r in records if r["benchmark"] == "prefill"} == set(
        contenders.VARIANTS
    )
    ensemble = {(r["variant"], r["mode"]) for r in records if r["benchmark"] == "ensemble"}
    assert ensemble == {(v, m) for v in models.NAMES for m in ("eager ensemble", "eager loop")}
    per_example = {(r["variant"], r["mode"]) for r in records if r["benchmark"] == "per-example"}
    assert per_example == {
        (v, m) for v in models.NAMES for m in ("per-example", "loop", "batch gradient")
    }
    for r in records:
        if r["benchmark"] == "train":
            want = r["flops_per_token"] * r["value"] / r["peak_flops"]
            assert r["mfu"] == pytest.approx(want) and r["mfu"] > 0


def test_validate_rejects_malformed_records(records):
    good = records[0]
    for broken in (
        {k: v for k, v in good.items() if k != "unit"},
        good | {"value": "fast"},
        good | {"repeats": 2.0},
        good | {"value": good["max"] * 2},
        good | {"benchmark": "vibes"},
        good | {"surprise": 1},
    ):
        with pytest.raises(ValueError):
            measure.validate(broken)


def test_report_writes_jsonl_table_and_chart(records, tmp_path):
    write_report(tmp_path, records, presets.BenchConfig())
    lines = (tmp_path / "results.jsonl").read_bytes().splitlines()
    assert [orjson.loads(line) for line in lines] == records
    table = (tmp_path / "table.md").read_text()
    for heading in ("## Train", "## Decode", "## Ensemble", "## Per-example gradients"):
        assert heading in table
    assert table.count(f"{MICRO_CASE.label} |") == len(models.NAMES)  # ensemble rows
    assert table.count("| reference |") == 3  # two train modes and one decode row
    assert (tmp_path / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path):
    assert cli.main(["bench", "--quick", "--device", "cpu", "--out-dir", str(tmp_path)]) == 0
    (out,) = tmp_path.iterdir()
    for line in (out / "results.jsonl").read_bytes().splitlines():
        measure.validate(orjson.loads(line))
    assert (out / "table.md").is_file() and (out / "chart.png").is_file()


@pytest.mark.slow  # three fresh processes
def test_peak_memory_per_contender_orders_as_the_activations_do():
    """Each figure comes from a fresh process, so no contender hides in another's freed
    memory: gpt keeps its T x T attention probabilities for the backward pass (gpt-fast's
    fused attention does not), and four times the batch holds four times the activations."""
    shape = dict(vocab_size=96, block_size=128, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    gpt = memory.peak_mb("gpt", shape, 32, "eager", "cpu")
    fast = memory.peak_mb("gpt-fast", shape, 32, "eager", "cpu")
    small = memory.peak_mb("gpt-fast", shape, 8, "eager", "cpu")
    assert gpt >= fast > small > 0


def test_the_cli_bench_runs_the_suite_from_the_package(tmp_path, monkeypatch):
    """`cli.py bench` reaches the suite in yocto_fn.bench and imports nothing from benchmarks/
    (the repository's folder, which an installed package does not carry)."""
    tree = ast.parse((ROOT / "cli.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] == "benchmarks"}
    monkeypatch.setattr(bench, "PER_EXAMPLE_CASE", MICRO_CASE)
    argv = ["bench", "--quick", "--only", "per-example", "--device", "cpu", "--out-dir",
            str(tmp_path)]  # fmt: skip
    assert cli.main(argv) == 0
    (out,) = tmp_path.iterdir()
    assert "## Per-example gradients" in (out / "table.md").read_text()


def benchmarks(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_the_entry_point_lists_every_benchmark(capsys):
    done = benchmarks()
    assert done.returncode == 0, done.stderr
    assert main(["--help"]) == 0 and capsys.readouterr().out == done.stdout
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(BENCHMARKS)


def test_a_benchmark_runs_end_to_end_through_the_entry_point():
    """train-throughput at a tiny shape, eager, one round: a table, then a JSON line per
    contender; flags in either spelling."""
    done = benchmarks("train_throughput", "--n_layer", "1", "--n-head", "2", "--n-embd", "32",
                      "--block_size", "16", "--batch-size", "2", "--rounds", "1", "--steps",
                      "1", "--skip-compile")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert {(r["variant"], r["mode"]) for r in rows} == {
        *((v, "eager") for v in contenders.VARIANTS),
        ("gpt-fast", "eager torch.func"),
    }
    assert all(r["config"]["n_layer"] == 1 and r["tokens_per_s"] > 0 for r in rows)
    assert "| reference | eager |" in done.stdout


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_shows_its_flags(name, capsys):
    """Each name runs its module's `Config` and `run` (the suite: BenchConfig and the
    package's run), and `--help` lists every flag of that config."""
    if name == "suite":
        assert BENCHMARKS[name][0] is presets.BenchConfig
    else:
        module = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
        assert BENCHMARKS[name] == (module.Config, module.run)
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    shown = capsys.readouterr().out
    cls = BENCHMARKS[name][0]
    assert all(f"--{f.name.replace('_', '-')}" in shown for f in fields(cls))


def test_a_recorded_command_gives_back_its_config():
    """Results record the command that made them (`command`), and a child is started with
    the flags of its parent's config (`flags`): both parse back to the same config."""
    gpu = BENCHMARKS["gpu-suite"][0]
    cfg = gpu(device="cpu", tiny=True, sections=("env", "adamw"), rounds=1, compile=False,
              out=Path("/tmp/x"))  # fmt: skip
    line = command("gpu-suite", cfg).split()
    assert line[:4] == ["python", "-m", "benchmarks", "gpu-suite"]
    assert parse(line[3:]) == cfg
    assert flags(gpu()) == []
    for name, (cls, _) in BENCHMARKS.items():
        if all(f.default is not MISSING for f in fields(cls)):  # no required flag
            assert parse([name, *flags(cls())]) == cls()


def test_val_loss_scores_plain_and_quantised_weights_on_the_same_batches(char_dir):
    """The quality checks score fp32, int8 and bf16 weights alike: the same fixed batches,
    the same loss as training computes, each tree through the forward its dtype needs."""
    from yocto_fn.core.train import loss_fn
    from yocto_fn.data import Dataset
    from yocto_fn.generate.quantize import quantize

    ds = Dataset(char_dir)
    model, cfg = models.get("gpt-fast"), tiny_config(vocab_size=ds.meta["vocab_size"])
    p = model.init(cfg, 0)
    gen = torch.Generator().manual_seed(0)
    want = [loss_fn(p, ds.get_batch("val", 4, 16, gen), None, model=model, cfg=cfg,
                    train=False).item() for _ in range(3)]  # fmt: skip
    assert measure.val_loss(model, p, cfg, ds, 3, 4, 16) == pytest.approx(sum(want) / 3)
    for mode in ("int8", "bf16"):
        got = measure.val_loss(model, quantize(p, mode), cfg, ds, 3, 4, 16)
        assert got == pytest.approx(sum(want) / 3, rel=0.02)
