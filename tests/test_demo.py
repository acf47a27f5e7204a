"""The main job end to end at a toy size (data, labels, two trainings, every metric, tables, figure),
and its bookkeeping (reruns, seeds, recalls, the comparison) with training and evaluation stubbed."""

import json
from pathlib import Path

import numpy as np
import pytest

from deteclap import demo
from deteclap.metrics import class_retrieval_map, hubness, query_sum_r


def test_demo_writes_every_metric_for_both_variants(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--train-clips", "12", "--test-clips", "9", "--seconds", "2",
                      "--seeds", "0", "--steps", "2", "--set", "data.batch_size=4",
                      "--markdown", str(tmp_path / "docs" / "demo.md")]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"cavmae", "or", "seeds", "comparison", "chance", "settings"} <= set(results)
    assert results["seeds"] == [0] and results["num_test_clips"] == 9
    from deteclap.synth import object_names       # the labels cover the objects the clips can hold

    for split in ("train", "test"):
        assert json.loads((out / "shards" / split / "dataset.json").read_text())["label_vocabulary"] == object_names()
    for name in ("cavmae", "or"):
        variant = results[name]
        for direction in ("a2v", "v2a"):
            assert set(variant[direction]) == {"r1", "r5", "r10"}
            assert 0 <= variant[direction]["r1"] <= variant[direction]["r5"] <= variant[direction]["r10"] <= 100
        assert 0 < variant["class_map"] <= 100 and 0 < variant["super_map"] <= 100
        assert variant["class_map"] <= variant["super_map"]      # a fine class lies inside its super-category
        assert 1 <= variant["hubness"]["top1_distinct"] <= 9 and 1 / 9 <= variant["hubness"]["top1_max_share"] <= 1
        assert [r["seed"] for r in variant["per_seed"]] == [0]
        # what the run's retrieval.json holds agrees with the summary and the metric functions
        run = json.loads((out / "runs" / f"{name}_seed0" / "retrieval.json").read_text())
        assert np.mean(run["clip_sumR"]) == pytest.approx(variant["sumR"])
        assert run["class_map"] == variant["class_map"] and len(run["keys"]) == 9
        assert variant["hubness"]["top1_distinct"] == np.mean([run["hubness"][d]["top1_distinct"]
                                                                for d in ("a2v", "v2a")])
    comparison = results["comparison"]
    assert comparison["sumR_diff_mean"] == pytest.approx(results["or"]["sumR"] - results["cavmae"]["sumR"])
    low, high = comparison["sumR_diff_ci95"]
    assert low <= comparison["sumR_diff_mean"] <= high
    assert comparison["or_higher_in"] in (0, 1)
    assert (out / "results.png").stat().st_size > 10_000
    for name in ("cavmae", "or"):          # each model's index of the test clips and its results pages
        index = json.loads((out / "pages" / name / "index" / "index.json").read_text())
        assert index["count"] == 9
        found = sorted((out / "pages" / name).glob("*.json"))
        assert len(found) == 3 and len(list((out / "pages" / name).glob("*.html"))) == 3
        for page in found:
            result = json.loads(page.read_text())
            assert [r["rank"] for r in result["results"]] == [1, 2, 3, 4, 5]
            assert (result["results"][0]["shared_classes"] is None) == (name == "cavmae")
    table = (out / "table.txt").read_text()
    assert "cavmae" in table and "class_map" in table and comparison["verdict"] in table
    assert (tmp_path / "docs" / "demo.md").read_text() == (out / "demo.md").read_text()
    for variant in ("cavmae", "or"):
        lines = (out / "runs" / f"{variant}_seed0" / "metrics.jsonl").read_text().splitlines()
        log = [json.loads(line) for line in lines]
        assert log[-1]["step"] == 2
        assert (log[-1]["a2l"] > 0) == (variant == "or")  # only DETECLAP trains the label heads


