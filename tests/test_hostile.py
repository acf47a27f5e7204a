"""Hostile shards and careless inputs, built here: nothing is written outside OUT, nothing read from
outside a shard folder, and every sample a damaged tar cannot give is a DataError naming the shard
or a counted skip, on both loaders; the labeller reports damaged shards and leaves no tmp file."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from deteclap import format as fmt
from deteclap.data.loader import DataError
from tests.conftest import HAVE_DALI
from tests.test_loader import LOADERS, all_keys, loader_factory, make_cfg

TAR = "train-000001.tar"          # the shard the damage goes into (shard_dir: tars of 3, 3, 2 samples)


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ----------------------------------------------------------------------------------------------
# 1. nothing written outside OUT, nothing read from outside a shard folder
@pytest.mark.parametrize("split", ["./../../ESCAPED", "../x", "a/b", "", "tr ain", "x.y", "/abs"])
def test_split_names_are_plain(split):
    with pytest.raises(fmt.FormatError, match="letters, digits"):
        fmt.check_split(split)
    with pytest.raises(fmt.FormatError):
        fmt.shard_name(split, 0)
    assert fmt.check_split("train_2-b") == "train_2-b"


def test_a_manifest_split_cannot_write_outside_out(synth_dir, tmp_path):
    """A row whose split leaves OUT is a bad_manifest_row (the other rows shard); --split likewise is a
    usage error; nothing appears outside OUT and --verify passes."""
    from deteclap.shard import ShardError, main, verify_shards, write_shards

    clips = sorted(p.name for p in synth_dir.glob("*.mp4"))[:2]
    work = tmp_path / "work"
    work.mkdir()
    manifest = work / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(synth_dir / clips[0]), "split": "./../../ESCAPED"}) + "\n"
                        + json.dumps({"path": str(synth_dir / clips[1]), "split": "train"}) + "\n")
    out = work / "a" / "b" / "out"
    before = tree(tmp_path)
    summary = write_shards(manifest, out, samples_per_shard=4)
    assert summary["samples"] == 1 and summary["reasons"] == {"bad_manifest_row": 1}
    rows = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert rows[0]["reason"] == "bad_manifest_row" and "ESCAPED" in rows[0]["source"]
    assert {p for p in tree(tmp_path) - before if not p.startswith("work/a/b/out")} == {"work/a", "work/a/b"}
    assert verify_shards(out).ok
    with pytest.raises(ShardError, match="--split"):
        write_shards(manifest, out, split="../../up")
    with pytest.raises(SystemExit) as usage:
        main([str(manifest), str(out), "--split", "../up", "--quiet"])
    assert usage.value.code == 2
    assert not any("up" in p for p in tree(tmp_path))


@pytest.mark.parametrize("entry", ["../../../../etc/passwd", "/etc/passwd", "sub/../../x.tar"])
def test_dataset_json_entries_that_leave_the_folder_are_refused(shard_dir, synth_dir, tmp_path, entry, capsys):
    """An absolute `tar` entry, or one with `..`, is refused by the loaders, --verify and the labeller."""
    from deteclap import label
    from deteclap.data.loader import build_loader
    from deteclap.shard import verify_shards

    shards = tmp_path / "shards"
    shutil.copytree(shard_dir, shards)
    meta = fmt.load_dataset_json(shards)
    meta["shards"][0]["tar"] = entry
    fmt.save_dataset_json(shards, meta)
    with pytest.raises(fmt.FormatError, match="outside the shard folder"):
        build_loader(make_cfg(shards), train=True)
    report = verify_shards(shards)
    assert not report.ok and any("outside the shard folder" in line for line in report.errors)
    truth = str(synth_dir / "truth.jsonl")
    assert label.main([str(shards), "--labellers", "truth", "--truth", truth, "--no-progress"]) == 2
    assert "outside the shard folder" in capsys.readouterr().err
    if HAVE_DALI:
        from dali_pipes.iterator import build_dali_loader

        with pytest.raises(fmt.FormatError, match="outside the shard folder"):
            build_dali_loader(make_cfg(shards), train=False, device="cpu")


# ----------------------------------------------------------------------------------------------
# 2. one key rule; the index and the stream must agree
def _members(shard_dir: Path) -> list[tuple[str, dict[str, bytes]]]:
    return [s for tar in sorted(shard_dir.glob("train-*.tar")) for s in fmt.iter_tar_samples(tar)]


def test_members_under_folders_are_samples_of_their_own(shard_dir, tmp_path):
    """`./k.*`, `a/k.*` and `b/k.*` (what `tar -C d .` and folders make) are three samples, each
    delivered once with its own key; none is merged or lost."""
    from deteclap.data.loader import build_loader

    samples = _members(shard_dir)[:3]
    folder = tmp_path / "tars"
    folder.mkdir()
    with tarfile.open(folder / "train-000000.tar", "w") as archive:
        for prefix, (_, members) in zip(["./", "a/", "b/"], samples):
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{prefix}k.{ext}")
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    loader = build_loader(make_cfg(Path(f"{folder}/*.tar")), train=False)
    assert sorted(k for b in loader for k in b["keys"]) == ["./k", "a/k", "b/k"]
    assert loader.skipped == {}


def test_swapped_index_is_named_and_loses_nothing(shard_dir, tmp_path):
    """Indexes swapped between two tars: a DataError naming the index (on_error=raise); with skip a
    warning, and every sample is read from the tar's own headers (both loaders)."""
    shards = tmp_path / "shards"
    shutil.copytree(shard_dir, shards)
    a, b = shards / "train-000000.idx", shards / "train-000001.idx"
    a_text, b_text = a.read_bytes(), b.read_bytes()
    a.write_bytes(b_text)
    b.write_bytes(a_text)
    for name in ["reference", "dali"] if HAVE_DALI else ["reference"]:
        make = loader_factory(name)
        cfg = make_cfg(shards)
        with pytest.raises(DataError, match="train-000000.idx: does not match train-000000.tar"):
            make(cfg, train=False)
        cfg.data.on_error = "skip"
        reading = make(cfg, train=False)
        assert sorted(k for batch in reading for k in batch["keys"]) == sorted(all_keys(shard_dir)), name
        assert reading.skipped == {}


