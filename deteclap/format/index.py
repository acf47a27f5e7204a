"""DALI's wds2idx index (format v1.2) of a tar: one writer, one reader, a check against its tar.

Line 1 is `v1.2 N` (N samples); then one line per sample, `ext offset size name` per member, with
the offset of the member's data in the tar. The writer's text is byte-identical to what DALI's
`wds2idx` writes for our tars.
"""

from __future__ import annotations

from pathlib import Path

from deteclap import storage
from deteclap.format.spec import FormatError, split_member_name
from deteclap.format.tario import read_tar_samples, write_atomic

INDEX_VERSION = "v1.2"
INDEX_SUFFIX = ".idx"
Entry = tuple[str, int, int, str]   # (ext, data offset, size, member name): one member of a sample


def index_path(tar: Path) -> Path:
    """The index file that belongs beside a tar."""
    return Path(tar).with_suffix(INDEX_SUFFIX)


def index_text(samples: list[list[Entry]]) -> str:
    """The text of an index holding these samples (one may be listed more than once)."""
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    lines += [" ".join(f"{ext} {offset} {size} {name}" for ext, offset, size, name in sample) for sample in samples]
    return "\n".join(lines) + "\n"


def write_index(path: Path, samples: list[list[Entry]]) -> Path:
    """Write an index (atomically, fsynced); the one writer of index files. Returns `path`."""
    write_atomic(Path(path), index_text(samples).encode())
    return Path(path)


def tar_index_samples(tar: Path) -> list[list[Entry]]:
    """The index entries of a tar, read from its member headers."""
    return [[(ext, info.offset_data, info.size, info.name) for ext, info in members.items()]
            for _, members in read_tar_samples(tar)]


def read_index(path: Path) -> list[list[Entry]]:
    """An index file's samples in order; the one reader of index files.

    Raises:
        FormatError: not a v1.2 index, or a line that is not groups of `ext offset size name`.
    """
    lines = storage.read_text(path).splitlines()
    head = lines[0].split() if lines else []
    if len(head) != 2 or head[0] != INDEX_VERSION or not head[1].isdigit():
        raise FormatError(f"{path}: not a {INDEX_VERSION} wds2idx index (first line {lines[:1]})")
    samples = []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields or len(fields) % 4:
            raise FormatError(f"{path}:{line_no}: expected groups of `ext offset size name`")
        try:
            groups = zip(*[iter(fields)] * 4)
            samples.append([(ext, int(offset), int(size), name) for ext, offset, size, name in groups])
        except ValueError:
            raise FormatError(f"{path}:{line_no}: an offset or size is not a number") from None
    if len(samples) != int(head[1]):
        raise FormatError(f"{path}: lists {len(samples)} samples, its header says {head[1]}")
    return samples


def index_entries(tar: Path) -> dict[str, list[Entry]]:
    """{key: [(ext, offset, size, name)]} of a tar in tar order, from its index when present, else
    from its headers; keys by the key rule (`split_member_name`)."""
    idx = index_path(tar)
    samples = read_index(idx) if storage.is_file(idx) else tar_index_samples(tar)
    entries: dict[str, list[Entry]] = {}
    for sample in samples:
        for entry in sample:
            entries.setdefault(split_member_name(entry[3])[0], []).append(entry)
    return entries


def index_sample_count(tar: Path) -> int:
    """Samples in a tar: its index header's count when an index is present, else counted from the tar."""
    idx = index_path(tar)
    if storage.is_file(idx):
        head = storage.read_text(idx).split("\n", 1)[0].split()
        if len(head) == 2 and head[0] == INDEX_VERSION and head[1].isdigit():
            return int(head[1])
    return len(read_tar_samples(tar))


def check_index(tar: Path) -> str | None:
    """None when the index beside `tar` is the one its members give, else what is wrong (naming both)."""
    idx = index_path(tar)
    if not storage.is_file(idx):
        return f"{idx.name}: missing (the index of {Path(tar).name})"
    if storage.read_text(idx) != index_text(tar_index_samples(tar)):
        return f"{idx.name}: does not match {Path(tar).name} (a stale or foreign index)"
    return None
