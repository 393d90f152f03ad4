"""What the `sample`, `chat` and `serve` commands share: a checkpoint loaded and checked
against the flags, the sampling flags as `generate`'s arguments, the decode step `--compile`
asks for, and a prompt's text as the model's ids.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..core import models
from ..core.config import ModelConfig
from ..core.models import Model
from ..core.params import Params, to
from ..device import resolve
from ..errors import UserError
from ..formats import chat_template, checkpoint
from ..formats import tokenizer as tokenizers
from ..options import InferenceOptions
from .quantize import quantize
from .steps import DecodeStep, build_decode_step, compile_backend


class Loaded(NamedTuple):
    """A checkpoint ready to generate: variant, weights, shape, tokenizer, and the chat
    template record of a model fine-tuned on conversations (None: a plain language model)."""

    model: Model
    params: Params
    cfg: ModelConfig
    tok: tokenizers.TextTokenizer
    chat: dict[str, Any] | None = None


def load_model(opts: InferenceOptions) -> Loaded:
    """Everything comes from the checkpoint; --mode, --vocab-path and --tokenizer-path may
    override or confirm it but must agree with the model."""
    device = resolve(opts.device)
    ckpt = checkpoint.load(opts.ckpt)
    mode = ckpt.get("mode") or ("char" if ckpt["tokenizer"].get("kind") == "char" else "token")
    if opts.mode is not None and opts.mode != mode:
        raise UserError(f"--mode {opts.mode} but {opts.ckpt} is a {mode}-level model")
    override = opts.vocab_path if mode == "char" else opts.tokenizer_path
    tok = tokenizers.load(override) if override else tokenizers.from_dict(ckpt["tokenizer"])
    cfg = ModelConfig.from_dict(ckpt["model_config"])
    if tok.vocab_size != cfg.vocab_size:
        raise UserError(
            f"{override} has {tok.vocab_size} tokens but the model has {cfg.vocab_size}; "
            "use the vocabulary it was trained with (or leave the override out)"
        )
    weights = ckpt["params"]
    if opts.ema:
        if ckpt.get("ema") is None:
            raise UserError(f"{opts.ckpt} has no EMA weights (train with --ema-decay); drop --ema")
        weights = ckpt["ema"]
    weights = quantize(to(weights, device), opts.quantize)
    chat_template.check_record(ckpt.get("chat"), opts.ckpt)
    return Loaded(models.get(ckpt["arch"]), weights, cfg, tok, ckpt.get("chat"))


def system_prompt(flag: str | None, loaded: Loaded) -> str | None:
    """The system prompt of a chat: --system-prompt when given (empty: none), else the one
    the checkpoint's conversations were trained with, else none: a line the model never saw
    in training only moves its answers away from what it learned."""
    if flag is not None:
        return unescape(flag) or None
    return (loaded.chat or {}).get("system_prompt")


def sampling_kwargs(opts: InferenceOptions, loaded: Loaded) -> dict[str, Any]:
    """`generate`'s sampling arguments from the flags: --top-k/--top-p 0 mean off, and the
    step is `compiled_step`'s."""
    device = loaded.params["wte"].device
    return {
        "temperature": opts.temperature,
        "top_k": opts.top_k or None,
        "top_p": opts.top_p or None,
        "generator": torch.Generator(device).manual_seed(opts.seed),
        "step": compiled_step(loaded, opts),
    }


def compiled_step(loaded: Loaded, opts: InferenceOptions) -> DecodeStep | None:
    """The batch-1 decode step of --compile (`steps.compile_backend` picks it for the
    device), or None without the flag: `generate`'s eager step."""
    if not opts.compile:
        return None
    backend = compile_backend(loaded.params["wte"].device)
    return build_decode_step(loaded.model, loaded.params, loaded.cfg, backend,
                             cache_dir=package_dir(opts.ckpt))  # fmt: skip


def package_dir(ckpt: Path) -> Path:
    """Where the packaged steps of `ckpt` are kept: `compiled/` beside it, or inside it when
    it is a directory (an exported checkpoint)."""
    return (ckpt if ckpt.is_dir() else ckpt.parent) / "compiled"


def unescape(text: str) -> str:
    """`\\n` and `\\t` typed on a command line become a newline and a tab."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), text)


def drop_unknown_chars(tok: tokenizers.CharTokenizer, text: str) -> str:
    """`text` without the characters the vocabulary lacks, with a warning naming them."""
    missing = tok.unknown(text)
    if missing:
        shown = " ".join(repr(c) for c in missing[:10])
        print(f"warning: dropped characters not in the vocabulary: {shown}", file=sys.stderr)
    return tok.known_only(text)


def encode_prompt(loaded: Loaded, text: str, drop_unknown: bool) -> list[int]:
    """Token ids of the prompt: <bos>-primed where the tokenizer has one; in char mode an
    empty prompt starts from a newline (or the first character of the vocabulary)."""
    tok = loaded.tok
    if isinstance(tok, tokenizers.CharTokenizer):
        if drop_unknown:
            text = drop_unknown_chars(tok, text)
        ids = tok.encode(text)
        return ids or tok.encode("\n" if "\n" in tok.chars else tok.chars[0])
    ids = tok.encode(text)
    return ([tok.bos_id] if tok.bos_id is not None else []) + ids
