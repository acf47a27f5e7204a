"""Figures: the demo's summary figure (loss curves, recall bars, retrieved examples).

matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deteclap.format import iter_tar_samples, list_tars

EXAMPLE_QUERIES = 4
TOP_K = 3


def read_members(shard_dir: Path, keys: set[str], ext: str) -> dict[str, bytes]:
    """`KEY.<ext>` members of the given keys from every tar in a shard folder."""
    found: dict[str, bytes] = {}
    for tar_path in list_tars(shard_dir):
        for key, members in iter_tar_samples(tar_path):
            if key in keys and ext in members:
                found[key] = members[ext]
    return found


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def retrieved_examples(run_dir: Path, config: Path, test_shards: Path, variant: str,
                       overrides: list[str]) -> dict[str, Any]:
    """Audio queries of the test set and the keys of their top-k visual items under one model."""
    from deteclap.config import load_config
    from deteclap.device import pick_device
    from deteclap.evaluate import collect
    from deteclap.model import build_model, load_checkpoint
    from deteclap.model.checkpoint import read_state_dict, resolve_checkpoint
    from deteclap.format import load_dataset_json

    cfg = load_config(config, [f"labels.variant={variant}", f"data.eval_shards={test_shards}",
                               f"data.train_shards={test_shards}", *overrides])
    state = read_state_dict(resolve_checkpoint(run_dir))
    heads = state.get("label_head_a.weight")
    model = build_model(cfg.model, 0 if heads is None else int(heads.shape[0]))
    load_checkpoint(model, state)
    device = pick_device(cfg.run.device)
    data = collect(cfg, model.to(device), device, finetune=False)
    audio = torch.nn.functional.normalize(data["audio"], dim=-1)
    visual = torch.nn.functional.normalize(data["visual"], dim=-1)
    top = (audio @ visual.T).topk(TOP_K, dim=1).indices.numpy()
    queries = np.linspace(0, len(data["keys"]) - 1, EXAMPLE_QUERIES).astype(int)
    names = load_dataset_json(test_shards)["classes"]
    classes = [names[c] if row.any() else "" for c, row in zip(data["classes"].argmax(1), data["classes"])] \
        if names else [""] * len(data["keys"])
    return {"keys": data["keys"], "classes": classes, "queries": queries.tolist(), "top": top[queries].tolist()}


def demo_figure(out: Path, runs: dict[str, list[Path]], test_shards: Path, config: Path,
                overrides: list[str] = ()) -> Path:
    """DIR/results.png: loss curves, R@k bars per direction, and retrieved examples of each variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deteclap.data.decode import decode_video_frames

    results = json.loads((out / "results.json").read_text())
    variants = list(runs)
    examples = {v: retrieved_examples(runs[v][0], config, test_shards, v, list(overrides)) for v in variants}
    keys = {examples[v]["keys"][i] for v in variants for q, t in zip(examples[v]["queries"], examples[v]["top"])
            for i in [q, *t]}
    frames = {k: decode_video_frames(data, [5])[0] for k, data in read_members(test_shards, keys, "mp4").items()}

    rows = 1 + len(variants) * EXAMPLE_QUERIES
    fig = plt.figure(figsize=(3 * (TOP_K + 1), 2.2 * rows + 1.5))
    grid = fig.add_gridspec(rows, TOP_K + 1, height_ratios=[2.0] + [1.0] * (rows - 1))
    ax = fig.add_subplot(grid[0, : (TOP_K + 1) // 2])
    for variant in variants:
        for index, run_dir in enumerate(runs[variant]):
            log = _metrics(run_dir)
            ax.plot([r["step"] for r in log], [r["total"] for r in log], alpha=0.8,
                    color="C0" if variant == "cavmae" else "C1", label=variant if index == 0 else None)
    ax.set(xlabel="step", ylabel="total loss", title="training loss (each seed)")
    ax.legend()
    ax = fig.add_subplot(grid[0, (TOP_K + 1) // 2:])
    labels = [f"{d} R@{k}" for d in ("a2v", "v2a") for k in (1, 5, 10)]
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [results[variant][d][f"r{k}"] for d in ("a2v", "v2a") for k in (1, 5, 10)]
        ax.bar(np.arange(len(labels)) + i * width, values, width, label=variant)
    ax.set_xticks(np.arange(len(labels)) + width * (len(variants) - 1) / 2, labels, rotation=30, fontsize=8)
    ax.set(ylabel="%", title="retrieval on the test set (mean over seeds)")
    ax.legend()
    row = 1
    for variant in variants:
        ex = examples[variant]
        for query, top in zip(ex["queries"], ex["top"]):
            query_key = ex["keys"][query]
            cells = [(query_key, f"{variant}: audio of {query_key}\n({ex['classes'][query]})", "black")]
            for rank, item in enumerate(top):
                right = item == query
                verdict, colour = ("right", "green") if right else ("wrong", "red")
                cells.append((ex["keys"][item], f"#{rank + 1} {verdict} ({ex['classes'][item]})", colour))
            for col, (key, title, colour) in enumerate(cells):
                ax = fig.add_subplot(grid[row, col])
                if key in frames:
                    ax.imshow(frames[key])
                ax.set_title(title, fontsize=8, color=colour)
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(3 if col else 1)
            row += 1
    fig.suptitle("deteclap demo: CAV-MAE vs DETECLAP (OR) on synthetic fine-grained clips\n"
                 "examples: an audio query, its clip's frame, and the top visual items retrieved", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    path = out / "results.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
