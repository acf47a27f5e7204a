"""One clip, as the shard writer stores it and `deteclap embed` reads it. `decode_clip` decodes a
segment of a video file into what a sample stores (CAV-MAE's frame instants at the stored size,
the first audio channel at 16 kHz); `process_clip` encodes those as the sample's members (shards/FORMAT.md).

Audio is resampled with PyAV's resampler (libswresample), the library of the `ffmpeg -ar 16000` of
CAV-MAE's own preprocessing; all channels are resampled and then the first is kept (ffmpeg, then
`sox remix 1`). Frames are stored as CAV-MAE's own extraction stores them
(src/preprocess/extract_video_frame.py: PIL RGB, Resize(224, bicubic), CenterCrop(224)), so that
the loaders only decode and normalise; `crop=False` keeps the whole frame at `short_side` instead.
"""

from __future__ import annotations

import io
import json
import math
import stat
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from deteclap.format import (CLASSES_EXT, FRAME_TABLE_EXT, META_EXT, VIDEO_EXT, audio_ext, encode_frame_table,
                             encode_wav, storage)
from deteclap.inputs import ClipInput, failure_row

NUM_FRAMES = 10                      # CAV-MAE's frame instants per clip
SAMPLE_RATE = 16000
DEFAULT_SHORT_SIDE = 224            # CAV-MAE's image size: stored frames need no resize
DEFAULT_SECONDS = 10.0
DEFAULT_MIN_SECONDS = 1.0
# A segment starting SEEK_MIN_START s or later (a whole video with a start offset): its video is
# decoded from the key frame at or before start - SEEK_MARGIN, not from the file's start (its audio
# is always decoded from the start: _segment_audio). The stored members are byte-identical.
SEEK_MIN_START = 5.0                 # s
SEEK_MARGIN = 1.0                    # s
# DALI's CPU decoder reads VP8 / VP9 / MJPEG, NVDEC VP9: VP9 (FFmpeg's mp4 muxer refuses VP8:
# "'mp4' format does not support 'libvpx' codec")
CODECS = {"vp9": "libvpx-vp9"}
# Fast VP9 settings (byte-stable; the whole shard writer did 21 clips/s on one core at 224x224).
VPX_OPTIONS = {"crf": "32", "b:v": "0", "deadline": "realtime", "cpu-used": "8", "threads": "1"}
FLAC_SUBTYPE = "PCM_16"
INT16_SCALE = 32767
TEXT_SNIFF_BYTES = 512
TIME_EPSILON = 1e-6                  # s: frame times equal up to rounding count as equal


class ClipFailure(Exception):
    """One input cannot be used; `reason` is a key of deteclap.inputs.REASONS."""

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
    audio_format: str = "pcm"         # AUDIO_FORMATS: pcm (`KEY.wav`, read without a decoder) | flac (smaller)


@dataclass
class Segment:
    """A decoded segment [start, end): the video frames at CAV-MAE's instants and the first audio channel.

    Only the frames stored are kept (`source_frames` N counts the segment's frames): memory stays
    at num_frames decoded source frames (plus the decoder's own reference frames) whatever the
    segment's resolution and length; a 3840x2160 yuv420p frame is 12.4 MB, so ~125 MB for 10."""
    frames: list                      # av.VideoFrame at the source size: segment frame i * N // num_frames
    wave: np.ndarray                  # float32 [S] at settings.sample_rate, the span the frames cover
    source_fps: float
    duration: float                   # s covered by the frames
    silent: bool                      # no audio stream (allow_silent): `wave` is zeros
    source_frames: int = 0            # N: the segment's frames
    frame_indices: list[int] | None = None   # frame_instants(N): the segment frames in `frames`


@dataclass
class Clip:
    """What one sample stores, before encoding: `decode_clip`'s result."""
    frames: list                      # num_frames av.VideoFrame, yuv420p at the stored size
    wave: np.ndarray                  # float32 [S], mono, at settings.sample_rate
    source_fps: float
    duration: float
    silent: bool
    source_frames: int                # N: frames of the segment
    frame_indices: list[int]          # the segment frames stored (CAV-MAE's instants)

    def rgb(self) -> np.ndarray:
        """The stored frames as uint8 RGB [num_frames, H, W, 3] (before the VP9 encode)."""
        return np.stack([frame.to_ndarray(format="rgb24") for frame in self.frames])


def frame_instants(num_source_frames: int, num_frames: int = NUM_FRAMES) -> list[int]:
    """CAV-MAE's frame instants: source frame i * N // num_frames for i = 0..num_frames-1."""
    return [i * num_source_frames // num_frames for i in range(num_frames)]


# ----------------------------------------------------------------------------------------------
# decoding
def _looks_like_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(TEXT_SNIFF_BYTES)
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch >= 32 or ch in b"\t\n\r" for ch in head)


