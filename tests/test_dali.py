"""DALI pipelines on the CPU (device_id=None, VP9 decode included) against the reference loader:
same keys at the same batch positions, frames within tolerance, identical fbank / labels; sharding
across readers. Bad samples are tested for both loaders in tests/test_loader.py."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import HAVE_DALI
from tests.test_loader import all_keys, corrupt, keep, make_cfg, rewrite_shards

if not HAVE_DALI:
    pytest.skip("DALI (nvidia-dali) is not installed", allow_module_level=True)

from dali_pipes.iterator import DaliLoader, build_dali_loader, parse_bad_member  # noqa: E402
from deteclap.data import build  # noqa: E402
from deteclap.data.common import DataError  # noqa: E402
from deteclap.data.loader import build_loader  # noqa: E402
from deteclap.format import index_entries  # noqa: E402

# Frames: DALI's cubic resize (antialiased) and its YUV->RGB differ from PIL bicubic + PyAV by a
# few grey levels; in normalised units (1 / (0.225 * 255) per level) we allow mean 0.05 and 0.35 for
# all but the largest 0.1 % of pixel differences, those up to 0.6: without a resize to smooth them,
# the decoders' chroma upsampling differs at sharp colour edges (0.39 at single pixels of frame 0).
FRAME_MEAN_TOL = 0.05
FRAME_MAX_TOL = 0.35      # the 99.9th percentile
FRAME_WORST_TOL = 0.6
FBANK_TOL = 1e-3


def assert_frames_close(ref: torch.Tensor, dali: torch.Tensor, where: object = "") -> None:
    """Frames [B, 3, H, W] of the two loaders within the tolerances above."""
    diff = (ref - dali.cpu()).abs()
    top = float(diff.flatten().quantile(0.999))
    assert dali.shape == ref.shape, (where, dali.shape, ref.shape)
    assert diff.mean() <= FRAME_MEAN_TOL and top <= FRAME_MAX_TOL and diff.max() <= FRAME_WORST_TOL, \
        (where, float(diff.mean()), top, float(diff.max()))


@pytest.mark.parametrize("audio", ["wav", "flac"])
def test_eval_frame_and_fbank_match_reference(request: pytest.FixtureRequest, tmp_path: Path, audio: str) -> None:
    shard_dir = request.getfixturevalue("shard_dir" if audio == "wav" else "flac_shard_dir")
    shards = rewrite_shards(shard_dir, tmp_path / "s", keep, add_scores=True)
    cfg = make_cfg(shards, variant="or")
    ref = list(build_loader(cfg, train=False))
    dali = list(build_dali_loader(cfg, train=False, device="cpu"))
    assert [b["keys"] for b in dali] == [b["keys"] for b in ref]      # same key, same position
    for a, b in zip(ref, dali):
        assert b["frames"].dtype == torch.float32
        assert_frames_close(a["frames"], b["frames"])
        assert (a["fbank"] - b["fbank"]).abs().max() <= FBANK_TOL
        assert torch.equal(a["classes"], b["classes"])
        for head in ("a2l", "v2l"):
            assert torch.equal(a["targets"][head], b["targets"][head])
    if audio == "flac":
        return                   # (the rest reads no audio-specific path)
    # evaluation really uses frame eval_frame: another frame gives other pixels
    cfg.data.eval_frame = 0
    other = next(iter(build_dali_loader(cfg, train=False, device="cpu")))
    assert (other["frames"] - dali[0]["frames"]).abs().mean() > FRAME_MEAN_TOL


def drop_frame_tables(key: str, ext: str, data: bytes) -> bytes | None:
    return None if ext == "frames" else data


@pytest.mark.parametrize("tables", [True, False], ids=["cut-one-frame", "no-table-decode-from-0"])
def test_every_instant_matches_reference(shard_dir: Path, tmp_path: Path, tables: bool) -> None:
    """With KEY.frames DALI decodes the sampled frame alone (cut out of the mp4); without it (format
    version 1 shards) from frame 0. Both give the reference loader's frame at every instant."""
    shards = rewrite_shards(shard_dir, tmp_path / "s", keep if tables else drop_frame_tables)
    if not tables:                        # as an older deteclap wrote them
        meta = json.loads((shards / "dataset.json").read_text())
        (shards / "dataset.json").write_text(json.dumps({**meta, "format_version": 1}))
    cfg = make_cfg(shards, batch=4)
    assert ("frames" in build_dali_loader(cfg, train=False, device="cpu").exts) == tables
    for frame in range(10):
        cfg.data.eval_frame = frame
        ref, dali = list(build_loader(cfg, train=False)), list(build_dali_loader(cfg, train=False, device="cpu"))
        assert [b["keys"] for b in dali] == [b["keys"] for b in ref]
        for a, b in zip(ref, dali):
            assert_frames_close(a["frames"], b["frames"], frame)


