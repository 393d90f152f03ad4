"""Conversations to a training set: JSONL files (one conversation per line) rendered by the
chat template into token ids and a loss mask, split by conversation.

A line is `{"messages": [{"role": ..., "content": ...}, ...]}`, optionally with `"topic"`
(conversations of one topic go to the same split, so validation can hold out whole topics)
and `"split": "train" | "val"` (pins it). The output directory holds, per split, the ids
(`train.bin`), the mask (`train.mask.bin`, uint8) and where each conversation starts
(`train.starts.bin`, int64), with the vocabulary and a `meta.json` whose `chat` entry names
the template and the system prompt the conversations share. `Dataset` serves it as
(x, y, w) batches, a conversation per row.

Every line is read and checked before anything is written; the first bad one is refused
with its file and line number.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import orjson
from tqdm import tqdm

from .. import fileio
from ..errors import UserError
from ..formats import chat_template, checkpoint
from ..formats import tokenizer as tokenizers
from ..options import Options, at_least, unset_means
from .conversations import ensure_default_conversations
from .output import check_out_dir, id_dtype, say, write_outputs

PROGRESS_BYTES = 8 << 20  # inputs at least this large show a progress bar


@dataclass(frozen=True)
class PrepareChatConfig(Options):
    """Prepare conversations (JSONL) for chat fine-tuning: ids, loss mask, vocabulary."""

    jsonl_path: Annotated[tuple[Path, ...], unset_means("the embedded conversation set")] = ()
    """JSONL files, one {"messages": [...]} conversation per line (repeat the flag)."""
    out_dir: Path = Path("data/chat")
    """Output directory for the splits, their masks, the vocabulary and meta.json."""
    vocab_from: Annotated[Path | None, unset_means("a new vocabulary from the conversations")] = (
        None
    )
    """A base checkpoint (.pt) or prepared data directory whose vocabulary to keep, so that
    a fine-tune of that base keeps its ids."""
    mode: Literal["char", "token"] = "char"
    """The new vocabulary's kind (without --vocab-from): characters or byte-level BPE."""
    vocab_size: int = 8000
    """The new BPE vocabulary's size (--mode token without --vocab-from)."""
    block_size: int = 128
    """The block the model trains with: a longer conversation is cut or skipped."""
    too_long: Literal["cut", "skip"] = "cut"
    """cut: keep the leading whole turns that fit; skip: leave the conversation out."""
    unknown_chars: Literal["refuse", "drop", "replace"] = "refuse"
    """Characters a char vocabulary lacks: refuse the line, drop them, or replace them."""
    replacement: str = " "
    """What --unknown-chars replace writes for each unknown character."""
    val_fraction: float = 0.1
    """Share of the conversations held out for validation (by topic where lines have one)."""
    split_seed: int = 1337
    """Seed of the split (same seed, same split)."""

    def check(self) -> None:
        super().check()
        at_least(self, 1, "block_size")
        if not 0.0 < self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be between 0 and 1 (got {self.val_fraction})")
        if self.vocab_from is None and self.mode == "token":
            tokenizers.check_vocab_size(self.vocab_size, "bpe")


@dataclass
class Conversation:
    messages: list[dict[str, str]]
    group: str
    """Conversations of one group share a split (a topic, else the line itself)."""
    pinned: str | None
    where: str


def read_lines(paths: list[Path]) -> list[Conversation]:
    """Every conversation of `paths`, checked; the first bad line is a UserError naming its
    file and line number."""
    total = sum(p.stat().st_size for p in paths)
    out: list[Conversation] = []
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="reading", file=sys.stderr,
               disable=total < PROGRESS_BYTES)  # fmt: skip
    for path in paths:
        with path.open("rb") as f:
            for n, raw in enumerate(f, 1):
                bar.update(len(raw))
                if raw.strip():
                    out.append(parse_line(raw, f"{path}:{n}"))
    bar.close()
    if not out:
        raise UserError(f"no conversations in {', '.join(map(str, paths))}; add JSONL lines")
    return out


def parse_line(raw: bytes, where: str) -> Conversation:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e}); one conversation per line") from None
    if not isinstance(obj, dict) or "messages" not in obj:
        raise UserError(f'{where}: expected an object with "messages" (a list of role/content)')
    messages = obj["messages"]
    why = chat_template.problem(messages)
    if why is None and not any(m["role"] == "assistant" for m in messages):
        why = "no assistant turn to train on"
    if why is not None:
        raise UserError(f"{where}: {why}")
    pinned = obj.get("split")
    if pinned not in (None, "train", "val"):
        raise UserError(f'{where}: "split" must be "train" or "val" (got {pinned!r})')
    topic = obj.get("topic")
    group = f"topic:{topic}" if isinstance(topic, str) and topic else f"line:{where}"
    messages = [{"role": m["role"], "content": m["content"]} for m in messages]
    return Conversation(messages, group, pinned, where)


