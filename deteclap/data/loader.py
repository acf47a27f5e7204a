"""Reference PyTorch loader: shard tars -> the batch dict of docs/INTERNALS.md, no DALI needed.

Owns `build_loader(cfg, train, rank, world_size, epoch)` (what it shares with the DALI loader is in
deteclap.data.common). Per sample (in DataLoader workers): the tar is read with python's tarfile
(members grouped by the key rule of deteclap.format, WebDataset's), ONLY the sampled frame decoded
(its bytes found in the mp4 sample table, deteclap.data.mp4, and decoded by a reused decoder),
resized and cropped exactly like CAV-MAE (PIL T.Resize(224, BICUBIC) + CenterCrop, skipped for
frames stored at 224 x 224) and kept as uint8, the audio read (`KEY.wav`: its int16 samples as they
lie; `KEY.flac`: decoded with soundfile). Training shuffles the raw samples through a buffer
before decoding them (`shuffled`). Per batch: `finish_batch` (deteclap.data.common) in the main
process; the fbank with its SpecAugment and noise (`finish_audio`) is computed on the padded waves
in the workers on the CPU, in the main process on a GPU or with mixup. Workers flush denormals.

Sharding: a training epoch is a draw, {tar: {key: times}}: every sample once, or with
`finetune.balanced_sampling` as many times as deteclap.data.balance drew it (CAV-MAE's
class-balanced sampler). Its draws, laid out in the epoch's seeded shuffle of the tars, are split
across ranks in equal contiguous parts (not by tar: tars differ in size); each rank reads the tars
its part touches, decodes only its samples, and splits those tars across its DataLoader workers.
Every rank yields the same number of full batches (`len(loader)`, the smallest rank's), so an epoch
leaves out at most its per-rank and per-worker remainders. Evaluation reads every sample once:
every `world_size`-th tar per rank in a fixed order, partial batches kept. Bad samples raise
`DataError` naming the shard and key (`data.on_error=raise`) or are skipped and counted by reason
in `loader.skipped`.
"""

from __future__ import annotations

import functools
import gc
import os
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deteclap.config import Config
from deteclap.data.balance import epoch_repeats, rank_shares
from deteclap.data.common import (DataError, Skipped, SkipLog, bad_audio_detail, batch_size, check_shards,
                                  corrupt_reason, epoch_seed, finish_audio, finish_batch, required_members,
                                  resolve_shards, shard_facts, wrong_score_sizes)
from deteclap.device import flush_denormals
from deteclap.format import (AUDIO_EXT, CLASSES_EXT, VIDEO_EXT, FormatError, is_score_member, iter_tar_samples,
                             labeller_of, scan_shard, storage)


def scan_samples(tar: Path) -> dict[str, set[str]]:
    """{key: member extensions} of a tar's samples from its headers (`deteclap.format.scan_shard`),
    in tar order, then the keys of its unusable samples (`scan.bad`, no extensions): an epoch
    draws those too, so that each is counted (or raises) when the tar is read instead of vanishing."""
    scan = scan_shard(tar)
    return {**{key: {entry[0] for entry in entries} for key, entries in scan.entries.items()},
            **dict.fromkeys(scan.bad, set())}


def epoch_tar_order(tars: list[Path], seed: int, epoch: int) -> list[Path]:
    """A training epoch's tar order: a per-epoch seeded shuffle (the reference loader lays the
    epoch's draws out in it before splitting them across ranks, `ReferenceLoader._draw`)."""
    order = list(tars)
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


# ----------------------------------------------------------------------------------------------
# per-sample work (DataLoader workers)
def frame_transform(img_size: int) -> Callable[[np.ndarray], torch.Tensor]:
    """CAV-MAE's image geometry (src/dataloader.py: PIL Resize(img_size, bicubic) + CenterCrop) as a
    function of a uint8 RGB array [H, W, 3] -> uint8 [3, img_size, img_size]; `normalize_frames`
    does its ToTensor + Normalize on the batch. A frame stored at img_size x img_size (the shard
    writer's default, resized and cropped as CAV-MAE's extraction does) skips PIL: Resize and
    CenterCrop leave it as it is. uint8 frames are 4x fewer bytes for the workers to hand over."""
    import PIL.Image
    import torchvision.transforms as T

    resize_crop = T.Compose([T.Resize(img_size, interpolation=PIL.Image.BICUBIC), T.CenterCrop(img_size)])

    def transform(frame: np.ndarray) -> torch.Tensor:
        if frame.shape[:2] != (img_size, img_size):
            frame = np.array(resize_crop(PIL.Image.fromarray(frame)))
        return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)

    return transform


