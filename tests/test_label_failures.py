"""A sample whose labelling failed (NaN scores, labels.store) is never a silent all-zero target.

Both loaders either raise naming the sample or, with data.on_error=skip, leave it out and count it.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deteclap.config import load_config
from deteclap.data.common import DataError
from deteclap.data.loader import build_loader
from deteclap.labels.store import read_scores, shard_paths, write_scores
from tests.conftest import HAVE_DALI, needs_dali

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.json"


@pytest.fixture(scope="module")
def one_failed(labelled_shards, tmp_path_factory):
    """A copy of the labelled shards where the first sample's truth_audio scores are NaN."""
    out = tmp_path_factory.mktemp("failed") / "shards"
    shutil.copytree(labelled_shards, out)
    tar = shard_paths(out)[0]
    scores = read_scores(out)
    keys = sorted(k for k in scores if k in {m.split(".")[0] for m in __import__("tarfile").open(tar).getnames()})
    table = {k: scores[k]["truth_audio"].astype(np.float32) for k in keys}
    table[keys[0]] = np.full_like(table[keys[0]], np.nan)
    write_scores(tar, "truth_audio", table)
    return out, keys[0], len(scores)


def cfg_for(shards: Path, on_error: str):
    return load_config(CONFIG, [f"data.train_shards={shards}", f"data.eval_shards={shards}", "data.eval_split=train",
                                "data.num_workers=0", "data.batch_size=2", f"data.on_error={on_error}"])


def test_loaders_raise_naming_the_shard_sample_and_reason(one_failed):
    """data.on_error=raise: a DataError naming the shard, the key and `label_failed`, on both loaders
    (as for every other reason)."""
    shards, bad_key, _ = one_failed
    want = rf"train-000000\.tar: sample {bad_key}: label_failed: label scores are NaN"
    with pytest.raises(DataError, match=want):
        list(build_loader(cfg_for(shards, "raise"), train=False))
    if HAVE_DALI:
        from dali_pipes.iterator import build_dali_loader

        cfg = cfg_for(shards, "raise")
        cfg.data.dali_device = "cpu"
        with pytest.raises(DataError, match=want):
            list(build_dali_loader(cfg, train=False))


def test_reference_loader_skips_and_counts_it(one_failed):
    shards, bad_key, total = one_failed
    loader = build_loader(cfg_for(shards, "skip"), train=False)
    keys = [k for batch in loader for k in batch["keys"]]
    assert bad_key not in keys and len(keys) == total - 1
    assert loader.skipped["label_failed"] == 1


@needs_dali
def test_dali_cpu_loader_skips_and_counts_it(one_failed):
    from dali_pipes.iterator import build_dali_loader

    shards, bad_key, total = one_failed
    cfg = cfg_for(shards, "skip")
    cfg.data.dali_device = "cpu"
    loader = build_dali_loader(cfg, train=False, rank=0, world_size=1)
    keys = [k for batch in loader for k in batch["keys"]]
    assert bad_key not in keys and len(keys) == total - 1
    assert loader.skipped["label_failed"] == 1


def test_training_counts_skips_over_every_epoch(one_failed, tmp_path):
    """The run summary adds up the skipped samples of all epochs (not just the last loader's)."""
    import json
    import os
    import subprocess
    import sys

    shards, _, total = one_failed
    run = tmp_path / "run"
    steps = 2 * ((total + 1) // 2)   # two epochs of batch 2 (one sample per epoch is left out)
    sets = [f"data.train_shards={shards}", f"data.eval_shards={shards}", "data.num_workers=0", "data.batch_size=2",
            "data.on_error=skip", "deepspeed.precision=fp32", f"run.out_dir={run}", f"run.max_steps={steps}",
            "run.log_every=1", f"run.checkpoint_every={steps}"]
    cmd = [sys.executable, str(CONFIG.parents[1] / "deteclap" / "train.py"), "--config", str(CONFIG)]
    for item in sets:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    epochs = {json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()}
    assert len(epochs) >= 2
    assert summary["skipped_samples"] == {"label_failed": len(epochs)}