def _check_readable(path: Path) -> None:
    """ClipFailure `unreadable` / `empty_file` for a file that cannot be read or holds nothing."""
    try:
        info = path.stat()
        size = info.st_size
        if path.is_dir():
            raise ClipFailure("unreadable", f"{path} is a folder")
        if not stat.S_ISREG(info.st_mode):     # opening a FIFO would wait for a writer forever
            raise ClipFailure("unreadable", f"{path} is not a regular file (a FIFO, socket or device)")
        with open(path, "rb") as f:
            f.read(1)
    except OSError as err:
        raise ClipFailure("unreadable", f"{type(err).__name__}: {err}") from None
    if size == 0:
        raise ClipFailure("empty_file", "0 bytes")


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as err:
        reason = "not_media" if _looks_like_text(path) else "corrupt"
        raise ClipFailure(reason, f"cannot open: {err}") from None


def _seek(container, video, origin: float, seek_to: float | None) -> bool:
    """Seek the container to the key frame at or before t = seek_to (None: stay at the start)."""
    import av

    if seek_to is None:
        return True
    try:
        container.seek(math.floor((origin + seek_to) / video.time_base), stream=video, backward=True, any_frame=False)
    except av.FFmpegError:
        return False
    return True


def _count_packets(path: Path, origin: float, start: float, end: float, seek_to: float | None) -> int:
    """The video packets whose presentation time lies in [start, end), read without decoding (after
    the same seek as the decode): the segment's frame count for every stream this writer has met,
    so that one decode keeps just the frames stored. A wrong count costs a second decode, never a
    wrong frame (`_segment_video`)."""
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        if not _seek(container, video, origin, seek_to):
            return 0
        count = 0
        for packet in container.demux(video):
            if packet.pts is None or packet.size == 0:
                continue
            if packet.dts is not None and float(packet.dts * video.time_base) - origin > end + SEEK_MARGIN:
                break                         # decoding order: later packets show after `end`
            t = float(packet.pts * video.time_base) - origin
            if start - TIME_EPSILON <= t < end - TIME_EPSILON:
                count += 1
    return count


def _video_frames(path: Path, origin: float, start: float, end: float, seek_to: float | None, wanted: set[int]
                  ) -> tuple[dict, int, float | None] | None:
    """Decode the video frames with start <= t < end, keeping only those whose index among them is
    in `wanted`: ({index: av.VideoFrame}, the number of frames in [start, end), the time t of the
    first frame decoded).

    With `seek_to`, decoding starts at the key frame at or before t = seek_to (the frames decoded
    from a key frame are those of a decode from the file's start); None where the seek fails or
    lands after its target (then decode from the file's start).
    """
    import av

    with av.open(str(path)) as container:
        video = container.streams.video[0]
        if not _seek(container, video, origin, seek_to):
            return None
        kept, count, first = {}, 0, None
        for frame in container.decode(video):
            t = frame.time - origin if frame.time is not None else 0.0
            if first is None:
                if seek_to is not None and (frame.time is None or t > seek_to + TIME_EPSILON):
                    return None
                first = t
            if t >= end - TIME_EPSILON:
                break
            if t >= start - TIME_EPSILON:
                if count in wanted:
                    kept[count] = frame
                count += 1
    return kept, count, first


def _segment_video(path: Path, origin: float, start: float, end: float, num_frames: int = NUM_FRAMES
                   ) -> tuple[list, int, float | None]:
    """The frames of [start, end) at CAV-MAE's instants (`frame_instants` of the segment's N frames),
    N, and the time of the first frame decoded. Decoded from a key frame before start when start >=
    SEEK_MIN_START. N is counted from the packets first, so one decode keeps only the num_frames
    frames stored; where the decode finds another N, it decodes again keeping the right ones."""
    seek_to = start - SEEK_MARGIN if start >= SEEK_MIN_START else None
    estimate = _count_packets(path, origin, start, end, seek_to)
    found = _video_frames(path, origin, start, end, seek_to, set(frame_instants(estimate, num_frames)))
    if found is None:
        seek_to = None
        found = _video_frames(path, origin, start, end, None, set(frame_instants(estimate, num_frames)))
    kept, count, first = found
    indices = frame_instants(count, num_frames)
    if count and not set(indices) <= set(kept):
        kept, count, first = _video_frames(path, origin, start, end, seek_to, set(indices))
    return [kept[i] for i in indices] if count else [], count, first


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