@functools.lru_cache(maxsize=4)
def _frame_decoder(codec: str, process: int) -> Any:
    """A single-threaded decoder reused for every frame of this process (keyed by pid: not across a fork)."""
    import av

    context = av.CodecContext.create(codec, "r")
    context.thread_type, context.thread_count = "SLICE", 1   # one frame: frame threads only add start-up
    return context


def decode_frame(data: bytes, index: int) -> np.ndarray:
    """Frame `index` (decoding order) of an in-memory video as uint8 RGB [H, W, 3], decoding ONLY that frame.

    The shards store every frame as a key frame (shards/FORMAT.md), so sample `index` decodes on
    its own: its bytes are found in the mp4's sample table (deteclap.data.mp4) and go to a decoder
    reused across samples. Anything else (another layout, a non-key frame, a decoder error) takes
    `decode_video_frames(data, [index])[0]`, which decodes from the start and raises DecodeError
    on bad data or an index past the last frame. Both give the same pixels.
    """
    import av

    from deteclap.data.decode import DecodeError, decode_video_frames
    from deteclap.data.mp4 import Mp4LayoutError, find_sample

    if not data:
        raise DecodeError("empty video data (0 bytes)")
    try:
        sample = find_sample(data, index)
        if sample.keyframe:
            decoder = _frame_decoder(sample.codec, os.getpid())
            frames = decoder.decode(av.Packet(data[sample.offset: sample.offset + sample.size]))
            if frames:
                return frames[0].to_ndarray(format="rgb24")
    except Mp4LayoutError:
        pass                                  # the full decode below says what is wrong, if anything
    except av.FFmpegError:
        _frame_decoder.cache_clear()          # a fresh decoder next time; the full decode reports
    return decode_video_frames(data, [index])[0]


def preload_decoders() -> None:
    """Import the per-sample libraries in the main process before the DataLoader forks its workers.

    Each epoch starts fresh workers; importing torchvision there took ~1 s per worker per epoch
    (3.5 s to the first batch of an epoch on 2 cores, then 0.9 s for its 8 batches of 32)."""
    import av  # noqa: F401
    import PIL.Image  # noqa: F401
    import soundfile  # noqa: F401
    import torchvision.transforms  # noqa: F401


# Workers are forked (Linux): they start in milliseconds with the decoders preload_decoders imported.
# Spawned (the default of a spawned process, and of Python 3.14) each re-imports torch and the
# decoders at every epoch start: 3.2 s instead of 0.7 s to an epoch's first batch, measured.
WORKER_START = "fork" if sys.platform == "linux" else None
# one draw of a sample in a worker's stream: its tar, key, raw members, and a problem known before
# decoding ((reason, detail) from the tar's scan) or None
Draw = tuple[Path, str, dict[str, bytes], "tuple[str, str] | None"]


def forked_workers(loader: torch.utils.data.DataLoader) -> Iterator[Any]:
    """iter(loader), with the objects of this process frozen out of the garbage collector while its
    workers fork. A forked worker's first full collection otherwise walks every object it inherited
    (torch's and the decoders') and writes to each, copying their pages: 200 ms of the 500 ms an
    epoch's first batch took on 2 cores (2 workers of 32 samples). A process that froze objects
    itself is left as it is (unfreezing would unfreeze its objects too)."""
    if gc.get_freeze_count():
        return iter(loader)
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()        # the parent collects them again; the workers keep their frozen copy


