"""yocto_fn: a small GPT as pure functions over parameter pytrees.

from yocto_fn import models, optim, ModelConfig, make_train_step
model = models.get("gpt-fast")
params = model.init(cfg, seed)                      # nested dict of tensors
logits, cache = model.forward(params, idx, cfg)     # pure; cache is an explicit value
tx = optim.adamw(lr=1e-3)                           # a chain of gradient transformations
step = make_train_step(model, cfg, tx)              # step(params, tx.init(params), batch, key)
step = make_ensemble_step(model, cfg, tx)           # E stacked models, one step (ensemble)

The package is in layers, each a folder that imports only the ones below it (a test holds
the rule, tests/test_layers.py):
    bench/     the benchmark harness: the suite behind `yocto bench`, contenders, reports
    run/       one training job's host side: run state, train and sweep loops, metrics
    plan/      what to train for a budget: step cost, loss law, recommend
    generate/  text out of a params tree: sample, chat, packaged step, quantize, serve
    data/      corpus preparation and memory-mapped batches
    formats/   checkpoints, safetensors, transformers layouts, tokenizers
    core/      pure functions of tensors: params, models, cache, optimizers, train step
    cli: the command, on top; options, config, device, errors, fileio, jit: the ground
    every layer stands on
The core's public modules keep their short paths (`yocto_fn.optim`, `yocto_fn.models`, ...).
Importing the package loads the core only: no CLI library, no file written, no global
torch or compiler setting changed (tests/test_purity.py).
"""

import sys

from .core import (
    analysis,
    cache,
    ensemble,
    layers,
    models,
    muon,
    optim,
    params,
    rng,
    schedules,
    train,
)
from .core.cache import KVCache
from .core.config import ModelConfig
from .core.ensemble import (
    ensemble_init,
    make_ensemble_step,
    per_example_grad_norms,
    per_example_grads,
)
from .core.train import grad_and_value, loss_fn, make_train_step
from .errors import UserError

# `import yocto_fn.optim` and `from yocto_fn.ensemble import ...` name the core's modules.
_PUBLIC = (analysis, cache, ensemble, layers, models, muon, optim, params, rng, schedules, train)
for _module in _PUBLIC:
    sys.modules[f"{__name__}.{_module.__name__.rsplit('.', 1)[-1]}"] = _module
del _module

__version__ = "0.1.0"

__all__ = [
    "KVCache",
    "ModelConfig",
    "UserError",
    "analysis",
    "cache",
    "ensemble",
    "ensemble_init",
    "grad_and_value",
    "layers",
    "loss_fn",
    "make_ensemble_step",
    "make_train_step",
    "models",
    "muon",
    "optim",
    "params",
    "per_example_grad_norms",
    "per_example_grads",
    "rng",
    "schedules",
    "train",
]
