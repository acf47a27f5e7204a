"""DALI's wds2idx index (format v1.2) of a tar: one writer, one reader, a check against its tar.

Line 1 is `v1.2 N` (N samples); then one line per sample, `ext offset size name` per member, with
the offset of the member's data in the tar. The writer's text is byte-identical to what DALI's
`wds2idx` writes for our tars.
"""

from __future__ import annotations

import functools
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from deteclap.format.spec import FormatError, key_problem, split_member_name
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
    # a tar made elsewhere may hold a member name that is not UTF-8: its bytes are kept as they are
    write_atomic(Path(path), index_text(samples).encode("utf-8", "surrogateescape"))
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
    lines = Path(path).read_text(errors="surrogateescape").splitlines()
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
    samples = read_index(idx) if idx.is_file() else tar_index_samples(tar)
    entries: dict[str, list[Entry]] = {}
    for sample in samples:
        for entry in sample:
            entries.setdefault(split_member_name(entry[3])[0], []).append(entry)
    return entries


def index_sample_count(tar: Path) -> int:
    """Samples in a tar: its index header's count when an index is present, else counted from the tar."""
    idx = index_path(tar)
    if idx.is_file():
        head = idx.read_text().split("\n", 1)[0].split()
        if len(head) == 2 and head[0] == INDEX_VERSION and head[1].isdigit():
            return int(head[1])
    return len(read_tar_samples(tar))


def check_index(tar: Path) -> str | None:
    """None when the index beside `tar` is the one its members give, else what is wrong (naming both)."""
    idx = index_path(tar)
    if not idx.is_file():
        return f"{idx.name}: missing (the index of {Path(tar).name})"
    if idx.read_text(errors="surrogateescape") != index_text(tar_index_samples(tar)):
        return f"{idx.name}: does not match {Path(tar).name} (a stale or foreign index)"
    return None


END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE      # a tar ends with two zero blocks


@dataclass
class ShardScan:
    """What a tar's member headers and the index beside it say about its samples (`scan_shard`)."""
    entries: dict[str, list[Entry]] = field(default_factory=dict)  # whole, usable samples, tar order
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (reason, detail), unusable
    problems: list[str] = field(default_factory=list)              # damage / index disagreement, named


def _header_samples(tar: Path) -> tuple[list[tuple[str, list[Entry]]], str | None]:
    """The tar's samples from its member headers (grouped by the key rule) and where it is damaged
    (None when whole). tarfile ends quietly at a header that is not one, or at a truncated one;
    here the bytes after the last member must be the end-of-archive blocks."""
    size = os.path.getsize(tar)
    samples: list[tuple[str, list[Entry]]] = []
    try:
        with tarfile.open(tar, "r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append((ext, info.offset_data, info.size, info.name))
                if info.offset_data + info.size > size:
                    return samples, (f"member {info.name!r} declares {info.size} bytes at byte {info.offset_data}, "
                                     f"past the end of the file ({size} bytes): truncated or damaged")
            end = archive.offset
        with open(tar, "rb") as handle:
            handle.seek(end)
            tail = handle.read(END_OF_ARCHIVE)
    except (tarfile.TarError, EOFError) as err:
        return samples, f"unreadable after {len(samples)} samples: {err}"
    if tail != bytes(END_OF_ARCHIVE):
        what = "truncated" if len(tail) < END_OF_ARCHIVE else "a damaged header"
        return samples, f"byte {end} is not a member header nor the end of the archive ({what}): its members end there"
    return samples, None


def _index_holds(tar: Path, samples: list[list[Entry]], size: int) -> bool:
    """Whether the tar is exactly what its index lists: each member's header right after the member
    before (nothing unlisted between them) names the member and its size, and the end-of-archive
    blocks follow the last. A few us per member (one 512-byte read each), far less than tarfile's
    parse; anything else (a folder entry, a long-name header, any disagreement) returns False and
    the tar is read with tarfile."""
    block = tarfile.BLOCKSIZE
    position = 0
    with open(tar, "rb") as handle:
        fd = handle.fileno()
        for sample in samples:
            for _, offset, length, name in sample:
                header = os.pread(fd, block, position)
                if offset != position + block or len(header) != block or header[156:157] not in (b"0", b"\0"):
                    return False
                stored = header[:100].split(b"\0", 1)[0]
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    stored = prefix + b"/" + stored
                try:
                    stored_size = int(header[124:136].strip(b" \0") or b"0", 8)
                except ValueError:
                    return False
                if stored != name.encode("utf-8", "surrogateescape") or stored_size != length:
                    return False
                position = offset + -(-length // block) * block
        return position + END_OF_ARCHIVE <= size and os.pread(fd, END_OF_ARCHIVE, position) == bytes(END_OF_ARCHIVE)


@functools.lru_cache(maxsize=4096)
def _scan(tar: str, size: int, mtime_ns: int, idx_mtime_ns: int) -> ShardScan:
    path = Path(tar)
    if idx_mtime_ns >= 0:                       # the fast path: a whole tar that its index describes
        try:
            listed = read_index(index_path(path))
        except FormatError:
            listed = []
        if listed and _index_holds(path, listed, size):
            scan = ShardScan()
            for sample in listed:
                key = split_member_name(sample[0][3])[0]
                problem = key_problem(key)
                if problem:
                    scan.bad[key] = ("bad_key", problem)
                else:
                    scan.entries.setdefault(key, []).extend(sample)
            return scan
    samples, damage = _header_samples(path)
    scan = ShardScan()
    if damage:
        scan.problems.append(f"{path.name}: {damage}")
    for position, (key, members) in enumerate(samples):
        problem = key_problem(key)
        if damage and position == len(samples) - 1:
            scan.bad[key] = ("corrupt_tar", f"{path.name} is damaged inside this sample: {damage}")
        elif problem:
            scan.bad[key] = ("bad_key", problem)
        else:
            scan.entries[key] = members
    idx = index_path(path)
    if idx_mtime_ns < 0:
        return scan
    if idx.read_text(errors="surrogateescape") == index_text([members for _, members in samples]):
        return scan
    scan.problems.append(f"{idx.name}: does not match {path.name} (a stale or foreign index, or a damaged tar)")
    try:
        listed = read_index(idx)
    except FormatError as err:
        scan.problems.append(str(err))
        listed = []
    headers = {key for key, _ in samples}
    for sample in listed if damage else []:     # what only the index knows: samples the damage cut off
        key = split_member_name(sample[0][3])[0] if sample else ""
        if key and key not in headers:
            scan.bad.setdefault(key, ("corrupt_tar", f"listed by {idx.name}, cut off by the damage to {path.name}"))
    return scan


def scan_shard(tar: Path) -> ShardScan:
    """A tar's samples read from its member headers, checked: whole samples with usable keys in
    `entries`; in `bad` (key -> (reason, detail)) a sample cut by damage (`corrupt_tar`), one whose
    key `key_problem` refuses (`bad_key`), and one the index of a damaged tar lists past the damage
    (`corrupt_tar`); in `problems` the tar's damage and an index that disagrees with the tar (stale,
    foreign: the tar's headers hold its samples, so nothing is lost), each naming its file.

    Reads every member header (no member data); cached per file size and modification time. The
    result is shared: do not modify it.
    """
    tar = Path(tar)
    stat = tar.stat()
    idx = index_path(tar)
    idx_mtime = idx.stat().st_mtime_ns if idx.is_file() else -1
    return _scan(str(tar), stat.st_size, stat.st_mtime_ns, idx_mtime)
