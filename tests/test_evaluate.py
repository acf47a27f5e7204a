"""Retrieval and classification metrics against hand-computed cases and a reference mAP; retrieval
evaluation of a checkpoint on the synthetic shards (no label scores needed) and its CLI."""

import json
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from deteclap.config import load_config
from deteclap.evaluate import (accuracy, collect, evaluate, format_table, main, mean_average_precision,
                               per_class_subset, ranks_of_pairs, recall_metrics, retrieval_metrics)
from deteclap.metrics import (bootstrap_ci, class_retrieval_ap, class_retrieval_map, cosine_similarity, hubness,
                              query_sum_r)

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.json"   # labels.variant "or"


def test_ranks_and_recalls_of_a_hand_made_similarity_matrix():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],    # pair ranked 1st
                        [0.8, 0.5, 0.1, 0.0],    # one item above the pair -> rank 2
                        [0.7, 0.6, 0.1, 0.3],    # three above -> rank 4
                        [0.1, 0.2, 0.3, 0.25]])  # one above -> rank 2
    assert ranks_of_pairs(sim).tolist() == [0, 1, 3, 1]
    metrics = recall_metrics(sim, ks=(1, 2, 5))
    assert metrics == {"r1": 25.0, "r2": 75.0, "r5": 100.0, "median_rank": 2.0}


def test_median_rank_of_an_even_count_is_the_mean_of_the_two_middle_ranks():
    sim = torch.tensor([[0.9, 0.1, 0.2, 0.0],    # rank 1
                        [0.1, 0.9, 0.2, 0.0],    # rank 1
                        [0.7, 0.6, 0.1, 0.3],    # rank 4
                        [0.1, 0.2, 0.3, 0.25]])  # rank 2
    # CAV-MAE: np.median([0, 0, 3, 1]) + 1 = (0 + 1) / 2 + 1
    assert recall_metrics(sim)["median_rank"] == 1.5


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


def test_per_class_subset_leaves_out_clips_without_a_class():
    classes = np.array([[0, 0], [1, 0], [0, 1], [1, 0]])   # clip 0 has no class
    assert per_class_subset(classes, 1).tolist() == [1, 2]
    assert per_class_subset(classes, 0).tolist() == [0, 1, 2, 3]


def test_class_retrieval_ap_and_map_of_a_hand_made_case():
    labels = [0, 0, 1]
    sim = np.array([[0.9, 0.1, 0.5],     # relevant items 0, 1 at ranks 1, 3: (1 + 2/3) / 2
                    [0.2, 0.8, 0.9],     # relevant at ranks 2, 3: (1/2 + 2/3) / 2
                    [0.1, 0.3, 0.2]])    # its only relevant item (itself) at rank 2
    assert class_retrieval_ap(sim, labels) == pytest.approx([5 / 6, 7 / 12, 1 / 2])
    # columns as queries: [1, 5/6, 1/3]; the map averages both directions, in percent
    assert class_retrieval_ap(sim.T, labels) == pytest.approx([1, 5 / 6, 1 / 3])
    assert class_retrieval_map(torch.tensor(sim), labels) == pytest.approx((23 / 36 + 26 / 36) / 2 * 100)
    assert class_retrieval_map(np.eye(4), [0, 1, 2, 3]) == 100.0      # each clip its own class: pairs first
    with pytest.raises(ValueError, match="must be"):
        class_retrieval_ap(sim, [0, 1])


def test_hubness_counts_distinct_top1_items_and_the_largest_share():
    sim = torch.tensor([[0.9, 0.1, 0.0, 0.0],
                        [0.8, 0.5, 0.0, 0.0],
                        [0.7, 0.0, 0.1, 0.0],
                        [0.0, 0.0, 0.3, 0.1]])   # top-1 items 0, 0, 0, 2
    assert hubness(sim) == {"top1_distinct": 2, "top1_max_share": 0.75}
    assert hubness(torch.eye(5)) == {"top1_distinct": 5, "top1_max_share": 0.2}


def test_query_sum_r_is_each_clips_share_of_sum_r():
    torch.manual_seed(0)
    audio, visual = torch.randn(30, 4), torch.randn(30, 4)
    sim = cosine_similarity(audio, visual)
    shares = query_sum_r(sim)
    assert shares.mean() == pytest.approx(retrieval_metrics(audio, visual)["sumR"])
    assert set(np.unique(shares)) <= {100.0 * n for n in range(7)}


