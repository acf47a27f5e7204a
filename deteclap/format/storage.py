"""Where shard folders and inputs live: local paths and fsspec URLs (`s3://`, `gs://`, `http(s)://`).

The one place that knows the difference. Everything above it names a location as a string (a
local path or a URL) and calls these functions; local paths keep going through the OS (atomic
renames, fsync), URLs through fsspec, imported only when a URL is used (`pip install
'deteclap[s3]'` brings s3fs; `gs://` needs gcsfs, `http(s)://` aiohttp).

Object stores have no rename, but a single PUT is atomic: an object is there whole or not at all.
So `write_bytes` / `put_file` give the same guarantee on both kinds of location: a reader never
sees half a file. A shard writer therefore builds a tar in a local staging folder and puts it
whole (deteclap.shard), and "the tar exists" stays the mark of a finished shard everywhere.

Credentials and endpoints come from the environment as each fsspec backend reads them (for S3:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL or ~/.aws), so the same command
line works on every worker of a cluster that shares that environment.

It sits in deteclap.format, the bottom layer, and imports nothing else of deteclap.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from stat import S_ISREG
from typing import IO, Any

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# pathlib turns `s3://b/k` into `s3:/b/k`: such a Path (or its str) still names the URL (see location)
_COLLAPSED_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")
INSTALL_HINT = {"s3": "pip install 'deteclap[s3]' (s3fs)", "gs": "pip install gcsfs", "gcs": "pip install gcsfs",
                "http": "pip install aiohttp", "https": "pip install aiohttp"}


class StorageError(RuntimeError):
    """A location cannot be used (unknown scheme, missing backend package); the message says what to do."""


def location(place: str | os.PathLike) -> str:
    """A path or URL as a string; a Path made from a URL (pathlib collapses `s3://b/k` to `s3:/b/k`),
    or its str, gives the URL back, so code may join shard names onto a folder URL with pathlib's
    `/` and key dicts by str(path)."""
    return _COLLAPSED_URL.sub(r"\1://", os.fspath(place), count=1)


def is_url(place: str | os.PathLike) -> bool:
    """True for `scheme://...` locations (or Paths made from them) other than `file://` (local paths)."""
    text = location(place)
    return bool(_URL.match(text)) and not text.startswith("file://")


def local_path(place: str | os.PathLike) -> Path:
    """A local location as a Path (`file://` prefix dropped). Raises StorageError for a URL."""
    text = location(place)
    if is_url(text):
        raise StorageError(f"{text}: a URL where a local path is needed")
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def join(base: str | os.PathLike, *names: str) -> str:
    """`base/name/...` for a folder path or URL (URLs always join with '/')."""
    text = location(base)
    if not is_url(text):
        return str(local_path(text).joinpath(*names))
    return "/".join([text.rstrip("/"), *names])


def basename(place: str | os.PathLike) -> str:
    """The last part of a path or URL (`s3://b/x/train-000000.tar` -> `train-000000.tar`)."""
    return location(place).rstrip("/").rsplit("/", 1)[-1]


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; a clear error when its backend is missing."""
    try:
        import fsspec
    except ImportError:
        raise StorageError(f"{url}: URLs need fsspec: pip install 'deteclap[s3]'") from None
    scheme = url.split("://", 1)[0].lower()
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        hint = INSTALL_HINT.get(scheme, f"install the fsspec backend of {scheme}://")
        raise StorageError(f"{url}: cannot open {scheme}:// ({err}); {hint}") from None
    # other processes write the same store: answers from fsspec's listing cache may be stale
    fs.invalidate_cache()
    return fs, path


def exists(place: str | os.PathLike) -> bool:
    if not is_url(place):
        return local_path(place).exists()
    fs, path = filesystem(location(place))
    return fs.exists(path)


def is_file(place: str | os.PathLike) -> bool:
    if not is_url(place):
        return local_path(place).is_file()
    fs, path = filesystem(location(place))
    return fs.isfile(path)


def is_dir(place: str | os.PathLike) -> bool:
    if not is_url(place):
        return local_path(place).is_dir()
    fs, path = filesystem(location(place))
    return fs.isdir(path)


def size(place: str | os.PathLike) -> int:
    if not is_url(place):
        return local_path(place).stat().st_size
    fs, path = filesystem(location(place))
    return int(fs.size(path))


