"""Label-threshold sweep (the paper's Fig. 3): retrieval sumR as a function of each labeller's threshold.

    python -m deteclap.sweep --config configs/or.json --audio-thresholds 0.3,0.4,0.5,0.6 \\
        --visual-thresholds 0.2,0.3,0.4,0.5 [--grid] [--out DIR] [--set section.key=value ...]

By default one axis at a time: each audio threshold with `labels.visual_threshold` at its config
value, then each visual threshold with `labels.audio_threshold` at its config value; `--grid` trains
every (audio, visual) pair instead. Each point is one run of the real training application
(`deteclap/train.py` in a subprocess, or under `--launcher "deepspeed --num_gpus 8"`) in
DIR/<name>/, then retrieval evaluation (`deteclap.evaluate`) of its last checkpoint.

All runs read the SAME stored label scores: a threshold only changes the config
(`--set labels.audio_threshold=...`), never the shards, so the sweep needs no relabelling.

Resumable: a run trained with the same config (its config.json, all but run.out_dir: see
`deteclap.config.config_differences`) whose summary.json reports `run.max_steps` steps is not trained
again and a stored DIR/<name>/eval.json is reused; an unfinished one continues from its latest checkpoint
(--resume). A run folder trained with another config (other --set values, variant or steps under the
same DIR) is moved aside to DIR/<name>.replaced-N, naming the differences, and trained again
from step 0.
Writes DIR/sweep.json (per run: thresholds, sumR, a2v / v2a recalls) and DIR/sweep.png
(sumR vs threshold, one panel per labeller; a heat map with --grid). Training logs: DIR/<name>.log.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deteclap.config import Config, ConfigError, add_config_args, config_differences, load_config

TRAIN_SCRIPT = Path(__file__).resolve().parent / "train.py"
DEFAULT_OUT = "runs/sweep"
EVAL_FILE = "eval.json"
# of the evaluation in eval.json; 2: median rank as CAV-MAE computes it, eval shards read without labels
EVAL_VERSION = 2
LOG_TAIL_CHARS = 3000
# Variants whose targets depend on each threshold (deteclap.data.targets: soft variants ignore both).
THRESHOLD_VARIANTS = {"audio": ("audio", "separate", "and", "or"),
                      "visual": ("visual", "separate", "and", "or")}


@dataclass(frozen=True)
class SweepPoint:
    """One run of the sweep: which axis it belongs to ("audio", "visual" or "grid") and its thresholds."""
    axis: str
    audio_threshold: float
    visual_threshold: float

    @property
    def name(self) -> str:
        if self.axis == "audio":
            return f"audio_{self.audio_threshold:g}"
        if self.axis == "visual":
            return f"visual_{self.visual_threshold:g}"
        return f"grid_a{self.audio_threshold:g}_v{self.visual_threshold:g}"

    def overrides(self, out_dir: Path) -> list[str]:
        return [f"labels.audio_threshold={self.audio_threshold}", f"labels.visual_threshold={self.visual_threshold}",
                f"run.out_dir={out_dir / self.name}"]


def parse_thresholds(text: str) -> list[float]:
    """'0.3,0.4' -> [0.3, 0.4]; raises ValueError for non-numbers or values outside [0, 1]."""
    values = [float(part) for part in text.split(",") if part.strip()]
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"thresholds must lie in [0, 1], got {bad}")
    return values


def plan(cfg: Config, audio: list[float], visual: list[float], grid: bool) -> list[SweepPoint]:
    """The runs of a sweep. Raises ConfigError when the variant ignores a swept threshold."""
    for axis, values in (("audio", audio), ("visual", visual)):
        if values and cfg.labels.variant not in THRESHOLD_VARIANTS[axis]:
            raise ConfigError(f"labels.variant={cfg.labels.variant!r} does not use the {axis} threshold "
                              f"(variants that do: {list(THRESHOLD_VARIANTS[axis])})")
    if grid:
        if not audio or not visual:
            raise ValueError("--grid needs both --audio-thresholds and --visual-thresholds")
        return [SweepPoint("grid", a, v) for a in audio for v in visual]
    return ([SweepPoint("audio", a, cfg.labels.visual_threshold) for a in audio]
            + [SweepPoint("visual", cfg.labels.audio_threshold, v) for v in visual])


def finished(run_dir: Path, cfg: Config) -> bool:
    """True when run_dir holds a run trained with `cfg` whose summary.json says it reached run.max_steps."""
    summary = run_dir / "summary.json"
    return (summary.is_file() and not config_differences(run_dir, cfg)
            and json.loads(summary.read_text()).get("steps", 0) >= cfg.run.max_steps)


def reset_if_other_config(run_dir: Path, cfg: Config) -> None:
    """Move a run folder trained with another config than `cfg` aside (to `<run_dir>.replaced-N`),
    printing the differences, so that the run is trained again from step 0 instead of being reused
    or resumed; nothing is deleted."""
    differences = config_differences(run_dir, cfg) if run_dir.exists() else []
    if differences:
        aside = next(run_dir.with_name(f"{run_dir.name}.replaced-{n}") for n in range(1, 10**6)
                     if not run_dir.with_name(f"{run_dir.name}.replaced-{n}").exists())
        print(f"{run_dir} is not a run of this config ({'; '.join(differences)}): moved to {aside}, training "
              f"it again", flush=True)
        run_dir.rename(aside)


def train_point(config: str, overrides: list[str], run_dir: Path, log: Path, launcher: list[str]) -> None:
    """Train one run through deteclap/train.py (continuing an interrupted one); raise on failure."""
    cmd = [*launcher, str(TRAIN_SCRIPT), "--config", config, "--resume"]
    for item in overrides:
        cmd += ["--set", item]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    with log.open("w") as fh:
        fh.write(shlex.join(cmd) + "\n")
        fh.flush()
        code = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"training {run_dir} failed with exit code {code}; end of {log}:\n"
                           f"{log.read_text()[-LOG_TAIL_CHARS:]}")


def evaluate_point(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Retrieval metrics of the run's latest checkpoint, cached in RUN/eval.json with the
    EVAL_VERSION that wrote it; reused while the run's config.json matches `cfg` and the version
    is this one (an evaluation by older code, e.g. its median rank, is redone)."""
    from deteclap.evaluate import evaluate

    cached = run_dir / EVAL_FILE
    if cached.is_file() and not config_differences(run_dir, cfg):
        result = json.loads(cached.read_text())
        if result.pop("version", None) == EVAL_VERSION:
            return result
    result = evaluate(cfg, run_dir)
    cached.write_text(json.dumps({**result, "version": EVAL_VERSION}, indent=2) + "\n")
    return result