def test_whole_frame_shards_are_resized_like_the_reference(synth_dir: Path, tmp_path: Path) -> None:
    """Shards written with --no-crop (whole 342x256 frames): DALI resizes (cubic, antialiased) and crops
    in the pipeline, the reference loader with PIL; same keys, frames within tolerance."""
    from deteclap.shard import EncodeSettings, write_shards

    shards = tmp_path / "whole"
    write_shards(synth_dir / "truth.jsonl", shards, split="train", samples_per_shard=4,
                 settings=EncodeSettings(crop=False, short_side=256))
    cfg = make_cfg(shards, batch=4)
    loader = build_dali_loader(cfg, train=False, device="cpu")
    assert loader.resize                                   # the dataset.json encoding says whole frames
    ref, dali = list(build_loader(cfg, train=False)), list(loader)
    assert [b["keys"] for b in dali] == [b["keys"] for b in ref]
    for a, b in zip(ref, dali):
        assert b["frames"].shape == (len(b["keys"]), 3, 224, 224)
        assert_frames_close(a["frames"], b["frames"])


def test_each_sample_once_across_readers(shard_dir: Path) -> None:
    cfg = make_cfg(shard_dir, batch=2)
    keys = []
    for rank in range(3):
        keys += [k for b in build_dali_loader(cfg, train=False, rank=rank, world_size=3, device="cpu")
                 for k in b["keys"]]
    assert sorted(keys) == sorted(all_keys(shard_dir))
    train = [build_dali_loader(cfg, train=True, rank=r, world_size=2, epoch=0, device="cpu") for r in range(2)]
    batches = [list(loader) for loader in train]
    assert len(batches[0]) == len(batches[1]) == len(train[0]) == 2  # 8 samples, 4 per rank, batch 2
    per_rank = [[k for b in bs for k in b["keys"]] for bs in batches]
    assert sorted(per_rank[0] + per_rank[1]) == sorted(all_keys(shard_dir))


def test_train_batches(shard_dir: Path) -> None:
    cfg = make_cfg(shard_dir, batch=3)
    cfg.data.frame_dtype = "float16"
    loader = build_dali_loader(cfg, train=True, epoch=2, device="cpu")
    batches = list(loader)
    assert len(batches) == len(loader) == 2                          # 8 samples: partial batch dropped
    assert all(b["frames"].dtype == torch.float16 and b["frames"].shape == (3, 3, 224, 224) for b in batches)
    assert batches[0]["targets"] == {}
    keys = [k for b in batches for k in b["keys"]]
    assert len(set(keys)) == 6
    resumed = build_dali_loader(cfg, train=True, epoch=2, start_batch=1, device="cpu")
    assert [b["keys"] for b in resumed] == [b["keys"] for b in batches[1:]]
    assert resumed.state_dict() == {"epoch": 2, "batches_consumed": 2}


