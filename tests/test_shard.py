"""deteclap.shard on real files: synthetic clips plus deliberately broken inputs, resume after a
kill, --verify, --strict, DALI's reader on our index files.

Tolerances: VP9 at crf 32 on the noisy synthetic frames keeps the mean absolute error against the
source frame (resized the same way) under VIDEO_MAE_TOLERANCE grey levels; the audio must
correlate with the source's first channel resampled by scipy (an independent resampler) at
AUDIO_MIN_CORRELATION or better, with RMS error under AUDIO_RMS_TOLERANCE.
"""

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

import av
import numpy as np
import pytest
from scipy.signal import resample_poly

from deteclap.data.decode import decode_audio, decode_video_frames
from deteclap.format import read_tar_samples
from deteclap.shard import SEEK_MARGIN, EncodeSettings, frame_instants, main, verify_shards, write_shards
from deteclap.clip import _segment_video
from deteclap.shard.write import JOB_STATS_JSON, STATS_SUFFIX
from deteclap.synth import make_broken_files, write_mp4
from tests.conftest import REPO, needs_dali, needs_wds2idx

VIDEO_MAE_TOLERANCE = 8.0
AUDIO_MIN_CORRELATION = 0.99
AUDIO_RMS_TOLERANCE = 0.01
EXPECTED_REASON = {"truncated": "corrupt", "audio_only": "no_video", "video_only": "no_audio",
                   "empty": "empty_file", "text": "not_media"}


@pytest.fixture(scope="module")
def mixed_src(synth_dir, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A folder: the 8 synthetic clips plus 5 broken files; returns (folder, {broken name: kind})."""
    src = tmp_path_factory.mktemp("mixed")
    for path in synth_dir.glob("*.mp4"):
        shutil.copy(path, src / path.name)
    broken = make_broken_files(src, synth_dir / "synth_00000.mp4", seconds=1.5, size=(64, 48))
    return src, broken


@pytest.fixture(scope="module")
def mixed_out(mixed_src, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mixed_out")
    summary = write_shards(mixed_src[0], out, samples_per_shard=4)
    return out, summary


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    samples = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            for key, members in read_tar_samples(tar_path):
                samples[key] = {ext: tar.extractfile(info).read() for ext, info in members.items()}
    return samples


def _tree(out: Path) -> dict[str, bytes]:
    """The files of a shard folder that reruns must reproduce byte for byte (the stats files hold
    timings: left out)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.is_file() and not p.name.endswith(STATS_SUFFIX) and p.name != JOB_STATS_JSON}


def test_good_clips_arrive_and_bad_ones_are_reported(mixed_src, mixed_out, synth_dir):
    src, broken = mixed_src
    out, summary = mixed_out
    samples = _samples(out)
    assert set(samples) == {p.stem for p in synth_dir.glob("*.mp4")}
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert {f["source"]: f["reason"] for f in failures} == {name: EXPECTED_REASON[kind]
                                                             for name, kind in broken.items()}
    assert all(f["detail"] for f in failures)
    assert summary["failed"] == len(broken) and summary["samples"] == 8
    assert summary["reasons"] == {reason: 1 for reason in EXPECTED_REASON.values()}
    assert verify_shards(out).ok


def _cav_mae_frame(frame_rgb: np.ndarray) -> np.ndarray:
    """A source frame as CAV-MAE's extraction stores it (torchvision Resize(224, bicubic) + CenterCrop(224)
    on a PIL image) -> float32 [224, 224, 3]."""
    import PIL.Image
    import torchvision.transforms as T

    prepare = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224)])
    return np.asarray(prepare(PIL.Image.fromarray(frame_rgb)), np.float32)


