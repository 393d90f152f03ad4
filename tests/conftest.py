"""Shared helpers: the variant names, a tiny model shape (as a config and as `train` flags)
that keeps the suite fast, a `train` run over it, a prepared char-level data directory, the
scripts under scripts/ as modules, and ways to read or damage what a run writes."""

import csv
import importlib.util
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import pytest
import torch

from yocto_fn import cli
from yocto_fn.core.config import ModelConfig
from yocto_fn.plan import probe

VARIANTS = ("gpt", "gpt-plus", "gpt-fast")


REAL_AMP_RATES = probe.amp_rates


@pytest.fixture(scope="session", autouse=True)
def private_probe_cache(tmp_path_factory):
    """Device measurements go to a cache of the session's own, never the user's; and with
    native bf16, `--amp auto` would time both dtypes for every new shape a run trains,
    compiling both under --compile: more than most tests' whole run. So in-process runs
    (module fixtures included) get a fixed verdict, fp32, as the measurement gives at the
    suite's tiny shapes, and results never hang on timing. Commands the suite starts as
    processes read verdicts of shapes seen from the cache and measure new ones for real.
    The tests of the measurement patch it themselves or call REAL_AMP_RATES."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
    mp.setattr(probe, "amp_rates", lambda spec, device: {"fp32": 2.0, "bf16": 1.0})
    yield
    mp.undo()


def tiny_config(**overrides) -> ModelConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    return ModelConfig(**(base | overrides))


# A tiny model and a quick run as `train` flags; flags given later on a command line win.
TINY = ("--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--block-size", "16")
QUICK = ("--batch-size", "4", "--eval-iters", "1", "--amp", "off", "--device", "cpu")


def train_argv(data_dir: Path, ckpt_dir: Path, *flags: str) -> list[str]:
    """A `train` command line of TINY and QUICK; `flags` add to or override them."""
    return ["train", "--data-dir", str(data_dir), "--ckpt-dir", str(ckpt_dir), *TINY, *QUICK,
            *flags]  # fmt: skip


def train(data_dir: Path, ckpt_dir: Path, *flags: str) -> int:
    """Run `train_argv` in this process; the CLI's exit status."""
    return cli.main(train_argv(data_dir, ckpt_dir, *flags))


def metrics_rows(ckpt_dir: Path) -> list[dict[str, str]]:
    """metrics.csv of a run, one dict per evaluation."""
    with (ckpt_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def flip_a_tensor_byte(path: Path) -> None:
    """Flip one byte inside the first tensor record of a torch zip, keeping the zip whole: a
    checkpoint that still opens but whose payload digest no longer matches."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = (int.from_bytes(f.read(2), "little") for _ in range(2))
        at = info.header_offset + 30 + name_len + extra_len + 17
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x10]))


def script(name: str) -> ModuleType:
    """scripts/<name>.py as the module `name` (registered, as dataclasses need): the scripts
    are files to run, not a package."""
    if name not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def real_text() -> str:
    """Real prose: the shared philosophy corpus when present, else the embedded default."""
    from pathlib import Path

    from yocto_fn.data import default_corpus_text

    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "philosophy.txt"
    return shared.read_text(encoding="utf-8") if shared.is_file() else default_corpus_text()


@pytest.fixture(scope="module")
def char_dir(tmp_path_factory) -> Path:
    """A char-level data directory prepared from 40k characters of real text."""
    root = tmp_path_factory.mktemp("data")
    corpus = root / "corpus.txt"
    corpus.write_text(real_text()[:40_000], encoding="utf-8")
    assert cli.main(["prepare-char", "--text-path", str(corpus), "--out-dir", str(root / "c")]) == 0
    return root / "c"


def ckpt(path: Path) -> dict:
    """A checkpoint file as plain data."""
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def demo_ckpt(tmp_path_factory) -> Path:
    """A char-level gpt-fast trained as `make demo` trains one (default corpus, default
    shape), for fewer steps on smaller batches: enough to write text, once per session."""
    from yocto_fn.data import default_corpus_text

    root = tmp_path_factory.mktemp("demo")
    (root / "default.txt").write_text(default_corpus_text(), encoding="utf-8")
    prepare = ["prepare-char", "--text-path", str(root / "default.txt"), "--out-dir", str(root)]
    assert cli.main(prepare) == 0
    train = ["train", "--model", "gpt-fast", "--data-dir", str(root), "--ckpt-dir",
             str(root / "run"), "--max-iters", "150", "--eval-interval", "150", "--eval-iters",
             "2", "--batch-size", "8", "--amp", "off", "--device", "cpu"]  # fmt: skip
    assert cli.main(train) == 0
    return root / "run" / "best.pt"
