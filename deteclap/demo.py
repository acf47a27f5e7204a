"""The main job on an embedded default: DETECLAP (OR) against CAV-MAE on synthetic fine-grained clips.

    python -m deteclap.demo [--out DIR] [--seeds 0,1] [--steps N]

No downloads, no GPU needed. It generates a synthetic fine-grained audio-visual set (train / test),
shards it, labels it with the ground-truth labeller (with per-modality noise, standing in for CLAP
and YOLO), pretrains a small CAV-MAE and a small DETECLAP (OR) with the same seed, data and budget
through the real training code (deteclap/train.py, DeepSpeed), evaluates retrieval both ways and
prints a table like the paper's Table I. Writes DIR/results.json (per variant: `a2v` and `v2a` with
`r1`, `r5`, `r10` (eval.recall_at), means over seeds, plus `sumR` and `per_seed` with each `seed`), DIR/run_info.json,
DIR/table.txt and DIR/results.png (loss curves, recall bars, retrieved examples). Uses DALI on a GPU
when present.

Runs are kept in DIR/runs/<variant>_seed<N>/: a run finished with the same config (steps, --set
values) is not trained again, one trained with another config is moved aside and trained again (see
`deteclap.sweep.reset_if_other_config`). The results cover every seed of DIR whose runs of both
variants finished with this call's config, so `--seeds 2,3` after `--seeds 0,1` summarises all four.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deteclap.config import load_config
from deteclap.sweep import finished, reset_if_other_config

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.json"
VARIANTS = ("cavmae", "or")
SAMPLES_PER_SHARD = 30  # several tars, so that every loader worker has its own


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def make_data(out: Path, train_clips: int, test_clips: int, seconds: float, workers: int) -> dict[str, Path]:
    """Synthetic train / test clips -> shards -> ground-truth label scores (skips what exists)."""
    from deteclap import label, shard, synth

    paths = {}
    for split, clips, seed in (("train", train_clips, 1), ("test", test_clips, 2)):
        clip_dir, shard_dir = out / "data" / split, out / "shards" / split
        if not (clip_dir / "truth.jsonl").is_file():
            code = synth.main([str(clip_dir), "--clips", str(clips), "--seconds", str(seconds), "--seed", str(seed),
                               "--workers", str(workers)])
            if code:
                raise SystemExit(f"generating {clip_dir} failed (exit {code})")
        if not (shard_dir / "dataset.json").is_file():
            code = shard.main([str(clip_dir / "truth.jsonl"), str(shard_dir), "--split", split, "--workers",
                               str(workers), "--samples-per-shard", str(SAMPLES_PER_SHARD), "--strict"])
            if code:
                raise SystemExit(f"sharding {clip_dir} failed (exit {code}); see {shard_dir / 'failures.jsonl'}")
        code = label.main([str(shard_dir), "--labellers", "truth", "--truth", str(clip_dir / "truth.jsonl")])
        if code:
            raise SystemExit(f"labelling {shard_dir} failed (exit {code})")
        paths[split] = shard_dir
    return paths


def train_overrides(variant: str, seed: int, shards: dict[str, Path], run_dir: Path, steps: int,
                    extra: list[str]) -> list[str]:
    """The `--set` values of one demo run on top of configs/demo.json."""
    overrides = [f"labels.variant={variant}", f"run.seed={seed}", f"data.seed={seed}",
                 f"data.train_shards={shards['train']}", f"data.eval_shards={shards['test']}",
                 f"run.out_dir={run_dir}", *extra]
    if steps:
        overrides.append(f"run.max_steps={steps}")
    return overrides


def train_variant(variant: str, seed: int, shards: dict[str, Path], run_dir: Path, steps: int,
                  extra: list[str]) -> Path:
    """Train one variant through the real application (a subprocess, as a user runs it), unless
    run_dir holds a run finished with the same config; a run of another config is trained again."""
    overrides = train_overrides(variant, seed, shards, run_dir, steps, extra)
    cfg = load_config(DEMO_CONFIG, overrides)
    reset_if_other_config(run_dir, cfg)
    if finished(run_dir, cfg):
        return run_dir
    cmd = [sys.executable, str(REPO / "deteclap" / "train.py"), "--config", str(DEMO_CONFIG), "--resume"]
    for item in overrides:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run(cmd, check=True, env=env)
    return run_dir


def run_path(out: Path, variant: str, seed: int) -> Path:
    """DIR/runs/<variant>_seed<N>: the run folder of one variant and seed."""
    return out / "runs" / f"{variant}_seed{seed}"


def finished_seeds(out: Path, shards: dict[str, Path], steps: int, extra: list[str]) -> list[int]:
    """Seeds in DIR/runs (from earlier calls too) whose runs of every variant finished with this
    call's config; nothing is trained or deleted."""
    def done(variant: str, seed: int) -> bool:
        run_dir = run_path(out, variant, seed)
        return finished(run_dir, load_config(DEMO_CONFIG, train_overrides(variant, seed, shards, run_dir, steps,
                                                                           extra)))

    seeds = {int(match[1]) for path in (out / "runs").glob("*_seed*")
             if (match := re.fullmatch(r"\w+_seed(\d+)", path.name))}
    return [seed for seed in sorted(seeds) if all(done(variant, seed) for variant in VARIANTS)]


