"""Data-preparation throughput and peak memory on a large corpus.

Builds a corpus of --mb megabytes by repeating the embedded default corpus, then runs
`prepare-char` and `prepare-tokenizer` (BPE), each in a fresh process, and reports MB/s of
text and the peak resident memory added by the preparation (VmHWM minus the RSS after
imports) as a multiple of the corpus size.

    python -m benchmarks data-prep --mb 100
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import orjson

from yocto_fn.bench.proc import python
from yocto_fn.bench.report import print_jsonl
from yocto_fn.data import default_corpus_text

CHILD = r"""
import sys, time, orjson
from pathlib import Path
from yocto_fn import data

def rss(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) * 1024
mode, corpus, out = sys.argv[1:4]
base = rss("VmRSS:")
t0 = time.perf_counter()
if mode == "char":
    data.prepare_char(data.PrepareCharConfig(text_path=Path(corpus), out_dir=Path(out)))
else:
    data.prepare_tokenizer(data.PrepareTokenizerConfig(
        text_path=Path(corpus), out_dir=Path(out), vocab_size=8000))
seconds = time.perf_counter() - t0
print(orjson.dumps({"seconds": seconds, "peak_extra": rss("VmHWM:") - base}).decode())
"""


@dataclass(frozen=True)
class Config:
    """MB/s and peak memory of prepare-char and prepare-tokenizer on a large corpus."""

    mb: float = 100.0
    """Corpus size in MB."""


def run(cfg: Config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = default_corpus_text().encode("utf-8")
        corpus = Path(tmp) / "big.txt"
        reps = max(1, int(cfg.mb * 1e6 / len(base)))
        corpus.write_bytes(base * reps)
        size = corpus.stat().st_size
        print(f"corpus: {size / 1e6:.1f} MB ({reps} copies of the default corpus)")
        for mode in ("char", "token"):
            done = python(["-c", CHILD, mode, str(corpus), str(Path(tmp) / mode)], timeout=3600)
            res = orjson.loads(done.last_line)
            row = {
                "mode": mode, "corpus_mb": round(size / 1e6, 1),
                "seconds": round(res["seconds"], 2), "process_seconds": round(done.seconds, 2),
                "mb_per_s": round(size / 1e6 / res["seconds"], 1),
                "peak_extra_mb": round(res["peak_extra"] / 1e6, 1),
                "peak_vs_corpus": round(res["peak_extra"] / size, 2),
            }  # fmt: skip
            print_jsonl([row])
