"""Videos -> WebDataset shards in the format of shards/FORMAT.md, and `--verify` of a shard folder.

Owns `write_shards(...)`, `verify_shards(...)` and `python -m deteclap.shard`.

Per clip: the 10 CAV-MAE frame instants (source frame i * N // 10 of the segment's N frames) as a
VP9 mp4 (every frame a key frame, 1 fps, yuv420p) and the first audio channel
resampled to 16 kHz as 16-bit FLAC. Audio is resampled with PyAV's resampler (libswresample),
the same library as the `ffmpeg -ar 16000` of CAV-MAE's own preprocessing, with no extra
dependency; all channels are resampled and then the first is kept (ffmpeg, then `sox remix 1`).
Frames are stored as CAV-MAE's own extraction stores them (src/preprocess/extract_video_frame.py:
PIL RGB, Resize(224, bicubic), CenterCrop(224)), so that the loaders only decode and normalise;
`--no-crop` keeps the whole frame at `--short-side` instead (the loaders then resize and crop).

Shard membership comes from the sorted input list before any clip is decoded, so a restart gives
identical shards; a shard is written to a temporary name and renamed when complete, and a re-run
skips shards whose tar exists. Every skipped input is a row of failures.jsonl with a reason code
(REASONS).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import socket
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import numpy as np

from deteclap import storage
from deteclap.distribute import DistributorError
from deteclap.format import (AUDIO_EXT, CLASSES_EXT, DATASET_JSON, FORMAT_VERSION, FRAME_TABLE_EXT, JSON_FIELDS,
                             MEMBER_EXTENSIONS, META_EXT, VIDEO_EXT, check_index, dataset_problems, encode_frame_table,
                             index_entries, index_path, index_sample_count, load_dataset_json, make_key,
                             read_tar_samples, replace_synced, save_dataset_json, score_member, shard_name,
                             tar_index_samples, tmp_path, write_atomic, write_index, write_tar)

NUM_FRAMES = 10                      # CAV-MAE's frame instants per clip
SAMPLE_RATE = 16000
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
DEFAULT_SHORT_SIDE = 224            # CAV-MAE's image size: stored frames need no resize
DEFAULT_SECONDS = 10.0
DEFAULT_MIN_SECONDS = 1.0
DEFAULT_SAMPLES_PER_SHARD = 1000
# A segment starting SEEK_MIN_START s or later (a whole video with a start offset): its video is
# decoded from the key frame at or before start - SEEK_MARGIN, not from the file's start (its audio
# is always decoded from the start: _segment_audio). The stored members are byte-identical.
SEEK_MIN_START = 5.0                 # s
SEEK_MARGIN = 1.0                    # s
DEFAULT_SPLIT = "train"
FAILURES_JSONL = "failures.jsonl"
STATS_SUFFIX = ".stats.json"        # per shard: clips, samples, bytes, decode / encode seconds, failures
JOB_STATS_JSON = "stats.json"       # the job's totals over the planned shards
# DALI's CPU decoder reads VP8 / VP9 / MJPEG, NVDEC VP9: VP9 (FFmpeg's mp4 muxer refuses VP8:
# "'mp4' format does not support 'libvpx' codec")
CODECS = {"vp9": "libvpx-vp9"}
# Fast VP9 settings (byte-stable; the whole shard writer did 21 clips/s on one core at 224x224).
VPX_OPTIONS = {"crf": "32", "b:v": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
FLAC_SUBTYPE = "PCM_16"
INT16_SCALE = 32767
TEXT_SNIFF_BYTES = 512

REASONS = {
    "missing_file": "the manifest names a file that does not exist",
    "unreadable": "the file exists but cannot be read (permissions, I/O error, a folder)",
    "empty_file": "the file has 0 bytes",
    "not_media": "no media container recognised (e.g. a text file named .mp4)",
    "corrupt": "a media file that cannot be opened or decoded (truncated or damaged)",
    "truncated": "the streams end before the duration the container declares",
    "no_video": "no video stream, or no video frame in the segment",
    "no_audio": "no audio stream (use --allow-silent to store silence instead)",
    "too_short": "the segment is shorter than --min-seconds",
    "duplicate_key": "another input of the split has the same key",
    "bad_manifest_row": "a manifest row without a usable path or start / end",
}


class ShardError(RuntimeError):
    """A problem with the whole job (bad SRC, OUT holding other settings), not with one clip."""


class ClipFailure(Exception):
    """One input cannot be used; `reason` is a key of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class EncodeSettings:
    short_side: int = DEFAULT_SHORT_SIDE
    crop: bool = True                 # centre-crop to short_side x short_side (CAV-MAE's stored frames)
    codec: str = "vp9"
    seconds: float = DEFAULT_SECONDS
    min_seconds: float = DEFAULT_MIN_SECONDS
    allow_silent: bool = False
    sample_rate: int = SAMPLE_RATE
    num_frames: int = NUM_FRAMES


@dataclass
class ClipInput:
    """One planned sample: where it comes from and what it is."""
    source: str                       # path of the video file
    clip_id: str
    key: str
    split: str
    start: float = 0.0
    end: float | None = None          # None: start + settings.seconds
    classes: list[str] = field(default_factory=list)
    class_indices: list[int] = field(default_factory=list)
    shown_source: str = ""            # the path as the manifest / folder names it (goes to KEY.json)
    member: str = ""                  # the video member when `source` is a tar (video2dataset's layout)
    member_range: list[int] | None = None   # [data offset, size] of `member` in that tar


# ----------------------------------------------------------------------------------------------
# Reading SRC
# ----------------------------------------------------------------------------------------------

