"""End-to-end training on the CPU: the real deteclap/train.py, DeepSpeed and the launcher.

A tiny model on the synthetic shards: one process; the deepspeed launcher with 2 processes (gloo)
under ZeRO-2 and ZeRO-3; a run killed with SIGKILL and resumed reaches the losses of the
uninterrupted run; a fresh run in the folder of an earlier one moves that run aside; a NaN stops
the run and keeps the last good checkpoint; evaluation reads the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO, set_args, small_run, subprocess_env

TRAIN = str(REPO / "deteclap" / "train.py")
TERMS = ("total", "contrastive", "mae_audio", "mae_visual", "a2l", "v2l")


def overrides(shards: Path, out_dir: Path, **extra: object) -> list[str]:
    """`--set` arguments of a 4-step run (batches of 2, checkpoints every 2 steps) into out_dir."""
    return set_args(small_run(shards, **{"data.batch_size": 2, "run.out_dir": str(out_dir), "run.checkpoint_every": 2,
                                         "run.max_steps": 4, **extra}))


def run_train(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = (launcher or [sys.executable]) + [TRAIN, "--config", str(REPO / "configs" / "tiny.json"), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_one_process_logs_every_term_checkpoints_and_evaluates(labelled_shards, tmp_path):
    run_dir = tmp_path / "run"
    run_train(overrides(labelled_shards, run_dir))
    log = metrics(run_dir)
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    for record in log:
        assert all(term in record for term in TERMS)
        assert record["a2l"] > 0 and record["v2l"] > 0  # OR variant: both label heads train
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert (run_dir / "checkpoints" / "step_00000004" / "model.pt").is_file()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["samples"] == 8
    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "deteclap.evaluate", "--config", str(REPO / "configs" / "tiny.json"),
                           "--checkpoint", str(run_dir), "--json", str(out), *overrides(labelled_shards, run_dir)],
                          capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    for direction in ("a2v", "v2a"):
        assert set(result[direction]) >= {"r1", "r5", "r10", "median_rank"}
        assert 0 <= result[direction]["r1"] <= result[direction]["r5"] <= result[direction]["r10"] <= 100
    assert result["num_clips"] > 0


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_launcher_two_processes(labelled_shards, tmp_path, stage):
    run_dir = tmp_path / f"zero{stage}"
    with socket.socket() as sock:             # a free port: a fixed one can still be held by an earlier run
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    launcher = [shutil.which("deepspeed") or "deepspeed", "--num_gpus", "2", "--master_port", str(port)]
    run_train(overrides(labelled_shards, run_dir, **{"deepspeed.zero_stage": stage, "data.batch_size": 1,
                                                      "run.max_steps": 2}), launcher=launcher)
    log = metrics(run_dir)
    assert [r["step"] for r in log] == [1, 2]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["samples"] == 4
    files = os.listdir(run_dir / "checkpoints" / "step_00000002")
    assert sum("optim_states" in f for f in files) == 2, files  # ZeRO: one optimiser partition per rank
    states = sorted((run_dir / "checkpoints" / "step_00000002").glob("*model_states.pt"))
    client = torch.load(states[0], map_location="cpu", weights_only=False)   # DeepSpeed's client state
    assert client["positions"] == [[0, 2], [0, 2]]      # both ranks' data positions (batch 1, 2 steps)


def test_killed_run_resumes_to_the_same_losses(labelled_shards, tmp_path):
    steps = {"run.max_steps": 6, "run.checkpoint_every": 2}
    straight = tmp_path / "straight"
    run_train(overrides(labelled_shards, straight, **steps))
    killed = tmp_path / "killed"
    cmd = [sys.executable, TRAIN, "--config", str(REPO / "configs" / "tiny.json"),
           *overrides(labelled_shards, killed, **steps)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=subprocess_env(), cwd=REPO)
    latest = killed / "checkpoints" / "latest"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not latest.is_file():
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.is_file(), "the run ended before its first checkpoint"
    resumed_from = latest.read_text().strip()
    assert resumed_from != "step_00000006", "killed too late to test a resume"
    run_train(overrides(labelled_shards, killed, **steps) + ["--resume"])
    a, b = metrics(straight), metrics(killed)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]
    for ra, rb in zip(a, b):
        for term in TERMS:
            assert rb[term] == pytest.approx(ra[term], rel=1e-5, abs=1e-6), (ra["step"], term, resumed_from)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fresh_run_moves_an_earlier_run_aside(labelled_shards, tmp_path):
    """A fresh run with fewer steps in an earlier run's folder: the earlier run's newer checkpoints
    would outlive the new ones in prune() (and be weight-averaged); they go to RUN/replaced-1."""
    run_dir = tmp_path / "run"
    run_train(overrides(labelled_shards, run_dir, **{"run.max_steps": 6}))
    earlier = files(run_dir)
    assert "checkpoints/step_00000006/model.pt" in earlier and "summary.json" in earlier
    proc = run_train(overrides(labelled_shards, run_dir, **{"run.max_steps": 3, "run.checkpoint_every": 1,
                                                             "run.keep_checkpoints": 2}))
    checkpoints = run_dir / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_00000002", "step_00000003"]
    assert (checkpoints / "latest").read_text().strip() == "step_00000003"
    assert str(run_dir / "replaced-1") in proc.stdout
    assert files(run_dir / "replaced-1") == earlier
    assert [r["step"] for r in metrics(run_dir)] == [1, 2, 3]
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(labelled_shards, tmp_path):
    run_dir = tmp_path / "nan"
    run_train(overrides(labelled_shards, run_dir, **{"run.max_steps": 2}))
    proc = run_train(overrides(labelled_shards, run_dir, **{"run.max_steps": 4, "loss.mae_weight": "NaN"})
                     + ["--resume"], check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "non-finite loss at step 3" in proc.stderr and "step_00000002" in proc.stderr
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert not (run_dir / "checkpoints" / "step_00000004").exists()


def test_resume_over_what_a_kill_leaves(labelled_shards, tmp_path):
    """The folder a kill while saving step 4 leaves (`latest` still at step 2, step 4's DeepSpeed state
    written, its model.pt only an orphan temporary file), then the one a kill while logging step 4
    leaves (a torn last line in metrics.jsonl): each resume cleans up, says so, and reaches the
    losses of the uninterrupted run."""
    run_dir = tmp_path / "run"
    run_train(overrides(labelled_shards, run_dir))                     # 4 steps, checkpoints at 2 and 4
    straight = metrics(run_dir)
    checkpoints, log = run_dir / "checkpoints", run_dir / "metrics.jsonl"
    step4 = checkpoints / "step_00000004"

    (checkpoints / "latest").write_text("step_00000002\n")
    (step4 / "model.pt").rename(step4 / ".model.pt.tmp99999")
    proc = run_train(overrides(labelled_shards, run_dir) + ["--resume"])
    assert f"removed {step4 / '.model.pt.tmp99999'}" in proc.stdout
    assert f"removed {step4}: newer than step_00000002" in proc.stdout
    assert (step4 / "model.pt").is_file() and not list(run_dir.rglob(".*.tmp*"))

    (checkpoints / "latest").write_text("step_00000002\n")
    shutil.rmtree(step4)
    lines = log.read_text().splitlines()
    log.write_text("".join(line + "\n" for line in lines[:3]) + lines[3][:25])
    proc = run_train(overrides(labelled_shards, run_dir) + ["--resume"])
    assert f"{log}: dropped its torn last line" in proc.stdout
    resumed = metrics(run_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for ra, rb in zip(straight, resumed):
        for term in TERMS:
            assert rb[term] == pytest.approx(ra[term], rel=1e-5, abs=1e-6), (ra["step"], term)


def test_unusable_run_folder_or_config_stops_with_a_message(labelled_shards, tmp_path):
    """Checked before any training: a damaged metrics line before the last, `latest` naming a missing
    checkpoint, a value out of range (also through `python -m deteclap.train`)."""
    run_dir = tmp_path / "run"
    checkpoints = run_dir / "checkpoints" / "step_00000002"
    checkpoints.mkdir(parents=True)
    (checkpoints / "mp_rank_00_model_states.pt").write_bytes(b"state")
    (checkpoints / "model.pt").write_bytes(b"weights")
    (run_dir / "checkpoints" / "latest").write_text("step_00000002\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 1, "total": 1.0}\n{"step": 2, "to\n{"step": 3, "total": 0.5}\n')
    before = files(run_dir)

    def run_module(args: list[str]) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "deteclap.train", "--config", str(REPO / "configs" / "tiny.json"), *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=600)

    proc = run_module(overrides(labelled_shards, run_dir) + ["--resume"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"error: {run_dir / 'metrics.jsonl'}:2: not a metrics record" in proc.stderr
    assert "Traceback" not in proc.stderr

    (run_dir / "checkpoints" / "latest").write_text("step_00000008\n")
    proc = run_train(overrides(labelled_shards, run_dir) + ["--resume"], check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"{run_dir / 'checkpoints' / 'latest'} names 'step_00000008'" in proc.stderr
    assert f"echo step_00000002 > {run_dir / 'checkpoints' / 'latest'}" in proc.stderr
    assert files(run_dir) == {**before, "checkpoints/latest": b"step_00000008\n"}     # nothing changed

    for bad, fragment in (({"data.batch_size": 0}, "data.batch_size: 0 must be >= 1"),
                          ({"run.checkpoint_every": 0}, "run.checkpoint_every: 0 must be >= 1"),
                          ({"run.max_steps": -5}, "run.max_steps: -5 must be >= 1"),
                          ({"loss.mask_ratio_a": 1.5}, "loss.mask_ratio_a: 1.5 must lie in [0, 1)")):
        proc = run_module(overrides(labelled_shards, tmp_path / "fresh", **bad))
        assert proc.returncode == 2 and f"tiny.json (with --set overrides): {fragment}" in proc.stderr, proc.stderr
    assert not (tmp_path / "fresh").exists()
