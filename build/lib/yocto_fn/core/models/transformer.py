"""The decoder-only transformer shared by all variants.

A variant is a `Recipe`: which positions, norm, MLP, attention kernel and biases it uses.
`init` and `forward` read the recipe, so the three variants share one readable forward pass
and differ only where their definitions differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal, NamedTuple

import torch
import torch.utils.checkpoint

from ...errors import UserError
from .. import layers, members, rng
from ..cache import KVCache, Writes, check_room, positions_and_mask
from ..cache import init_cache as _init_cache
from ..config import ModelConfig
from ..params import Params, as_generator, normal

INIT_STD = 0.02


@dataclass(frozen=True)
class Recipe:
    """What makes a variant.

    positions: "learned" adds a trained table `wpe` [block_size, C]; "rope" rotates Q/K.
    norm: LayerNorm (weight+bias) or RMSNorm (weight). mlp: GELU (4C) or SwiGLU (~8C/3).
    attention: "manual" softmax (can drop attention probabilities) or fused SDPA.
    bias: None follows `cfg.bias`; False makes every linear biasless.
    scaled_residual_init: residual output projections start at std 0.02/sqrt(2*n_layer).
    """

    positions: Literal["learned", "rope"]
    norm: Literal["layer", "rms"]
    mlp: Literal["gelu", "swiglu"]
    attention: Literal["manual", "sdpa"]
    bias: bool | None
    scaled_residual_init: bool


def swiglu_hidden(n_embd: int) -> int:
    """8C/3 rounded up to a multiple of 64: a GELU 4C MLP's parameter count, matmul-friendly."""
    return 64 * math.ceil(8 * n_embd / 3 / 64)


def _uses_bias(recipe: Recipe, cfg: ModelConfig) -> bool:
    return cfg.bias if recipe.bias is None else recipe.bias


def _linear(gen, name: str, n_out: int, n_in: int, bias: bool, std: float = INIT_STD) -> dict:
    """`{name}_w` [n_out, n_in] (and `{name}_b`), the naming `layers.linear` reads."""
    p = {f"{name}_w": normal((n_out, n_in), std, gen)}
    if bias:
        p[f"{name}_b"] = torch.zeros(n_out)
    return p


def _norm(recipe: Recipe, n: int) -> dict:
    p = {"w": torch.ones(n)}
    if recipe.norm == "layer":
        p["b"] = torch.zeros(n)
    return p


def init(cfg: ModelConfig, seed_or_generator: int | torch.Generator, recipe: Recipe) -> Params:
    """Fresh parameters; the same seed always gives the same tree (drawn on the CPU)."""
    gen = as_generator(seed_or_generator)
    C, bias = cfg.n_embd, _uses_bias(recipe, cfg)
    resid_std = INIT_STD / math.sqrt(2 * cfg.n_layer) if recipe.scaled_residual_init else INIT_STD
    hidden = cfg.mlp_hidden or (swiglu_hidden(C) if recipe.mlp == "swiglu" else 4 * C)
    fc_out = 2 * hidden if recipe.mlp == "swiglu" else hidden

    params: Params = {"wte": normal((cfg.vocab_size, C), INIT_STD, gen)}
    if recipe.positions == "learned":
        params["wpe"] = normal((cfg.block_size, C), INIT_STD, gen)
    params["blocks"] = [
        {
            "ln1": _norm(recipe, C),
            "attn": _linear(gen, "qkv", 3 * C, C, bias)
            | _linear(gen, "proj", C, C, bias, resid_std),
            "ln2": _norm(recipe, C),
            "mlp": _linear(gen, "fc", fc_out, C, bias)
            | _linear(gen, "proj", C, hidden, bias, resid_std),
        }
        for _ in range(cfg.n_layer)
    ]
    params["ln_f"] = _norm(recipe, C)
    if not cfg.tie_weights:
        params["lm_head"] = normal((cfg.vocab_size, C), INIT_STD, gen)
    return params


