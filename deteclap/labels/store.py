"""Label scores stored inside the shards: `KEY.<labeller>.f16` members, resumable labelling runs.

A labeller scores a batch of samples (their raw members) and returns float scores [n, C] over
dataset.json's `label_vocabulary`. `label_shards` runs it over every tar of a shard folder and
rewrites each tar atomically (tmp file, fsync, os.replace) with one `KEY.<labeller>.f16` member
per sample (raw little-endian float16 [C]) placed right after the sample's other members, then
regenerates the tar's DALI index and records the shard in dataset.json (`labelled_shards`), so a
re-run skips finished shards. When every shard is done the labeller joins dataset.json
`labellers`.

A sample whose labelling failed (e.g. a corrupt FLAC) gets an all-NaN member and its reason in
dataset.json `label_failures[labeller][key]`; the other samples keep their scores. NaN is never a
score a model gives, so loaders recognise (and count) such samples with `np.isnan(scores).any()`
instead of reading zeros, and every sample of a tar keeps the same members (DALI's
`missing_component_behavior="error"` stays usable).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deteclap.format import (DATASET_JSON, SCORE_DTYPE, index_path, is_score_member, iter_tar_samples, labeller_of,
                             list_tars, load_dataset_json, replace_synced, save_dataset_json, score_member,
                             split_member_name, tar_index_samples, tmp_path, write_index)
Sample = dict[str, Any]            # {"__key__": key, "<ext>": bytes, ...} (ext = after the key's first dot)


class Labeller(Protocol):
    """What `label_shards` runs: `name` is the member name, calling it scores a batch."""

    name: str

    def __call__(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[str | None]]:
        """Score a batch -> (float scores [n, C] with NaN rows for failures, reason or None per sample)."""
        ...


@dataclass
class LabelReport:
    """What one `label_shards` run did."""
    labeller: str
    shards_done: list[str] = field(default_factory=list)
    shards_skipped: list[str] = field(default_factory=list)     # already labelled (resumed)
    samples: int = 0
    failures: dict[str, str] = field(default_factory=dict)      # key -> reason (this run)


def encode_scores(scores: np.ndarray) -> bytes:
    """float [C] -> raw little-endian float16 bytes (2 * C)."""
    return np.ascontiguousarray(np.asarray(scores).reshape(-1), dtype=SCORE_DTYPE).tobytes()


def decode_scores(data: bytes, num_classes: int | None = None) -> np.ndarray:
    """Raw member bytes -> float16 [C]; checks the length when num_classes is given."""
    scores = np.frombuffer(data, dtype=SCORE_DTYPE)
    if num_classes is not None and scores.size != num_classes:
        raise ValueError(f"score member holds {scores.size} values, the vocabulary has {num_classes}")
    return scores


def iter_samples(tar_path: str | Path) -> Iterator[Sample]:
    """Yield the samples of a WebDataset tar as {"__key__", ext: bytes} (members of a key are consecutive)."""
    for key, members in iter_tar_samples(Path(tar_path)):
        yield {"__key__": key, **members}

def shard_paths(shards_dir: str | Path) -> list[Path]:
    """The tars of a shard folder as dataset.json lists them (`deteclap.format.list_tars`).

    Raises:
        FileNotFoundError: no dataset.json, or it lists a tar that does not exist.
    """
    shards_dir = Path(shards_dir)
    load_dataset_json(shards_dir)                   # a folder without dataset.json is no shard folder
    paths = list_tars(shards_dir)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset.json names shards that do not exist: {missing}")
    return paths


def rewrite_index(tar_path: Path) -> Path:
    """(Re)write the index beside a tar from its members (after the tar was rewritten)."""
    return write_index(index_path(tar_path), tar_index_samples(tar_path))


def write_scores(tar_path: str | Path, labeller: str, scores: dict[str, np.ndarray]) -> None:
    """Rewrite one tar with `KEY.<labeller>.f16` members (replacing old ones), atomically, + its index.

    Args:
        scores: key -> float [C] for every sample of the tar (NaN rows for failed samples).
    Raises:
        KeyError: a sample of the tar has no scores.
    """
    tar_path = Path(tar_path)
    ext = score_member(labeller)
    tmp = tmp_path(tar_path)
    with tarfile.open(tar_path, "r") as src, tarfile.open(tmp, mode="w", format=tarfile.USTAR_FORMAT) as dst:
        # an old member of this labeller is left out; the new one follows the key's last kept member
        kept = [info for info in src if info.isfile() and split_member_name(info.name)[1] != ext]
        for pos, info in enumerate(kept):
            key = split_member_name(info.name)[0]
            dst.addfile(info, src.extractfile(info))
            last_of_key = pos + 1 == len(kept) or split_member_name(kept[pos + 1].name)[0] != key
            if last_of_key:
                if key not in scores:
                    raise KeyError(f"{tar_path.name}: no {labeller} scores for sample {key!r}")
                data = encode_scores(scores[key])
                new = tarfile.TarInfo(f"{key}.{ext}")
                new.size, new.mtime, new.mode = len(data), info.mtime, info.mode
                new.uid, new.gid, new.uname, new.gname = info.uid, info.gid, info.uname, info.gname
                dst.addfile(new, io.BytesIO(data))
    replace_synced(tmp, tar_path)
    rewrite_index(tar_path)


def read_scores(shards_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """All stored label scores of a shard folder.

    Returns:
        {key: {labeller: float16 array [C]}} with C = len(dataset.json label_vocabulary); a sample
        whose labelling failed holds NaN (see dataset.json `label_failures`).
    """
    meta = load_dataset_json(shards_dir)
    vocabulary = meta.get("label_vocabulary")
    num_classes = len(vocabulary) if vocabulary else None
    out: dict[str, dict[str, np.ndarray]] = {}
    for tar_path in shard_paths(shards_dir):
        for sample in iter_samples(tar_path):
            out[sample["__key__"]] = {labeller_of(ext): decode_scores(data, num_classes)
                                      for ext, data in sample.items() if is_score_member(ext) and ext.count(".") == 1}
    return out


def _record_shard(shards_dir: Path, labeller: str, tar_name: str, keys: Sequence[str], failures: dict[str, str],
                  settings: dict[str, Any], all_tars: list[str]) -> None:
    """Mark one shard as labelled in dataset.json (and the labeller as complete when all are).

    The failures of the shard's `keys` recorded by an earlier labelling are replaced by `failures`.
    """
    meta = load_dataset_json(shards_dir)
    done = meta.setdefault("labelled_shards", {}).setdefault(labeller, [])
    if tar_name not in done:
        done.append(tar_name)
    known = meta.setdefault("label_failures", {}).setdefault(labeller, {})
    for key in keys:                               # this labelling replaces the shard's earlier outcome
        known.pop(key, None)
    known.update(failures)
    meta.setdefault("labeller_settings", {})[labeller] = settings
    labellers = meta.get("labellers") or []
    if set(all_tars) <= set(done) and labeller not in labellers:
        labellers = [*labellers, labeller]
    meta["labellers"] = labellers
    save_dataset_json(shards_dir, meta)


def label_shards(shards_dir: str | Path, labeller: Labeller, batch_size: int = 16,
                 settings: dict[str, Any] | None = None, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> LabelReport:
    """Run a labeller over every not-yet-labelled shard of a folder and store its scores.

    Args:
        settings: what to record about the run in dataset.json `labeller_settings` (weights, ...).
        force: relabel shards already recorded as done.
        progress: called with the number of samples finished after each batch (e.g. tqdm.update).
    """
    shards_dir = Path(shards_dir)
    meta = load_dataset_json(shards_dir)
    vocabulary = meta.get("label_vocabulary")
    if not vocabulary:
        raise ValueError(f"{shards_dir}/{DATASET_JSON} has no label_vocabulary")
    score_member(labeller.name)
    tars = shard_paths(shards_dir)
    done = set(meta.get("labelled_shards", {}).get(labeller.name, []))
    report = LabelReport(labeller.name)
    for tar_path in tars:
        if tar_path.name in done and not force:
            report.shards_skipped.append(tar_path.name)
            continue
        scores: dict[str, np.ndarray] = {}
        failures: dict[str, str] = {}
        samples = list(iter_samples(tar_path))
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            batch_scores, reasons = labeller(batch)
            if batch_scores.shape != (len(batch), len(vocabulary)):
                raise ValueError(f"labeller {labeller.name} returned scores {batch_scores.shape}, "
                                 f"expected ({len(batch)}, {len(vocabulary)})")
            for sample, row, reason in zip(batch, batch_scores, reasons):
                key = sample["__key__"]
                if reason is not None:
                    row = np.full(len(vocabulary), np.nan, np.float32)
                    failures[key] = reason
                scores[key] = row
            if progress is not None:
                progress(len(batch))
        write_scores(tar_path, labeller.name, scores)
        _record_shard(shards_dir, labeller.name, tar_path.name, list(scores), failures, settings or {},
                      [p.name for p in tars])
        report.shards_done.append(tar_path.name)
        report.samples += len(samples)
        report.failures.update(failures)
    return report
