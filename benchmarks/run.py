"""Run every benchmark that fits this machine, then regenerate the README's results section.

    python -m benchmarks [--shards DIR [--truth JSONL]] [--clips N]
                         [--skip shard,audio,loader,label,train_step,embed]

Shard, loader, label, train-step and embed / search benchmarks write JSON under benchmarks/results/ with the
machine description; `benchmarks/report.py` turns those files into the README table and plots.
The audio, loader and label benchmarks run on a synthetic shard set made here (kept under
benchmarks/results/.data/: `shards`, and the same clips with `--audio-format flac` in `shards_flac`,
so that the loader benchmark compares both audio formats side by side) unless --shards names one;
the truth labeller's row needs that set's truth.jsonl (the synthetic set's, or --truth), so --shards
without --truth times CLAP and YOLO only.
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
    parser.add_argument("--truth", default=None, help="truth.jsonl of --shards (for the truth labeller's row)")
    parser.add_argument("--clips", type=int, default=256, help="synthetic 10 s clips when no --shards is given")
    parser.add_argument("--skip", default="",
                        help="comma-separated benchmarks to skip: shard,audio,loader,label,train_step,embed")
    args = parser.parse_args(argv)
    if args.truth and not args.shards:
        parser.error("--truth goes with --shards (the synthetic set brings its own)")
    skip = set(filter(None, args.skip.split(",")))
    shards, truth = args.shards, args.truth
    loader_shards = [shards]
    if shards is None:
        shards, truth = str(DATA / "shards"), str(DATA / "clips" / "truth.jsonl")
        loader_shards = [shards, str(DATA / "shards_flac")]
        if not (DATA / "clips" / "truth.jsonl").is_file():
            _run(["-m", "deteclap.synth", str(DATA / "clips"), "--clips", str(args.clips), "--workers", "2"])
        for folder, audio_format in zip(loader_shards, ("pcm", "flac")):
            if not (Path(folder) / "dataset.json").is_file():     # (resumable: a finished set is kept)
                _run(["-m", "deteclap.shard", truth, folder, "--workers", "2", "--audio-format", audio_format,
                      "--samples-per-shard", "32"])  # several tars: every loader worker gets its own
    if "shard" not in skip:
        _run(["benchmarks/shard.py"])
    if "audio" not in skip:
        _run(["benchmarks/audio.py", "--shards", shards])
    if "loader" not in skip:
        _run(["benchmarks/loader.py", "--shards", *loader_shards, "--batch", "32", "--official-layout",
              "--official-dir", str(DATA / "official")])
    if "label" not in skip:
        _run(["benchmarks/label.py", "--shards", shards,
              *(["--truth", truth] if truth else ["--labellers", "clap,yolo"])])
    if "train_step" not in skip:
        _run(["benchmarks/train_step.py"])
    if "embed" not in skip:
        _run(["benchmarks/embed.py"])
    _run(["benchmarks/report.py"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
