"""Models in and out: safetensors directories and Hugging Face `transformers` layouts.

Parameters are plain named tensors, so moving a model elsewhere is renaming, transposing
and splitting tensors plus writing a config that says the same thing ours does:

- `safetensors`: this project's own names (`blocks.0.attn.qkv_w`) in `model.safetensors`,
  with `config.json` (arch, mode, model config) and the tokenizer file beside it; `sample
  --ckpt` and `train --init-from` read such a directory like a checkpoint (`load_dir`).
- `hf`: `gpt` and `gpt-fast` as `GPT2LMHeadModel`, `gpt-plus` as `LlamaForCausalLM`, which
  `transformers` loads with `AutoModelForCausalLM.from_pretrained` and which gives our
  logits; `import_hf` is the way back (GPT-2 -> `gpt`, Llama -> `gpt-plus`).

Whatever a layout cannot express is a UserError naming it, never a silently different model.
Nothing here imports `transformers`: the files are written and read directly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from . import checkpoint, fileio, layers, models
from . import tokenizer as tokenizers
from .config import ExportConfig, ImportConfig, ModelConfig
from .errors import UserError
from .models.transformer import swiglu_hidden
from .params import Params, named_leaves, tree_unflatten_like

Tensor = torch.Tensor
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
DIR_FORMAT = 1  # the `yocto_fn` entry of an exported directory's config.json

# ----------------------------------------------------------------------- files and names


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} holds no JSON object")
    return data


def read_safetensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file; a truncated or damaged one is a UserError
    (the format checks its header and that every tensor lies inside the file)."""
    if not path.is_file():
        raise UserError(f"{path} not found")
    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable safetensors file ({reason})") from None


