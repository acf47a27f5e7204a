"""Class-balanced sampling (deteclap.data.balance, CAV-MAE's `--bal bal`): the weights against a
hand-computed case, the draw's class shares, and both loaders delivering exactly the drawn epoch."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from deteclap.config import Config
from deteclap.data.balance import epoch_repeats, read_classes, sample_weights
from deteclap.data.common import DataError, resolve_shards
from deteclap.data.loader import build_loader
from tests.test_loader import LOADERS, all_keys, corrupt, loader_factory, make_cfg, rewrite_shards


def test_sample_weights_hand_computed() -> None:
    """CAV-MAE's gen_weight_file: label weight 1000 / (count + 0.01), a clip sums its labels' weights."""
    classes = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]], dtype=np.float64)
    a, b = 1000 / 3.01, 1000 / 2.01       # class 0 on 3 clips, class 1 on 2, class 2 on none
    np.testing.assert_allclose(sample_weights(classes), [a, a, b, a + b, 0.0])


def imbalanced(shard_dir: Path, out: Path, rare: set[str]) -> Path:
    """The synthetic shards with class 1 on the `rare` keys and class 0 on the others."""
    def edit(key: str, ext: str, data: bytes) -> bytes:
        if ext != "cls":
            return data
        row = np.zeros(len(data), np.uint8)
        row[1 if key in rare else 0] = 1
        return row.tobytes()
    return rewrite_shards(shard_dir, out, edit)


def test_draw_balances_classes(shard_dir: Path, tmp_path: Path) -> None:
    keys = all_keys(shard_dir)
    rare = {keys[1], keys[5]}                             # 2 of 8 clips: a quarter of a uniform draw
    tars = resolve_shards(str(imbalanced(shard_dir, tmp_path / "s", rare)), "train")
    names, classes, bad = read_classes(tars)
    assert [k for _, k in names] == keys and not bad and classes[:, 1].sum() == 2
    rare_draws = total = 0
    for epoch in range(400):
        repeats, _ = epoch_repeats(tars, seed=0, epoch=epoch)
        drawn = Counter({key: n for per_tar in repeats.values() for key, n in per_tar.items()})
        assert sum(drawn.values()) == len(keys)                # an epoch is as long as the data set
        rare_draws += sum(drawn[k] for k in rare)
        total += len(keys)
    assert abs(rare_draws / total - 0.5) < 0.05, rare_draws / total   # each class about half the draws
    again, _ = epoch_repeats(tars, seed=0, epoch=3)
    assert again == epoch_repeats(tars, seed=0, epoch=3)[0] != epoch_repeats(tars, seed=0, epoch=4)[0]


def balanced_cfg(shards: Path) -> Config:
    cfg = make_cfg(shards, batch=2)
    cfg.finetune.balanced_sampling = True
    return cfg


def drawn_keys(shards: Path, seed: int, epoch: int) -> Counter:
    """{key: times drawn} of one epoch (deteclap.data.balance)."""
    repeats, _ = epoch_repeats(resolve_shards(str(shards), "train"), seed, epoch)
    return Counter({key: n for per_tar in repeats.values() for key, n in per_tar.items()})


@pytest.mark.parametrize("loader", LOADERS)
def test_loaders_deliver_the_drawn_epoch(shard_dir: Path, tmp_path: Path, loader: str) -> None:
    """A training epoch holds each sample as often as it was drawn (repeats included, others absent)."""
    keys = all_keys(shard_dir)
    shards = imbalanced(shard_dir, tmp_path / "s", {keys[1], keys[5]})
    cfg, epoch = balanced_cfg(shards), 1
    drawn = drawn_keys(shards, cfg.data.seed, epoch)
    assert max(drawn.values()) >= 2 and len(drawn) < len(keys)      # this epoch repeats and leaves out
    made = loader_factory(loader)(cfg, train=True, epoch=epoch)
    delivered = Counter(k for batch in made for k in batch["keys"])
    assert len(made) == 4 and delivered == drawn                     # 8 draws in 4 batches of 2
    cfg.finetune.balanced_sampling = False
    uniform = loader_factory(loader)(cfg, train=True, epoch=epoch)
    assert Counter(k for batch in uniform for k in batch["keys"]) == Counter(keys)


@pytest.mark.parametrize("loader", LOADERS)
def test_ranks_split_the_draws(shard_dir: Path, tmp_path: Path, loader: str) -> None:
    """Two ranks: the same batch count each, together exactly the drawn epoch (draws are split, not tars)."""
    keys = all_keys(shard_dir)
    shards = imbalanced(shard_dir, tmp_path / "s", {keys[1], keys[5]})
    cfg = balanced_cfg(shards)
    for epoch in range(3):
        drawn = drawn_keys(shards, cfg.data.seed, epoch)
        ranks = [loader_factory(loader)(cfg, train=True, rank=r, world_size=2, epoch=epoch) for r in range(2)]
        delivered = [[k for batch in made for k in batch["keys"]] for made in ranks]
        assert [len(made) for made in ranks] == [2, 2] and [len(d) for d in delivered] == [4, 4], epoch
        assert Counter(delivered[0] + delivered[1]) == drawn, epoch


def test_classes_of_the_wrong_size_are_the_bad_ones(shard_dir: Path, tmp_path: Path) -> None:
    """The expected `KEY.cls` size is dataset.json's class count: a wrong first sample does not
    condemn the others; without dataset.json the most common size decides."""
    from deteclap.data.common import shard_facts

    keys = all_keys(shard_dir)
    shards = rewrite_shards(shard_dir, tmp_path / "s",
                            lambda key, ext, data: data + b"\x01" if (key, ext) == (keys[0], "cls") else data)
    tars = resolve_shards(str(shards), "train")
    num_classes = shard_facts(str(shards)).num_classes
    for expected in (num_classes, None):
        names, classes, bad = read_classes(tars, expected)
        assert [(b.key, b.reason) for b in bad] == [(keys[0], "bad_classes")]
        assert [k for _, k in names] == keys[1:] and classes.shape == (7, num_classes)
    with pytest.raises(DataError, match=f"sample {keys[0]}: bad_classes"):
        epoch_repeats(tars, seed=0, epoch=0, num_classes=num_classes)


@pytest.mark.parametrize("loader", LOADERS)
def test_sample_without_classes(shard_dir: Path, tmp_path: Path, loader: str) -> None:
    """A sample without KEY.cls: DataError naming shard and key, or left out and counted once (skip)."""
    bad_key = all_keys(shard_dir)[4]
    cfg = balanced_cfg(rewrite_shards(shard_dir, tmp_path / "s", corrupt(bad_key, "-cls")))
    with pytest.raises(DataError, match=f"train-000001.tar: sample {bad_key}: missing_member"):
        loader_factory(loader)(cfg, train=True)
    cfg.data.on_error = "skip"
    made = loader_factory(loader)(cfg, train=True)
    delivered = [k for batch in made for k in batch["keys"]]
    assert bad_key not in delivered and len(delivered) == 2 * len(made) > 0
    assert made.skipped == {"missing_member": 1}


def test_bad_sample_drawn_twice_keeps_the_epoch(shard_dir: Path, tmp_path: Path) -> None:
    """Reference loader, on_error=skip: a corrupt sample drawn n times leaves n places (so the other
    draws all arrive and every rank keeps its batch count) and is counted once."""
    keys = all_keys(shard_dir)
    shards = imbalanced(shard_dir, tmp_path / "s", {keys[1], keys[5]})
    epoch, bad_key = next((e, k) for e in range(50) for k, n in drawn_keys(shards, 0, e).items() if n == 2)
    bad = rewrite_shards(shards, tmp_path / "bad", corrupt(bad_key, "wav"))
    cfg = balanced_cfg(bad)
    cfg.data.on_error = "skip"
    drawn = drawn_keys(bad, cfg.data.seed, epoch)
    made = build_loader(cfg, train=True, epoch=epoch)
    delivered = Counter(k for batch in made for k in batch["keys"])
    assert delivered == drawn - Counter({bad_key: 2}) and made.skipped == {"corrupt_wav": 1}
