"""Tokenizers behind one protocol: `encode(text) -> list[int]`, `decode(ids) -> str`.

- `CharTokenizer`: one id per character of a fixed vocabulary (`vocab.json`, a JSON list).
- `HFTokenizer`: a Hugging Face `tokenizers` model saved as `tokenizer.json`: byte-level BPE
  (no character is ever unknown) or a WordLevel fallback with `<unk>`.

`to_dict`/`from_dict` give a plain-value form small enough to store inside a checkpoint, so
a checkpoint alone can rebuild its encoder.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ..errors import UserError

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
BYTE_ALPHABET = 256


class TextTokenizer(Protocol):
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_dict(self) -> dict[str, Any]: ...


class CharTokenizer:
    """Characters <-> ids by position in `chars` (sorted by code point when built)."""

    bos_id = None
    eos_id = None

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        self.vocab_size = len(self.chars)
        self._index = {c: i for i, c in enumerate(self.chars)}

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, in order of first appearance."""
        return sorted(set(text) - self._index.keys(), key=text.index)

    def known_only(self, text: str) -> str:
        """`text` without the characters the vocabulary lacks."""
        return "".join(c for c in text if c in self._index)

    def check_known(self, text: str) -> None:
        missing = self.unknown(text)
        if missing:
            shown = " ".join(repr(c) for c in missing[:10])
            raise UserError(
                f"{len(missing)} character(s) not in the vocabulary: {shown}; remove them "
                "or re-prepare the data with a corpus that contains them"
            )

    def encode(self, text: str) -> list[int]:
        self.check_known(text)
        return [self._index[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars}


class HFTokenizer:
    """A `tokenizers.Tokenizer` (BPE or WordLevel) with the specials of `SPECIALS`.

    `bos` / `eos` name other start and end tokens (an imported GPT-2 has `<|endoftext|>`,
    a Llama `<s>` and `</s>`); None means the tokenizer has none.
    """

    def __init__(
        self, tok: Tokenizer, bos: str | None = "<bos>", eos: str | None = "<eos>"
    ) -> None:
        self.tok = tok
        self.vocab_size = tok.get_vocab_size()
        self.bos, self.eos = bos, eos
        self.bos_id = None if bos is None else tok.token_to_id(bos)
        self.eos_id = None if eos is None else tok.token_to_id(eos)
        self.unk_id = tok.token_to_id("<unk>")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> Iterator[list[int]]:
        """Multi-threaded (Rust) encoding of many texts at once."""
        for enc in self.tok.encode_batch_fast(texts, add_special_tokens=False):
            yield enc.ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    def to_dict(self) -> dict[str, Any]:
        """Start/end names only where they are not `<bos>`/`<eos>`, so that the dict of a
        prepared tokenizer stays what earlier checkpoints hold (resume compares them)."""
        d = {"kind": "hf", "json": self.tok.to_str()}
        return d | {k: v for k, v in (("bos", self.bos), ("eos", self.eos)) if v != f"<{k}>"}

    def save(self, path: Path) -> None:
        path.write_text(self.tok.to_str(), encoding="utf-8")


def check_vocab_size(vocab_size: int, backend: str) -> None:
    """BPE needs every byte plus the specials; word-level needs room beyond the specials."""
    minimum = BYTE_ALPHABET + len(SPECIALS) if backend == "bpe" else len(SPECIALS) + 1
    if vocab_size < minimum:
        what = "the byte alphabet plus specials" if backend == "bpe" else "the special tokens"
        raise UserError(
            f"--vocab-size {vocab_size} is below {what} ({minimum}); use e.g. --vocab-size 8000"
        )


def train_bpe(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Byte-level BPE: the 256 byte symbols are always in the vocabulary."""
    check_vocab_size(vocab_size, "bpe")
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok)


def train_word(texts: Iterable[str], vocab_size: int) -> HFTokenizer:
    """Word-level vocabulary of the most frequent words and punctuation; the rest -> <unk>."""
    check_vocab_size(vocab_size, "word")
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    trainer = trainers.WordLevelTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False
    )
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok)


def from_dict(d: dict[str, Any]) -> TextTokenizer:
    if d.get("kind") == "char":
        return CharTokenizer(d["chars"])
    if d.get("kind") == "hf":
        return HFTokenizer(
            Tokenizer.from_str(d["json"]), d.get("bos", "<bos>"), d.get("eos", "<eos>")
        )
    raise UserError(f"unknown tokenizer kind {d.get('kind')!r} in checkpoint")


def load(path: str | Path) -> TextTokenizer:
    """`vocab.json` (char list) or `tokenizer.json` (Hugging Face format)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"tokenizer file not found: {path}")
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); re-run the prepare command") from None
    if isinstance(data, list) and all(isinstance(c, str) for c in data):
        return CharTokenizer(data)
    try:
        return HFTokenizer(Tokenizer.from_str(orjson.dumps(data).decode()))
    except Exception as e:  # noqa: BLE001 - the tokenizers library raises plain Exceptions
        raise UserError(
            f"{path} is not a vocabulary or tokenizer file ({str(e).splitlines()[0][:80]}); "
            "re-run the prepare command"
        ) from None
