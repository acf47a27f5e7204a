"""The run folder that deteclap/train.py writes, and the checks that make `--resume` safe.

    RUN/config.json                     the resolved config of the run
    RUN/metrics.jsonl                   one JSON object per logged step (`step`, `lr`, every loss term)
    RUN/tb/                             TensorBoard scalars
    RUN/summary.json                    written at the end of the run
    RUN/model_wa.pt                     finetune.average_from_step > 0: the weight average
    RUN/eval.json                       deteclap/sweep.py's cached evaluation
    RUN/checkpoints/latest              names the newest complete checkpoint (moved atomically)
    RUN/checkpoints/step_XXXXXXXX/      DeepSpeed state (*model_states.pt, optimiser partitions) + model.pt

Every temporary file a run writes here is named `.NAME.tmp...` (hidden, `.tmp` after the name)
and replaced into place atomically; one left by a kill is an orphan, removed on the next start.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

LATEST = "latest"
MODEL_FILE = "model.pt"              # plain state dict in every checkpoint folder
AVERAGED_MODEL_FILE = "model_wa.pt"  # finetune.average_from_step > 0: the weight average
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
# what a run leaves in RUN besides checkpoints/ and config.json (eval.json: deteclap/sweep.py)
RUN_OUTPUTS = (METRICS_FILE, "tb", SUMMARY_FILE, AVERAGED_MODEL_FILE, "eval.json")
TAG_PATTERN = re.compile(r"step_\d{8}")
DEEPSPEED_STATES = "*model_states.pt"  # DeepSpeed writes one per checkpoint (mp_rank_00_... or zero_pp_rank_...)


class RunFolderError(RuntimeError):
    """A run folder that cannot be resumed as it is; the message names the file and what to do."""


def step_of(tag: str) -> int:
    """The step of a checkpoint folder name (step_00001234 -> 1234)."""
    return int(tag.removeprefix("step_"))


def tag_of(step: int) -> str:
    """The checkpoint folder name of a step (1234 -> step_00001234)."""
    return f"step_{step:08d}"


def is_orphan_tmp(path: Path) -> bool:
    """A temporary file of ours (`.NAME.tmp...`, see the module docstring)."""
    return path.name.startswith(".") and ".tmp" in path.name and path.is_file()


class RunDir:
    """Paths of one run, its `latest` pointer and its append-only metrics log."""

    def __init__(self, out_dir: str | Path):
        self.root = Path(out_dir)
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / METRICS_FILE
        self.latest = self.checkpoints / LATEST

    # --- checkpoints and the `latest` pointer
    def latest_tag(self) -> str | None:
        return self.latest.read_text().strip() if self.latest.is_file() else None

    def set_latest(self, tag: str) -> None:
        tmp = self.checkpoints / f".{LATEST}.tmp{os.getpid()}"
        tmp.write_text(tag + "\n")
        os.replace(tmp, self.latest)

    def complete_tags(self) -> list[str]:
        """The checkpoint folders that hold both DeepSpeed's state and model.pt, oldest first."""
        return sorted(p.name for p in self.checkpoints.glob("step_*")
                      if TAG_PATTERN.fullmatch(p.name) and self._complete(p))

    @staticmethod
    def _complete(folder: Path) -> bool:
        return (folder / MODEL_FILE).is_file() and any(folder.glob(DEEPSPEED_STATES))

    def resume_tag(self) -> str | None:
        """The checkpoint `--resume` continues from: `latest`'s, checked; None when there is no `latest`.

        Raises RunFolderError when `latest` names no complete checkpoint (emptied, edited, or its
        folder deleted), saying which checkpoints are complete and how to go on.
        """
        tag = self.latest_tag()
        if tag is None:
            return None
        folder = self.checkpoints / tag
        if TAG_PATTERN.fullmatch(tag) and self._complete(folder):
            return tag
        what = ("is not a checkpoint name (step_ and 8 digits)" if not TAG_PATTERN.fullmatch(tag)
                else f"but {folder} does not exist" if not folder.is_dir()
                else f"but {folder} lacks {MODEL_FILE} or DeepSpeed's {DEEPSPEED_STATES}")
        complete = self.complete_tags()
        remedy = (f"complete checkpoints here: {', '.join(complete)}; to resume from the newest: "
                  f"echo {complete[-1]} > {self.latest}" if complete else "there is no complete checkpoint here")
        raise RunFolderError(f"{self.latest} names {tag!r}, {what}. Cannot resume: {remedy}; or run without "
                             f"--resume to start afresh (the earlier run is moved to {self.root}/replaced-N)")

    def remove_after(self, step: int) -> list[str]:
        """Delete checkpoint folders newer than `step` (a resume from `step` writes them again: they are
        saves cut short, or made after the checkpoint `latest` names); returns their names."""
        newer = sorted(p.name for p in self.checkpoints.glob("step_*")
                       if p.is_dir() and TAG_PATTERN.fullmatch(p.name) and step_of(p.name) > step)
        for tag in newer:
            shutil.rmtree(self.checkpoints / tag)
        return newer

    def remove_orphan_tmp(self) -> list[Path]:
        """Delete the temporary files a kill left in RUN, RUN/checkpoints and its checkpoint folders."""
        folders = [self.root, self.checkpoints, *(p for p in self.checkpoints.glob("step_*") if p.is_dir())]
        orphans = [path for folder in folders if folder.is_dir() for path in folder.iterdir() if is_orphan_tmp(path)]
        for path in orphans:
            path.unlink(missing_ok=True)
        return orphans

    def set_aside(self) -> Path | None:
        """Move an earlier run's checkpoints, config.json and RUN_OUTPUTS to RUN/replaced-N (the first
        free N), so that a fresh run starts clean and nothing is lost; None when there is none."""
        if not (any(self.checkpoints.glob("step_*")) or self.latest.exists()
                or any((self.root / name).exists() for name in RUN_OUTPUTS)):
            return None
        aside = next(self.root / f"replaced-{n}" for n in itertools.count(1)
                     if not (self.root / f"replaced-{n}").exists())
        aside.mkdir()
        for name in ("checkpoints", CONFIG_FILE, *RUN_OUTPUTS):
            if (self.root / name).exists():
                (self.root / name).rename(aside / name)
        return aside

    def prune(self, keep: int, keep_models_from: int = 0) -> None:
        """Delete all but the newest `keep` complete checkpoints (never the one `latest` names); of
        those from step `keep_models_from` on (> 0) the model.pt stays, for weight averaging."""
        latest = self.latest_tag()
        tags = sorted(p.name for p in self.checkpoints.glob("step_*") if p.is_dir())
        for tag in tags[:-keep] if keep > 0 else []:
            if tag == latest:
                continue
            if 0 < keep_models_from <= step_of(tag):
                for path in (self.checkpoints / tag).iterdir():
                    if path.name != MODEL_FILE:
                        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink()
            else:
                shutil.rmtree(self.checkpoints / tag, ignore_errors=True)

    def average_models(self, from_step: int, to_step: float = math.inf) -> dict[str, Any] | None:
        """RUN/model_wa.pt = the mean of the model.pt of every checkpoint from `from_step` on, up to
        `to_step` (the run's final step), as CAV-MAE averages its fine-tuning epochs; None when there
        is none."""
        from deteclap.model.checkpoint import average_state_dicts, save_state_dict

        tags = sorted(p.parent.name for p in self.checkpoints.glob(f"step_*/{MODEL_FILE}")
                      if from_step <= step_of(p.parent.name) <= to_step)
        if not tags:
            return None
        save_state_dict(average_state_dicts([self.checkpoints / t / MODEL_FILE for t in tags]),
                        self.root / AVERAGED_MODEL_FILE)
        return {"path": str(self.root / AVERAGED_MODEL_FILE), "steps": [step_of(t) for t in tags]}

    # --- the metrics log
    def read_metrics(self) -> tuple[list[dict[str, Any]], str | None]:
        """The logged records, and the torn last line (None when there is none).

        A kill while a line is appended can leave the last line cut short; that step was not
        checkpointed yet (a step is logged before it is saved), so a resume drops it in any case.
        Any other line that is not a JSON object with a `step` raises RunFolderError naming the line.
        """
        if not self.metrics.is_file():
            return [], None
        lines = self.metrics.read_text().splitlines()
        records: list[dict[str, Any]] = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):
                    return records, line
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise RunFolderError(
                    f"{self.metrics}:{number}: not a metrics record ({line[:80]!r}); the log is damaged before "
                    f"its last line. Delete that line (or the lines from it on) to resume, or run without --resume")
            records.append(record)
        return records, None

    def truncate_metrics(self, after_step: int) -> str | None:
        """On resume, keep the records up to the checkpoint's step (so the log reads as one run) and
        drop a torn last line; rewritten atomically. Returns the torn line dropped, if any."""
        records, torn = self.read_metrics()
        if not self.metrics.is_file():
            return None
        tmp = self.root / f".{METRICS_FILE}.tmp{os.getpid()}"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in records if r["step"] <= after_step))
        os.replace(tmp, self.metrics)
        return torn

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
