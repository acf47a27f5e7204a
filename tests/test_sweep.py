"""Threshold sweep: the real CLI trains one run per threshold through train.py on the same stored
label scores, writes sweep.json / sweep.png, and skips finished runs when started again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "tiny.json")


def overrides(shards: Path) -> list[str]:
    values = {"data.train_shards": str(shards), "data.eval_shards": str(shards), "data.eval_split": "train",
              "data.batch_size": 4, "data.num_workers": 0, "deepspeed.precision": "fp32",
              "run.max_steps": 2, "run.log_every": 1, "run.checkpoint_every": 2}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


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
