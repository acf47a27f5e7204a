"""DALI's wds2idx index (format v1.2) of a tar: one writer, one reader, a check against its tar.

Line 1 is `v1.2 N` (N samples); then one line per sample, `ext offset size name` per member, with
the offset of the member's data in the tar. The writer's text is byte-identical to what DALI's
`wds2idx` writes for our tars.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deteclap.format import storage
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
    lines = storage.read_text(path, errors="surrogateescape").splitlines()
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
        head = storage.read_text(idx, errors="surrogateescape").split("\n", 1)[0].split()
        if len(head) == 2 and head[0] == INDEX_VERSION and head[1].isdigit():
            return int(head[1])
    return len(read_tar_samples(tar))


def check_index(tar: Path) -> str | None:
    """None when the index beside `tar` is the one its members give, else what is wrong (naming both)."""
    idx = index_path(tar)
    if not storage.is_file(idx):
        return f"{idx.name}: missing (the index of {Path(tar).name})"
    if storage.read_text(idx, errors="surrogateescape") != index_text(tar_index_samples(tar)):
        return f"{idx.name}: does not match {Path(tar).name} (a stale or foreign index)"
    return None


END_OF_ARCHIVE = 2 * tarfile.BLOCKSIZE      # a tar ends with two zero blocks


@dataclass
class ShardScan:
    """What a tar's member headers and the index beside it say about its samples (`scan_shard`)."""
    entries: dict[str, list[Entry]] = field(default_factory=dict)  # whole, usable samples, tar order
    bad: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (reason, detail), unusable
    problems: list[str] = field(default_factory=list)              # damage / index disagreement, named


def _header_samples(tar: str) -> tuple[list[tuple[str, list[Entry]]], str | None]:
    """The tar's samples from its member headers (grouped by the key rule) and where it is damaged
    (None when whole). tarfile ends quietly at a header that is not one, or at a truncated one;
    here the bytes after the last member must be the end-of-archive blocks. `tar` may be a URL."""
    size = storage.size(tar)
    samples: list[tuple[str, list[Entry]]] = []
    try:
        with storage.open_file(tar) as handle:
            with tarfile.open(fileobj=handle, mode="r:") as archive:
                for info in archive:
                    if not info.isfile():
                        continue
                    key, ext = split_member_name(info.name)
                    if not samples or samples[-1][0] != key:
                        samples.append((key, []))
                    samples[-1][1].append((ext, info.offset_data, info.size, info.name))
                    if info.offset_data + info.size > size:
                        return samples, (f"member {info.name!r} declares {info.size} bytes at byte "
                                         f"{info.offset_data}, past the end of the file ({size} bytes): truncated "
                                         "or damaged")
                end = archive.offset
            handle.seek(end)
            tail = handle.read(END_OF_ARCHIVE)
    except (tarfile.TarError, EOFError) as err:
        return samples, f"unreadable after {len(samples)} samples: {err}"
    if tail != bytes(END_OF_ARCHIVE):
        what = "truncated" if len(tail) < END_OF_ARCHIVE else "a damaged header"
        return samples, f"byte {end} is not a member header nor the end of the archive ({what}): its members end there"
    return samples, None


def _index_holds(tar: str, samples: list[list[Entry]], size: int) -> bool:
    """Whether the tar is exactly what its index lists: each member's header right after the member
    before (nothing unlisted between them) names the member and its size, and the end-of-archive
    blocks follow the last. A few us per member (one 512-byte read each), far less than tarfile's
    parse; anything else (a folder entry, a long-name header, any disagreement) returns False and
    the tar is read with tarfile.

    A tar in object storage is not read here (a request per member would cost more than reading the
    tar): the index must lay the members out one after another as a USTAR tar does and end within
    the object's size. The loaders still compare what they stream with the index."""
    block = tarfile.BLOCKSIZE
    position = 0
    remote = storage.is_url(tar)
    with contextlib.nullcontext() if remote else open(tar, "rb") as handle:
        for sample in samples:
            for _, offset, length, name in sample:
                if offset != position + block:
                    return False
                if not remote:
                    header = os.pread(handle.fileno(), block, position)
                    if len(header) != block or header[156:157] not in (b"0", b"\0"):
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
        if position + END_OF_ARCHIVE > size:
            return False
        return remote or os.pread(handle.fileno(), END_OF_ARCHIVE, position) == bytes(END_OF_ARCHIVE)


