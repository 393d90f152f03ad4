"""The core is pure: importing the package and using its API names loads no CLI library,
writes no file and changes no global torch or compiler setting.

Run in a fresh interpreter whose HOME and XDG directories are an empty temporary folder:
import `yocto_fn` and `yocto_fn.core`, build a model, take one eager train step (Muon, the
default optimizer, through the run's own chain of links) and one cached decode step."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
import torch
import torch._inductor.config as inductor


def torch_globals():
    return {
        "default_dtype": str(torch.get_default_dtype()),
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "inductor": {k: repr(v) for k, v in inductor.get_config_copy().items()},
        "dynamo": {k: repr(v) for k, v in torch._dynamo.config.get_config_copy().items()},
    }


before = torch_globals()
import yocto_fn
import yocto_fn.core
from yocto_fn import ModelConfig, make_train_step, models, optim, rng
from yocto_fn.core import muon

cfg = ModelConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
model = models.get("gpt-plus")
params = model.init(cfg, 0)
tx = optim.chain(optim.clip_by_global_norm(1.0), optim.inject_hyperparams(muon.muon)(lr=1e-3))
x = torch.randint(40, (2, 16))
step = make_train_step(model, cfg, tx)
params, state, metrics = step(params, tx.init(params), (x, x.roll(-1, 1)), rng.key(0), lr=2e-3)
cache = model.init_cache(cfg, batch=2)
_, cache = model.forward(params, x[:, :8], cfg, cache=cache)
logits, cache = model.forward(params, x[:, 8:9], cfg, cache=cache)
after = torch_globals()
changed = sorted(k for k in before if before[k] != after[k])
for k in ("inductor", "dynamo"):
    changed += [f"{k}.{n}" for n in before[k] if before[k][n] != after[k][n]]
print(json.dumps({
    "loaded": sorted(m for m in ("tyro", "yocto_fn.config", "yocto_fn.options", "yocto_fn.jit",
                                 "yocto_fn.fileio") if m in sys.modules),
    "changed": changed,
    "finite": bool(torch.isfinite(metrics["loss"]) and torch.isfinite(logits).all()),
    "pos": int(cache.pos),
}))
"""


def test_the_core_loads_no_cli_writes_nothing_and_changes_no_global_setting(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env |= {"HOME": str(home), "PYTHONPATH": str(ROOT)}
    env |= {f"XDG_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA", "STATE")}
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["finite"] and result["pos"] == 9
    assert result["loaded"] == []  # no tyro, no CLI schemas, no compiler wrapper, no file I/O
    assert result["changed"] == []
    assert list(home.rglob("*")) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]
