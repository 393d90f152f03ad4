"""The packaged decode step: its cache key, what is trusted and rebuilt, and (slow) a real
package that decodes as eager does and loads in a fresh process without the compiler."""

import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import torch
from conftest import tiny_config

from yocto_fn import models, params
from yocto_fn.generate import aot, steps
from yocto_fn.generate.sample import generate


class FakePackages:
    """Stands in for the compiler and the loader: counts builds and loads."""

    def __init__(self, monkeypatch) -> None:
        self.builds, self.loads, self.failing_loads = 0, 0, 0
        monkeypatch.setattr(aot, "_build", self.build)
        monkeypatch.setattr(aot, "_load", self.load)

    def build(self, dest, model, p, cfg, batch, rows=None) -> None:
        self.builds += 1
        dest.write_bytes(b"package")

    def load(self, path, device):
        self.loads += 1
        if self.failing_loads:
            self.failing_loads -= 1
            raise RuntimeError("PytorchStreamReader failed reading zip archive")
        assert path.read_bytes() == b"package"
        return object()


def _step(p, cache_dir, **kw):
    cfg = tiny_config()
    return steps.build_decode_step(models.get("gpt-fast"), p, cfg, "packaged",
                                   cache_dir=cache_dir, log=lambda msg: None, **kw)  # fmt: skip


def test_a_package_is_built_once_then_loaded(tmp_path, monkeypatch):
    fake = FakePackages(monkeypatch)
    p = models.get("gpt-fast").init(tiny_config(), 0)
    _step(p, tmp_path)
    _step(p, tmp_path)
    assert (fake.builds, fake.loads) == (1, 2)
    (key_file,) = tmp_path.glob("decode-*.json")
    key = orjson.loads(key_file.read_bytes())
    assert key["variant"] == "gpt-fast" and key["torch"] == torch.__version__
    assert key["weights_sha256"] == aot.weights_digest(p)
    assert key["code_sha256"] == aot.code_digest()


def test_other_weights_dtype_or_shape_get_their_own_package(tmp_path, monkeypatch):
    fake = FakePackages(monkeypatch)
    p = models.get("gpt-fast").init(tiny_config(), 0)
    changed = params.clone(p)
    changed["blocks"][1]["mlp"]["fc_w"][3, 4] += 1e-3
    _step(p, tmp_path)
    _step(changed, tmp_path)
    _step(params.to(p, dtype=torch.bfloat16), tmp_path)
    _step(p, tmp_path, batch=2)
    _step(p, tmp_path, batch=2, rows=4)
    assert fake.builds == 5 and len(list(tmp_path.glob("decode-*.json"))) == 5
    keys = [orjson.loads(f.read_bytes()) for f in tmp_path.glob("decode-*.json")]
    assert sorted(k.get("rows", 0) for k in keys) == [0, 0, 0, 0, 4]  # older keys unchanged


@pytest.mark.parametrize(
    "damage", ["foreign key", "older code", "unreadable key", "unloadable package"]
)
def test_a_stale_or_broken_package_is_rebuilt_not_trusted(tmp_path, monkeypatch, damage):
    fake = FakePackages(monkeypatch)
    p = models.get("gpt-fast").init(tiny_config(), 0)
    _step(p, tmp_path)
    (key_file,) = tmp_path.glob("decode-*.json")
    key = orjson.loads(key_file.read_bytes())
    if damage == "foreign key":  # e.g. copied over from another checkpoint's folder
        key_file.write_bytes(orjson.dumps(key | {"weights_sha256": "0" * 64}))
    elif damage == "older code":  # built before the forward pass changed
        key_file.write_bytes(orjson.dumps(key | {"code_sha256": "0" * 64}))
    elif damage == "unreadable key":
        key_file.write_bytes(b"{trunc")
    else:  # a truncated .pt2
        fake.failing_loads = 1
    _step(p, tmp_path)
    assert fake.builds == 2
    assert orjson.loads(key_file.read_bytes())["weights_sha256"] == aot.weights_digest(p)


def test_an_unwritable_checkpoint_folder_falls_back_to_the_temp_dir(tmp_path, monkeypatch):
    fake = FakePackages(monkeypatch)
    monkeypatch.setattr(aot.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    blocked = tmp_path / "a-file"  # not writable whoever runs the test (root included)
    blocked.write_text("x")
    _step(models.get("gpt-fast").init(tiny_config(), 0), blocked / "compiled")
    assert fake.builds == 1 and list((tmp_path / "tmp" / "yocto_fn-compiled").glob("*.pt2"))


@pytest.mark.slow
def test_a_real_package_decodes_as_eager_and_loads_without_the_compiler(tmp_path):
    cfg = tiny_config(vocab_size=40, n_layer=1, n_embd=16)
    model = models.get("gpt-plus")
    p = model.init(cfg, 0)
    step = steps.build_decode_step(
        model, p, cfg, "packaged", cache_dir=tmp_path, log=lambda m: None
    )
    kw = dict(max_new_tokens=40, temperature=0)  # 40 tokens: the window slides twice
    eager = generate(model, p, cfg, [1, 2, 3], **kw)
    torch.testing.assert_close(generate(model, p, cfg, [1, 2, 3], step=step, **kw), eager)
    torch.save(p, tmp_path / "p.pt")
    code = f"""
import sys, torch
from pathlib import Path
from yocto_fn import ModelConfig, models
from yocto_fn.generate.sample import generate
from yocto_fn.generate.steps import build_decode_step
cfg = ModelConfig(**{cfg.to_dict()!r})
model = models.get("gpt-plus")
p = torch.load(r"{tmp_path / "p.pt"}", weights_only=True)
step = build_decode_step(model, p, cfg, "packaged", cache_dir=Path(r"{tmp_path}"), log=print)
out = generate(model, p, cfg, [1, 2, 3], max_new_tokens=40, temperature=0, step=step)
print(out.tolist(), "torch._inductor" in sys.modules)
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parents[1])  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{eager.tolist()} False"  # loaded, not rebuilt
