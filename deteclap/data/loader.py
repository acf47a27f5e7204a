"""Reference PyTorch loader: shard tars -> the batch dict of docs/INTERNALS.md, no DALI needed.

Owns the shard listing shared with dali_pipes (`resolve_shards`, `scan_samples`, `DataError`) and
`build_loader(cfg, train, rank, world_size, epoch)`. Per sample (in DataLoader workers): the tar
is read with python's tarfile (members grouped by the key rule of deteclap.format, WebDataset's),
ONLY the sampled frame decoded (its bytes found in the mp4 sample table,
deteclap.data.mp4, and decoded by a reused decoder), resized and cropped exactly like CAV-MAE
(PIL T.Resize(224, BICUBIC) + CenterCrop, skipped for frames stored at 224 x 224) and kept as
uint8, the FLAC decoded with soundfile. Per batch: ToTensor + Normalize's ops on the frames
(`normalize_frames`), the Kaldi fbank of deteclap.audio on the padded waves (in the workers on the
CPU, in the main process on a GPU or with mixup), SpecAugment / noise in training, targets from
deteclap.data.targets. Workers flush denormals; the main process finishes a batch on one torch
thread on the CPU (`single_cpu_thread`).

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

import contextlib
import functools
import glob
import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deteclap import audio, storage
from deteclap.config import IMAGE_MEAN, IMAGE_STD, Config
from deteclap.device import flush_denormals
from deteclap.format import (AUDIO_EXT, CLASSES_EXT, DATASET_JSON, META_EXT, VIDEO_EXT, index_entries,
                             is_score_member, iter_tar_samples, labeller_of, list_tars,
                             load_dataset_json, score_member)



EPOCH_SEED_STRIDE = 1009  # keeps the (seed, epoch) sample streams of a run apart


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's sample order and augmentation (shared by both loaders)."""
    return seed * EPOCH_SEED_STRIDE + epoch


class DataError(RuntimeError):
    """A bad sample (corrupt or missing member) with on_error=raise; names the shard and key."""


# ----------------------------------------------------------------------------------------------
# shard listing (shared with dali_pipes)
def resolve_shards(spec: str, split: str) -> list[Path]:
    """Tars of one split: `spec` is a shard folder (the tars its dataset.json lists for the split, else
    its `{split}-*.tar`) or a glob of tars.

    Raises:
        FileNotFoundError: nothing matches (the message says what was looked for).
    """
    if not spec:
        raise FileNotFoundError("no shards configured (data.train_shards / data.eval_shards is empty)")
    root = Path(spec)
    if storage.is_url(spec) or root.is_dir():       # a folder, or a folder in object storage
        tars = list_tars(root, split)
        if not tars:
            found = [name for name in storage.list_names(root) if name.endswith(".tar")]
            raise FileNotFoundError(f"{spec}: no `{split}-*.tar` shards (split `{split}`); found {found[:5]}")
        return tars
    tars = sorted(Path(p) for p in glob.glob(spec) if p.endswith(".tar"))
    if not tars:
        raise FileNotFoundError(f"{spec}: no tar file matches")
    return tars


@dataclass
class ShardFacts:
    """What a shard folder's dataset.json tells the loaders; a glob of tars tells nothing (defaults)."""
    format_version: int = 0
    square_side: int | None = None    # frames stored at side x side (encoding `crop`, the default)
    score_bytes: int | None = None    # of every `KEY.<labeller>.f16`: 2 per label_vocabulary class
    codec: str | None = None          # the stored video codec
    num_classes: int | None = None    # bytes of every `KEY.cls`: one per dataset.json `classes` entry


def wrong_score_sizes(sizes: dict[str, int], expected: int | None) -> str | None:
    """The `bad_scores` detail for a sample's {member ext: byte size}, or None when every label-score
    member holds `expected` bytes (or nothing is expected: no dataset.json). Both loaders use it."""
    wrong = {ext: n for ext, n in sizes.items() if is_score_member(ext) and n != expected}
    if expected is None or not wrong:
        return None
    return f"{wrong} bytes, not {expected} (float16 per class of dataset.json's label_vocabulary)"


def bad_audio_detail(num_samples: int, rate: float) -> str | None:
    """The `bad_audio` detail of a decoded FLAC, or None when it is 16 kHz and holds at least one
    fbank window (the shards store 16 kHz; nothing is resampled). Both loaders use it."""
    if rate == audio.SAMPLE_RATE and audio.num_frames(num_samples) > 0:
        return None
    return f"{num_samples} samples at {rate:g} Hz (need >= 1 window at 16 kHz)"


