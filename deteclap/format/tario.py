"""Tars of samples and the files beside them: reading samples by the key rule, writing a tar with
fixed metadata, listing a folder's tars, atomic writes that survive a crash (fsynced), and the lock
a job takes on a shard folder it changes."""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

from deteclap.format import storage
from deteclap.format.meta import DATASET_JSON, folder_file, load_dataset_json
from deteclap.format.spec import MEMBER_EXTENSIONS, FormatError, member_name, split_member_name

TAR_MEMBER_MODE = 0o644


def tmp_path(path: Path) -> Path:
    """The temporary name a file is written under before it replaces `path`: `.NAME.tmp` beside it."""
    return path.with_name(f".{path.name}.tmp")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_synced(tmp: Path, path: Path) -> None:
    """fsync a finished tmp file, move it over `path` and fsync the folder: after a crash `path` is
    the old file or the new one, whole."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file as a whole or not at all: tmp file, fsync, os.replace, fsync the folder (in
    object storage: one PUT, which is atomic)."""
    if storage.is_url(path):
        storage.write_bytes(path, data)
        return
    tmp = tmp_path(path)
    tmp.write_bytes(data)
    replace_synced(tmp, path)


@contextlib.contextmanager
def open_tar(path: Path, mode: str = "r") -> Iterator[tarfile.TarFile]:
    """tarfile.open for a local path or a URL (deteclap.format.storage; `r|` streams it in one pass)."""
    if not storage.is_url(path):
        with tarfile.open(path, mode) as tar:
            yield tar
        return
    with storage.open_file(path) as handle, tarfile.open(fileobj=handle, mode=mode) as tar:
        yield tar


def read_tar_samples(path: Path) -> list[tuple[str, dict[str, tarfile.TarInfo]]]:
    """A tar's samples in order: [(key, {ext: TarInfo})], consecutive members grouped by the key rule
    (`split_member_name`); entries that are not files are left out."""
    samples: list[tuple[str, dict[str, tarfile.TarInfo]]] = []
    try:
        with open_tar(path) as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, ext = split_member_name(info.name)
                if not samples or samples[-1][0] != key:
                    samples.append((key, {}))
                samples[-1][1][ext] = info
    except (tarfile.TarError, EOFError) as err:
        raise FormatError(f"{storage.location(path)}: damaged tar: {err}") from None
    return samples


def iter_tar_samples(tar: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {ext: bytes}) for consecutive members sharing a key, in tar order (streamed, one pass);
    names without an extension are left out, as WebDataset does. `tar` may be a URL (streamed).

    Raises:
        FormatError: the tar is damaged (truncated inside a member, a header that is not one, a
            member declaring more bytes than the file holds), naming the tar, the byte and the last
            whole sample; the samples before it were yielded, the one it cuts is not.
    """
    key, members, last = None, {}, None
    size = storage.size(tar)
    try:
        with open_tar(tar, mode="r|") as archive:
            for member in archive:
                this_key, ext = split_member_name(member.name)
                if not member.isfile() or not ext:
                    continue
                if member.offset_data + member.size > size:     # never read a huge declared size
                    raise FormatError(f"member {member.name!r} declares {member.size} bytes at byte "
                                      f"{member.offset_data}, past the tar's end ({size} bytes)")
                if this_key != key and key is not None:
                    yield key, members
                    members, last = {}, key
                key = this_key
                members[ext] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, FormatError) as err:
        where = f"after sample {last!r}" if last is not None else "in its first sample"
        raise FormatError(f"{storage.location(tar)}: damaged tar {where}: {err}") from None
    if key is not None:
        yield key, members


def _member_order(ext: str) -> tuple[int, str]:
    return (MEMBER_EXTENSIONS.index(ext) if ext in MEMBER_EXTENSIONS else len(MEMBER_EXTENSIONS), ext)


def write_tar(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> list[list[tuple[str, int, int, str]]]:
    """Write samples [(key, {ext: bytes})] as a USTAR tar with fixed metadata (mtime 0, uid / gid 0,
    mode 644; members in MEMBER_EXTENSIONS order, then others sorted), so equal samples give equal
    bytes. Returns the index entries per sample: [(ext, data offset, size, member name)]."""
    entries = []
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for key, members in samples:
            sample_entries = []
            for ext in sorted(members, key=_member_order):
                data = members[ext]
                info = tarfile.TarInfo(member_name(key, ext))
                info.size, info.mtime, info.mode = len(data), 0, TAR_MEMBER_MODE
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                header_start = tar.offset
                tar.addfile(info, io.BytesIO(data))   # USTAR: one 512-byte header, then the data
                sample_entries.append((ext, header_start + tarfile.BLOCKSIZE, len(data), info.name))
            entries.append(sample_entries)
    return entries


def list_tars(folder: str | Path, split: str | None = None) -> list[Path]:
    """The tars of a shard folder (of one split, or all): those its dataset.json lists (a shard whose
    every input failed keeps its empty tar unlisted), sorted; without dataset.json its
    `{split}-*.tar` (or `*.tar`). The one rule for reading a folder's shard list.

    Raises:
        FormatError: a dataset.json entry that leaves the folder (`folder_file`).
    """
    folder = Path(folder)
    if storage.is_file(folder / DATASET_JSON):
        rows = load_dataset_json(folder).get("shards", [])
        return sorted(folder_file(folder, row["tar"]) for row in rows if split is None or row["split"] == split)
    if storage.is_url(folder):
        return [folder / name for name in storage.list_names(folder)
                if name.endswith(".tar") and (split is None or name.startswith(f"{split}-"))]
    return sorted(folder.glob("*.tar" if split is None else f"{split}-*.tar"))


LOCK_FILE = ".deteclap.lock"


@contextlib.contextmanager
def folder_lock(folder: str | Path, job: str) -> Iterator[None]:
    """Hold the lock of a shard folder while a job changes it (the shard writer, the labeller).

    A second job on the same folder (another split into the same OUT, a second labeller) prints who
    holds the lock and waits until it is free, so that neither loses the other's dataset.json rows
    nor removes its temporary files. The lock is an flock on `FOLDER/.deteclap.lock`, which the
    kernel releases when its holder ends, however it ends (kill -9 included). The holder removes the
    file when it is done (a job that got the lock on a file removed meanwhile takes it again on the
    new one), so a folder nobody changes holds none.

    Object stores have no lock: a folder given by URL is not locked (run one job at a time on it;
    shards/FORMAT.md says so). Distributed jobs take the lock in the driver, which alone writes
    dataset.json.
    """
    if storage.is_url(folder):
        yield
        return
    path = Path(folder) / LOCK_FILE
    told = False
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not told:
                handle.seek(0)
                holder = handle.read().strip() or "another job"
                print(f"waiting for {path}: {holder} is changing this shard folder; this {job} starts when it "
                      "ends", file=sys.stderr, flush=True)
                told = True
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            same = os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()                          # locked a file its holder removed: take the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{job} (pid {os.getpid()})\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)            # before unlocking: a waiter then sees it is gone
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