def _check_instants(members: dict[str, bytes], source: np.ndarray, prepare) -> None:
    """The stored frames are `prepare`d source frames at CAV-MAE's instants (not their neighbours)."""
    stored = decode_video_frames(members["mp4"]).astype(np.float32)
    instants = frame_instants(len(source))
    assert json.loads(members["json"])["frame_indices"] == instants == [i * 30 // 10 for i in range(10)]
    errors = [np.abs(stored[i] - prepare(source[idx])).mean() for i, idx in enumerate(instants)]
    shifted = [np.abs(stored[i] - prepare(source[idx + 1])).mean() for i, idx in enumerate(instants)]
    assert max(errors) < VIDEO_MAE_TOLERANCE, errors
    assert np.mean(errors) < np.mean(shifted)       # the right instants, not their neighbours


def test_frames_are_the_cav_mae_instants(mixed_out, synth_dir):
    out, _ = mixed_out
    for key, members in _samples(out).items():
        meta = json.loads(members["json"])
        stored = decode_video_frames(members["mp4"])
        assert stored.shape == (10, 224, 224, 3) and (meta["width"], meta["height"]) == (224, 224)
        _check_instants(members, decode_video_frames((synth_dir / f"{key}.mp4").read_bytes()), _cav_mae_frame)
        with av.open(io.BytesIO(members["mp4"])) as container:
            packets = [p for p in container.demux(container.streams.video[0]) if p.size]
            assert container.streams.video[0].codec_context.name == "vp9"
            assert len(packets) == 10 and all(p.is_keyframe for p in packets)
        table = np.frombuffer(members["frames"], "<u4")          # KEY.frames: w, h, (offset, size) x 10
        assert table[:2].tolist() == [224, 224] and len(table) == 22
        assert [bytes(p) for p in packets] == [members["mp4"][o:o + n] for o, n in table[2:].reshape(-1, 2)]


def test_no_crop_keeps_the_whole_frame(synth_dir, tmp_path):
    """--no-crop --short-side 256: the 64x48 source at 342x256 (short side 256, long side even)."""
    out = tmp_path / "out"
    assert main([str(synth_dir), str(out), "--no-crop", "--short-side", "256", "--quiet"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["encoding"]["crop"] is False and meta["format_version"] == 2
    key, members = next(iter(_samples(out).items()))
    assert np.frombuffer(members["frames"], "<u4")[:2].tolist() == [342, 256]

    def resized(frame_rgb: np.ndarray) -> np.ndarray:
        frame = av.VideoFrame.from_ndarray(frame_rgb, format="rgb24")
        return frame.reformat(342, 256, interpolation="BICUBIC").to_ndarray(format="rgb24").astype(np.float32)

    _check_instants(members, decode_video_frames((synth_dir / f"{key}.mp4").read_bytes()), resized)
    assert verify_shards(out).ok


def test_audio_is_the_first_channel_at_16k(mixed_out, synth_dir):
    out, _ = mixed_out
    for key, members in _samples(out).items():
        meta = json.loads(members["json"])
        wave, rate = decode_audio(members["wav"])
        assert rate == 16000 and len(wave) == meta["num_samples"] == 48000
        with av.open(str(synth_dir / f"{key}.mp4")) as container:
            source = np.concatenate([f.to_ndarray() for f in container.decode(audio=0)], axis=1)
        reference = [resample_poly(channel.astype(np.float64), 320, 441)[:48000] for channel in source]
        middle = slice(1600, 46400)             # away from the resamplers' edge transients
        first, second = reference[0][middle], reference[1][middle]
        got = wave[middle].astype(np.float64)
        assert np.sqrt(np.mean((got - first) ** 2)) < AUDIO_RMS_TOLERANCE
        if np.std(first) > 0.02:
            assert np.corrcoef(got, first)[0, 1] > AUDIO_MIN_CORRELATION
        assert np.abs(got - first).mean() < np.abs(got - second).mean()


def test_dataset_json_and_class_vectors(shard_dir, synth_dir):
    meta = json.loads((shard_dir / "dataset.json").read_text())
    truth = {json.loads(line)["id"]: json.loads(line) for line in (synth_dir / "truth.jsonl").read_text().splitlines()}
    vocabulary = (REPO / "deteclap/assets/oiv7_classes.txt").read_text().split("\n")
    assert meta["label_vocabulary"] == [v for v in vocabulary if v]
    assert meta["classes"] == sorted({t["class"] for t in truth.values()})
    assert meta["labellers"] == [] and meta["format_version"] == 2
    assert [s["samples"] for s in meta["shards"]] == [3, 3, 2]
    assert [s["tar"] for s in meta["shards"]] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    for key, members in _samples(shard_dir).items():
        cls = np.frombuffer(members["cls"], np.uint8)
        assert [meta["classes"][i] for i in np.flatnonzero(cls)] == [truth[key]["class"]]
        assert json.loads(members["json"])["split"] == "train"


@needs_wds2idx
def test_index_is_what_wds2idx_writes(shard_dir, tmp_path):
    import wds2idx

    for shard in json.loads((shard_dir / "dataset.json").read_text())["shards"]:
        with wds2idx.IndexCreator(str(shard_dir / shard["tar"]), str(tmp_path / "x.idx"), verbose=False) as ic:
            ic.create_index()
        assert (tmp_path / "x.idx").read_text() == (shard_dir / shard["index"]).read_text()


@needs_dali
def test_dali_reads_the_shards_with_index_on_cpu(shard_dir):
    from nvidia.dali import fn, pipeline_def, types

    meta = json.loads((shard_dir / "dataset.json").read_text())
    tars = [str(shard_dir / s["tar"]) for s in meta["shards"]]
    indexes = [str(shard_dir / s["index"]) for s in meta["shards"]]

    @pipeline_def(batch_size=4, num_threads=1, device_id=None)
    def pipe():
        video, audio, cls = fn.readers.webdataset(
            paths=tars, index_paths=indexes, ext=["mp4", "wav", "cls"],
            missing_component_behavior="error", dtypes=[types.UINT8] * 3)
        frames = fn.decoders.video(video, device="cpu")
        wave, _ = fn.decoders.audio(audio, dtype=types.FLOAT)
        return frames, wave, cls

    pipeline = pipe()
    pipeline.build()
    frames, wave, cls = pipeline.run()
    assert all(frames.at(i).shape == (10, 224, 224, 3) for i in range(4))
    assert all(np.asarray(wave.at(i)).size == 48000 for i in range(4))    # [48000] or [48000, 1]
    assert all(cls.at(i).sum() == 1 for i in range(4))


def test_resume_after_losing_shards_is_byte_identical(shard_dir, synth_dir, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(shard_dir, out)
    for name in ("train-000001.tar", "train-000002.tar", "train-000002.idx"):
        (out / name).unlink()
    (out / ".train-000001.tar.tmp").write_bytes(b"half a tar")
    summary = write_shards(synth_dir / "truth.jsonl", out, split="train", samples_per_shard=3)
    assert summary["skipped_shards"] == 1 and summary["written_now"] == 5
    assert _tree(out) == _tree(shard_dir)
    assert not list(out.glob(".*"))


def test_killed_run_restarts_to_identical_output(synth_dir, shard_dir, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "deteclap.shard", str(synth_dir / "truth.jsonl"), str(out), "--quiet",
           "--split", "train", "--samples-per-shard", "3"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (out / "train-000000.tar").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # killed mid-run: by the signal, after the first shard and before the last
    assert proc.returncode == -signal.SIGKILL
    assert (out / "train-000000.tar").exists() and not (out / "train-000002.tar").exists()
    assert _tree(out) != _tree(shard_dir)
    assert main([str(synth_dir / "truth.jsonl"), str(out), "--quiet", "--split", "train",
                 "--samples-per-shard", "3"]) == 0
    assert _tree(out) == _tree(shard_dir)


def test_verify_detects_a_corrupted_member(shard_dir, tmp_path):
    out = tmp_path / "bad"
    shutil.copytree(shard_dir, out)
    index_line = (out / "train-000001.idx").read_text().splitlines()[2].split()
    fields = {index_line[i]: (int(index_line[i + 1]), int(index_line[i + 2])) for i in range(0, len(index_line), 4)}
    offset, size = fields["mp4"]
    with open(out / "train-000001.tar", "r+b") as f:
        f.seek(offset + size // 4)
        f.write(b"\xff" * (size // 2))
    first = (out / "train-000000.idx").read_text().splitlines()[1].split()
    table_offset = int(first[first.index("frames") + 1])
    with open(out / "train-000000.tar", "r+b") as f:      # frame 0's offset in KEY.frames, moved by one
        f.seek(table_offset + 8)
        value = int.from_bytes(f.read(4), "little")
        f.seek(table_offset + 8)
        f.write((value + 1).to_bytes(4, "little"))
    report = verify_shards(out)
    assert not report.ok and report.samples == 8
    assert any("train-000001.tar" in e and ".mp4" in e for e in report.errors), report.errors
    assert any("train-000000.tar" in e and ".frames: does not match" in e for e in report.errors), report.errors
    assert main(["--verify", str(out), "--quiet"]) == 1
    assert main(["--verify", str(shard_dir), "--quiet"]) == 0


def test_strict_exit_code_and_allow_silent(mixed_src, synth_dir, tmp_path):
    src, _ = mixed_src
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"file": str(src / "broken_video_only.mp4"), "id": "v/only", "class": "Dog"})
                        + "\n" + json.dumps({"file": str(synth_dir / "synth_00001.mp4")}) + "\n")
    assert main([str(manifest), str(tmp_path / "a"), "--quiet", "--strict"]) == 1
    assert main([str(manifest), str(tmp_path / "b"), "--quiet", "--strict", "--allow-silent"]) == 0
    members = _samples(tmp_path / "b")["v_only"]
    wave, _ = decode_audio(members["wav"])
    assert json.loads(members["json"])["silent"] and wave.size == 24000 and not wave.any()
    assert main([str(manifest), str(tmp_path / "c"), "--quiet", "--min-seconds", "5", "--allow-silent"]) == 0
    reasons = [json.loads(x)["reason"] for x in (tmp_path / "c" / "failures.jsonl").read_text().splitlines()]
    assert reasons == ["too_short", "too_short"]


def test_vggsound_csv_layout(synth_dir, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(synth_dir / "synth_00002.mp4", videos / "abcdefghijk_000001.mp4")   # already cut
    shutil.copy(synth_dir / "synth_00003.mp4", videos / "ABC-def_123.mp4")          # whole video
    (tmp_path / "vggsound.csv").write_text("abcdefghijk,1,dog barking,train\nABC-def_123,1,\"car, engine\",test\n"
                                           "missing0000,30,cat purring,test\n")
    summary = write_shards(tmp_path / "vggsound.csv", tmp_path / "out", video_dir=videos,
                           settings=EncodeSettings(min_seconds=1.0))
    assert summary["reasons"] == {"missing_file": 1}
    samples = _samples(tmp_path / "out")
    assert set(samples) == {"abcdefghijk_000001", "ABC-def_123_000001"}
    cut, whole = (json.loads(samples[k]["json"]) for k in ("abcdefghijk_000001", "ABC-def_123_000001"))
    assert (cut["start"], cut["split"], cut["classes"]) == (0.0, "train", ["dog barking"])
    assert (whole["start"], whole["split"], whole["classes"]) == (1.0, "test", ["car, engine"])
    assert abs(whole["duration"] - 2.0) < 1e-6 and abs(cut["duration"] - 3.0) < 1e-6
    assert sorted(json.loads((tmp_path / "out" / "dataset.json").read_text())["classes"]) == \
        ["car, engine", "dog barking"]


def _manifest(synth_dir: Path, rows: slice, path: Path) -> Path:
    """A manifest of some truth.jsonl rows, with absolute paths and one class for all (so that the
    class vocabulary stays the same whatever rows are taken)."""
    lines = (Path(synth_dir) / "truth.jsonl").read_text().splitlines()[rows]
    out = []
    for line in lines:
        row = json.loads(line)
        row["file"], row["class"] = str(Path(synth_dir) / row["file"]), "synthetic"
        out.append(json.dumps(row))
    path.write_text("\n".join(out) + "\n")
    return path


def test_resharding_keeps_labelling_state_and_refuses_changed_shards(synth_dir, tmp_path):
    from deteclap import label
    from deteclap.labels import read_scores
    from deteclap.shard import ShardError

    out, truth = tmp_path / "out", str(Path(synth_dir) / "truth.jsonl")
    write_shards(_manifest(synth_dir, slice(0, 6), tmp_path / "a.jsonl"), out, samples_per_shard=3, progress=False)
    assert label.main([str(out), "--labellers", "truth", "--truth", truth, "--no-progress"]) == 0
    labelled = json.loads((out / "dataset.json").read_text())
    assert labelled["labellers"] and labelled["labelled_shards"]
    # two more clips: the two finished shards are kept, a third is written without label scores
    write_shards(_manifest(synth_dir, slice(0, 8), tmp_path / "b.jsonl"), out, samples_per_shard=3, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labelled_shards"] == labelled["labelled_shards"]
    assert meta["labellers"] == [] and len(meta["shards"]) == 3
    assert label.main([str(out), "--labellers", "truth", "--truth", truth, "--no-progress"]) == 0
    assert json.loads((out / "dataset.json").read_text())["labellers"] == labelled["labellers"]
    assert len(read_scores(out)) == 8
    # a different input list would put other clips under the existing shard names: refused
    with pytest.raises(ShardError, match="other clips than the inputs now planned"):
        write_shards(_manifest(synth_dir, slice(2, 8), tmp_path / "c.jsonl"), out, samples_per_shard=3, progress=False)


def _failure_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]


def test_sharding_a_second_split_keeps_the_first_splits_failures(synth_dir, tmp_path):
    """Adding split val to OUT keeps train's failures.jsonl rows, so train resumes afterwards."""
    (tmp_path / "broken.mp4").write_text("not a video\n" * 10)
    train = _manifest(synth_dir, slice(0, 2), tmp_path / "train.jsonl")
    with open(train, "a") as f:
        f.write(json.dumps({"file": str(tmp_path / "broken.mp4"), "class": "synthetic"}) + "\n")
        f.write(json.dumps({"file": str(tmp_path / "missing.mp4"), "class": "synthetic"}) + "\n")
    val = _manifest(synth_dir, slice(2, 3), tmp_path / "val.jsonl")
    out = tmp_path / "out"
    write_shards(train, out, samples_per_shard=3)
    train_failures = _failure_rows(out)
    assert sorted(r["reason"] for r in train_failures) == ["missing_file", "not_media"]
    assert write_shards(val, out, split="val", samples_per_shard=3)["failed"] == 0
    assert _failure_rows(out) == train_failures
    summary = write_shards(train, out, samples_per_shard=3)
    assert summary["skipped_shards"] == 1 and summary["written_now"] == 0
    assert _failure_rows(out) == train_failures
    assert verify_shards(out).ok


def test_a_regenerated_shard_is_labelled_again(labelled_shards, synth_dir, tmp_path):
    """A labelled shard deleted and written again leaves `labelled_shards`, so labelling redoes it."""
    from deteclap import label

    out = tmp_path / "out"
    shutil.copytree(labelled_shards, out)
    labellers = json.loads((out / "dataset.json").read_text())["labellers"]
    (out / "train-000001.tar").unlink()
    summary = write_shards(synth_dir / "truth.jsonl", out, split="train", samples_per_shard=3)
    assert summary["written_now"] == 3
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labellers"] == []
    assert all("train-000001.tar" not in tars and "train-000000.tar" in tars
               for tars in meta["labelled_shards"].values())
    truth = str(synth_dir / "truth.jsonl")
    assert label.main([str(out), "--labellers", "truth", "--truth", truth, "--no-progress"]) == 0
    assert json.loads((out / "dataset.json").read_text())["labellers"] == labellers
    assert verify_shards(out).ok


def _shift_timeline(src: Path, dst: Path, seconds: float) -> None:
    """Remux `src` with every timestamp `seconds` later (as a stream copy or a capture has it).

    The AAC priming packet (pts < 0, hidden by the source's edit list) is dropped: remuxed, it
    would put 1024 audible samples before the first video frame."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as target:
        streams = {s.index: target.add_stream_from_template(s) for s in source.streams}
        for packet in source.demux():
            if packet.dts is None or packet.pts < 0:
                continue
            shift = int(seconds / packet.time_base)
            packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
            packet.stream = streams[packet.stream.index]
            target.mux(packet)


def test_the_container_start_time_is_the_timeline_origin(synth_dir, tmp_path):
    """A file whose timeline starts at 1.5 s gives the frames and audio of the same file starting at 0
    (2 s segments: counted on the absolute timeline, [0, 2) would hold 0.5 s, `truncated`)."""
    _shift_timeline(synth_dir / "synth_00000.mp4", tmp_path / "shifted.mp4", 1.5)
    with av.open(str(tmp_path / "shifted.mp4")) as container:
        assert container.start_time / av.time_base > 1.4
    rows = [{"file": str(synth_dir / "synth_00000.mp4"), "id": "zero"},
            {"file": str(tmp_path / "shifted.mp4"), "id": "shifted"},
            {"file": str(synth_dir / "synth_00000.mp4"), "id": "zero_late", "start": 1.0},
            {"file": str(tmp_path / "shifted.mp4"), "id": "shifted_late", "start": 1.0}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_shards(tmp_path / "m.jsonl", tmp_path / "out", samples_per_shard=4,
                           settings=EncodeSettings(seconds=2.0))
    assert summary["failed"] == 0, _failure_rows(tmp_path / "out")
    samples = _samples(tmp_path / "out")
    for name in ("", "_late"):
        zero, shifted = samples[f"zero{name}"], samples[f"shifted{name}"]
        assert json.loads(shifted["json"])["duration"] == json.loads(zero["json"])["duration"] == 2.0
        assert shifted["mp4"] == zero["mp4"]
        wave, shifted_wave = decode_audio(zero["wav"])[0], decode_audio(shifted["wav"])[0]
        assert len(wave) == len(shifted_wave) == 2 * 16000
        middle = slice(1600, len(wave) - 1600)
        assert np.corrcoef(wave[middle], shifted_wave[middle])[0, 1] > AUDIO_MIN_CORRELATION


def test_duplicate_labels_are_stored_once(synth_dir, tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"file": str(synth_dir / "synth_00000.mp4"),
                                                  "id": "dog", "labels": "Dog;Bark;Dog"}) + "\n")
    write_shards(tmp_path / "m.jsonl", tmp_path / "out")
    assert json.loads(_samples(tmp_path / "out")["dog"]["json"])["classes"] == ["Dog", "Bark"]
    assert verify_shards(tmp_path / "out").ok


def test_csv_with_a_byte_order_mark_and_spaces(synth_dir, tmp_path):
    """A `path,label` CSV saved by Excel (UTF-8 BOM, a space after the comma) reads as written."""
    (tmp_path / "m.csv").write_text(f"path,label\n{synth_dir / 'synth_00000.mp4'}, Dog\n", encoding="utf-8-sig")
    summary = write_shards(tmp_path / "m.csv", tmp_path / "out")
    assert summary["samples"] == 1 and summary["failed"] == 0
    assert json.loads((tmp_path / "out" / "dataset.json").read_text())["classes"] == ["Dog"]


def test_end_not_after_start_is_a_bad_manifest_row(synth_dir, tmp_path):
    clip = str(synth_dir / "synth_00000.mp4")
    rows = [{"file": clip, "id": "backwards", "start": 2.0, "end": 1.0},
            {"file": clip, "id": "empty", "start": 1.0, "end": 1.0}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    write_shards(tmp_path / "m.jsonl", tmp_path / "out")
    failures = _failure_rows(tmp_path / "out")
    assert [(r["reason"], r["shard"]) for r in failures] == [("bad_manifest_row", None)] * 2


def test_resume_reuses_the_recorded_samples_per_shard(synth_dir, tmp_path, capsys):
    manifest, out = _manifest(synth_dir, slice(0, 2), tmp_path / "m.jsonl"), tmp_path / "out"
    assert main([str(manifest), str(out), "--quiet", "--samples-per-shard", "1"]) == 0
    assert json.loads((out / "dataset.json").read_text())["samples_per_shard"] == 1
    written = _tree(out)
    assert main([str(manifest), str(out), "--quiet"]) == 0
    assert _tree(out) == written
    assert main([str(manifest), str(out), "--quiet", "--samples-per-shard", "2"]) == 2
    error = capsys.readouterr().err
    assert "--samples-per-shard 1" in error and "--samples-per-shard 2" in error


def test_audio_format_flac_and_a_resume_with_another_format(synth_dir, tmp_path, capsys):
    """--audio-format flac stores KEY.flac holding the same 16-bit samples as the default KEY.wav (a
    canonical 44-byte-header WAV); resuming a folder with another format is refused naming the
    setting, and a folder written before `audio_format` existed (FLAC) resumes with `flac`."""
    manifest = _manifest(synth_dir, slice(0, 2), tmp_path / "m.jsonl")
    pcm, flac = tmp_path / "pcm", tmp_path / "flac"
    assert main([str(manifest), str(pcm), "--quiet"]) == 0
    assert main([str(manifest), str(flac), "--quiet", "--audio-format", "flac"]) == 0
    for key, members in _samples(pcm).items():
        other = _samples(flac)[key]
        assert set(members) - set(other) == {"wav"} and set(other) - set(members) == {"flac"}
        num_samples = json.loads(members["json"])["num_samples"]
        assert members["wav"][:4] == b"RIFF" and len(members["wav"]) == 44 + 2 * num_samples
        assert np.array_equal(decode_audio(members["wav"])[0], decode_audio(other["flac"])[0])
        assert members["mp4"] == other["mp4"]
    assert json.loads((flac / "dataset.json").read_text())["encoding"]["audio_format"] == "flac"
    assert verify_shards(pcm).ok and verify_shards(flac).ok
    assert main([str(manifest), str(flac), "--quiet"]) == 2
    assert "audio_format 'flac' there, 'pcm' now" in capsys.readouterr().err
    meta = json.loads((flac / "dataset.json").read_text())          # as written before audio_format existed
    del meta["encoding"]["audio_format"]
    (flac / "dataset.json").write_text(json.dumps(meta))
    assert main([str(manifest), str(flac), "--quiet", "--audio-format", "flac"]) == 0
    assert verify_shards(flac).ok


LONG_SECONDS = 45.0          # a whole video: segments far from its start are reached by seeking
LONG_RATE = 22050


@pytest.fixture(scope="module")
def long_source(tmp_path_factory) -> Path:
    """A 45 s mp4 (64x48, 10 fps H.264 with key frames 25 s apart; stereo AAC at 22050 Hz)."""
    fps, (width, height) = 10, (64, 48)
    rng = np.random.default_rng(7)
    n = int(LONG_SECONDS * fps)
    yy, xx = np.mgrid[0:height, 0:width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        base = (xx * 3 + yy + 2 * i) % 256
        frames[i] = np.stack([base, (base + 85) % 256, (255 - base)], -1) + rng.integers(0, 6, (height, width, 3))
    t = np.arange(int(LONG_SECONDS * LONG_RATE)) / LONG_RATE
    audio = rng.normal(0, 0.03, (2, len(t))) + 0.3 * np.sin(2 * np.pi * 440 * t * (1 + 0.1 * np.sin(t)))
    path = tmp_path_factory.mktemp("long") / "whole.mp4"
    write_mp4(path, frames, audio.astype(np.float32), fps, LONG_RATE)
    return path


def _shard_segments(manifest: Path, out: Path, monkeypatch, **constants) -> dict[str, dict[str, bytes]]:
    with monkeypatch.context() as patch:
        for name, value in constants.items():
            patch.setattr(f"deteclap.clip.{name}", value)
        summary = write_shards(manifest, out, samples_per_shard=8, settings=EncodeSettings(min_seconds=0.5))
    assert summary["failed"] == 0, _failure_rows(out)
    return _samples(out)


def test_seeking_stores_the_samples_of_a_decode_from_the_start(long_source, tmp_path, monkeypatch):
    """Segments of a whole video: the members written when the video is sought to a key frame before
    `start` are byte-identical to those of decoding everything from the file's start (seeking off),
    for starts far from the start, at it, within its first second (sought there too with smaller
    constants), and a segment running past the file's end."""
    rows = [{"file": str(long_source), "id": name, "start": start, **({"end": end} if end else {})}
            for name, start, end in [("zero", 0.0, None), ("first_second", 0.4, None), ("late", 30.0, None),
                                     ("short", 7.25, 9.0), ("past_the_end", 38.5, None)]]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    whole = _shard_segments(manifest, tmp_path / "whole", monkeypatch, SEEK_MIN_START=float("inf"))
    sought = _shard_segments(manifest, tmp_path / "sought", monkeypatch)
    early = _shard_segments(manifest, tmp_path / "early", monkeypatch, SEEK_MIN_START=0.3, SEEK_MARGIN=0.2)
    assert set(whole) == {row["id"] for row in rows}
    assert json.loads(whole["past_the_end"]["json"])["num_samples"] == 6.5 * 16000
    for key, members in whole.items():
        assert sought[key] == members, key
        assert early[key] == members, key

    # the late segment really was decoded from the key frame at 25 s, not from 0 s
    frames, count, first = _segment_video(long_source, 0.0, 30.0, 40.0)
    assert 0 < first <= 30.0 - SEEK_MARGIN and count == 100 and len(frames) == 10