def shard_facts(spec: str) -> ShardFacts:
    """ShardFacts of a data.*_shards spec (a folder with dataset.json, else a glob: defaults)."""
    if not storage.is_file(Path(spec) / DATASET_JSON):
        return ShardFacts()
    meta = load_dataset_json(spec)
    encoding, vocabulary, classes = meta.get("encoding", {}), meta.get("label_vocabulary"), meta.get("classes")
    return ShardFacts(format_version=meta.get("format_version", 1),
                      square_side=encoding.get("short_side") if encoding.get("crop") else None,
                      score_bytes=None if vocabulary is None else 2 * len(vocabulary),
                      codec=encoding.get("codec"), num_classes=None if classes is None else len(classes))


def scan_samples(tar: Path) -> dict[str, set[str]]:
    """{key: member extensions} of a tar, in tar order; read from its .idx when present."""
    return {key: {entry[0] for entry in entries} for key, entries in index_entries(tar).items()}

def required_members(cfg: Config) -> list[str]:
    """Member extensions every sample must hold for this config (label scores included)."""
    from deteclap.data.targets import required_labellers

    if cfg.finetune.task:
        labellers: list[str] = []
    else:
        labellers = list(required_labellers(cfg.labels))
    return [VIDEO_EXT, AUDIO_EXT, META_EXT, CLASSES_EXT] + [score_member(name) for name in labellers]


def batch_size(cfg: Config, train: bool) -> int:
    """Samples per batch: data.batch_size in training, eval.batch_size in evaluation."""
    return cfg.data.batch_size if train else cfg.eval.batch_size


def epoch_tar_order(tars: list[Path], seed: int, epoch: int) -> list[Path]:
    """A training epoch's tar order: a per-epoch seeded shuffle (the reference loader lays the
    epoch's draws out in it before splitting them across ranks, `ReferenceLoader._draw`)."""
    order = list(tars)
    random.Random(seed * 100_003 + epoch).shuffle(order)
    return order


# ----------------------------------------------------------------------------------------------
# per-sample work (DataLoader workers)
@dataclass
class Skipped:
    """A sample left out: its shard, key and reason (travels from the workers to `skipped`)."""
    shard: str
    key: str
    reason: str


class SkipLog:
    """What a loader left out of its epoch: `skipped` {reason: count} and `skipped_samples`. Each
    (shard, key, reason) counts once: a balanced draw can hold a sample several times."""

    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.skipped_samples: list[Skipped] = []
        self._seen: set[tuple[str, str, str]] = set()

    def _count(self, item: Skipped) -> None:
        if (item.shard, item.key, item.reason) not in self._seen:
            self._seen.add((item.shard, item.key, item.reason))
            self.skipped[item.reason] += 1
            self.skipped_samples.append(item)


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


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] -> float32 CAV-MAE-normalised: torchvision's ToTensor + Normalize ops
    (x / 255, then (x - mean) / std per channel), so the values are the same."""
    mean = torch.tensor(IMAGE_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=frames.device).view(3, 1, 1)
    return frames.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)


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


class ShardSamples(torch.utils.data.IterableDataset):
    """Decoded samples (dicts) or `Skipped` markers of one rank's tars, split across workers."""

    def __init__(self, tars: list[Path], cfg: Config, train: bool, seed: int, score_size: int | None = None,
                 repeats: dict[str, dict[str, int]] | None = None) -> None:
        self.tars, self.cfg, self.train, self.seed, self.score_size = tars, cfg, train, seed, score_size
        self.repeats = repeats            # training: this rank's times per sample (absent: 0); None: each once
        self.exts = required_members(cfg)

    def decode(self, tar: Path, key: str, members: dict[str, bytes], rng: random.Random,
               transform: Any) -> dict[str, Any]:
        """One sample's tensors. Raises DataError(reason) for a bad sample."""
        from deteclap.data.decode import DecodeError, decode_audio

        missing = [ext for ext in self.exts if ext not in members]
        if missing:
            raise DataError("missing_member", f"missing members {missing}")
        data = self.cfg.data
        frame_index = rng.randrange(data.num_frames) if self.train else data.eval_frame
        try:
            frame = decode_frame(members[VIDEO_EXT], frame_index)
        except DecodeError as err:
            raise DataError("corrupt_mp4", str(err)) from err
        try:
            wave, rate = decode_audio(members[AUDIO_EXT])
        except DecodeError as err:
            raise DataError("corrupt_flac", str(err)) from err
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

    def _draws(self, tar: Path, key: str, members: dict[str, bytes], times: int, rng: random.Random,
               transform: Any) -> Iterator[Any]:
        """The sample decoded `times` times (a balanced draw can repeat it). A bad one (on_error=skip)
        gives a `Skipped` marker for each draw left, so that the stream keeps its length (and every
        rank its batch count); the loader counts it once."""
        for draw in range(times):
            try:
                yield self.decode(tar, key, members, rng, transform)
            except DataError as err:
                reason, detail = err.args
                if self.cfg.data.on_error == "raise":
                    raise DataError(f"{storage.location(tar)}: sample {key}: {reason}: {detail}") from None
                yield from [Skipped(str(tar), key, reason)] * (times - draw)
                return

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rng = random.Random(self.seed * 1_000_003 + worker)
        transform = frame_transform(self.cfg.model.img_size)
        buffer: list[Any] = []
        size = self.cfg.data.shuffle_buffer if self.train else 0
        for tar in self.tars[worker::workers]:
            drawn = None if self.repeats is None else self.repeats.get(str(tar), {})
            for key, members in iter_tar_samples(tar):
                times = 1 if drawn is None else drawn.get(key, 0)
                for item in self._draws(tar, key, members, times, rng, transform):
                    if size <= 1:
                        yield item
                        continue
                    buffer.append(item)
                    if len(buffer) >= size:
                        yield buffer.pop(rng.randrange(len(buffer)))
        rng.shuffle(buffer)
        yield from buffer


