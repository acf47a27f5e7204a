"""Run the dali_pipes pipelines as a PyTorch iterable of batch dicts (docs/INTERNALS.md).

`build_dali_loader(cfg, train, rank, world_size, epoch, start_batch, device)`: a `DaliLoader`
wrapping `DALIGenericIterator` (reader_name drives the epoch size; training drops the partial
batch, LastBatchPolicy.DROP; evaluation keeps it, LastBatchPolicy.PARTIAL). Right after the
pipeline the padded waves go through deteclap.audio's Kaldi fbank (on the GPU in GPU mode), and
the label scores through deteclap.data.targets.build_targets (shared with the reference loader via
deteclap.data.common.finish_batch). Keys come from the `source_info` of each sample's mp4 member
("TAR:OFFSET:KEY.mp4"), so no JSON is parsed.

Bad samples. A DALI pipeline cannot drop a sample once it has failed: an operator error kills the
whole pipeline ("Current pipeline object is no longer valid"). DALI's error text names the member
("TAR:OFFSET:KEY.ext"), and for a missing member at build time only the tar ("Underful sample").
A shard path may hold spaces: the member is found by the loader's own tar paths in the text.
A video frame whose cut (dali_pipes.pipelines.cut_frame) is empty, lies in a truncated mp4 or
lacks the codec's frame marker is named too. `KEY.wav` audio is read without a decoder, so it
cannot fail in the pipeline: its header comes out beside the wave and is checked after it
(`corrupt_wav`, deteclap.format.wav_problem). DALI's audio decoder names no sample when a FLAC is
empty or not a FLAC ("Format not recognised"): on an error naming no sample (and only then) the
FLAC members read this epoch are checked for the b"fLaC" magic, and a bad one is named
(`corrupt_flac`). Damage inside a frame's bytes fails in DALI's decoder without a name: an error
this check does not explain is re-raised with a note pointing to `python -m deteclap.shard --verify`.
Found from the index before any decoding: label-score members of the wrong size (`bad_scores`) and
frame tables too short for the sampled frames (`corrupt_mp4`). After the pipeline: audio that is
not 16 kHz or shorter than one fbank window (`bad_audio`, dropped from its batch, as the reference
loader drops it).
- data.on_error=raise: `DataError` naming the shard and key (for a missing member the tar is
  scanned to find the key, for a bad FLAC the FLAC headers).
- data.on_error=skip: samples missing a member or found bad from the index are left out of the
  (filtered) index files given to the reader, counted once (by rank 0); `bad_audio` rows are
  dropped and counted by the rank that reads them; a sample that fails to decode is
  counted (`corrupt_mp4`, `corrupt_flac`, ...), its key is removed from the index and the pipeline
  is rebuilt, replaying the batches already yielded in this epoch without yielding them again.
  Limits: the replay is exact for evaluation (no shuffle, one rank); in training and with several
  ranks, removing a sample changes the shuffle / shard boundaries of the rest of that epoch.

Video decoder (GPU pipelines, `data.video_decode`): `cpu` decodes with DALI's CPU decoder and moves
the frames to the GPU (resize, normalisation and the fbank stay there); `gpu` and `auto` use NVDEC
when dali_pipes.nvdec finds one that decodes the shards' VP9. Without one, `gpu` raises
`HardwareError` and `auto` falls back to the CPU decoder once per process, with a warning naming the
reason (`loader.video_fallback`, written to the run's summary.json by deteclap/train.py). A pipeline
error while NVDEC decodes is told apart from bad data before anything is counted: a sample it
names is decoded again on the CPU (PyAV), and one that decodes there is a decoder or driver
failure, as is an error naming no sample that names the decoder or comes with no usable NVDEC;
`auto` then rebuilds the pipeline once with the CPU decoder, `gpu` raises HardwareError saying what
to do. DALI's CPU threads: `data.dali_threads` (0: the cores available per rank, `dali_threads`).
The waves come out of DALI as int16 and are scaled to float where the fbank runs.

Balanced sampling (`finetune.balanced_sampling`, training): the index files list each sample as
often as deteclap.data.balance drew it this epoch.
"""

