"""Stage 4: `--verify OUT`. Opens every tar dataset.json lists, checks its index, members, JSON and
sizes, decodes every video frame and the audio, and lists every problem found (nothing stops early
but a missing or unreadable dataset.json)."""

from __future__ import annotations

import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deteclap.format import (AUDIO_EXTS, CLASSES_EXT, FORMAT_VERSION, FRAME_TABLE_EXT, JSON_FIELDS, MEMBER_EXTENSIONS,
                             META_EXT, VIDEO_EXT, FormatError, check_index, dataset_problems, folder_file, local_shard,
                             folder_audio_ext, load_dataset_json, read_tar_samples, scan_shard, score_member, storage)
from deteclap.clip import DEFAULT_SHORT_SIDE, NUM_FRAMES, frame_table
from deteclap.shard.write import FAILURES_JSONL


@dataclass
class VerifyReport:
    ok: bool = True
    shards: int = 0
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.ok = False
        self.errors.append(text)


def _expected_members(meta_all: dict) -> set[str]:
    other_audio = set(AUDIO_EXTS) - {folder_audio_ext(meta_all)}       # one audio member per folder
    expected = (set(MEMBER_EXTENSIONS) - other_audio) | {score_member(name) for name in meta_all.get("labellers", [])}
    if meta_all.get("format_version", FORMAT_VERSION) < 2:
        expected.discard(FRAME_TABLE_EXT)         # version 1 shards hold no frame table
    return expected


def _sample_json(where: str, key: str, data: bytes, report: VerifyReport) -> dict | None:
    """The sample's KEY.json when it parses, holds every field and names this key; else None."""
    try:
        meta = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        report.error(f"{where}.json: not JSON: {err}")
        return None
    missing = [f for f in JSON_FIELDS if f not in meta]
    if missing:
        report.error(f"{where}.json: missing fields {missing}")
        return None
    if meta["key"] != key:
        report.error(f"{where}.json: key {meta['key']!r} != member key {key!r}")
    return meta


def _check_video(where: str, data: dict[str, bytes], meta: dict, encoding: dict, report: VerifyReport) -> None:
    from deteclap.data.decode import DecodeError, decode_video_frames
    from deteclap.data.mp4 import Mp4LayoutError

    num_frames = encoding.get("num_frames", NUM_FRAMES)
    try:
        frames = decode_video_frames(data[VIDEO_EXT])
        if frames.shape != (num_frames, meta["height"], meta["width"], 3):
            report.error(f"{where}.mp4: frames {frames.shape} != ({num_frames}, {meta['height']}, {meta['width']}, 3)")
        side = encoding.get("short_side", DEFAULT_SHORT_SIDE)
        if min(meta["height"], meta["width"]) != side:
            report.error(f"{where}.mp4: short side {min(meta['height'], meta['width'])} != the encoding's {side}")
        if encoding.get("crop", False) and meta["height"] != meta["width"]:
            report.error(f"{where}.mp4: {meta['width']}x{meta['height']} is not the encoding's square crop")
        if FRAME_TABLE_EXT in data and data[FRAME_TABLE_EXT] != frame_table(data[VIDEO_EXT], meta["width"],
                                                                          meta["height"]):
            report.error(f"{where}.{FRAME_TABLE_EXT}: does not match the frame table of the mp4")
    except (DecodeError, Mp4LayoutError) as err:
        report.error(f"{where}.mp4: {err}")


def _check_audio(where: str, data: dict[str, bytes], meta: dict, ext: str, report: VerifyReport) -> None:
    from deteclap.data.decode import DecodeError, decode_audio_member

    try:
        wave, rate = decode_audio_member(ext, data[ext])
        if rate != meta["sample_rate"] or len(wave) != meta["num_samples"]:
            report.error(f"{where}.{ext}: {len(wave)} samples at {rate} Hz != json "
                         f"{meta['num_samples']} at {meta['sample_rate']}")
    except DecodeError as err:
        report.error(f"{where}.{ext}: {err}")


def _check_classes(where: str, data: dict[str, bytes], meta: dict, classes: list[str], report: VerifyReport) -> None:
    cls = np.frombuffer(data[CLASSES_EXT], np.uint8)
    if len(cls) != len(classes) or not np.isin(cls, (0, 1)).all():
        report.error(f"{where}.cls: {len(cls)} bytes, values {sorted(set(cls.tolist()))}; expected "
                     f"{len(classes)} bytes of 0 / 1")
    elif sorted(classes[i] for i in np.flatnonzero(cls)) != sorted(meta["classes"]):
        report.error(f"{where}.cls: does not match json classes {meta['classes']}")


