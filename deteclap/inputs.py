"""Inputs of the shard writer and of `deteclap embed`: SRC (a folder of videos, a CSV / JSONL
manifest, or a folder of video2dataset tars; local or at a URL, deteclap.sources) -> planned inputs.

`collect_inputs` reads SRC into `ClipInput`s and failure rows (reason codes: REASONS);
`plan_shards` sorts them by (split, key), drops duplicate keys and cuts the shards, so shard
membership is fixed before any clip is decoded (a restart plans the same shards).
"""

from __future__ import annotations

import csv
import json
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path

from deteclap.format import FormatError, check_split, make_key, storage

# what a folder SRC takes by name (FFmpeg reads them all); a file without an extension is taken when
# its first bytes are one of these containers' (CONTAINER_MAGIC); every other file is listed as ignored
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".ts", ".flv", ".mpg", ".mpeg", ".3gp", ".ogv",
                    ".wmv")
CONTAINER_MAGIC = {4: (b"ftyp",), 0: (b"\x1a\x45\xdf\xa3", b"RIFF", b"FLV", b"\x00\x00\x01\xba", b"OggS",
                                    b"\x30\x26\xb2\x75")}   # mp4/mov/3gp; mkv/webm, avi, flv, mpeg-ps, ogg, asf
TS_PACKET = 188                      # MPEG-TS: a 0x47 sync byte every 188 bytes
SNIFF_BYTES = 2 * TS_PACKET + 1
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
DEFAULT_SPLIT = "train"
SOURCE_CHARS = 200                   # of a manifest row without a path, shown as its `source`
# The longest segment a row may ask for: its audio is held whole (16 kHz float32 of every source
# channel while resampling, ~77 MB for 600 s of stereo); the video keeps 10 frames whatever the length.
MAX_SEGMENT_SECONDS = 600.0

REASONS = {
    "missing_file": "the manifest names a file that does not exist",
    "unreadable": "the file exists but cannot be read (permissions, I/O error, a folder)",
    "empty_file": "the file has 0 bytes",
    "not_media": "no media container recognised (e.g. a text file named .mp4)",
    "corrupt": "a media file that cannot be opened or decoded (truncated or damaged)",
    "truncated": "the streams end before the duration the container declares",
    "no_video": "no video stream, or no video frame in the segment",
    "no_audio": "no audio stream (use --allow-silent to store silence instead)",
    "too_short": "the segment is shorter than --min-seconds",
    "duplicate_key": "another input of the split has the same key",
    "bad_manifest_row": "a manifest row without a usable path, start / end or split name",
}


class ShardError(RuntimeError):
    """A problem with the whole job (bad SRC, OUT holding other settings), not with one clip."""


@dataclass
class ClipInput:
    """One planned sample: where it comes from and what it is."""
    source: str                       # path of the video file
    clip_id: str
    key: str
    split: str
    start: float = 0.0
    end: float | None = None          # None: start + settings.seconds
    classes: list[str] = field(default_factory=list)
    class_indices: list[int] = field(default_factory=list)
    shown_source: str = ""            # the path as the manifest / folder names it (goes to KEY.json)
    member: str = ""                  # the video member when `source` is a tar (video2dataset's layout)
    member_range: list[int] | None = None   # [data offset, size] of `member` in that tar


def failure_row(source: str, reason: str, detail: str, split: str, key: str | None = None) -> dict:
    """One row of failures.jsonl (the writer adds `shard`); `reason` is a key of REASONS."""
    row = {"source": source, "reason": reason, "detail": detail, "split": split}
    if key is not None:
        row["key"] = key
    return row


