"""Run every benchmark that fits this machine, then regenerate the README's results section.

    python -m benchmarks [--shards DIR] [--clips N] [--skip shard,loader,label,train_step]

Shard, loader, label and train-step benchmarks write JSON under benchmarks/results/ with the
machine description; `benchmarks/report.py` turns those files into the README table and plots.
The loader and label benchmarks run on a synthetic shard set made here (kept under
benchmarks/results/.data/) unless --shards names one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / "results" / ".data"


def _run(args: list[str]) -> None:
    print("$", " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], check=True, cwd=REPO)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=None, help="shard folder for the loader / label benchmarks")
    parser.add_argument("--clips", type=int, default=256, help="synthetic 10 s clips when no --shards is given")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to skip: shard,loader,label,train_step")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    shards = args.shards
    if shards is None:
        shards = str(DATA / "shards")
        if not (DATA / "shards" / "dataset.json").is_file():
            _run(["-m", "deteclap.synth", str(DATA / "clips"), "--clips", str(args.clips), "--workers", "2"])
            _run(["-m", "deteclap.shard", str(DATA / "clips" / "truth.jsonl"), shards, "--workers", "2",
                  "--samples-per-shard", "32"])  # several tars: every loader worker gets its own
    if "shard" not in skip:
        _run(["benchmarks/shard.py"])
    if "loader" not in skip:
        _run(["benchmarks/loader.py", "--shards", shards, "--batch", "32", "--official-layout",
              "--official-dir", str(DATA / "official")])
    if "label" not in skip:
        _run(["benchmarks/label.py", "--shards", shards])
    if "train_step" not in skip:
        _run(["benchmarks/train_step.py"])
    _run(["benchmarks/report.py"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
