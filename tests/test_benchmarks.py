"""Benchmark plumbing: result files in the shared schema and the README section made from them."""

import json

from benchmarks.common import write_result
from benchmarks.report import END, START, render, update_readme


def test_results_schema_and_readme_section(tmp_path):
    path = write_result("loader", [{"name": "reference", "clips_per_s": 123.456, "mb_per_s": 7.0, "batch": 32,
                                    "workers": 2, "epoch_first_batch_ms": 512.3, "other_batch_ms": 61.6,
                                    "set_clips": 256}], tmp_path / "loader.json")
    data = json.loads(path.read_text())
    assert data["benchmark"] == "loader" and data["machine"]["cpu_count"] >= 1 and data["date"]
    text = render(tmp_path)
    assert "| reference | 123.5 | 7.0 | 512 | 62 | 256 | 32 | 2 |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    update_readme(readme, text)
    content = readme.read_text()
    assert "old" not in content and "123.5" in content and content.startswith("intro") and content.endswith("outro\n")


def test_train_step_benchmark_runs_every_zero_stage(tmp_path):
    """benchmarks/train_step.py on the CPU (tiny model): the real DeepSpeed engine per ZeRO stage, each in
    its own process, reporting the model's parameter count, FLOPs and speed."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from deteclap.config import load_config
    from deteclap.model import build_model

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "train_step.json"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "benchmarks/train_step.py", "--model", "tiny", "--stages", "0,3", "--batch", "4",
                    "--steps", "1", "--warmup", "0", "--json", str(out)], cwd=repo, env=env, check=True,
                   capture_output=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    expected = sum(p.numel() for p in build_model(load_config(repo / "configs" / "tiny.json").model, 601).parameters())
    assert [r["zero_stage"] for r in results] == [0, 3]
    assert all(r["parameters"] == expected and r["samples_per_s"] > 0 and r["flops_per_step"] > 0 for r in results)
