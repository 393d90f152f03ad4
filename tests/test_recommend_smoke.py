"""recommend (monotone, parseable, memory-aware), the smoke commands and the GPU scripts."""

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import VARIANTS, tiny_config

from yocto_fn import cli, models
from yocto_fn.config import TrainConfig
from yocto_fn.core.params import count
from yocto_fn.plan.recommend import estimate_params, plan
from yocto_fn.run import smoke

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("tie", [False, True])
def test_parameter_estimate_is_exact(variant, tie):
    cfg = tiny_config(n_embd=64, n_head=4, n_layer=3, tie_weights=tie)
    want = count(models.get(variant).init(cfg, 0))
    got = estimate_params(variant, cfg.n_layer, cfg.n_embd, cfg.vocab_size, cfg.block_size, tie)
    assert got == want


@pytest.mark.parametrize("device", ["cpu", "cuda", "mps"])
@pytest.mark.parametrize("priority", ["speed", "quality"])
def test_more_data_or_memory_never_gives_a_smaller_model(device, priority):
    sizes = [10_000, 200_000, 999_999, 1_000_000, 5_000_000, 50_000_000, 500_000_000, 5e9]
    mems = [0.05, 0.5, 2, 8, 24, 80]
    grid = [[plan(int(t), 100_000, 8000, priority, device, m).params for m in mems]
            for t in sizes]  # fmt: skip
    for i, row in enumerate(grid):
        assert row == sorted(row), f"more memory shrank the model at {sizes[i]} tokens"
    for j in range(len(mems)):
        column = [row[j] for row in grid]
        assert column == sorted(column), f"more data shrank the model at {mems[j]} GiB"
    assert grid[-1][-1] > grid[0][-1]  # the ladder is actually climbed


def test_plan_fits_the_memory_budget_with_accumulation():
    roomy = plan(50_000_000, 1_000_000, 8000, "speed", "cuda", 16)
    tight = plan(50_000_000, 1_000_000, 8000, "speed", "cuda", 1.0)
    assert tight.memory_bytes <= 0.8 * 2**30 < roomy.memory_bytes
    assert tight.grad_accum_steps > 1 and tight.tokens_per_step == roomy.tokens_per_step


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory):
    from conftest import real_text

    root = tmp_path_factory.mktemp("reco")
    (root / "c.txt").write_text(real_text()[:50_000], encoding="utf-8")
    argv = ["prepare-char", "--text-path", str(root / "c.txt"), "--out-dir", str(root / "d")]
    assert cli.main(argv) == 0
    return root / "d"


def test_recommend_prints_commands_the_train_cli_parses(char_dir, capsys):
    argv = ["recommend", "--data-dir", str(char_dir), "--priority", "quality", "--device", "cpu",
            "--device-mem-gb", "2", "--ckpt-dir", "ck/reco"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("python cli.py train")]
    assert len(lines) == 2 and "memory estimate" in out
    train, resume = (cli.parse(shlex.split(line)[2:]) for line in lines)
    assert isinstance(train, TrainConfig) and train.model == "gpt-plus"
    assert train.data_dir == char_dir and train.device == "cpu" and train.schedule == "cosine"
    assert resume.resume == Path("ck/reco/latest.pt") and resume.n_layer == train.n_layer


def test_recommend_bad_inputs(tmp_path, char_dir, capsys):
    for argv, needle in (
        (["--data-dir", str(tmp_path)], "meta.json"),
        (["--data-dir", str(char_dir), "--mode", "token"], "char-level"),
        (["--data-dir", str(char_dir), "--device-mem-gb", "-1"], "positive"),
        (["--data-dir", str(char_dir), "--priority", "vibes"], "vibes"),
    ):
        assert cli.main(["recommend", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err, err


def test_smoke_cpu_passes(capsys):
    assert cli.main(["smoke-cpu", "--new-tokens", "24", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.strip().splitlines()[-1].startswith("PASS") and out.count("True") == 3


def test_smoke_train_passes_and_fails_when_the_loss_does_not_fall(tmp_path, monkeypatch, capsys):
    argv = ["smoke-train", "--iters", "40", "--device", "cpu", "--out-dir", str(tmp_path)]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("PASS")
    assert (tmp_path / "run" / "metrics.csv").is_file()

    real_read = smoke.read

    def flat(path, *a):  # a run whose recorded loss never moves
        return [r | {"train_loss": 4.0} for r in real_read(path, *a)]

    monkeypatch.setattr(smoke, "read", flat)
    assert cli.main(argv) == 1
    out = capsys.readouterr().out
    assert "loss falls: FAILED" in out and out.strip().splitlines()[-1].startswith("FAIL")


def test_gpu_setup_script_is_valid_bash_and_the_check_refuses_a_cpu_build():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "setup_gpu_ubuntu.sh")], check=True)
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")],
                         capture_output=True, text=True)  # fmt: skip
    import torch

    if torch.version.cuda is None:
        assert out.returncode == 1 and "CPU build" in out.stderr
