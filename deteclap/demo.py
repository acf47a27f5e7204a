"""The main job on an embedded default: DETECLAP (OR) against CAV-MAE on synthetic fine-grained clips.

    python -m deteclap.demo [--out DIR] [--seeds 0,1,2,3] [--budget default|paper] [--difficulty D]
                            [--markdown README.md]

No downloads, no GPU needed. It generates a synthetic fine-grained audio-visual set (train / test;
`deteclap.synth`, whose `--difficulty` knob it passes on), shards it, labels it with the ground-truth
labeller (with per-modality noise, standing in for CLAP and YOLO), pretrains a small CAV-MAE and a
small DETECLAP (OR) per seed with the same data and budget through the real training code
(deteclap/train.py, DeepSpeed), and evaluates every run on the test clips:
- instance retrieval as the paper reports it: R@1/5/10 audio->visual (a2v) and visual->audio (v2a);
- class-level retrieval: mAP of retrieving the clips of the query's fine class (`class_map`) and of
  its super-category (`super_map`), both directions averaged, in percent;
- hubness of the top-1 lists (`top1_distinct`: distinct items that are some query's top-1;
  `top1_max_share`: share of the queries whose top-1 is the most frequent item), both directions
  averaged;
- the paired difference OR - CAV-MAE of sumR per seed, with a 95 % two-level bootstrap interval
  (seeds, then test clips, resampled; `deteclap.metrics.bootstrap_ci`) and one sentence on whether
  the claim held.
Chance levels (random embeddings on the same test clips) are printed beside them.

Writes DIR/results.json (per model `cavmae` / `or`: `a2v` and `v2a` with `r1`, `r5`, `r10` (means over
seeds), `sumR`, `class_map`, `super_map`, `hubness`, `spread` (standard deviations over seeds) and
`per_seed`; top level `seeds`, `comparison`, `chance`, `settings`), DIR/table.txt, DIR/demo.md (the
same as Markdown, also written to --markdown), DIR/run_info.json (timings, machine) and
DIR/results.png (loss curves, recalls, and the top-3 of the first test queries under both models).

`--budget paper` runs the same comparison with the paper's loss weights (contrastive 0.01, label
terms 1) and a larger budget (BUDGETS); use another --out for it. Runs are kept in DIR/runs/<variant>_seed<N>/: a run
finished with the same config is not trained again, one trained with another config is moved aside
and trained again (`deteclap.sweep.reset_if_other_config`). The results cover every seed of DIR whose
runs of both variants finished with this call's config, so `--seeds 4,5` after the default adds two.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from deteclap.config import load_config
from deteclap.sweep import finished, reset_if_other_config

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = REPO / "configs" / "demo.json"
VARIANTS = ("cavmae", "or")
NAMES = {"cavmae": "CAV-MAE", "or": "DETECLAP (OR)"}
SAMPLES_PER_SHARD = 60  # several tars, so that every loader worker has its own
# --budget: `--set` values on top of configs/demo.json. The default is the demo config as it stands
# (contrastive weight 1.0, label weights 10; see docs/demo.md for the measurements behind them);
# "paper" restores the paper's weights (contrastive 0.01, label terms 1) and trains three times as long.
PAPER_STEP_FACTOR = 3
PAGE_QUERIES = 3           # results pages per model (DIR/pages/<variant>/<key>.html)
BUDGETS = ("default", "paper")
EXAMPLE_QUERIES = 6     # the figure shows the first N test queries, in loader order
TOP_K = 3
BOOTSTRAP_RESAMPLES = 10_000
CHANCE_DRAWS = 200


def _step(title: str) -> float:
    print(f"\n== {title}", flush=True)
    return time.time()


def budget_overrides(budget: str) -> list[str]:
    """The `--set` values of a budget (BUDGETS) on top of configs/demo.json."""
    if budget == "default":
        return []
    if budget == "paper":
        steps = load_config(DEMO_CONFIG).run.max_steps * PAPER_STEP_FACTOR
        return ["loss.contrastive_weight=0.01", "loss.a2l_weight=1.0", "loss.v2l_weight=1.0",
                f"run.max_steps={steps}"]
    raise ValueError(f"unknown budget {budget!r} (known: {', '.join(BUDGETS)})")


# ----------------------------------------------------------------------------------------------
# data
def make_data(out: Path, train_clips: int, test_clips: int, seconds: float, workers: int, fps: int = 5,
              difficulty: float = 0.5) -> dict[str, Path]:
    """Synthetic train / test clips -> shards -> ground-truth label scores (skips what exists).

    DIR/data/synth.json records the synthesis settings; a DIR made with other settings is refused
    (its runs were trained on other data), naming the differences. The labels use the vocabulary of
    the objects the synthetic clips hold (DIR/data/vocabulary.txt, `deteclap.synth.object_names`):
    BCE over Open Images' 601 classes, of which 20 occur here, teaches the label heads nothing
    within the demo's budget (docs/demo.md).
    """
    from deteclap import label, shard, synth

    settings = {"train_clips": train_clips, "test_clips": test_clips, "seconds": seconds, "fps": fps,
                "difficulty": difficulty, "label_vocabulary": synth.object_names()}
    record = out / "data" / "synth.json"
    if record.is_file():
        stored = json.loads(record.read_text())
        differ = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if differ:
            def shown(value: Any) -> str:
                return f"{len(value)} names" if isinstance(value, list) else str(value)

            changes = ", ".join(f"{key}: {shown(old)} -> {shown(new)}" for key, (old, new) in differ.items())
            raise SystemExit(f"{out} holds data made with other settings ({changes}); "
                             f"use another --out, or delete {out / 'data'} and {out / 'shards'} to remake it")
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2) + "\n")
    vocabulary = out / "data" / "vocabulary.txt"
    vocabulary.write_text("\n".join(settings["label_vocabulary"]) + "\n")
    paths = {}
    for split, clips, seed in (("train", train_clips, 1), ("test", test_clips, 2)):
        clip_dir, shard_dir = out / "data" / split, out / "shards" / split
        if not (clip_dir / "truth.jsonl").is_file():
            code = synth.main([str(clip_dir), "--clips", str(clips), "--seconds", str(seconds), "--seed", str(seed),
                               "--fps", str(fps), "--difficulty", str(difficulty), "--workers", str(workers)])
            if code:
                raise SystemExit(f"generating {clip_dir} failed (exit {code})")
        if not (shard_dir / "dataset.json").is_file():
            code = shard.main([str(clip_dir / "truth.jsonl"), str(shard_dir), "--split", split, "--workers",
                               str(workers), "--samples-per-shard", str(SAMPLES_PER_SHARD), "--strict"])
            if code:
                raise SystemExit(f"sharding {clip_dir} failed (exit {code}); see {shard_dir / 'failures.jsonl'}")
        code = label.main([str(shard_dir), "--labellers", "truth", "--truth", str(clip_dir / "truth.jsonl"),
                           "--vocabulary", str(vocabulary)])
        if code:
            raise SystemExit(f"labelling {shard_dir} failed (exit {code})")
        paths[split] = shard_dir
    return paths


# ----------------------------------------------------------------------------------------------
# training
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


def label_classes(shard_dir: Path) -> int | None:
    """The number of label classes the shards' scores cover (dataset.json label_vocabulary)."""
    from deteclap.format import load_dataset_json

    if not (shard_dir / "dataset.json").is_file():
        return None
    return len(load_dataset_json(shard_dir).get("label_vocabulary") or [])


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


