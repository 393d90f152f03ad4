"""A prepared data directory served as training batches straight from memory-mapped files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import torch

from ..errors import UserError


class Dataset:
    """A prepared data directory: memory-mapped splits plus its meta.json."""

    def __init__(self, data_dir: str | Path) -> None:
        self.dir = Path(data_dir)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise UserError(
                f"no prepared data in {self.dir} (meta.json missing); "
                "run `python cli.py prepare-char` or `prepare-tokenizer` first"
            )
        try:
            self.meta = orjson.loads(meta_path.read_bytes())
            dtype = np.dtype(self.meta["dtype"])
        except (orjson.JSONDecodeError, KeyError, TypeError) as e:
            raise UserError(
                f"{meta_path} is damaged ({type(e).__name__}: {str(e)[:80]}); "
                "re-run the prepare command"
            ) from None
        self.splits: dict[str, np.memmap] = {}
        for split in ("train", "val"):
            path = self.dir / f"{split}.bin"
            if not path.is_file() or path.stat().st_size == 0:
                raise UserError(f"{path} is missing or empty; re-run the prepare command")
            expected = self.meta.get(f"{split}_tokens")
            if expected is not None and path.stat().st_size != expected * dtype.itemsize:
                raise UserError(
                    f"{path} holds {path.stat().st_size / dtype.itemsize:,g} tokens but meta.json "
                    f"says {expected:,} (truncated, or from another preparation); re-run the "
                    "prepare command"
                )
            self.splits[split] = np.memmap(path, dtype=dtype, mode="r")
        self.chat: dict | None = self.meta.get("chat")
        self.masks: dict[str, np.memmap] = {}
        self.starts: dict[str, np.ndarray] = {}
        if self.chat is not None:
            for split in ("train", "val"):
                self.masks[split], self.starts[split] = self._chat_files(split)

    def _chat_files(self, split: str) -> tuple[np.memmap, np.ndarray]:
        """The loss mask (one byte per token) and the conversation starts of a chat split."""
        mask_path, starts_path = (self.dir / f"{split}.{k}.bin" for k in ("mask", "starts"))
        for path in (mask_path, starts_path):
            if not path.is_file():
                raise UserError(f"{path} is missing; re-run `prepare-chat`")
        mask = np.memmap(mask_path, dtype=np.uint8, mode="r")
        starts = np.fromfile(starts_path, dtype=np.int64)
        n = len(self.splits[split])
        if len(mask) != n or not len(starts) or starts[0] != 0 or starts[-1] >= n:
            raise UserError(
                f"{mask_path.parent} holds {split} files of different preparations (ids, "
                "mask and starts disagree); re-run `prepare-chat`"
            )
        return mask, starts

    def check_block_size(self, block_size: int) -> None:
        if self.chat is not None:
            longest = max(self.chat["splits"][s]["longest"] for s in ("train", "val"))
            if longest > block_size + 1:
                raise UserError(
                    f"--block-size {block_size} is shorter than the longest conversation in "
                    f"{self.dir} ({longest} tokens, prepared for --block-size "
                    f"{self.chat['block_size']}); train with --block-size "
                    f"{self.chat['block_size']} or re-run prepare-chat with this one"
                )
            return
        for split, data in self.splits.items():
            if len(data) <= block_size:
                raise UserError(
                    f"--block-size {block_size} is larger than the {split} split "
                    f"({len(data)} tokens); use a smaller --block-size or more text"
                )

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator,
        device: torch.device | str = "cpu",
        rows: slice | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(x, y) int64 [B, T] windows at random offsets, y shifted by one; for chat data
        (x, y, w), a conversation per row (`chat_rows`).

        Offsets come from `generator` alone (a CPU generator), so a run resumed with the
        saved generator state sees exactly the batches an uninterrupted run would. Only the
        B windows are read from the memmap; with `rows` only those of the B drawn (a data-
        parallel rank's share of the global batch).
        """
        if self.chat is not None:
            picks = torch.randint(len(self.starts[split]), (batch_size,), generator=generator)
            picks = picks.numpy() if rows is None else picks.numpy()[rows]
            return self.chat_rows(split, picks, block_size, device)
        data = self.splits[split]
        if len(data) <= block_size:
            self.check_block_size(block_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        if rows is not None:
            starts = starts[rows]
        rows = starts.numpy()[:, None] + np.arange(block_size + 1)
        window = _to(torch.from_numpy(data[rows].astype(np.int64)), device)
        return window[:, :-1], window[:, 1:]

    def chat_rows(self, split: str, picks: np.ndarray, block_size: int,
                  device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:  # fmt: skip
        """(x, y, w) of the conversations `picks` (their indices in the split), one per row
        from its first token; w [B, T] float is the loss mask on the targets, 0 past the
        conversation's end. `get_batch` draws the picks; an evaluation over every
        conversation passes them in order.

        The tokens past the end (the next conversations, or a repeat of the last token at
        the end of the split) only fill the row: causal attention keeps every counted
        position from seeing them, so no reply is trained in another conversation's
        context.
        """
        data, mask, starts = self.splits[split], self.masks[split], self.starts[split]
        ends = np.append(starts[1:], len(data))
        idx = starts[picks, None] + np.arange(block_size + 1)
        inside = idx < ends[picks, None]
        idx = np.minimum(idx, len(data) - 1)
        window = _to(torch.from_numpy(data[idx].astype(np.int64)), device)
        weights = _to(torch.from_numpy((mask[idx[:, 1:]] & inside[:, 1:]).astype(np.float32)),
                      device)  # fmt: skip
        return window[:, :-1], window[:, 1:], weights


def _to(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host tensor on `device` (pinned and asynchronous to CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t if device.type == "cpu" else t.to(device)
