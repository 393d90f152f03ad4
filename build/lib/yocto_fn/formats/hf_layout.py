"""Hugging Face layouts: which of our tensors is which GPT-2 / Llama tensor (renamed,
transposed, split or fused), and how our model config maps to and from theirs. Pure
functions over named tensors and config dicts; `interop` does the files and the commands.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

import torch

from ..core import layers
from ..core.config import ModelConfig
from ..core.models.transformer import swiglu_hidden
from ..errors import UserError

Tensor = torch.Tensor


class Entry(NamedTuple):
    """One tensor of ours and the layout's tensor(s) it becomes: several names split it
    along its first axis (fused QKV -> q, k, v; SwiGLU's [gate; up] -> gate, up), and
    `transposed` marks GPT-2's Conv1D, which stores a weight as [in, out]."""

    ours: str
    theirs: tuple[str, ...]
    transposed: bool = False


def gpt2_layout(n_layer: int) -> list[Entry]:
    """`GPT2LMHeadModel`'s names. Every linear of GPT-2 has a bias and a Conv1D weight."""
    out = [Entry("wte", ("transformer.wte.weight",)), Entry("wpe", ("transformer.wpe.weight",))]
    for i in range(n_layer):
        o, t = f"blocks.{i}", f"transformer.h.{i}"
        for ours, theirs in (("ln1", "ln_1"), ("ln2", "ln_2")):
            out += [Entry(f"{o}.{ours}.w", (f"{t}.{theirs}.weight",)),
                    Entry(f"{o}.{ours}.b", (f"{t}.{theirs}.bias",))]  # fmt: skip
        for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"),
                             ("mlp.fc", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):  # fmt: skip
            out += [Entry(f"{o}.{ours}_w", (f"{t}.{theirs}.weight",), transposed=True),
                    Entry(f"{o}.{ours}_b", (f"{t}.{theirs}.bias",))]  # fmt: skip
    return out + [
        Entry("ln_f.w", ("transformer.ln_f.weight",)),
        Entry("ln_f.b", ("transformer.ln_f.bias",)),
        Entry("lm_head", ("lm_head.weight",)),
    ]


def llama_layout(n_layer: int) -> list[Entry]:
    """`LlamaForCausalLM`'s names: separate q/k/v and gate/up projections, no biases.

    Our RoPE rotates (first half, second half) pairs of each head, as transformers'
    `rotate_half` does, so q and k need no permutation (the Meta checkpoints' interleaved
    pairs are what transformers' own conversion script permutes away).
    """
    out = [Entry("wte", ("model.embed_tokens.weight",))]
    for i in range(n_layer):
        o, t = f"blocks.{i}", f"model.layers.{i}"
        out += [
            Entry(f"{o}.ln1.w", (f"{t}.input_layernorm.weight",)),
            Entry(f"{o}.attn.qkv_w", tuple(f"{t}.self_attn.{x}_proj.weight" for x in "qkv")),
            Entry(f"{o}.attn.proj_w", (f"{t}.self_attn.o_proj.weight",)),
            Entry(f"{o}.ln2.w", (f"{t}.post_attention_layernorm.weight",)),
            Entry(f"{o}.mlp.fc_w", (f"{t}.mlp.gate_proj.weight", f"{t}.mlp.up_proj.weight")),
            Entry(f"{o}.mlp.proj_w", (f"{t}.mlp.down_proj.weight",)),
        ]
    return out + [Entry("ln_f.w", ("model.norm.weight",)), Entry("lm_head", ("lm_head.weight",))]


def to_hf(flat: dict[str, Tensor], layout: list[Entry], what: str) -> dict[str, Tensor]:
    """Our tensors under the layout's names.

    A bias the variant lacks becomes zeros (GPT-2 always adds one, and adding zero changes
    nothing); a tied head is left out, as transformers saves it, and tied again on load from
    `tie_word_embeddings`. A tensor of ours the layout has no place for is an error.
    """
    unplaced = sorted(set(flat) - {e.ours for e in layout})
    if unplaced:
        raise UserError(f"{', '.join(unplaced[:4])} cannot be expressed in the {what} layout")
    out: dict[str, Tensor] = {}
    for e in layout:
        t = flat.get(e.ours)
        if t is None and e.ours.endswith("_b"):
            t = flat[e.ours[:-1] + "w"].new_zeros(flat[e.ours[:-1] + "w"].shape[0])
        if t is None:  # the tied head
            continue
        t = t.T if e.transposed else t
        out.update(zip(e.theirs, t.chunk(len(e.theirs)), strict=True))
    return out


# Buffers older transformers versions saved beside the weights: masks and RoPE tables that
# the model recomputes, not parameters.
BUFFERS = re.compile(r"\.attn\.(bias|masked_bias)$|\.rotary_emb\.inv_freq$")


def from_hf(tensors: dict[str, Tensor], layout: list[Entry], tied: bool, what: str) -> dict:
    """Our flat fp32 tensors from a layout's (the inverse of `to_hf`).

    A tied head is read from the embedding whether or not the file also holds a copy,
    exactly as transformers ties it on load; any other tensor we cannot place is an error
    naming it, never dropped.
    """
    wanted = [e for e in layout if not (tied and e.ours == "lm_head")]
    missing = [n for e in wanted for n in e.theirs if n not in tensors]
    used = {n for e in wanted for n in e.theirs} | ({"lm_head.weight"} if tied else set())
    extra = [n for n in tensors if n not in used and not BUFFERS.search(n)]
    not_float = [n for n in used & set(tensors) if not tensors[n].is_floating_point()]
    problems = {
        "lacks": missing,
        "holds tensors a plain model has no place for": extra,
        "holds non-float (quantized?) tensors": not_float,
    }
    for problem, names in problems.items():
        if names:
            raise UserError(f"{what} {problem}: {', '.join(sorted(names)[:4])}")
    flat = {}
    for e in wanted:
        t = torch.cat([tensors[n] for n in e.theirs])
        flat[e.ours] = (t.T if e.transposed else t).float().contiguous()
    return flat


# ------------------------------------------------------------------------ configs, both ways

# transformers' activation names for our two GELUs. gelu_new, gelu_fast and
# gelu_pytorch_tanh are the same tanh formula written differently (they differ in rounding).
GELU_OUT = {"exact": "gelu", "tanh": "gelu_pytorch_tanh"}
GELU_IN = {"gelu": "exact", "gelu_python": "exact", "gelu_new": "tanh", "gelu_fast": "tanh",
           "gelu_pytorch_tanh": "tanh", "gelu_python_tanh": "tanh"}  # fmt: skip


def gpt2_config(cfg: ModelConfig, hidden: int, drops_attention: bool) -> dict[str, Any]:
    """GPT-2's config for `gpt` / `gpt-fast`. Dropout sits where GPT-2 has it (embeddings,
    both residual branches, and attention probabilities for `gpt` only)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.block_size, "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": hidden,
        "activation_function": GELU_OUT[cfg.gelu],
        "layer_norm_epsilon": cfg.norm_eps or layers.LAYER_NORM_EPS,
        "embd_pdrop": cfg.dropout, "resid_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout if drops_attention else 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "tie_word_embeddings": cfg.tie_weights,
    }  # fmt: skip


def llama_config(cfg: ModelConfig, hidden: int) -> dict[str, Any]:
    """Llama's config for `gpt-plus`. transformers 5 reads `rope_parameters`, earlier
    versions `rope_theta`; both are written. Llama has no embedding or residual dropout."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "max_position_embeddings": cfg.block_size,
        "hidden_size": cfg.n_embd, "intermediate_size": hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_head, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps or layers.RMS_NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "rope_theta": cfg.rope_theta, "attention_bias": False, "mlp_bias": False,
        "attention_dropout": 0.0, "tie_word_embeddings": cfg.tie_weights,
    }  # fmt: skip