def _split_labels(value) -> list[str]:
    """A `labels` cell (a list, or names joined by ';') -> its class names, each once, in order."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        names = [str(v) for v in value]
    else:
        names = [part.strip() for part in str(value).split(";") if part.strip()]
    return list(dict.fromkeys(names))


def _row_classes(row: dict) -> list[str]:
    for column in ("labels", "label", "class"):
        if row.get(column) not in (None, ""):
            return _split_labels(row[column]) if column == "labels" else [str(row[column])]
    return []


def _vggsound_file(video_dir: Path, ytid: str, start: int) -> tuple[Path, float] | None:
    """VGGSound clip file: `{ytid}_{start:06d}.*` (already cut: start 0) or `{ytid}.*` (full video)."""
    for ext in VIDEO_EXTENSIONS:
        cut = video_dir / f"{ytid}_{start:06d}{ext}"
        if cut.exists():
            return cut, 0.0
    for ext in VIDEO_EXTENSIONS:
        full = video_dir / f"{ytid}{ext}"
        if full.exists():
            return full, float(start)
    return None


def _read_jsonl(src: Path) -> list[dict]:
    rows = []
    for line_no, line in enumerate(src.read_text(encoding="utf-8-sig").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ShardError(f"{src}:{line_no}: not JSON: {err}") from None
        if not isinstance(row, dict):
            raise ShardError(f"{src}:{line_no}: each line must be a JSON object")
        rows.append(row)
    return rows


def _read_csv(src: Path) -> list[dict]:
    with open(src, newline="", encoding="utf-8-sig") as f:
        table = [[cell.strip() for cell in r] for r in csv.reader(f) if r]
    if not table:
        return []
    header = table[0]
    if "path" in header or "file" in header:
        return [dict(zip(header, r)) for r in table[1:]]
    rows = []
    for line_no, r in enumerate(table, start=1):
        if len(r) < 3:
            raise ShardError(f"{src}:{line_no}: expected a header with `path` or `file`, or VGGSound rows "
                             "(youtube_id, start_seconds, label, split)")
        rows.append({"vggsound": True, "ytid": r[0], "start": r[1], "label": r[2],
                     "split": r[3] if len(r) > 3 else ""})
    return rows


def read_rows(src: Path) -> list[dict]:
    """Manifest rows as dicts. A CSV without a path/file header is read as VGGSound's layout.

    A UTF-8 byte order mark (Excel's "CSV UTF-8") is dropped; CSV cells are stripped of spaces.
    """
    return _read_jsonl(src) if src.suffix == ".jsonl" else _read_csv(src)


def _is_container_head(head: bytes) -> bool:
    """Whether a file's first SNIFF_BYTES are those of a video container of VIDEO_EXTENSIONS."""
    if any(head[at:at + len(magic)] == magic for at, magics in CONTAINER_MAGIC.items() for magic in magics):
        return True
    return len(head) == SNIFF_BYTES and head[0:1] == head[TS_PACKET:TS_PACKET + 1] == head[2 * TS_PACKET:] == b"G"


def _is_container(path: str | Path) -> bool:
    """Whether a file's (local, or at a URL) first bytes are those of a video container."""
    with storage.open_file(path) as handle:
        return _is_container_head(handle.read(SNIFF_BYTES))


def folder_files(src: Path) -> tuple[list[Path], list[dict]]:
    """(the video files under a folder, recursive and sorted; every other file as {"source", "reason"}).

    Taken: regular files with a VIDEO_EXTENSIONS name, or without an extension when their first bytes
    are a video container's. Ignored, each with its reason: other extensions (the reason is the
    extension, e.g. `.m4a`), files without one that are no video container, and what is not a
    regular file (a FIFO would block the writer forever; a socket, a device, a broken link)."""
    videos, ignored = [], []
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src).as_posix()
        try:
            mode = path.stat().st_mode
        except OSError as err:
            ignored.append({"source": rel, "reason": "unreadable", "detail": str(err)})
            continue
        if stat.S_ISDIR(mode):
            continue
        if not stat.S_ISREG(mode):
            ignored.append({"source": rel, "reason": "not a regular file", "detail": "a FIFO, socket or device"})
            continue
        why_not = _not_a_video(rel, path)
        if why_not is None:
            videos.append(path)
        else:
            ignored.append(why_not)
    return videos, ignored


def _not_a_video(rel: str, place: str | Path) -> dict | None:
    """None when the regular file `place` is taken as a video (a VIDEO_EXTENSIONS name, or no extension
    and a container's first bytes), else its ignored row {"source": rel, "reason", "detail"}."""
    ext = Path(rel).suffix.lower()
    try:
        if ext in VIDEO_EXTENSIONS or (not ext and _is_container(place)):
            return None
    except (OSError, storage.StorageError) as err:
        return {"source": rel, "reason": "unreadable", "detail": str(err)}
    return {"source": rel, "reason": ext or "no extension",
            "detail": "not a video container" if not ext else "not a video file extension"}


