"""What both loaders share (the reference loader, deteclap.data.loader, and DALI's, dali_pipes):
the shard listing of a config (`resolve_shards`, `shard_facts`), the members a config needs,
`DataError` and the skip log of left-out samples (`Skipped`, `SkipLog`, the detail of each bad-sample
reason), and the per-batch work in the main process (`finish_batch`: fbank contract, mixup,
SpecAugment, noise, frame normalisation, targets; label-failure rows removed or raised).
"""

from __future__ import annotations

import contextlib
import glob
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deteclap import audio
from deteclap.config import IMAGE_MEAN, IMAGE_STD, Config
from deteclap.format import storage
from deteclap.format import (AUDIO_EXT, CLASSES_EXT, DATASET_JSON, META_EXT, VIDEO_EXT, FormatError, folder_audio_ext,
                             index_entries, is_score_member, list_tars, load_dataset_json, sample_audio_ext, scan_shard,
                             score_member)

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


def check_shards(tars: list[Path], on_error: str) -> None:
    """Damaged tars and indexes that disagree with their tar (`deteclap.format.scan_shard` problems):
    DataError naming them (on_error=raise), else a warning; the loaders then read what the tar's
    headers hold, and count each sample they lose (`corrupt_tar`, `index_mismatch`, `bad_key`)."""
    for tar in tars:
        problems = scan_shard(tar).problems
        if problems and on_error == "raise":
            raise DataError(f"{storage.location(tar)}: {'; '.join(problems)}. Remove a stale .idx (the loaders "
                            "then read the tar's headers), reshard a damaged tar, or set data.on_error=skip")
        if problems:
            print(f"warning: {storage.location(tar)}: {'; '.join(problems)}: reading the samples its headers hold",
                  file=sys.stderr)


@dataclass
class ShardFacts:
    """What a shard folder's dataset.json tells the loaders; a glob of tars tells nothing (defaults)."""
    format_version: int = 0
    square_side: int | None = None    # frames stored at side x side (encoding `crop`, the default)
    score_bytes: int | None = None    # of every `KEY.<labeller>.f16`: 2 per label_vocabulary class
    codec: str | None = None          # the stored video codec
    num_classes: int | None = None    # bytes of every `KEY.cls`: one per dataset.json `classes` entry
    audio_ext: str = AUDIO_EXT        # the audio member: `wav` (pcm) or `flac`


def wrong_score_sizes(sizes: dict[str, int], expected: int | None) -> str | None:
    """The `bad_scores` detail for a sample's {member ext: byte size}, or None when every label-score
    member holds `expected` bytes (or nothing is expected: no dataset.json). Both loaders use it."""
    wrong = {ext: n for ext, n in sizes.items() if is_score_member(ext) and n != expected}
    if expected is None or not wrong:
        return None
    return f"{wrong} bytes, not {expected} (float16 per class of dataset.json's label_vocabulary)"


def corrupt_reason(ext: str) -> str:
    """The skip reason of a member that does not decode: `corrupt_mp4`, `corrupt_wav`, `corrupt_flac`,
    ... (both loaders name it so)."""
    return f"corrupt_{ext.replace('.', '_')}"


def bad_audio_detail(num_samples: int, rate: float) -> str | None:
    """The `bad_audio` detail of a sample's audio, or None when it is 16 kHz and holds at least one
    fbank window (the shards store 16 kHz; nothing is resampled). Both loaders use it."""
    if rate == audio.SAMPLE_RATE and audio.num_frames(num_samples) > 0:
        return None
    return f"{num_samples} samples at {rate:g} Hz (need >= 1 window at 16 kHz)"


def shard_facts(spec: str, tars: list[Path] | None = None) -> ShardFacts:
    """ShardFacts of a data.*_shards spec: a folder with dataset.json, else a glob (defaults, and the
    audio member the first sample of `tars` holds)."""
    if not storage.is_file(Path(spec) / DATASET_JSON):
        return ShardFacts(audio_ext=_first_audio_ext(tars or []))
    meta = load_dataset_json(spec)
    encoding, vocabulary, classes = meta.get("encoding", {}), meta.get("label_vocabulary"), meta.get("classes")
    return ShardFacts(format_version=meta.get("format_version", 1),
                      square_side=encoding.get("short_side") if encoding.get("crop") else None,
                      score_bytes=None if vocabulary is None else 2 * len(vocabulary),
                      codec=encoding.get("codec"), num_classes=None if classes is None else len(classes),
                      audio_ext=folder_audio_ext(meta))


def _first_audio_ext(tars: list[Path]) -> str:
    """The audio member (AUDIO_EXTS) of the first sample that holds one, from the tars' indexes or
    headers in order (a damaged tar is passed over: its own error comes when it is read); AUDIO_EXT
    when none says (a sample without it is then a missing member). One folder holds one format."""
    for tar in tars:
        try:
            samples = index_entries(tar)
        except (OSError, FormatError):
            continue
        for members in samples.values():
            found = sample_audio_ext({entry[0] for entry in members})
            if found:
                return found
    return AUDIO_EXT


def required_members(cfg: Config, audio_ext: str = AUDIO_EXT) -> list[str]:
    """Member extensions every sample must hold for this config (label scores included), with the
    folder's audio member (ShardFacts.audio_ext) second."""
    from deteclap.data.targets import required_labellers

    if cfg.finetune.task:
        labellers: list[str] = []
    else:
        labellers = list(required_labellers(cfg.labels))
    return [VIDEO_EXT, audio_ext, META_EXT, CLASSES_EXT] + [score_member(name) for name in labellers]


def batch_size(cfg: Config, train: bool) -> int:
    """Samples per batch: data.batch_size in training, eval.batch_size in evaluation."""
    return cfg.data.batch_size if train else cfg.eval.batch_size