@pytest.mark.parametrize("ext,reason", [("frames", "corrupt_mp4"), ("mp4", "corrupt_mp4")])
def test_bad_frame_table_or_truncated_mp4_at_frame_0(shard_dir: Path, tmp_path: Path, ext: str, reason: str) -> None:
    """DALI cuts frames out with KEY.frames: a damaged table is caught from the index, and a truncated
    mp4 whose frame 0 is still intact is refused (all frames must lie inside it, as the reference
    loader's full parse requires), whichever frame is drawn."""
    bad_key = all_keys(shard_dir)[4]
    shards = rewrite_shards(shard_dir, tmp_path / "bad", corrupt(bad_key, ext))
    cfg = make_cfg(shards)
    cfg.data.eval_frame = 0
    with pytest.raises(DataError) as raised:
        list(build_dali_loader(cfg, train=False, device="cpu"))
    assert "train-000001.tar" in str(raised.value) and bad_key in str(raised.value) and reason in str(raised.value)
    cfg.data.on_error = "skip"
    loader = build_dali_loader(cfg, train=False, device="cpu")
    assert [k for b in loader for k in b["keys"]] == [k for k in all_keys(shard_dir) if k != bad_key]
    assert loader.skipped == {reason: 1}


FLAC_DAMAGE = {"empty": lambda data: b"", "zeroed": lambda data: bytes(len(data)),
               "wrong-magic": lambda data: b"xxxx" + data[4:]}


def assert_both_loaders_refuse(shard_dir: Path, tmp_path: Path, ext: str, damage, reason: str) -> None:
    """One sample's `ext` member damaged by `damage(bytes)`: with on_error=skip both loaders deliver the
    other samples in the same order and count it as `reason`; with raise both name shard, key and reason."""
    bad_key = all_keys(shard_dir)[4]

    def edit(key: str, member: str, data: bytes) -> bytes:
        return damage(data) if (key, member) == (bad_key, ext) else data

    cfg = make_cfg(rewrite_shards(shard_dir, tmp_path / "bad", edit))
    cfg.data.on_error = "skip"
    ref, dali = build_loader(cfg, train=False), build_dali_loader(cfg, train=False, device="cpu")
    ref_keys = [k for b in ref for k in b["keys"]]
    assert ref_keys == [k for k in all_keys(shard_dir) if k != bad_key]
    assert [k for b in dali for k in b["keys"]] == ref_keys
    assert dali.skipped == ref.skipped == {reason: 1}
    cfg.data.on_error = "raise"
    for make in (build_loader, lambda c, **kw: build_dali_loader(c, device="cpu", **kw)):
        with pytest.raises(DataError) as raised:
            list(make(cfg, train=False))
        assert f"train-000001.tar: sample {bad_key}: {reason}" in str(raised.value)


@pytest.mark.parametrize("damage", list(FLAC_DAMAGE))
def test_bad_flac_header_is_found(flac_shard_dir: Path, tmp_path: Path, damage: str) -> None:
    """DALI's audio decoder refuses an empty, zeroed or non-FLAC KEY.flac naming no sample ("Format not
    recognised"): the loader finds it by its header, skips and counts it as the reference loader does,
    or (data.on_error=raise) raises a DataError naming shard and key."""
    assert_both_loaders_refuse(flac_shard_dir, tmp_path, "flac", FLAC_DAMAGE[damage], "corrupt_flac")


def _wav_field(data: bytes, offset: int, value: int, size: int = 2) -> bytes:
    return data[:offset] + value.to_bytes(size, "little") + data[offset + size:]


WAV_DAMAGE = {"empty": lambda data: b"", "header only": lambda data: _wav_field(data[:44], 40, 0, 4),
              "short": lambda data: data[:30],
              "zeroed": lambda data: bytes(len(data)), "odd byte cut": lambda data: data[:-1],
              "stereo": lambda data: _wav_field(data, 22, 2), "float": lambda data: _wav_field(data, 20, 3),
              "extra chunk": lambda data: data[:36] + b"LIST" + (4).to_bytes(4, "little") + b"abcd" + data[36:]}


