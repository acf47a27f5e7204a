"""Helpers shared by the benchmarks: the machine description and the result file writer.

Result files: benchmarks/results/NAME.json = {"benchmark": NAME, "machine": machine_info(),
"results": [{"name": ..., "clips_per_s" or "samples_per_s": ..., ...}]}: the latest run. Every run
also appends one line to HISTORY (history.jsonl beside the result file): {"benchmark", "commit",
"date", "machine", "results"} with each result's name and numbers, so that benchmarks/report.py can
draw each figure's trend per machine.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HISTORY = "history.jsonl"


def machine_info() -> dict:
    """CPU, core count, memory, Python and key library versions, and the GPU if torch sees one."""
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    for module in ("torch", "av", "numpy"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = None
    try:
        import torch
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        info["gpu"] = None
    return info


def git_commit() -> str:
    """The checkout's commit (short), "+dirty" when tracked files differ from it; "unknown" outside git."""
    repo = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def history_line(record: dict) -> dict:
    """A result record as one history entry: each result's name and its numbers (no lists or profiles)."""
    results = [{key: value for key, value in result.items()
                if key == "name" or (isinstance(value, (int, float)) and not isinstance(value, bool))}
               for result in record["results"]]
    return {"benchmark": record["benchmark"], "commit": git_commit(), "date": record["date"],
            "machine": record["machine"], "results": results}


def write_result(name: str, results: list[dict], path: str | Path | None = None) -> Path:
    """Write {"benchmark", "machine", "results"} JSON to `path` (default results/NAME.json) and
    append the run to the HISTORY file beside it."""
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine_info(), "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    with open(out.parent / HISTORY, "a") as history:
        history.write(json.dumps(history_line(record)) + "\n")
    return out
