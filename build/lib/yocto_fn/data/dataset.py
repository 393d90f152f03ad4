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

    def check_block_size(self, block_size: int) -> None:
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
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 [B, T] windows at random offsets, y shifted by one.

        Offsets come from `generator` alone (a CPU generator), so a run resumed with the
        saved generator state sees exactly the batches an uninterrupted run would. Only the
        B windows are read from the memmap; with `rows` only those of the B drawn (a data-
        parallel rank's share of the global batch).
        """
        data = self.splits[split]
        if len(data) <= block_size:
            self.check_block_size(block_size)
        starts = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
        if rows is not None:
            starts = starts[rows]
        rows = starts.numpy()[:, None] + np.arange(block_size + 1)
        window = torch.from_numpy(data[rows].astype(np.int64))
        device = torch.device(device)
        if device.type == "cuda":
            window = window.pin_memory().to(device, non_blocking=True)
        elif device.type != "cpu":
            window = window.to(device)
        return window[:, :-1], window[:, 1:]