class ShardSamples(torch.utils.data.IterableDataset):
    """Decoded samples (dicts) or `Skipped` markers of one rank's tars, split across workers."""

    def __init__(self, tars: list[Path], cfg: Config, train: bool, seed: int, score_size: int | None = None,
                 repeats: dict[str, dict[str, int]] | None = None, num_classes: int | None = None,
                 audio_ext: str = AUDIO_EXT) -> None:
        self.tars, self.cfg, self.train, self.seed, self.score_size = tars, cfg, train, seed, score_size
        self.repeats = repeats            # training: this rank's times per sample (absent: 0); None: each once
        self.num_classes = num_classes    # bytes of every KEY.cls (dataset.json's class count); None: unchecked
        self.audio_ext = audio_ext        # the folder's audio member: wav (read as it lies) or flac
        self.exts = required_members(cfg, audio_ext)

    def decode(self, tar: Path, key: str, members: dict[str, bytes], rng: random.Random,
               transform: Any) -> dict[str, Any]:
        """One sample's tensors. Raises DataError(reason) for a bad sample."""
        from deteclap.data.decode import DecodeError, decode_audio_member

        missing = [ext for ext in self.exts if ext not in members]
        if missing:
            raise DataError("missing_member", f"missing members {missing}")
        if self.num_classes is not None and len(members[CLASSES_EXT]) != self.num_classes:
            raise DataError("bad_classes", f"{CLASSES_EXT} of {len(members[CLASSES_EXT])} bytes, not one per class "
                                           f"of dataset.json's {self.num_classes}")
        data = self.cfg.data
        frame_index = rng.randrange(data.num_frames) if self.train else data.eval_frame
        try:
            frame = decode_frame(members[VIDEO_EXT], frame_index)
        except DecodeError as err:
            raise DataError(corrupt_reason(VIDEO_EXT), str(err)) from err
        try:
            wave, rate = decode_audio_member(self.audio_ext, members[self.audio_ext])
        except DecodeError as err:
            raise DataError(corrupt_reason(self.audio_ext), str(err)) from err
        bad_audio = bad_audio_detail(len(wave), rate)
        if bad_audio:
            raise DataError("bad_audio", bad_audio)
        score_exts = [e for e in self.exts if is_score_member(e)]
        wrong = wrong_score_sizes({ext: len(members[ext]) for ext in score_exts}, self.score_size)
        if wrong:
            raise DataError("bad_scores", wrong)
        scores = {labeller_of(ext): torch.from_numpy(np.frombuffer(members[ext], dtype="<f2").copy())
                  for ext in score_exts}
        return {"key": key, "shard": str(tar), "frame": transform(frame), "wave": torch.from_numpy(wave),
                "classes": torch.from_numpy(np.frombuffer(members[CLASSES_EXT], np.uint8).astype(np.float32)),
                "scores": scores}

    def _decoded(self, draw: Draw, rng: random.Random, transform: Any,
                 failed: dict[tuple[Path, str], tuple[str, str]]) -> Any:
        """One draw decoded, or (on_error=skip) a `Skipped` marker, so that the stream keeps its
        length (and every rank its batch count); the loader counts it once. A bad sample is not
        decoded again for its later draws (a balanced draw can repeat it): `failed` remembers it."""
        tar, key, members, bad = draw
        bad = bad or failed.get((tar, key))
        try:
            if bad is not None:
                raise DataError(*bad)
            return self.decode(tar, key, members, rng, transform)
        except DataError as err:
            reason, detail = err.args
            if self.cfg.data.on_error == "raise":
                raise DataError(f"{storage.location(tar)}: sample {key}: {reason}: {detail}") from None
            failed[(tar, key)] = (reason, detail)
            return Skipped(str(tar), key, reason)

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = random.Random(self.seed * 1_000_003 + worker)
        transform = frame_transform(self.cfg.model.img_size)
        draws = (draw for tar in self.tars[worker::workers] for draw in self._tar_draws(tar))
        failed: dict[tuple[Path, str], tuple[str, str]] = {}
        for draw in shuffled(draws, self.cfg.data.shuffle_buffer if self.train else 0, rng):
            yield self._decoded(draw, rng, transform, failed)

    def _tar_draws(self, tar: Path) -> Iterator[Draw]:
        """One tar's drawn samples as their raw members, each as often as it was drawn. The stream
        must deliver every sample the draw holds (from the tar's headers, `scan_samples`): one it does
        not deliver (the tar is damaged, or changed since it was scanned) is a DataError naming the
        shard, or skipped and counted, as is one the stream holds and the headers did not."""
        scan = scan_shard(tar)
        drawn = self.repeats.get(str(tar), {}) if self.repeats is not None else dict.fromkeys(scan_samples(tar), 1)
        delivered: set[str] = set()
        try:
            for key, members in iter_tar_samples(tar):
                delivered.add(key)
                bad = scan.bad.get(key)
                if key not in scan.entries and bad is None:
                    bad, drawn = ("index_mismatch", "a sample the tar's headers did not list"), {**drawn, key: 1}
                yield from [(tar, key, members, bad)] * drawn.get(key, 0)
        except FormatError as err:
            if self.cfg.data.on_error == "raise":
                raise DataError(str(err)) from None
        for key, times in drawn.items():
            if key not in delivered and times:
                bad = scan.bad.get(key, ("corrupt_tar", f"listed by {tar.name}'s headers, not in its stream"))
                yield from [(tar, key, {}, bad)] * times