def evaluate_run(variant: str, seed: int, shards: dict[str, Path], run_dir: Path,
                 extra: list[str]) -> dict[str, Any]:
    from deteclap.evaluate import evaluate

    cfg = load_config(DEMO_CONFIG, [f"labels.variant={variant}", f"data.train_shards={shards['train']}",
                                    f"data.eval_shards={shards['test']}", f"run.seed={seed}", *extra])
    result = evaluate(cfg, run_dir)
    (run_dir / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def summarise(per_seed: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """Mean over seeds of each recall, per variant; per-seed results (in the order of `seeds`) kept beside them."""
    out: dict[str, Any] = {}
    for variant, results in per_seed.items():
        entry: dict[str, Any] = {}
        for direction in ("a2v", "v2a"):
            recalls = [k for k in results[0][direction] if k[0] == "r" and k[1:].isdigit()]   # eval.recall_at
            entry[direction] = {k: statistics.fmean(r[direction][k] for r in results) for k in recalls}
        entry["sumR"] = statistics.fmean(r["sumR"] for r in results)
        entry["sumR_std"] = statistics.pstdev([r["sumR"] for r in results])
        entry["per_seed"] = [{"seed": seed, "a2v": r["a2v"], "v2a": r["v2a"], "sumR": r["sumR"]}
                             for seed, r in zip(seeds, results)]
        out[variant] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deteclap.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="folder for data, runs and results (kept)")
    parser.add_argument("--seeds", default="0,1", help="training seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (0: the demo config's)")
    parser.add_argument("--train-clips", type=int, default=240)
    parser.add_argument("--test-clips", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=4.0, help="clip length of the synthetic set")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value of configs/demo.json for every run (repeatable)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    _step("data: synthesise, shard, label")
    shards = make_data(out, args.train_clips, args.test_clips, args.seconds, args.workers)
    per_seed: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    runs = {}
    requested = [int(s) for s in args.seeds.split(",")]
    earlier = [s for s in finished_seeds(out, shards, args.steps, args.overrides) if s not in requested]
    if earlier:
        print(f"also summarising seeds {earlier}: finished in {out / 'runs'} with this config", flush=True)
    seeds = sorted({*requested, *earlier})
    for seed in seeds:
        for variant in VARIANTS:
            _step(f"train {variant} (seed {seed})")
            run_dir = run_path(out, variant, seed)
            train_variant(variant, seed, shards, run_dir, args.steps, args.overrides)
            per_seed[variant].append(evaluate_run(variant, seed, shards, run_dir, args.overrides))
            runs.setdefault(variant, []).append(run_dir)
    results = summarise(per_seed, seeds)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    from deteclap.evaluate import format_table

    table = format_table({v: results[v] for v in VARIANTS})
    delta = results["or"]["sumR"] - results["cavmae"]["sumR"]
    wins = sum(o["sumR"] > c["sumR"] for o, c in zip(results["or"]["per_seed"], results["cavmae"]["per_seed"]))
    verdict = (f"sumR difference OR - CAV-MAE: {delta:+.1f} (mean over {len(per_seed['or'])} seeds; "
               f"OR higher in {wins} of {len(per_seed['or'])})")
    (out / "table.txt").write_text(table + "\n" + verdict + "\n")
    info = {"seconds": time.time() - started, "seeds": seeds, "train_clips": args.train_clips,
            "test_clips": args.test_clips, "clip_seconds": args.seconds, "config": str(DEMO_CONFIG),
            "runs": {v: [str(p) for p in r] for v, r in runs.items()}}
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    from deteclap.plots import demo_figure

    demo_figure(out, runs, shards["test"], DEMO_CONFIG, args.overrides)
    print("\n" + table + "\n" + verdict)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.png'} in {info['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