def base_tokenizer(path: Path) -> tuple[tokenizers.TextTokenizer, str]:
    """The vocabulary of a checkpoint or a prepared data directory, and its mode."""
    if path.is_dir():
        meta_path = path / "meta.json"
        if not meta_path.is_file():
            raise UserError(f"--vocab-from {path} has no meta.json; give a checkpoint or "
                            "a prepared data directory")  # fmt: skip
        try:
            meta = orjson.loads(meta_path.read_bytes())
            return tokenizers.load(path / meta["tokenizer_file"]), meta["mode"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{meta_path} is damaged; re-run the prepare command that wrote "
                            "it") from None  # fmt: skip
    ckpt = checkpoint.load(path)
    tok = tokenizers.from_dict(ckpt["tokenizer"])
    return tok, "char" if isinstance(tok, tokenizers.CharTokenizer) else "token"


def fresh_tokenizer(
    convos: list[Conversation], opts: PrepareChatConfig
) -> tokenizers.TextTokenizer:
    """A vocabulary of the conversations and the template's own text."""
    texts = [m["content"] for c in convos for m in c.messages]
    texts.append(" ".join(chat_template.LABELS.values()) + chat_template.BLANK_LINE)
    if opts.mode == "char":
        return tokenizers.CharTokenizer(sorted(set("".join(texts))))
    return tokenizers.train_bpe(texts, opts.vocab_size)


def known_chars(convos: list[Conversation], tok: tokenizers.CharTokenizer,
                opts: PrepareChatConfig) -> int:  # fmt: skip
    """Apply --unknown-chars to every message; returns how many conversations changed."""
    if opts.unknown_chars == "replace" and tok.unknown(opts.replacement):
        raise UserError(f"--replacement {opts.replacement!r} is not in the vocabulary either; "
                        "pick a character it has, e.g. ' '")  # fmt: skip
    changed = 0
    for c in convos:
        missing = tok.unknown("".join(m["content"] for m in c.messages))
        if not missing:
            continue
        if opts.unknown_chars == "refuse":
            shown = " ".join(repr(ch) for ch in missing[:10])
            raise UserError(
                f"{c.where}: {len(missing)} character(s) not in the vocabulary: {shown}; pass "
                "--unknown-chars drop or replace, or prepare without --vocab-from"
            )
        sub = "" if opts.unknown_chars == "drop" else opts.replacement
        for m in c.messages:
            m["content"] = "".join(ch if ch not in missing else sub for ch in m["content"])
        changed += 1
    for c in convos:
        why = chat_template.problem(c.messages)
        if why:
            raise UserError(f"{c.where}: {why} once the unknown characters are dropped")
    return changed


def split_of(convos: list[Conversation], opts: PrepareChatConfig) -> np.ndarray:
    """Boolean val mask: pinned lines as pinned, then whole groups drawn in a seeded order
    until validation holds `val_fraction` of the conversations."""
    is_val = np.array([c.pinned == "val" for c in convos])
    free = [i for i, c in enumerate(convos) if c.pinned is None]
    groups: dict[str, list[int]] = {}
    for i in free:
        groups.setdefault(convos[i].group, []).append(i)
    names = sorted(groups)
    order = np.random.default_rng(opts.split_seed).permutation(len(names))
    want = opts.val_fraction * len(convos)
    for k in order:
        if is_val.sum() >= want:
            break
        is_val[groups[names[k]]] = True
    if is_val.all() or not is_val.any():
        raise UserError(
            f"{len(convos)} conversation(s) in {len(groups)} group(s) cannot make a "
            f"{opts.val_fraction:.0%} validation split; add conversations or topics"
        )
    return is_val


def system_prompt_of(convos: list[Conversation]) -> tuple[str | None, str]:
    """The system prompt every conversation shares (None where they have none or differ),
    and a word for the record."""
    seen = Counter(
        "\n".join(m["content"] for m in c.messages if m["role"] == "system") for c in convos
    )
    if len(seen) == 1:
        (only,) = seen
        return (chat_template.clean(only) or None), ("one" if only else "none")
    return None, "varied"


