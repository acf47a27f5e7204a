"""Benchmark plumbing: result files in the shared schema and the README section made from them."""

import json

from benchmarks.common import write_result
from benchmarks.report import END, START, render, update_readme
from tests.conftest import REPO, needs_dali, subprocess_env


def test_results_schema_and_readme_section(tmp_path):
    path = write_result("loader", [{"name": "reference", "clips_per_s": 123.456, "mb_per_s": 7.0, "batch": 32,
                                    "workers": 2, "epoch_first_batch_ms": 512.3, "other_batch_ms": 61.6,
                                    "set_clips": 256}], tmp_path / "loader.json")
    data = json.loads(path.read_text())
    assert data["benchmark"] == "loader" and data["machine"]["cpu_count"] >= 1 and data["date"]
    text = render(tmp_path)
    assert "| reference | 123.5 | n/a | n/a | n/a | 7.0 | 512 | 62 | 256 | 32 | 2 |" in text
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    update_readme(readme, text)
    content = readme.read_text()
    assert "old" not in content and "123.5" in content and content.startswith("intro") and content.endswith("outro\n")


def test_train_step_benchmark_runs_every_zero_stage(tmp_path):
    """benchmarks/train_step.py on the CPU (tiny model): the real DeepSpeed engine per ZeRO stage, each in
    its own process, reporting the model's parameter count, FLOPs and speed."""
    import subprocess
    import sys

    from deteclap.config import load_config
    from deteclap.model import build_model

    repo = REPO
    out = tmp_path / "train_step.json"
    env = subprocess_env()
    subprocess.run([sys.executable, "benchmarks/train_step.py", "--model", "tiny", "--stages", "0,3", "--batch", "4",
                    "--steps", "1", "--warmup", "0", "--json", str(out)], cwd=repo, env=env, check=True,
                   capture_output=True, timeout=600)
    results = json.loads(out.read_text())["results"]
    expected = sum(p.numel() for p in build_model(load_config(repo / "configs" / "tiny.json").model, 601).parameters())
    assert [r["zero_stage"] for r in results] == [0, 3]
    assert all(r["parameters"] == expected and r["samples_per_s"] > 0 and r["flops_per_step"] > 0 for r in results)


def test_label_benchmark_relabels_labelled_shards_and_refuses_zero_clips(labelled_shards, synth_dir, tmp_path,
                                                                         monkeypatch):
    """Shards already labelled are timed anew (not 0 clips/s); a run that labels no clip writes no row."""
    import pytest

    from benchmarks import label as label_bench
    from deteclap import labels
    from deteclap.labels import store

    out = tmp_path / "label.json"
    args = ["--shards", str(labelled_shards), "--truth", str(synth_dir / "truth.jsonl"), "--labellers", "truth",
            "--devices", "cpu", "--json", str(out)]
    assert label_bench.main(args) == 0
    [row] = json.loads(out.read_text())["results"]
    assert row["clips"] == 8 and row["clips_per_s"] > 0
    out.unlink()
    monkeypatch.setattr(labels, "label_shards", lambda *a, **k: store.LabelReport("truth_audio"))
    with pytest.raises(RuntimeError, match="no clip labelled"):
        label_bench.main(args)
    assert not out.exists()


def test_label_benchmark_refuses_a_labeller_it_cannot_run(shard_dir, tmp_path):
    """The truth labeller without --truth is an error, not a run that leaves its row out."""
    import pytest

    from benchmarks import label as label_bench

    out = tmp_path / "label.json"
    with pytest.raises(SystemExit):
        label_bench.main(["--shards", str(shard_dir), "--labellers", "truth", "--devices", "cpu", "--json", str(out)])
    with pytest.raises(SystemExit):
        label_bench.main(["--shards", str(shard_dir), "--labellers", "clip", "--devices", "cpu", "--json", str(out)])
    assert not out.exists()


def test_run_gives_the_label_benchmark_the_synthetic_truth(monkeypatch):
    """`python -m benchmarks` times the truth labeller on its synthetic set (the README's truth_audio row)."""
    from benchmarks import run

    calls = []
    monkeypatch.setattr(run, "_run", calls.append)
    assert run.main(["--skip", "shard,loader,train_step"]) == 0
    [label_call] = [c for c in calls if c[0] == "benchmarks/label.py"]
    assert label_call[label_call.index("--truth") + 1] == str(run.DATA / "clips" / "truth.jsonl")
    calls.clear()
    assert run.main(["--shards", "elsewhere", "--skip", "shard,loader,train_step"]) == 0
    [label_call] = [c for c in calls if c[0] == "benchmarks/label.py"]
    assert "--truth" not in label_call and label_call[label_call.index("--labellers") + 1] == "clap,yolo"


def test_official_layout_export_is_redone_for_other_shards(shard_dir, tmp_path):
    """Synthetic keys repeat between sets: an export of other shards is cleared, not reused."""
    import soundfile

    from benchmarks.loader import export_official_layout
    from deteclap.shard import write_shards
    from deteclap.synth import generate

    out = tmp_path / "official"
    keys = export_official_layout(str(shard_dir), out, 224)
    wav = out / "audio" / f"{keys[0]}.wav"
    assert soundfile.info(str(wav)).duration == 3.0
    written = wav.stat().st_mtime_ns
    assert export_official_layout(str(shard_dir), out, 224) == keys and wav.stat().st_mtime_ns == written  # reused
    generate(tmp_path / "synth", 2, seconds=1.0, seed=5, size=(64, 48), fps=10)
    write_shards(tmp_path / "synth" / "truth.jsonl", tmp_path / "shards", split="train")
    other = export_official_layout(str(tmp_path / "shards"), out, 224)
    assert other == keys[:2] and soundfile.info(str(wav)).duration == 1.0
    assert sorted(p.stem for p in (out / "audio").iterdir()) == other


