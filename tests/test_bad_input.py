"""Bad input across every subcommand: exit 2, exactly one stderr line naming the problem,
no traceback, and not one byte changed in any file of the directories involved."""

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from conftest import QUICK, TINY, flip_a_tensor_byte, real_text

from yocto_fn import cli

RUN = " ".join([*TINY, *QUICK, "--max-iters", "1"])


def run(argv: str, w: Path) -> int:
    return cli.main(shlex.split(argv.replace("W/", f"{w}/")))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Text files, prepared data (good and damaged), two trained runs, and files that
    only look like checkpoints."""
    w = tmp_path_factory.mktemp("world")
    (w / "text.txt").write_text(real_text()[:30_000], encoding="utf-8")
    (w / "empty.txt").write_text("")
    (w / "binary.bin").write_bytes(bytes(range(256)) * 64)
    (w / "latin1.txt").write_bytes(("café " * 200).encode("latin-1"))
    (w / "emptydir").mkdir()
    for argv in (
        "prepare-char --text-path W/text.txt --out-dir W/char",
        "prepare-tokenizer --text-path W/text.txt --out-dir W/tok --vocab-size 300",
        f"train --data-dir W/char --ckpt-dir W/run {RUN}",
        f"train --mode token --data-dir W/tok --ckpt-dir W/tokrun {RUN}",
    ):
        assert run(argv, w) == 0
    for name in ("bad_meta", "no_vocab", "bad_vocab", "other", "nobin", "shortbin"):
        shutil.copytree(w / "char", w / name)
    (w / "bad_meta/meta.json").write_text('{"mode": "char", "dtype":')
    (w / "no_vocab/vocab.json").unlink()
    (w / "bad_vocab/vocab.json").write_text("[1, 2")
    chars = json.loads((w / "other/vocab.json").read_text())
    (w / "other/vocab.json").write_text(json.dumps([chars[1], chars[0], *chars[2:]]))
    (w / "nobin/train.bin").unlink()
    (w / "shortbin/train.bin").write_bytes(b"\x01\x02")
    shutil.copytree(w / "tok", w / "bad_tok")
    (w / "bad_tok/tokenizer.json").write_text("{not json")
    chat_lines = {
        "badjson": '{"messages": [{"role": "user", "content": "hi"}, \n',
        "nomessages": '{"text": "hi"}\n',
        "role": '{"messages": [{"role": "bot", "content": "hi"}]}\n',
        "noreply": '{"messages": [{"role": "user", "content": "hi"}]}\n',
        "empty": '{"messages": [{"role": "user", "content": "hi"}, '
                 '{"role": "assistant", "content": " "}]}\n',
        "snow": '{"messages": [{"role": "user", "content": "snow \\u2603"}, '
                '{"role": "assistant", "content": "ok."}]}\n',
        "long": '{"messages": [{"role": "user", "content": "hi"}, '
                f'{{"role": "assistant", "content": "{"x" * 200}"}}]}}\n',
    }  # fmt: skip
    good = ('{"messages": [{"role": "user", "content": "a b"}, '
            '{"role": "assistant", "content": "b a"}]}\n')  # fmt: skip  # any corpus's letters
    (w / "good.jsonl").write_text(good * 3, encoding="utf-8")
    for name, line in chat_lines.items():
        (w / f"{name}.jsonl").write_text(good * 3 + line, encoding="utf-8")
    (w / "ckpts").mkdir()
    shutil.copy(w / "char/train.bin", w / "ckpts/notckpt.pt")
    whole = (w / "run/latest.pt").read_bytes()
    (w / "ckpts/trunc.pt").write_bytes(whole[: len(whole) // 2])
    shutil.copy(w / "run/latest.pt", w / "ckpts/flip.pt")
    flip_a_tensor_byte(w / "ckpts/flip.pt")
    torch.save({"a": torch.zeros(2)}, w / "ckpts/foreign.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, w / "ckpts/pickled.pt")
    return w


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}  # fmt: skip


CKPT = "--data-dir W/char --ckpt-dir W/out"
CASES = [
    # prepare-char
    ("prepare-char --text-path W/missing.txt --out-dir W/out", "text file not found"),
    ("prepare-char --text-path W/empty.txt --out-dir W/out", "is empty or whitespace only"),
    ("prepare-char --text-path W/binary.bin --out-dir W/out", "binary.bin is not UTF-8 text"),
    ("prepare-char --text-path W/latin1.txt --out-dir W/out", "latin1.txt is not UTF-8 text"),
    ("prepare-char --text-path W/emptydir --out-dir W/out", "emptydir is a directory"),
    ("prepare-char --text-path W/text.txt --out-dir W/out --val-fraction 1.5",
     "--val-fraction must be between 0 and 1"),
    ("prepare-char --text-path W/text.txt --out-dir W/out --val-fraction -0.1",
     "--val-fraction must be between 0 and 1"),
    ("prepare-char --text-path W/text.txt --out-dir W/out --bogus 1",
     "unknown flag '--bogus' for prepare-char (see yocto prepare-char --help)"),
    # prepare-tokenizer
    ("prepare-tokenizer --text-path W/missing.txt --out-dir W/out", "text file not found"),
    ("prepare-tokenizer --text-path W/empty.txt --out-dir W/out", "is empty"),
    ("prepare-tokenizer --text-path W/binary.bin --out-dir W/out", "is not UTF-8 text"),
    ("prepare-tokenizer --text-path W/text.txt --out-dir W/out --vocab-size 1",
     "--vocab-size 1 is below the byte alphabet"),
    ("prepare-tokenizer --text-path W/text.txt --out-dir W/out --vocab-size abc",
     "bad value for --vocab-size"),
    # prepare-chat
    ("prepare-chat --jsonl-path W/missing.jsonl --out-dir W/out",
     "--jsonl-path W/missing.jsonl not found"),
    ("prepare-chat --jsonl-path W/badjson.jsonl --out-dir W/out",
     "badjson.jsonl:4: not valid JSON"),
    ("prepare-chat --jsonl-path W/nomessages.jsonl --out-dir W/out",
     'nomessages.jsonl:4: expected an object with "messages"'),
    ("prepare-chat --jsonl-path W/role.jsonl --out-dir W/out",
     "role.jsonl:4: message 0 has unknown role 'bot'"),
    ("prepare-chat --jsonl-path W/noreply.jsonl --out-dir W/out",
     "noreply.jsonl:4: no assistant turn to train on"),
    ("prepare-chat --jsonl-path W/empty.jsonl --out-dir W/out",
     "empty.jsonl:4: message 1 (assistant) has empty content"),
    ("prepare-chat --jsonl-path W/snow.jsonl --out-dir W/out --vocab-from W/run/latest.pt",
     "snow.jsonl:4: 1 character(s) not in the vocabulary"),
    ("prepare-chat --jsonl-path W/long.jsonl --out-dir W/out --block-size 8",
     "every conversation is longer than --block-size 8"),
    ("prepare-chat --jsonl-path W/good.jsonl --out-dir W/out --vocab-from W/emptydir",
     "--vocab-from W/emptydir has no meta.json"),
    ("prepare-chat --jsonl-path W/good.jsonl --out-dir W/out --vocab-from W/bad_meta",
     "bad_meta/meta.json is damaged"),
    ("prepare-chat --out-dir W/out --too-long trim", "invalid choice 'trim' for --too-long"),
    # train: data
    ("train --data-dir W/missing --ckpt-dir W/out", "no prepared data in"),
    ("train --data-dir W/emptydir --ckpt-dir W/out", "meta.json missing"),
    ("train --data-dir W/bad_meta --ckpt-dir W/out", "bad_meta/meta.json is damaged"),
    ("train --data-dir W/no_vocab --ckpt-dir W/out", "no_vocab/vocab.json"),
    ("train --data-dir W/bad_vocab --ckpt-dir W/out", "vocab.json is not valid JSON"),
    ("train --mode token --data-dir W/bad_tok --ckpt-dir W/out",
     "tokenizer.json is not valid JSON"),
    ("train --data-dir W/nobin --ckpt-dir W/out", "train.bin is missing or empty"),
    ("train --data-dir W/shortbin --ckpt-dir W/out", "holds 2 tokens but meta.json says"),
    ("train --mode token --data-dir W/char --ckpt-dir W/out", "holds char-level data"),
    ("train --data-dir W/tok --ckpt-dir W/out", "holds token-level data"),
    ("train --data-dir W/char --ckpt-dir W/text.txt",
     "--ckpt-dir W/text.txt is an existing file; choose a directory path"),
    # train: sizes and flag values
    (f"train {CKPT} --block-size 1000000", "is larger than the train split"),
    (f"train {CKPT} --n-embd 30 --n-head 4", "must be divisible by n_head"),
    (f"train {CKPT} --n-layer 0", "--n-layer must be at least 1 (got 0)"),
    (f"train {CKPT} --n-embd 0", "--n-embd must be at least 1 (got 0)"),
    (f"train {CKPT} --n-head 0", "--n-head must be at least 1 (got 0)"),
    (f"train {CKPT} --block-size 0", "--block-size must be at least 1 (got 0)"),
    (f"train {CKPT} --n-layer -2", "--n-layer must be at least 1 (got -2)"),
    ("sweep --data-dir W/char --out-dir W/out --lrs 1e-3 --n-head 0",
     "--n-head must be at least 1 (got 0)"),
    (f"train {CKPT} --lr -1", "--lr must be positive"),
    (f"train {CKPT} --max-iters -5", "--max-iters must be >= 0"),
    (f"train {CKPT} --batch-size 0", "--batch-size must be at least 1"),
    (f"train {CKPT} --grad-accum-steps 0", "--grad-accum-steps must be at least 1"),
    (f"train {CKPT} --eval-interval 0", "--eval-interval must be at least 1"),
    (f"train {CKPT} --dropout 1.5", "dropout must be in [0, 1)"),
    (f"train {CKPT} --model gpt-huge", "invalid choice 'gpt-huge'"),
    (f"train {CKPT} --amp-dtype int8", "invalid choice 'int8'"),
    (f"train {CKPT} --device tpu", "invalid choice 'tpu'"),
    (f"train {CKPT} --max_iters", "--max-iters needs a value (see yocto train --help)"),
    (f"train {CKPT} --n-layr 2", "unknown flag '--n-layr' for train; did you mean '--n-layer'?"),
    (f"train {CKPT} --n_layr=2", "unknown flag '--n_layr' for train; did you mean '--n-layer'?"),
    # train: checkpoints
    (f"train {CKPT} --resume W/ckpts/notckpt.pt", "notckpt.pt is truncated or not a checkpoint"),
    (f"train {CKPT} --resume W/ckpts/trunc.pt", "trunc.pt is truncated or not a checkpoint"),
    (f"train {CKPT} --resume W/ckpts/flip.pt", "flip.pt is damaged"),
    (f"train {CKPT} --resume W/ckpts/foreign.pt", "is not a yocto_fn checkpoint (missing"),
    (f"train {CKPT} --resume W/ckpts/pickled.pt", "holds Python objects besides tensors"),
    (f"train {CKPT} --resume W/run", "W/run is a directory"),
    ("train --data-dir W/other --ckpt-dir W/out --resume W/run/latest.pt",
     "was trained with another tokenizer"),
    (f"train {CKPT} --resume W/run/latest.pt --init-from W/run/latest.pt",
     "use either --resume"),
    ("train --mode token --data-dir W/tok --ckpt-dir W/out --init-from W/run/latest.pt",
     "was trained with another vocabulary"),
    (f"train {CKPT} --resume W/run/latest.pt --n-layer 3", "has another architecture"),
    (f"train {CKPT} --init-from W/run/latest.pt --n-layer 2",
     "--init-from W/run/latest.pt does not match this model"),
    # sample and chat
    ("sample --ckpt W/missing.pt", "checkpoint not found"),
    ("sample --ckpt W/ckpts/notckpt.pt", "is truncated or not a checkpoint"),
    ("sample --ckpt W/ckpts/flip.pt", "flip.pt is damaged"),
    ("sample --ckpt W/ckpts/foreign.pt", "is not a yocto_fn checkpoint"),
    ("sample --ckpt W/ckpts/pickled.pt", "holds Python objects besides tensors"),
    ("sample --ckpt W/run/latest.pt --prompt ☃☃", "not in the vocabulary: '☃'"),
    ("sample --ckpt W/run/latest.pt --max-new-tokens -1", "--max-new-tokens must be at least 1"),
    ("sample --ckpt W/run/latest.pt --temperature -1", "--temperature must be >= 0"),
    ("sample --ckpt W/run/latest.pt --top-k -3", "--top-k must be >= 0"),
    ("sample --ckpt W/run/latest.pt --top-p 1.5", "--top-p must be in [0, 1]"),
    ("sample --ckpt W/run/latest.pt --num-samples 0", "--num-samples must be at least 1"),
    ("sample --ckpt W/tokrun/latest.pt --prompt hi --bogus", "unknown flag '--bogus' for sample"),
    ("sample --ckpt W/run/latest.pt --temprature 0", "did you mean '--temperature'?"),
    ("chat --ckpt W/missing.pt", "checkpoint not found"),
    ("chat --ckpt W/ckpts/foreign.pt", "is not a yocto_fn checkpoint"),
    ("chat --ckpt W/run/latest.pt --temperature -1", "--temperature must be >= 0"),
    # export and import
    ("export --ckpt W/missing.pt --out W/out --format hf", "checkpoint not found"),
    ("export --ckpt W/run/latest.pt --out W/out --format onnx", "expected one of hf, safetensors"),
    ("export --ckpt W/ckpts/flip.pt --out W/out --format safetensors", "flip.pt is damaged"),
    ("import --hf-dir W/missing --out W/out/x.pt", "W/missing is not a directory"),
    ("import --hf-dir W/char --out W/out/x.pt", "no config.json, so it is not a Hugging Face"),
    ("import --hf-dir W/bad_meta --out W/out/x.pt", "no config.json"),
    # recommend, sweep, bench, smoke, no command
    ("recommend --data-dir W/missing", "no prepared data in"),
    ("recommend --data-dir W/bad_meta", "meta.json is damaged"),
    ("recommend --data-dir W/char --device-mem-gb -1", "--device-mem-gb must be positive"),
    ("recommend --data-dir W/char --priority fastest", "expected one of quality, speed"),
    ("recommend --data-dir W/char --time-budget 5", "is not a duration"),
    ("recommend --data-dir W/char --time-budget 5s", "leaves no time to train"),
    ("sweep --data-dir W/char --out-dir W/out", "--lrs needs at least one value"),
    ("sweep --data-dir W/char --out-dir W/out --lrs -1", "--lrs must all be positive"),
    ("sweep --data-dir W/missing --out-dir W/out --lrs 1e-3", "no prepared data in"),
    ("bench --preset huge", "expected one of small, tiny"),
    ("bench --device tpu", "expected one of cpu, cuda, mps"),
    ("smoke-train --device tpu", "invalid choice 'tpu'"),
    ("frobnicate", "unknown subcommand 'frobnicate' (see yocto --help)"),
    ("trian", "unknown subcommand 'trian'; did you mean 'train'? (see yocto --help)"),
    ("--n-layer 2", "--n-layer needs a subcommand before it"),
]  # fmt: skip


# ASCII ids: pytest escapes other characters in a test's id, and the escaped id then names
# no test when handed back to it (as mutation runs do, test by test).
IDS = ["".join(c if c.isascii() else f"<U+{ord(c):04X}>" for c in a) for a, _ in CASES]


@pytest.mark.parametrize(("argv", "expected"), CASES, ids=IDS)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(world, capsys, argv, expected):
    before = snapshot(world)
    capsys.readouterr()
    assert run(argv, world) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert expected in err.replace(f"{world}/", "W/"), err
    assert "Traceback" not in err
    assert snapshot(world) == before