def test_bootstrap_ci_of_hand_computable_cases():
    assert bootstrap_ci([[2.0, 2.0], [2.0]]) == (2.0, 2.0)
    # two seeds of one value each: resampled means 1, 2, 3 with probabilities 1/4, 1/2, 1/4
    assert bootstrap_ci([[1.0], [3.0]]) == (1.0, 3.0)
    assert bootstrap_ci([[1.0], [3.0]], level=0.4) == (2.0, 2.0)
    # one seed, two clips: the same distribution drawn over the clips
    assert bootstrap_ci([[1.0, 3.0]]) == (1.0, 3.0)
    # many clips: the interval of a mean narrows like 1 / sqrt(n) around it
    rng = np.random.default_rng(0)
    low, high = bootstrap_ci([rng.normal(5.0, 1.0, 400)])
    assert low < 5.0 < high and 0.15 < high - low < 0.25          # 2 * 1.96 / sqrt(400) = 0.196
    with pytest.raises(ValueError):
        bootstrap_ci([[]])


# ----------------------------------------------------------------------------------------------
# a checkpoint on the synthetic shards
def eval_cfg(shards: Path, *extra: str):
    return load_config(CONFIG, [f"data.eval_shards={shards}", "data.eval_split=train", "data.loader=reference",
                                "data.num_workers=0", *extra])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model (with label heads) as a plain state dict."""
    from deteclap.model import build_model

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoint") / "model.pt"
    torch.save(build_model(eval_cfg(Path("unused")).model, 601).state_dict(), path)
    return path


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_retrieval_of_an_or_config_needs_no_label_scores(shard_dir, checkpoint, on_error):
    result = evaluate(eval_cfg(shard_dir, f"data.on_error={on_error}"), checkpoint)   # shards never labelled
    assert result["num_clips"] == 8 and result["skipped_samples"] == {}
    assert 0 < result["class_map"] <= 100
    for direction in ("a2v", "v2a"):
        assert 1 <= result["hubness"][direction]["top1_distinct"] <= 8
        assert 1 / 8 <= result["hubness"][direction]["top1_max_share"] <= 1


def test_retrieval_keeps_clips_whose_labelling_failed(labelled_shards, checkpoint, tmp_path):
    from deteclap.labels.store import read_scores, shard_paths, write_scores

    shards = tmp_path / "shards"
    shutil.copytree(labelled_shards, shards)
    tar = shard_paths(shards)[0]
    scores = read_scores(shards)
    with tarfile.open(tar) as fh:
        keys = {name.split(".")[0] for name in fh.getnames()}
    table = {key: np.full_like(scores[key]["truth_audio"], np.nan, dtype=np.float32) for key in keys}
    write_scores(tar, "truth_audio", table)                 # NaN scores: this tar's labelling failed
    result = evaluate(eval_cfg(shards, "data.on_error=skip"), checkpoint)
    assert result["num_clips"] == 8 and result["skipped_samples"] == {}


def test_collect_names_the_shards_when_no_clip_could_be_read(shard_dir, tmp_path):
    from deteclap.format import index_entries

    shards = tmp_path / "shards"
    shutil.copytree(shard_dir, shards)
    for tar in shards.glob("*.tar"):                        # every mp4 zeroed: every sample skipped
        with open(tar, "r+b") as fh:
            for members in index_entries(tar).values():
                for ext, offset, size, _ in members:
                    if ext == "mp4":
                        fh.seek(offset)
                        fh.write(bytes(size))
    cfg = eval_cfg(shards, "data.on_error=skip")
    with pytest.raises(RuntimeError, match=re.escape(str(shards))):
        collect(cfg, torch.nn.Identity(), torch.device("cpu"), finetune=False)


def test_cli_writes_json_and_a_table_of_the_configured_recalls(labelled_shards, checkpoint, tmp_path, capsys,
                                                               monkeypatch):
    out = tmp_path / "eval.json"
    argv = ["--config", str(CONFIG), "--checkpoint", str(checkpoint), "--json", str(out)]
    for override in (f"data.eval_shards={labelled_shards}", "data.eval_split=train", "data.loader=reference",
                     "data.num_workers=0", "eval.recall_at=[1,2,20]"):
        argv += ["--set", override]
    assert main(argv) == 0
    result = json.loads(out.read_text())
    assert set(result["a2v"]) == {"r1", "r2", "r20", "median_rank"}
    head, _, row = capsys.readouterr().out.splitlines()
    assert head.split("|")[1].split() == ["a->v", "R@1", "R@2", "R@20"]
    assert row.split("|")[2].split() == [f"{result['v2a'][k]:.1f}" for k in ("r1", "r2", "r20")]
    assert format_table({"tiny": result}) == "\n".join([head, _, row])
    out.unlink()                                            # the JSON comes first: a failing table keeps it
    monkeypatch.setattr("deteclap.evaluate.format_table", lambda rows: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(argv)
    assert json.loads(out.read_text()) == result
