"""Data loading: `build(cfg, train, rank, world_size, epoch)` picks the DALI or the reference loader.

`cfg.data.loader`: "dali" (dali_pipes, device from `data.dali_device`), "reference"
(deteclap.data.loader) or "auto" (DALI on the GPU when DALI and CUDA are both available, else the
reference loader). Both yield the batch dict of docs/INTERNALS.md and count skipped samples in
`loader.skipped`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from deteclap.config import Config


def dali_available() -> bool:
    """True when nvidia.dali can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except ModuleNotFoundError:
        return False


def build(cfg: Config, train: bool, rank: int = 0, world_size: int = 1, epoch: int = 0,
          start_batch: int = 0) -> Any:
    """An iterable of batch dicts for this rank and epoch; `start_batch` skips batches (resume)."""
    import torch

    choice = cfg.data.loader
    if choice == "auto":
        choice = "dali" if dali_available() and torch.cuda.is_available() else "reference"
    if choice == "dali":
        from dali_pipes.iterator import build_dali_loader

        return build_dali_loader(cfg, train, rank, world_size, epoch=epoch, start_batch=start_batch)
    from deteclap.data.loader import build_loader

    return build_loader(cfg, train, rank, world_size, epoch=epoch, start_batch=start_batch)
