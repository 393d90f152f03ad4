"""Corpus preparation (char and token level) and memory-mapped training batches.

Raw text becomes `train.bin` / `val.bin` (token ids in the smallest unsigned dtype that
fits) plus what is needed to encode and decode (`vocab.json` or `tokenizer.json`) and a
`meta.json` describing the run. Everything is computed and validated before the first byte
is written, and outputs replace earlier ones only once all of them are complete.

One module per concern:
- `text`: the input files or the default corpus, cleaning, chunked streaming (`Corpus`);
- `split`: paragraphs (`Pieces`) and the train/validation split, shared by both preparations;
- `char`, `tokens`: the two preparations of text;
- `chat`: conversations (JSONL) rendered by the chat template, with their loss mask;
- `conversations`: the embedded default chat set (Python's docstrings as questions/answers);
- `output`: the all-or-nothing write and `meta.json`'s corpus fields;
- `dataset`: the `Dataset` that serves batches from a prepared directory.
"""

from .char import PrepareCharConfig, prepare_char
from .chat import PrepareChatConfig, prepare_chat
from .chat import summary as chat_summary
from .conversations import (
    DEFAULT_CONVERSATIONS,
    VAL_TOPICS,
    conversations_jsonl,
    default_conversations,
    ensure_default_conversations,
)
from .dataset import Dataset
from .text import (
    CorpusOptions,
    clean,
    collapse_whitespace,
    default_corpus_text,
    ensure_default_corpus,
    sanitize_basic,
)
from .tokens import PrepareTokenizerConfig, prepare_tokenizer

__all__ = [
    "DEFAULT_CONVERSATIONS",
    "VAL_TOPICS",
    "conversations_jsonl",
    "default_conversations",
    "ensure_default_conversations",
    "CorpusOptions",
    "Dataset",
    "chat_summary",
    "PrepareCharConfig",
    "PrepareChatConfig",
    "PrepareTokenizerConfig",
    "clean",
    "collapse_whitespace",
    "default_corpus_text",
    "ensure_default_corpus",
    "prepare_char",
    "prepare_chat",
    "prepare_tokenizer",
    "sanitize_basic",
]
