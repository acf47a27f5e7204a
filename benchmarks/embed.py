"""Embedding throughput (clips/s of `deteclap embed`) and search latency (one query, exact top-10).

    python benchmarks/embed.py [--clips 16] [--seconds 10] [--models tiny,official] [--sources videos,shards]
                               [--device cpu] [--items 1000000] [--dim 768] [--queries 5] [--json OUT]

Embed: `deteclap.index.build_index` end to end into a fresh index (decode, model, part writes) on
`--clips` synthetic 10 s clips (160x120, 10 fps, H.264 + AAC), from the video files (the shard
writer's clip code: decode, VP9 re-encode of the 10 frame instants, the audio member) and from their shards,
with random-weight models of the tiny config and of the official CAV-MAE shape (ViT-B,
audio_length 1024); model loading and the checkpoint digest are not timed.
Search: `deteclap.index.top_k` of one query against `--items` random L2-normalised float32 rows of
`--dim` (exact top-10: one matrix product + argpartition; faiss's exact IndexFlatIP too when it is
installed, its build timed apart), the median of `--queries` queries after one warm-up.
Writes benchmarks/results/embed.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTH_SIZE = (160, 120)
SYNTH_FPS = 10
TOP_K = 10
MODELS = {"tiny": REPO / "configs" / "tiny.json", "official": REPO / "configs" / "base.json"}   # model shapes


def _make_run(work: Path, name: str):
    """A random-weight checkpoint of the model shape, with label heads, as a run folder."""
    import torch

    from deteclap.config import load_config
    from deteclap.model import build_model

    cfg = load_config(MODELS[name])
    run = work / f"run-{name}"
    (run / "checkpoints" / "step_00000001").mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(build_model(cfg.model, 601).state_dict(), run / "checkpoints" / "step_00000001" / "model.pt")
    (run / "checkpoints" / "latest").write_text("step_00000001")
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    return run


def bench_embed(work: Path, clips: int, seconds: float, models: list[str], sources: list[str],
                device: str, batch_size: int) -> list[dict]:
    from deteclap.index import build_index
    from deteclap.inference import load
    from deteclap.shard import write_shards
    from deteclap.synth import generate

    generate(work / "clips", clips, seconds=seconds, seed=0, size=SYNTH_SIZE, fps=SYNTH_FPS)
    write_shards(work / "clips" / "truth.jsonl", work / "shards", split="train")
    src = {"videos": work / "clips" / "truth.jsonl", "shards": work / "shards"}
    results = []
    for name in models:
        model = load(_make_run(work, name), device=device)
        for source in sources:
            out = work / f"index-{name}-{source}"
            start = time.perf_counter()
            summary = build_index(src[source], out, model, batch_size=batch_size)
            elapsed = time.perf_counter() - start
            if summary["count"] != clips:
                raise RuntimeError(f"embedded {summary['count']} of {clips} clips: {summary}")
            results.append({"name": f"embed {name} from {source}", "clips_per_s": clips / elapsed,
                            "clips": clips, "seconds_per_clip": seconds, "batch": batch_size,
                            "device": str(model.device), "dim": model.dim})
            print(json.dumps(results[-1]), flush=True)
    return results


def bench_search(items: int, dim: int, queries: int) -> list[dict]:
    import numpy as np

    from deteclap.index import Searcher, _faiss_available

    rng = np.random.default_rng(0)
    matrix = np.empty((items, dim), np.float32)
    for start in range(0, items, 100_000):                 # in blocks: no float64 copy of the whole matrix
        block = rng.standard_normal((min(100_000, items - start), dim), dtype=np.float32)
        matrix[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    probes = [matrix[i] + 0.05 * rng.standard_normal(dim, dtype=np.float32)
              for i in rng.integers(0, items, queries + 1)]
    results = []
    for backend in ["numpy"] + (["faiss"] if _faiss_available() else []):
        start = time.perf_counter()
        searcher = Searcher(matrix, backend)                # faiss: builds its index once (not per query)
        build = time.perf_counter() - start
        searcher.top_k(probes[0], TOP_K)                    # warm-up
        times = []
        for probe in probes[1:]:
            start = time.perf_counter()
            searcher.top_k(probe, TOP_K)
            times.append(time.perf_counter() - start)
        latency = statistics.median(times)
        results.append({"name": f"search {items:,} x {dim} exact top-{TOP_K} ({backend})", "latency_ms": latency * 1e3,
                        "queries_per_s": 1 / latency, "build_s": build, "items": items, "dim": dim, "queries": queries,
                        "device": "cpu"})
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16, help="synthetic clips to embed")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--models", default="tiny,official", help="comma-separated: tiny, official")
    parser.add_argument("--sources", default="videos,shards", help="comma-separated: videos, shards")
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--batch", type=int, default=8, help="clips per model batch")
    parser.add_argument("--items", type=int, default=1_000_000, help="index rows for the search benchmark (0: skip)")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension of the search benchmark")
    parser.add_argument("--queries", type=int, default=5, help="timed queries (median reported)")
    parser.add_argument("--json", default=None, help="result file (default benchmarks/results/embed.json)")
    args = parser.parse_args(argv)
    results = []
    models = [m for m in args.models.split(",") if m]
    if models:
        with tempfile.TemporaryDirectory(prefix="deteclap-embed-bench-") as work:
            results += bench_embed(Path(work), args.clips, args.seconds, models,
                                   [s for s in args.sources.split(",") if s], args.device, args.batch)
    if args.items > 0:
        results += bench_search(args.items, args.dim, args.queries)
    print(f"wrote {write_result('embed', results, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
