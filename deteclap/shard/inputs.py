"""Stage 1 of sharding: SRC (a folder of videos or a CSV / JSONL manifest) -> planned inputs.

`collect_inputs` reads SRC into `ClipInput`s and failure rows (reason codes: REASONS);
`plan_shards` sorts them by (split, key), drops duplicate keys and cuts the shards, so shard
membership is fixed before any clip is decoded (a restart plans the same shards).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from deteclap import storage
from deteclap.format import make_key

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
DEFAULT_SPLIT = "train"
SOURCE_CHARS = 200                   # of a manifest row without a path, shown as its `source`

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
    "bad_manifest_row": "a manifest row without a usable path or start / end",
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


def _folder_inputs(src: Path, split: str) -> list[ClipInput]:
    """Every video file under a folder (recursive); its id is the path relative to SRC without extension."""
    files = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir())
    inputs = []
    for path in files:
        rel = path.relative_to(src).with_suffix("").as_posix()
        inputs.append(ClipInput(str(path), rel, make_key(rel), split, shown_source=path.relative_to(src).as_posix()))
    return inputs


def _vggsound_input(row: dict, base: Path, split: str) -> ClipInput | dict:
    """A VGGSound-layout row -> its ClipInput, or a failure row."""
    try:
        start_s = int(float(row["start"]))
    except ValueError:
        return failure_row(row["ytid"], "bad_manifest_row", f"start_seconds {row['start']!r} is not a number", split)
    clip_id = f"{row['ytid']}_{start_s:06d}"
    found = _vggsound_file(base, row["ytid"], start_s)
    if found is None:
        return failure_row(clip_id, "missing_file", f"neither {clip_id}.* nor {row['ytid']}.* in {base}", split)
    path, start = found
    return ClipInput(str(path), clip_id, make_key(clip_id), split, start=start, classes=[row["label"]],
                     shown_source=path.name)


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
    if end is not None and end <= start:
        return failure_row(str(name), "bad_manifest_row", f"end {end:g} is not after start {start:g}", split)
    if not storage.is_url(path) and not Path(path).exists():
        return failure_row(str(name), "missing_file", f"{path} does not exist", split)
    return ClipInput(path, clip_id, make_key(clip_id), split, start=start, end=end, classes=_row_classes(row),
                     shown_source=str(row.get("shown_source") or name), member=str(row.get("member") or ""),
                     member_range=row.get("member_range"))


def collect_inputs(src: str | Path, split: str = DEFAULT_SPLIT, video_dir: str | Path | None = None
                   ) -> tuple[list[ClipInput], list[dict]]:
    """SRC (a folder of videos, a CSV / JSONL manifest, or a folder of video2dataset tars; each may be
    a URL, deteclap.storage) -> (inputs, planning failures).

    Inputs are not yet keyed to classes or shards (see plan_shards). `split` is used where a row
    names none. Raises ShardError when SRC itself is unusable.
    """
    from deteclap import sources

    src_text = storage.location(src)
    if sources.looks_like_video2dataset(src_text):
        rows, failures = sources.read_video2dataset(src_text, split)
        made = [_manifest_input(row, src_text, str(row.get("split") or split)) for row in rows]
        return ([m for m in made if isinstance(m, ClipInput)],
                failures + [m for m in made if not isinstance(m, ClipInput)])
    if storage.is_url(src_text):
        return _remote_inputs(src_text, split, video_dir)
    src = Path(src)
    if src.is_dir():
        return _folder_inputs(src, split), []
    if not src.is_file():
        raise ShardError(f"{src}: no such file or folder")
    if src.suffix.lower() not in MANIFEST_EXTENSIONS:
        raise ShardError(f"{src}: SRC must be a folder of videos or a .csv / .jsonl manifest")
    base = Path(video_dir) if video_dir else src.parent
    inputs: list[ClipInput] = []
    failures: list[dict] = []
    for row in read_rows(src):
        row_split = str(row.get("split") or split)
        if row.get("vggsound") and video_dir is None:
            raise ShardError(f"{src}: VGGSound-layout CSV needs --video-dir with the clips")
        made = _vggsound_input(row, base, row_split) if row.get("vggsound") else _manifest_input(row, base, row_split)
        (inputs if isinstance(made, ClipInput) else failures).append(made)
    return inputs, failures


def _remote_inputs(src: str, split: str, video_dir: str | Path | None) -> tuple[list[ClipInput], list[dict]]:
    """collect_inputs of a URL: a folder of videos (every file with a video extension under it) or a
    manifest (relative paths count from --video-dir, else from the manifest's folder URL)."""
    if storage.is_dir(src):
        ids = [(rel, rel.rsplit(".", 1)[0]) for rel in storage.walk_files(src)
               if Path(rel).suffix.lower() in VIDEO_EXTENSIONS]
        return [ClipInput(storage.join(src, rel), clip_id, make_key(clip_id), split, shown_source=rel)
                for rel, clip_id in ids], []
    if not storage.is_file(src):
        raise ShardError(f"{src}: no such file or folder")
    if Path(src).suffix.lower() not in MANIFEST_EXTENSIONS:
        raise ShardError(f"{src}: SRC must be a folder of videos or a .csv / .jsonl manifest")
    with storage.local_copy(src) as local:
        rows = read_rows(local)
    base = video_dir if video_dir else src.rsplit("/", 1)[0]
    inputs: list[ClipInput] = []
    failures: list[dict] = []
    for row in rows:
        if row.get("vggsound"):
            raise ShardError(f"{src}: VGGSound-layout CSVs are read from local disk (with --video-dir)")
        made = _manifest_input(row, base, str(row.get("split") or split))
        (inputs if isinstance(made, ClipInput) else failures).append(made)
    return inputs, failures


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