def shuffled(items: Iterable[Any], size: int, rng: random.Random) -> Iterator[Any]:
    """`items` through a shuffle buffer of `size` (<= 1: in order): each item out is a random one of
    the buffer, once it holds `size`; the rest, shuffled, at the end. The reference loader shuffles
    the raw draws, before decoding (as DALI's reader does): filling the buffer then costs reading the
    tars, not decoding `size` samples before an epoch's first batch."""
    buffer: list[Any] = []
    for item in items:
        if size <= 1:
            yield item
            continue
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(rng.randrange(len(buffer)))
    rng.shuffle(buffer)
    yield from buffer


def collate(items: list[Any], cfg: Config | None = None, train: bool = False) -> dict[str, Any]:
    """Stack decoded samples; pad waves with their lengths; keep `Skipped` markers aside.

    With `cfg`, the batch's fbank as the model takes it (deteclap.data.common.finish_audio) is also
    computed here, in the DataLoader worker, so that the workers share the audio work instead of the
    main process doing it for every batch: `fbank` [B, model.audio_length, 128], and `waves` is None
    (20 MB per batch of 32 less to ship to the main process). Its random numbers (SpecAugment, noise)
    come from the worker's torch generator, which the DataLoader seeds from the generator that
    `ReferenceLoader` seeds per epoch and rank.
    """
    skipped = [item for item in items if isinstance(item, Skipped)]
    good = [item for item in items if not isinstance(item, Skipped)]
    out: dict[str, Any] = {"skipped": skipped, "keys": [item["key"] for item in good],
                           "shards": [item["shard"] for item in good]}
    if not good:
        return out
    sizes = {item["classes"].numel() for item in good}
    if len(sizes) > 1:            # (a glob of tars: no dataset.json class count to check against)
        raise DataError(f"{CLASSES_EXT} members of different sizes {sorted(sizes)} in one batch: "
                        f"{[(item['shard'], item['key'], item['classes'].numel()) for item in good][:4]}")
    lengths = torch.tensor([item["wave"].numel() for item in good])
    waves = torch.zeros(len(good), int(lengths.max()))
    for i, item in enumerate(good):
        waves[i, : lengths[i]] = item["wave"]
    out.update(frames=torch.stack([item["frame"] for item in good]), waves=waves, lengths=lengths,
               classes=torch.stack([item["classes"] for item in good]),
               scores={name: torch.stack([item["scores"][name] for item in good]) for name in good[0]["scores"]})
    if cfg is not None:
        out["fbank"], out["waves"] = finish_audio(cfg, train, waves, lengths), None
    return out


@functools.lru_cache(maxsize=4)
def every_sample_once(tars: tuple[Path, ...]) -> dict[str, dict[str, int]]:
    """A uniform training epoch as a draw: {tar: {key: 1}} for every sample of these tars (read once
    per process; the caller must not modify it)."""
    return {str(tar): dict.fromkeys(scan_samples(tar), 1) for tar in tars}