def collate(items: list[Any], fbank_length: int = 0) -> dict[str, Any]:
    """Stack decoded samples; pad waves with their lengths; keep `Skipped` markers aside.

    fbank_length > 0 also computes the (unnormalised) fbank contract of the batch here, in the
    DataLoader worker, so that the workers share the fbank work instead of the main process
    doing it for every batch: `fbank` [B, fbank_length, 128], and `waves` is None.
    """
    skipped = [item for item in items if isinstance(item, Skipped)]
    good = [item for item in items if not isinstance(item, Skipped)]
    out: dict[str, Any] = {"skipped": skipped, "keys": [item["key"] for item in good],
                           "shards": [item["shard"] for item in good]}
    if not good:
        return out
    lengths = torch.tensor([item["wave"].numel() for item in good])
    waves = torch.zeros(len(good), int(lengths.max()))
    for i, item in enumerate(good):
        waves[i, : lengths[i]] = item["wave"]
    out.update(frames=torch.stack([item["frame"] for item in good]), waves=waves, lengths=lengths,
               classes=torch.stack([item["classes"] for item in good]),
               scores={name: torch.stack([item["scores"][name] for item in good]) for name in good[0]["scores"]})
    if fbank_length > 0:      # the waves stay here (20 MB per batch of 32 less to ship to the main process)
        out["fbank"] = audio.fbank_batch(waves, lengths, fbank_length, normalize=False)
        out["waves"] = None
    return out


# ----------------------------------------------------------------------------------------------
# per-batch work (main process; shared with the DALI iterator)
@contextlib.contextmanager
def single_cpu_thread(active: bool = True) -> Iterator[None]:
    """Run torch's CPU ops with one intra-op thread inside the block (the setting is restored).

    The batch is finished on the CPU while DataLoader workers or DALI threads decode the next
    ones; torch's OpenMP threads then wait for busy cores, and a batch measured 159 ms on one
    thread took 5.3 s on two (2-core machine, DALI CPU pipeline running)."""
    threads = torch.get_num_threads()
    if active and threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if active and threads != 1:
            torch.set_num_threads(threads)


def finish_batch(cfg: Config, train: bool, keys: list[str], frames: torch.Tensor, waves: torch.Tensor | None,
                 lengths: torch.Tensor, classes: torch.Tensor, scores: dict[str, torch.Tensor],
                 device: torch.device | str = "cpu", fbank: torch.Tensor | None = None,
                 shards: list[str] | None = None) -> dict[str, Any]:
    """Decoded batch -> the batch dict: fbank contract (+ mixup, SpecAugment, noise in training),
    frame dtype, targets built from the label scores. waves [B, S] padded, lengths [B].

    `fbank` [B, audio_length, 128]: the unnormalised fbank when already computed (in the
    DataLoader workers; `waves` may then be None); only valid without mixup, which mixes the
    waves first. `shards` [B]: each sample's tar, for the DataError of a failed labelling and the
    `label_failed` list of (shard, key). On the CPU this runs on one torch thread (see
    `single_cpu_thread`)."""
    with single_cpu_thread(torch.device(device).type == "cpu"):
        return _finish_batch(cfg, train, keys, frames, waves, lengths, classes, scores, device, fbank,
                             shards or [""] * len(keys))