from __future__ import annotations

import functools
import gc
import os
import re
import sys
import tempfile
import traceback
import warnings
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from dali_pipes.nvdec import probe_nvdec
from dali_pipes.pipelines import IVF_FOURCC, OUTPUTS, READER_NAME, WAV_HEAD, PipeSpec, eval_pipeline, train_pipeline
from deteclap.format import storage
from deteclap.config import Config
from deteclap.data.common import (DataError, Skipped, SkipLog, bad_audio_detail, batch_size, check_shards,
                                  corrupt_reason, epoch_seed, finish_batch, required_members, resolve_shards,
                                  shard_facts, wrong_score_sizes)
from deteclap.format import (CLASSES_EXT, FRAME_TABLE_EXT, PCM_SCALE, WAV_EXT, frame_table_problem, index_entries,
                             index_path, is_score_member, labeller_of, scan_shard, split_member_name, wav_problem,
                             write_index)

# "OFFSET:NAME" after "TAR:"; NAME (a member name) ends before a quote, space, colon or a sentence's dot
MEMBER = r"(?P<offset>\d+):(?P<name>[^\s\"':]+?)\.?(?=[\s\"':]|$)"
SOURCE_RE = re.compile(r"(?P<tar>[^\s\"']+\.tar):" + MEMBER)                   # a tar path without spaces
UNDERFUL_RE = re.compile(r"Underful sample detected at tar file at \"(?P<tar>[^\"]+)\"")
FLAC_MAGIC = b"fLaC"                # the first bytes of every FLAC stream
# words of DALI / CUDA errors that come from the decoder's hardware or driver, not from a sample
HARDWARE_WORDS = ("nvcuvid", "nvdec", "cuvid", "cuda driver", "cuda-capable", "cuda_error", "decoder caps")
# device id -> why NVDEC is not used in this process (data.video_decode=auto fell back once)
_NVDEC_FALLBACK: dict[int, str] = {}


class HardwareError(RuntimeError):
    """The GPU's video decoder (NVDEC) or its driver failed on data that decodes on the CPU."""


def dali_threads(setting: int) -> int:
    """DALI's CPU threads per pipeline: `data.dali_threads`, or (0) the cores this process may use
    divided by the ranks on this machine (LOCAL_WORLD_SIZE, set by torchrun / the deepspeed launcher)."""
    if setting > 0:
        return setting
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def fall_back_to_cpu_decoder(device_id: int, reason: str) -> None:
    """Record for this process that NVDEC is not used on `device_id`, and say so loudly (once)."""
    if device_id in _NVDEC_FALLBACK:
        return
    _NVDEC_FALLBACK[device_id] = reason
    message = (f"data.video_decode=auto: NVDEC is not usable on GPU {device_id} ({reason}); decoding video "
               f"frames with DALI's CPU decoder instead (frames moved to the GPU; resize, fbank and the rest "
               f"stay there). Expect a lower clips/s; data.video_decode=gpu makes this an error.")
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    print(f"WARNING: {message}", file=sys.stderr, flush=True)


def choose_video_decoder(setting: str, gpu: bool, device_id: int | None,
                         probe: Any = probe_nvdec) -> tuple[str, str | None]:
    """("mixed" | "cpu", why NVDEC is not used when `data.video_decode=auto` fell back, else None).

    A CPU pipeline decodes on the CPU. A GPU pipeline: `cpu` asks for the CPU decoder; `gpu` and
    `auto` ask `probe(device_id)` (dali_pipes.nvdec: None when NVDEC decodes the shards' VP9) unless
    this process already fell back; `gpu` raises HardwareError where `auto` falls back (once per
    process and device: later epochs' loaders keep the CPU decoder without asking again)."""
    if not gpu or setting == "cpu":
        return "cpu", None
    device = device_id or 0
    if setting == "auto" and device in _NVDEC_FALLBACK:
        return "cpu", _NVDEC_FALLBACK[device]
    reason = probe(device)
    if reason is None:
        return "mixed", None
    if setting == "gpu":
        raise HardwareError(f"data.video_decode=gpu: NVDEC cannot decode the shards' VP9 on GPU {device}: {reason}. "
                            f"Run on a GPU with NVDEC (a whole GPU or a MIG slice with decoders, the driver's "
                            f"video library libnvcuvid.so.1 installed), or set data.video_decode=auto or cpu")
    fall_back_to_cpu_decoder(device, reason)
    return "cpu", reason


