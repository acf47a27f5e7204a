"""Session-wide fixtures shared by the whole test suite: a small synthetic clip folder and its shards.

`synth_dir`: 8 synthetic clips of 3 s (64x48 pixels, 10 fps, seed 0) plus truth.jsonl.
`shard_dir`: those clips sharded with split "train", 3 samples per shard (3 tars), default encoding
(audio `KEY.wav`); `flac_shard_dir`: the same with `--audio-format flac` (`KEY.flac`).
`labelled_shards`: a copy of shard_dir with ground-truth label scores (`truth_audio`, `truth_visual`).
Both are built once per session; tests must not modify them (copy first).
Also sets YOLO_OFFLINE=1 and YOLO_CONFIG_DIR to a temporary folder for every test.

Shared helpers (import them with `from tests.conftest import ...`): REPO, `subprocess_env()` (the
environment of a CPU training / benchmark subprocess), `set_args(values)` and `small_run(shards, ...)`
(`--set` overrides of a short CPU run on the synthetic shards), `needs_dali` / `needs_wds2idx`
(skip markers where DALI is not installed).
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import tempfile
from pathlib import Path

import pytest

from deteclap.data import dali_available

REPO = Path(__file__).resolve().parents[1]
HAVE_DALI = dali_available()
HAVE_WDS2IDX = importlib.util.find_spec("wds2idx") is not None          # ships with the DALI wheel
needs_dali = pytest.mark.skipif(not HAVE_DALI, reason="DALI (nvidia-dali) is not installed")
needs_wds2idx = pytest.mark.skipif(not HAVE_WDS2IDX, reason="wds2idx (from the DALI wheel) is not installed")
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a training / benchmark subprocess: DeepSpeed on the CPU, one OpenMP thread,
    unbuffered output, and no rank variables of an outer launcher."""
    out = {k: v for k, v in os.environ.items() if k not in RANK_VARIABLES}
    out.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **extra)
    return out


def set_values(values: dict[str, object]) -> list[str]:
    """{"section.key": value} -> ["section.key=value", ...] (non-strings as JSON; None left out): the
    overrides of `load_config`."""
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()
            if value is not None]


def set_args(values: dict[str, object]) -> list[str]:
    """{"section.key": value} -> ["--set", "section.key=value", ...] for a command line."""
    return [arg for item in set_values(values) for arg in ("--set", item)]


def small_run(shards: Path, **extra: object) -> dict[str, object]:
    """Config overrides of a short CPU run that trains and evaluates on the `train` split of `shards`
    (no DataLoader workers, fp32, a log line every step); `extra` adds or replaces keys."""
    return {"data.train_shards": str(shards), "data.eval_shards": str(shards), "data.train_split": "train",
            "data.eval_split": "train", "data.num_workers": 0, "deepspeed.precision": "fp32",
            "run.log_every": 1, **extra}

SYNTH_CLIPS = 8
SYNTH_SECONDS = 3.0
SYNTH_SIZE = (64, 48)
SYNTH_FPS = 10
SYNTH_SEED = 0
SAMPLES_PER_SHARD = 3


def pytest_configure(config) -> None:
    os.environ["YOLO_OFFLINE"] = "1"
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="deteclap-yolo-")


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """Folder with SYNTH_CLIPS synthetic mp4 clips and truth.jsonl."""
    from deteclap.synth import generate

    out = tmp_path_factory.mktemp("synth")
    generate(out, SYNTH_CLIPS, seconds=SYNTH_SECONDS, seed=SYNTH_SEED, size=SYNTH_SIZE, fps=SYNTH_FPS)
    return out


@pytest.fixture(scope="session")
def shard_dir(synth_dir, tmp_path_factory) -> Path:
    """synth_dir's clips as shards (split train, SAMPLES_PER_SHARD per tar) with dataset.json."""
    from deteclap.shard import write_shards

    out = tmp_path_factory.mktemp("shards")
    summary = write_shards(synth_dir / "truth.jsonl", out, split="train", samples_per_shard=SAMPLES_PER_SHARD)
    assert summary["failed"] == 0, summary
    return out


@pytest.fixture(scope="session")
def flac_shard_dir(synth_dir, tmp_path_factory) -> Path:
    """shard_dir's clips with FLAC audio (`--audio-format flac`)."""
    from deteclap.shard import EncodeSettings, write_shards

    out = tmp_path_factory.mktemp("flac_shards")
    summary = write_shards(synth_dir / "truth.jsonl", out, split="train", samples_per_shard=SAMPLES_PER_SHARD,
                           settings=EncodeSettings(audio_format="flac"))
    assert summary["failed"] == 0, summary
    return out


@pytest.fixture(scope="session")
def labelled_shards(shard_dir, synth_dir, tmp_path_factory) -> Path:
    """The synthetic shards with ground-truth label scores (a private copy: labelling rewrites tars)."""
    import shutil

    from deteclap import label

    out = tmp_path_factory.mktemp("labelled_shards") / "shards"
    shutil.copytree(shard_dir, out)
    assert label.main([str(out), "--labellers", "truth", "--truth", str(Path(synth_dir) / "truth.jsonl")]) == 0
    return out


# ----------------------------------------------------------------------------------------------
# Services for the storage and distribution tests (tests/servers.py): loopback only, started here
# ----------------------------------------------------------------------------------------------

_BUCKET_NUMBERS = itertools.count()
RAY_OBJECT_STORE_BYTES = 100 * 1024 * 1024


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a child process) with the AWS_* variables pointing at it set
    for the session (boto3, s3fs, DALI and Ray workers started later read them)."""
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (pip install -e '.[dev]')")
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install -e '.[s3]')")
    from tests.servers import MotoS3

    server = MotoS3().start()
    saved = {name: os.environ.get(name) for name in server.env()}
    os.environ.update(server.env())
    yield server
    server.stop()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh bucket for one test: its URL `s3://...`."""
    import re

    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())
    return s3_server.make_bucket(f"t{next(_BUCKET_NUMBERS)}-{name}"[:63].rstrip("-"))


@pytest.fixture(scope="session")
def ray_cluster(s3_server):
    """A local Ray instance with 2 CPUs for the session (started after the S3 server, so its
    workers inherit the AWS_* variables)."""
    ray = pytest.importorskip("ray", reason="the Ray tests need ray (pip install -e '.[ray]')")
    # a small object store: the tests pass kilobytes, and CI machines have little shared memory
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False,
             object_store_memory=RAY_OBJECT_STORE_BYTES)
    yield ray
    ray.shutdown()


@pytest.fixture
def http_url(tmp_path):
    """(folder, base URL): a loopback http.server serving a fresh folder for one test."""
    from tests.servers import http_server

    folder = tmp_path / "www"
    folder.mkdir()
    with http_server(folder) as url:
        yield folder, url
