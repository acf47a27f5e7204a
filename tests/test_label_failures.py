"""A sample whose labelling failed (NaN scores, labels.store) is never a silent all-zero target.

Both loaders either raise naming the sample or, with data.on_error=skip, leave it out and count it.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest

from deteclap.config import load_config
from deteclap.data.loader import DataError, build_loader
from deteclap.labels.store import read_scores, shard_paths, write_scores

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


def test_reference_loader_raises_naming_the_sample(one_failed):
    shards, bad_key, _ = one_failed
    with pytest.raises(DataError, match=bad_key):
        list(build_loader(cfg_for(shards, "raise"), train=False))


def test_reference_loader_skips_and_counts_it(one_failed):
    shards, bad_key, total = one_failed
    loader = build_loader(cfg_for(shards, "skip"), train=False)
    keys = [k for batch in loader for k in batch["keys"]]
    assert bad_key not in keys and len(keys) == total - 1
    assert loader.skipped["label_failed"] == 1


def test_dali_cpu_loader_skips_and_counts_it(one_failed):
    pytest.importorskip("nvidia.dali")
    from dali_pipes.iterator import build_dali_loader

    shards, bad_key, total = one_failed
    cfg = cfg_for(shards, "skip")
    cfg.data.dali_device = "cpu"
    loader = build_dali_loader(cfg, train=False, rank=0, world_size=1)
    keys = [k for batch in loader for k in batch["keys"]]
    assert bad_key not in keys and len(keys) == total - 1
    assert loader.skipped["label_failed"] == 1