@pytest.mark.parametrize("damage", list(WAV_DAMAGE))
def test_bad_wav_is_found_by_both_loaders(shard_dir: Path, tmp_path: Path, damage: str) -> None:
    """DALI reads KEY.wav without a decoder, so nothing fails inside the pipeline: a member that is not
    the format's canonical 16-bit mono PCM WAV (empty, cut, zeroed, another layout, a chunk before
    the data) is found from its header after the pipeline and skipped as the reference loader skips
    it (`corrupt_wav`; a header-only member is `bad_audio`: no fbank window), or named with shard and
    key (on_error=raise). Never read as sound."""
    reason = "bad_audio" if damage == "header only" else "corrupt_wav"
    assert_both_loaders_refuse(shard_dir, tmp_path, "wav", WAV_DAMAGE[damage], reason)


def test_wav_and_flac_shards_give_the_same_batches(shard_dir: Path, flac_shard_dir: Path) -> None:
    """The same clips written with --audio-format pcm and flac: both loaders give identical fbanks
    (both formats hold the same 16-bit samples), and the WAV member is the larger one."""
    for make in (build_loader, lambda c, **kw: build_dali_loader(c, device="cpu", **kw)):
        wav, flac = (list(make(make_cfg(folder), train=False)) for folder in (shard_dir, flac_shard_dir))
        assert [b["keys"] for b in wav] == [b["keys"] for b in flac]
        for a, b in zip(wav, flac):
            assert torch.equal(a["fbank"], b["fbank"])
    sizes = {ext: sum(m[2] for tar in sorted(folder.glob("*.tar")) for ms in index_entries(tar).values()
                      for m in ms if m[0] == ext) for folder, ext in ((shard_dir, "wav"), (flac_shard_dir, "flac"))}
    assert sizes["wav"] > sizes["flac"] > 0


def test_shard_path_with_a_space(shard_dir: Path, tmp_path: Path) -> None:
    """DALI names a bad member by its whole tar path, spaces included: a corrupt mp4 in a shard folder
    whose path holds a space is skipped and counted, or named with that path (data.on_error=raise)."""
    bad_key = all_keys(shard_dir)[4]
    shards = rewrite_shards(shard_dir, tmp_path / "with space", corrupt(bad_key, "mp4"))
    cfg = make_cfg(shards)
    cfg.data.on_error = "skip"
    loader = build_dali_loader(cfg, train=False, device="cpu")
    assert [k for b in loader for k in b["keys"]] == [k for k in all_keys(shard_dir) if k != bad_key]
    assert loader.skipped == {"corrupt_mp4": 1}
    cfg.data.on_error = "raise"
    with pytest.raises(DataError) as raised:
        list(build_dali_loader(cfg, train=False, device="cpu"))
    assert str(raised.value).startswith(f"{shards / 'train-000001.tar'}: sample {bad_key}: corrupt_mp4")


def test_other_codecs_are_refused(shard_dir: Path, tmp_path: Path) -> None:
    """Only VP9 shards are written (FFmpeg's mp4 muxer refuses VP8) and cut into IVF frames: the
    shard writer refuses another codec, and DALI shards of another codec with a clear error."""
    from deteclap.shard import EncodeSettings, ShardError, write_shards

    with pytest.raises(ShardError, match="--codec 'vp8': choose one of"):
        write_shards(tmp_path / "none", tmp_path / "out", settings=EncodeSettings(codec="vp8"))
    shards = rewrite_shards(shard_dir, tmp_path / "s", keep)
    meta = json.loads((shards / "dataset.json").read_text())
    meta["encoding"]["codec"] = "h264"
    (shards / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="h264 video: the DALI pipelines cut frames out of"):
        build_dali_loader(make_cfg(shards), train=False, device="cpu")


def test_parse_bad_member() -> None:
    message = 'Failed to create video decoder for "/d/train-000001.tar:184320:clip_2.mp4"'
    assert parse_bad_member(message) == ("/d/train-000001.tar", "clip_2", "corrupt_mp4")
    assert parse_bad_member("Error decoding file /d/a.tar:28:k.flac. Error: x") == ("/d/a.tar", "k", "corrupt_flac")
    assert parse_bad_member("no member named") is None
    spaced = 'Failed to create video decoder for "/d/my shards/t.tar:28:k.mp4"'
    assert parse_bad_member(spaced, ["/d/my shards/t.tar"]) == ("/d/my shards/t.tar", "k", "corrupt_mp4")