def own_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each tensor a contiguous CPU copy of its own: safetensors refuses tensors that share
    storage or are strided views (a transpose, one chunk of a fused weight)."""
    return {k: t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, t in tensors.items()}  # fmt: skip


def tree_from_flat(arch: str, cfg: ModelConfig, flat: dict[str, Tensor], what: str) -> Params:
    """The params tree of `arch` at `cfg` holding `flat` (dotted names), after checking that
    every name and shape is the one the model has; the template is built on the meta device,
    so the check allocates nothing."""
    with torch.device("meta"):
        tree = models.get(arch).init(cfg, 0)
    template = named_leaves(tree)
    missing = [n for n in template if n not in flat]
    extra = [n for n in flat if n not in template]
    wrong = [f"{n} {tuple(flat[n].shape)} vs {tuple(t.shape)}" for n, t in template.items()
             if n in flat and flat[n].shape != t.shape]  # fmt: skip
    problems = [f"missing {n}" for n in missing] + [f"unexpected {n}" for n in extra] + wrong
    if problems:
        shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
        raise UserError(f"{what} does not fit a {arch} of its config ({shown})")
    return tree_unflatten_like(tree, [flat[n] for n in template])


def write_dir(out: Path, files: dict[str, bytes]) -> None:
    """Every file or none (`fileio.write_files`); a directory this call created is removed
    again when the write fails, so a failed export leaves nothing behind."""
    check_out_dir(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        fileio.write_files({out / name: (lambda f, b=b: f.write(b)) for name, b in files.items()})
    except BaseException:
        if created:
            out.rmdir()
        raise


def check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is an existing file; choose a directory path")


def mode_of(ckpt: dict[str, Any]) -> str:
    return ckpt.get("mode") or ("char" if ckpt["tokenizer"].get("kind") == "char" else "token")


# --------------------------------------------------------------- this project's own layout


def tokenizer_file(tok: tokenizers.TextTokenizer) -> tuple[str, bytes]:
    """The file `prepare-char` / `prepare-tokenizer` would write for this tokenizer."""
    if isinstance(tok, tokenizers.CharTokenizer):
        return "vocab.json", fileio.json_bytes(tok.chars)
    return "tokenizer.json", tok.tok.to_str().encode("utf-8")


def safetensors_files(ckpt: dict[str, Any], params: Params) -> dict[str, bytes]:
    """`model.safetensors` by dotted names, `config.json` and the tokenizer file.

    A tied head is no tensor of ours (the tree has no `lm_head`), so it is stored once by
    construction. The metadata carries the sha256 of the tensors, as checkpoints do, since
    safetensors checks the layout of a file but not its bytes.
    """
    tensors = own_tensors(named_leaves(params))
    tok = tokenizers.from_dict(ckpt["tokenizer"])
    name, tok_bytes = tokenizer_file(tok)
    config = {
        "yocto_fn": DIR_FORMAT, "arch": ckpt["arch"], "mode": mode_of(ckpt),
        "model_config": ckpt["model_config"], "iter": ckpt.get("iter", 0),
        "tokenizer_file": name,
        "tokenizer_specials": {k: v for k, v in tok.to_dict().items() if k in ("bos", "eos")},
    }  # fmt: skip
    meta = {"format": "pt", "sha256": checkpoint.payload_digest(tensors)}
    return {WEIGHTS: safetensors_bytes(tensors, meta), CONFIG: fileio.json_bytes(config),
            name: tok_bytes}  # fmt: skip


def load_dir(path: Path) -> dict[str, Any]:
    """An exported `safetensors` directory as a checkpoint dict (weights only: no optimizer
    state, so it can start a run or sample, not resume one)."""
    config = read_json(path / CONFIG)
    required = ("arch", "mode", "model_config", "tokenizer_file")
    if "yocto_fn" in config and any(k not in config for k in required):
        raise UserError(
            f"{path / CONFIG} lacks {', '.join(k for k in required if k not in config)}"
        )
    if "yocto_fn" not in config:
        hint = (
            f"it is a Hugging Face model directory: make a checkpoint of it with "
            f"`python cli.py import --hf-dir {path} --out {path.name}.pt`"
            if "model_type" in config
            else "pass a directory written by `cli.py export --format safetensors`"
        )
        raise UserError(f"{path} is not an exported yocto_fn model; {hint}")
    if config["yocto_fn"] != DIR_FORMAT:
        raise UserError(f"{path} has export format {config['yocto_fn']}, expected {DIR_FORMAT}")
    arch = models.canonical_name(config["arch"])
    cfg = ModelConfig.from_dict(config["model_config"])
    tensors, meta = read_safetensors(path / WEIGHTS)
    if meta.get("sha256") not in (None, checkpoint.payload_digest(tensors)):
        raise UserError(
            f"{path / WEIGHTS} is damaged (its tensors fail their checksum); export again"
        )
    params = tree_from_flat(arch, cfg, tensors, str(path / WEIGHTS))
    tok = tokenizers.load(path / config["tokenizer_file"]).to_dict()
    return {
        "format": checkpoint.FORMAT, "arch": arch, "mode": config["mode"],
        "model_config": cfg.to_dict(), "params": params, "ema": None, "opt_state": None,
        "iter": config.get("iter", 0), "tokenizer": tok | config.get("tokenizer_specials", {}),
    }  # fmt: skip


# ------------------------------------------------------------------ Hugging Face layouts


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


def hf_tokenizer_files(tok: tokenizers.HFTokenizer, block_size: int) -> dict[str, bytes]:
    """`tokenizer.json` as it is plus a `tokenizer_config.json` naming the special tokens,
    which `AutoTokenizer` loads as a plain fast tokenizer. Our tokenizers have no
    post-processor, so `AutoTokenizer` adds no tokens and encodes to the same ids."""
    names = {"bos_token": tok.bos, "eos_token": tok.eos, "unk_token": "<unk>",
             "pad_token": "<pad>"}  # fmt: skip
    present = {
        k: v for k, v in names.items() if v is not None and tok.tok.token_to_id(v) is not None
    }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": block_size}
    return {"tokenizer.json": tok.tok.to_str().encode("utf-8"),
            "tokenizer_config.json": fileio.json_bytes(config | present)}  # fmt: skip


def special_ids(tok: tokenizers.TextTokenizer) -> dict[str, int | None]:
    pad = tok.tok.token_to_id("<pad>") if isinstance(tok, tokenizers.HFTokenizer) else None
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": pad}


def token_name(tok: tokenizers.HFTokenizer, token_id: Any) -> str | None:
    """config.json's start/end id as a token (a list of end ids: the first one)."""
    if isinstance(token_id, list):
        token_id = token_id[0] if token_id else None
    return None if token_id is None else tok.tok.id_to_token(int(token_id))


