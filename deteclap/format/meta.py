"""`dataset.json`, the description of a shard folder: its schema, one reader and one writer."""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from deteclap.format import storage
from deteclap.format.spec import AUDIO_FORMATS, LEGACY_AUDIO_FORMAT, FormatError, audio_ext

DATASET_JSON = "dataset.json"
FORMAT_VERSION = 2      # 2: KEY.frames (the frame table of KEY.mp4) in every sample
# key -> what it holds (shards/FORMAT.md); every dataset.json written by deteclap holds these
DATASET_KEYS = {
    "format_version": "the shard format version (FORMAT_VERSION when written)",
    "shards": "[{split, tar, index, samples}]: the tars to read",
    "classes": "sorted class names of the manifest (KEY.cls is multi-hot over them)",
    "label_vocabulary": "the classes of the label-score members",
    "labellers": "labellers whose KEY.<labeller>.f16 every listed sample holds",
    "encoding": "the shard writer's encoding settings",
}
SHARD_ROW_KEYS = ("split", "tar", "index", "samples")


def entry_problem(name: Any) -> str | None:
    """Why a dataset.json `tar` / `index` entry cannot be used, or None: an entry is a relative path
    that stays in the shard folder (no absolute path, drive, `..` or empty name)."""
    if not isinstance(name, str) or not name or "\0" in name or name.endswith("/"):
        return f"shard entry {name!r} is not a file name"
    posix = PurePosixPath(name)
    if posix.is_absolute() or PureWindowsPath(name).drive or ".." in posix.parts:
        return f"shard entry {name!r} is outside the shard folder (absolute, or with '..'): only files in it are read"
    return None


def folder_file(folder: str | Path, name: Any) -> Path:
    """The file a dataset.json `tar` / `index` entry names, inside `folder`; the one resolver of
    those entries, so a hostile or hand-edited dataset.json cannot make a loader read, or the
    labeller rewrite, a file elsewhere. A folder in object storage gives a Path made from its URL
    (deteclap.format.storage.location turns it back into the URL).

    Raises:
        FormatError: an entry that is not a relative path inside the folder (`entry_problem`).
    """
    problem = entry_problem(name)
    if problem:
        raise FormatError(f"{storage.join(folder, DATASET_JSON)}: {problem}")
    return Path(folder) / PurePosixPath(name)


def load_dataset_json(folder: str | Path) -> dict[str, Any]:
    """A shard folder's dataset.json; the one reader of it.

    Raises:
        FileNotFoundError: no dataset.json (the message says how one is made).
        ValueError: it is not valid JSON, or not an object.
    """
    path = storage.join(folder, DATASET_JSON)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path} not found: is {storage.location(folder)} a shard folder written by "
                                "`python -m deteclap.shard`?")
    try:
        meta = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: not a JSON object")
    return meta


def folder_audio_format(meta: dict[str, Any]) -> str:
    """`pcm` or `flac` (AUDIO_FORMATS): the audio of the samples a dataset.json describes, its
    `encoding.audio_format`; folders written before that setting existed hold FLAC."""
    return meta.get("encoding", {}).get("audio_format") or LEGACY_AUDIO_FORMAT


def folder_audio_ext(meta: dict[str, Any]) -> str:
    """The audio member extension (`wav` or `flac`) of the samples a dataset.json describes."""
    return audio_ext(folder_audio_format(meta))


def dataset_json_bytes(meta: dict[str, Any]) -> bytes:
    """The bytes dataset.json is written as (one layout: sorted keys, indent 1)."""
    return (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()


def save_dataset_json(folder: str | Path, meta: dict[str, Any]) -> None:
    """Write a shard folder's dataset.json atomically (fsynced); the one writer of it."""
    from deteclap.format.tario import write_atomic

    write_atomic(Path(folder) / DATASET_JSON, dataset_json_bytes(meta))


def dataset_problems(meta: dict[str, Any]) -> list[str]:
    """What breaks the schema: missing keys, a format version this code does not know, bad shard rows."""
    problems = [f"dataset.json: missing `{key}`" for key in DATASET_KEYS if key not in meta]
    version = meta.get("format_version")
    if version is not None and (not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION):
        problems.append(f"dataset.json: format_version {version!r} is not one this code reads "
                        f"(1..{FORMAT_VERSION}): update deteclap or reshard")
    encoding = meta.get("encoding")
    audio = encoding.get("audio_format") if isinstance(encoding, dict) else None
    if audio is not None and audio not in AUDIO_FORMATS:
        problems.append(f"dataset.json: encoding.audio_format {audio!r} is not one of {sorted(AUDIO_FORMATS)}")
    for row in meta.get("shards", []) if isinstance(meta.get("shards"), list) else []:
        missing = [k for k in SHARD_ROW_KEYS if not isinstance(row, dict) or k not in row]
        if missing:
            problems.append(f"dataset.json: shard row {row!r} lacks {missing}")
            continue
        bad = [f"dataset.json: {problem}" for problem in map(entry_problem, (row["tar"], row["index"])) if problem]
        if not bad and PurePosixPath(row["index"]) != PurePosixPath(row["tar"]).with_suffix(".idx"):
            bad.append(f"dataset.json: shard row index {row['index']!r} is not the index of {row['tar']!r}")
        problems += bad
    return problems