def test_retrieval_report_of_perfect_and_collapsed_embeddings():
    import torch

    fine = np.array([0, 0, 1, 1, 2, 2])
    coarse = np.array([0, 0, 0, 0, 1, 1])
    emb = torch.eye(6)
    perfect = demo.retrieval_report(emb, emb, fine, coarse)
    assert perfect["sumR"] == 600 and perfect["class_map"] < 100    # own pair first, class mates after others
    assert perfect["hubness"]["a2v"] == {"top1_distinct": 6, "top1_max_share": 1 / 6}
    assert len(perfect["top"]) == 6 and [row[0] for row in perfect["top"]] == list(range(6))
    by_class = torch.cat([torch.nn.functional.one_hot(torch.as_tensor(fine)).float(), 0.01 * emb], dim=1)
    grouped = demo.retrieval_report(by_class, by_class, fine, coarse)
    assert grouped["class_map"] == 100.0 and grouped["a2v"]["r1"] == 100.0
    hub = torch.zeros(6, 4)
    hub[:, 0] = 1.0
    hub[0, 1] = 0.5                                                   # every visual item the same but one
    collapsed = demo.retrieval_report(torch.ones(6, 4), hub, fine, coarse)
    sim = torch.nn.functional.normalize(torch.ones(6, 4).double(), dim=-1) @ \
        torch.nn.functional.normalize(hub.double(), dim=-1).T
    assert collapsed["hubness"]["a2v"] == hubness(sim) and collapsed["hubness"]["a2v"]["top1_max_share"] == 1.0
    assert collapsed["class_map"] == pytest.approx(class_retrieval_map(sim, fine))
    assert collapsed["clip_sumR"] == query_sum_r(sim).tolist()


def _run_result(sum_r_per_clip: list[float]) -> dict:
    return {"sumR": float(np.mean(sum_r_per_clip)), "clip_sumR": sum_r_per_clip}


def test_compare_says_whether_the_claim_held():
    seeds = [0, 1, 2, 3]
    cav = [_run_result([100.0, 0.0, 200.0]) for _ in seeds]
    ahead = [_run_result([200.0, 100.0, 300.0]) for _ in seeds]
    held = demo.compare({"or": ahead, "cavmae": cav}, seeds)
    assert held["sumR_diff_ci95"] == [100.0, 100.0] and held["sumR_diff_mean"] == 100.0
    assert held["or_higher_in"] == 4 and held["claim_held"] is True and held["verdict"].startswith("The claim held")
    behind = demo.compare({"or": cav, "cavmae": ahead}, seeds)
    assert behind["claim_held"] is False and behind["or_higher_in"] == 0
    mixed = [_run_result([300.0, 100.0, 200.0]), _run_result([0.0, 0.0, 100.0])] * 2   # +100, -66.7 per seed
    unclear = demo.compare({"or": mixed, "cavmae": cav}, seeds)
    low, high = unclear["sumR_diff_ci95"]
    assert low < 0 < high and unclear["claim_held"] is None and unclear["or_higher_in"] == 2
    assert [r["seed"] for r in unclear["per_seed"]] == seeds


def test_make_data_refuses_a_folder_made_with_other_settings(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "synth.json").write_text(json.dumps(
        {"train_clips": 960, "test_clips": 60, "seconds": 2.0, "fps": 5, "difficulty": 1.0}))
    with pytest.raises(SystemExit, match="difficulty: 1.0 -> 0.5, label_vocabulary: None -> 20 names"):
        demo.make_data(tmp_path, 960, 60, 2.0, 1, 5, 0.5)


def test_write_markdown_replaces_only_the_marked_section(tmp_path):
    path = tmp_path / "demo.md"
    demo.write_markdown(path, "first\n")
    assert path.read_text() == "first\n"
    path.write_text(f"# hand-written\n{demo.MARKDOWN_START}\nold\n{demo.MARKDOWN_END}\ntail\n")
    demo.write_markdown(path, "new\n")
    assert path.read_text() == f"# hand-written\n{demo.MARKDOWN_START}\nnew\n{demo.MARKDOWN_END}\ntail\n"


def test_budgets_add_their_overrides():
    assert demo.budget_overrides("default") == []
    steps = demo.load_config(demo.DEMO_CONFIG).run.max_steps
    assert demo.budget_overrides("paper") == ["loss.contrastive_weight=0.01", "loss.a2l_weight=1.0",
                                              "loss.v2l_weight=1.0", f"run.max_steps={steps * demo.PAPER_STEP_FACTOR}"]
    with pytest.raises(ValueError, match="unknown budget"):
        demo.budget_overrides("huge")