def test_every_run_appends_to_the_history_and_the_report_draws_its_trend(tmp_path):
    from benchmarks.common import HISTORY, git_commit
    from benchmarks.report import plot_trends, trends

    for value in (100.0, 80.0):
        write_result("loader", [{"name": "dali_gpu_t8", "clips_per_s": value, "steady_clips_per_s": value * 1.5,
                                 "runs_clips_per_s": [value], "profile": {"top": []}}], tmp_path / "loader.json")
    lines = [json.loads(line) for line in (tmp_path / HISTORY).read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["commit"] == git_commit() != "unknown"
    assert lines[1]["results"] == [{"name": "dali_gpu_t8", "clips_per_s": 80.0, "steady_clips_per_s": 120.0}]
    assert lines[0]["machine"]["cpu"] and "gpu" in lines[0]["machine"]
    series = trends(tmp_path / HISTORY)["loader"]
    [(machine, name)] = series["steady_clips_per_s"]
    assert name == "dali_gpu_t8" and lines[0]["machine"]["cpu"] in machine
    assert [value for _, value in series["clips_per_s"][machine, name]] == [100.0, 80.0]
    [png] = plot_trends(tmp_path / HISTORY, tmp_path)
    assert png.name == "trend_loader.png" and png.stat().st_size > 1000


@needs_dali
def test_loader_benchmark_runs_each_loader_in_its_own_process(shard_dir, tmp_path):
    """benchmarks/loader.py on the CPU: every loader (each DALI thread count its own result) timed in
    a spawned process of its own, over the shards read twice per epoch; steady clips/s beside
    clips/s; the run appended to the history beside the JSON."""
    import subprocess
    import sys

    repo = REPO
    out = tmp_path / "loader.json"
    cmd = [sys.executable, str(repo / "benchmarks" / "loader.py"), "--shards", str(shard_dir), "--batch", "2",
           "--batches", "12", "--warmup", "1", "--repeats", "1", "--loaders", "reference,dali_cpu", "--threads", "1,2",
           "--replicate", "2", "--json", str(out), "--plot", str(tmp_path / "loader.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=repo)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert sorted(results) == ["dali_cpu_t1", "dali_cpu_t2", "reference"]
    assert results["dali_cpu_t2"]["threads"] == 2 and results["reference"]["threads"] is None
    for result in results.values():
        assert result["set_clips"] == 16 and result["epoch_starts_timed"] >= 1       # 8 clips read twice
        assert result["steady_clips_per_s"] > 0 and result["clips_per_s"] > 0
    assert len((tmp_path / "history.jsonl").read_text().splitlines()) == 1


def test_audio_formats_side_by_side(shard_dir, flac_shard_dir, tmp_path):
    """benchmarks/audio.py: both formats' bytes and CPU per clip from the same clips (the PCM member is
    exactly 44 + 2 bytes per sample); benchmarks/loader.py with the pcm and flac folders times each
    loader on each (`name@pcm`, `name@flac`)."""
    import subprocess
    import sys

    out = tmp_path / "audio.json"
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "audio.py"), "--shards", str(flac_shard_dir),
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert sorted(results) == ["flac", "pcm"] and results["pcm"]["clips"] == results["flac"]["clips"] == 8
    assert results["pcm"]["bytes_per_clip"] == 44 + 2 * 16000 * 3.0 > results["flac"]["bytes_per_clip"]
    assert all(r["read_ms_per_clip"] > 0 and r["encode_ms_per_clip"] > 0 for r in results.values())

    out = tmp_path / "loader.json"
    cmd = [sys.executable, str(REPO / "benchmarks" / "loader.py"), "--shards", str(shard_dir), str(flac_shard_dir),
           "--batch", "2", "--batches", "3", "--warmup", "1", "--repeats", "1", "--loaders", "reference",
           "--json", str(out), "--plot", str(tmp_path / "loader.png")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    assert sorted(results) == ["reference@flac", "reference@pcm"]
    assert results["reference@pcm"]["audio_format"] == "pcm" and results["reference@flac"]["audio_format"] == "flac"


def test_loader_results_carry_their_ratio_to_the_official_loader():
    """Each loader's clips/s over the official loader's of the same run; none without one."""
    from benchmarks.loader import add_ratios

    results = [{"name": "dali_cpu@pcm", "clips_per_s": 300.0, "steady_clips_per_s": 400.0},
               {"name": "official_layout", "clips_per_s": 200.0, "steady_clips_per_s": 320.0}]
    add_ratios(results)
    assert [(r["vs_official"], r["steady_vs_official"]) for r in results] == [(1.5, 1.25), (1.0, 1.0)]
    alone = [{"name": "reference", "clips_per_s": 300.0, "steady_clips_per_s": None}]
    add_ratios(alone)
    assert "vs_official" not in alone[0]
