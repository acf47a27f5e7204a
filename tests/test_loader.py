"""Reference PyTorch loader (deteclap.data.loader) on real shards: batch dict, per-rank split,
resume, bad samples in both loaders (raise naming shard and key, or skip and count); build()."""

from __future__ import annotations

import gc
import io
import itertools
import random
import shutil
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from deteclap.config import Config
from deteclap.data import build
from deteclap.data.decode import DecodeError, decode_video_frames
from deteclap.data.mp4 import Mp4LayoutError, find_sample
from deteclap.data.common import DataError
from deteclap.data.loader import (WORKER_START, ReferenceLoader, ShardSamples, build_loader, decode_frame,
                                  forked_workers, scan_samples, shuffled)
from deteclap.format import encode_wav, iter_tar_samples
from tests.conftest import needs_dali

NUM_LABELS = 601
Edit = Callable[[str, str, bytes], "bytes | None"]


def rewrite_shards(src: Path, dst: Path, edit: Edit, add_scores: bool = False) -> Path:
    """Copy src's train tars (no .idx: the index would be stale) and dataset.json to dst through
    `edit(key, ext, data)` (None drops the member); `add_scores` adds a `KEY.truth.f16` member (seeded
    by the key, also passed through `edit`)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    for tar in sorted(src.glob("train-*.tar")):
        with tarfile.open(tar) as source, tarfile.open(dst / tar.name, "w") as out:
            members = [m for m in source.getmembers() if m.isfile()]
            last_of_key = {m.name.split(".", 1)[0]: m.name for m in members}
            for member in members:
                key, ext = member.name.split(".", 1)
                data = edit(key, ext, source.extractfile(member).read())
                if data is not None:
                    _add(out, member.name, data)
                if add_scores and last_of_key[key] == member.name:
                    rng = np.random.default_rng(zlib.crc32(key.encode()))
                    scores = edit(key, "truth.f16", rng.random(NUM_LABELS).astype("<f2").tobytes())
                    if scores is not None:
                        _add(out, f"{key}.truth.f16", scores)
    return dst


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def corrupt(target_key: str, target_ext: str) -> Edit:
    """Edit that truncates and garbles one member of one sample ("-ext": drops the member; "22k.wav",
    "22k.flac": the same audio labelled 22.05 kHz, in the member's own format)."""
    def edit(key: str, ext: str, data: bytes) -> bytes | None:
        if key != target_key or ext != target_ext.lstrip("-").removeprefix("22k."):
            return data
        if target_ext.startswith("-"):
            return None
        if target_ext.startswith("22k."):
            import soundfile

            wave, _ = soundfile.read(io.BytesIO(data), dtype="int16")
            if ext == "wav":
                return encode_wav(wave, 22050)
            out = io.BytesIO()
            soundfile.write(out, wave, 22050, format="FLAC")
            return out.getvalue()
        return data[: len(data) // 3] + b"\x00garbage" * 64
    return edit


def keep(key: str, ext: str, data: bytes) -> bytes:
    return data


def make_cfg(shards: Path, batch: int = 3, variant: str = "cavmae", workers: int = 0) -> Config:
    cfg = Config()
    cfg.data.train_shards = cfg.data.eval_shards = str(shards)
    cfg.data.eval_split = "train"
    cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer = batch, workers, 4
    cfg.eval.batch_size = batch
    cfg.labels.variant = variant
    cfg.labels.audio_labeller = cfg.labels.visual_labeller = "truth"
    cfg.run.device = "cpu"
    return cfg


def all_keys(shards: Path) -> list[str]:
    return [k for tar in sorted(shards.glob("train-*.tar")) for k in scan_samples(tar)]


def test_eval_batches_match_contract(shard_dir: Path, tmp_path: Path) -> None:
    shards = rewrite_shards(shard_dir, tmp_path / "s", keep, add_scores=True)
    cfg = make_cfg(shards, variant="or")
    batches = list(build_loader(cfg, train=False))
    keys = [k for b in batches for k in b["keys"]]
    assert keys == all_keys(shards)                                  # every sample, tar order
    first = batches[0]
    assert first["fbank"].shape == (3, cfg.model.audio_length, 128) and first["fbank"].dtype == torch.float32
    assert first["frames"].shape == (3, 3, 224, 224)
    assert set(first["targets"]) == {"a2l", "v2l"} and first["targets"]["a2l"].shape == (3, NUM_LABELS)
    assert first["classes"].shape[0] == 3 and bool(((first["classes"] == 0) | (first["classes"] == 1)).all())
    assert [len(b["keys"]) for b in batches] == [3, 3, 2]             # partial last batch kept
    again = list(build_loader(cfg, train=False))
    assert [b["keys"] for b in again] == [b["keys"] for b in batches]
    assert torch.equal(again[0]["fbank"], first["fbank"]) and torch.equal(again[0]["frames"], first["frames"])


def test_each_sample_once_across_ranks_with_workers(shard_dir: Path) -> None:
    cfg = make_cfg(shard_dir, batch=2, workers=2)
    seen = []
    for rank in range(2):
        seen += [k for b in build_loader(cfg, train=False, rank=rank, world_size=2) for k in b["keys"]]
    assert sorted(seen) == sorted(all_keys(shard_dir))
    train = [build_loader(cfg, train=True, rank=r, world_size=2, epoch=1) for r in range(2)]
    lengths = {len(loader) for loader in train}
    assert len(lengths) == 1 and lengths.pop() > 0                  # equal batch count per rank
    keys = [[k for b in loader for k in b["keys"]] for loader in train]
    assert not set(keys[0]) & set(keys[1]) and all(len(k) == len(set(k)) for k in keys)
    assert all(len(k) == 2 * len(train[0]) for k in keys)


def uneven_shards(src: Path, dst: Path, sizes: list[int], edit: Edit = keep) -> Path:
    """Tars of `sizes` samples (a glob: no dataset.json, no .idx) filled with src's train samples in
    turn, each copy under a key of its own, through `edit(key, ext, data)` (None drops the member)."""
    samples = [sample for tar in sorted(src.glob("train-*.tar")) for sample in iter_tar_samples(tar)]
    dst.mkdir(parents=True)
    copies = itertools.count()
    for number, size in enumerate(sizes):
        with tarfile.open(dst / f"train-{number:06d}.tar", "w") as out:
            for copy in itertools.islice(copies, size):
                key, members = samples[copy % len(samples)]
                for ext, data in members.items():
                    data = edit(f"copy{copy:03d}_{key}", ext, data)
                    if data is not None:
                        _add(out, f"copy{copy:03d}_{key}.{ext}", data)
    return dst


@pytest.mark.parametrize("world_size,workers", [(2, 0), (3, 0), (2, 2)])
def test_ranks_split_an_uneven_epoch_by_sample(shard_dir: Path, tmp_path: Path, world_size: int,
                                                workers: int) -> None:
    """Tars of 3, 3, 3, 3, 1 samples: ranks split each training epoch's samples (not its tars) in equal
    parts, read none twice and yield the same number of full batches. A rank's share is N // W samples
    or one more; each of its K DataLoader workers (K = 1 without) drops fewer than B (batch) of them,
    and the cap to the smallest rank's count costs no more, so at most N % W + W * K * (B - 1) samples
    of the epoch stay unread (without workers, each rank yields exactly (N // W) // B batches)."""
    shards = uneven_shards(shard_dir, tmp_path / "s", [3, 3, 3, 3, 1])
    keys, batch = all_keys(shards), 2
    cfg = make_cfg(shards, batch=batch, workers=workers)
    for epoch in range(3):
        ranks = [build_loader(cfg, train=True, rank=r, world_size=world_size, epoch=epoch)
                 for r in range(world_size)]
        batches = [[b["keys"] for b in loader] for loader in ranks]
        assert {len(loader) for loader in ranks} == {len(b) for b in batches} == {len(batches[0])}, epoch
        assert all(len(b) == batch for rank in batches for b in rank), epoch
        seen = [k for rank in batches for b in rank for k in b]
        assert len(seen) == len(set(seen)) and set(seen) <= set(keys), epoch    # no sample twice
        unread = len(keys) - len(seen)
        assert unread <= len(keys) % world_size + world_size * max(workers, 1) * (batch - 1), (epoch, unread)
        if workers == 0:
            assert len(batches[0]) == len(keys) // world_size // batch, epoch


def test_uneven_split_resumes_and_skips(shard_dir: Path, tmp_path: Path) -> None:
    """Split by sample, each rank resumes its own epoch where it stopped; a sample missing a member
    raises, or (on_error=skip) is left out and counted by the rank whose share holds it, every
    rank's batch count unchanged."""
    sizes, world_size = [3, 3, 3, 3, 1], 2
    cfg = make_cfg(uneven_shards(shard_dir, tmp_path / "s", sizes), batch=2)
    full = [[b["keys"] for b in build_loader(cfg, train=True, rank=r, world_size=world_size, epoch=1)]
            for r in range(world_size)]
    for rank in range(world_size):
        resumed = build_loader(cfg, train=True, rank=rank, world_size=world_size, epoch=1, start_batch=2)
        assert [b["keys"] for b in resumed] == full[rank][2:]
        assert resumed.state_dict() == {"epoch": 1, "batches_consumed": len(full[rank])} and len(full[rank]) == 3
    bad_key = full[1][1][0]
    cfg = make_cfg(uneven_shards(shard_dir, tmp_path / "bad", sizes, corrupt(bad_key, "-wav")), batch=2)
    with pytest.raises(DataError, match=f"sample {bad_key}: missing_member"):
        list(build_loader(cfg, train=True, rank=1, world_size=world_size, epoch=1))
    cfg.data.on_error = "skip"
    ranks = [build_loader(cfg, train=True, rank=r, world_size=world_size, epoch=1) for r in range(world_size)]
    batches = [[b["keys"] for b in loader] for loader in ranks]
    assert [len(loader) for loader in ranks] == [len(b) for b in batches] == [3, 3]
    assert batches[0] == full[0] and ranks[0].skipped == {}
    assert sorted(k for b in batches[1] for k in b) == sorted(k for b in full[1] for k in b if k != bad_key)
    assert ranks[1].skipped == {"missing_member": 1}


def test_resume_skips_batches(shard_dir: Path) -> None:
    cfg = make_cfg(shard_dir, batch=2)
    full = [b["keys"] for b in build_loader(cfg, train=True, epoch=3)]
    resumed = build_loader(cfg, train=True, epoch=3, start_batch=2)
    assert [b["keys"] for b in resumed] == full[2:]
    assert resumed.state_dict() == {"epoch": 3, "batches_consumed": len(full)}
    other_epoch = [b["keys"] for b in build_loader(cfg, train=True, epoch=4)]
    assert other_epoch != full                                       # shuffled per epoch


def loader_factory(loader: str) -> Callable[..., Any]:
    """build_loader, or build_dali_loader on the CPU: called as make(cfg, train=..., ...)."""
    if loader == "dali":
        from dali_pipes.iterator import build_dali_loader

        return lambda cfg, **kw: build_dali_loader(cfg, device="cpu", **kw)
    return build_loader


BAD_SAMPLES = [("mp4", "corrupt_mp4"), ("wav", "corrupt_wav"), ("-wav", "missing_member"), ("22k.wav", "bad_audio"),
               ("flac", "corrupt_flac"), ("-flac", "missing_member"), ("22k.flac", "bad_audio"),
               ("truth.f16", "bad_scores")]
LOADERS = ["reference", pytest.param("dali", marks=needs_dali)]


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("ext,reason", BAD_SAMPLES)
def test_bad_sample_raise_or_skip(shard_dir: Path, flac_shard_dir: Path, tmp_path: Path, loader: str, ext: str,
                                  reason: str) -> None:
    """Both loaders, both audio formats: a DataError naming shard, key and reason, or (on_error=skip)
    the sample left out and counted; never a silent zero tensor."""
    make = loader_factory(loader)
    shard_dir = flac_shard_dir if "flac" in ext else shard_dir
    bad_key = all_keys(shard_dir)[4]
    shards = rewrite_shards(shard_dir, tmp_path / "bad", corrupt(bad_key, ext), add_scores=True)
    cfg = make_cfg(shards, variant="or")
    with pytest.raises(DataError) as raised:
        list(make(cfg, train=False))
    assert "train-000001.tar" in str(raised.value) and bad_key in str(raised.value), raised.value
    assert reason in str(raised.value), raised.value
    cfg.data.on_error = "skip"
    skipping = make(cfg, train=False)
    keys = [k for b in skipping for k in b["keys"]]
    assert keys == [k for k in all_keys(shard_dir) if k != bad_key]
    assert skipping.skipped == {reason: 1} and skipping.skipped_samples[0].key == bad_key


def test_batch_whose_every_label_failed_is_left_out() -> None:
    """All rows' label scores NaN (their labelling failed), on_error=skip: an empty batch that the
    loaders drop, every key reported as label_failed (no fbank of zero rows)."""
    from deteclap.data.common import finish_batch

    cfg = make_cfg(Path("."), variant="or")
    cfg.data.on_error = "skip"
    scores = {"truth": torch.full((2, NUM_LABELS), float("nan"), dtype=torch.float16)}
    batch = finish_batch(cfg, True, ["a", "b"], torch.zeros(2, 3, 224, 224, dtype=torch.uint8),
                         torch.zeros(2, 16000), torch.tensor([16000, 16000]), torch.zeros(2, 4), scores,
                         shards=["s.tar", "s.tar"])
    assert batch["keys"] == [] and batch["label_failed"] == [("s.tar", "a"), ("s.tar", "b")]


@pytest.mark.parametrize("loader", LOADERS)
def test_resume_position_counts_a_dropped_batch(shard_dir: Path, tmp_path: Path, loader: str) -> None:
    """A batch whose every sample is left out (NaN label scores, on_error=skip) is consumed but not
    yielded: `batches_consumed` (what train.py saves) counts it, so a resume starts after it."""
    make = loader_factory(loader)
    keys = all_keys(shard_dir)
    nan = np.full(NUM_LABELS, np.nan, dtype="<f2").tobytes()
    shards = rewrite_shards(shard_dir, tmp_path / "s", lambda key, ext, data: nan if ext == "truth.f16"
                            and key in keys[:3] else data, add_scores=True)
    cfg = make_cfg(shards, variant="or")
    cfg.data.on_error = "skip"
    made = make(cfg, train=False)
    batches = iter(made)
    assert next(batches)["keys"] == keys[3:6]                        # the first batch (keys 0-2) was dropped
    assert made.state_dict()["batches_consumed"] == 2 and made.skipped == {"label_failed": 3}
    resumed = make(cfg, train=False, start_batch=2)
    assert [b["keys"] for b in resumed] == [keys[6:8]]


def test_training_resumes_after_a_dropped_batch(shard_dir: Path, tmp_path: Path) -> None:
    """train.py's saved data position continues the epoch where it stopped, also after a training
    batch whose every sample was left out (NaN label scores, on_error=skip)."""
    import itertools

    from deteclap.train import data_position, resume_state, training_batches

    keys = all_keys(shard_dir)
    nan = np.full(NUM_LABELS, np.nan, dtype="<f2").tobytes()
    shards = rewrite_shards(shard_dir, tmp_path / "s", lambda key, ext, data: nan if ext == "truth.f16"
                            and key == keys[2] else data, add_scores=True)
    cfg = make_cfg(shards, batch=1, variant="or")
    cfg.data.on_error, cfg.data.max_skip_fraction = "skip", 1.0     # 1 of 8 left out: over the default budget
    seen = [(batch["keys"], resume_state(0, epoch, loader))
            for epoch, batch, loader in itertools.islice(training_batches(cfg, 0, 1, 0, 0), 9)]
    assert [state["epoch"] for _, state in seen] == [0] * 7 + [1] * 2     # 7 of epoch 0's 8 batches arrive
    for position, (_, state) in enumerate(seen[:7]):
        assert state["positions"] == [[state["epoch"], state["batch_in_epoch"]]]   # one rank: its own
        resumed = training_batches(cfg, 0, 1, *data_position(state, 0, 1))
        assert [batch["keys"] for _, batch, _ in itertools.islice(resumed, 2)] == \
            [keys for keys, _ in seen[position + 1:position + 3]], position


def test_each_rank_resumes_at_its_own_data_position(capsys: pytest.CaptureFixture[str]) -> None:
    """Ranks can stand at different positions (one dropped a batch the other trained on); a
    checkpoint of another world size resumes every rank at rank 0's position, with a warning."""
    from deteclap.train import data_position

    client = {"step": 12, "epoch": 3, "batch_in_epoch": 5, "positions": [[3, 5], [4, 0]]}
    assert [data_position(client, rank, 2) for rank in (0, 1)] == [(3, 5), (4, 0)]
    assert capsys.readouterr().out == ""
    assert [data_position(client, rank, 4) for rank in range(4)] == [(3, 5)] * 4
    assert "2 rank(s), this run has 4" in capsys.readouterr().out
    old = {"step": 12, "epoch": 3, "batch_in_epoch": 5}                   # no `positions`: one rank's
    assert data_position(old, 0, 1) == (3, 5)


def test_build_picks_reference_without_gpu(shard_dir: Path) -> None:
    cfg = make_cfg(shard_dir)
    loader = build(cfg, train=False)
    if not torch.cuda.is_available():
        assert isinstance(loader, ReferenceLoader)
    cfg.data.loader = "reference"
    assert isinstance(build(cfg, train=False), ReferenceLoader)


@pytest.mark.parametrize("shape", [(224, 224, 3), (256, 342, 3)], ids=["stored-square", "whole-frame"])
def test_frame_preparation_is_cav_mae_preprocessing(shape: tuple[int, int, int]) -> None:
    """frame_transform (uint8, PIL skipped for stored 224 squares) + normalize_frames on the batch give
    exactly CAV-MAE's Resize(224, bicubic) / CenterCrop / ToTensor / Normalize of each frame."""
    import PIL.Image
    import torchvision.transforms as T

    from deteclap.config import IMAGE_MEAN, IMAGE_STD
    from deteclap.data.common import normalize_frames
    from deteclap.data.loader import frame_transform

    official = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                          T.ToTensor(), T.Normalize(mean=IMAGE_MEAN, std=IMAGE_STD)])
    frames = np.random.default_rng(0).integers(0, 256, (2, *shape), dtype=np.uint8)
    ours = torch.stack([frame_transform(224)(frame) for frame in frames])
    assert ours.dtype == torch.uint8 and ours.shape == (2, 3, 224, 224)
    expected = torch.stack([official(PIL.Image.fromarray(frame)) for frame in frames])
    assert torch.equal(normalize_frames(ours), expected)