class ReferenceLoader(SkipLog):
    """Iterable of batch dicts for one rank and epoch; `skipped` counts left-out samples by reason.

    `start_batch` skips the first batches of the epoch (resume); training yields `len(self)`
    batches on every rank (the smallest rank's count) from this rank's share of the epoch's samples,
    evaluation every sample once.
    """

    def __init__(self, cfg: Config, train: bool, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 start_batch: int = 0) -> None:
        data = cfg.data
        self.cfg, self.train, self.epoch, self.start_batch = cfg, train, epoch, start_batch
        self.rank, self.world_size = rank, world_size
        spec, split = (data.train_shards, data.train_split) if train else (data.eval_shards, data.eval_split)
        all_tars = resolve_shards(spec, split)
        check_shards(all_tars, data.on_error)
        facts = shard_facts(spec, all_tars)
        self.score_size, self.num_classes, self.audio_ext = facts.score_bytes, facts.num_classes, facts.audio_ext
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        super().__init__()
        self.batches_consumed = 0
        self.length: int | None = None
        self.repeats: dict[str, dict[str, int]] | None = None     # training: this rank's share of the draw
        if train:
            self._draw(all_tars, rank, world_size, facts.num_classes)
        else:                                                       # every world_size-th tar, in order
            self.tars = all_tars[rank::world_size]

    def _draw(self, all_tars: list[Path], rank: int, world_size: int, num_classes: int | None) -> None:
        """This training epoch's draw (every sample once, or deteclap.data.balance's with balanced
        sampling), split by draw across the ranks in this epoch's tar order; each rank reads the tars
        its share holds, and `len()` is the smallest share's batch count. Samples without usable
        classes (balanced sampling) are counted by rank 0."""
        data = self.cfg.data
        if self.cfg.finetune.balanced_sampling:
            drawn, bad = epoch_repeats(all_tars, data.seed, self.epoch, data.on_error, num_classes)
        else:
            drawn, bad = every_sample_once(tuple(all_tars)), []
        self.epoch_samples = sum(sum(times.values()) for times in drawn.values()) + len(bad)   # the skip budget's base
        for item in bad if rank == 0 else []:
            self._count(item)
        order = epoch_tar_order(all_tars, data.seed, self.epoch)
        shares = rank_shares(drawn, order, world_size)
        self.repeats = shares[rank]
        self.tars = [tar for tar in order if str(tar) in self.repeats]
        self.length = min(self._train_batches({tar: sum(share.get(str(tar), {}).values()) for tar in all_tars},
                                              [tar for tar in order if str(tar) in share]) for share in shares)

    def _train_batches(self, counts: dict[Path, int], tars: list[Path]) -> int:
        """Full batches a rank yields: each worker batches its own tars and drops its remainder."""
        workers = max(self.cfg.data.num_workers, 1)
        return sum(sum(counts[t] for t in tars[w::workers]) // self.cfg.data.batch_size for w in range(workers))

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("the evaluation loader has no fixed length")
        return self.length

    def state_dict(self) -> dict[str, int]:
        """Data position for resuming: the epoch and the batches consumed in it."""
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        data = self.cfg.data
        preload_decoders()
        dataset = ShardSamples(self.tars, self.cfg, self.train, epoch_seed(data.seed, self.epoch), self.score_size,
                               self.repeats, self.num_classes, self.audio_ext)
        workers = min(data.num_workers, len(self.tars))
        device = "cuda" if torch.cuda.is_available() and self.cfg.run.device != "cpu" else "cpu"
        # on the CPU the workers compute the fbank, SpecAugment and noise (in parallel); on a GPU the
        # main process does it there; mixup mixes waves before the fbank, so it keeps it in finish_batch
        in_workers = device == "cpu" and workers > 0 and not (self.train and data.mixup > 0)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size(self.cfg, self.train), num_workers=workers,
            multiprocessing_context=WORKER_START if workers else None,
            collate_fn=functools.partial(collate, cfg=self.cfg if in_workers else None, train=self.train),
            drop_last=self.train, persistent_workers=False, pin_memory=device == "cuda",
            worker_init_fn=flush_denormals,   # workers do not inherit it (denormals: fbank ~2x slower)
            # the workers' torch seeds (their SpecAugment and noise) come from it: one per epoch and
            # rank, and the global RNG is left alone (resume)
            generator=torch.Generator().manual_seed(epoch_seed(data.seed, self.epoch) * self.world_size + self.rank))
        self.batches_consumed = 0
        for raw in forked_workers(loader):
            for item in raw["skipped"]:
                self._count(item)
            if not raw["keys"]:
                continue
            if self.length is not None and self.batches_consumed >= self.length:
                break
            self.batches_consumed += 1
            if self.batches_consumed <= self.start_batch:
                continue
            batch = finish_batch(self.cfg, self.train, raw["keys"], raw["frames"], raw["waves"], raw["lengths"],
                                 raw["classes"], raw["scores"], device, fbank=raw.get("fbank"), shards=raw["shards"])
            for shard, key in batch.pop("label_failed"):
                self._count(Skipped(shard, key, "label_failed"))
            if batch["keys"]:
                yield batch


def build_loader(cfg: Config, train: bool, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 start_batch: int = 0) -> ReferenceLoader:
    """The reference PyTorch loader (see the module docstring)."""
    return ReferenceLoader(cfg, train, rank, world_size, epoch, start_batch)