# ----------------------------------------------------------------------------------------------
# evaluation
def super_classes(class_names: list[str]) -> list[str]:
    """The synthetic set's super-category of each fine class name."""
    from deteclap.synth import super_class_of

    return [super_class_of(name) for name in class_names]


def retrieval_report(audio: Any, visual: Any, fine: np.ndarray, coarse: np.ndarray,
                     ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, Any]:
    """Every demo metric of one model's test embeddings: audio, visual [N, D]; fine, coarse [N] class
    ids. Adds `clip_sumR` (each clip's share of sumR, for the bootstrap) and `top` (the top-k visual
    items of the first audio queries, for the figure)."""
    from deteclap.metrics import class_retrieval_map, cosine_similarity, hubness, query_sum_r, retrieval_metrics

    result = retrieval_metrics(audio, visual, ks)
    sim = cosine_similarity(audio, visual)
    result["class_map"] = class_retrieval_map(sim, fine)
    result["super_map"] = class_retrieval_map(sim, coarse)
    result["hubness"] = {direction: hubness(s) for direction, s in (("a2v", sim), ("v2a", sim.T))}
    result["clip_sumR"] = query_sum_r(sim, ks).tolist()
    queries = min(EXAMPLE_QUERIES, sim.shape[0])
    result["top"] = sim[:queries].topk(min(TOP_K, sim.shape[1]), dim=1).indices.tolist()
    return result


