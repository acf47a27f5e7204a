"""Past one machine, on real components: sharding and labelling on a local Ray instance (identical to
local mode; a worker killed mid-shard is retried), shards written to and read back from a loopback
S3 server (moto), video2dataset's tar layout as SRC, HTTP inputs, per-shard stats."""

from __future__ import annotations

import io
import json
import tarfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from deteclap.format import storage
from deteclap.shard import verify_shards, write_shards
from tests.conftest import needs_dali

SAMPLES_PER_SHARD = 3


def _tree(out: Path, suffixes=(".tar", ".idx", ".json", ".jsonl")) -> dict[str, bytes]:
    """The shard folder's files that must match between runs (stats hold timings: compared apart)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and p.suffix in suffixes and not p.name.endswith(".stats.json") and p.name != "stats.json"}


def _remote_tree(url: str) -> dict[str, bytes]:
    return {name: storage.read_bytes(storage.join(url, name)) for name in storage.list_names(url)
            if not name.endswith("stats.json")}


@pytest.fixture(scope="module")
def local_reference(synth_dir, tmp_path_factory) -> Path:
    """The synthetic clips sharded in local mode with 2 worker processes: the bytes to match."""
    out = tmp_path_factory.mktemp("local_reference")
    summary = write_shards(synth_dir / "truth.jsonl", out, workers=2, samples_per_shard=SAMPLES_PER_SHARD)
    assert summary["failed"] == 0 and summary["samples"] == 8
    return out


def test_ray_sharding_is_byte_identical_to_local(ray_cluster, synth_dir, local_reference, tmp_path):
    summary = write_shards(synth_dir / "truth.jsonl", tmp_path, samples_per_shard=SAMPLES_PER_SHARD,
                           distributor="ray")
    assert summary["samples"] == 8 and summary["shards"] == 3
    assert _tree(tmp_path) == _tree(local_reference)
    # a rerun finds every shard done and writes nothing
    again = write_shards(synth_dir / "truth.jsonl", tmp_path, distributor="ray")
    assert again["written_now"] == 0 and again["skipped_shards"] == 3
    assert _tree(tmp_path) == _tree(local_reference)


def test_per_shard_stats_and_job_summary(local_reference):
    names = sorted(p.name for p in local_reference.glob("*.tar"))
    total_clips = 0
    for name in names:
        stats = json.loads((local_reference / name.replace(".tar", ".stats.json")).read_text())
        assert stats["shard"] == name[:-4] and stats["samples"] + sum(stats["failures"].values()) == stats["clips"]
        assert stats["bytes"] == (local_reference / name).stat().st_size
        assert stats["decode_seconds"] > 0 and stats["encode_seconds"] > 0
        total_clips += stats["clips"]
    job = json.loads((local_reference / "stats.json").read_text())
    assert job["clips"] == total_clips == 8 and job["samples"] == 8 and job["shards"] == len(names)
    assert job["bytes"] == sum((local_reference / n).stat().st_size for n in names)
    assert job["failures"] == {}


def _shard_task_pids() -> list[int]:
    import psutil

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [""])[0].startswith("ray::write_shard")]


def test_ray_worker_killed_mid_shard_is_retried(ray_cluster, synth_dir, local_reference, tmp_path):
    pytest.importorskip("psutil")
    import os
    import signal

    killed: list[int] = []

    def kill_first_shard_task():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for pid in _shard_task_pids():
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_first_shard_task)
    killer.start()
    summary = write_shards(synth_dir / "truth.jsonl", tmp_path, samples_per_shard=SAMPLES_PER_SHARD,
                           distributor="ray")
    killer.join()
    assert killed, "no shard task was seen running"
    assert summary["samples"] == 8 and summary["failed"] == 0
    assert _tree(tmp_path) == _tree(local_reference)
    assert not list(tmp_path.glob(".*.tmp"))


def test_shards_to_s3_then_verify_and_read(ray_cluster, s3_bucket, synth_dir, local_reference):
    out = f"{s3_bucket}/shards"
    summary = write_shards(synth_dir / "truth.jsonl", out, samples_per_shard=SAMPLES_PER_SHARD, distributor="ray")
    assert summary["samples"] == 8
    assert _remote_tree(out) == _tree(local_reference)
    report = verify_shards(out)
    assert report.ok and report.samples == 8, report.errors


def _video2dataset_tars(synth_dir: Path, folder: Path) -> dict[str, dict]:
    """Write the synthetic clips as video2dataset writes a download: tars of KEY.mp4 + KEY.json
    (+ KEY.txt caption), keys `{shard:05d}{index:04d}`, the clip span in `clips`, a stats file
    per tar. Returns {key: its json}."""
    rows = [json.loads(line) for line in (synth_dir / "truth.jsonl").read_text().splitlines()]
    metas = {}
    for shard in range(2):
        with tarfile.open(folder / f"{shard:05d}.tar", "w") as tar:
            for index, row in enumerate(rows[shard::2]):
                key = f"{shard:05d}{index:04d}"
                meta = {"key": key, "url": f"https://example.invalid/{row['file']}", "caption": row["class"],
                        "label": row["class"], "clips": [[5.0, 8.0]], "status": "success"}
                metas[key] = meta
                for ext, data in (("mp4", (synth_dir / row["file"]).read_bytes()),
                                  ("json", json.dumps(meta).encode()), ("txt", row["class"].encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": 4, "successes": 4}))
    return metas


def test_video2dataset_layout_as_src(synth_dir, tmp_path):
    src = tmp_path / "v2d"
    src.mkdir()
    metas = _video2dataset_tars(synth_dir, src)
    out = tmp_path / "out"
    summary = write_shards(str(src), out, samples_per_shard=SAMPLES_PER_SHARD)
    assert summary["samples"] == 8 and summary["failed"] == 0
    assert verify_shards(out).ok
    meta_all = json.loads((out / "dataset.json").read_text())
    truth_classes = sorted({m["label"] for m in metas.values()})
    assert meta_all["classes"] == truth_classes
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                if info.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(info).read())
                    assert meta["classes"] == [metas[meta["id"]]["label"]]
                    assert meta["start"] == 0.0 and meta["duration"] == pytest.approx(3.0, abs=0.15)


def test_http_and_s3_inputs_match_local(s3_bucket, http_url, synth_dir, local_reference, tmp_path):
    folder, base = http_url
    rows = [json.loads(line) for line in (synth_dir / "truth.jsonl").read_text().splitlines()]
    for row in rows:
        (folder / row["file"]).write_bytes((synth_dir / row["file"]).read_bytes())
        storage.write_bytes(f"{s3_bucket}/in/{row['file']}", (synth_dir / row["file"]).read_bytes())
    for prefix, name in ((base, "http"), (f"{s3_bucket}/in", "s3")):
        manifest = tmp_path / f"{name}.jsonl"
        manifest.write_text("".join(json.dumps(dict(row, path=f"{prefix}/{row['file']}", id=Path(row["file"]).stem))
                                    + "\n" for row in rows))
        out = tmp_path / name
        summary = write_shards(manifest, out, samples_per_shard=SAMPLES_PER_SHARD)
        assert summary["samples"] == 8, summary
        ours = {n: b for n, b in _tree(out).items() if n.endswith(".tar")}
        reference = {n: b for n, b in _tree(local_reference).items() if n.endswith(".tar")}
        # the json members name the source as given: compare everything but the sources
        assert ours.keys() == reference.keys()
        for tar_name in ours:
            assert _members_without_source(ours[tar_name]) == _members_without_source(reference[tar_name])


def _members_without_source(tar_bytes: bytes) -> dict[str, bytes]:
    members = {}
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for info in tar:
            data = tar.extractfile(info).read()
            if info.name.endswith(".json"):
                meta = json.loads(data)
                meta.pop("source")
                data = json.dumps(meta, sort_keys=True).encode()
            members[info.name] = data
    return members


def _scores(folder) -> dict:
    from deteclap.labels.store import read_scores

    return read_scores(folder)


def test_ray_labelling_matches_local(ray_cluster, shard_dir, synth_dir, tmp_path):
    import shutil

    from deteclap import label

    truth = str(Path(synth_dir) / "truth.jsonl")
    local, remote = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(shard_dir, local)
    shutil.copytree(shard_dir, remote)
    assert label.main([str(local), "--labellers", "truth", "--truth", truth, "--no-progress"]) == 0
    assert label.main([str(remote), "--labellers", "truth", "--truth", truth, "--no-progress",
                       "--distributor", "ray", "--actors", "2", "--num-gpus", "0", "--num-cpus", "0.5"]) == 0
    ours, reference = _scores(remote), _scores(local)
    assert ours.keys() == reference.keys() and len(ours) == 8
    for key in reference:
        for name in reference[key]:
            np.testing.assert_array_equal(ours[key][name], reference[key][name])
    assert _tree(remote, (".tar", ".idx")) == _tree(local, (".tar", ".idx"))
    meta_l, meta_r = (json.loads((f / "dataset.json").read_text()) for f in (local, remote))
    assert meta_r["labellers"] == meta_l["labellers"] and meta_r["labelled_shards"] == meta_l["labelled_shards"]


def _upload(folder: Path, url: str) -> str:
    for path in sorted(folder.iterdir()):
        if path.is_file():
            storage.put_file(path, storage.join(url, path.name))
    return url


def _batches(make, cfg, train: bool) -> list[dict]:
    import torch

    torch.manual_seed(0)              # training augmentation draws from torch's global generator
    out = []
    for batch in make(cfg, train=train, epoch=1):
        out.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items() if k != "shard"})
    return out


def _assert_same_batches(ours: list[dict], reference: list[dict]) -> None:
    import torch

    assert len(ours) == len(reference) > 0
    for a, b in zip(ours, reference):
        assert a.keys() == b.keys() and a["keys"] == b["keys"]
        for name, value in b.items():
            if isinstance(value, torch.Tensor):
                torch.testing.assert_close(a[name], value, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("loader", ["reference", pytest.param("dali", marks=needs_dali)])
def test_loaders_read_shards_from_s3(s3_bucket, labelled_shards, loader):
    from tests.test_loader import loader_factory, make_cfg

    url = _upload(labelled_shards, f"{s3_bucket}/shards")
    make = loader_factory(loader)
    for train in (True, False):
        cfg_local, cfg_s3 = make_cfg(labelled_shards, variant="or"), make_cfg(Path(url), variant="or")
        cfg_s3.data.train_shards = cfg_s3.data.eval_shards = url
        for cfg in (cfg_local, cfg_s3):
            cfg.labels.audio_labeller, cfg.labels.visual_labeller = "truth_audio", "truth_visual"
        _assert_same_batches(_batches(make, cfg_s3, train), _batches(make, cfg_local, train))


def test_training_from_s3_matches_local(s3_bucket, labelled_shards, tmp_path):
    from tests.test_train import TERMS, metrics, overrides, run_train

    url = _upload(labelled_shards, f"{s3_bucket}/shards")
    runs = {}
    for name, shards in (("local", str(labelled_shards)), ("s3", url)):
        run_dir = tmp_path / name
        run_train(overrides(shards, run_dir, **{"run.max_steps": 2, "run.checkpoint_every": 100}))
        runs[name] = [{k: row[k] for k in ("step", *TERMS)} for row in metrics(run_dir) if "total" in row]
    assert runs["s3"] == runs["local"] and len(runs["local"]) == 2


def test_labelling_shards_in_s3_matches_local(ray_cluster, s3_bucket, shard_dir, labelled_shards, synth_dir):
    from deteclap import label

    url = _upload(shard_dir, f"{s3_bucket}/shards")
    truth = str(Path(synth_dir) / "truth.jsonl")
    assert label.main([url, "--labellers", "truth", "--truth", truth, "--no-progress", "--distributor", "ray",
                       "--actors", "2", "--num-gpus", "0", "--num-cpus", "0.5"]) == 0
    assert _remote_tree(url).keys() >= {p.name for p in labelled_shards.glob("*.tar")}
    for path in sorted(labelled_shards.glob("*.tar")) + sorted(labelled_shards.glob("*.idx")):
        assert storage.read_bytes(storage.join(url, path.name)) == path.read_bytes(), path.name
    assert _scores(url).keys() == _scores(labelled_shards).keys()


def test_ray_missing_says_how_to_install(monkeypatch):
    import sys

    from deteclap import distribute

    monkeypatch.setitem(sys.modules, "ray", None)        # import ray raises ImportError
    with pytest.raises(distribute.DistributorError, match=r"pip install 'deteclap\[ray\]'"):
        list(distribute.run_tasks(len, [("ab",)], distributor="ray"))


class _SlowLabeller:
    """A real labeller that takes 0.3 s per batch, so that a test can kill its actor mid-shard."""

    def __init__(self, inner):
        self.inner, self.name = inner, inner.name

    def __call__(self, samples):
        time.sleep(0.3)
        return self.inner(samples)


def _slow_truth(argv: list[str], vocabulary: list[str], name: str):
    from deteclap import label

    return _SlowLabeller(label.build_one(label.build_parser().parse_args(argv), vocabulary, name))


def test_label_actor_killed_mid_shard_is_retried(ray_cluster, shard_dir, synth_dir, tmp_path):
    pytest.importorskip("psutil")
    import functools
    import os
    import shutil
    import signal

    import psutil

    from deteclap.labels import store

    argv = ["unused", "--labellers", "truth", "--truth", str(Path(synth_dir) / "truth.jsonl")]
    vocabulary = json.loads((shard_dir / "dataset.json").read_text())["label_vocabulary"]
    local, remote = tmp_path / "local", tmp_path / "ray"
    shutil.copytree(shard_dir, local)
    shutil.copytree(shard_dir, remote)
    store.label_shards(local, _slow_truth(argv, vocabulary, "truth_audio").inner, batch_size=1)

    killed: list[int] = []

    def kill_one_labelling_actor():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for proc in psutil.process_iter(["cmdline"]):
                if (proc.info["cmdline"] or [""])[0].startswith("ray::LabelWorker.label"):
                    os.kill(proc.pid, signal.SIGKILL)
                    killed.append(proc.pid)
                    break
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_labelling_actor)
    killer.start()
    where = store.Distribution("ray", functools.partial(_slow_truth, argv, vocabulary, "truth_audio"), actors=2,
                               num_cpus=0.5)
    report = store.label_shards(remote, "truth_audio", batch_size=1, distribution=where)
    killer.join()
    assert killed, "no labelling actor was seen at work"
    assert sorted(report.shards_done) == sorted(p.name for p in local.glob("*.tar")) and report.samples == 8
    assert _tree(remote, (".tar", ".idx")) == _tree(local, (".tar", ".idx"))
    meta = json.loads((remote / "dataset.json").read_text())
    assert meta["labellers"] == ["truth_audio"] and meta["labelled_shards"]["truth_audio"] == sorted(
        p.name for p in local.glob("*.tar"))


def test_s3_folder_src_lists_the_files_not_taken(s3_bucket, synth_dir, tmp_path):
    rows = [json.loads(line) for line in (synth_dir / "truth.jsonl").read_text().splitlines()]
    videos = [(synth_dir / row["file"]).read_bytes() for row in rows[:3]]
    src = f"{s3_bucket}/folder"
    storage.write_bytes(f"{src}/a.mp4", videos[0])
    storage.write_bytes(f"{src}/sub/b.mkv", videos[1])       # any VIDEO_EXTENSIONS name, recursive
    storage.write_bytes(f"{src}/c", videos[2])               # no extension: taken by its content
    storage.write_bytes(f"{src}/song.m4a", b"audio only")
    storage.write_bytes(f"{src}/notes", b"not a container")
    summary = write_shards(src, tmp_path / "out", samples_per_shard=SAMPLES_PER_SHARD)
    assert summary["samples"] == 3 and summary["failed"] == 0, summary
    assert sorted((row["source"], row["reason"]) for row in summary["ignored"]) == [
        ("notes", "no extension"), ("song.m4a", ".m4a")]
    ids = []
    for path in (tmp_path / "out").glob("*.tar"):
        with tarfile.open(path) as tar:
            ids += [json.loads(tar.extractfile(info).read())["id"] for info in tar if info.name.endswith(".json")]
    assert sorted(ids) == ["a", "c", "sub/b"]


def test_video2dataset_split_leaving_out_is_a_bad_row(synth_dir, tmp_path):
    src = tmp_path / "v2d"
    src.mkdir()
    metas = _video2dataset_tars(synth_dir, src)
    bad_key = sorted(metas)[0]
    with tarfile.open(src / "00002.tar", "w") as tar:         # one more sample whose split leaves OUT
        for ext, data in (("mp4", (synth_dir / "truth.jsonl").read_bytes()),
                          ("json", json.dumps({"key": bad_key + "x", "split": "../../escaped"}).encode())):
            info = tarfile.TarInfo(f"{bad_key}x.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    out = tmp_path / "deep" / "out"
    summary = write_shards(str(src), out, samples_per_shard=SAMPLES_PER_SHARD)
    assert summary["samples"] == 8 and summary["reasons"] == {"bad_manifest_row": 1}
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [row["source"] for row in failures] == [f"00002.tar#{bad_key}x.mp4"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deep", "v2d"]


def test_damaged_tar_in_s3_is_named_and_left_as_it_was(s3_bucket, shard_dir, synth_dir, tmp_path, capsys):
    from deteclap import label

    url = _upload(shard_dir, f"{s3_bucket}/damaged")
    first = sorted(p.name for p in shard_dir.glob("*.tar"))[0]
    whole = (shard_dir / first).read_bytes()
    storage.write_bytes(storage.join(url, first), whole[:len(whole) // 2])     # cut inside a member
    assert "damaged" in " ".join(verify_shards(url).errors)
    truth = str(Path(synth_dir) / "truth.jsonl")
    assert label.main([url, "--labellers", "truth", "--truth", truth, "--no-progress"]) == 1
    assert f"{first} not labelled (left as it was)" in capsys.readouterr().err
    assert storage.read_bytes(storage.join(url, first)) == whole[:len(whole) // 2]
    meta = json.loads(storage.read_text(storage.join(url, "dataset.json")))
    assert meta["labellers"] == [] and first not in meta["labelled_shards"]["truth_audio"]
    assert len(meta["labelled_shards"]["truth_audio"]) == len(list(shard_dir.glob("*.tar"))) - 1