def _finish_batch(cfg: Config, train: bool, keys: list[str], frames: torch.Tensor, waves: torch.Tensor | None,
                  lengths: torch.Tensor, classes: torch.Tensor, scores: dict[str, torch.Tensor],
                  device: torch.device | str, fbank: torch.Tensor | None, shards: list[str]) -> dict[str, Any]:
    from deteclap.data.targets import build_targets

    if fbank is None and waves is None:
        raise ValueError("finish_batch needs the waves or their precomputed fbank")
    if fbank is not None and train and cfg.data.mixup > 0:
        raise ValueError("a precomputed fbank cannot be used with mixup (mixup mixes the waves)")
    data = cfg.data
    rows = failed_label_rows(scores)
    failed = [(shards[i], keys[i]) for i in rows]
    if failed and data.on_error == "raise":
        more = f" (and {len(failed) - 1} more in this batch)" if len(failed) > 1 else ""
        raise DataError(f"{failed[0][0]}: sample {failed[0][1]}: label_failed: label scores are NaN (its labelling "
                        f"failed, see dataset.json label_failures){more}; relabel or set data.on_error=skip")
    if failed:
        keep = torch.ones(len(keys), dtype=torch.bool)
        keep[rows] = False
        keys = [k for k, kept in zip(keys, keep.tolist()) if kept]
        frames, lengths, classes = frames[keep], lengths[keep], classes[keep]
        waves = None if waves is None else waves[keep]
        scores = {name: value[keep] for name, value in scores.items()}
        fbank = None if fbank is None else fbank[keep]
    if not keys:                               # every sample's labels failed: nothing left
        return {"keys": [], "label_failed": failed}
    frames = frames.to(device, non_blocking=True)
    if frames.dtype == torch.uint8:            # the reference loader's frames (DALI's come normalised)
        frames = normalize_frames(frames)
    classes = classes.to(device=device, dtype=torch.float32, non_blocking=True)
    if fbank is None:
        waves = waves.to(device, non_blocking=True)
        if train and data.mixup > 0:
            from deteclap.data.mixup import mixup_batch

            waves, frames, classes = mixup_batch(waves, lengths, frames.float(), classes, data.mixup)
        fbank = audio.fbank_batch(waves, lengths, cfg.model.audio_length, normalize=False)
    if train and cfg.finetune.task and cfg.finetune.label_smooth > 0:
        from deteclap.data.targets import smooth_labels

        classes = smooth_labels(classes, cfg.finetune.label_smooth)
    fbank = fbank.to(device, non_blocking=True)
    if train and (data.freqm or data.timem):
        fbank = audio.spec_augment(fbank, data.freqm, data.timem)
    fbank = audio.normalize_fbank(fbank)
    if train and data.noise:
        fbank = audio.add_noise_and_roll(fbank)
    dtype = torch.float16 if data.frame_dtype == "float16" else torch.float32
    scores = {name: value.to(device) for name, value in scores.items()}   # float16: targets threshold in it
    targets = build_targets(scores, cfg.labels) if scores else {}
    return {"fbank": fbank, "frames": frames.to(device=device, dtype=dtype), "targets": targets,
            "classes": classes.to(device=device, dtype=torch.float32), "keys": list(keys), "label_failed": failed}


def failed_label_rows(scores: dict[str, torch.Tensor]) -> list[int]:
    """Rows whose stored label scores are NaN: the labeller failed on that sample (labels.store)."""
    bad = torch.zeros(len(next(iter(scores.values()))) if scores else 0, dtype=torch.bool)
    for value in scores.values():
        bad |= torch.isnan(value.float()).any(dim=1).cpu()
    return torch.nonzero(bad).flatten().tolist()


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
        spec, split = (data.train_shards, data.train_split) if train else (data.eval_shards, data.eval_split)
        all_tars = resolve_shards(spec, split)
        facts = shard_facts(spec)
        self.score_size = facts.score_bytes
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
        from deteclap.data.balance import epoch_repeats, rank_shares

        data = self.cfg.data
        if self.cfg.finetune.balanced_sampling:
            drawn, bad = epoch_repeats(all_tars, data.seed, self.epoch, data.on_error, num_classes)
        else:
            drawn, bad = every_sample_once(tuple(all_tars)), []
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
                               self.repeats)
        workers = min(data.num_workers, len(self.tars))
        device = "cuda" if torch.cuda.is_available() and self.cfg.run.device != "cpu" else "cpu"
        # on the CPU the workers compute the fbank (in parallel); on a GPU the main process does
        # it there; mixup mixes waves before the fbank, so it keeps the fbank in finish_batch
        in_workers = device == "cpu" and workers > 0 and not (self.train and data.mixup > 0)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=batch_size(self.cfg, self.train), num_workers=workers,
            collate_fn=functools.partial(collate, fbank_length=self.cfg.model.audio_length if in_workers else 0),
            drop_last=self.train, persistent_workers=False, pin_memory=device == "cuda",
            worker_init_fn=flush_denormals,   # workers do not inherit it (denormals: fbank ~2x slower)
            generator=torch.Generator().manual_seed(data.seed))  # leaves the global RNG alone (resume)
        self.batches_consumed = 0
        for raw in loader:
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
