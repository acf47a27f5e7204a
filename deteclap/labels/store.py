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
import json
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from deteclap.shard import DATASET_JSON, load_dataset_json  # noqa: F401 (store.load_dataset_json is used)

SCORE_DTYPE = np.dtype("<f2")      # raw little-endian float16
SCORE_SUFFIX = "f16"
INDEX_SUFFIX = ".idx"
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


def score_member(labeller: str) -> str:
    """The member extension of a labeller's scores, e.g. `clap.f16`."""
    if not labeller or "." in labeller or "/" in labeller:
        raise ValueError(f"bad labeller name {labeller!r}: non-empty, without '.' or '/'")
    return f"{labeller}.{SCORE_SUFFIX}"


def encode_scores(scores: np.ndarray) -> bytes:
    """float [C] -> raw little-endian float16 bytes (2 * C)."""
    return np.ascontiguousarray(np.asarray(scores).reshape(-1), dtype=SCORE_DTYPE).tobytes()


def decode_scores(data: bytes, num_classes: int | None = None) -> np.ndarray:
    """Raw member bytes -> float16 [C]; checks the length when num_classes is given."""
    scores = np.frombuffer(data, dtype=SCORE_DTYPE)
    if num_classes is not None and scores.size != num_classes:
        raise ValueError(f"score member holds {scores.size} values, the vocabulary has {num_classes}")
    return scores


def split_member_name(name: str) -> tuple[str, str]:
    """`dir/KEY.ext.more` -> (`dir/KEY`, `ext.more`) as WebDataset and DALI split names."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def iter_samples(tar_path: str | Path) -> Iterator[Sample]:
    """Yield the samples of a WebDataset tar as {"__key__", ext: bytes} (members of a key are consecutive)."""
    from deteclap.data.loader import iter_tar_samples

    for key, members in iter_tar_samples(Path(tar_path)):
        yield {"__key__": key, **members}

def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _tmp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _replace_synced(tmp: Path, path: Path) -> None:
    """fsync a finished tmp file, move it over `path` and fsync the folder."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file as a whole or not at all: tmp file, fsync, os.replace, fsync the folder."""
    tmp = _tmp_path(path)
    tmp.write_bytes(data)
    _replace_synced(tmp, path)


def save_dataset_json(shards_dir: str | Path, meta: dict[str, Any]) -> None:
    write_atomic(Path(shards_dir) / DATASET_JSON, (json.dumps(meta, indent=2) + "\n").encode())


def shard_paths(shards_dir: str | Path) -> list[Path]:
    """The tars of a shard folder: dataset.json's shard list when it names them, else *.tar sorted."""
    shards_dir = Path(shards_dir)
    meta = load_dataset_json(shards_dir)
    names = []
    for entry in meta.get("shards", []):
        if isinstance(entry, str):
            names.append(entry)
        elif isinstance(entry, dict):
            name = next((entry[k] for k in ("file", "name", "path", "tar") if isinstance(entry.get(k), str)), None)
            if name is not None:
                names.append(name)
    paths = [shards_dir / Path(name).name for name in names] if names else sorted(shards_dir.glob("*.tar"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"dataset.json names shards that do not exist: {missing}")
    return paths


def write_index(tar_path: Path) -> Path:
    """(Re)write the DALI index beside a tar (deteclap.shard's wds2idx v1.2 writer), atomically."""
    from deteclap.shard import index_text, read_tar_samples

    entries = [[(ext, info.offset_data, info.size, info.name) for ext, info in members.items()]
               for _, members in read_tar_samples(tar_path)]
    idx_path = tar_path.with_suffix(INDEX_SUFFIX)
    write_atomic(idx_path, index_text(entries).encode())
    return idx_path


def write_scores(tar_path: str | Path, labeller: str, scores: dict[str, np.ndarray]) -> None:
    """Rewrite one tar with `KEY.<labeller>.f16` members (replacing old ones), atomically, + its index.

    Args:
        scores: key -> float [C] for every sample of the tar (NaN rows for failed samples).
    Raises:
        KeyError: a sample of the tar has no scores.
    """
    tar_path = Path(tar_path)
    ext = score_member(labeller)
    tmp = _tmp_path(tar_path)
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
    _replace_synced(tmp, tar_path)
    write_index(tar_path)


def read_scores(shards_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """All stored label scores of a shard folder.

    Returns:
        {key: {labeller: float16 array [C]}} with C = len(dataset.json label_vocabulary); a sample
        whose labelling failed holds NaN (see dataset.json `label_failures`).
    """
    meta = load_dataset_json(shards_dir)
    vocabulary = meta.get("label_vocabulary")
    num_classes = len(vocabulary) if vocabulary else None
    suffix = "." + SCORE_SUFFIX
    out: dict[str, dict[str, np.ndarray]] = {}
    for tar_path in shard_paths(shards_dir):
        for sample in iter_samples(tar_path):
            out[sample["__key__"]] = {ext[: -len(suffix)]: decode_scores(data, num_classes)
                                      for ext, data in sample.items()
                                      if ext != "__key__" and ext.endswith(suffix) and ext.count(".") == 1}
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
