"""The benchmark suite: FLOP counts by hand, record schema, report files, the quick run."""

from dataclasses import replace

import orjson
import pytest
import torch
from conftest import tiny_config

from benchmarks import contenders, measure, memory, presets
from benchmarks import run as bench
from benchmarks.report import write_report
from yocto_fn import cli, models


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


def test_peak_memory_per_contender_orders_as_the_activations_do():
    """Each figure comes from a fresh process, so no contender hides in another's freed
    memory: gpt keeps its T x T attention probabilities for the backward pass (gpt-fast's
    fused attention does not), and four times the batch holds four times the activations."""
    shape = dict(vocab_size=96, block_size=128, n_layer=2, n_head=4, n_embd=64, dropout=0.0)
    gpt = memory.peak_mb("gpt", shape, 32, "eager", "cpu")
    fast = memory.peak_mb("gpt-fast", shape, 32, "eager", "cpu")
    small = memory.peak_mb("gpt-fast", shape, 8, "eager", "cpu")
    assert gpt >= fast > small > 0
