"""yocto_fn: a small GPT as pure functions over parameter pytrees.

from yocto_fn import models, optim, ModelConfig, make_train_step
model = models.get("gpt-fast")
params = model.init(cfg, seed)                      # nested dict of tensors
logits, cache = model.forward(params, idx, cfg)     # pure; cache is an explicit value
step = make_ensemble_step(model, cfg)               # E stacked models, one step (ensemble)

The package is in layers, each a folder that imports only the ones below it (a test holds
the rule, tests/test_layers.py):
    run/       one training job's host side: run state, train and sweep loops, metrics
    plan/      what to train for a budget: step cost, loss law, recommend
    generate/  text out of a params tree: sample, chat, packaged step, quantize, serve
    data/      corpus preparation and memory-mapped batches
    formats/   checkpoints, safetensors, transformers layouts, tokenizers
    core/      pure functions of tensors: params, models, cache, optimizers, train step
    config, device, errors, fileio, jit: the ground every layer stands on
The core's public modules keep their short paths (`yocto_fn.optim`, `yocto_fn.models`, ...).
"""

import sys

from .config import ModelConfig
from .core import analysis, cache, ensemble, layers, models, optim, params, rng, train
from .core.cache import KVCache
from .core.ensemble import (
    ensemble_init,
    make_ensemble_step,
    per_example_grad_norms,
    per_example_grads,
)
from .core.train import grad_and_value, loss_fn, make_train_step
from .errors import UserError

# `import yocto_fn.optim` and `from yocto_fn.ensemble import ...` name the core's modules.
for _module in (analysis, cache, ensemble, layers, models, optim, params, rng, train):
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
    "optim",
    "params",
    "per_example_grad_norms",
    "per_example_grads",
    "rng",
    "train",
]
