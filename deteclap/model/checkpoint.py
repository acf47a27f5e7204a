"""Checkpoint loading and saving for CAVMAE / CAVMAEFT.

Owns: reading official CAV-MAE files (`module.`-prefixed state dicts with timm-0.4.5 names),
DeepSpeed / our wrappers ({"module": sd} or {"model": sd}), the one key-mapping function, the
non-strict load with a report, atomic saving of plain state dicts and checkpoint weight averaging.

timm 0.4.5 and timm 1.x name the Attention / Mlp weights identically (attn.qkv, attn.proj,
mlp.fc1, mlp.fc2; their q_norm / k_norm / norm additions are parameter-free Identity modules), so
`map_official_keys` only strips the DataParallel / DeepSpeed `module.` prefix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Mapping

import torch
import torch.nn as nn

WRAPPER_KEYS = ("module", "model", "state_dict")
DATA_PARALLEL_PREFIX = "module."
OBJECTIVE_PREFIX = "model."   # train.py's DeepSpeed module states: the objective wraps the model


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the model; the message names the key or file."""


@dataclass
class LoadReport:
    """Keys of the model absent from the checkpoint, and checkpoint keys the model lacks."""
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)


def map_official_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official / DataParallel / DeepSpeed key names -> ours. The only mapping is stripping
    leading `module.` prefixes (repeated, for doubly wrapped saves)."""
    out = {}
    for key, value in state_dict.items():
        while key.startswith(DATA_PARALLEL_PREFIX):
            key = key[len(DATA_PARALLEL_PREFIX):]
        out[key] = value
    return out


def _unwrap(obj: Any, source: str) -> Mapping[str, torch.Tensor]:
    """A loaded object -> the state dict inside it ({"module": sd}, {"model": sd}, or sd itself)."""
    while isinstance(obj, Mapping):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source}: no state dict found (expected a dict of tensors, "
                              f"possibly under one of {list(WRAPPER_KEYS)})")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{source}: entries that are not tensors, e.g. {bad[:3]}")
    return obj


def read_state_dict(path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A path or an in-memory (possibly wrapped) state dict -> plain state dict with our names."""
    if isinstance(path_or_state_dict, Mapping):
        return map_official_keys(_unwrap(path_or_state_dict, "state dict"))
    path = Path(path_or_state_dict)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for non-checkpoint / unsafe files
        raise CheckpointError(f"{path}: cannot read as a tensor-only torch checkpoint: {err}") from err
    return map_official_keys(_unwrap(obj, str(path)))


def load_checkpoint(model: nn.Module,
                    path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> LoadReport:
    """Load weights non-strictly; return the missing / unexpected keys.

    Accepts official CAV-MAE files, DeepSpeed module states (train.py's, whose keys carry the
    training objective's `model.` prefix: stripped) and our own saves. Keys whose shapes differ
    from the model's, or a checkpoint none of whose keys the model has, raise CheckpointError
    (nothing is loaded). Typical reports: label heads missing when loading CAV-MAE weights into a
    DETECLAP model; decoder keys unexpected and mlp_head missing when loading pretraining weights
    into CAVMAEFT.
    """
    state = read_state_dict(path_or_state_dict)
    own = model.state_dict()
    if state and not set(state) & set(own) and all(k.startswith(OBJECTIVE_PREFIX) for k in state):
        state = {k[len(OBJECTIVE_PREFIX):]: v for k, v in state.items()}
    if state and not set(state) & set(own):
        source = "state dict" if isinstance(path_or_state_dict, Mapping) else str(path_or_state_dict)
        raise CheckpointError(f"{source}: none of its {len(state)} keys is a key of this model "
                              f"(e.g. {sorted(state)[:3]}); nothing loaded")
    mismatched = [f"{k}: checkpoint {list(v.shape)} vs model {list(own[k].shape)}"
                  for k, v in state.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise CheckpointError("shape mismatch, nothing loaded: " + "; ".join(mismatched))
    result = model.load_state_dict(state, strict=False)
    return LoadReport(missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))


def save_state_dict(model_or_state: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Write a plain state dict (CPU tensors) of a model, or a given state dict, atomically
    (temporary file in the same folder + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    state = {k: v.detach().cpu() for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def average_state_dicts(paths: list[Path]) -> dict[str, torch.Tensor]:
    """The element-wise mean of plain state dicts (CAV-MAE's `wa_model`: fine-tuning reports the
    average of its epoch checkpoints). Floating tensors are averaged in float64 and stored in their
    own dtype; other tensors (e.g. integer buffers) are taken from the last file.

    Raises:
        CheckpointError: no paths, or the files do not hold the same keys and shapes.
    """
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    kept: dict[str, torch.Tensor] = {}         # non-floating tensors: the last file's
    for path in paths:
        state = read_state_dict(path)
        if total or kept:
            if set(state) != set(total) | set(kept) or any(state[k].shape != total[k].shape for k in total):
                raise CheckpointError(f"{path}: keys or shapes differ from {paths[0]}")
        for key, value in state.items():
            if not value.is_floating_point():
                kept[key] = value
            elif key in total:
                total[key].add_(value.double())
            else:
                total[key] = value.to(torch.float64, copy=True)
        dtypes = {k: v.dtype for k, v in state.items()}
    return {**{k: (v / len(paths)).to(dtypes[k]) for k, v in total.items()}, **kept}


def resolve_checkpoint(path: str | Path) -> Path:
    """A model.pt file, a checkpoint folder holding one, or a run folder (its latest checkpoint)."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / "model.pt").is_file():
        return path / "model.pt"
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        return path / "checkpoints" / latest.read_text().strip() / "model.pt"
    raise FileNotFoundError(f"{path}: no model.pt, checkpoint folder or run folder with checkpoints/latest")
