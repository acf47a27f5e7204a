"""Session-wide fixtures shared by the whole test suite: a small synthetic clip folder and its shards.

`synth_dir`: 8 synthetic clips of 3 s (64x48 pixels, 10 fps, seed 0) plus truth.jsonl.
`shard_dir`: those clips sharded with split "train", 3 samples per shard (3 tars), default encoding.
`labelled_shards`: a copy of shard_dir with ground-truth label scores (`truth_audio`, `truth_visual`).
Both are built once per session; tests must not modify them (copy first).
Also sets YOLO_OFFLINE=1 and YOLO_CONFIG_DIR to a temporary folder for every test.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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
def labelled_shards(shard_dir, synth_dir, tmp_path_factory) -> Path:
    """The synthetic shards with ground-truth label scores (a private copy: labelling rewrites tars)."""
    import shutil

    from deteclap import label

    out = tmp_path_factory.mktemp("labelled_shards") / "shards"
    shutil.copytree(shard_dir, out)
    assert label.main([str(out), "--labellers", "truth", "--truth", str(Path(synth_dir) / "truth.jsonl")]) == 0
    return out
