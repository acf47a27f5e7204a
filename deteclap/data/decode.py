"""Decoding of shard members from in-memory bytes: the video frames (PyAV) and the audio (`KEY.wav`
read as it lies, `KEY.flac` by soundfile).

Both loaders and `python -m deteclap.shard --verify` use these, so a member that decodes here
decodes the same everywhere on the CPU. Corrupt input raises `DecodeError` (a ValueError) with a
message that says what was wrong; nothing returns zeros.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


class DecodeError(ValueError):
    """A member could not be decoded (corrupt, truncated, empty or of the wrong kind)."""


def decode_video_frames(data: bytes, indices: Sequence[int] | None = None) -> np.ndarray:
    """Decode frames of an in-memory video file.

    Args:
        data: the whole file (e.g. a shard's `KEY.mp4` member).
        indices: frame indices (0-based, in decoding order) to return, in the order given
            (repeats allowed); None returns every frame.
    Returns:
        uint8 array [n, H, W, 3] RGB.
    Raises:
        DecodeError: empty or corrupt data, no video stream, or an index past the last frame.
    """
    import av

    if not data:
        raise DecodeError("empty video data (0 bytes)")
    wanted = None if indices is None else [int(i) for i in indices]
    if wanted is not None and any(i < 0 for i in wanted):
        raise DecodeError(f"negative frame index in {wanted}")
    last_wanted = None if wanted is None or not wanted else max(wanted)
    frames: dict[int, np.ndarray] = {}
    decoded = 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                if wanted is None or decoded in wanted:
                    frames[decoded] = frame.to_ndarray(format="rgb24")
                decoded += 1
                if last_wanted is not None and decoded > last_wanted:
                    break
    except DecodeError:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise DecodeError(f"corrupt video data: {type(err).__name__}: {err}") from err
    if wanted is None:
        if not frames:
            raise DecodeError("video stream holds no decodable frame")
        return np.stack([frames[i] for i in range(decoded)])
    missing = [i for i in wanted if i not in frames]
    if missing:
        raise DecodeError(f"frame indices {missing} out of range: the video has {decoded} frames")
    if not wanted:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return np.stack([frames[i] for i in wanted])


def decode_audio(data: bytes) -> tuple[np.ndarray, int]:
    """Decode an in-memory audio file (FLAC / WAV / OGG, as the shards store it).

    Returns:
        (wave float32 [samples] in [-1, 1], sample rate). A multi-channel file gives its first
        channel (CAV-MAE's `sox remix 1`), never a down-mix.
    Raises:
        DecodeError: empty or corrupt data, or an unsupported format.
    """
    import soundfile

    if not data:
        raise DecodeError("empty audio data (0 bytes)")
    try:
        wave, sample_rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as err:
        raise DecodeError(f"corrupt audio data: {type(err).__name__}: {err}") from err
    return np.ascontiguousarray(wave[:, 0]), int(sample_rate)


def decode_audio_member(ext: str, data: bytes) -> tuple[np.ndarray, int]:
    """A shard's audio member -> (wave float32 [samples] in [-1, 1], sample rate). `wav`: the format's
    canonical 16-bit PCM (deteclap.format.decode_wav; nothing to decode, so nothing but the
    int16 -> float scale costs CPU); `flac` (or another soundfile format): decode_audio. Both give
    int16 / 32768, the float libsndfile gives for 16-bit audio.

    Raises:
        DecodeError: a `wav` member that is not the canonical layout (it names what is wrong), or
            corrupt data.
    """
    from deteclap.format import PCM_SCALE, WAV_EXT, FormatError, decode_wav

    if ext != WAV_EXT:
        return decode_audio(data)
    try:
        pcm, rate = decode_wav(data)
    except FormatError as err:
        raise DecodeError(str(err)) from None
    return pcm.astype(np.float32) * np.float32(PCM_SCALE), rate
