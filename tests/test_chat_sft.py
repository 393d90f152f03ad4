"""The whole chat path on a task a tiny model can learn: conversations to `prepare-chat`, a
model trained from scratch on the assistant tokens only, then `chat` on stdin answering
questions it never saw, and ending each reply at its end of turn."""

import io
import json
import random

import pytest
from conftest import train_argv

from yocto_fn import cli
from yocto_fn.config import ChatConfig
from yocto_fn.generate import chat


def words(n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    return ["".join(rnd.choice("abcdefgh") for _ in range(rnd.randint(2, 4))) for _ in range(n)]


@pytest.mark.slow  # 300 steps from scratch: 10 s on 2 quiet cores, longer under load
def test_a_model_trained_on_the_replies_answers_unseen_questions_in_chat(tmp_path):
    """The task: the user's word in capitals. Held-out words are asked through `chat`, one
    per conversation; the replies must be the capitals, each ended at its blank line (8 new
    tokens at most: the prompt of a 32-token block keeps its whole question)."""
    held_out = sorted(set(words(40, seed=1)) - set(words(600, seed=0)))[:10]
    lines = [{"messages": [{"role": "user", "content": w},
                           {"role": "assistant", "content": w.upper()}],
              "split": "val" if w in held_out else "train"}
             for w in [*words(600, seed=0), *held_out]]  # fmt: skip
    path = tmp_path / "upper.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    data = tmp_path / "chat"
    argv = ["prepare-chat", "--jsonl-path", str(path), "--out-dir", str(data), "--mode", "char",
            "--block-size", "32"]  # fmt: skip
    assert cli.main(argv) == 0
    run = tmp_path / "run"
    flags = ("--n-layer", "2", "--n-embd", "64", "--block-size", "32", "--max-iters", "300",
             "--eval-interval", "300", "--warmup-iters", "30", "--batch-size", "32")  # fmt: skip
    assert cli.main(train_argv(data, run, *flags)) == 0
    written: list[str] = []
    opts = ChatConfig(ckpt=run / "latest.pt", device="cpu", temperature=0.0, max_new_tokens=8)
    stdin = io.StringIO("\n/reset\n".join(held_out) + "\n")
    assert chat.run(opts, stdin=stdin, write=written.append) == len(held_out)
    replies = [t.split("\n")[0].strip() for t in "".join(written).split("Assistant: ")[1:]]
    right = sum(r == w.upper() for r, w in zip(replies, held_out, strict=True))
    assert right >= 9, list(zip(held_out, replies, strict=True))
