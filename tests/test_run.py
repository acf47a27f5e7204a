"""deteclap.run: the run folder's checks before a resume, on damaged folders the tests build themselves.

A torn last line of metrics.jsonl, a damaged line before it, `latest` naming a missing, incomplete
or misnamed checkpoint, an orphan temporary file left by a process killed while saving model.pt,
and checkpoint folders newer than `latest`. The end-to-end resume over such a folder is in
tests/test_train.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from deteclap.run import RunDir, RunFolderError, is_orphan_tmp, tag_of


def write_metrics(run: RunDir, steps: range, tail: str = "") -> None:
    run.root.mkdir(parents=True, exist_ok=True)
    run.metrics.write_text("".join(json.dumps({"step": s, "total": 1.0 / s}) + "\n" for s in steps) + tail)


def make_checkpoint(run: RunDir, step: int, complete: bool = True) -> Path:
    folder = run.checkpoints / tag_of(step)
    folder.mkdir(parents=True)
    (folder / "mp_rank_00_model_states.pt").write_bytes(b"deepspeed state")
    if complete:
        (folder / "model.pt").write_bytes(b"weights")
    return folder


def test_torn_last_metrics_line_is_dropped_on_truncation(tmp_path):
    run = RunDir(tmp_path)
    write_metrics(run, range(1, 6), tail='{"step": 6, "total": 0.1')   # a kill mid-append
    records, torn = run.read_metrics()
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and torn == '{"step": 6, "total": 0.1'
    assert run.truncate_metrics(4) == torn
    assert [json.loads(line)["step"] for line in run.metrics.read_text().splitlines()] == [1, 2, 3, 4]
    assert not list(tmp_path.glob(".*"))                          # the atomic rewrite left no temporary file


@pytest.mark.parametrize("bad", ['{"step": 3, "to', '["not", "a", "record"]', '{"total": 1.0}', "garbage"])
def test_damaged_metrics_line_before_the_last_is_named(tmp_path, bad):
    run = RunDir(tmp_path)
    write_metrics(run, range(1, 3), tail=bad + "\n" + json.dumps({"step": 4, "total": 0.5}) + "\n")
    with pytest.raises(RunFolderError, match=r"metrics\.jsonl:3: not a metrics record .* Delete that line"):
        run.read_metrics()


def test_resume_tag_accepts_a_complete_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    make_checkpoint(run, 2)
    run.set_latest(tag_of(2))
    assert run.resume_tag() == "step_00000002"
    assert RunDir(tmp_path / "empty").resume_tag() is None       # nothing to resume: a fresh start


@pytest.mark.parametrize("latest, make, fragment", [
    ("step_00000006", None, "step_00000006', but .*step_00000006 does not exist"),
    ("step_00000006", "incomplete", "lacks model.pt"),
    ("", None, "names '', is not a checkpoint name"),
    ("../../etc", None, "is not a checkpoint name"),
])
def test_latest_naming_no_complete_checkpoint_stops_resume(tmp_path, latest, make, fragment):
    run = RunDir(tmp_path)
    make_checkpoint(run, 4)
    if make == "incomplete":
        make_checkpoint(run, 6, complete=False)
    (run.checkpoints / "latest").write_text(latest + "\n")
    with pytest.raises(RunFolderError) as err:
        run.resume_tag()
    message = str(err.value)
    assert str(run.checkpoints / "latest") in message
    assert re.search(fragment, message), message
    assert f"echo step_00000004 > {run.checkpoints / 'latest'}" in message and "without --resume" in message


def test_no_complete_checkpoint_at_all_is_said(tmp_path):
    run = RunDir(tmp_path)
    run.checkpoints.mkdir(parents=True)
    (run.checkpoints / "latest").write_text("step_00000002\n")
    with pytest.raises(RunFolderError, match="there is no complete checkpoint here"):
        run.resume_tag()


KILL_WHILE_SAVING = """
import os, signal, sys, torch
from deteclap.model.checkpoint import save_state_dict
os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)   # die between writing and renaming
save_state_dict({"w": torch.ones(3)}, sys.argv[1])
"""


def test_orphan_tmp_of_a_killed_save_is_removed(tmp_path):
    run = RunDir(tmp_path / "run")
    folder = make_checkpoint(run, 2, complete=False)
    proc = subprocess.run([sys.executable, "-c", KILL_WHILE_SAVING, str(folder / "model.pt")], timeout=120)
    assert proc.returncode == -signal.SIGKILL
    orphans = [p for p in folder.iterdir() if p.name.startswith(".model.pt.tmp")]
    assert len(orphans) == 1 and is_orphan_tmp(orphans[0]), list(folder.iterdir())
    (run.checkpoints / ".latest.tmp4242").write_text("step_00000002\n")
    (run.root / ".metrics.jsonl.tmp4242").write_text("")
    keep = [run.checkpoints / "latest", folder / "mp_rank_00_model_states.pt", run.root / "notes.tmp"]
    for path in keep:
        path.write_text("kept")
    removed = run.remove_orphan_tmp()
    assert sorted(p.name for p in removed) == sorted([orphans[0].name, ".latest.tmp4242", ".metrics.jsonl.tmp4242"])
    assert all(path.exists() for path in keep) and not any(p.exists() for p in removed)


def test_checkpoints_newer_than_latest_are_removed(tmp_path):
    run = RunDir(tmp_path)
    for step in (2, 4):
        make_checkpoint(run, step)
    make_checkpoint(run, 6, complete=False)                      # a save cut short
    run.set_latest(tag_of(4))
    assert run.remove_after(4) == ["step_00000006"]
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["latest", "step_00000002", "step_00000004"]