def is_char_list(path: Path) -> bool:
    """Our `vocab.json` (a list of characters), not GPT-2's (a dict of byte-level tokens)."""
    try:
        return path.is_file() and isinstance(orjson.loads(path.read_bytes()), list)
    except orjson.JSONDecodeError:
        return False


def tokenizer_from_hf_dir(
    path: Path, config: dict[str, Any], vocab_size: int
) -> tuple[tokenizers.TextTokenizer, str]:
    """The directory's `tokenizer.json` (token mode, start/end tokens from config.json), or
    the character list an export of a char-level model wrote as `vocab.json`."""
    if (path / "tokenizer.json").is_file():
        tok = tokenizers.load(path / "tokenizer.json")
        names = [token_name(tok, config.get(f"{k}_token_id")) for k in ("bos", "eos")]
        tok, mode = tokenizers.HFTokenizer(tok.tok, *names), "token"
    elif is_char_list(path / "vocab.json"):
        tok, mode = tokenizers.load(path / "vocab.json"), "char"
    else:
        raise UserError(
            f"{path} has no tokenizer.json; save the tokenizer beside the model "
            f"(AutoTokenizer.from_pretrained(...).save_pretrained('{path}')) and import again"
        )
    if tok.vocab_size != vocab_size:
        raise UserError(
            f"the tokenizer in {path} has {tok.vocab_size} tokens but the model {vocab_size}; "
            "sampling needs them equal, so this model cannot be imported as it is"
        )
    return tok, mode


# ----------------------------------------------------------------------- reading weights


