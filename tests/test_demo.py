"""The main job end to end at a toy size: data, labels, two trainings, retrieval, table and figure."""

import json
from pathlib import Path

import pytest

from deteclap import demo


def test_demo_writes_results_for_both_variants(tmp_path):
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--train-clips", "12", "--test-clips", "6", "--seconds", "2",
                      "--seeds", "0", "--steps", "2", "--set", "data.batch_size=4"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"cavmae", "or"}
    for variant in results.values():
        for direction in ("a2v", "v2a"):
            assert set(variant[direction]) == {"r1", "r5", "r10"}
            assert 0 <= variant[direction]["r1"] <= variant[direction]["r5"] <= variant[direction]["r10"] <= 100
    assert (out / "results.png").stat().st_size > 10_000
    table = (out / "table.txt").read_text()
    assert "cavmae" in table and "sumR difference OR - CAV-MAE" in table
    for variant in ("cavmae", "or"):
        lines = (out / "runs" / f"{variant}_seed0" / "metrics.jsonl").read_text().splitlines()
        log = [json.loads(line) for line in lines]
        assert log[-1]["step"] == 2
        assert (log[-1]["a2l"] > 0) == (variant == "or")  # only DETECLAP trains the label heads


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


def fake_evaluate(cfg, run_dir):
    """Stands in for deteclap.evaluate.evaluate: sumR 10 * seed, + 1 for `or`."""
    recalls = {"r1": 0.0, "r5": 0.0, "r10": 0.0}
    return {"a2v": recalls, "v2a": recalls, "sumR": 10.0 * cfg.run.seed + (cfg.labels.variant == "or")}


@pytest.fixture
def stub_demo(monkeypatch, tmp_path):
    """Stubs the demo's data, training (train.py), evaluation and figure; returns the trained run names."""
    from deteclap import evaluate, plots

    trained: list[str] = []
    shards = {"train": tmp_path / "shards" / "train", "test": tmp_path / "shards" / "test"}
    monkeypatch.setattr(demo, "make_data", lambda *args: shards)
    monkeypatch.setattr(demo.subprocess, "run", fake_train_py(trained))
    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate)
    monkeypatch.setattr(plots, "demo_figure", lambda *args: None)
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
        assert json.loads((out / "run_info.json").read_text())["seeds"] == [r["seed"] for r in per_seed]
        return [r["sumR"] for r in per_seed]

    assert summarised("--seeds", "0,1", "--steps", "3") == [1.0, 11.0]
    assert summarised("--seeds", "2,3", "--steps", "3") == [1.0, 11.0, 21.0, 31.0]   # the README's 4-seed table
    assert "mean over 4 seeds" in (out / "table.txt").read_text()
    assert len(stub_demo) == 8                                                       # seeds 0, 1 not trained again
    assert summarised("--seeds", "2", "--steps", "4") == [21.0]                       # other steps: not seeds 0, 1, 3
    assert summarised("--seeds", "1", "--steps", "3") == [1.0, 11.0, 31.0]            # seed 2's runs now have 4 steps
    assert len(stub_demo) == 10


def test_demo_tables_the_configured_recalls(stub_demo, tmp_path, monkeypatch):
    from deteclap import evaluate

    def evaluate_recalls(cfg, run_dir):                      # R@k for the configured k only
        recalls = {f"r{k}": float(k) for k in cfg.eval.recall_at}
        return {"a2v": recalls, "v2a": recalls, "sumR": 2.0 * sum(recalls.values())}

    monkeypatch.setattr(evaluate, "evaluate", evaluate_recalls)
    out = tmp_path / "demo"
    assert demo.main(["--out", str(out), "--seeds", "0", "--steps", "3", "--set", "eval.recall_at=[1,2]"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["or"]["a2v"] == {"r1": 1.0, "r2": 2.0}
    assert "R@2" in (out / "table.txt").read_text()