def parse_bad_member(message: str, tars: Iterable[str] = ()) -> tuple[str, str, str] | None:
    """(tar, key, reason) of the member a DALI error names ("TAR:OFFSET:KEY.EXT"), or None. One of
    `tars` is found by its path (which may hold spaces; the longest that matches), another tar by
    SOURCE_RE."""
    for tar in sorted(tars, key=len, reverse=True):
        match = re.search(re.escape(tar) + ":" + MEMBER, message)
        if match is not None:
            break
    else:
        match = SOURCE_RE.search(message)
        if match is None:
            return None
        tar = match["tar"]
    key, ext = split_member_name(match["name"])
    if not ext:
        return None
    return tar, key, corrupt_reason(ext)


def _dali_error_text(err: BaseException) -> str:
    """The useful lines of a DALI error (its first line and the 'encountered:' part)."""
    text = str(err)
    return text.split("encountered:", 1)[-1].strip().splitlines()[0] if "encountered:" in text else text


def frame_table_problems(tar: str, needed: int) -> dict[str, str]:
    """{key: problem} of a tar's samples whose KEY.frames is not their mp4's frame table for `needed`
    frames (deteclap.format.frame_table_problem). Cached per tar version (storage.stamp): a loader
    is built per epoch, and reading the tables again would cost every rank one seek and read per
    sample of the data set at every epoch's start; only the problems are kept."""
    stamp = storage.stamp(tar)
    if stamp is None:
        raise FileNotFoundError(f"{tar}: no such shard")
    return _frame_table_problems(tar, stamp, needed)


@functools.cache
def _frame_table_problems(tar: str, stamp: tuple[int, str], needed: int) -> dict[str, str]:
    """frame_table_problems of one version of a tar: each table (a few dozen bytes) read at its offset."""
    problems = {}
    with storage.open_file(tar) as handle:
        for key, members in scan_shard(tar).entries.items():
            places = {ext: (offset, size) for ext, offset, size, _ in members}
            if FRAME_TABLE_EXT not in places:
                continue
            offset, size = places[FRAME_TABLE_EXT]
            handle.seek(offset)
            problem = frame_table_problem(handle.read(size), places.get("mp4", (0, 0))[1], needed)
            if problem:
                problems[key] = problem
    return problems