def test_build_picks_dali(shard_dir: Path) -> None:
    cfg = make_cfg(shard_dir)
    cfg.data.loader, cfg.data.dali_device = "dali", "cpu"
    assert isinstance(build(cfg, train=False), DaliLoader)


def test_empty_marker_shard_is_left_out(shard_dir: Path, tmp_path: Path) -> None:
    """A shard whose every input failed stays as an empty tar (a resume marker) that dataset.json does
    not list: both loaders read the listed shards only (DALI refuses a 0-sample index)."""
    import shutil

    shards = tmp_path / "s"
    shutil.copytree(shard_dir, shards)
    (shards / "train-000009.tar").write_bytes(b"\0" * 1024)  # an empty tar archive
    (shards / "train-000009.idx").write_text("v1.2 0\n")
    cfg = make_cfg(shards, batch=2)
    for loader in (build_loader(cfg, train=False), build_dali_loader(cfg, train=False, device="cpu")):
        assert sorted(k for b in loader for k in b["keys"]) == sorted(all_keys(shard_dir))


# -- data.video_decode, NVDEC failures, data.dali_threads -------------------------------------------
# This machine has no GPU: the GPU branch is simulated with a CPU pipeline asked to decode with
# DALI's "mixed" (NVDEC) decoder. DALI refuses it when the pipeline is built, naming no sample, as it
# does on a machine whose NVDEC is unusable; everything after that error is the real code path.
@pytest.fixture
def fresh_fallback(monkeypatch):
    """Forget the process's NVDEC fallback (it is kept once per process on purpose)."""
    from dali_pipes import iterator

    monkeypatch.setattr(iterator, "_NVDEC_FALLBACK", {})
    return iterator


def test_video_decoder_choice(fresh_fallback) -> None:
    from dali_pipes.iterator import HardwareError, choose_video_decoder

    asked: list[int] = []

    def no_nvdec(device: int) -> str:
        asked.append(device)
        return "no NVDEC (simulated)"

    assert choose_video_decoder("auto", False, None, no_nvdec) == ("cpu", None)     # a CPU pipeline
    assert choose_video_decoder("cpu", True, 0, no_nvdec) == ("cpu", None)
    assert asked == []                                                             # not even asked
    assert choose_video_decoder("auto", True, 0, lambda device: None) == ("mixed", None)
    with pytest.raises(HardwareError, match="data.video_decode=gpu: NVDEC cannot decode .* no NVDEC .simulated"):
        choose_video_decoder("gpu", True, 0, no_nvdec)
    with pytest.warns(RuntimeWarning, match="NVDEC is not usable on GPU 0 .no NVDEC .simulated.*CPU decoder"):
        assert choose_video_decoder("auto", True, 0, no_nvdec) == ("cpu", "no NVDEC (simulated)")
    # once per process: the next epoch's loader keeps the CPU decoder without asking or warning again
    asked.clear()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert choose_video_decoder("auto", True, 0, no_nvdec) == ("cpu", "no NVDEC (simulated)")
    assert asked == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with a GPU may have NVDEC")