def get(config: dict[str, Any], key: str, *fallbacks: str) -> Any:
    """A required config.json entry (or an older name for it)."""
    for k in (key, *fallbacks):
        if config.get(k) is not None:
            return config[k]
    raise UserError(f"config.json lacks {key}; save the model again with save_pretrained")


def refuse(config: dict[str, Any], supported: dict[str, Any], arch: str) -> None:
    """Options whose other values change the computation in ways `arch` does not follow."""
    for key, value in supported.items():
        if config.get(key) not in (None, value):
            raise UserError(
                f"config.json has {key}={config[key]!r}, which {arch} cannot run (only "
                f"{value!r}); this model cannot be imported"
            )


def unless(value: Any, default: Any) -> Any:
    """None where a value is the variant's own, so imported configs read like trained ones."""
    return None if value == default else value


def config_from_gpt2(c: dict[str, Any]) -> ModelConfig:
    refuse(c, {"scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
               "add_cross_attention": False}, "gpt")  # fmt: skip
    act = c.get("activation_function", "gelu_new")
    if act not in GELU_IN:
        raise UserError(f"config.json has activation_function={act!r}; gpt runs GELU only "
                        f"({', '.join(GELU_IN)}); this model cannot be imported")  # fmt: skip
    C = get(c, "n_embd", "hidden_size")
    return ModelConfig(
        vocab_size=get(c, "vocab_size"), block_size=get(c, "n_positions", "n_ctx"),
        n_layer=get(c, "n_layer"), n_head=get(c, "n_head"), n_embd=C,
        tie_weights=c.get("tie_word_embeddings", True), bias=True, gelu=GELU_IN[act],
        norm_eps=unless(c.get("layer_norm_epsilon", 1e-5), layers.LAYER_NORM_EPS),
        mlp_hidden=unless(c.get("n_inner") or 4 * C, 4 * C),
    )  # fmt: skip