def chance_levels(fine: np.ndarray, coarse: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                  draws: int = CHANCE_DRAWS) -> dict[str, float]:
    """The demo's metrics for random embeddings of the same test clips (means over `draws`)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(draws):
        audio, visual = (torch.randn(len(fine), 16, generator=generator) for _ in range(2))
        rows.append(retrieval_report(audio, visual, fine, coarse, ks))
    out = {f"r{k}": statistics.fmean(r[d][f"r{k}"] for r in rows for d in ("a2v", "v2a")) for k in ks}
    out.update({key: statistics.fmean(r[key] for r in rows) for key in ("sumR", "class_map", "super_map")})
    return out


def evaluate_run(variant: str, seed: int, shards: dict[str, Path], run_dir: Path,
                 extra: list[str]) -> dict[str, Any]:
    """Test-set metrics of one finished run (`retrieval_report`), also written to RUN/retrieval.json,
    with the test clips' keys and class names."""
    from deteclap.device import pick_device
    from deteclap.evaluate import collect
    from deteclap.model import build_model, load_checkpoint
    from deteclap.model.checkpoint import read_state_dict, resolve_checkpoint
    from deteclap.format import load_dataset_json

    cfg = load_config(DEMO_CONFIG, [f"labels.variant={variant}", f"data.train_shards={shards['train']}",
                                    f"data.eval_shards={shards['test']}", f"run.seed={seed}", *extra])
    state = read_state_dict(resolve_checkpoint(run_dir))
    heads = state.get("label_head_a.weight")
    model = build_model(cfg.model, 0 if heads is None else int(heads.shape[0]))
    load_checkpoint(model, state)
    device = pick_device(cfg.run.device)
    data = collect(cfg, model.to(device), device, finetune=False)
    names = load_dataset_json(shards["test"])["classes"]
    fine = data["classes"].argmax(1)
    coarse_names = super_classes(names)
    coarse = np.array([sorted(set(coarse_names)).index(coarse_names[c]) for c in fine])
    result = retrieval_report(data["audio"], data["visual"], fine, coarse, tuple(cfg.eval.recall_at))
    result.update(keys=data["keys"], classes=[names[c] for c in fine], skipped_samples=data["skipped"])
    (run_dir / "retrieval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


# ----------------------------------------------------------------------------------------------
# summary
def _mean_hubness(result: dict[str, Any]) -> dict[str, float]:
    return {key: statistics.fmean(result["hubness"][d][key] for d in ("a2v", "v2a"))
            for key in ("top1_distinct", "top1_max_share")}


def summarise(per_seed: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """Per variant: means over seeds (`a2v` / `v2a` recalls, sumR, class_map, super_map, hubness),
    their standard deviations (`spread`) and the per-seed results in the order of `seeds`."""
    out: dict[str, Any] = {}
    for variant, results in per_seed.items():
        recalls = [k for k in results[0]["a2v"] if k[0] == "r" and k[1:].isdigit()]   # eval.recall_at
        spread: dict[str, Any] = {}
        entry: dict[str, Any] = {}
        for direction in ("a2v", "v2a"):
            entry[direction] = {k: statistics.fmean(r[direction][k] for r in results) for k in recalls}
            spread[direction] = {k: statistics.pstdev([r[direction][k] for r in results]) for k in recalls}
        for key in ("sumR", "class_map", "super_map"):
            entry[key] = statistics.fmean(r[key] for r in results)
            spread[key] = statistics.pstdev([r[key] for r in results])
        hub = [_mean_hubness(r) for r in results]
        entry["hubness"] = {key: statistics.fmean(h[key] for h in hub) for key in hub[0]}
        spread["hubness"] = {key: statistics.pstdev([h[key] for h in hub]) for key in hub[0]}
        entry["sumR_std"] = spread["sumR"]
        entry["spread"] = spread
        entry["per_seed"] = [{"seed": seed, "a2v": {k: r["a2v"][k] for k in [*recalls, "median_rank"]},
                              "v2a": {k: r["v2a"][k] for k in [*recalls, "median_rank"]}, "sumR": r["sumR"],
                              "class_map": r["class_map"], "super_map": r["super_map"], "hubness": r["hubness"]}
                             for seed, r in zip(seeds, results)]
        out[variant] = entry
    return out


def compare(per_seed: dict[str, list[dict[str, Any]]], seeds: list[int]) -> dict[str, Any]:
    """OR - CAV-MAE sumR, paired by seed: the mean difference, its 95 % interval (two-level bootstrap
    over seeds and test clips, from each run's `clip_sumR`), in how many seeds OR was higher, and a
    sentence saying whether the claim held (the interval above 0), did not (below 0) or was not shown."""
    from deteclap.metrics import bootstrap_ci

    pairs = list(zip(per_seed["or"], per_seed["cavmae"]))
    diffs = [o["sumR"] - c["sumR"] for o, c in pairs]
    groups = [np.asarray(o["clip_sumR"]) - np.asarray(c["clip_sumR"]) for o, c in pairs]
    low, high = bootstrap_ci(groups, resamples=BOOTSTRAP_RESAMPLES)
    mean, wins, n = statistics.fmean(diffs), sum(d > 0 for d in diffs), len(diffs)
    detail = (f"OR - CAV-MAE sumR {mean:+.1f}, 95 % CI [{low:+.1f}, {high:+.1f}] (seeds and test clips "
              f"resampled), OR higher in {wins} of {n} seeds")
    if low > 0:
        verdict, held = f"The claim held on this data: {detail}.", True
    elif high < 0:
        verdict, held = f"The claim did not hold on this data (CAV-MAE ahead): {detail}.", False
    else:
        verdict, held = f"The claim was not shown on this data (the interval includes 0): {detail}.", None
    return {"sumR_diff_mean": mean, "sumR_diff_ci95": [low, high], "or_higher_in": wins, "num_seeds": n,
            "per_seed": [{"seed": s, "sumR_diff": d} for s, d in zip(seeds, diffs)],
            "ci_method": f"two-level percentile bootstrap, {BOOTSTRAP_RESAMPLES} resamples of seeds then test clips",
            "claim_held": held, "verdict": verdict}


def format_tables(results: dict[str, Any]) -> str:
    """Plain-text tables: mean +- sd over seeds of the recalls and of the class-level metrics."""
    chance = results["chance"]
    n = len(results["seeds"])
    ks = [k for k in results["cavmae"]["a2v"]]
    head = (f"{'model':<14} | " + " ".join(f"a2v R@{k[1:]:<8}" for k in ks) + " | "
            + " ".join(f"v2a R@{k[1:]:<8}" for k in ks) + " | sumR")
    lines = [f"instance retrieval, % (mean +- sd over {n} seeds; {results['num_test_clips']} test clips)", head,
             "-" * len(head)]
    for name in VARIANTS:
        r, s = results[name], results[name]["spread"]
        cells = [f"{r[d][k]:5.1f}+-{s[d][k]:<4.1f}" for d in ("a2v", "v2a") for k in ks]
        lines.append(f"{name:<14} | " + " ".join(cells[:len(ks)]) + " | " + " ".join(cells[len(ks):])
                     + f" | {r['sumR']:5.1f}+-{s['sumR']:.1f}")
    lines.append(f"{'chance':<14} | " + " ".join(f"{chance[k]:5.1f}      " for k in ks) + " | "
                 + " ".join(f"{chance[k]:5.1f}      " for k in ks) + f" | {chance['sumR']:5.1f}")
    lines += ["", "class-level retrieval mAP, % (same fine class / same super-category), top-1 hubness",
              f"{'model':<14} | {'class_map':<11} | {'super_map':<11} | top1_distinct | top1_max_share"]
    for name in VARIANTS:
        r, s = results[name], results[name]["spread"]
        lines.append(f"{name:<14} | {r['class_map']:5.1f}+-{s['class_map']:<4.1f} | {r['super_map']:5.1f}+-"
                     f"{s['super_map']:<4.1f} | {r['hubness']['top1_distinct']:13.1f} | "
                     f"{r['hubness']['top1_max_share']:.3f}")
    lines.append(f"{'chance':<14} | {chance['class_map']:5.1f}       | {chance['super_map']:5.1f}       |")
    per_seed = "; ".join(f"seed {c['seed']}: {c['sumR']:.1f} / {o['sumR']:.1f} ({o['sumR'] - c['sumR']:+.1f})"
                         for c, o in zip(results["cavmae"]["per_seed"], results["or"]["per_seed"]))
    lines += ["", f"sumR per seed, cavmae / or (difference): {per_seed}", "", results["comparison"]["verdict"]]
    return "\n".join(lines)


def training_times(runs: dict[str, list[Path]]) -> dict[str, float]:
    """Mean training seconds and samples/s per run, from each run's summary.json (deteclap/train.py);
    measured when the run was trained, also for runs this call reused."""
    summaries = [json.loads((run / "summary.json").read_text()) for paths in runs.values() for run in paths
                 if (run / "summary.json").is_file()]
    if not summaries:
        return {"runs": 0}
    return {"runs": len(summaries), "seconds_per_run": statistics.fmean(s.get("seconds", 0.0) for s in summaries),
            "samples_per_s": statistics.fmean(s.get("samples_per_s", 0.0) for s in summaries)}


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def markdown_report(results: dict[str, Any], info: dict[str, Any], command: str) -> str:
    """DIR/demo.md (and README.md's results with --markdown): what ran, where, how long, the tables and
    the verdict."""
    s = results["settings"]
    return "\n".join([
        "### The demo: CAV-MAE and DETECLAP (OR) on synthetic fine-grained clips", "",
        "Generated by `python -m deteclap.demo` (its DIR/demo.md; `--markdown FILE` writes it between the "
        "demo:results markers of FILE); the method and its choices: [docs/demo.md](docs/demo.md). Command:", "",
        f"    {command}", "",
        f"Data: {s['train_clips']} train / {s['test_clips']} test synthetic clips of {s['seconds']:g} s at "
        f"{s['fps']} fps, difficulty {s['difficulty']:g} (`deteclap.synth --difficulty`); budget `{s['budget']}`: "
        f"{s['steps']} steps of batch {s['batch_size']}, lr {s['lr']:g}, contrastive weight "
        f"{s['contrastive_weight']:g}, label weights {s.get('label_weight', 1):g} (OR) over "
        f"{s.get('label_classes', '?')} label classes, per run; seeds {', '.join(map(str, results['seeds']))}.",
        f"Machine: {info['cpu']}, {info['cpus']} CPU threads. This call took {info['seconds'] / 60:.1f} minutes "
        f"(data {info['timings']['data'] / 60:.1f}, training {info['timings']['train'] / 60:.1f}, evaluation and "
        f"figure {info['timings']['evaluate'] / 60:.1f}) and trained {info['trained_now']} of the "
        f"{info['training']['runs']} runs it summarises"
        f"{'' if info['trained_now'] == info['training']['runs'] else ' (the others were reused from earlier calls)'}; "
        f"training "
        f"took {info['training'].get('seconds_per_run', 0) / 60:.1f} minutes per run on average, at "
        f"{info['training'].get('samples_per_s', 0):.0f} samples/s (each run's summary.json).", "",
        "```", format_tables(results), "```", "",
        "Chance: the same metrics for random embeddings of the same test clips. `class_map` / `super_map`: "
        "mAP of retrieving the clips of the query's fine class / super-category (each clip's own pair counts "
        "as one of them), both directions averaged. Hubness: distinct items among the top-1 results of the "
        "test queries, and the share of the queries whose top-1 is the most frequent item (both directions "
        "averaged).", ""])


MARKDOWN_START, MARKDOWN_END = "<!-- demo:results:start -->", "<!-- demo:results:end -->"


def write_markdown(path: Path, report: str) -> None:
    """Write the report to `path`; in a file that holds the MARKDOWN_START / MARKDOWN_END markers, only
    the text between them is replaced (README.md keeps the rest)."""
    text = path.read_text() if path.is_file() else ""
    if MARKDOWN_START in text and MARKDOWN_END in text:
        head, rest = text.split(MARKDOWN_START, 1)
        report = head + MARKDOWN_START + "\n" + report + MARKDOWN_END + rest.split(MARKDOWN_END, 1)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)


def write_pages(out: Path, test_shards: Path, seed: int, num_queries: int = PAGE_QUERIES) -> list[str]:
    """DIR/pages/<variant>/: each model's (run of `seed`) embedding index of the test clips and one
    `deteclap search` results page per query (the first `num_queries` test clips' audio against
    the frames), to look at what each model retrieves and, for OR, which classes explain a match."""
    from deteclap.results_page import write_retrieval_pages

    pages = []
    for variant in VARIANTS:
        written = write_retrieval_pages(run_path(out, variant, seed), test_shards, out / "pages" / variant,
                                        num_queries=num_queries, k=5)
        pages.extend(written["pages"])
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deteclap.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo_out", help="folder for data, runs and results (kept)")
    parser.add_argument("--seeds", default="0,1,2,3", help="training seeds, comma-separated")
    parser.add_argument("--steps", type=int, default=0, help="training steps per run (0: the budget's)")
    parser.add_argument("--budget", choices=BUDGETS, default="default",
                        help="default: configs/demo.json; paper: contrastive weight 0.01, label weights 1 "
                             f"and {PAPER_STEP_FACTOR}x the steps")
    parser.add_argument("--train-clips", type=int, default=960)
    parser.add_argument("--test-clips", type=int, default=60)
    parser.add_argument("--seconds", type=float, default=2.0, help="clip length of the synthetic set")
    parser.add_argument("--fps", type=int, default=5, help="frame rate of the synthetic clips")
    parser.add_argument("--difficulty", type=float, default=0.5,
                        help="synthetic set difficulty in [0, 1] (deteclap.synth --difficulty)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--markdown", help="also write the Markdown report here (e.g. README.md: only "
                                           "between its demo:results markers)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a value of configs/demo.json for every run (repeatable)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extra = [*budget_overrides(args.budget), *args.overrides]
    started = time.time()
    timings = {}
    _step("data: synthesise, shard, label")
    shards = make_data(out, args.train_clips, args.test_clips, args.seconds, args.workers, args.fps,
                       args.difficulty)
    timings["data"] = time.time() - started
    per_seed: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    runs: dict[str, list[Path]] = {v: [] for v in VARIANTS}
    requested = [int(s) for s in args.seeds.split(",")]
    earlier = [s for s in finished_seeds(out, shards, args.steps, extra) if s not in requested]
    if earlier:
        print(f"also summarising seeds {earlier}: finished in {out / 'runs'} with this config", flush=True)
    seeds = sorted({*requested, *earlier})
    timings["train"] = timings["evaluate"] = 0.0
    trained_now = 0
    for seed in seeds:
        for variant in VARIANTS:
            begin = _step(f"train {variant} (seed {seed})")
            run_dir = run_path(out, variant, seed)
            trained_now += not finished(run_dir, load_config(DEMO_CONFIG, train_overrides(
                variant, seed, shards, run_dir, args.steps, extra)))
            train_variant(variant, seed, shards, run_dir, args.steps, extra)
            middle = time.time()
            per_seed[variant].append(evaluate_run(variant, seed, shards, run_dir, extra))
            timings["train"] += middle - begin
            timings["evaluate"] += time.time() - middle
            runs[variant].append(run_dir)
    begin = time.time()
    first = per_seed["cavmae"][0]
    fine_names = sorted(set(first["classes"]))
    fine = np.array([fine_names.index(c) for c in first["classes"]])
    coarse_names = super_classes(first["classes"])
    coarse = np.array([sorted(set(coarse_names)).index(c) for c in coarse_names])
    cfg = load_config(DEMO_CONFIG, train_overrides("or", seeds[0], shards, run_path(out, "or", seeds[0]),
                                                   args.steps, extra))
    results = summarise(per_seed, seeds)
    results["seeds"] = seeds
    results["num_test_clips"] = len(first["keys"])
    results["comparison"] = compare(per_seed, seeds)
    results["chance"] = chance_levels(fine, coarse, tuple(cfg.eval.recall_at))
    results["settings"] = {"budget": args.budget, "train_clips": args.train_clips, "test_clips": args.test_clips,
                           "seconds": args.seconds, "fps": args.fps, "difficulty": args.difficulty,
                           "steps": cfg.run.max_steps, "batch_size": cfg.data.batch_size, "lr": cfg.optim.lr,
                           "contrastive_weight": cfg.loss.contrastive_weight, "label_weight": cfg.loss.a2l_weight,
                           "label_classes": label_classes(shards["train"]),
                           "overrides": extra}
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_tables(results)
    (out / "table.txt").write_text(table + "\n")
    from deteclap.plots import demo_figure

    demo_figure(out, runs, shards["test"], {v: per_seed[v][0] for v in VARIANTS}, seeds[0])
    pages = write_pages(out, shards["test"], seeds[0])
    timings["evaluate"] += time.time() - begin
    info = {"seconds": time.time() - started, "timings": timings, "seeds": seeds, "cpu": cpu_model(),
            "cpus": os.cpu_count(), "trained_now": trained_now, "training": training_times(runs),
            "config": str(DEMO_CONFIG), "settings": results["settings"],
            "runs": {v: [str(p) for p in r] for v, r in runs.items()}}
    (out / "run_info.json").write_text(json.dumps(info, indent=2) + "\n")
    command = "python -m deteclap.demo " + " ".join(argv if argv is not None else sys.argv[1:])
    report = markdown_report(results, info, command.strip())
    (out / "demo.md").write_text(report)
    if args.markdown:
        write_markdown(Path(args.markdown), report)
    print("\n" + table)
    print(f"\nwrote {out / 'results.json'}, {out / 'results.png'}, {out / 'demo.md'} and the retrieval pages "
          f"({len(pages)} in {out / 'pages'}) in {info['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
