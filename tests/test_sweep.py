"""Threshold sweep: the real CLI trains one run per threshold through train.py on the same stored
label scores, writes sweep.json / sweep.png, and skips finished runs when started again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import REPO, set_args, small_run

CONFIG = str(REPO / "configs" / "tiny.json")


def overrides(shards: Path) -> list[str]:
    return set_args(small_run(shards, **{"data.batch_size": 4, "run.max_steps": 2, "run.checkpoint_every": 2}))


@pytest.fixture(autouse=True)
def cpu_env(monkeypatch):
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_sweep_one_run_per_threshold_reaching_the_targets(labelled_shards, tmp_path):
    from deteclap import sweep

    out = tmp_path / "sweep"
    argv = ["--config", CONFIG, *overrides(labelled_shards), "--audio-thresholds", "0.3,0.6", "--out", str(out)]
    shards_before = {p.name: p.stat().st_mtime_ns for p in Path(labelled_shards).glob("*.tar")}
    assert sweep.main(argv) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert [r["audio_threshold"] for r in result["runs"]] == [0.3, 0.6]
    assert all(r["visual_threshold"] == 0.4 and r["axis"] == "audio" for r in result["runs"])   # tiny.json value
    for r in result["runs"]:
        assert r["sumR"] == pytest.approx(sum(r[d][f"r{k}"] for d in ("a2v", "v2a") for k in (1, 5, 10)))
        assert r["num_clips"] == 8
    assert (out / "sweep.png").stat().st_size > 0

    first_steps = []
    for r in result["runs"]:
        run_dir = Path(r["run_dir"])
        resolved = json.loads((run_dir / "config.json").read_text())
        assert resolved["labels"]["audio_threshold"] == r["audio_threshold"]
        first_steps.append(json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0]))
    # same seed, batches and weights: only the label targets differ between the two runs
    assert first_steps[0]["mae_audio"] == first_steps[1]["mae_audio"]
    assert first_steps[0]["a2l"] != first_steps[1]["a2l"]
    # no relabelling: the shards were not rewritten
    assert {p.name: p.stat().st_mtime_ns for p in Path(labelled_shards).glob("*.tar")} == shards_before

    model = out / "audio_0.3" / "checkpoints" / "step_00000002" / "model.pt"
    stamp = model.stat().st_mtime_ns
    assert sweep.main(argv) == 0                       # resumable: finished runs are not trained again
    assert model.stat().st_mtime_ns == stamp
    assert json.loads((out / "sweep.json").read_text())["runs"] == result["runs"]


def test_plan_axes_grid_and_variants_that_ignore_a_threshold():
    from deteclap import sweep
    from deteclap.config import ConfigError, load_config

    cfg = load_config(CONFIG)
    points = sweep.plan(cfg, [0.3, 0.6], [0.2], grid=False)
    assert [(p.axis, p.audio_threshold, p.visual_threshold) for p in points] == [
        ("audio", 0.3, 0.4), ("audio", 0.6, 0.4), ("visual", 0.5, 0.2)]
    assert len({p.name for p in sweep.plan(cfg, [0.3, 0.6], [0.2, 0.4], grid=True)}) == 4
    with pytest.raises(ConfigError, match="does not use the visual threshold"):
        sweep.plan(load_config(CONFIG, ["labels.variant=audio"]), [], [0.2], grid=False)
    with pytest.raises(ConfigError, match="does not use the audio threshold"):
        sweep.plan(load_config(CONFIG, ["labels.variant=soft_max"]), [0.3], [], grid=False)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sweep.parse_thresholds("0.3,1.5")
    with pytest.raises(SystemExit):
        sweep.main(["--config", CONFIG])                 # no thresholds: a usage error


def fake_train_point(calls: list[str]):
    """Stands in for sweep.train_point: writes what train.py writes at the start and the end of a run."""
    from deteclap.config import load_config

    def train_point(config, overrides, run_dir, log, launcher):
        cfg = load_config(config, overrides)
        calls.append(run_dir.name)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))
        (run_dir / "summary.json").write_text(json.dumps({"steps": cfg.run.max_steps}))
    return train_point


def fake_evaluate(calls: list[str]):
    """Stands in for deteclap.evaluate.evaluate: sumR 100 for a run trained as `or`, 200 otherwise."""
    def evaluate(cfg, run_dir):
        calls.append(run_dir.name)
        trained = json.loads((run_dir / "config.json").read_text())
        return {"a2v": {}, "v2a": {}, "num_clips": 0, "sumR": 100.0 if trained["labels"]["variant"] == "or" else 200.0}
    return evaluate


@pytest.fixture
def stub_sweep(monkeypatch):
    """Stubs training, evaluation and the figure of deteclap.sweep; returns (trained, evaluated) run names."""
    from deteclap import evaluate, sweep

    trained, evaluated = [], []
    monkeypatch.setattr(sweep, "train_point", fake_train_point(trained))
    monkeypatch.setattr(evaluate, "evaluate", fake_evaluate(evaluated))
    monkeypatch.setattr(sweep, "plot_sweep", lambda s, path: path)
    return trained, evaluated


def test_sweep_retrains_a_run_of_another_config_under_the_same_folder(stub_sweep, tmp_path, capsys):
    from deteclap import sweep
    from deteclap.config import load_config

    trained, evaluated = stub_sweep
    out = tmp_path / "sweep"

    def run(*overrides):
        points = sweep.plan(load_config(CONFIG, overrides), [0.3], [], grid=False)
        return sweep.run_sweep(CONFIG, list(overrides), points, out)["runs"][0]["sumR"]

    assert run("labels.variant=or") == 100.0
    assert run("labels.variant=or") == 100.0           # same config: neither trained nor evaluated again
    assert trained == evaluated == ["audio_0.3"]
    assert run("labels.variant=and") == 200.0          # the `or` run of audio_0.3 is not reused
    assert "labels.variant: \"or\" -> \"and\"" in capsys.readouterr().out
    assert run("labels.variant=and", "run.max_steps=3") == 200.0   # nor one of fewer steps
    assert trained == evaluated == ["audio_0.3"] * 3
    assert "run.max_steps: 50 -> 3" in capsys.readouterr().out
    moved = sorted(p.name for p in out.glob("audio_0.3.replaced-*"))      # set aside, not deleted
    assert moved == ["audio_0.3.replaced-1", "audio_0.3.replaced-2"]
    assert json.loads((out / moved[0] / "config.json").read_text())["labels"]["variant"] == "or"


def test_sweep_resumes_an_unfinished_run_of_the_same_config(stub_sweep, tmp_path):
    from deteclap import sweep
    from deteclap.config import load_config

    trained, _ = stub_sweep
    out = tmp_path / "sweep"
    point = sweep.plan(load_config(CONFIG), [0.3], [], grid=False)[0]
    cfg = load_config(CONFIG, point.overrides(out))
    run_dir = out / point.name
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_dict()))   # killed before summary.json
    (run_dir / "checkpoints" / "latest").write_text("step_00000001\n")
    sweep.run_sweep(CONFIG, [], [point], out)
    assert trained == ["audio_0.3"] and (run_dir / "checkpoints" / "latest").is_file()   # kept for --resume


def test_evaluation_cache_is_reused_only_for_the_same_config(stub_sweep, tmp_path):
    from deteclap import sweep
    from deteclap.config import load_config

    _, evaluated = stub_sweep
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trained_as = load_config(CONFIG, ["labels.variant=and"])
    (run_dir / "config.json").write_text(json.dumps(trained_as.to_dict()))
    (run_dir / sweep.EVAL_FILE).write_text(json.dumps({"sumR": 1.0, "version": sweep.EVAL_VERSION}))
    assert sweep.evaluate_point(trained_as, run_dir) == {"sumR": 1.0}
    (run_dir / "config.json").write_text(json.dumps(load_config(CONFIG, ["labels.variant=or"]).to_dict()))
    assert sweep.evaluate_point(trained_as, run_dir)["sumR"] == 100.0   # eval.json of the `and` run: stale
    assert evaluated == ["run"]
    (run_dir / "config.json").write_text(json.dumps(trained_as.to_dict()))
    (run_dir / sweep.EVAL_FILE).write_text(json.dumps({"sumR": 1.0}))   # written by older code: no version
    assert sweep.evaluate_point(trained_as, run_dir)["sumR"] == 200.0     # evaluated again (an `and` run)
    assert evaluated == ["run", "run"]
    assert json.loads((run_dir / sweep.EVAL_FILE).read_text())["version"] == sweep.EVAL_VERSION


def test_config_differences_name_each_changed_key_but_not_the_run_folder(tmp_path):
    from deteclap.config import config_differences, load_config

    assert config_differences(tmp_path, load_config(CONFIG)) == [f"{tmp_path / 'config.json'} is missing or unreadable"]
    stored = load_config(CONFIG, ["run.out_dir=elsewhere"]).to_dict()
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert config_differences(tmp_path, load_config(CONFIG)) == []
    assert config_differences(tmp_path, load_config(CONFIG, ["labels.audio_threshold=0.3", "run.log_every=1"])) == [
        f"labels.audio_threshold: {stored['labels']['audio_threshold']} -> 0.3",
        f"run.log_every: {stored['run']['log_every']} -> 1"]
    del stored["loss"]["bidirectional"]                 # a config.json of an older version
    (tmp_path / "config.json").write_text(json.dumps(stored))
    assert config_differences(tmp_path, load_config(CONFIG)) == ["loss.bidirectional: (absent) -> false"]