def remote_folder_files(src: str) -> tuple[list[str], list[dict]]:
    """`folder_files` of a folder in object storage: (video files as paths relative to it, sorted;
    every other file as {"source", "reason", "detail"}). An object store holds only regular files,
    so nothing can block; a file without an extension costs one ranged read to probe."""
    videos, ignored = [], []
    for rel in storage.walk_files(src):
        why_not = _not_a_video(rel, storage.join(src, rel))
        if why_not is None:
            videos.append(rel)
        else:
            ignored.append(why_not)
    return videos, ignored


def _folder_inputs(src: Path, split: str) -> list[ClipInput]:
    """Every video file under a folder (`folder_files`); its id is the path relative to SRC without extension."""
    inputs = []
    for path in folder_files(src)[0]:
        rel = path.relative_to(src).with_suffix("").as_posix()
        inputs.append(ClipInput(str(path), rel, make_key(rel), split, shown_source=path.relative_to(src).as_posix()))
    return inputs


def _vggsound_input(row: dict, base: Path, split: str) -> ClipInput | dict:
    """A VGGSound-layout row -> its ClipInput, or a failure row."""
    try:
        start_s = int(float(row["start"]))
    except (ValueError, OverflowError):
        start_s = -1
    if start_s < 0:
        return failure_row(row["ytid"], "bad_manifest_row",
                           f"start_seconds {row['start']!r} is not a number of seconds >= 0", split)
    clip_id = f"{row['ytid']}_{start_s:06d}"
    found = _vggsound_file(base, row["ytid"], start_s)
    if found is None:
        return failure_row(clip_id, "missing_file", f"neither {clip_id}.* nor {row['ytid']}.* in {base}", split)
    path, start = found
    return ClipInput(str(path), clip_id, make_key(clip_id), split, start=start, classes=[row["label"]],
                     shown_source=path.name)


def segment_problem(start: float, end: float | None) -> str | None:
    """Why a row's `start` / `end` (seconds) cannot be a segment, or None: both finite, start >= 0,
    end after start and at most MAX_SEGMENT_SECONDS later (inf, NaN or 1e12 would hold the writer)."""
    if not math.isfinite(start) or start < 0:
        return f"start {start:g} is not a time >= 0 s"
    if end is None:
        return None
    if not math.isfinite(end) or end <= start:
        return f"end {end:g} is not a time after start {start:g}"
    if end - start > MAX_SEGMENT_SECONDS:
        return (f"end {end:g} - start {start:g} = {end - start:g} s is longer than the {MAX_SEGMENT_SECONDS:g} s "
                "a segment may last (cut the video into clips)")
    return None


def _manifest_input(row: dict, base: str | Path, split: str) -> ClipInput | dict:
    """A manifest row with `path` / `file` -> its ClipInput, or a failure row.

    Relative paths count from `base` (a folder or URL). A file named by URL is not looked up here
    (a million HEAD requests): a missing one is a `missing_file` failure when its shard is written."""
    name = row.get("path") or row.get("file")
    if not name:
        return failure_row(json.dumps(row)[:SOURCE_CHARS], "bad_manifest_row", "no `path` or `file`", split)
    if storage.is_url(name) or Path(name).is_absolute():
        path = str(name)
    else:
        path = storage.join(base, name)
    clip_id = str(row.get("id") or Path(name).with_suffix("").as_posix())
    try:
        start = float(row.get("start") or 0.0)
        end = float(row["end"]) if row.get("end") not in (None, "") else None
    except (TypeError, ValueError):
        return failure_row(str(name), "bad_manifest_row",
                           f"start / end not numbers: {row.get('start')!r}, {row.get('end')!r}", split)
    problem = segment_problem(start, end)
    if problem:
        return failure_row(str(name), "bad_manifest_row", problem, split)
    if not storage.is_url(path) and not Path(path).exists():
        return failure_row(str(name), "missing_file", f"{path} does not exist", split)
    return ClipInput(path, clip_id, make_key(clip_id), split, start=start, end=end, classes=_row_classes(row),
                     shown_source=str(row.get("shown_source") or name), member=str(row.get("member") or ""),
                     member_range=row.get("member_range"))


