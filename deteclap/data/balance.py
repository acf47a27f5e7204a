"""Class-balanced sampling for fine-tuning: CAV-MAE's `--bal bal` (its VGGSound recipe) on shards.

CAV-MAE (src/gen_weight_file.py, src/run_cavmae_ft.py) weights each training clip by the sum, over
its labels, of 1000 / (clips with that label + 0.01), and draws every epoch len(dataset) clips with
replacement (torch's WeightedRandomSampler). Shards are read as streams, so here one epoch's draw
becomes a repeat count per sample (`epoch_repeats`): the reference loader decodes a sample that
many times where its tar holds it, the DALI loader lists it that many times in its index files,
and both shuffle with their buffers as usual. The draw is torch.multinomial (what
WeightedRandomSampler calls) with a generator seeded by the epoch, so every rank draws the same
counts and a resumed epoch draws them again; ranks split the draws, not the tars (`rank_shares`,
as DALI's reader splits its index), so that each gets the same number. Class vectors are the
samples' `KEY.cls` members, read once per process through the tar index (one small read per
sample); one missing or of another size than dataset.json's class list is a bad sample
(`missing_member` / `bad_classes`).
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from deteclap.data.common import DataError, Skipped, epoch_seed
from deteclap.format import CLASSES_EXT, scan_shard, storage

LABEL_WEIGHT_SCALE = 1000.0   # CAV-MAE: label_weight = 1000 / (label_count + 0.01)
LABEL_COUNT_EPSILON = 0.01

Repeats = dict[str, dict[str, int]]   # {tar: {key: times drawn this epoch}}


def sample_weights(classes: np.ndarray) -> np.ndarray:
    """CAV-MAE's per-clip weights: multi-hot classes [N, K] -> [N] (a clip without labels gets 0)."""
    counts = classes.sum(axis=0)
    return classes @ (LABEL_WEIGHT_SCALE / (counts + LABEL_COUNT_EPSILON))


def read_classes(tars: list[Path], num_classes: int | None = None
                 ) -> tuple[list[tuple[str, str]], np.ndarray, list[Skipped]]:
    """Every sample's class vector, in tar order: ((tar, key) per row, uint8 [N, K], bad samples).

    Bad (left out): no `KEY.cls` member, or one of another size than `num_classes` bytes (without
    it, than most samples' size), and the tar's unusable samples (`deteclap.format.scan_shard`)."""
    found: list[tuple[str, str, int, int]] = []        # (tar, key, offset, size)
    bad: list[Skipped] = []
    for tar in tars:
        scan = scan_shard(tar)
        bad += [Skipped(str(tar), key, reason) for key, (reason, _) in scan.bad.items()]
        for key, members in scan.entries.items():
            member = next(((offset, size) for ext, offset, size, _ in members if ext == CLASSES_EXT), None)
            if member is None:
                bad.append(Skipped(str(tar), key, "missing_member"))
            else:
                found.append((str(tar), key, *member))
    if num_classes is None and found:
        num_classes = Counter(size for *_, size in found).most_common(1)[0][0]
    names, rows = [], []
    for tar, samples in itertools.groupby(found, key=lambda row: row[0]):     # one open per tar
        with storage.open_file(tar) as handle:
            for _, key, offset, size in samples:
                if size != num_classes:
                    bad.append(Skipped(tar, key, "bad_classes"))
                    continue
                handle.seek(offset)
                rows.append(handle.read(size))
                names.append((tar, key))
    classes = np.frombuffer(b"".join(rows), np.uint8).reshape(len(rows), num_classes or 0)
    return names, classes, bad


@functools.lru_cache(maxsize=4)
def _weights(tars: tuple[Path, ...], num_classes: int | None
             ) -> tuple[list[tuple[str, str]], torch.Tensor, list[Skipped]]:
    names, classes, bad = read_classes(list(tars), num_classes)
    return names, torch.from_numpy(sample_weights(classes.astype(np.float64))), bad


def epoch_repeats(tars: list[Path], seed: int, epoch: int, on_error: str = "raise",
                  num_classes: int | None = None) -> tuple[Repeats, list[Skipped]]:
    """One epoch's class-balanced draw over these tars: ({tar: {key: times}}, samples left out).

    As many draws as samples with classes, with replacement, by `sample_weights`; keys never drawn
    are absent. Samples without a usable `KEY.cls` (`num_classes` bytes: dataset.json's class
    count) raise DataError (on_error="raise") or are left out and returned (on_error="skip").

    Raises:
        DataError: a bad sample with on_error="raise", or no sample has any class.
    """
    names, weights, bad = _weights(tuple(tars), num_classes)
    if bad and on_error == "raise":
        first = bad[0]
        raise DataError(f"{first.shard}: sample {first.key}: {first.reason}: balanced sampling needs every "
                        f"sample whole, with a {CLASSES_EXT} member of one byte per class ({len(bad)} bad samples)")
    if not names or float(weights.sum()) <= 0:
        raise DataError(f"balanced sampling: no sample in {[str(t) for t in tars[:3]]}... has a class")
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    drawn = torch.bincount(torch.multinomial(weights, len(names), replacement=True, generator=generator),
                           minlength=len(names)).tolist()
    repeats: Repeats = {}
    for (tar, key), times in zip(names, drawn):
        if times:
            repeats.setdefault(tar, {})[key] = times
    return repeats, bad


def rank_shares(repeats: Repeats, order: list[Path], world_size: int) -> list[Repeats]:
    """Each rank's contiguous part of the epoch's draws, the draws laid out in tar `order`: ranks get
    equal counts (+-1), a sample drawn n times may be split between two neighbouring ranks. The
    reference loader splits a uniform epoch ({tar: {key: 1}}) the same way."""
    draws = [(str(tar), key) for tar in order for key, times in repeats.get(str(tar), {}).items()
             for _ in range(times)]
    shares: list[Repeats] = []
    for rank in range(world_size):
        share: Repeats = {}
        for tar, key in draws[rank * len(draws) // world_size:(rank + 1) * len(draws) // world_size]:
            share.setdefault(tar, {})[key] = share.get(tar, {}).get(key, 0) + 1
        shares.append(share)
    return shares