def test_nvdec_probe_without_a_gpu_gives_a_reason_and_a_verdict_line() -> None:
    import subprocess
    import sys

    from dali_pipes.nvdec import probe_nvdec

    reason = probe_nvdec(0)
    assert reason is not None and ("libnvcuvid.so.1" in reason or "libcuda.so.1" in reason or "cuInit" in reason)
    done = subprocess.run([sys.executable, "-m", "dali_pipes.nvdec"], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 3 and done.stdout.count("\n") == 1 and done.stdout.startswith("NVDEC: no (")


def simulated_nvdec_loader(cfg, on_error: str = "raise") -> DaliLoader:
    cfg.data.on_error = on_error
    loader = build_dali_loader(cfg, train=False, device="cpu")
    loader.video_decoder = "mixed"            # as if this CPU pipeline were a GPU one that chose NVDEC
    return loader


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_auto_falls_back_to_the_cpu_decoder_once_and_loudly(shard_dir: Path, fresh_fallback, on_error) -> None:
    cfg = make_cfg(shard_dir)
    expected = list(build_dali_loader(cfg, train=False, device="cpu"))
    loader = simulated_nvdec_loader(cfg, on_error)
    with pytest.warns(RuntimeWarning, match="data.video_decode=auto: NVDEC is not usable") as caught:
        got = list(loader)
    assert len([w for w in caught if "NVDEC" in str(w.message)]) == 1
    assert [b["keys"] for b in got] == [b["keys"] for b in expected]
    for a, b in zip(expected, got):
        assert torch.equal(a["frames"], b["frames"]) and torch.equal(a["fbank"], b["fbank"])
    assert loader.video_decoder == "cpu" and "DALI:" in loader.video_fallback
    assert loader.skipped == {}                                        # a decoder failure is not bad data
    assert fresh_fallback._NVDEC_FALLBACK == {0: loader.video_fallback}


def test_gpu_setting_fails_instead_of_falling_back(shard_dir: Path, fresh_fallback) -> None:
    from dali_pipes.iterator import HardwareError

    cfg = make_cfg(shard_dir)
    cfg.data.video_decode = "gpu"
    loader = simulated_nvdec_loader(cfg, "skip")
    with pytest.raises(HardwareError, match="hardware or driver problem, not bad data.*data.video_decode=auto"):
        list(loader)
    assert loader.skipped == {} and fresh_fallback._NVDEC_FALLBACK == {}


def named_decoder_error(shards: Path, key: str) -> tuple[str, RuntimeError]:
    """DALI's error for a video it cannot open, naming the sample's mp4 member as DALI does."""
    from deteclap.format import index_entries

    for tar in sorted(shards.glob("train-*.tar")):
        members = index_entries(tar).get(key)
        if members:
            offset = next(m[1] for m in members if m[0] == "mp4")
            return str(tar), RuntimeError(f'Failed to create video decoder for "{tar}:{offset}:{key}.mp4"')
    raise KeyError(key)


@pytest.mark.parametrize("setting", ["auto", "gpu"])
def test_a_named_sample_that_decodes_on_the_cpu_is_a_hardware_failure(shard_dir: Path, fresh_fallback,
                                                                        setting: str) -> None:
    """NVDEC failing on a sample (no decoder for its profile, an engine fault) names it like bad data;
    decoded again on the CPU it is fine, so it is never counted as corrupt_mp4."""
    from dali_pipes.iterator import HardwareError

    key = all_keys(shard_dir)[4]
    tar, err = named_decoder_error(shard_dir, key)
    cfg = make_cfg(shard_dir)
    cfg.data.video_decode = setting
    loader = simulated_nvdec_loader(cfg, "skip")
    if setting == "gpu":
        with pytest.raises(HardwareError, match=f"NVDEC failed on .*{key}, which decodes on the CPU"):
            loader._handle(err)
    else:
        with pytest.warns(RuntimeWarning, match=f"{key}, which decodes on the CPU"):
            loader._handle(err)
        assert loader.video_decoder == "cpu"
    assert loader.skipped == {} and not loader.excluded


def test_a_named_sample_that_fails_on_the_cpu_too_is_bad_data(shard_dir: Path, tmp_path: Path,
                                                               fresh_fallback) -> None:
    key = all_keys(shard_dir)[4]
    # the mp4 zeroed at its own size: its frame table still fits it, so the loader's checks before
    # reading pass it (a truncated mp4 is corrupt_mp4 from the frame table) and only a decoder meets it
    zeroed = lambda k, ext, data: bytes(len(data)) if (k, ext) == (key, "mp4") else data   # noqa: E731
    shards = rewrite_shards(shard_dir, tmp_path / "bad", zeroed)
    tar, err = named_decoder_error(shards, key)
    loader = simulated_nvdec_loader(make_cfg(shards), "skip")
    assert loader.skipped == {}
    loader._handle(err)
    assert loader.skipped == {"corrupt_mp4": 1} and (tar, key) in loader.excluded
    assert loader.video_decoder == "mixed" and fresh_fallback._NVDEC_FALLBACK == {}


def test_dali_threads_default_to_the_cores_per_rank(shard_dir: Path, monkeypatch) -> None:
    import os

    from dali_pipes.iterator import dali_threads

    cores = len(os.sched_getaffinity(0))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert dali_threads(0) == cores and dali_threads(14) == 14
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores * 2))
    assert dali_threads(0) == 1                                   # never 0 threads
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    cfg = make_cfg(shard_dir)
    cfg.data.num_workers, cfg.data.dali_threads = 7, 0           # DataLoader workers do not set DALI's threads
    assert build_dali_loader(cfg, train=False, device="cpu").spec().num_threads == cores
    cfg.data.dali_threads = 3
    assert build_dali_loader(cfg, train=False, device="cpu").spec().num_threads == 3


