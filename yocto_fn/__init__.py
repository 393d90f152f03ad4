"""yocto_fn: a small GPT as pure functions over parameter pytrees.

from yocto_fn import models, optim, ModelConfig, make_train_step
model = models.get("gpt-fast")
params = model.init(cfg, seed)                      # nested dict of tensors
logits, cache = model.forward(params, idx, cfg)     # pure; cache is an explicit value
step = make_ensemble_step(model, cfg)               # E stacked models, one step (ensemble)
"""

from . import ensemble, layers, models, optim, params, rng
from .cache import KVCache
from .config import ModelConfig
from .ensemble import (
    ensemble_init,
    make_ensemble_step,
    per_example_grad_norms,
    per_example_grads,
)
from .errors import UserError
from .train import grad_and_value, loss_fn, make_train_step

__version__ = "0.1.0"

__all__ = [
    "KVCache",
    "ModelConfig",
    "UserError",
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
]