def _check_scores(where: str, data: dict[str, bytes], meta_all: dict, report: VerifyReport) -> None:
    vocab_bytes = 2 * len(meta_all.get("label_vocabulary", []))
    for name in meta_all.get("labellers", []):
        ext = score_member(name)
        if len(data[ext]) != vocab_bytes:
            report.error(f"{where}.{ext}: {len(data[ext])} bytes != {vocab_bytes}")


def _verify_sample(tar: tarfile.TarFile, where: str, key: str, members: dict[str, tarfile.TarInfo], meta_all: dict,
                   report: VerifyReport) -> None:
    """Check one sample (`where` = TAR:KEY names it in the errors)."""
    expected = _expected_members(meta_all)
    if set(members) != expected:
        report.error(f"{where}: members {sorted(members)} != expected {sorted(expected)}")
        return
    data = {ext: tar.extractfile(info).read() for ext, info in members.items()}
    meta = _sample_json(where, key, data[META_EXT], report)
    if meta is None:
        return
    _check_video(where, data, meta, meta_all.get("encoding", {}), report)
    _check_audio(where, data, meta, folder_audio_ext(meta_all), report)
    _check_classes(where, data, meta, meta_all.get("classes", []), report)
    _check_scores(where, data, meta_all, report)


def _check_folder(out: Path, meta_all: dict, report: VerifyReport) -> None:
    """No tar with samples outside dataset.json's list; failures.jsonl present."""
    listed = {s["tar"] for s in meta_all["shards"]}
    for extra in [out / name for name in storage.list_names(out) if name.endswith(".tar") and name not in listed]:
        try:
            if read_tar_samples(extra):
                report.error(f"{extra.name}: a tar with samples not listed in dataset.json")
        except (OSError, tarfile.TarError, FormatError) as err:
            report.error(f"{extra.name}: cannot read: {err}")
    if not storage.exists(out / FAILURES_JSONL):
        report.error(f"{FAILURES_JSONL} is missing")


def _verify_shard(out: Path, shard: dict, meta_all: dict, report: VerifyReport) -> None:
    """Check one listed shard: its damage, keys and index (`scan_shard`), then every sample."""
    tar_path = folder_file(out, shard["tar"])    # (dataset_problems refused entries leaving the folder)
    report.shards += 1
    try:
        with local_shard(tar_path) as local:
            _verify_tar(local, shard, meta_all, report)
    except (OSError, tarfile.TarError, FormatError, storage.StorageError) as err:
        report.error(f"{shard['tar']}: cannot read: {err}")


def _verify_tar(tar_path: Path, shard: dict, meta_all: dict, report: VerifyReport) -> None:
    scan = scan_shard(tar_path)              # damage, keys that cannot be used, a stale index
    for problem in scan.problems:
        report.error(f"{shard['tar']}: {problem}")
    for key, (reason, detail) in scan.bad.items():
        report.error(f"{shard['tar']}:{key}: {reason}: {detail}")
    problem = None if scan.problems else check_index(tar_path)
    if problem:
        report.error(problem)
    samples = read_tar_samples(tar_path)
    if len(samples) != shard["samples"]:
        report.error(f"{shard['tar']}: {len(samples)} samples, dataset.json says {shard['samples']}")
    keys = [k for k, _ in samples]
    if len(set(keys)) != len(keys):
        report.error(f"{shard['tar']}: a key appears in more than one group")
    with tarfile.open(tar_path) as tar:
        for key, members in samples:
            report.samples += 1
            _verify_sample(tar, f"{shard['tar']}:{key}", key, members, meta_all, report)


def verify_shards(out: str | Path, progress: bool = False) -> VerifyReport:
    """Open every tar of OUT, check members, decode video (all frames) and audio, check JSON and sizes.
    OUT may be a URL (deteclap.format.storage)."""
    out = Path(storage.location(out))
    report = VerifyReport()
    try:
        meta_all = load_dataset_json(out)
    except (OSError, ValueError) as err:
        report.error(str(err))
        return report
    for problem in dataset_problems(meta_all):
        report.error(problem)
    if not report.ok:
        return report
    _check_folder(out, meta_all, report)
    shards = meta_all["shards"]
    if progress:
        from tqdm import tqdm
        shards = tqdm(shards, desc="verify", unit="shard")
    for shard in shards:
        _verify_shard(out, shard, meta_all, report)
    return report
