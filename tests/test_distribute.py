"""deteclap.format.storage on local paths, a loopback S3 server and a loopback HTTP server, and
deteclap.distribute's local and Ray backends (a real local Ray instance, tests/conftest.py)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from deteclap import distribute
from deteclap.format import storage


def _roundtrip(folder: str) -> None:
    target = storage.join(folder, "sub", "a.bin")
    storage.make_dirs(storage.join(folder, "sub"))
    assert not storage.exists(target)
    storage.write_bytes(target, b"first")
    storage.write_bytes(target, b"second")            # replaces whole
    assert storage.read_bytes(target) == b"second" and storage.size(target) == 6
    assert storage.is_file(target) and not storage.is_file(storage.join(folder, "sub", "nope"))
    with storage.open_file(target) as handle:
        assert handle.read(3) == b"sec"
    with storage.local_copy(target) as path:
        assert Path(path).read_bytes() == b"second"
    assert storage.list_names(storage.join(folder, "sub")) == ["a.bin"]
    assert storage.walk_files(folder) == ["sub/a.bin"]
    storage.remove(target)
    assert not storage.exists(target)


def test_storage_local(tmp_path):
    _roundtrip(str(tmp_path))
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))


def test_storage_s3(s3_bucket):
    _roundtrip(f"{s3_bucket}/folder")
    assert storage.basename(f"{s3_bucket}/folder/x.tar") == "x.tar"


def test_storage_http_input(http_url):
    folder, url = http_url
    (folder / "clip.mp4").write_bytes(b"\x00video")
    assert storage.is_url(url) and storage.read_bytes(f"{url}/clip.mp4") == b"\x00video"
    with storage.local_copy(f"{url}/clip.mp4") as path:
        assert path.suffix == ".mp4" and path.read_bytes() == b"\x00video"
    assert not path.exists()


def test_storage_rejects_unknown_scheme():
    with pytest.raises(storage.StorageError, match="nosuch://"):
        storage.exists("nosuch://bucket/x")


def _square(x: int) -> int:
    return x * x


def test_local_tasks_pool_and_serial():
    jobs = [(i,) for i in range(7)]
    for workers in (1, 2):
        assert sorted(distribute.run_tasks(_square, jobs, workers=workers)) == [(i, i * i) for i in range(7)]


def test_unknown_distributor():
    with pytest.raises(distribute.DistributorError, match="choose one of local, ray"):
        list(distribute.run_tasks(_square, [(1,)], distributor="spark"))


def test_ray_tasks(ray_cluster):
    jobs = [(i,) for i in range(9)]
    assert sorted(distribute.run_tasks(_square, jobs, distributor="ray")) == [(i, i * i) for i in range(9)]


def _die_once(marker: str, value: int) -> int:
    """Kill this worker process the first time (marker file absent): Ray must run the job again."""
    if not os.path.exists(marker):
        Path(marker).write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def test_ray_task_retried_after_worker_killed(ray_cluster, tmp_path):
    marker = str(tmp_path / "killed")
    assert list(distribute.run_tasks(_die_once, [(marker, 5)], distributor="ray")) == [(0, 5)]
    assert Path(marker).read_text() == "killed"


class _Adder:
    def __init__(self, offset: int):
        self.offset, self.calls = offset, 0

    def run(self, x: int) -> tuple[int, int]:
        self.calls += 1
        return x + self.offset, os.getpid()


def test_actors_local_and_ray(ray_cluster):
    jobs = [(i,) for i in range(6)]
    local = dict(distribute.run_actors(_Adder, (10,), jobs))
    remote = dict(distribute.run_actors(_Adder, (10,), jobs, distributor="ray", actors=2, num_cpus=0.5))
    expected = {i: i + 10 for i in range(6)}
    assert {i: v for i, (v, _) in local.items()} == {i: v for i, (v, _) in remote.items()} == expected
    assert {pid for _, pid in local.values()} == {os.getpid()}
    assert os.getpid() not in {pid for _, pid in remote.values()}