Stamp = tuple[int, str]


@functools.lru_cache(maxsize=4096)
def _scan(tar: str, tar_stamp: Stamp, idx_stamp: Stamp | None) -> ShardScan:
    idx = storage.location(index_path(Path(tar)))
    if idx_stamp is not None:                   # the fast path: a whole tar that its index describes
        try:
            listed = read_index(idx)
        except FormatError:
            listed = []
        if listed and _index_holds(tar, listed, tar_stamp[0]):
            scan = ShardScan()
            for sample in listed:
                key = split_member_name(sample[0][3])[0]
                problem = key_problem(key)
                if problem:
                    scan.bad[key] = ("bad_key", problem)
                else:
                    scan.entries.setdefault(key, []).extend(sample)
            return scan
    samples, damage = _header_samples(tar)
    name, idx_name = storage.basename(tar), storage.basename(idx)
    scan = ShardScan()
    if damage:
        scan.problems.append(f"{name}: {damage}")
    for position, (key, members) in enumerate(samples):
        problem = key_problem(key)
        if damage and position == len(samples) - 1:
            scan.bad[key] = ("corrupt_tar", f"{name} is damaged inside this sample: {damage}")
        elif problem:
            scan.bad[key] = ("bad_key", problem)
        else:
            scan.entries[key] = members
    if idx_stamp is None:
        return scan
    if storage.read_text(idx, errors="surrogateescape") == index_text([members for _, members in samples]):
        return scan
    scan.problems.append(f"{idx_name}: does not match {name} (a stale or foreign index, or a damaged tar)")
    try:
        listed = read_index(idx)
    except FormatError as err:
        scan.problems.append(str(err))
        listed = []
    headers = {key for key, _ in samples}
    for sample in listed if damage else []:     # what only the index knows: samples the damage cut off
        key = split_member_name(sample[0][3])[0] if sample else ""
        if key and key not in headers:
            scan.bad.setdefault(key, ("corrupt_tar", f"listed by {idx_name}, cut off by the damage to {name}"))
    return scan


@contextlib.contextmanager
def local_shard(tar: Path) -> Iterator[Path]:
    """The tar with its index beside it as local files: themselves, or (a shard in object storage)
    copies under their own names in a temporary folder (removed on exit), for work that reads a tar
    many times or rewrites it (--verify, the labeller)."""
    if not storage.is_url(tar):
        yield Path(tar)
        return
    with tempfile.TemporaryDirectory(prefix="deteclap-shard-") as folder:
        local = Path(folder) / storage.basename(tar)
        storage.download(tar, local)
        if storage.is_file(index_path(Path(tar))):
            storage.download(index_path(Path(tar)), index_path(local))
        yield local


def scan_shard(tar: Path) -> ShardScan:
    """A tar's samples read from its member headers, checked: whole samples with usable keys in
    `entries`; in `bad` (key -> (reason, detail)) a sample cut by damage (`corrupt_tar`), one whose
    key `key_problem` refuses (`bad_key`), and one the index of a damaged tar lists past the damage
    (`corrupt_tar`); in `problems` the tar's damage and an index that disagrees with the tar (stale,
    foreign: the tar's headers hold its samples, so nothing is lost), each naming its file.

    Reads every member header (no member data); cached per file size and version (modification
    time; an object's ETag). A tar in object storage whose index lays out its members is taken
    from the index without reading the tar (`_index_holds`). The result is shared: do not modify it.

    Raises:
        FileNotFoundError: no such tar.
    """
    tar = storage.location(tar)
    tar_stamp = storage.stamp(tar)
    if tar_stamp is None:
        raise FileNotFoundError(f"{tar}: no such shard")
    return _scan(tar, tar_stamp, storage.stamp(index_path(Path(tar))))