def prepare_chat(opts: PrepareChatConfig) -> dict[str, Any]:
    """Render, check, cut and split the conversations, then write everything at once."""
    check_out_dir(opts.out_dir)
    paths = list(opts.jsonl_path) or [ensure_default_conversations()]
    for p in paths:
        if not p.is_file():
            raise UserError(f"--jsonl-path {p} not found; give a JSONL file of conversations")
    convos = read_lines(paths)
    if opts.vocab_from is not None:
        tok, mode = base_tokenizer(opts.vocab_from)
    else:
        tok, mode = fresh_tokenizer(convos, opts), opts.mode
    changed = 0
    if isinstance(tok, tokenizers.CharTokenizer):
        changed = known_chars(convos, tok, opts)
        lacks = tok.unknown("".join(chat_template.LABELS.values()) + chat_template.BLANK_LINE)
        if lacks:
            shown = " ".join(map(repr, lacks))
            say(f"warning: the vocabulary lacks {shown} of the chat template's labels; they "
                "are left out of every label, here and in chat")  # fmt: skip
    system, systems = system_prompt_of(convos)
    kept, cut, skipped, rendered = [], 0, 0, []
    for c in convos:
        r = chat_template.render(tok, c.messages)
        if len(r.ids) > opts.block_size + 1:
            fitted = chat_template.fit(tok, c.messages, opts.block_size + 1)
            if opts.too_long == "skip" or fitted is None:
                skipped += 1
                continue
            r, cut = chat_template.render(tok, fitted), cut + 1
        kept.append(c)
        rendered.append(r)
    if not kept:
        raise UserError(f"every conversation is longer than --block-size {opts.block_size}; "
                        "raise it")  # fmt: skip
    is_val = split_of(kept, opts)
    dtype = id_dtype(tok.vocab_size)
    files: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    for name, sel in (("train", ~is_val), ("val", is_val)):
        rs = [r for r, v in zip(rendered, sel, strict=True) if v]
        lengths = np.array([len(r.ids) for r in rs], dtype=np.int64)
        files[f"{name}.bin"] = [np.fromiter((i for r in rs for i in r.ids), dtype=dtype)]
        files[f"{name}.mask.bin"] = [np.fromiter((b for r in rs for b in r.mask), np.uint8)]
        files[f"{name}.starts.bin"] = [np.concatenate([[0], np.cumsum(lengths)[:-1]])]
        counts[name] = {"conversations": len(rs), "tokens": int(lengths.sum()),
                        "trained_tokens": sum(sum(r.mask) for r in rs),
                        "longest": int(lengths.max())}  # fmt: skip
    tok_file = "vocab.json" if isinstance(tok, tokenizers.CharTokenizer) else "tokenizer.json"
    tok_bytes = (fileio.json_bytes(tok.chars) if tok_file == "vocab.json"
                 else tok.tok.to_str().encode("utf-8"))  # fmt: skip
    meta = {
        "mode": mode, "vocab_size": tok.vocab_size, "dtype": dtype.name,
        "train_tokens": counts["train"]["tokens"], "val_tokens": counts["val"]["tokens"],
        "tokenizer_file": tok_file,
        "chat": chat_template.record(system) | {"system_prompts": systems,
                                                "block_size": opts.block_size,
                                                "splits": counts, "cut": cut,
                                                "skipped": skipped, "changed_chars": changed},
        "sources": [str(p) for p in paths], "vocab_from": str(opts.vocab_from or ""),
    }  # fmt: skip
    files["meta.json"] = fileio.json_bytes(meta)
    files[tok_file] = tok_bytes
    write_outputs(opts.out_dir, files)
    return meta


def summary(meta: dict[str, Any]) -> str:
    """What `prepare-chat` says about its output."""
    chat = meta["chat"]
    s = chat["splits"]
    lines = [
        f"conversations: {s['train']['conversations']:,} train, {s['val']['conversations']:,} "
        f"val; tokens: {s['train']['tokens']:,} train ({s['train']['trained_tokens']:,} "
        f"in replies), {s['val']['tokens']:,} val",
        f"vocabulary: {meta['mode']}, {meta['vocab_size']:,} ids"
        + (f" (from {meta['vocab_from']})" if meta["vocab_from"] else " (new)"),
        f"system prompt: {chat['system_prompt']!r}"
        if chat["system_prompts"] == "one"
        else f"system prompt: {chat['system_prompts']} (chat and serve default to none)",
    ]
    if chat["cut"] or chat["skipped"]:
        lines.append(
            f"longer than --block-size {chat['block_size']}: {chat['cut']} cut to whole turns,"
            f" {chat['skipped']} skipped"
        )
    if chat["changed_chars"]:
        lines.append(f"unknown characters handled in {chat['changed_chars']} conversation(s)")
    return "\n".join(lines)
