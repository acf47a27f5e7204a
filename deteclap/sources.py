"""Shard-writer inputs that are not plain local files: URLs and video2dataset's webdataset tars.

- A manifest row or a folder may name files by URL (`s3://`, `gs://`, `http(s)://`, through
  deteclap.format.storage); a worker copies such a file to a temporary local file before decoding it
  (PyAV seeks in the file; a 10 s clip is small next to its decoding cost).
- video2dataset (LAION's downloader: yt-dlp, URL lists, clip times) writes tars of samples
  `KEY.mp4` (or `.webm`, ...) + `KEY.json` (+ `KEY.txt`, the caption). Its clipping step cuts the
  clip out and records the span in the json as `clips: [[start, end]]`, so such a video is used
  whole (start 0); without `clips`, a `start` / `end` in the json (`--save_additional_columns`)
  is the segment of the whole video the tar holds. `label` / `labels` / `class` in the json give
  the classes, `split` the split, as in a manifest row.

`read_video2dataset(src)` lists such a folder of tars as manifest-like rows (read once by the
planner: only the tar headers and json members); `local_input(source, member)` gives a worker a
local file for one input, wherever it lives.
"""

from __future__ import annotations

import contextlib
import json
import os
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from deteclap.format import storage

# video members video2dataset writes (its encode_formats), matched case-insensitively
V2D_VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "mov", "avi", "m4v")
V2D_META_EXTENSION = "json"
MEMBER_SEPARATOR = "#"           # shown source of a tar member: `TAR#MEMBER`


def tars_in(folder: str) -> list[str]:
    """The .tar files directly in a folder or URL prefix, sorted (their locations; local ones absolute)."""
    root = folder if storage.is_url(folder) else str(Path(folder).resolve())
    return [storage.join(root, name) for name in storage.list_names(folder) if name.endswith(".tar")]


def looks_like_video2dataset(src: str) -> bool:
    """SRC is a folder (or URL prefix) holding .tar files and no dataset.json (not our own shards)."""
    if not storage.is_dir(src) and not storage.is_url(src):
        return False
    names = storage.list_names(src)
    return "dataset.json" not in names and any(name.endswith(".tar") for name in names)


def _split_member(name: str) -> tuple[str, str]:
    """`dir/KEY.ext.more` -> (`dir/KEY`, `ext.more`): webdataset's grouping on the base name's first dot."""
    folder, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext


def _v2d_row(tar: str, key: str, video: tuple[str, int, int], meta: dict, split: str) -> dict:
    """One video2dataset sample (its video member's name, data offset and size) -> a manifest-like row."""
    name, offset, size = video
    row = {"path": tar, "member": name, "member_range": [offset, size],
           "id": str(meta.get("key") or key.rsplit("/", 1)[-1]), "split": str(meta.get("split") or split),
           "shown_source": f"{storage.basename(tar)}{MEMBER_SEPARATOR}{name}"}
    clips = meta.get("clips")
    if clips:
        span = clips[0] if isinstance(clips[0], list | tuple) else clips
        row["start"], row["end"] = 0.0, max(0.0, float(span[1]) - float(span[0]))
    else:
        if meta.get("start") not in (None, ""):
            row["start"] = meta["start"]
        if meta.get("end") not in (None, ""):
            row["end"] = meta["end"]
    for column in ("labels", "label", "class"):
        if meta.get(column) not in (None, ""):
            row[column] = meta[column]
    return row


def read_video2dataset(src: str, split: str) -> tuple[list[dict], list[dict]]:
    """A folder of video2dataset tars -> (rows, failures): one row per sample with a video member
    (keys `path` (the tar), `member`, `member_range` ([data offset, size] in the tar), `id`, `split`,
    `shown_source`, and `start` / `end` /
    classes when the json gives them); a sample without a video member, or whose json does not
    parse, is a failure row (`not_media` / `bad_manifest_row`) instead."""
    rows, failures = [], []
    for tar in tars_in(src):
        samples: dict[str, dict[str, bytes | str]] = {}
        order: list[str] = []
        with storage.open_file(tar) as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key, ext = _split_member(info.name)
                if key not in samples:
                    samples[key] = {}
                    order.append(key)
                if ext.lower() == V2D_META_EXTENSION:
                    samples[key][ext.lower()] = archive.extractfile(info).read()
                else:
                    samples[key][ext.lower()] = (info.name, info.offset_data, info.size)
        for key in order:
            members = samples[key]
            video = next((members[ext] for ext in V2D_VIDEO_EXTENSIONS if ext in members), None)
            shown = f"{storage.basename(tar)}{MEMBER_SEPARATOR}{key}"
            if video is None:
                failures.append({"source": shown, "reason": "not_media", "split": split,
                                 "detail": f"no video member ({', '.join(V2D_VIDEO_EXTENSIONS)}); has "
                                           f"{sorted(members)}"})
                continue
            meta: dict = {}
            if V2D_META_EXTENSION in members:
                try:
                    meta = json.loads(members[V2D_META_EXTENSION])
                except (json.JSONDecodeError, UnicodeDecodeError) as err:
                    failures.append({"source": shown, "reason": "bad_manifest_row", "split": split,
                                     "detail": f"{key}.json is not JSON: {err}"})
                    continue
                if not isinstance(meta, dict):
                    meta = {}
            rows.append(_v2d_row(tar, key, video, meta, split))
    return rows, failures


@contextlib.contextmanager
def local_input(source: str, member: str = "", member_range: tuple[int, int] | None = None) -> Iterator[Path]:
    """A local file holding one input: `source` itself when it is a local file, else a temporary copy
    of the URL, or of the tar member `member` (its bytes at `member_range` = (data offset, size) in
    the tar at `source`: one ranged read, not a scan of the tar). Temporary files go on exit."""
    if not member:
        with storage.local_copy(source) as path:
            yield path
        return
    if member_range is None:
        raise ValueError(f"{source}{MEMBER_SEPARATOR}{member}: a tar member needs its byte range")
    offset, size = member_range
    with storage.open_file(source) as tar_file:
        tar_file.seek(offset)
        data = tar_file.read(size)
    if len(data) != size:
        raise OSError(f"{source}: member {member} is cut short ({len(data)} of {size} bytes): was the tar rewritten?")
    handle, name = tempfile.mkstemp(prefix="deteclap-", suffix=Path(member).suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        yield Path(name)
    finally:
        os.unlink(name)
