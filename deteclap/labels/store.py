"""Label scores stored inside the shards: `KEY.<labeller>.f16` members, resumable labelling runs.

A labeller scores a batch of samples (their raw members) and returns float scores [n, C] over
dataset.json's `label_vocabulary`. `label_shards` runs it over every tar of a shard folder and
rewrites each tar atomically (tmp file, fsync, os.replace) with one `KEY.<labeller>.f16` member
per sample (raw little-endian float16 [C]) placed right after the sample's other members, then
regenerates the tar's DALI index and records the shard in dataset.json (`labelled_shards`), so a
re-run skips finished shards. When every shard is done the labeller joins dataset.json
`labellers`.

A sample whose labelling failed (e.g. a corrupt audio member) gets an all-NaN member and its reason in
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

from deteclap.format import (DATASET_JSON, SCORE_DTYPE, FormatError, folder_lock, index_path, is_score_member,
                             iter_tar_samples, labeller_of, list_tars, load_dataset_json, local_shard, replace_synced,
                             save_dataset_json, scan_shard, score_member, split_member_name, storage,
                             tar_index_samples, tmp_path, write_index)
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
    shards_failed: dict[str, str] = field(default_factory=dict)  # tar -> why it was not labelled (damage)
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
    missing = [storage.location(p) for p in paths if not storage.is_file(p)]
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
    try:
        _copy_with_scores(tar_path, tmp, ext, labeller, scores)
    except BaseException:
        tmp.unlink(missing_ok=True)            # a failed rewrite leaves the tar as it was, and no tmp file
        raise
    replace_synced(tmp, tar_path)
    rewrite_index(tar_path)


def _copy_with_scores(tar_path: Path, tmp: Path, ext: str, labeller: str, scores: dict[str, np.ndarray]) -> None:
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
        done.sort()                 # replicas finish in any order: the file does not depend on it
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


@dataclass
class TarLabels:
    """What labelling one tar gave: its keys, {key: reason} of the samples whose labelling failed,
    and, for a damaged tar left as it was (nothing labelled), what is wrong with it."""
    keys: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    damage: str | None = None


def label_tar(tar_path: str | Path, labeller: Labeller, num_classes: int, batch_size: int = 16,
              progress: Callable[[int], None] | None = None) -> TarLabels:
    """Score every sample of one tar and rewrite it with the labeller's members (write_scores).

    A damaged tar (`deteclap.format.scan_shard`: truncated, a bad key, a stale index; or a stream
    that breaks off) is left as it was and its damage returned. A tar in object storage is copied
    here with its index, checked and rewritten, and put back whole (tar, then its index).
    """
    scores: dict[str, np.ndarray] = {}
    failures: dict[str, str] = {}
    with local_shard(tar_path) as local:
        scan = scan_shard(local)
        damage = scan.problems + [f"sample {key!r}: {reason}: {detail}" for key, (reason, detail) in scan.bad.items()]
        try:
            samples = [] if damage else list(iter_samples(local))
        except FormatError as err:
            damage = [str(err)]
        if damage:
            return TarLabels(damage="; ".join(damage))
        for start in range(0, len(samples), batch_size):
            batch = samples[start:start + batch_size]
            batch_scores, reasons = labeller(batch)
            if batch_scores.shape != (len(batch), num_classes):
                raise ValueError(f"labeller {labeller.name} returned scores {batch_scores.shape}, "
                                 f"expected ({len(batch)}, {num_classes})")
            for sample, row, reason in zip(batch, batch_scores, reasons):
                key = sample["__key__"]
                if reason is not None:
                    row = np.full(num_classes, np.nan, np.float32)
                    failures[key] = reason
                scores[key] = row
            if progress is not None:
                progress(len(batch))
        write_scores(local, labeller.name, scores)
        if storage.is_url(tar_path):
            storage.put_file(local, tar_path)
            storage.put_file(index_path(local), storage.location(index_path(Path(tar_path))))
    return TarLabels(list(scores), failures)


class LabelWorker:
    """One labelling replica (a Ray actor under `--distributor ray`): builds its labeller once with
    `make_labeller()` (on the actor's GPU), then labels one tar per call."""

    def __init__(self, make_labeller: Callable[[], Labeller], num_classes: int, batch_size: int):
        self.labeller = make_labeller()
        self.num_classes, self.batch_size = num_classes, batch_size

    def label(self, tar: str) -> TarLabels:
        return label_tar(tar, self.labeller, self.num_classes, self.batch_size)


@dataclass
class Distribution:
    """How `label_shards` spreads tars over replicas (deteclap.distribute): `local` labels in this
    process; `ray` runs `actors` replicas of `make_labeller()` with `num_gpus` (fractional allowed)
    and `num_cpus` each, one tar at a time per replica."""
    distributor: str = "local"
    make_labeller: Callable[[], Labeller] | None = None
    actors: int = 1
    num_gpus: float = 0
    num_cpus: float = 1
    ray_address: str | None = None


def label_shards(shards_dir: str | Path, labeller: Labeller | str, batch_size: int = 16,
                 settings: dict[str, Any] | None = None, force: bool = False,
                 progress: Callable[[int], None] | None = None, distribution: Distribution | None = None
                 ) -> LabelReport:
    """Run a labeller over every not-yet-labelled shard of a folder and store its scores.

    Args:
        labeller: the labeller, or (with a `ray` distribution, whose replicas build their own) its name.
        settings: what to record about the run in dataset.json `labeller_settings` (weights, ...).
        force: relabel shards already recorded as done.
        progress: called with the number of samples finished (after each batch; each tar under Ray).
        distribution: where the labelling runs (default: here). Whatever runs it, this process alone
            records finished shards in dataset.json, one at a time, so a rerun resumes.

    This process holds the folder's lock (`deteclap.format.folder_lock`) throughout, whatever runs
    the labelling: a second labeller or shard writer on the folder waits (a folder in object
    storage has no lock). A damaged tar (`deteclap.format.scan_shard`: truncated, a bad key, a
    stale index) is not labelled: it is named in `report.shards_failed`, left as it was, and the
    labeller does not join dataset.json `labellers`.
    """
    load_dataset_json(shards_dir)              # no shard folder: its own message, before the lock file
    name = labeller if isinstance(labeller, str) else labeller.name
    with folder_lock(storage.location(shards_dir), f"labeller {name}"):
        return _label_shards(Path(storage.location(shards_dir)), labeller, name, batch_size, settings, force,
                             progress, distribution or Distribution())


def _label_shards(shards_dir: Path, labeller: Labeller | str, name: str, batch_size: int,
                  settings: dict[str, Any] | None, force: bool, progress: Callable[[int], None] | None,
                  distribution: Distribution) -> LabelReport:
    meta = load_dataset_json(shards_dir)
    vocabulary = meta.get("label_vocabulary")
    if not vocabulary:
        raise ValueError(f"{storage.join(shards_dir, DATASET_JSON)} has no label_vocabulary")
    score_member(name)
    tars = shard_paths(shards_dir)
    done = set(meta.get("labelled_shards", {}).get(name, []))
    report = LabelReport(name)
    pending = []
    for tar_path in tars:
        if tar_path.name in done and not force:
            report.shards_skipped.append(tar_path.name)
        else:
            pending.append(tar_path)
    if distribution.distributor == "local":
        if isinstance(labeller, str):
            raise ValueError("local labelling needs the labeller itself, not its name")
        results = ((i, label_tar(tar, labeller, len(vocabulary), batch_size, progress))
                   for i, tar in enumerate(pending))
    else:
        from deteclap import distribute

        if distribution.make_labeller is None:
            raise ValueError(f"--distributor {distribution.distributor}: the replicas need make_labeller")
        results = distribute.run_actors(
            LabelWorker, (distribution.make_labeller, len(vocabulary), batch_size),
            [(storage.location(tar),) for tar in pending], method="label", distributor=distribution.distributor,
            actors=distribution.actors, num_gpus=distribution.num_gpus, num_cpus=distribution.num_cpus,
            ray_address=distribution.ray_address)
    for index, labelled in results:
        tar_path = pending[index]
        if labelled.damage is not None:
            report.shards_failed[tar_path.name] = labelled.damage
            continue
        _record_shard(shards_dir, name, tar_path.name, labelled.keys, labelled.failures, settings or {},
                      [p.name for p in tars])
        if progress is not None and distribution.distributor != "local":
            progress(len(labelled.keys))
        report.shards_done.append(tar_path.name)
        report.samples += len(labelled.keys)
        report.failures.update(labelled.failures)
    return report
