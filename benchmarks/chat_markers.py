"""What the chat template's markers cost in each kind of vocabulary: the role labels as plain
text (what the template does) against one added special token per label (the alternative).

For a char vocabulary and for byte-level BPE trained on the default corpus as
`prepare-tokenizer` trains it, over the embedded conversation set rendered by the template:
the tokens each label takes, the share of all tokens that are labels and ends of turn, the
share the alternative would save, and whether every rendered conversation decodes back to
its text (the plain labels must round-trip; the end of turn is `<eos>` in BPE, a blank line
in char). What the alternative would cost instead is not a token count: ids the base model
never trained, appended to its vocabulary and its embedding, so `--vocab-from` a base could
no longer keep the base's ids as they are.

    python -m benchmarks chat-markers
    python -m benchmarks chat-markers --vocab-size 2000
"""

from __future__ import annotations

from dataclasses import dataclass

from yocto_fn.bench.report import print_jsonl, table
from yocto_fn.data import default_conversations, default_corpus_text
from yocto_fn.formats import chat_template
from yocto_fn.formats.tokenizer import CharTokenizer, TextTokenizer, train_bpe


@dataclass(frozen=True)
class Config:
    """Plain-text role labels against added special tokens, per vocabulary."""

    vocab_size: int = 8000
    """BPE vocabulary (the README's token path)."""


def layout(messages: list[dict], blank_line_ends: bool) -> str:
    """The template's layout written out by hand, without <bos> and <eos>."""
    end = chat_template.BLANK_LINE if blank_line_ends else ""
    return "".join(f"{chat_template.LABELS[m['role']]} {m['content']}"
                   + (end if m["role"] == "assistant" else "\n") for m in messages)  # fmt: skip


def measure(name: str, tok: TextTokenizer, conversations: list[dict]) -> dict:
    """Token counts of the rendered set: markers are every token that is not a message's
    own text (labels, separators, ends of turn, <bos>); the alternative spends one special
    token per message and one end per reply."""
    labels = {role: len(tok.encode(label)) for role, label in chat_template.LABELS.items()}
    tokens = markers = specials = decodes = encodes = 0
    for c in conversations:
        r = chat_template.render(tok, c["messages"])
        content = sum(len(tok.encode(m["content"] if m["role"] != "assistant"
                                     else f" {m['content']}")) for m in c["messages"])  # fmt: skip
        tokens += len(r.ids)
        markers += len(r.ids) - content
        specials += len(c["messages"]) + sum(m["role"] == "assistant" for m in c["messages"])
        plain = [i for i in r.ids if i not in (tok.bos_id, tok.eos_id)]
        decodes += tok.decode(plain) == layout(c["messages"], tok.eos_id is None)
        encodes += tok.encode(layout(c["messages"], tok.eos_id is None)) == plain
    return {"vocabulary": name, "label tokens": labels, "tokens": tokens,
            "marker share": round(markers / tokens, 4),
            "saved by specials": round((markers - specials) / tokens, 4),
            "decodes": f"{decodes}/{len(conversations)}",
            "encodes": f"{encodes}/{len(conversations)}"}  # fmt: skip


def run(cfg: Config) -> None:
    conversations = default_conversations()
    text = default_corpus_text()
    vocabs = {"char": CharTokenizer(sorted(set(text) | set(chat_template.BLANK_LINE))),
              f"bpe {cfg.vocab_size}": train_bpe(text.splitlines(), cfg.vocab_size)}  # fmt: skip
    rows = [measure(name, tok, conversations) for name, tok in vocabs.items()]
    print(table(["vocabulary", "tokens per label (system, user, assistant)", "all tokens",
                 "labels and ends", "saved by added specials", "decodes to the layout",
                 "the layout encodes to the ids"],
                [[r["vocabulary"], ", ".join(map(str, r["label tokens"].values())), r["tokens"],
                  f"{r['marker share']:.1%}", f"{r['saved by specials']:.1%}", r["decodes"],
                  r["encodes"]] for r in rows], "lrrrrrr"))  # fmt: skip
    print_jsonl(rows)