def _split_labels(value) -> list[str]:
    """A `labels` cell (a list, or names joined by ';') -> its class names, each once, in order."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        names = [str(v) for v in value]
    else:
        names = [part.strip() for part in str(value).split(";") if part.strip()]
    return list(dict.fromkeys(names))


def _row_classes(row: dict) -> list[str]:
    for column in ("labels", "label", "class"):
        if row.get(column) not in (None, ""):
            return _split_labels(row[column]) if column == "labels" else [str(row[column])]
    return []


def _vggsound_file(video_dir: Path, ytid: str, start: int) -> tuple[Path, float] | None:
    """VGGSound clip file: `{ytid}_{start:06d}.*` (already cut: start 0) or `{ytid}.*` (full video)."""
    for ext in VIDEO_EXTENSIONS:
        cut = video_dir / f"{ytid}_{start:06d}{ext}"
        if cut.exists():
            return cut, 0.0
    for ext in VIDEO_EXTENSIONS:
        full = video_dir / f"{ytid}{ext}"
        if full.exists():
            return full, float(start)
    return None


def read_rows(src: Path) -> list[dict]:
    """Manifest rows as dicts. A CSV without a path/file header is read as VGGSound's layout.

    A UTF-8 byte order mark (Excel's "CSV UTF-8") is dropped; CSV cells are stripped of spaces.
    """
    if src.suffix == ".jsonl":
        rows = []
        for line_no, line in enumerate(src.read_text(encoding="utf-8-sig").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ShardError(f"{src}:{line_no}: not JSON: {err}") from None
            if not isinstance(row, dict):
                raise ShardError(f"{src}:{line_no}: each line must be a JSON object")
            rows.append(row)
        return rows
    with open(src, newline="", encoding="utf-8-sig") as f:
        table = [[cell.strip() for cell in r] for r in csv.reader(f) if r]
    if not table:
        return []
    header = table[0]
    if "path" in header or "file" in header:
        return [dict(zip(header, r)) for r in table[1:]]
    rows = []
    for line_no, r in enumerate(table, start=1):
        if len(r) < 3:
            raise ShardError(f"{src}:{line_no}: expected a header with `path` or `file`, or VGGSound rows "
                             "(youtube_id, start_seconds, label, split)")
        rows.append({"vggsound": True, "ytid": r[0], "start": r[1], "label": r[2],
                     "split": r[3] if len(r) > 3 else ""})
    return rows


def collect_inputs(src: str | Path, split: str = DEFAULT_SPLIT, video_dir: str | Path | None = None
                   ) -> tuple[list[ClipInput], list[dict]]:
    """SRC (a folder of videos, a CSV / JSONL manifest, or a folder of video2dataset tars; each may be
    a URL, deteclap.storage) -> (inputs, planning failures).

    Inputs are not yet keyed to classes or shards (see plan_shards). `split` is used where a row
    names none. Raises ShardError when SRC itself is unusable.
    """
    from deteclap import sources

    src_text = storage.location(src)
    if sources.looks_like_video2dataset(src_text):
        rows, failures = sources.read_video2dataset(src_text, split)
        return _rows_to_inputs(src_text, rows, split, None, failures)
    if storage.is_url(src_text) and storage.is_dir(src_text):
        return [ClipInput(storage.join(src_text, rel), rel.rsplit(".", 1)[0], make_key(rel.rsplit(".", 1)[0]), split,
                          shown_source=rel)
                for rel in storage.walk_files(src_text) if Path(rel).suffix.lower() in VIDEO_EXTENSIONS], []
    if storage.is_url(src_text):
        if not storage.is_file(src_text):
            raise ShardError(f"{src_text}: no such file or folder")
        if Path(src_text).suffix.lower() not in MANIFEST_EXTENSIONS:
            raise ShardError(f"{src_text}: SRC must be a folder of videos or a .csv / .jsonl manifest")
        with storage.local_copy(src_text) as local:
            rows = read_rows(local)
        return _rows_to_inputs(src_text, rows, split, video_dir, [])
    src = Path(src)
    failures: list[dict] = []
    inputs: list[ClipInput] = []
    if src.is_dir():
        files = sorted(p for p in src.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and not p.is_dir())
        for path in files:
            rel = path.relative_to(src).with_suffix("").as_posix()
            shown = path.relative_to(src).as_posix()
            inputs.append(ClipInput(str(path), rel, make_key(rel), split, shown_source=shown))
        return inputs, failures
    if not src.is_file():
        raise ShardError(f"{src}: no such file or folder")
    if src.suffix.lower() not in MANIFEST_EXTENSIONS:
        raise ShardError(f"{src}: SRC must be a folder of videos or a .csv / .jsonl manifest")
    return _rows_to_inputs(str(src), read_rows(src), split, video_dir, failures)


def _rows_to_inputs(src: str, rows: list[dict], split: str, video_dir: str | Path | None, failures: list[dict]
                    ) -> tuple[list[ClipInput], list[dict]]:
    """Manifest rows (read_rows, or sources.read_video2dataset's) -> (inputs, failures + their failures).

    Relative paths count from `video_dir`, else from the manifest's folder (a URL's too). Files named
    by URL are not looked up here (a million HEAD requests): one that is missing becomes a
    `missing_file` failure when its shard is written."""
    inputs: list[ClipInput] = []
    remote_base = video_dir is None and storage.is_url(src)
    base = Path(video_dir) if video_dir else Path(src).parent
    for row in rows:
        row_split = str(row.get("split") or split)
        if row.get("vggsound"):
            if video_dir is None:
                raise ShardError(f"{src}: VGGSound-layout CSV needs --video-dir with the clips")
            base = Path(video_dir)
            try:
                start_s = int(float(row["start"]))
            except ValueError:
                failures.append({"source": row["ytid"], "reason": "bad_manifest_row",
                                 "detail": f"start_seconds {row['start']!r} is not a number", "split": row_split})
                continue
            clip_id = f"{row['ytid']}_{start_s:06d}"
            found = _vggsound_file(base, row["ytid"], start_s)
            if found is None:
                failures.append({"source": clip_id, "reason": "missing_file", "split": row_split,
                                 "detail": f"neither {clip_id}.* nor {row['ytid']}.* in {base}"})
                continue
            path, start = found
            inputs.append(ClipInput(str(path), clip_id, make_key(clip_id), row_split, start=start,
                                    classes=[row["label"]], shown_source=path.name))
            continue
        name = row.get("path") or row.get("file")
        if not name:
            failures.append({"source": json.dumps(row)[:200], "reason": "bad_manifest_row",
                             "detail": "no `path` or `file`", "split": row_split})
            continue
        if storage.is_url(name) or Path(name).is_absolute():
            path = str(name)
        elif remote_base:
            path = storage.join(src.rsplit("/", 1)[0], name)
        else:
            path = str(base / name)
        clip_id = str(row.get("id") or Path(name).with_suffix("").as_posix())
        try:
            start = float(row.get("start") or 0.0)
            end = float(row["end"]) if row.get("end") not in (None, "") else None
        except (TypeError, ValueError):
            failures.append({"source": str(name), "reason": "bad_manifest_row", "split": row_split,
                             "detail": f"start / end not numbers: {row.get('start')!r}, {row.get('end')!r}"})
            continue
        if end is not None and end <= start:
            failures.append({"source": str(name), "reason": "bad_manifest_row", "split": row_split,
                             "detail": f"end {end:g} is not after start {start:g}"})
            continue
        if not storage.is_url(path) and not Path(path).exists():
            failures.append({"source": str(name), "reason": "missing_file", "split": row_split,
                             "detail": f"{path} does not exist"})
            continue
        inputs.append(ClipInput(path, clip_id, make_key(clip_id), row_split, start=start, end=end,
                                classes=_row_classes(row), shown_source=str(row.get("shown_source") or name),
                                member=str(row.get("member") or ""), member_range=row.get("member_range")))
    return inputs, failures


def plan_shards(inputs: list[ClipInput], samples_per_shard: int
                ) -> tuple[dict[str, list[list[ClipInput]]], list[str], list[dict]]:
    """Sort by (split, key), drop duplicate keys, cut into shards; also the sorted class list.

    Returns ({split: [shard's inputs, ...]}, classes, duplicate-key failures).
    """
    classes = sorted({c for item in inputs for c in item.classes})
    index = {name: i for i, name in enumerate(classes)}
    by_split: dict[str, list[ClipInput]] = {}
    failures = []
    seen: set[tuple[str, str]] = set()
    for item in sorted(inputs, key=lambda it: (it.split, it.key, it.source)):
        if (item.split, item.key) in seen:
            failures.append({"source": item.shown_source, "reason": "duplicate_key", "split": item.split,
                             "detail": f"key {item.key!r} already used in split {item.split!r}"})
            continue
        seen.add((item.split, item.key))
        item.class_indices = [index[c] for c in item.classes]
        by_split.setdefault(item.split, []).append(item)
    plan = {split: [items[i:i + samples_per_shard] for i in range(0, len(items), samples_per_shard)]
            for split, items in sorted(by_split.items())}
    return plan, classes, failures


# ----------------------------------------------------------------------------------------------
# One clip
# ----------------------------------------------------------------------------------------------

def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(TEXT_SNIFF_BYTES)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch >= 32 or ch in b"\t\n\r" for ch in head)


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Resize keeping the aspect ratio so the short side is `short_side`; both sides even."""
    if width <= height:
        new_w, new_h = short_side, height * short_side / width
        return new_w, max(2, int(round(new_h / 2)) * 2)
    new_h, new_w = short_side, width * short_side / height
    return max(2, int(round(new_w / 2)) * 2), new_h


def frame_instants(num_source_frames: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """CAV-MAE's frame instants: source frame i * N // num_frames for i = 0..num_frames-1."""
    return [i * num_source_frames // num_frames for i in range(num_frames)]


def _video_frames(path: Path, origin: float, start: float, end: float, seek_to: float | None
                  ) -> tuple[list, float | None] | None:
    """The decoded video frames with start <= t < end, and the time t of the first frame decoded.

    With `seek_to`, decoding starts at the key frame at or before t = seek_to (the frames decoded
    from a key frame are those of a decode from the file's start); None where the seek fails or
    lands after its target (then decode from the file's start).
    """
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        if seek_to is not None:
            try:
                container.seek(math.floor((origin + seek_to) / video.time_base), stream=video, backward=True,
                               any_frame=False)
            except av.FFmpegError:
                return None
        frames, first = [], None
        for frame in container.decode(video):
            t = frame.time - origin if frame.time is not None else 0.0
            if first is None:
                if seek_to is not None and (frame.time is None or t > seek_to + 1e-6):
                    return None
                first = t
            if t >= end - 1e-6:
                break
            if t >= start - 1e-6:
                frames.append(frame)
    return frames, first


def _segment_video(path: Path, origin: float, start: float, end: float) -> tuple[list, float | None]:
    """`_video_frames` of [start, end): from a key frame before start when start >= SEEK_MIN_START."""
    if start >= SEEK_MIN_START:
        found = _video_frames(path, origin, start, end, start - SEEK_MARGIN)
        if found is not None:
            return found
    return _video_frames(path, origin, start, end, None)


def _segment_audio(container, audio, origin: float, end: float, rate: int) -> tuple[list, float | None]:
    """The audio frames before `end`, resampled to `rate`, and the time of the first decoded sample.

    Decoded and resampled from the file's start, never after a seek: a decoder started after a seek
    gives other samples (AAC's noise substitution draws from a random state kept across frames;
    Opus and MP3 converge only after some frames), and Matroska / WebM timestamps (milliseconds) do
    not tell which sample a frame starts at. Audio is cheap next to video: a 10 s segment at 50 s of
    a 640x360 H.264 + AAC file took 0.92 s to decode from the start, 0.36 s with the video sought.
    """
    import av

    resampler = av.AudioResampler(format="fltp", layout=audio.codec_context.layout.name, rate=rate)
    chunks, audio_t0 = [], None
    for frame in container.decode(audio):
        t = frame.time - origin if frame.time is not None else 0.0
        if t >= end:
            break
        if audio_t0 is None:
            audio_t0 = t
        chunks.extend(resampler.resample(frame))
    chunks.extend(resampler.resample(None))
    return chunks, audio_t0


def _decode_segment(item: ClipInput, settings: EncodeSettings):
    """Decode the segment's video frames (av.VideoFrame list) and first audio channel at 16 kHz.

    `start` / `end` count from the container's start time (0 s = its first frame or sample, as
    for ffmpeg's `-ss`), which is not 0 in stream copies and captures; audio and video share it.
    """
    import av

    path = Path(item.source)
    try:
        size = path.stat().st_size
        if path.is_dir():
            raise ClipFailure("unreadable", f"{path} is a folder")
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise ClipFailure("unreadable", f"{type(err).__name__}: {err}") from None
    if size == 0:
        raise ClipFailure("empty_file", "0 bytes")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        reason = "not_media" if _looks_like_text(path) else "corrupt"
        raise ClipFailure(reason, f"cannot open: {err}") from None
    start = item.start
    seconds = (item.end - item.start) if item.end is not None else settings.seconds
    end = start + seconds
    with container:
        origin = container.start_time / av.time_base if container.start_time else 0.0
        if not container.streams.video:
            raise ClipFailure("no_video", "no video stream")
        video = container.streams.video[0]
        audio = container.streams.audio[0] if container.streams.audio else None
        if audio is None and not settings.allow_silent:
            raise ClipFailure("no_audio", "no audio stream")
        chunks, audio_t0 = [], None
        try:
            frames, _ = _segment_video(path, origin, start, end)
            if audio is not None:
                chunks, audio_t0 = _segment_audio(container, audio, origin, end, settings.sample_rate)
        except av.FFmpegError as err:
            raise ClipFailure("corrupt", f"decoding failed: {err}") from None
        source_fps = float(video.average_rate or video.guessed_rate or 0.0)
        declared = float(container.duration) / av.time_base if container.duration else None
    if not frames:
        if declared is not None and declared <= start:
            raise ClipFailure("too_short", f"segment starts at {start:g} s, the file lasts {declared:g} s")
        raise ClipFailure("no_video", "no video frame in the segment")
    if source_fps <= 0:
        source_fps = len(frames) / seconds
    duration = len(frames) / source_fps
    if declared is not None and duration < min(seconds, declared - start) - max(1.0, 2 / source_fps):
        raise ClipFailure("truncated", f"video frames cover {duration:.2f} s of the declared {declared:.2f} s")
    if duration < settings.min_seconds - 1e-6:
        raise ClipFailure("too_short", f"segment lasts {duration:.2f} s < --min-seconds {settings.min_seconds:g}")
    target_samples = int(round(min(seconds, duration) * settings.sample_rate))
    if audio is None:
        wave = np.zeros(target_samples, np.float32)
    else:
        if not chunks:
            raise ClipFailure("no_audio", "the audio stream holds no sample in the segment")
        wave = np.concatenate([c.to_ndarray()[0] for c in chunks]).astype(np.float32)
        offset = int(round((start - (audio_t0 or 0.0)) * settings.sample_rate))
        wave = wave[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), wave])
        wave = wave[:target_samples]        # the segment the video frames cover (AAC pads its end)
    return frames, wave, source_fps, duration, audio is None


def _stored_frame(frame, settings: EncodeSettings):
    """One chosen av.VideoFrame -> the yuv420p frame to encode, at the stored size.

    crop: CAV-MAE's extraction on a PIL RGB image (torchvision Resize(short_side, bicubic) then
    CenterCrop(short_side)); else the short side resized to short_side (bicubic, long side even)."""
    import av

    if not settings.crop:
        width, height = _target_size(frame.width, frame.height, settings.short_side)
        return frame.reformat(width=width, height=height, format="yuv420p", interpolation="BICUBIC")
    import torchvision.transforms.functional as F

    image = F.resize(frame.to_image(), settings.short_side, interpolation=F.InterpolationMode.BICUBIC)
    image = F.center_crop(image, settings.short_side)
    return av.VideoFrame.from_image(image).reformat(format="yuv420p")


def _encode_video(frames, settings: EncodeSettings) -> tuple[bytes, int, int]:
    """Encode the chosen av.VideoFrames as an all-key-frame 1 fps mp4; returns (bytes, width, height)."""
    import av

    stored = [_stored_frame(frame, settings) for frame in frames]
    width, height = stored[0].width, stored[0].height
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(CODECS[settings.codec], rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = 1
        stream.time_base = Fraction(1, 1)
        stream.options = dict(VPX_OPTIONS)
        for i, out in enumerate(stored):
            out.pts, out.time_base = i, stream.time_base  # frame i at i seconds (1 fps)
            container.mux(stream.encode(out))
        container.mux(stream.encode())
    return buf.getvalue(), width, height


def frame_table(video: bytes, width: int, height: int) -> bytes:
    """The `KEY.frames` member: little-endian uint32 [width, height, offset_0, size_0, ..., offset_N-1,
    size_N-1], where frame i of the all-key-frame `video` mp4 lies at video[offset_i : offset_i + size_i].
    With it a DALI pipeline cuts one frame out of the mp4 and decodes only that frame (dali_pipes)."""
    from deteclap.data.mp4 import read_samples

    return encode_frame_table(width, height, [(sample.offset, sample.size) for sample in read_samples(video)])


def _encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    import soundfile

    pcm = np.round(np.clip(wave, -1.0, 1.0) * INT16_SCALE).astype(np.int16)
    buf = io.BytesIO()
    soundfile.write(buf, pcm, sample_rate, format="FLAC", subtype=FLAC_SUBTYPE)
    return buf.getvalue()


def _decode_input(item: ClipInput, settings: EncodeSettings):
    """_decode_segment of an input wherever it lives: a URL or a tar member is copied to a local
    temporary file first (deteclap.sources.local_input)."""
    if not item.member and not storage.is_url(item.source):
        return _decode_segment(item, settings)
    from deteclap.sources import local_input

    try:
        with local_input(item.source, item.member, item.member_range) as local:
            return _decode_segment(replace(item, source=str(local), member="", member_range=None), settings)
    except FileNotFoundError as err:
        raise ClipFailure("missing_file", str(err)) from None
    except (OSError, storage.StorageError) as err:
        raise ClipFailure("unreadable", f"{type(err).__name__}: {err}") from None


def process_clip(item: ClipInput, settings: EncodeSettings, num_classes: int) -> dict:
    """Decode one input and encode its members. Returns {"members": {ext: bytes}} or {"failure": row},
    and "seconds": {"decode": s, "encode": s} (reading and decoding the input; encoding the members)."""
    started = time.perf_counter()
    decoded = None
    try:
        frames, wave, source_fps, duration, silent = _decode_input(item, settings)
        decoded = time.perf_counter()
        chosen = [frames[i] for i in frame_instants(len(frames), settings.num_frames)]
        video_bytes, width, height = _encode_video(chosen, settings)
        flac = _encode_flac(wave, settings.sample_rate)
    except ClipFailure as failure:
        decoded = decoded or time.perf_counter()
        return {"failure": {"source": item.shown_source, "reason": failure.reason, "detail": failure.detail,
                            "split": item.split, "key": item.key},
                "seconds": {"decode": decoded - started, "encode": time.perf_counter() - decoded}}
    seconds = {"decode": decoded - started, "encode": time.perf_counter() - decoded}
    meta = {"key": item.key, "id": item.clip_id, "source": item.shown_source, "start": item.start,
            "duration": round(duration, 6), "fps": 1, "source_fps": round(source_fps, 6),
            "frames": settings.num_frames, "width": width, "height": height,
            "sample_rate": settings.sample_rate, "num_samples": int(len(wave)), "classes": item.classes,
            "split": item.split, "source_frames": len(frames),
            "frame_indices": frame_instants(len(frames), settings.num_frames),
            "silent": silent}
    multi_hot = np.zeros(num_classes, np.uint8)
    multi_hot[item.class_indices] = 1
    return {"members": {CLASSES_EXT: multi_hot.tobytes(), AUDIO_EXT: flac,
                        FRAME_TABLE_EXT: frame_table(video_bytes, width, height),
                        META_EXT: json.dumps(meta, sort_keys=True).encode(), VIDEO_EXT: video_bytes},
            "seconds": seconds}


def _process_job(job: tuple[ClipInput, EncodeSettings, int]) -> dict:
    return process_clip(*job)


# ----------------------------------------------------------------------------------------------
# Tars, indexes, dataset.json
# ----------------------------------------------------------------------------------------------

def _check_membership(tar_path: Path, items: list[ClipInput], failures: list[dict]) -> None:
    """A finished shard kept on resume must hold exactly the inputs the plan gives it now."""
    planned = {item.key for item in items}
    stored = set(index_entries(tar_path))
    failed = {row.get("key") for row in failures if row.get("shard") == tar_path.stem}
    if not stored <= planned or not planned - stored <= failed:
        raise ShardError(f"{storage.location(tar_path)} holds other clips than the inputs now planned for it (the "
                         "input list changed since it was written): use an empty OUT, or the same SRC to resume")


def _write_failures(out: Path, rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (r.get("split", ""), r.get("shard") or "", r["source"], r["reason"]))
    write_atomic(out / FAILURES_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())


def _samples_per_shard(out: Path, previous: dict | None, asked: int | None) -> int:
    """The shard size to plan with: `asked`, else the one OUT's dataset.json records, else the default.

    Raises ShardError when `asked` differs from the recorded one (the plan would put other clips
    under the existing shard names)."""
    recorded = (previous or {}).get("samples_per_shard")
    if asked is None:
        return recorded or DEFAULT_SAMPLES_PER_SHARD
    if recorded is not None and asked != recorded:
        raise ShardError(f"{storage.location(out)} holds shards of --samples-per-shard {recorded}, not the "
                         f"--samples-per-shard {asked} asked for now: leave the option out (or give {recorded}) "
                         "to resume or add a split, or use an empty OUT")
    return asked


def stats_path(out: Path, name: str) -> Path:
    """The statistics file of shard `name` (STATS_SUFFIX beside its tar)."""
    return out / f"{name}{STATS_SUFFIX}"


def _read_stats(out: Path, name: str) -> dict | None:
    path = stats_path(out, name)
    return json.loads(storage.read_text(path)) if storage.is_file(path) else None


def _kept_failures(out: Path, plan: dict[str, list[list[ClipInput]]], planned_names: set[str],
                   read_splits: set[str]) -> list[dict]:
    """The failure rows that stay true after this run, before its new shards are written.

    Kept: the rows of the finished shards this run keeps (from each one's stats file, written
    before its tar; from OUT's failures.jsonl for shards written without one), and every row of a
    split this run does not shard (its shards stay listed as they are). Dropped: manifest-level
    rows (shard null) of the splits this run reads (collect_inputs lists them again), and rows of
    shards written again."""
    done = {name for name in planned_names if storage.exists(out / f"{name}.tar")}
    with_stats = {name: stats for name in sorted(done) if (stats := _read_stats(out, name)) is not None}
    kept = [row for stats in with_stats.values() for row in stats["failure_rows"]]
    if not storage.exists(out / FAILURES_JSONL):
        return kept
    for line in storage.read_text(out / FAILURES_JSONL).splitlines():
        row = json.loads(line)
        if row.get("shard") is None:
            keep = row.get("split") not in read_splits
        elif row.get("split") not in plan:
            keep = True
        else:
            keep = row["shard"] in done and row["shard"] not in with_stats
        if keep:
            kept.append(row)
    return kept


def write_shard(out: str, name: str, items: list[ClipInput], settings: EncodeSettings, num_classes: int,
                results: list[dict] | None = None) -> dict:
    """Write shard `name` of OUT (a folder or URL): its stats file, its index, then its tar, whose
    presence marks the shard done (so whatever runs this may be killed and run again: the same
    bytes come out). `results`: process_clip of each item when computed elsewhere (local mode's
    clip pool); else the clips are processed here (one Ray task per shard).

    Returns the shard's statistics (what its stats file holds): {"shard", "split", "clips"
    (inputs planned), "samples", "bytes" (of the tar), "decode_seconds", "encode_seconds",
    "failures" ({reason: count}), "failure_rows" (failures.jsonl rows)}.
    """
    out_path = Path(out)
    if results is None:
        results = [process_clip(item, settings, num_classes) for item in items]
    samples, failure_rows = [], []
    for item, result in zip(items, results):
        if "failure" in result:
            failure_rows.append(dict(result["failure"], shard=name))
        else:
            samples.append((item.key, result["members"]))
    remote = storage.is_url(out)
    staging = Path(tempfile.mkdtemp(prefix="deteclap-shard-")) if remote else out_path
    try:
        tmp_tar = tmp_path(staging / f"{name}.tar")
        entries = write_tar(tmp_tar, samples)
        stats = {"shard": name, "split": items[0].split if items else "", "clips": len(items),
                 "samples": len(samples), "bytes": tmp_tar.stat().st_size,
                 "decode_seconds": round(sum(r["seconds"]["decode"] for r in results), 4),
                 "encode_seconds": round(sum(r["seconds"]["encode"] for r in results), 4),
                 "failures": dict(sorted(Counter(r["reason"] for r in failure_rows).items())),
                 "failure_rows": failure_rows, "host": socket.gethostname()}
        write_atomic(stats_path(out_path, name), json.dumps(stats, indent=1, sort_keys=True).encode())
        write_index(index_path(out_path / f"{name}.tar"), entries)
        if remote:
            storage.put_file(tmp_tar, storage.join(out, f"{name}.tar"))
        else:
            replace_synced(tmp_tar, out_path / f"{name}.tar")
    finally:
        if remote:
            shutil.rmtree(staging, ignore_errors=True)
    return stats


def write_shards(src: str | Path, out: str | Path, workers: int = 1, split: str = DEFAULT_SPLIT,
                 samples_per_shard: int | None = None, settings: EncodeSettings | None = None,
                 video_dir: str | Path | None = None, progress: bool = False, distributor: str = "local",
                 ray_address: str | None = None) -> dict:
    """Shard SRC into OUT (see module docstring); returns the summary dict that is also printed.

    `samples_per_shard` None: the value OUT's dataset.json records (a resume or another split),
    else DEFAULT_SAMPLES_PER_SHARD. `distributor` "local": clips on `workers` processes here;
    "ray": one Ray task per shard (on the cluster at `ray_address`, or a local Ray instance with
    `workers` CPUs), the same bytes. SRC and OUT may be URLs (deteclap.storage). Summary:
    {"inputs", "samples" (in the listed shards), "written_now", "skipped_shards" (done by an
    earlier run), "shards", "failed", "reasons": {reason: count}, "out", and the job totals of
    OUT/stats.json}. Raises ShardError for an unusable SRC or an OUT written with other settings.
    """
    started = time.perf_counter()
    settings = settings or EncodeSettings()
    if settings.codec not in CODECS:
        raise ShardError(f"--codec {settings.codec!r}: choose one of {sorted(CODECS)}")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ShardError("--samples-per-shard must be at least 1")
    from deteclap.distribute import check_distributor

    check_distributor(distributor)         # before any work: a typo must not cost a planning pass
    out_text = storage.location(out)
    out = Path(out_text)
    storage.make_dirs(out_text)
    previous = load_dataset_json(out) if storage.exists(out / DATASET_JSON) else None
    samples_per_shard = _samples_per_shard(out, previous, samples_per_shard)
    inputs, plan_failures = collect_inputs(src, split, video_dir)
    plan, classes, dup_failures = plan_shards(inputs, samples_per_shard)
    plan_failures += dup_failures

    encoding = asdict(settings)
    if previous is not None:
        if previous.get("encoding") != encoding or previous.get("classes") != classes:
            raise ShardError(f"{out_text} holds shards written with other encoding settings or classes; "
                             "use an empty OUT (or the same SRC and options to resume)")
    labellers = previous.get("labellers", []) if previous else []
    other_shards = [s for s in (previous or {}).get("shards", []) if s["split"] not in plan]

    if not storage.is_url(out_text):
        for stale in out.glob(".*.tmp"):
            stale.unlink()
    planned_names = {shard_name(s, i) for s, shards in plan.items() for i in range(len(shards))}
    read_splits = set(plan) | {r["split"] for r in plan_failures}
    failures: list[dict] = [dict(r, shard=None) for r in plan_failures]
    failures += _kept_failures(out, plan, planned_names, read_splits)

    pending: list[tuple[str, list[ClipInput]]] = []
    skipped = 0
    for split_name, shards in plan.items():
        for i, items in enumerate(shards):
            name = shard_name(split_name, i)
            tar_path = out / f"{name}.tar"
            if storage.exists(tar_path):
                _check_membership(tar_path, items, failures)
                skipped += 1
                if not storage.exists(index_path(tar_path)):
                    write_index(index_path(tar_path), tar_index_samples(tar_path))
                continue
            pending.append((name, items))

    from deteclap.labels.vocabulary import load_vocabulary

    # the shards written now carry no label scores: no labeller is complete, and labelling redoes them
    base = {"format_version": FORMAT_VERSION, "classes": classes, "label_vocabulary": load_vocabulary(),
            "labellers": [] if pending else labellers, "encoding": encoding, "samples_per_shard": samples_per_shard}
    # keep what labelling recorded (labelled_shards, label_failures, labeller_settings, ...)
    kept = {k: v for k, v in (previous or {}).items() if k not in base and k != "shards"}
    rewritten = {f"{name}.tar" for name, _ in pending}
    if "labelled_shards" in kept:
        kept["labelled_shards"] = {labeller: [tar for tar in tars if tar not in rewritten]
                                   for labeller, tars in kept["labelled_shards"].items()}
    save_dataset_json(out, {**kept, **base, "shards": other_shards})

    written = 0
    for stats in _run_shards(out_text, pending, settings, len(classes), workers, progress, distributor,
                             ray_address):
        failures.extend(stats["failure_rows"])
        written += stats["samples"]

    shard_rows, shard_stats = [], []
    for split_name, shards in plan.items():
        for i in range(len(shards)):
            name = shard_name(split_name, i)
            stats = _read_stats(out, name)
            if stats is not None:
                shard_stats.append(stats)
            count = index_sample_count(out / f"{name}.tar")
            if count == 0:
                continue      # every input of this shard failed: the tar stays as a resume marker
            shard_rows.append({"split": split_name, "tar": f"{name}.tar", "index": f"{name}.idx", "samples": count})
    all_shards = sorted(other_shards + shard_rows, key=lambda s: s["tar"])
    if pending and labellers:
        # the new shards carry no label scores yet: `python -m deteclap.label` labels just those
        print(f"note: {len(pending)} new shard(s) have no label scores for {labellers}; run "
              f"`python -m deteclap.label {out_text} --labellers ...` again (it resumes)", file=sys.stderr)
    save_dataset_json(out, {**kept, **base, "shards": all_shards})
    _write_failures(out, failures)
    run_failures = [r for r in failures if r["split"] in read_splits]    # not the other splits' rows
    reasons = Counter(r["reason"] for r in run_failures)
    job = {"clips": len(inputs) + sum(1 for r in plan_failures if r["reason"] != "duplicate_key"),
           "samples": sum(s["samples"] for s in shard_rows), "shards": len(shard_rows),
           "bytes": sum(s["bytes"] for s in shard_stats),
           "decode_seconds": round(sum(s["decode_seconds"] for s in shard_stats), 3),
           "encode_seconds": round(sum(s["encode_seconds"] for s in shard_stats), 3),
           "failures": dict(sorted(reasons.items())), "written_now": written, "skipped_shards": skipped,
           "shards_without_stats": len(planned_names) - len(shard_stats),
           "wall_seconds": round(time.perf_counter() - started, 3), "distributor": distributor, "workers": workers}
    write_atomic(out / JOB_STATS_JSON, json.dumps(job, indent=1, sort_keys=True).encode())
    return {"inputs": job["clips"], "samples": job["samples"], "written_now": written,
            "skipped_shards": skipped, "shards": len(shard_rows), "failed": len(run_failures),
            "reasons": job["failures"], "out": out_text, "job": job}


def _run_shards(out: str, pending: list[tuple[str, list[ClipInput]]], settings: EncodeSettings, num_classes: int,
                workers: int, progress: bool, distributor: str, ray_address: str | None) -> Iterator[dict]:
    """write_shard for every pending shard; yields each one's statistics as it is written.

    local: the clips of all shards on a pool of `workers` processes (in plan order), each shard
    written here when its clips are done. ray: one task per shard, retried when its worker dies
    (deteclap.distribute). One progress bar over all clips either way."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(items) for _, items in pending), desc="shard", unit="clip")
    try:
        if distributor == "local":
            jobs = [(item, settings, num_classes) for _, items in pending for item in items]
            results = _run_jobs(jobs, workers, bar)
            for name, items in pending:
                yield write_shard(out, name, items, settings, num_classes, [next(results) for _ in items])
            return
        from deteclap.distribute import run_tasks

        jobs = [(out, name, items, settings, num_classes) for name, items in pending]
        for _, stats in run_tasks(write_shard, jobs, distributor=distributor, workers=workers,
                                  ray_address=ray_address):
            if bar is not None:
                bar.update(stats["clips"])
            yield stats
    finally:
        if bar is not None:
            bar.close()


def _run_jobs(jobs: list, workers: int, bar=None) -> Iterator[dict]:
    """Results of process_clip in job order, from a process pool when workers > 1."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)
        source: Iterable[dict] = pool.imap(_process_job, jobs, chunksize=1)
    else:
        pool, source = None, map(_process_job, jobs)
    try:
        for result in source:
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


# ----------------------------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    ok: bool = True
    shards: int = 0
    samples: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.ok = False
        self.errors.append(text)


def _verify_sample(tar: tarfile.TarFile, where: str, members: dict[str, tarfile.TarInfo], meta_all: dict,
                   report: VerifyReport) -> None:
    from deteclap.data.decode import DecodeError, decode_audio, decode_video_frames
    from deteclap.data.mp4 import Mp4LayoutError

    encoding = meta_all.get("encoding", {})
    num_frames = encoding.get("num_frames", NUM_FRAMES)
    expected = set(MEMBER_EXTENSIONS) | {score_member(name) for name in meta_all.get("labellers", [])}
    if meta_all.get("format_version", FORMAT_VERSION) < 2:
        expected.discard(FRAME_TABLE_EXT)         # version 1 shards hold no frame table
    if set(members) != expected:
        report.error(f"{where}: members {sorted(members)} != expected {sorted(expected)}")
        return
    data = {ext: tar.extractfile(info).read() for ext, info in members.items()}
    try:
        meta = json.loads(data[META_EXT])
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        report.error(f"{where}.json: not JSON: {err}")
        return
    missing = [f for f in JSON_FIELDS if f not in meta]
    if missing:
        report.error(f"{where}.json: missing fields {missing}")
        return
    key = where.rsplit(":", 1)[-1]
    if meta["key"] != key:
        report.error(f"{where}.json: key {meta['key']!r} != member key {key!r}")
    try:
        frames = decode_video_frames(data[VIDEO_EXT])
        if frames.shape != (num_frames, meta["height"], meta["width"], 3):
            report.error(f"{where}.mp4: frames {frames.shape} != ({num_frames}, {meta['height']}, {meta['width']}, 3)")
        side = encoding.get("short_side", DEFAULT_SHORT_SIDE)
        if min(meta["height"], meta["width"]) != side:
            report.error(f"{where}.mp4: short side {min(meta['height'], meta['width'])} != the encoding's {side}")
        if encoding.get("crop", False) and meta["height"] != meta["width"]:
            report.error(f"{where}.mp4: {meta['width']}x{meta['height']} is not the encoding's square crop")
        table = frame_table(data[VIDEO_EXT], meta["width"], meta["height"])
        if FRAME_TABLE_EXT in data and data[FRAME_TABLE_EXT] != table:
            report.error(f"{where}.{FRAME_TABLE_EXT}: does not match the frame table of the mp4")
    except (DecodeError, Mp4LayoutError) as err:
        report.error(f"{where}.mp4: {err}")
    try:
        wave, rate = decode_audio(data[AUDIO_EXT])
        if rate != meta["sample_rate"] or len(wave) != meta["num_samples"]:
            report.error(f"{where}.flac: {len(wave)} samples at {rate} Hz != json "
                         f"{meta['num_samples']} at {meta['sample_rate']}")
    except DecodeError as err:
        report.error(f"{where}.flac: {err}")
    classes = meta_all.get("classes", [])
    cls = np.frombuffer(data[CLASSES_EXT], np.uint8)
    if len(cls) != len(classes) or not np.isin(cls, (0, 1)).all():
        report.error(f"{where}.cls: {len(cls)} bytes, values {sorted(set(cls.tolist()))}; expected "
                     f"{len(classes)} bytes of 0 / 1")
    elif sorted(classes[i] for i in np.flatnonzero(cls)) != sorted(meta["classes"]):
        report.error(f"{where}.cls: does not match json classes {meta['classes']}")
    vocab_bytes = 2 * len(meta_all.get("label_vocabulary", []))
    for name in meta_all.get("labellers", []):
        ext = score_member(name)
        if len(data[ext]) != vocab_bytes:
            report.error(f"{where}.{ext}: {len(data[ext])} bytes != {vocab_bytes}")


def verify_shards(out: str | Path, progress: bool = False) -> VerifyReport:
    """Open every tar of OUT, check members, decode video (all frames) and FLAC, check JSON and sizes.
    OUT may be a URL (each tar is copied here to be checked)."""
    out = Path(storage.location(out))
    report = VerifyReport()
    try:
        meta_all = load_dataset_json(out)
    except (OSError, ValueError) as err:
        report.error(str(err))
        return report
    for problem in dataset_problems(meta_all):
        report.error(problem)
    if not report.ok:
        return report
    listed = {s["tar"] for s in meta_all["shards"]}
    for extra in [out / name for name in storage.list_names(out) if name.endswith(".tar") and name not in listed]:
        try:
            if read_tar_samples(extra):
                report.error(f"{extra.name}: a tar with samples not listed in dataset.json")
        except (OSError, tarfile.TarError) as err:
            report.error(f"{extra.name}: cannot read: {err}")
    if not storage.exists(out / FAILURES_JSONL):
        report.error(f"{FAILURES_JSONL} is missing")
    shards = meta_all["shards"]
    if progress:
        from tqdm import tqdm
        shards = tqdm(shards, desc="verify", unit="shard")
    for shard in shards:
        tar_path = out / shard["tar"]
        report.shards += 1
        try:
            with storage.local_copy(tar_path) as local:
                _verify_tar(local, tar_path, shard, meta_all, report)
        except (OSError, tarfile.TarError) as err:
            report.error(f"{shard['tar']}: cannot read: {err}")
    return report


def _verify_tar(local: Path, tar_path: Path, shard: dict, meta_all: dict, report: VerifyReport) -> None:
    """Check one listed shard: `local` holds its bytes, `tar_path` is where it lives (its index beside)."""
    samples = read_tar_samples(local)
    if len(samples) != shard["samples"]:
        report.error(f"{shard['tar']}: {len(samples)} samples, dataset.json says {shard['samples']}")
    problem = check_index(tar_path)
    if problem:
        report.error(problem)
    keys = [k for k, _ in samples]
    if len(set(keys)) != len(keys):
        report.error(f"{shard['tar']}: a key appears in more than one group")
    with tarfile.open(local) as tar:
        for key, members in samples:
            report.samples += 1
            _verify_sample(tar, f"{shard['tar']}:{key}", members, meta_all, report)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deteclap.shard",
        description="Turn videos into WebDataset shards (shards/FORMAT.md): per clip the 10 CAV-MAE frame "
                    "instants as an all-key-frame VP9 mp4 and the first audio channel at 16 kHz as FLAC. "
                    "SRC is a folder of videos (mp4 mkv webm avi mov, recursive) or a CSV / JSONL manifest "
                    "(path or file, optional id, start, end, class / label / labels, split; or VGGSound's "
                    "headerless CSV with --video-dir). Resumable: finished shards are kept. "
                    "`--verify OUT` checks a shard folder instead.",
        epilog="Reason codes in failures.jsonl: " + "; ".join(f"{k}: {v}" for k, v in REASONS.items()))
    parser.add_argument("paths", nargs="*", metavar="SRC OUT", help="input and output (OUT only with --verify)")
    parser.add_argument("--verify", action="store_true", help="verify the shard folder given as the only path")
    parser.add_argument("--workers", type=int, default=1, help="processes encoding clips")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input was skipped")
    parser.add_argument("--allow-silent", action="store_true", help="store silence for inputs without audio")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="split for inputs whose manifest row names none")
    parser.add_argument("--samples-per-shard", type=int, default=None,
                        help=f"samples per tar (default {DEFAULT_SAMPLES_PER_SHARD}; when OUT already holds "
                             "shards, the value they were written with)")
    parser.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE, help="stored frame short side (px)")
    parser.add_argument("--no-crop", dest="crop", action="store_false",
                        help="keep the whole frame (short side resized) instead of CAV-MAE's centre square")
    parser.add_argument("--codec", default="vp9", choices=sorted(CODECS), help="stored video codec")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="segment length from `start`")
    parser.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                        help="skip inputs whose segment is shorter")
    parser.add_argument("--video-dir", default=None, help="folder of the clips a manifest names (VGGSound CSV)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--distributor", default="local", choices=("local", "ray"),
                        help="local: --workers processes here; ray: one Ray task per shard, same bytes "
                             "(pip install 'deteclap[ray]'; docs/SCALE.md)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join (auto, or ray://HOST:10001); default: a local Ray instance "
                             "with --workers CPUs")
    args = parser.parse_args(argv)
    if args.verify:
        if len(args.paths) != 1:
            parser.error("--verify takes exactly one path: the shard folder")
        report = verify_shards(args.paths[0], progress=not args.quiet)
        for line in report.errors:
            print(f"ERROR {line}")
        print(f"verify {args.paths[0]}: {report.shards} shards, {report.samples} samples, "
              f"{len(report.errors)} errors -> {'OK' if report.ok else 'FAILED'}")
        return 0 if report.ok else 1
    if len(args.paths) != 2:
        parser.error("expected SRC OUT (or --verify OUT)")
    if args.short_side < 2 or args.short_side % 2:
        parser.error("--short-side must be even and positive")
    settings = EncodeSettings(short_side=args.short_side, crop=args.crop, codec=args.codec, seconds=args.seconds,
                              min_seconds=args.min_seconds, allow_silent=args.allow_silent)
    try:
        summary = write_shards(args.paths[0], args.paths[1], workers=args.workers, split=args.split,
                               distributor=args.distributor, ray_address=args.ray_address,
                               samples_per_shard=args.samples_per_shard, settings=settings,
                               video_dir=args.video_dir, progress=not args.quiet)
    except (ShardError, DistributorError, storage.StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
    job = summary["job"]
    print(f"job: {job['clips']} clips, {job['bytes'] / 1e6:.1f} MB of shards, decode {job['decode_seconds']:.1f} s "
          f"+ encode {job['encode_seconds']:.1f} s of worker time, {job['wall_seconds']:.1f} s wall "
          f"({job['distributor']}); totals in {storage.join(summary['out'], JOB_STATS_JSON)}")
    print(f"{summary['samples']} samples in {summary['shards']} shards under {summary['out']} "
          f"({summary['written_now']} written now, {summary['skipped_shards']} shards already done); "
          f"{summary['failed']} inputs skipped ({reasons})")
    return 1 if args.strict and summary["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