def run_sweep(config: str, overrides: list[str], points: list[SweepPoint], out: Path,
              launcher: list[str] | None = None) -> dict[str, Any]:
    """Train and evaluate every point (skipping runs finished with the same config); write
    out/sweep.json and sweep.png."""
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    launcher = launcher or [sys.executable]
    results = []
    for point in tqdm(points, desc="sweep", unit="run"):
        point_overrides = [*overrides, *point.overrides(out)]
        cfg = load_config(config, point_overrides)
        run_dir = out / point.name
        reset_if_other_config(run_dir, cfg)
        if not finished(run_dir, cfg):
            (run_dir / EVAL_FILE).unlink(missing_ok=True)     # a stale evaluation of an older checkpoint
            train_point(config, point_overrides, run_dir, out / f"{point.name}.log", launcher)
        metrics = evaluate_point(cfg, run_dir)
        results.append({"name": point.name, "axis": point.axis, "audio_threshold": point.audio_threshold,
                        "visual_threshold": point.visual_threshold, "run_dir": str(run_dir),
                        "sumR": metrics["sumR"], "a2v": metrics["a2v"], "v2a": metrics["v2a"],
                        "num_clips": metrics["num_clips"]})
    base = load_config(config, overrides)
    sweep = {"config": config, "overrides": overrides, "variant": base.labels.variant,
             "audio_labeller": base.labels.audio_labeller, "visual_labeller": base.labels.visual_labeller,
             "mode": "grid" if points and points[0].axis == "grid" else "axes", "runs": results}
    (out / "sweep.json").write_text(json.dumps(sweep, indent=2) + "\n")
    plot_sweep(sweep, out / "sweep.png")
    return sweep


def plot_sweep(sweep: dict[str, Any], path: Path) -> Path:
    """sumR vs threshold, one panel per swept labeller (axes mode) or a heat map (grid mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = sweep["runs"]
    if sweep["mode"] == "grid":
        audio = sorted({r["audio_threshold"] for r in runs})
        visual = sorted({r["visual_threshold"] for r in runs})
        table = [[next(r["sumR"] for r in runs if r["audio_threshold"] == a and r["visual_threshold"] == v)
                  for v in visual] for a in audio]
        fig, ax = plt.subplots(figsize=(5, 4))
        image = ax.imshow(table, origin="lower", cmap="viridis")
        ax.set_xticks(range(len(visual)), [f"{v:g}" for v in visual])
        ax.set_yticks(range(len(audio)), [f"{a:g}" for a in audio])
        ax.set_xlabel(f"visual threshold ({sweep['visual_labeller']})")
        ax.set_ylabel(f"audio threshold ({sweep['audio_labeller']})")
        fig.colorbar(image, ax=ax, label="sumR")
    else:
        axes_used = [a for a in ("audio", "visual") if any(r["axis"] == a for r in runs)]
        fig, axes = plt.subplots(1, max(len(axes_used), 1), figsize=(4.5 * max(len(axes_used), 1), 3.5),
                                 squeeze=False)
        for ax, axis in zip(axes[0], axes_used):
            points = sorted((r[f"{axis}_threshold"], r["sumR"]) for r in runs if r["axis"] == axis)
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            ax.set_xlabel(f"{axis} threshold ({sweep[f'{axis}_labeller']})")
            ax.set_ylabel("sumR (R@1+5+10, a->v + v->a)")
            ax.grid(alpha=0.3)
    fig.suptitle(f"threshold sweep, variant {sweep['variant']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deteclap.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--audio-thresholds", default="", help="comma-separated audio (CLAP) thresholds")
    parser.add_argument("--visual-thresholds", default="", help="comma-separated visual (YOLO) thresholds")
    parser.add_argument("--grid", action="store_true", help="train every (audio, visual) pair")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"sweep folder (default {DEFAULT_OUT})")
    parser.add_argument("--launcher", default="",
                        help='command that runs train.py, e.g. "deepspeed --num_gpus 8" (default: this python)')
    args = parser.parse_args(argv)
    try:
        audio, visual = parse_thresholds(args.audio_thresholds), parse_thresholds(args.visual_thresholds)
        cfg = load_config(args.config, args.overrides)
        points = plan(cfg, audio, visual, args.grid)
    except (ValueError, ConfigError) as err:
        parser.error(str(err))
    if not points:
        parser.error("give --audio-thresholds and/or --visual-thresholds")
    sweep = run_sweep(args.config, args.overrides, points, Path(args.out),
                      shlex.split(args.launcher) if args.launcher else None)
    for r in sweep["runs"]:
        print(f"{r['name']:<22} audio {r['audio_threshold']:<5g} visual {r['visual_threshold']:<5g} "
              f"sumR {r['sumR']:7.1f}")
    print(f"wrote {Path(args.out) / 'sweep.json'} and {Path(args.out) / 'sweep.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