# ----------------------------------------------------------------------------------------------
# 3. damaged tars: truncated, a huge declared size, a .cls of the wrong length, odd keys
def _fix_checksum(header: bytearray) -> None:
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header)


def damage(shard_dir: Path, dst: Path, kind: str) -> tuple[Path, dict[str, str], int]:
    """A copy of shard_dir whose TAR is damaged: (folder, {key lost: reason}, samples left)."""
    shutil.copytree(shard_dir, dst)
    tar = dst / TAR
    samples = list(fmt.iter_tar_samples(tar))
    keys = [key for key, _ in samples]
    total = len(all_keys(shard_dir))
    if kind in ("truncated", "huge"):          # inside the 2nd sample's mp4; the old index stays
        ext, offset, size, _ = next(m for m in fmt.scan_shard(tar).entries[keys[1]] if m[0] == "mp4")
        data = bytearray(tar.read_bytes())
        if kind == "truncated":
            data = data[:offset + size // 2]
        else:
            header = offset - tarfile.BLOCKSIZE
            data[header + 124:header + 136] = b"77777777777\0"
            block = bytearray(data[header:header + tarfile.BLOCKSIZE])
            _fix_checksum(block)
            data[header:header + tarfile.BLOCKSIZE] = block
        tar.write_bytes(bytes(data))
        return dst, {keys[1]: "corrupt_tar", keys[2]: "corrupt_tar"}, total - 2
    if kind == "cls":
        samples[1][1]["cls"] += b"\1"
    elif kind == "space":
        samples[1] = ("a b", samples[1][1])
    elif kind == "not-utf8":
        samples[1] = ("k\udcff", samples[1][1])
    fmt.write_index(fmt.index_path(tar), fmt.write_tar(tar, samples))
    reason = {"cls": "bad_classes", "space": "bad_key", "not-utf8": "bad_key"}[kind]
    return dst, {samples[1][0]: reason}, total - 1


KINDS = ["truncated", "huge", "cls", "space", "not-utf8"]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", KINDS)
def test_damaged_tar_is_a_named_error_or_counted_skips(shard_dir, tmp_path, loader, kind):
    make = loader_factory(loader)
    shards, lost, left = damage(shard_dir, tmp_path / "shards", kind)
    cfg = make_cfg(shards)
    with pytest.raises(DataError) as raised:
        list(make(cfg, train=False))
    assert TAR in str(raised.value), raised.value
    assert any(reason in str(raised.value) for reason in lost.values()) or "damaged" in str(raised.value) \
        or "past the end" in str(raised.value), raised.value
    for train in (False, True):
        cfg.data.on_error = "skip"
        cfg.data.batch_size = 1
        reading = make(cfg, train=train)
        keys = [k for batch in reading for k in batch["keys"]]
        assert len(keys) == len(set(keys)) == left and not set(keys) & set(lost), (train, keys)
        counted = {}
        for item in reading.skipped_samples:
            counted[item.key] = item.reason
        assert counted == lost, (train, reading.skipped_samples)


@pytest.mark.parametrize("kind", [kind for kind in KINDS if kind != "cls"])     # (labelling reads no .cls)
def test_labeller_reports_a_damaged_shard_and_leaves_no_tmp(shard_dir, synth_dir, tmp_path, kind, capsys):
    """`deteclap.label` labels the whole shards, names the damaged one (exit 1), leaves it byte for
    byte as it was, writes no tmp file, and does not mark the labeller complete."""
    from deteclap import label

    shards, _, _ = damage(shard_dir, tmp_path / "shards", kind)
    before = (shards / TAR).read_bytes()
    truth = str(synth_dir / "truth.jsonl")
    assert label.main([str(shards), "--labellers", "truth", "--truth", truth, "--no-progress"]) == 1
    assert f"{TAR} not labelled" in capsys.readouterr().err
    assert (shards / TAR).read_bytes() == before
    assert not [p for p in shards.iterdir() if p.name.endswith(".tmp")]
    meta = fmt.load_dataset_json(shards)
    assert meta["labellers"] == [] and TAR not in meta["labelled_shards"]["truth_audio"]
    assert len(meta["labelled_shards"]["truth_audio"]) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_verify_names_each_damage(shard_dir, tmp_path, kind):
    from deteclap.shard import verify_shards

    shards, lost, _ = damage(shard_dir, tmp_path / "shards", kind)
    report = verify_shards(shards)
    assert not report.ok and all(line.startswith(TAR) for line in report.errors), report.errors
    assert any(key in line for key in lost for line in report.errors), report.errors


def test_a_failed_score_rewrite_leaves_no_tmp(shard_dir, tmp_path):
    from deteclap.labels.store import write_scores

    shards = tmp_path / "shards"
    shutil.copytree(shard_dir, shards)
    before = (shards / TAR).read_bytes()
    with pytest.raises(KeyError, match="no truth scores"):
        write_scores(shards / TAR, "truth", {})
    assert (shards / TAR).read_bytes() == before
    assert not [p for p in shards.iterdir() if p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------
# 7. DALI's frame table
def test_dali_refuses_a_frame_table_pointing_at_frame_0(shard_dir, tmp_path):
    """A KEY.frames whose entries all name frame 0's bytes would make DALI decode frame 0 for every
    instant; it is refused (corrupt_mp4), named or skipped and counted."""
    pytest.importorskip("nvidia.dali")
    from dali_pipes.iterator import build_dali_loader

    shards = tmp_path / "shards"
    shutil.copytree(shard_dir, shards)
    tar = shards / TAR
    samples = list(fmt.iter_tar_samples(tar))
    bad_key = samples[1][0]
    width, height, frames = fmt.decode_frame_table(samples[1][1]["frames"])
    samples[1][1]["frames"] = fmt.encode_frame_table(width, height, [frames[0]] * len(frames))
    assert fmt.frame_table_problem(samples[1][1]["frames"], len(samples[1][1]["mp4"]), 10)
    assert fmt.frame_table_problem(samples[0][1]["frames"], len(samples[0][1]["mp4"]), 10) is None
    fmt.write_index(fmt.index_path(tar), fmt.write_tar(tar, samples))
    cfg = make_cfg(shards)
    with pytest.raises(DataError, match=f"{TAR}: sample {bad_key}: corrupt_mp4: its frames member"):
        build_dali_loader(cfg, train=True, device="cpu")
    cfg.data.on_error = "skip"
    cfg.data.batch_size = 1
    reading = build_dali_loader(cfg, train=True, device="cpu")
    keys = [k for batch in reading for k in batch["keys"]]
    assert sorted(keys) == sorted(k for k in all_keys(shard_dir) if k != bad_key)
    assert reading.skipped == {"corrupt_mp4": 1}


def test_scan_shard_names_each_damage(tmp_path):
    """scan_shard on tars built here: a whole tar; one ending without its end blocks; garbage after
    a member; an index listing a sample the tar lacks."""
    samples = [(k, {"cls": b"\1", "json": b"{}"}) for k in ("a", "b", "c")]
    tar = tmp_path / "t.tar"
    fmt.write_index(fmt.index_path(tar), fmt.write_tar(tar, samples))
    assert fmt.scan_shard(tar).problems == [] and list(fmt.scan_shard(tar).entries) == ["a", "b", "c"]
    from_index = fmt.scan_shard(tar)           # read through the index (the fast path) ...
    fmt.index_path(tar).unlink()
    assert fmt.scan_shard(tar) == from_index   # ... gives what tarfile's parse of the headers gives
    entries = fmt.write_tar(tar, samples)
    fmt.write_index(fmt.index_path(tar), [entries[0], entries[2]])     # an index leaving out a sample
    assert "t.idx: does not match t.tar" in fmt.scan_shard(tar).problems[0]
    assert list(fmt.scan_shard(tar).entries) == ["a", "b", "c"]
    whole = tar.read_bytes()
    end = 6 * 2 * tarfile.BLOCKSIZE               # six members of one block of header and one of data
    tar.write_bytes(whole[:end])
    scan = fmt.scan_shard(tar)
    assert "truncated" in scan.problems[0] and scan.bad == {"c": ("corrupt_tar", scan.bad["c"][1])}
    tar.write_bytes(whole[:end] + b"x" * 2048)
    assert "damaged header" in fmt.scan_shard(tar).problems[0]
    fmt.write_index(fmt.index_path(tar), fmt.write_tar(tar, samples[:2]) + [[("cls", 9, 1, "z.cls")]])
    scan = fmt.scan_shard(tar)             # a foreign index: named; the whole tar's headers hold its samples
    assert scan.bad == {} and list(scan.entries) == ["a", "b"]
    assert scan.problems == ["t.idx: does not match t.tar (a stale or foreign index, or a damaged tar)"]


# ----------------------------------------------------------------------------------------------
# 5. two jobs on one folder
def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=env)


def _wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def _run_two_while_locked(folder: Path, jobs: list[list[str]], tmp_path: Path) -> list[str]:
    """Start both jobs while this test holds the folder's lock, see both wait with a message, let them
    run; returns their stderr. Both must exit 0."""
    logs = [tmp_path / f"job{i}.log" for i in range(len(jobs))]
    with fmt.folder_lock(folder, "test"):
        procs = [_start(job, log) for job, log in zip(jobs, logs)]
        _wait_until(lambda: all("waiting for" in log.read_text() for log in logs)
                    or any(p.poll() is not None for p in procs))
    for proc in procs:
        assert proc.wait(timeout=300) == 0, [log.read_text() for log in logs]
    return [log.read_text() for log in logs]


def test_two_shard_writers_on_one_out_keep_both_splits(synth_dir, tmp_path):
    """`shard` for the train and the test split into one OUT at once: the second waits for the first
    (it says so), and dataset.json lists both splits' tars; --verify passes."""
    from deteclap.shard import verify_shards

    clips = sorted(synth_dir.glob("*.mp4"))[:4]
    manifests = []
    for split, pair in (("train", clips[:2]), ("test", clips[2:])):
        manifests.append(tmp_path / f"{split}.jsonl")
        manifests[-1].write_text("".join(json.dumps({"path": str(p)}) + "\n" for p in pair))
    out = tmp_path / "out"
    out.mkdir()
    logs = _run_two_while_locked(out, [["-m", "deteclap.shard", str(manifests[0]), str(out), "--split", "train",
                                        "--samples-per-shard", "2", "--quiet"],
                                       ["-m", "deteclap.shard", str(manifests[1]), str(out), "--split", "test",
                                        "--samples-per-shard", "2", "--quiet"]], tmp_path)
    assert all("waiting for" in log and "test (pid" in log for log in logs), logs
    rows = fmt.load_dataset_json(out)["shards"]
    assert sorted((row["split"], row["samples"]) for row in rows) == [("test", 2), ("train", 2)]
    assert verify_shards(out).ok
    assert not [p for p in out.iterdir() if p.name.startswith(".")]    # no tmp file, no lock file


def test_two_labellers_at_once_both_finish(shard_dir, synth_dir, tmp_path):
    """Two labellers on the same shards: the second waits, then finds every shard done; no tmp file
    is left, and every sample holds its scores."""
    from deteclap.labels.store import read_scores

    shards = tmp_path / "shards"
    shutil.copytree(shard_dir, shards)
    job = ["-m", "deteclap.label", str(shards), "--labellers", "truth", "--truth", str(synth_dir / "truth.jsonl"),
           "--no-progress"]
    _run_two_while_locked(shards, [job, job], tmp_path)
    meta = fmt.load_dataset_json(shards)
    assert sorted(meta["labellers"]) == ["truth_audio", "truth_visual"]
    scores = read_scores(shards)
    assert sorted(scores) == sorted(all_keys(shard_dir))
    assert all(set(value) == {"truth_audio", "truth_visual"} for value in scores.values())
    assert not [p for p in shards.iterdir() if p.name.endswith(".tmp")]


def test_the_lock_of_a_killed_job_is_free(tmp_path):
    """kill -9 of a job holding the lock frees it (the kernel drops the flock): no stale lock."""
    code = ("import sys, time\nfrom deteclap.format import folder_lock\n"
            "with folder_lock(sys.argv[1], 'doomed job'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"held"
    assert "doomed job" in (tmp_path / fmt.LOCK_FILE).read_text()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with fmt.folder_lock(tmp_path, "next job"):
        assert "next job" in (tmp_path / fmt.LOCK_FILE).read_text()
    assert not (tmp_path / fmt.LOCK_FILE).exists()          # removed by its holder when done


# ----------------------------------------------------------------------------------------------
# 4. memory that does not grow with the source; segments that cannot be
HIRES = (3840, 2160)
HIRES_FRAMES = 40
MAX_RISE_MB = 400          # 10 kept 4K frames (12.4 MB each) and the resizes' images; all 40 held: ~580 MB


@pytest.fixture(scope="module")
def hires_clip(tmp_path_factory) -> Path:
    """A 2 s 3840x2160 clip (MPEG-4 part 2: fast to write), no audio."""
    import av
    import numpy as np

    path = tmp_path_factory.mktemp("hires") / "hires.mp4"
    width, height = HIRES
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=20)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        image = np.zeros((height, width, 3), np.uint8)
        for i in range(HIRES_FRAMES):
            image[:, :, 0] = i * 6
            image[: height // 2, : width // 2, 1] = 255 - i
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_the_writer_keeps_only_the_frames_it_stores(hires_clip, synth_dir, tmp_path):
    """decode_segment keeps the 10 frames stored of a 40-frame 4K segment, and encoding it raises the
    process's peak memory by less than MAX_RISE_MB (measured in a fresh process, after a warm-up clip)."""
    from deteclap.shard import EncodeSettings, decode_segment

    segment = decode_segment(hires_clip, 0.0, None, EncodeSettings(allow_silent=True))
    assert len(segment.frames) == 10 and segment.source_frames == HIRES_FRAMES
    assert segment.frame_indices == [i * HIRES_FRAMES // 10 for i in range(10)]
    code = ("import resource, sys\nfrom deteclap.shard import EncodeSettings, process_clip\n"
            "from deteclap.inputs import ClipInput\nsettings = EncodeSettings(allow_silent=True)\n"
            "process_clip(ClipInput(sys.argv[2], 'w', 'w', 'train'), settings, 0)\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "result = process_clip(ClipInput(sys.argv[1], 'k', 'k', 'train'), settings, 0)\n"
            "assert 'members' in result, result\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    warm = sorted(synth_dir.glob("*.mp4"))[0]
    done = subprocess.run([sys.executable, "-c", code, str(hires_clip), str(warm)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) < MAX_RISE_MB, done.stdout


@pytest.mark.parametrize("row", [{"end": "inf"}, {"end": 1e12}, {"end": "nan"}, {"end": float("nan")},
                                 {"start": -1}, {"start": "inf"}, {"start": 5, "end": 2}])
def test_segments_that_cannot_be_are_bad_manifest_rows(synth_dir, tmp_path, row):
    from deteclap.shard import EncodeSettings, ShardError, write_shards

    clip = sorted(synth_dir.glob("*.mp4"))[0]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"path": str(clip), **row}) + "\n")
    summary = write_shards(manifest, tmp_path / "out")
    assert summary["samples"] == 0 and summary["reasons"] == {"bad_manifest_row": 1}
    with pytest.raises(ShardError, match="--seconds"):
        write_shards(manifest, tmp_path / "out2", settings=EncodeSettings(seconds=float("nan")))


# ----------------------------------------------------------------------------------------------
# 6. folder mode: every container, and every file not taken named
CONTAINERS = {".m4v": ("ipod", "mpeg4", "aac"), ".ts": ("mpegts", "mpeg2video", "mp2"), ".flv": ("flv", "flv", "aac"),
              ".mpg": ("mpeg", "mpeg1video", "mp2"), ".mpeg": ("mpeg", "mpeg2video", "mp2"),
              ".3gp": ("3gp", "h263", "aac"), ".ogv": ("ogg", "libvpx", "flac"), ".wmv": ("asf", "wmv2", "wmav2")}
AUDIO_RATES = {"mp2": 32000, "wmav2": 44100}


def make_clip(path: Path, container: str, video_codec: str, audio_codec: str, seconds: float = 1.5) -> None:
    """A small clip (176x144: H.263's size, 25 fps: MPEG-1's rate) with a tone, in any container."""
    import av
    import numpy as np

    with av.open(str(path), "w", format=container) as out:
        video = out.add_stream(video_codec, rate=25)
        video.width, video.height, video.pix_fmt = 176, 144, "yuv420p"
        audio = out.add_stream(audio_codec, rate=AUDIO_RATES.get(audio_codec, 16000))
        audio.bit_rate = 64000
        image = np.zeros((144, 176, 3), np.uint8)
        for i in range(int(seconds * 25)):
            image[:] = i * 5
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(video.encode())
        resampler = av.AudioResampler(format=audio.codec_context.codec.audio_formats[0].name, layout="mono",
                                      rate=audio.codec_context.sample_rate)
        tone = (np.sin(np.arange(int(seconds * 16000)) * 0.17) * 8000).astype(np.int16)[None]
        frame = av.AudioFrame.from_ndarray(tone, format="s16", layout="mono")
        frame.sample_rate, frame.pts = 16000, 0
        for chunk in resampler.resample(frame) + resampler.resample(None):
            out.mux(audio.encode(chunk))
        out.mux(audio.encode())


def test_folder_mode_takes_every_container_and_names_what_it_ignores(tmp_path):
    """A folder with a clip in each of .m4v .ts .flv .mpg .mpeg .3gp .ogv .wmv, one without an
    extension, an .m4a, a text file and a FIFO named x.mp4: every clip is sharded, the writer does not
    block, and the summary names each file not taken with its reason."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    for ext, spec in CONTAINERS.items():
        make_clip(src / f"clip_{ext[1:]}{ext}", *spec)
    make_clip(src / "sub" / "no_extension", "mp4", "mpeg4", "aac")
    make_clip(src / "voice.m4a", "ipod", "mpeg4", "aac")
    (src / "notes.txt").write_text("not a video\n")
    os.mkfifo(src / "x.mp4")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "deteclap.shard", str(src), str(out), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    keys = sorted(json.loads(members["json"])["id"] for tar in sorted(out.glob("*.tar"))
                  for _, members in fmt.iter_tar_samples(tar))
    assert keys == sorted([f"clip_{ext[1:]}" for ext in CONTAINERS] + ["sub/no_extension"]), done.stdout
    assert "9 samples" in done.stdout and "0 inputs skipped" in done.stdout
    assert "ignored: 1 .m4a, 1 .txt, 1 not a regular file" in done.stdout, done.stdout
    for name in ("voice.m4a", "notes.txt", "x.mp4"):
        assert f"ignored {name}:" in done.stdout


def test_a_manifest_naming_a_fifo_does_not_block(synth_dir, tmp_path):
    from deteclap.shard import write_shards

    os.mkfifo(tmp_path / "pipe.mp4")
    manifest = tmp_path / "m.jsonl"
    clip = sorted(synth_dir.glob("*.mp4"))[0]
    manifest.write_text(json.dumps({"path": "pipe.mp4"}) + "\n" + json.dumps({"path": str(clip)}) + "\n")
    signal.alarm(120)                  # a writer blocked on the FIFO fails the test instead of hanging it
    try:
        summary = write_shards(manifest, tmp_path / "out")
    finally:
        signal.alarm(0)
    assert summary["samples"] == 1 and summary["reasons"] == {"unreadable": 1}
    row = json.loads((tmp_path / "out" / "failures.jsonl").read_text())
    assert row["source"] == "pipe.mp4" and "not a regular file" in row["detail"]