def _row_inputs(src: str, rows: list[dict], base: str | Path, split: str, video_dir: str | Path | None
                ) -> tuple[list[ClipInput], list[dict]]:
    """Manifest(-like) rows -> (inputs, failures). A row's split becomes a file name, so one that is
    not a plain name (`check_split`) is a bad_manifest_row: nothing may land outside OUT."""
    inputs: list[ClipInput] = []
    failures: list[dict] = []
    for row in rows:
        row_split = str(row.get("split") or split)
        try:
            check_split(row_split)
        except FormatError as err:
            failures.append(failure_row(str(row.get("shown_source") or json.dumps(row)[:SOURCE_CHARS]),
                                        "bad_manifest_row", str(err), split))
            continue
        if row.get("vggsound"):
            if storage.is_url(src):
                raise ShardError(f"{src}: VGGSound-layout CSVs are read from local disk (with --video-dir)")
            if video_dir is None:
                raise ShardError(f"{src}: VGGSound-layout CSV needs --video-dir with the clips")
            made = _vggsound_input(row, Path(base), row_split)
        else:
            made = _manifest_input(row, base, row_split)
        (inputs if isinstance(made, ClipInput) else failures).append(made)
    return inputs, failures


def collect_inputs(src: str | Path, split: str = DEFAULT_SPLIT, video_dir: str | Path | None = None
                   ) -> tuple[list[ClipInput], list[dict]]:
    """SRC (a folder of videos, a CSV / JSONL manifest, or a folder of video2dataset tars; each may be
    a URL, deteclap.format.storage) -> (inputs, planning failures).

    Inputs are not yet keyed to classes or shards (see plan_shards). `split` is used where a row
    names none. Raises ShardError when SRC itself is unusable.
    """
    from deteclap import sources

    src_text = storage.location(src)
    if sources.looks_like_video2dataset(src_text):
        rows, failures = sources.read_video2dataset(src_text, split)
        inputs, more = _row_inputs(src_text, rows, src_text, split, None)
        return inputs, failures + more
    if storage.is_url(src_text):
        if storage.is_dir(src_text):
            return [ClipInput(storage.join(src_text, rel), rel.rsplit(".", 1)[0], make_key(rel.rsplit(".", 1)[0]),
                              split, shown_source=rel) for rel in remote_folder_files(src_text)[0]], []
        if not storage.is_file(src_text):
            raise ShardError(f"{src_text}: no such file or folder")
    elif Path(src).is_dir():
        return _folder_inputs(Path(src), split), []
    elif not Path(src).is_file():
        raise ShardError(f"{src}: no such file or folder")
    if Path(src_text).suffix.lower() not in MANIFEST_EXTENSIONS:
        raise ShardError(f"{src_text}: SRC must be a folder of videos or a .csv / .jsonl manifest")
    with storage.local_copy(src_text) as local:
        rows = read_rows(local)
    if video_dir:
        base: str | Path = video_dir if storage.is_url(video_dir) else Path(video_dir)
    else:                                       # relative paths count from the manifest's folder
        base = src_text.rsplit("/", 1)[0] if storage.is_url(src_text) else Path(src).parent
    return _row_inputs(src_text, rows, base, split, video_dir)


def ignored_files(src: str | Path) -> list[dict]:
    """The files of a folder SRC that collect_inputs does not take, each {"source", "reason",
    "detail"} (`folder_files`, `remote_folder_files`); [] for a manifest or video2dataset tars."""
    from deteclap import sources

    src_text = storage.location(src)
    if sources.looks_like_video2dataset(src_text):
        return []
    if storage.is_url(src_text):
        return remote_folder_files(src_text)[1] if storage.is_dir(src_text) else []
    return folder_files(Path(src))[1] if Path(src).is_dir() else []


def plan_shards(inputs: list[ClipInput], samples_per_shard: int
                ) -> tuple[dict[str, list[list[ClipInput]]], list[str], list[dict]]:
    """Sort by (split, key), drop duplicate keys, cut into shards; also the sorted class list.

    Returns ({split: [shard's inputs, ...]}, classes, duplicate-key failures).
    """
    classes = sorted({c for item in inputs for c in item.classes})
    index = {name: i for i, name in enumerate(classes)}
    by_split: dict[str, list[ClipInput]] = {}
    failures = []
    seen: set[tuple[str, str]] = set()
    for item in sorted(inputs, key=lambda it: (it.split, it.key, it.source)):
        if (item.split, item.key) in seen:
            failures.append(failure_row(item.shown_source, "duplicate_key",
                                        f"key {item.key!r} already used in split {item.split!r}", item.split))
            continue
        seen.add((item.split, item.key))
        item.class_indices = [index[c] for c in item.classes]
        by_split.setdefault(item.split, []).append(item)
    plan = {split: [items[i:i + samples_per_shard] for i in range(0, len(items), samples_per_shard)]
            for split, items in sorted(by_split.items())}
    return plan, classes, failures