def test_no_pipeline_outlives_its_epoch(shard_dir: Path, flac_shard_dir: Path, tmp_path: Path) -> None:
    """A pipeline left alive after its epoch could be finalised in a DataLoader worker forked later,
    where its threads do not exist (its shutdown waits for them forever): none is, after a whole
    epoch, an epoch stopped early, an epoch ended by a bad sample, or one whose pipeline a reference
    cycle holds (the loader collects it then)."""
    cfg = make_cfg(shard_dir)
    whole = build_dali_loader(cfg, train=False, device="cpu")
    list(whole)
    cycled = build_dali_loader(cfg, train=False, device="cpu")
    batches = iter(cycled)
    next(batches)
    cycle: list[Any] = [cycled._pipes[-1]()]
    cycle.append(cycle)
    del cycle
    gc.disable()                     # only the loader's own collection may free it
    try:
        list(batches)
        assert all(pipe() is None for pipe in cycled._pipes)
    finally:
        gc.enable()
    stopped = build_dali_loader(cfg, train=True, device="cpu")
    batches = iter(stopped)
    next(batches)
    batches.close()
    bad_key = all_keys(flac_shard_dir)[4]              # DALI's audio decoder fails on it in the pipeline

    def damage(key: str, ext: str, data: bytes) -> bytes:
        return FLAC_DAMAGE["wrong-magic"](data) if (key, ext) == (bad_key, "flac") else data

    failed = build_dali_loader(make_cfg(rewrite_shards(flac_shard_dir, tmp_path / "bad", damage)), train=False,
                               device="cpu")
    with pytest.raises(DataError):
        list(failed)
    for loader in (whole, stopped, failed):
        assert loader._pipes and all(pipe() is None for pipe in loader._pipes)


def test_frame_tables_are_read_once_per_tar_version(shard_dir: Path, tmp_path: Path) -> None:
    """A loader is built per epoch: the KEY.frames tables it checks are read from each tar once, and
    again only when the tar changes (a damaged table is still found then)."""
    from dali_pipes.iterator import _frame_table_problems

    shards = rewrite_shards(shard_dir, tmp_path / "s", keep)
    cfg = make_cfg(shards)
    reads = _frame_table_problems.cache_info().misses
    for epoch in range(3):
        build_dali_loader(cfg, train=True, epoch=epoch, device="cpu")
    assert _frame_table_problems.cache_info().misses - reads == len(list(shards.glob("*.tar"))) == 3
    bad_key = all_keys(shards)[4]
    rewrite_shards(shards, tmp_path / "bad", corrupt(bad_key, "frames"))
    for path in (tmp_path / "bad").glob("train-*"):
        path.replace(shards / path.name)            # the same paths, new contents
    with pytest.raises(DataError, match=f"sample {bad_key}: corrupt_mp4"):
        build_dali_loader(cfg, train=True, epoch=3, device="cpu")
