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