class DaliLoader(SkipLog):
    """Iterable of batch dicts from a DALI pipeline; `skipped` counts left-out samples by reason."""

    def __init__(self, cfg: Config, train: bool, rank: int = 0, world_size: int = 1, epoch: int = 0,
                 start_batch: int = 0, device: str = "auto") -> None:
        data = cfg.data
        self.cfg, self.train, self.rank, self.world_size = cfg, train, rank, world_size
        self.epoch, self.start_batch = epoch, start_batch
        if device == "auto":
            device = data.dali_device
        if device == "auto":
            device = "gpu" if torch.cuda.is_available() else "cpu"
        self.gpu = device == "gpu"
        self.device_id = torch.cuda.current_device() if self.gpu else None
        self.video_decoder, self.video_fallback = choose_video_decoder(data.video_decode, self.gpu, self.device_id)
        spec, split = (data.train_shards, data.train_split) if train else (data.eval_shards, data.eval_split)
        self.tars = resolve_shards(spec, split)
        check_shards(self.tars, data.on_error)
        facts = shard_facts(spec, self.tars)
        self.resize = facts.square_side != cfg.model.img_size
        self.score_size, self.num_classes, self.audio_ext = facts.score_bytes, facts.num_classes, facts.audio_ext
        self.exts = required_members(cfg, self.audio_ext)
        self.score_names = [labeller_of(ext) for ext in self.exts if is_score_member(ext)]
        super().__init__()
        self.excluded: set[tuple[str, str]] = set()
        self.batches_consumed = 0
        self._index_dir: tempfile.TemporaryDirectory | None = None
        self._pipes: list[weakref.ref] = []       # the pipelines this loader built (see __iter__)
        # from the tars' headers, checked (deteclap.format.scan_shard): a damaged tar or a stale index
        # is read through index copies holding only its whole samples, never through its own .idx.
        # DALI reads s3:// tars and (2.4+) index files itself: keys are URLs, not pathlib's collapsed form
        scans = {storage.location(tar): scan_shard(tar) for tar in self.tars}
        self.entries = {tar: scan.entries for tar, scan in scans.items()}
        self.own_index_usable = not any(scan.problems or scan.bad for scan in scans.values())
        # decode only the sampled frame (dali_pipes.pipelines.cut_frame): format-2 shards all hold
        # KEY.frames (one without it is a missing member); a glob of tars when every sample has it
        if facts.format_version >= 2 or (facts.format_version == 0 and self._all_have(FRAME_TABLE_EXT)):
            self.exts.insert(4, FRAME_TABLE_EXT)
        self.codec = facts.codec or self._video_codec()
        if FRAME_TABLE_EXT in self.exts and self.codec not in IVF_FOURCC:
            raise DataError(f"{spec}: {self.codec} video: the DALI pipelines cut frames out of "
                            f"{sorted(IVF_FOURCC)} mp4s (python -m deteclap.shard writes those)")
        self.repeats: dict[str, dict[str, int]] | None = None      # balanced sampling: {tar: {key: times}}
        if train and cfg.finetune.balanced_sampling:
            from deteclap.data.balance import epoch_repeats

            self.repeats, bad = epoch_repeats(self.tars, data.seed, epoch, data.on_error, facts.num_classes)
            for item in bad:
                if rank == 0:
                    self._count(item)
                self.excluded.add((item.shard, item.key))
        for tar, scan in scans.items():     # samples a tar cannot give (damage, bad keys, index-only)
            for key, (reason, detail) in scan.bad.items():
                if data.on_error == "raise":
                    raise DataError(f"{tar}: sample {key}: {reason}: {detail}")
                if rank == 0:
                    self._count(Skipped(tar, key, reason))
        # the skip budget's base (deteclap.data.budget): the samples read, and those left out before
        # reading (balanced sampling's bad draws hold the unreadable ones too, so a set)
        unreadable = {(tar, key) for tar, scan in scans.items() for key in scan.bad}
        self.epoch_samples = self.num_samples() + len(self.excluded | unreadable)
        self._check_members()

    def _all_have(self, ext: str) -> bool:
        return all(ext in {m[0] for m in members} for samples in self.entries.values() for members in samples.values())

    def _video_codec(self) -> str:
        """Without dataset.json: the codec of the first mp4 whose sample table reads (else vp9)."""
        from deteclap.data.mp4 import Mp4LayoutError, read_samples

        for tar, samples in self.entries.items():
            for members in samples.values():
                for ext, offset, size, _ in members:
                    if ext != "mp4":
                        continue
                    with open(tar, "rb") as handle:
                        handle.seek(offset)
                        try:
                            return read_samples(handle.read(size))[0].codec
                        except (Mp4LayoutError, IndexError):
                            continue           # a bad sample: its own error comes when it is read
        return "vp9"

    # -- sample bookkeeping --------------------------------------------------------------------
    def _check_members(self) -> None:
        """From the index alone, over the samples read this epoch: label-score members of the wrong
        size, frame tables too short for the frames the config samples (DataError naming shard and
        key, or skipped) and, with on_error=skip, samples missing a member; skipped ones are left
        out of the index and counted by rank 0 (with on_error=raise DALI itself refuses a missing
        member)."""
        skip = self.cfg.data.on_error == "skip"
        data = self.cfg.data
        needed = data.num_frames if self.train else data.eval_frame + 1     # frames the table must hold
        for tar, samples in self.entries.items():
            table_problems = frame_table_problems(tar, needed) if FRAME_TABLE_EXT in self.exts else {}
            for key, members in samples.items():
                if not self._times(tar, key):
                    continue                  # not read this epoch (not drawn, or already counted)
                sizes = {m[0]: m[2] for m in members}
                problem = None
                wrong = wrong_score_sizes({e: n for e, n in sizes.items() if e in self.exts}, self.score_size)
                cls = sizes.get(CLASSES_EXT)
                if wrong:
                    problem = ("bad_scores", wrong)
                elif key in table_problems:
                    problem = ("corrupt_mp4", f"its {FRAME_TABLE_EXT} member is not the mp4's frame table: "
                                              f"{table_problems[key]}")
                elif cls is not None and self.num_classes is not None and cls != self.num_classes:
                    problem = ("bad_classes", f"{CLASSES_EXT} of {cls} bytes, not one per class of dataset.json's "
                                              f"{self.num_classes}")
                elif not set(self.exts) <= set(sizes):
                    problem = ("missing_member", f"missing {sorted(set(self.exts) - set(sizes))}")
                if problem and (not skip) and problem[0] != "missing_member":   # (DALI names those itself)
                    raise DataError(f"{tar}: sample {key}: {problem[0]}: {problem[1]}")
                if problem and skip:
                    self.excluded.add((tar, key))
                    if self.rank == 0:
                        self._count(Skipped(tar, key, problem[0]))

    def _times(self, tar: str, key: str) -> int:
        """How often the reader lists a sample this epoch (0: excluded or not drawn)."""
        if (tar, key) in self.excluded:
            return 0
        return 1 if self.repeats is None else self.repeats.get(tar, {}).get(key, 0)

    def num_samples(self) -> int:
        """Samples the reader sees (all ranks together), excluded ones left out, drawn ones repeated."""
        return sum(self._times(tar, key) for tar, samples in self.entries.items() for key in samples)

    def __len__(self) -> int:
        """Training: full batches every rank yields (DALI's smallest shard); evaluation: this rank's."""
        total, batch = self.num_samples(), batch_size(self.cfg, self.train)
        shard_sizes = [(i + 1) * total // self.world_size - i * total // self.world_size
                       for i in range(self.world_size)]
        if self.train:
            return min(shard_sizes) // batch
        return -(-shard_sizes[self.rank] // batch)

    def state_dict(self) -> dict[str, int]:
        """Data position for resuming: the epoch and the batches consumed in it."""
        return {"epoch": self.epoch, "batches_consumed": self.batches_consumed}

    # -- pipeline ------------------------------------------------------------------------------
    def _reader_files(self) -> tuple[list[str], list[str]]:
        """(tars, index files) for the reader: the tars' own .idx files (none when one is missing), or
        written copies once samples are excluded or drawn (balanced sampling: a sample drawn n times
        is listed n times); a tar left with no sample is dropped (DALI refuses an empty index)."""
        if not self.excluded and self.repeats is None and self.own_index_usable:
            paths = [index_path(Path(tar)) for tar in self.entries]
            return list(self.entries), ([storage.location(p) for p in paths]
                                        if all(storage.is_file(p) for p in paths) else [])
        if self._index_dir is None:
            self._index_dir = tempfile.TemporaryDirectory(prefix="deteclap-idx-")
        tars, paths = [], []
        for i, (tar, samples) in enumerate(self.entries.items()):
            listed = [members for key, members in samples.items() for _ in range(self._times(tar, key))]
            if listed:
                path = Path(self._index_dir.name) / f"{i:06d}.idx"
                write_index(path, listed)
                tars.append(tar)
                paths.append(str(path))
        return tars, paths

    def spec(self) -> PipeSpec:
        data = self.cfg.data
        tars, index_paths = self._reader_files()
        return PipeSpec(
            tars=tars, exts=self.exts, index_paths=index_paths,
            batch_size=batch_size(self.cfg, self.train), num_threads=dali_threads(data.dali_threads),
            device_id=self.device_id, video_decoder=self.video_decoder,
            shard_id=self.rank, num_shards=self.world_size, seed=epoch_seed(data.seed, self.epoch),
            shuffle=self.train, initial_fill=max(data.shuffle_buffer, 1),
            missing_component_behavior="error", img_size=self.cfg.model.img_size,
            frame_dtype=data.frame_dtype, num_frames=data.num_frames, eval_frame=data.eval_frame,
            pad_last_batch=not self.train, codec=self.codec, resize=self.resize,
            # a CPU pipeline's threads share the cores with the fbank of the batch before: a second
            # batch in flight only delays an epoch's first batch (1: 5 % more clips/s on 2 cores)
            prefetch_queue_depth=2 if self.gpu else 1)

    def _iterator(self) -> Any:
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

        spec = self.spec()
        pipe = train_pipeline(spec) if self.train else eval_pipeline(spec)
        self._pipes = [ref for ref in self._pipes if ref() is not None] + [weakref.ref(pipe)]
        policy = LastBatchPolicy.DROP if self.train else LastBatchPolicy.PARTIAL
        try:
            return DALIGenericIterator([pipe], self.output_names(), reader_name=READER_NAME,
                                       last_batch_policy=policy, auto_reset=False)
        except RuntimeError as err:
            del pipe                                       # not kept alive by the error (see __iter__)
            traceback.clear_frames(err.__traceback__)
            match = UNDERFUL_RE.search(str(err))
            if match is None:
                raise
            tar = match["tar"]
            samples = self.entries.get(tar) or index_entries(Path(tar))
            bad = {k: sorted(set(self.exts) - {m[0] for m in ms}) for k, ms in samples.items()
                   if not set(self.exts) <= {m[0] for m in ms}}
            raise DataError(f"{tar}: missing_member: samples with missing members (key: missing): {bad}") from err

    def output_names(self) -> list[str]:
        """The pipeline's outputs: OUTPUTS, the WAV header for `KEY.wav` shards, the label scores."""
        return list(OUTPUTS) + ([WAV_HEAD] if self.audio_ext == WAV_EXT else []) + self.score_names

    def _member_size(self, tar: str, key: str, ext: str) -> int:
        """A member's byte count from the index this epoch read."""
        size = next((m[2] for m in self.entries.get(tar, {}).get(key, []) if m[0] == ext), None)
        if size is None:            # DALI delivered a sample its own index does not list
            raise DataError(f"{tar}: sample {key}: its {ext} member is not in the index the loader read")
        return size

    def _drop_bad_audio(self, out: dict[str, Any], tars: list[str], keys: list[str]) -> list[int]:
        """Rows whose WAV header is not the format's (`corrupt_wav`, checked against the member's size
        in the index) or whose audio is not 16 kHz or shorter than one fbank window (`bad_audio`), as
        the reference loader refuses them: DataError naming shard and key, or counted; the kept rows.
        From the CPU values DALI returns, no host sync."""
        rates, lengths = out["rates"].view(-1).tolist(), out["lengths"].view(-1).tolist()
        heads = out[WAV_HEAD].numpy() if WAV_HEAD in out else None
        keep = []
        for row, (rate, length) in enumerate(zip(rates, lengths)):
            reason, detail = "bad_audio", None
            if heads is not None:
                detail = wav_problem(heads[row].tobytes(), self._member_size(tars[row], keys[row], WAV_EXT))
                reason = corrupt_reason(WAV_EXT) if detail else reason
            detail = detail or bad_audio_detail(int(length), rate)
            if detail is None:
                keep.append(row)
                continue
            if self.cfg.data.on_error == "raise":
                raise DataError(f"{tars[row]}: sample {keys[row]}: {reason}: {detail}")
            self._count(Skipped(tars[row], keys[row], reason))
        return keep

    def _finish(self, out: dict[str, Any]) -> dict[str, Any]:
        sources = [bytes(row).rstrip(b"\0").decode() for row in out["source"].cpu().numpy()]
        parts = [source.rsplit(":", 2) for source in sources]      # "TAR:OFFSET:NAME" per sample
        tars = [tar for tar, _, _ in parts]
        keys = [split_member_name(name)[0] for _, _, name in parts]
        keep = self._drop_bad_audio(out, tars, keys)
        if not keep:
            return {"keys": []}
        if len(keep) < len(keys):
            rows = torch.tensor(keep, dtype=torch.long)
            out = {name: value.index_select(0, rows.to(value.device)) for name, value in out.items()}
            keys, tars = [keys[row] for row in keep], [tars[row] for row in keep]
        device = out["frames"].device
        scores = {name: out[name] for name in self.score_names}
        out.pop(WAV_HEAD, None)
        # int16 -> float32 in one pass, where DALI put them (a float32 scale: not the default dtype)
        waves = torch.mul(out["waves"], torch.tensor(PCM_SCALE, dtype=torch.float32))
        batch = finish_batch(self.cfg, self.train, keys, out["frames"], waves, out["lengths"].view(-1),
                             out["classes"], scores, device, shards=tars)
        for tar, key in batch.pop("label_failed"):
            self._count(Skipped(tar, key, "label_failed"))
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._batches()
        finally:
            # A pipeline is freed when its epoch ends, unless a reference cycle holds it (an error's
            # traceback, ...): the cyclic garbage collector then frees it, and left for later, it may
            # do so in a process forked meanwhile (a DataLoader worker), where the pipeline's threads
            # do not exist: its shutdown then waits for them forever. So a pipeline still alive here is
            # collected now. (Not every epoch: a full collection walks every object of the process,
            # 50-60 ms with torch and DALI loaded.)
            if any(pipe() is not None for pipe in self._pipes):
                gc.collect()

    def _batches(self) -> Iterator[dict[str, Any]]:
        limit = len(self) if self.train else None
        self.batches_consumed = 0
        while True:
            try:
                dali_iter, replayed = self._iterator(), 0     # builds and prefetches: may fail
            except DataError:
                raise
            except RuntimeError as err:
                self._handle(err)
                continue
            while limit is None or self.batches_consumed < limit:
                try:
                    out = next(dali_iter)[0]
                except StopIteration:
                    return
                except RuntimeError as err:
                    self._handle(err)
                    break                    # rebuilt below, without the bad sample
                if replayed < self.batches_consumed:
                    replayed += 1            # yielded before the rebuild
                    continue
                self.batches_consumed += 1
                replayed += 1
                if self.batches_consumed > self.start_batch and out["frames"].shape[0] > 0:
                    batch = self._finish(out)  # (PARTIAL can end a shard with an empty batch)
                    if batch["keys"]:          # (every sample's labels or audio failed: nothing left)
                        yield batch
            else:
                return

    def _bad_flacs(self) -> list[tuple[str, str, str]]:
        """(tar, key, problem) of each FLAC member read this epoch that is empty or does not start
        with FLAC_MAGIC (DALI's audio decoder refuses those naming no sample), from its first bytes
        read at its tar offset. Called only after DALI raised an error naming no sample."""
        bad = []
        for tar, samples in self.entries.items():
            with open(tar, "rb") as handle:
                for key, members in samples.items():
                    if not self._times(tar, key):
                        continue
                    for ext, offset, size, _ in members:
                        if ext != "flac":
                            continue
                        handle.seek(offset)
                        head = handle.read(min(size, len(FLAC_MAGIC)))
                        if head != FLAC_MAGIC:
                            bad.append((tar, key, f"its flac member ({size} bytes) does not start "
                                                  f"with {FLAC_MAGIC!r} (starts with {head!r})"))
        return bad

    def _decodes_on_cpu(self, tar: str, key: str) -> bool:
        """Whether the sample's mp4 decodes with the reference loader's CPU decoder (PyAV), every frame."""
        from deteclap.data.decode import DecodeError, decode_video_frames

        member = next((m for m in self.entries.get(tar, {}).get(key, []) if m[0] == "mp4"), None)
        if member is None:
            return False
        with open(tar, "rb") as handle:
            handle.seek(member[1])
            data = handle.read(member[2])
        try:
            return len(decode_video_frames(data)) > 0
        except DecodeError:
            return False

    def _nvdec_failure(self, err: RuntimeError, bad: tuple[str, str, str] | None) -> str | None:
        """Why an error of a pipeline decoding with NVDEC is the decoder's, not the data's (None: it may
        be the data's). A sample it names is decoded again on the CPU first: one that decodes there is
        not bad data. An error naming no sample is the decoder's when it says so (HARDWARE_WORDS) or
        when dali_pipes.nvdec finds no usable NVDEC. (Damage inside a frame's bytes names no sample
        either, and NVDEC may report it in its own words: with `auto` the CPU decoder then meets the
        same frame, and that error is reported as data's.)"""
        text = _dali_error_text(err)
        if bad is not None:
            tar, key, reason = bad
            if reason == "corrupt_mp4" and self._decodes_on_cpu(tar, key):
                return f"NVDEC failed on {tar}: sample {key}, which decodes on the CPU (DALI: {text})"
            return None
        if any(word in str(err).lower() for word in HARDWARE_WORDS):
            return f"the GPU video decoder failed (DALI: {text})"
        probed = probe_nvdec(self.device_id or 0)
        return None if probed is None else f"{probed} (DALI: {text})"

    def _handle(self, err: RuntimeError) -> None:
        """A pipeline error: raise DataError naming shard and key, or count and exclude (skip). An
        error naming no sample is explained by the FLAC headers when one is bad (see _bad_flacs).
        With NVDEC decoding, a decoder or driver failure is told apart from bad data first
        (_nvdec_failure): data.video_decode=auto falls back to the CPU decoder for good (the pipeline
        is rebuilt once), gpu raises HardwareError; it is never counted as a bad sample."""
        traceback.clear_frames(err.__traceback__)   # its frames' locals hold the failed pipeline (see __iter__)
        bad = parse_bad_member(str(err), self.entries)
        if self.video_decoder == "mixed" and (reason := self._nvdec_failure(err, bad)) is not None:
            if self.cfg.data.video_decode == "gpu":
                raise HardwareError(
                    f"{reason}. This is a hardware or driver problem, not bad data: check `nvidia-smi` and "
                    f"`python -m dali_pipes.nvdec`, run on a GPU with NVDEC, or set data.video_decode=auto "
                    f"(falls back to DALI's CPU decoder) or cpu") from err
            fall_back_to_cpu_decoder(self.device_id or 0, reason)
            self.video_decoder, self.video_fallback = "cpu", reason
            return
        if bad is None:
            flacs = self._bad_flacs()
            if not flacs:
                err.add_note("DALI names no sample in this error. If it is bad data (e.g. damage inside a video "
                             "frame's bytes), `python -m deteclap.shard --verify SHARDS` finds it and "
                             "data.loader=reference names it.")
                raise err
            if self.cfg.data.on_error == "raise":
                tar, key, problem = flacs[0]
                detail = f"{problem}; DALI: {_dali_error_text(err)}"
                raise DataError(f"{tar}: sample {key}: corrupt_flac: {detail}") from err
            for tar, key, _ in flacs:
                self._count(Skipped(tar, key, "corrupt_flac"))
                self.excluded.add((tar, key))
            return
        tar, key, reason = bad
        if self.cfg.data.on_error == "raise" or (tar, key) in self.excluded or tar not in self.entries:
            raise DataError(f"{tar}: sample {key}: {reason}: {_dali_error_text(err)}") from err
        self._count(Skipped(tar, key, reason))
        self.excluded.add((tar, key))


def build_dali_loader(cfg: Config, train: bool, rank: int = 0, world_size: int = 1, epoch: int = 0,
                      start_batch: int = 0, device: str = "auto") -> DaliLoader:
    """DALI loader for this rank / epoch; device "auto" follows cfg.data.dali_device (gpu if CUDA)."""
    return DaliLoader(cfg, train, rank, world_size, epoch, start_batch, device)