def init_cache(
    cfg: ModelConfig,
    batch: int,
    recipe: Recipe,
    max_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> KVCache:
    """A cache for this variant; learned positions cannot reach past `block_size`."""
    if recipe.positions == "learned" and max_len is not None and max_len > cfg.block_size:
        raise UserError(
            f"a cache of {max_len} positions exceeds block_size {cfg.block_size}, the longest "
            "context a learned-position model has; use max_len <= block_size and slide the window"
        )
    return _init_cache(cfg, batch, max_len, dtype, device)


def forward(
    params: Params,
    idx: torch.Tensor,
    cfg: ModelConfig,
    recipe: Recipe,
    *,
    cache: KVCache | None = None,
    train: bool = False,
    dropout_key: torch.Tensor | None = None,
    activation_checkpointing: bool = False,
    ops: layers.Ops | None = None,
) -> tuple[torch.Tensor, KVCache | None]:
    """Logits [B, T, V] for tokens idx [B, T] (only the new tokens when a cache is given).

    Ensembles (no cache): params stacked on a leading member axis E, idx [E, B, T] and a
    dropout key [E] give logits [E, B, T, V], member e exactly as its own forward.
    `activation_checkpointing` recomputes each block in the backward pass instead of keeping
    its activations; dropout masks come from keys, so the recomputation is exact.
    `ops`: the primitives that read the weights (`layers.Ops`); None takes `members.OPS`
    for a stacked tree and `layers.PLAIN` otherwise. Decoding passes its own forms
    (int8 rows, the compiled single-row product: `generate.products`).
    """
    T = idx.shape[-1]
    if cache is not None:
        check_room(cache, T)
    elif recipe.positions == "learned" and cfg.block_size < T:
        raise UserError(f"sequence of {T} tokens exceeds block_size {cfg.block_size}")
    positions, mask = positions_and_mask(cache, T, idx.device)
    if ops is None:
        ops = members.OPS if members.is_stacked(params) else layers.PLAIN

    n_sites = 1 + 3 * cfg.n_layer  # embedding, then per layer: attention probs, attn, mlp
    if train and cfg.dropout > 0.0:
        if dropout_key is None:
            raise ValueError("forward(train=True) with dropout > 0 needs a dropout_key")
        keys = list(rng.split(dropout_key, n_sites).unbind(-1))
    else:
        keys = [None] * n_sites
    p_drop = cfg.dropout

    x = ops.embedding(params["wte"], idx)
    rope = None
    if recipe.positions == "learned":
        x = x + ops.embedding(params["wpe"], positions)
    else:
        rope = layers.rope_angles(positions, cfg.head_dim, cfg.rope_theta, x.dtype)
    x = layers.dropout(x, p_drop, keys[0])

    norm = ops.layer_norm if recipe.norm == "layer" else ops.rms_norm
    if cfg.norm_eps is not None:
        norm = partial(norm, eps=cfg.norm_eps)
    mlp = (
        partial(layers.mlp_gelu, approximate="tanh" if cfg.gelu == "tanh" else "none", ops=ops)
        if recipe.mlp == "gelu"
        else partial(layers.swiglu, ops=ops)
    )

    def block(x, p, k_probs, k_attn, k_mlp, kv):
        attend = (
            partial(layers.attend_manual, p=p_drop, key=k_probs)
            if recipe.attention == "manual"
            else layers.attend_sdpa
        )
        h = layers.causal_self_attention(
            norm(x, p["ln1"]), p["attn"], cfg.n_head, attend,
            rope=rope, kv=kv, positions=positions, mask=mask, ops=ops,
        )  # fmt: skip
        x = x + layers.dropout(h, p_drop, k_attn)
        return x + layers.dropout(mlp(norm(x, p["ln2"]), p["mlp"]), p_drop, k_mlp)

    remat = activation_checkpointing and cache is None and torch.is_grad_enabled()
    writes = Writes(cache, positions) if cache is not None else None
    for i, p in enumerate(params["blocks"]):
        block_keys = keys[1 + 3 * i : 4 + 3 * i]
        kv = partial(writes, i) if writes is not None else None
        if remat:
            x = torch.utils.checkpoint.checkpoint(block, x, p, *block_keys, kv, use_reentrant=False)
        else:
            x = block(x, p, *block_keys, kv)

    x = norm(x, params["ln_f"])
    head = params.get("lm_head", params["wte"])
    logits = ops.project(x, head, None, params.get("lm_head_scale"))
    return logits, (writes.result() if writes is not None else None)


class Model(NamedTuple):
    """A variant as a bundle of pure functions (see `make_model`)."""

    name: str
    recipe: Recipe
    init: Callable[..., Params]
    forward: Callable[..., tuple[torch.Tensor, KVCache | None]]
    init_cache: Callable[..., KVCache]


def make_model(name: str, recipe: Recipe) -> Model:
    """Bind a recipe into the `init` / `forward` / `init_cache` functions of the API contract."""

    def init_fn(cfg: ModelConfig, seed_or_generator: int | torch.Generator = 0) -> Params:
        return init(cfg, seed_or_generator, recipe)

    def forward_fn(
        params: Params,
        idx: torch.Tensor,
        cfg: ModelConfig,
        *,
        cache: KVCache | None = None,
        train: bool = False,
        dropout_key: torch.Tensor | None = None,
        activation_checkpointing: bool = False,
        ops: layers.Ops | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        return forward(
            params, idx, cfg, recipe, cache=cache, train=train, dropout_key=dropout_key,
            activation_checkpointing=activation_checkpointing, ops=ops,
        )  # fmt: skip

    def init_cache_fn(
        cfg: ModelConfig,
        batch: int,
        max_len: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> KVCache:
        return init_cache(cfg, batch, recipe, max_len, dtype, device)

    for fn, base in ((init_fn, init), (forward_fn, forward), (init_cache_fn, init_cache)):
        fn.__name__ = fn.__qualname__ = f"{name}.{base.__name__}"
        fn.__doc__ = base.__doc__
    return Model(name, recipe, init_fn, forward_fn, init_cache_fn)