def _check_duration(num_frames: int, source_fps: float, declared: float | None, start: float, seconds: float,
                    min_seconds: float) -> tuple[float, float]:
    """(source_fps, duration) of the segment's decoded frames; ClipFailure when there are none, they end
    well before the declared duration, or cover less than min_seconds."""
    if not num_frames:
        if declared is not None and declared <= start:
            raise ClipFailure("too_short", f"segment starts at {start:g} s, the file lasts {declared:g} s")
        raise ClipFailure("no_video", "no video frame in the segment")
    if source_fps <= 0:
        source_fps = num_frames / seconds
    duration = num_frames / source_fps
    if declared is not None and duration < min(seconds, declared - start) - max(1.0, 2 / source_fps):
        raise ClipFailure("truncated", f"video frames cover {duration:.2f} s of the declared {declared:.2f} s")
    if duration < min_seconds - TIME_EPSILON:
        raise ClipFailure("too_short", f"segment lasts {duration:.2f} s < --min-seconds {min_seconds:g}")
    return source_fps, duration


def _segment_wave(chunks: list, audio_t0: float | None, start: float, num_samples: int, rate: int) -> np.ndarray:
    """The first channel of the resampled chunks, from `start`, cut to num_samples (the span the video
    frames cover; AAC pads its end)."""
    if not chunks:
        raise ClipFailure("no_audio", "the audio stream holds no sample in the segment")
    wave = np.concatenate([c.to_ndarray()[0] for c in chunks]).astype(np.float32)
    offset = int(round((start - (audio_t0 or 0.0)) * rate))
    wave = wave[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), wave])
    return wave[:num_samples]


def decode_segment(path: str | Path, start: float, end: float | None, settings: EncodeSettings) -> Segment:
    """Decode [start, end) of a video file (end None: start + settings.seconds): its video frames and
    its first audio channel at settings.sample_rate. Raises ClipFailure (a REASONS code).

    `start` / `end` count from the container's start time (0 s = its first frame or sample, as
    for ffmpeg's `-ss`), which is not 0 in stream copies and captures; audio and video share it.
    """
    import av

    path = Path(path)
    _check_readable(path)
    container = _open(path)
    seconds = (end - start) if end is not None else settings.seconds
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
            frames, count, _ = _segment_video(path, origin, start, end, settings.num_frames)
            if audio is not None:
                chunks, audio_t0 = _segment_audio(container, audio, origin, end, settings.sample_rate)
        except av.FFmpegError as err:
            raise ClipFailure("corrupt", f"decoding failed: {err}") from None
        source_fps = float(video.average_rate or video.guessed_rate or 0.0)
        declared = float(container.duration) / av.time_base if container.duration else None
    source_fps, duration = _check_duration(count, source_fps, declared, start, seconds, settings.min_seconds)
    num_samples = int(round(min(seconds, duration) * settings.sample_rate))
    if audio is None:
        wave = np.zeros(num_samples, np.float32)
    else:
        wave = _segment_wave(chunks, audio_t0, start, num_samples, settings.sample_rate)
    return Segment(frames, wave, source_fps, duration, audio is None, count, frame_instants(count, settings.num_frames))


def _target_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """Resize keeping the aspect ratio so the short side is `short_side`; both sides even."""
    if width <= height:
        new_w, new_h = short_side, height * short_side / width
        return new_w, max(2, int(round(new_h / 2)) * 2)
    new_h, new_w = short_side, width * short_side / height
    return max(2, int(round(new_w / 2)) * 2), new_h


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


def decode_clip(path: str | Path, start: float = 0.0, end: float | None = None,
                settings: EncodeSettings | None = None) -> Clip:
    """One clip as a sample stores it: CAV-MAE's `settings.num_frames` frame instants of [start, end)
    at the stored size (yuv420p av.VideoFrames; `Clip.rgb()` as uint8 [F, H, W, 3]) and the first
    audio channel at 16 kHz (float32 [S]). The shard writer and `deteclap embed` both use it.
    Raises ClipFailure (a REASONS code) for an input that cannot be used."""
    settings = settings or EncodeSettings()
    segment = decode_segment(path, start, end, settings)
    stored = [_stored_frame(frame, settings) for frame in segment.frames]
    return Clip(stored, segment.wave, segment.source_fps, segment.duration, segment.silent, segment.source_frames,
                segment.frame_indices)


# ----------------------------------------------------------------------------------------------
# encoding
def _encode_video(frames, settings: EncodeSettings) -> tuple[bytes, int, int]:
    """Chosen av.VideoFrames of a source -> the stored mp4 (`_stored_frame`, then `encode_stored_video`)."""
    return encode_stored_video([_stored_frame(frame, settings) for frame in frames], settings)