def test_decode_frame_decodes_the_same_frame(shard_dir: Path) -> None:
    """The one-packet decode gives exactly the frame that decoding the whole video gives."""
    tar = sorted(shard_dir.glob("train-*.tar"))[0]
    _, members = next(iter_tar_samples(tar))
    frames = decode_video_frames(members["mp4"])
    for index in range(len(frames)):
        assert np.array_equal(np.asarray(decode_frame(members["mp4"], index)), frames[index]), index
    with pytest.raises(DecodeError, match="out of range"):
        decode_frame(members["mp4"], len(frames))
    sample = find_sample(members["mp4"], 3)                          # the sample table, read directly
    assert sample.codec == "vp9" and sample.keyframe and sample.size > 0
    with pytest.raises(Mp4LayoutError, match="out of range"):
        find_sample(members["mp4"], len(frames))
    with pytest.raises(Mp4LayoutError):
        find_sample(members["wav"], 0)
    with pytest.raises(DecodeError, match="corrupt"):
        decode_frame(members["mp4"][: len(members["mp4"]) // 3], 5)


def test_fbank_in_workers_equals_main_process(shard_dir: Path) -> None:
    """Workers compute the fbank on the CPU (no waves shipped); the batch is the same as without workers."""
    in_main = {k: f for b in build_loader(make_cfg(shard_dir, workers=0), train=False)
               for k, f in zip(b["keys"], b["fbank"])}
    in_workers = {k: f for b in build_loader(make_cfg(shard_dir, workers=2), train=False)
                  for k, f in zip(b["keys"], b["fbank"])}
    assert in_main.keys() == in_workers.keys()
    assert all(torch.equal(in_main[k], in_workers[k]) for k in in_main)


def test_shuffle_buffer() -> None:
    """Every item once; a buffer of one or none keeps the order; a bigger one moves items by less than
    the buffer allows (an item leaves at the earliest `size - 1` places early)."""
    items = list(range(200))
    assert list(shuffled(items, 0, random.Random(0))) == list(shuffled(items, 1, random.Random(0))) == items
    out = list(shuffled(items, 16, random.Random(0)))
    assert sorted(out) == items and out != items
    assert all(position >= item - 15 for position, item in enumerate(out))


def test_training_shuffles_raw_draws_before_decoding(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shuffle buffer holds the tars' raw members: an epoch's first batch decodes just its own samples,
    not a buffer full of them first; an epoch still holds every sample once, in a shuffled order."""
    cfg = make_cfg(shard_dir, batch=2)
    cfg.data.shuffle_buffer = 6
    decoded: list[str] = []
    original = ShardSamples.decode

    def counting(self: ShardSamples, tar: Path, key: str, *args: Any) -> dict[str, Any]:
        decoded.append(key)
        return original(self, tar, key, *args)

    monkeypatch.setattr(ShardSamples, "decode", counting)
    first = next(iter(build_loader(cfg, train=True, epoch=0)))
    assert decoded == first["keys"]                    # 2 decoded, where a decoded buffer needs 7
    epochs = [[k for b in build_loader(cfg, train=True, epoch=e) for k in b["keys"]] for e in range(3)]
    assert all(len(keys) == len(set(keys)) == 8 for keys in epochs)      # 8 samples, batches of 2
    assert any(keys != all_keys(shard_dir) for keys in epochs)


class _FreezeProbe(torch.utils.data.IterableDataset):
    def __iter__(self) -> Any:
        yield gc.get_freeze_count()


def test_workers_fork_with_the_parents_objects_frozen() -> None:
    """The parent's objects are frozen out of the garbage collector while the workers fork (a worker's
    first full collection would otherwise walk and copy every inherited object), and only there."""
    loader = torch.utils.data.DataLoader(_FreezeProbe(), batch_size=None, num_workers=1,
                                         multiprocessing_context=WORKER_START)
    in_worker = list(forked_workers(loader))
    assert in_worker[0] > 1000 and gc.get_freeze_count() == 0


def test_worker_augmentation_differs_by_epoch_and_rank(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers draw the batches' SpecAugment and noise from their torch generators, seeded per
    epoch and rank: no epoch or rank repeats another's random numbers, and a rerun repeats its own."""
    import deteclap.data.loader as loader_module

    monkeypatch.setattr(loader_module, "finish_audio",      # forked workers inherit it: one draw per batch
                        lambda cfg, train, waves, lengths: torch.rand(1).expand(len(waves), 1, 1).clone())
    cfg = make_cfg(shard_dir, batch=1, workers=2)

    def draws(epoch: int, rank: int) -> list[float]:
        return [float(b["fbank"][0, 0, 0]) for b in build_loader(cfg, train=True, rank=rank, world_size=2,
                                                                  epoch=epoch)]

    runs = [draws(epoch, rank) for epoch in range(2) for rank in range(2)]
    values = [value for run in runs for value in run]
    assert len(values) >= 8 and len(set(values)) == len(values)
    assert draws(1, 1) == runs[3]
