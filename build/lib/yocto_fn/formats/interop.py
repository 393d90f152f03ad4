"""Models in and out: safetensors directories and Hugging Face `transformers` layouts.

Parameters are plain named tensors, so moving a model elsewhere is renaming, transposing
and splitting tensors plus writing a config that says the same thing ours does:

- `safetensors`: this project's own names (`blocks.0.attn.qkv_w`) in `model.safetensors`,
  with `config.json` (arch, mode, model config) and the tokenizer file beside it; `sample
  --ckpt` and `train --init-from` read such a directory like a checkpoint (`checkpoint.load_dir`).
- `hf`: `gpt` and `gpt-fast` as `GPT2LMHeadModel`, `gpt-plus` as `LlamaForCausalLM`, which
  `transformers` loads with `AutoModelForCausalLM.from_pretrained` and which gives our
  logits; `import_hf` is the way back (GPT-2 -> `gpt`, Llama -> `gpt-plus`).

Whatever a layout cannot express is a UserError naming it, never a silently different model.
Nothing here imports `transformers`: the files are written and read directly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import orjson
import torch
from safetensors.torch import save as safetensors_bytes

from .. import fileio
from ..config import ExportConfig, ImportConfig
from ..core import models
from ..core.config import ModelConfig
from ..core.params import Params, named_leaves
from ..errors import UserError
from . import checkpoint
from . import tokenizer as tokenizers
from .checkpoint import CONFIG, DIR_FORMAT, WEIGHTS, read_json, read_safetensors, tree_from_flat
from .hf_layout import (
    config_from_gpt2,
    config_from_llama,
    expand_kv,
    from_hf,
    gpt2_config,
    gpt2_layout,
    gpt2_names,
    llama_config,
    llama_layout,
    to_hf,
)

Tensor = torch.Tensor

# ----------------------------------------------------------------------- files and names


def own_tensors(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Each tensor a contiguous CPU copy of its own: safetensors refuses tensors that share
    storage or are strided views (a transpose, one chunk of a fused weight)."""
    return {k: t.detach().to("cpu").clone(memory_format=torch.contiguous_format)
            for k, t in tensors.items()}  # fmt: skip


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


# ------------------------------------------------------------------ Hugging Face layouts


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