# ----------------------------------------------------------------------------------------------
# skipped samples
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
        self.epoch_samples = 0         # the epoch's samples, all ranks (deteclap.data.budget; 0: unknown)
        self._seen: set[tuple[str, str, str]] = set()

    def _count(self, item: Skipped) -> None:
        if (item.shard, item.key, item.reason) not in self._seen:
            self._seen.add((item.shard, item.key, item.reason))
            self.skipped[item.reason] += 1
            self.skipped_samples.append(item)


def normalize_frames(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB [B, 3, H, W] -> float32 CAV-MAE-normalised: torchvision's ToTensor + Normalize ops
    (x / 255, then (x - mean) / std per channel), so the values are the same."""
    mean = torch.tensor(IMAGE_MEAN, device=frames.device).view(3, 1, 1)
    std = torch.tensor(IMAGE_STD, device=frames.device).view(3, 1, 1)
    return frames.to(torch.float32, copy=True).div_(255).sub_(mean).div_(std)


# ----------------------------------------------------------------------------------------------
# per-batch work (main process; shared with the DALI iterator)
@contextlib.contextmanager
def single_cpu_thread(active: bool = True) -> Iterator[int]:
    """Run torch's CPU ops with one intra-op thread inside the block (the setting is restored); the
    block gets the intra-op threads torch had, for work it shares out itself (audio.fbank_batch's rows).

    The batch is finished on the CPU while DataLoader workers or DALI threads decode the next
    ones; torch's OpenMP threads then wait for busy cores, and a batch measured 159 ms on one
    thread took 5.3 s on two (2-core machine, DALI CPU pipeline running)."""
    threads = torch.get_num_threads()
    if active and threads != 1:
        torch.set_num_threads(1)
    try:
        yield threads
    finally:
        if active and threads != 1:
            torch.set_num_threads(threads)


def finish_audio(cfg: Config, train: bool, waves: torch.Tensor, lengths: torch.Tensor,
                 threads: int = 1) -> torch.Tensor:
    """Padded waves [B, S] and their lengths [B] -> the fbank the model takes [B, model.audio_length,
    128], on the waves' device, in CAV-MAE's order: the Kaldi fbank, zero-padded / cut, SpecAugment
    (training, data.freqm / timem: it masks the padded fbank before normalisation), normalisation,
    noise and roll (training, data.noise). `threads`: on the CPU, Python threads sharing the rows."""
    data = cfg.data
    masked = train and bool(data.freqm or data.timem)
    fbank = audio.fbank_batch(waves, lengths, cfg.model.audio_length, normalize=not masked, threads=threads)
    if masked:
        fbank = audio.normalize_fbank(audio.spec_augment(fbank, data.freqm, data.timem))
    if train and data.noise:
        fbank = audio.add_noise_and_roll(fbank, threads=threads)
    return fbank


def finish_batch(cfg: Config, train: bool, keys: list[str], frames: torch.Tensor, waves: torch.Tensor | None,
                 lengths: torch.Tensor, classes: torch.Tensor, scores: dict[str, torch.Tensor],
                 device: torch.device | str = "cpu", fbank: torch.Tensor | None = None,
                 shards: list[str] | None = None) -> dict[str, Any]:
    """Decoded batch -> the batch dict: mixup (training), the fbank (`finish_audio`), frame dtype,
    targets built from the label scores. waves [B, S] padded, lengths [B].

    `fbank` [B, audio_length, 128]: finish_audio's fbank when already computed (in the DataLoader
    workers; `waves` may then be None); only valid without mixup, which mixes the waves first.
    `shards` [B]: each sample's tar, for the DataError of a failed labelling and the
    `label_failed` list of (shard, key). On the CPU this runs on one torch thread (see
    `single_cpu_thread`)."""
    with single_cpu_thread(torch.device(device).type == "cpu") as threads:
        return _finish_batch(cfg, train, keys, frames, waves, lengths, classes, scores, device, fbank,
                             shards or [""] * len(keys), threads)


def _finish_batch(cfg: Config, train: bool, keys: list[str], frames: torch.Tensor, waves: torch.Tensor | None,
                  lengths: torch.Tensor, classes: torch.Tensor, scores: dict[str, torch.Tensor],
                  device: torch.device | str, fbank: torch.Tensor | None, shards: list[str],
                  threads: int) -> dict[str, Any]:
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
        fbank = finish_audio(cfg, train, waves, lengths, threads)
    if train and cfg.finetune.task and cfg.finetune.label_smooth > 0:
        from deteclap.data.targets import smooth_labels

        classes = smooth_labels(classes, cfg.finetune.label_smooth)
    fbank = fbank.to(device, non_blocking=True)
    dtype = torch.float16 if data.frame_dtype == "float16" else torch.float32
    # float16: targets threshold in it; not waiting for the GPU (deteclap.audio)
    scores = {name: value.to(device, non_blocking=True) for name, value in scores.items()}
    targets = build_targets(scores, cfg.labels) if scores else {}
    return {"fbank": fbank, "frames": frames.to(device=device, dtype=dtype), "targets": targets,
            "classes": classes.to(device=device, dtype=torch.float32), "keys": list(keys), "label_failed": failed}


def failed_label_rows(scores: dict[str, torch.Tensor]) -> list[int]:
    """Rows whose stored label scores are NaN: the labeller failed on that sample (labels.store)."""
    bad = torch.zeros(len(next(iter(scores.values()))) if scores else 0, dtype=torch.bool)
    for value in scores.values():
        bad |= torch.isnan(value.float()).any(dim=1).cpu()
    return torch.nonzero(bad).flatten().tolist()