# ----------------------------------------------------------------------------------------------
# bookkeeping, with training and evaluation stubbed
def fake_train_py(trained: list[str]):
    """Stands in for subprocess.run of deteclap/train.py: writes the run's config.json and summary.json."""
    from deteclap.config import load_config

    def run(cmd, **kwargs):
        config = cmd[cmd.index("--config") + 1]
        cfg = load_config(config, [cmd[i + 1] for i, arg in enumerate(cmd) if arg == "--set"])
        run_dir = Path(cfg.run.out_dir)
        trained.append(run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
        (run_dir / "summary.json").write_text(json.dumps({"steps": cfg.run.max_steps}))
    return run


def fake_evaluate_run(variant, seed, shards, run_dir, extra, ks=(1, 5, 10)):
    """Stands in for demo.evaluate_run: sumR 10 * seed, + 1 for `or`, on three clips."""
    sum_r = 10.0 * seed + (variant == "or")
    recalls = {f"r{k}": 0.0 for k in ks}
    return {"a2v": {**recalls, "median_rank": 2.0}, "v2a": {**recalls, "median_rank": 2.0}, "sumR": sum_r,
            "class_map": 50.0, "super_map": 70.0, "clip_sumR": [sum_r] * 3, "keys": ["a", "b", "c"],
            "classes": ["Dog", "Cat", "Car"], "top": [[0, 1, 2]],
            "hubness": {d: {"top1_distinct": 3, "top1_max_share": 1 / 3} for d in ("a2v", "v2a")}}


@pytest.fixture
def stub_demo(monkeypatch, tmp_path):
    """Stubs the demo's data, training (train.py), evaluation, figure and results pages; returns the trained
    run names."""
    from deteclap import plots

    trained: list[str] = []
    shards = {"train": tmp_path / "shards" / "train", "test": tmp_path / "shards" / "test"}
    monkeypatch.setattr(demo, "make_data", lambda *args, **kwargs: shards)
    monkeypatch.setattr(demo.subprocess, "run", fake_train_py(trained))
    monkeypatch.setattr(demo, "evaluate_run", fake_evaluate_run)
    monkeypatch.setattr(plots, "demo_figure", lambda *args: None)
    monkeypatch.setattr(demo, "write_pages", lambda *args: [])
    return trained


def test_train_variant_retrains_when_steps_or_settings_change(stub_demo, tmp_path, capsys):
    shards = demo.make_data()
    run_dir = tmp_path / "runs" / "or_seed0"
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"steps": 3}))   # a run of unknown config
    trained = []
    for steps, extra in ((3, []), (3, []), (5, []), (5, ["loss.contrastive_weight=0.5"]),
                         (5, ["loss.contrastive_weight=0.5"])):
        before = len(stub_demo)
        demo.train_variant("or", 0, shards, run_dir, steps, extra)
        trained.append(len(stub_demo) > before)
    assert trained == [True, False, True, True, False]
    out = capsys.readouterr().out
    assert "run.max_steps: 3 -> 5" in out and "loss.contrastive_weight: 1.0 -> 0.5" in out


def test_demo_summarises_every_finished_seed_of_the_folder(stub_demo, tmp_path):
    out = tmp_path / "demo"

    def summarised(*argv):
        assert demo.main(["--out", str(out), *argv]) == 0
        results = json.loads((out / "results.json").read_text())
        per_seed = results["or"]["per_seed"]
        assert results["seeds"] == [r["seed"] for r in per_seed]
        assert json.loads((out / "run_info.json").read_text())["seeds"] == results["seeds"]
        assert results["comparison"]["or_higher_in"] == len(per_seed)          # + 1 in every seed
        assert results["comparison"]["sumR_diff_ci95"] == [1.0, 1.0]
        return [r["sumR"] for r in per_seed]

    assert summarised("--seeds", "0,1", "--steps", "3") == [1.0, 11.0]
    assert summarised("--seeds", "2,3", "--steps", "3") == [1.0, 11.0, 21.0, 31.0]
    assert "OR higher in 4 of 4 seeds" in (out / "table.txt").read_text()
    assert len(stub_demo) == 8                                                       # seeds 0, 1 not trained again
    assert summarised("--seeds", "2", "--steps", "4") == [21.0]                       # other steps: not seeds 0, 1, 3
    assert summarised("--seeds", "1", "--steps", "3") == [1.0, 11.0, 31.0]            # seed 2's runs now have 4 steps
    assert len(stub_demo) == 10
    assert summarised("--steps", "3") == [1.0, 11.0, 21.0, 31.0]                      # default: seeds 0-3


def test_demo_tables_the_configured_recalls(stub_demo, tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "evaluate_run", lambda *args: fake_evaluate_run(*args, ks=(1, 2)))
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--seeds", "0", "--steps", "3", "--set", "eval.recall_at=[1,2]"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["or"]["a2v"] == {"r1": 0.0, "r2": 0.0}
    assert set(results["chance"]) == {"r1", "r2", "sumR", "class_map", "super_map"}
    assert "a2v R@2" in (out / "table.txt").read_text()
