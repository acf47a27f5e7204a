"""Retrieval and classification metrics as pure functions of similarity matrices, scores and labels.

Owns: instance retrieval (the rank of each query's own pair, R@k, median rank, sumR), class-level
retrieval mAP (an item is relevant when it shares the query's class), hubness of the top-1 lists,
AP / mAP / accuracy of classifiers, and the bootstrap confidence interval the demo reports.
`deteclap.evaluate` applies them to a checkpoint; nothing here reads files or models.

Conventions: sim [N, N] holds query i's score for item j; for audio -> visual retrieval the rows are
audio clips and the columns visual clips of the same N clips, so clip i's own pair is item i.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch


def ranks_of_pairs(sim: torch.Tensor) -> torch.Tensor:
    """sim [N, N] (query i, item j) -> 0-based rank of item i among query i's items [N].

    The rank counts the items scored strictly higher than the true pair (ties favour the pair).
    """
    diagonal = sim.diagonal().unsqueeze(1)
    return (sim > diagonal).sum(dim=1)


def recall_metrics(sim: torch.Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """R@k in percent and the median rank (1-based) of the true pairs of a similarity matrix.

    The median rank is CAV-MAE's `np.median(ranks) + 1`: for an even count, the mean of the two
    middle ranks (torch.median would take the lower one).
    """
    ranks = ranks_of_pairs(sim).double()
    out = {f"r{k}": float((ranks < k).double().mean() * 100) for k in ks}
    out["median_rank"] = float(np.median(ranks.numpy()) + 1)
    return out


def cosine_similarity(audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
    """audio [N, D], visual [M, D] -> cosine similarity [N, M] in float64 (audio rows)."""
    audio = torch.nn.functional.normalize(audio.double(), dim=-1)
    visual = torch.nn.functional.normalize(visual.double(), dim=-1)
    return audio @ visual.T


def retrieval_metrics(audio: torch.Tensor, visual: torch.Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict[str, Any]:
    """audio [N, D], visual [N, D] embeddings of the same N clips -> a2v, v2a metrics and sumR."""
    ks = tuple(ks)
    sim = cosine_similarity(audio, visual)
    a2v, v2a = recall_metrics(sim, ks), recall_metrics(sim.T, ks)
    sum_r = sum(a2v[f"r{k}"] + v2a[f"r{k}"] for k in ks)
    return {"a2v": a2v, "v2a": v2a, "sumR": sum_r, "num_clips": int(audio.shape[0])}


def query_sum_r(sim: torch.Tensor, ks: Iterable[int] = (1, 5, 10)) -> np.ndarray:
    """Each clip's share of sumR: sim [N, N] (audio rows) -> [N] with
    100 * sum over k of (hit@k as an audio query + hit@k as a visual query).

    Its mean is the sumR of `retrieval_metrics`; the per-clip values let a bootstrap resample clips.
    """
    ranks_a2v, ranks_v2a = ranks_of_pairs(sim).numpy(), ranks_of_pairs(sim.T).numpy()
    return 100.0 * sum((ranks_a2v < k).astype(np.float64) + (ranks_v2a < k) for k in ks)


def class_retrieval_ap(sim: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Class-level retrieval: sim [N, N], labels [N] (a class id per clip) -> AP of each query [N].

    Query i's relevant items are every item j with labels[j] == labels[i], its own pair included, so
    each query has at least one. AP is computed on the full ranking of the N items (ties as in
    `average_precision`).
    """
    sim = sim.numpy() if isinstance(sim, torch.Tensor) else np.asarray(sim)
    labels = np.asarray(labels)
    if sim.shape != (len(labels), len(labels)):
        raise ValueError(f"sim {list(sim.shape)} must be [N, N] for {len(labels)} labels")
    return np.array([average_precision(sim[i], labels == labels[i]) for i in range(len(labels))])


def class_retrieval_map(sim: torch.Tensor | np.ndarray, labels: Sequence[int] | np.ndarray) -> float:
    """Mean of `class_retrieval_ap` in percent, averaged over both directions (sim and sim^T)."""
    sim = sim.numpy() if isinstance(sim, torch.Tensor) else np.asarray(sim)
    return float((class_retrieval_ap(sim, labels).mean() + class_retrieval_ap(sim.T, labels).mean()) / 2 * 100)


def hubness(sim: torch.Tensor | np.ndarray) -> dict[str, float]:
    """How the top-1 results spread over the items: sim [N, M] -> {"top1_distinct": the number of
    distinct items that are some query's top-1, "top1_max_share": the fraction of the N queries
    whose top-1 is the most frequent one}. A healthy retriever has many distinct top-1 items and a
    small largest share (1 / N when every query gets its own); a collapsed one fills the lists with
    a few hubs."""
    sim = torch.as_tensor(sim)
    top1 = sim.argmax(dim=1)
    counts = torch.bincount(top1, minlength=sim.shape[1])
    return {"top1_distinct": int((counts > 0).sum()), "top1_max_share": int(counts.max()) / sim.shape[0]}


def bootstrap_ci(groups: Sequence[Sequence[float] | np.ndarray], level: float = 0.95, resamples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Two-level percentile bootstrap of the mean of group means: groups (e.g. seeds) are drawn with
    replacement, then the values inside each drawn group (e.g. test clips) with replacement.

    groups: one array per group (a group of one value makes it a plain bootstrap over groups).
    Returns (low, high), the (1 - level) / 2 and (1 + level) / 2 quantiles of the resampled means.
    """
    arrays = [np.asarray(g, dtype=np.float64) for g in groups]
    if not arrays or any(a.ndim != 1 or a.size == 0 for a in arrays):
        raise ValueError("bootstrap_ci needs at least one group, each a non-empty 1-D sequence")
    rng = np.random.default_rng(seed)
    picked = rng.integers(0, len(arrays), (resamples, len(arrays)))
    means = np.zeros(resamples)
    for index, values in enumerate(arrays):
        # every resample draws this group's values once; used as often as the group was picked
        drawn = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
        means += (picked == index).sum(axis=1) * drawn
    means /= len(arrays)
    return (float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, (1 + level) / 2)))


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of one class: scores [N], binary labels [N] (as sklearn computes it)."""
    order = np.argsort(-scores, kind="stable")
    labels = labels[order].astype(np.float64)
    if labels.sum() == 0:
        return float("nan")
    scores = scores[order]
    # group tied scores: precision / recall are evaluated at the last item of each tie group
    last_of_group = np.r_[scores[1:] != scores[:-1], True]
    hits = np.cumsum(labels)[last_of_group]
    seen = (np.arange(len(labels)) + 1)[last_of_group]
    precision, recall = hits / seen, hits / labels.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """mAP over the classes that have at least one positive: scores, labels [N, C]."""
    aps = [average_precision(scores[:, c], labels[:, c]) for c in range(labels.shape[1])]
    aps = [ap for ap in aps if not np.isnan(ap)]
    return float(np.mean(aps) * 100) if aps else float("nan")


def accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Single-label top-1 accuracy in percent: scores (logits or probabilities), multi-hot labels [N, C]."""
    return float((scores.argmax(1) == labels.argmax(1)).mean() * 100)