def encode_stored_video(frames, settings: EncodeSettings) -> tuple[bytes, int, int]:
    """Encode stored (yuv420p) frames as an all-key-frame 1 fps mp4; returns (bytes, width, height)."""
    import av

    width, height = frames[0].width, frames[0].height
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream(CODECS[settings.codec], rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.gop_size = 1
        stream.time_base = Fraction(1, 1)
        stream.options = dict(VPX_OPTIONS)
        for i, out in enumerate(frames):
            out.pts, out.time_base = i, stream.time_base  # frame i at i seconds (1 fps)
            container.mux(stream.encode(out))
        container.mux(stream.encode())
    return buf.getvalue(), width, height


def frame_table(video: bytes, width: int, height: int) -> bytes:
    """The `KEY.frames` member of an all-key-frame mp4 (deteclap.format.encode_frame_table): with it a
    DALI pipeline cuts one frame out of the mp4 and decodes only that frame (dali_pipes)."""
    from deteclap.data.mp4 import read_samples

    return encode_frame_table(width, height, [(sample.offset, sample.size) for sample in read_samples(video)])


def _to_int16(wave: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wave, -1.0, 1.0) * INT16_SCALE).astype(np.int16)


def _encode_flac(wave: np.ndarray, sample_rate: int) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, _to_int16(wave), sample_rate, format="FLAC", subtype=FLAC_SUBTYPE)
    return buf.getvalue()


def encode_audio(wave: np.ndarray, sample_rate: int, audio_format: str) -> tuple[str, bytes]:
    """float32 [samples] in [-1, 1] -> (member extension, bytes) in an AUDIO_FORMATS format: 16-bit
    either way, so both give the loaders the same samples."""
    if audio_format == "flac":
        return audio_ext(audio_format), _encode_flac(wave, sample_rate)
    return audio_ext(audio_format), encode_wav(_to_int16(wave), sample_rate)


def _sample_json(item: ClipInput, clip: Clip, settings: EncodeSettings, width: int, height: int) -> bytes:
    meta = {"key": item.key, "id": item.clip_id, "source": item.shown_source, "start": item.start,
            "duration": round(clip.duration, 6), "fps": 1, "source_fps": round(clip.source_fps, 6),
            "frames": settings.num_frames, "width": width, "height": height,
            "sample_rate": settings.sample_rate, "num_samples": int(len(clip.wave)), "classes": item.classes,
            "split": item.split, "source_frames": clip.source_frames, "frame_indices": clip.frame_indices,
            "silent": clip.silent}
    return json.dumps(meta, sort_keys=True).encode()


def preload() -> None:
    """Import PyAV and torchvision now (seconds in a fresh process), so that the first clip's decode
    and encode times in the stats files are the clip's own."""
    import av  # noqa: F401
    import torchvision.transforms.functional  # noqa: F401


def _decode_input(item: ClipInput, settings: EncodeSettings) -> Clip:
    """decode_clip of an input wherever it lives: a URL or a tar member (video2dataset's layout) is
    copied to a local temporary file first (deteclap.sources.local_input)."""
    if not item.member and not storage.is_url(item.source):
        return decode_clip(item.source, item.start, item.end, settings)
    from deteclap.sources import local_input

    try:
        with local_input(item.source, item.member, item.member_range) as local:
            return decode_clip(local, item.start, item.end, settings)
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
        clip = _decode_input(item, settings)
        decoded = time.perf_counter()
        video_bytes, width, height = encode_stored_video(clip.frames, settings)
        audio_member, audio_bytes = encode_audio(clip.wave, settings.sample_rate, settings.audio_format)
    except ClipFailure as failure:
        decoded = decoded or time.perf_counter()
        return {"failure": failure_row(item.shown_source, failure.reason, failure.detail, item.split, item.key),
                "seconds": {"decode": decoded - started, "encode": time.perf_counter() - decoded}}
    seconds = {"decode": decoded - started, "encode": time.perf_counter() - decoded}
    multi_hot = np.zeros(num_classes, np.uint8)
    multi_hot[item.class_indices] = 1
    return {"members": {CLASSES_EXT: multi_hot.tobytes(), audio_member: audio_bytes,
                        FRAME_TABLE_EXT: frame_table(video_bytes, width, height),
                        META_EXT: _sample_json(item, clip, settings, width, height), VIDEO_EXT: video_bytes},
            "seconds": seconds}


def process_job(job: tuple[ClipInput, EncodeSettings, int]) -> dict:
    """process_clip of one (input, settings, number of classes) job (a process pool's map target)."""
    return process_clip(*job)
