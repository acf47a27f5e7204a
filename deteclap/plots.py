"""Figures: the demo's summary figure (loss curves, recall bars, the first test queries' top results).

matplotlib is imported inside the functions (Agg backend), so importing this module costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from deteclap.format import iter_tar_samples, list_tars


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


def demo_figure(out: Path, runs: dict[str, list[Path]], test_shards: Path, examples: dict[str, dict[str, Any]],
                seed: int) -> Path:
    """DIR/results.png: loss curves, R@k bars (mean and sd over seeds, chance marked), and for the first
    test queries (loader order, not chosen) each model's top-k visual items side by side.

    examples: variant -> the evaluation of its run of `seed` (deteclap.demo.retrieval_report plus `keys`
    and `classes`): its `top` holds the top-k visual items of the first audio queries.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from deteclap.data.decode import decode_video_frames

    results = json.loads((out / "results.json").read_text())
    variants = list(runs)
    first = examples[variants[0]]
    queries = len(first["top"])
    top_k = len(first["top"][0])
    keys = {first["keys"][q] for q in range(queries)} | {examples[v]["keys"][i] for v in variants
                                                          for top in examples[v]["top"] for i in top}
    frames = {k: decode_video_frames(data, [5])[0] for k, data in read_members(test_shards, keys, "mp4").items()}

    columns = 1 + len(variants) * top_k
    rows = 1 + queries
    fig = plt.figure(figsize=(1.9 * columns, 2.1 * rows + 1.6))
    grid = fig.add_gridspec(rows, columns, height_ratios=[2.2] + [1.0] * queries)
    half = columns // 2
    ax = fig.add_subplot(grid[0, :half])
    for variant in variants:
        for index, run_dir in enumerate(runs[variant]):
            log = _metrics(run_dir)
            ax.plot([r["step"] for r in log], [r["total"] for r in log], alpha=0.7,
                    color="C0" if variant == "cavmae" else "C1", label=variant if index == 0 else None)
    ax.set(xlabel="step", ylabel="total loss", title="training loss (each seed)")
    ax.legend()
    ax = fig.add_subplot(grid[0, half:])
    ks = list(results[variants[0]]["a2v"])
    labels = [f"{d} R@{k[1:]}" for d in ("a2v", "v2a") for k in ks]
    width = 0.8 / len(variants)
    for i, variant in enumerate(variants):
        values = [results[variant][d][k] for d in ("a2v", "v2a") for k in ks]
        errors = [results[variant]["spread"][d][k] for d in ("a2v", "v2a") for k in ks]
        ax.bar(np.arange(len(labels)) + i * width, values, width, yerr=errors, capsize=2, label=variant)
    chance = [results["chance"][k] for _ in ("a2v", "v2a") for k in ks]
    ax.scatter(np.arange(len(labels)) + width * (len(variants) - 1) / 2, chance, marker="_", s=300, color="k",
               label="chance", zorder=3)
    ax.set_xticks(np.arange(len(labels)) + width * (len(variants) - 1) / 2, labels, rotation=30, fontsize=8)
    ax.set(ylabel="%", title=f"test retrieval, mean and sd over {len(results['seeds'])} seeds")
    ax.legend(fontsize=8)
    for row in range(queries):
        query_key, query_class = first["keys"][row], first["classes"][row]
        cells = [(query_key, f"query {row + 1}: audio of\n{query_key} ({query_class})", "black")]
        for variant in variants:
            ex = examples[variant]
            for rank, item in enumerate(ex["top"][row]):
                colour = "green" if item == row else ("tab:blue" if ex["classes"][item] == query_class else "red")
                cells.append((ex["keys"][item], f"{variant} #{rank + 1}\n{ex['classes'][item]}", colour))
        for col, (key, title, colour) in enumerate(cells):
            ax = fig.add_subplot(grid[1 + row, col])
            if key in frames:
                ax.imshow(frames[key])
            ax.set_title(title, fontsize=7, color=colour)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if col else 1)
    names = " and ".join(variants)
    fig.suptitle("deteclap demo: CAV-MAE (cavmae) vs DETECLAP (or) on synthetic fine-grained clips", fontsize=11)
    fig.text(0.5, 0.005,
             f"Rows: the first {queries} test clips in loader order. First column: the frame of the clip whose "
             f"audio is the query, with its class. Then the top {top_k} visual items retrieved by {names} "
             f"(seed {seed}), each with its class.\nBorder: green = the query's own clip, blue = another clip of "
             "the query's class, "
             "red = another class.", ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    path = out / "results.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