def read_torch_bin(path: Path) -> dict[str, Tensor]:
    """A `pytorch_model.bin`, loaded with weights_only=True (tensors only, no code runs)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types for a bad file
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise UserError(f"{path} is not a readable weights file ({reason})") from None
    if not isinstance(data, dict) or not all(isinstance(t, Tensor) for t in data.values()):
        raise UserError(f"{path} holds no plain state dict of tensors")
    return data


def read_hf_weights(path: Path) -> dict[str, Tensor]:
    """`model.safetensors` or `pytorch_model.bin`, whole or sharded (`*.index.json`)."""
    for name in (WEIGHTS, "pytorch_model.bin"):
        index = path / f"{name}.index.json"
        if (path / name).is_file():
            files = [path / name]
        elif index.is_file():
            files = sorted({path / f for f in read_json(index).get("weight_map", {}).values()})
        else:
            continue
        tensors: dict[str, Tensor] = {}
        for f in files:
            tensors |= read_safetensors(f)[0] if name == WEIGHTS else read_torch_bin(f)
        return tensors
    raise UserError(f"{path} has no {WEIGHTS} or pytorch_model.bin; save the model there with "
                    "save_pretrained")  # fmt: skip


# ------------------------------------------------------------------------------ commands

HF_LAYOUT = {"gpt": "GPT-2", "gpt-fast": "GPT-2", "gpt-plus": "Llama"}


def hf_files(ckpt: dict[str, Any], params: Params) -> dict[str, bytes]:
    """The directory `AutoModelForCausalLM.from_pretrained` loads: weights, config and the
    tokenizer (for a char-level model the character list, which AutoTokenizer cannot use)."""
    arch, cfg = ckpt["arch"], ModelConfig.from_dict(ckpt["model_config"])
    tok = tokenizers.from_dict(ckpt["tokenizer"])
    flat = named_leaves(params)
    hidden = flat["blocks.0.mlp.proj_w"].shape[-1]
    if HF_LAYOUT[arch] == "Llama":
        layout, config = llama_layout(cfg.n_layer), llama_config(cfg, hidden)
    else:
        drops_attention = models.get(arch).recipe.attention == "manual"
        layout, config = gpt2_layout(cfg.n_layer), gpt2_config(cfg, hidden, drops_attention)
    tensors = own_tensors(to_hf(flat, layout, HF_LAYOUT[arch]))
    dtype = str(flat["wte"].dtype).removeprefix("torch.")
    files = {
        WEIGHTS: safetensors_bytes(tensors, {"format": "pt"}),
        CONFIG: fileio.json_bytes(config | special_ids(tok) | {"dtype": dtype}),
    }
    if isinstance(tok, tokenizers.HFTokenizer):
        return files | hf_tokenizer_files(tok, cfg.block_size)
    return files | {"vocab.json": fileio.json_bytes(tok.chars)}


def export(opts: ExportConfig) -> None:
    """`cli.py export`: a checkpoint (or an exported directory) to `opts.out`."""
    check_out_dir(opts.out)
    ckpt = checkpoint.load(opts.ckpt)
    if opts.ema and ckpt.get("ema") is None:
        raise UserError(f"{opts.ckpt} has no EMA weights (train with --ema-decay); drop --ema")
    params = ckpt["ema"] if opts.ema else ckpt["params"]
    ckpt = ckpt | {"arch": models.canonical_name(ckpt["arch"])}
    files = (hf_files if opts.format == "hf" else safetensors_files)(ckpt, params)
    write_dir(opts.out, files)
    layout = f"{HF_LAYOUT[ckpt['arch']]} layout" if opts.format == "hf" else "safetensors"
    print(f"wrote {opts.out}/{{{','.join(files)}}}: {ckpt['arch']} as {layout}")
    if opts.format == "hf" and "vocab.json" in files:
        print(
            "note: a char-level model: vocab.json lists its characters (id = position); "
            "AutoTokenizer does not apply, map characters to ids yourself",
            file=sys.stderr,
        )
    dropout = ckpt["model_config"].get("dropout", 0.0)
    if opts.format == "hf" and HF_LAYOUT[ckpt["arch"]] == "Llama" and dropout:
        print(
            f"note: dropout {dropout} (a training setting) has no place in Llama's config, "
            "which drops attention probabilities only; the export has none",
            file=sys.stderr,
        )


def import_hf(opts: ImportConfig) -> None:
    """`cli.py import`: a local GPT-2 or Llama directory to a checkpoint file that samples
    and warm-starts like a trained one (weights only; nothing is downloaded)."""
    src = opts.hf_dir
    if not src.is_dir():
        raise UserError(f"--hf-dir {src} is not a directory; pass a local directory written "
                        "by save_pretrained (import downloads nothing)")  # fmt: skip
    if opts.out.is_dir():
        raise UserError(f"--out {opts.out} is a directory; pass a file path such as model.pt")
    if not (src / CONFIG).is_file():
        raise UserError(f"{src} has no {CONFIG}, so it is not a Hugging Face model directory; "
                        "pass one written by save_pretrained")  # fmt: skip
    config = read_json(src / CONFIG)
    kind = config.get("model_type")
    if kind not in ("gpt2", "llama"):
        raise UserError(f"{src} holds a model_type {kind!r} model; import reads gpt2 and llama")
    arch, cfg = (
        ("gpt", config_from_gpt2(config))
        if kind == "gpt2"
        else ("gpt-plus", config_from_llama(config))
    )
    tok, mode = tokenizer_from_hf_dir(src, config, cfg.vocab_size)
    weights = read_hf_weights(src)
    if kind == "gpt2":
        layout, weights = gpt2_layout(cfg.n_layer), gpt2_names(weights)
    else:
        n_kv = config.get("num_key_value_heads") or cfg.n_head
        layout, weights = llama_layout(cfg.n_layer), expand_kv(weights, cfg, n_kv)
    flat = from_hf(weights, layout, cfg.tie_weights, f"{src}")
    params = tree_from_flat(arch, cfg, flat, f"{src}")
    ckpt = {
        "format": checkpoint.FORMAT, "arch": arch, "mode": mode, "model_config": cfg.to_dict(),
        "train_config": None, "params": params, "opt_state": None, "ema": None, "iter": 0,
        "best_val_loss": None, "rng": None, "tokenizer": tok.to_dict(), "progress": None,
        "source": {"hf_dir": str(src), "model_type": kind},
    }  # fmt: skip
    opts.out.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(opts.out, ckpt)
    n = sum(t.numel() for t in flat.values())
    print(f"wrote {opts.out}: {kind} -> {arch}, {n:,} parameters, {mode} mode")
