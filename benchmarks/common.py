"""Helpers shared by the benchmarks: the machine description and the result file writer.

Result files: benchmarks/results/NAME.json = {"benchmark": NAME, "machine": machine_info(),
"results": [{"name": ..., "clips_per_s" or "samples_per_s": ..., ...}]}.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


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


def write_result(name: str, results: list[dict], path: str | Path | None = None) -> Path:
    """Write {"benchmark", "machine", "results"} JSON to `path` (default results/NAME.json)."""
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": machine_info(), "results": results}
    out.write_text(json.dumps(record, indent=2) + "\n")
    return out