def rope_theta(c: dict[str, Any]) -> float:
    """Plain RoPE's base, from transformers 5's `rope_parameters` or the older `rope_theta`;
    scaled RoPE (linear, dynamic, yarn, llama3) is not what gpt-plus computes."""
    rope = c.get("rope_parameters") or c.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise UserError(f"config.json asks for {kind!r} RoPE scaling; gpt-plus runs plain RoPE "
                        "only; this model cannot be imported")  # fmt: skip
    return float(rope.get("rope_theta", c.get("rope_theta", 10000.0)))


def config_from_llama(c: dict[str, Any]) -> ModelConfig:
    refuse(c, {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False}, "gpt-plus")
    C, H = get(c, "hidden_size"), get(c, "num_attention_heads")
    refuse(c, {"head_dim": C // H}, "gpt-plus")
    kv = c.get("num_key_value_heads") or H
    if H % kv:
        raise UserError(f"config.json has {H} attention heads over {kv} key/value heads, "
                        "which do not divide; this model cannot be imported")  # fmt: skip
    return ModelConfig(
        vocab_size=get(c, "vocab_size"), block_size=get(c, "max_position_embeddings"),
        n_layer=get(c, "num_hidden_layers"), n_head=H, n_embd=C,
        tie_weights=c.get("tie_word_embeddings", False), rope_theta=rope_theta(c),
        norm_eps=unless(c.get("rms_norm_eps", 1e-6), layers.RMS_NORM_EPS),
        mlp_hidden=unless(get(c, "intermediate_size"), swiglu_hidden(C)),
    )  # fmt: skip


def gpt2_names(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The `transformer.` prefix `GPT2LMHeadModel` saves with (the original GPT-2 files
    on the hub were saved from `GPT2Model` and lack it)."""
    if any(k.startswith("transformer.") for k in tensors):
        return tensors
    return {k if k == "lm_head.weight" else f"transformer.{k}": t for k, t in tensors.items()}


def expand_kv(tensors: dict[str, Tensor], cfg: ModelConfig, n_kv: int) -> dict[str, Tensor]:
    """Grouped-query attention as plain multi-head attention: query head h reads key/value
    head h // (n_head / n_kv) (transformers' `repeat_kv`), so repeating each k/v head's rows
    in place gives the same logits with a larger cache."""
    rep = cfg.n_head // n_kv
    out = dict(tensors)
    for i in range(cfg.n_layer):
        for x in "kv":
            name = f"model.layers.{i}.self_attn.{x}_proj.weight"
            w = out.get(name)
            if rep > 1 and w is not None and w.shape[0] == n_kv * cfg.head_dim:
                out[name] = w.view(n_kv, -1, w.shape[-1]).repeat_interleave(rep, 0).flatten(0, 1)
    return out


# --------------------------------------------------------------------------- tokenizers
