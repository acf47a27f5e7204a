"""Retrieval and classification metrics against hand-computed cases and a reference mAP."""

import numpy as np
import pytest
import torch

from deteclap.evaluate import (accuracy, mean_average_precision, per_class_subset, ranks_of_pairs,
                               recall_metrics, retrieval_metrics)


def test_ranks_and_recalls_of_a_hand_made_similarity_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],    # pair ranked 1st
                        [0.8, 0.5, 0.1, 0.0],    # one item above the pair -> rank 2
                        [0.7, 0.6, 0.1, 0.3],    # three above -> rank 4
                        [0.1, 0.2, 0.3, 0.25]])  # one above -> rank 2
    assert ranks_of_pairs(sim).tolist() == [0, 1, 3, 1]
    metrics = recall_metrics(sim, ks=(1, 2, 5))
    assert metrics == {"r1": 25.0, "r2": 75.0, "r5": 100.0, "median_rank": 2.0}


def test_retrieval_metrics_are_directional_and_perfect_for_identical_embeddings():
    torch.manual_seed(0)
    emb = torch.randn(20, 8)
    result = retrieval_metrics(emb, emb * 3.0)  # scale must not matter (cosine)
    assert result["a2v"]["r1"] == 100.0 and result["v2a"]["r1"] == 100.0
    assert result["sumR"] == 600.0
    # audio 0 and 1 both point at visual 0: a2v fails for query 1, v2a fails for query 0 or 1
    audio = torch.tensor([[1.0, 0.0], [1.0, 0.05], [0.0, 1.0]])
    visual = torch.tensor([[1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])
    result = retrieval_metrics(audio, visual, ks=(1,))
    assert result["a2v"]["r1"] == pytest.approx(200 / 3)
    assert result["v2a"]["r1"] == pytest.approx(200 / 3)


def test_map_matches_sklearn():
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 7)) < 0.2).astype(np.float32)
    labels[:, 3] = 0  # a class with no positive is left out, as the reference does when told
    scores = rng.random((200, 7)).round(2)  # rounded: ties happen
    scores += labels * 0.3
    keep = labels.sum(0) > 0
    expected = sklearn.average_precision_score(labels[:, keep], scores[:, keep], average=None).mean() * 100
    assert mean_average_precision(scores, labels) == pytest.approx(expected, abs=1e-9)


def test_accuracy_and_per_class_subset():
    labels = np.eye(3)[[0, 1, 2, 0, 1, 0, 0]]
    logits = np.eye(3)[[0, 1, 1, 0, 2, 0, 1]]
    assert accuracy(logits, labels) == pytest.approx(100 * 4 / 7)
    assert per_class_subset(labels, 2).tolist() == [0, 1, 2, 3, 4]
    assert per_class_subset(labels, 0).tolist() == list(range(7))