def open_file(place: str | os.PathLike, mode: str = "rb") -> IO:
    """A file object for reading (or writing, for local paths; remote writes go via write_bytes / put_file)."""
    if not is_url(place):
        return open(local_path(place), mode)
    if "r" not in mode:
        raise StorageError(f"{location(place)}: remote files are written whole with write_bytes / put_file")
    fs, path = filesystem(location(place))
    return fs.open(path, mode)


def read_bytes(place: str | os.PathLike) -> bytes:
    if not is_url(place):
        return local_path(place).read_bytes()
    fs, path = filesystem(location(place))
    return fs.cat_file(path)


def read_text(place: str | os.PathLike, errors: str = "strict") -> str:
    return read_bytes(place).decode("utf-8", errors)


def stamp(place: str | os.PathLike) -> tuple[int, str] | None:
    """(size, version) of a file, or None when there is none: the version changes when the file is
    rewritten (local: its modification time; object stores: the ETag or modification time fsspec
    reports), so results computed from a file can be cached per stamp."""
    if not is_url(place):
        try:
            stat = local_path(place).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return (stat.st_size, str(stat.st_mtime_ns)) if S_ISREG(stat.st_mode) else None
    fs, path = filesystem(location(place))
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    if info.get("type") != "file":
        return None
    version = info.get("ETag") or info.get("etag") or info.get("LastModified") or info.get("mtime") or ""
    return int(info["size"]), str(version)


def _replace_synced(tmp: Path, path: Path) -> None:
    """fsync tmp, rename it over path, fsync the folder: after a crash path is old or new, whole."""
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes(place: str | os.PathLike, data: bytes) -> None:
    """Write a whole file atomically: local via tmp + fsync + rename, remote as one PUT."""
    if not is_url(place):
        path = local_path(place)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        _replace_synced(tmp, path)
        return
    fs, path = filesystem(location(place))
    fs.pipe_file(path, data)


def put_file(local: str | os.PathLike, place: str | os.PathLike) -> None:
    """Copy a finished local file to `place` atomically (a local target gets tmp + rename)."""
    local = Path(local)
    if not is_url(place):
        path = local_path(place)
        path.parent.mkdir(parents=True, exist_ok=True)
        if local.resolve() == path.resolve():
            return
        tmp = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(local, tmp)
        _replace_synced(tmp, path)
        return
    fs, path = filesystem(location(place))
    fs.put_file(str(local), path)


def download(place: str | os.PathLike, local: str | os.PathLike) -> None:
    """Copy a file (local, or at a URL) to the local path `local`."""
    if not is_url(place):
        shutil.copyfile(local_path(place), local)
        return
    fs, path = filesystem(location(place))
    fs.get_file(path, os.fspath(local))


def remove(place: str | os.PathLike) -> None:
    """Delete a file if it is there."""
    if not is_url(place):
        local_path(place).unlink(missing_ok=True)
        return
    fs, path = filesystem(location(place))
    if fs.exists(path):
        fs.rm_file(path)


def make_dirs(place: str | os.PathLike) -> None:
    """Create a local folder (and parents); object stores need none (a prefix exists with its objects)."""
    if not is_url(place):
        local_path(place).mkdir(parents=True, exist_ok=True)


def list_names(folder: str | os.PathLike) -> list[str]:
    """Names of the files directly in a folder (or under a URL prefix), sorted; [] when it is missing."""
    if not is_url(folder):
        path = local_path(folder)
        return sorted(p.name for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    fs, path = filesystem(os.fspath(folder))
    if not fs.exists(path):
        return []
    return sorted(basename(info["name"]) for info in fs.ls(path, detail=True) if info.get("type") == "file")


def walk_files(folder: str | os.PathLike) -> list[str]:
    """Every file under a folder or URL prefix, recursive, as paths relative to it (with '/'), sorted."""
    if not is_url(folder):
        root = local_path(folder)
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    fs, path = filesystem(os.fspath(folder))
    prefix = path.rstrip("/") + "/"
    return sorted(name[len(prefix):] for name in fs.find(path) if name.startswith(prefix))


@contextlib.contextmanager
def local_copy(place: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """A local path holding the file's bytes: the file itself when local, else a temporary download
    (deleted on exit). For readers that need a real file (PyAV, tarfile random access)."""
    if not is_url(place):
        yield local_path(place)
        return
    fs, path = filesystem(location(place))
    handle, name = tempfile.mkstemp(prefix="deteclap-", suffix=suffix or Path(basename(place)).suffix)
    os.close(handle)
    try:
        fs.get_file(path, name)
        yield Path(name)
    finally:
        os.unlink(name)
