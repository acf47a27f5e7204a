"""Member names, the key rule, extensions and the frame table of the shard format (shards/FORMAT.md)."""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Container

import numpy as np

VIDEO_EXT = "mp4"
META_EXT = "json"
CLASSES_EXT = "cls"
FRAME_TABLE_EXT = "frames"
# `python -m deteclap.shard --audio-format` -> the audio member's extension. One folder holds one of them
# (dataset.json `encoding.audio_format`); both are 16 kHz mono 16-bit, so both give the same samples.
AUDIO_FORMATS = {"pcm": "wav", "flac": "flac"}
AUDIO_EXTS = tuple(AUDIO_FORMATS.values())
WAV_EXT = AUDIO_FORMATS["pcm"]
LEGACY_AUDIO_FORMAT = "flac"          # of folders written before dataset.json `encoding.audio_format` existed
AUDIO_EXT = AUDIO_FORMATS[LEGACY_AUDIO_FORMAT]    # their audio member
MEMBER_EXTENSIONS = (CLASSES_EXT, *AUDIO_EXTS, FRAME_TABLE_EXT, META_EXT, VIDEO_EXT)   # written in this order
SCORE_EXT = "f16"                     # label scores: `KEY.<labeller>.f16`, raw little-endian float16
SCORE_DTYPE = np.dtype("<f2")
FRAME_TABLE_DTYPE = np.dtype("<u4")
MAX_KEY_LENGTH = 80                   # USTAR member names hold 100 characters
KEY_HASH_CHARS = 12
JSON_FIELDS = ("key", "id", "source", "start", "duration", "fps", "source_fps", "frames", "width",
               "height", "sample_rate", "num_samples", "classes", "split")


# The `KEY.wav` member: a canonical 44-byte RIFF header (PCM, mono, 16-bit; its data chunk straight after
# the fmt chunk) and the samples as little-endian int16. Any WAV reader opens it; our readers take only
# this layout, so that a DALI pipeline reads the samples at a fixed offset without a decoder.
WAV_HEADER_BYTES = 44
WAV_RATE_OFFSET = 24                   # the header's uint32 sample rate
_WAV_HEADER = struct.Struct("<4sI4s4sIHHIIHH4sI")   # RIFF, size, WAVE, fmt , 16, PCM, mono, rate, ...
WAV_PCM, WAV_CHANNELS, WAV_BITS = 1, 1, 16
PCM_SCALE = 1.0 / 32768                # 16-bit sample -> float in [-1, 1), as libsndfile reads 16-bit audio


SPLIT_PATTERN = re.compile(r"[A-Za-z0-9_-]+")   # split names: they become shard file names


class FormatError(ValueError):
    """A file that breaks the shard format (an index, dataset.json, a member); the message names it."""


def check_split(split: str) -> str:
    """A split name, checked: letters, digits, `_` and `-` only (it becomes part of a file name, so
    `../x` or `a/b` would write outside the shard folder). Returns it.

    Raises:
        FormatError: another name (the message says which characters are allowed).
    """
    if not isinstance(split, str) or not SPLIT_PATTERN.fullmatch(split):
        raise FormatError(f"split {split!r}: a split name holds only letters, digits, '_' and '-'")
    return split


def key_problem(key: str) -> str | None:
    """Why a sample key read from a tar cannot be used, or None. The index is whitespace-separated
    text and DALI reports members by name in UTF-8, so a key must be printable UTF-8 without
    whitespace (deteclap writes only `[A-Za-z0-9_-]`; this guards tars made elsewhere)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return f"key {key!r} is not UTF-8"
    if not key or any(ch.isspace() or not ch.isprintable() for ch in key):
        return f"key {key!r} is empty or holds whitespace or control characters"
    return None


def split_member_name(name: str) -> tuple[str, str]:
    """A tar member name -> (key, extension) by WebDataset's rule: the key ends at the first dot after
    the last slash. `dir/KEY.ext.more` -> (`dir/KEY`, `ext.more`); `./k.mp4` -> (`./k`, `mp4`);
    a name without a dot there -> (name, ""). DALI's reader splits names the same way."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1:]


def make_key(clip_id: str) -> str:
    """Sample key: the clip id with every character outside [A-Za-z0-9_-] replaced by '_'.

    Keys longer than MAX_KEY_LENGTH (USTAR member names hold 100 characters) are cut and end with
    a hash of the whole id, so they stay unique.
    """
    key = re.sub(r"[^A-Za-z0-9_-]", "_", clip_id)
    if len(key) > MAX_KEY_LENGTH:
        digest = hashlib.sha1(clip_id.encode()).hexdigest()[:KEY_HASH_CHARS]
        key = f"{key[:MAX_KEY_LENGTH - KEY_HASH_CHARS - 1]}_{digest}"
    return key


def member_name(key: str, ext: str) -> str:
    """`KEY.ext`; refuses a key that the key rule would split elsewhere (a dot after its last slash)."""
    if "." in key[key.rfind("/") + 1:]:
        raise FormatError(f"sample key {key!r} holds a dot: the member {key}.{ext} would get another key")
    return f"{key}.{ext}"


def score_member(labeller: str) -> str:
    """The member extension of a labeller's scores, e.g. `clap.f16`."""
    if not labeller or "." in labeller or "/" in labeller:
        raise ValueError(f"bad labeller name {labeller!r}: non-empty, without '.' or '/'")
    return f"{labeller}.{SCORE_EXT}"


def is_score_member(ext: str) -> bool:
    """Whether a member extension holds label scores (`<labeller>.f16`)."""
    return ext.endswith("." + SCORE_EXT) and len(ext) > len(SCORE_EXT) + 1


def labeller_of(ext: str) -> str:
    """`clap.f16` -> `clap` (the labeller whose scores a score member holds)."""
    if not is_score_member(ext):
        raise ValueError(f"{ext!r} is not a score member extension (`<labeller>.{SCORE_EXT}`)")
    return ext[: -len(SCORE_EXT) - 1]


def shard_name(split: str, index: int) -> str:
    """A shard's file stem: `{split}-{index:06d}` (its tar and index add `.tar` / `.idx`); the split
    is checked (`check_split`)."""
    return f"{check_split(split)}-{index:06d}"


def audio_ext(audio_format: str) -> str:
    """`pcm` -> `wav`, `flac` -> `flac`: the audio member of a dataset.json `encoding.audio_format`."""
    if audio_format not in AUDIO_FORMATS:
        raise FormatError(f"audio format {audio_format!r}: known formats are {', '.join(AUDIO_FORMATS)}")
    return AUDIO_FORMATS[audio_format]


def encode_wav(pcm: np.ndarray, sample_rate: int) -> bytes:
    """int16 [samples] -> the `KEY.wav` member (canonical 44-byte header, then the samples)."""
    data = np.ascontiguousarray(pcm, dtype="<i2").tobytes()
    header = _WAV_HEADER.pack(b"RIFF", 36 + len(data), b"WAVE", b"fmt ", 16, WAV_PCM, WAV_CHANNELS, sample_rate,
                              sample_rate * 2, 2, WAV_BITS, b"data", len(data))
    return header + data


def wav_problem(header: bytes, size: int) -> str | None:
    """Why the first WAV_HEADER_BYTES bytes of a `KEY.wav` member of `size` bytes are not the canonical
    header of 16-bit mono PCM whose data chunk fills the rest of the member, or None. The sample
    rate is not checked here (the loaders refuse one other than 16 kHz as `bad_audio`)."""
    if size < WAV_HEADER_BYTES or len(header) < WAV_HEADER_BYTES:
        return f"{size} bytes, shorter than a {WAV_HEADER_BYTES}-byte WAV header"
    riff, _, wave, fmt, fmt_size, kind, channels, _, _, _, bits, data, data_size = _WAV_HEADER.unpack(
        bytes(header[:WAV_HEADER_BYTES]))
    if (riff, wave, fmt, fmt_size, data) != (b"RIFF", b"WAVE", b"fmt ", 16, b"data"):
        return ("not a canonical 44-byte WAV header (RIFF/WAVE, a 16-byte fmt chunk, then the data chunk): "
                "python -m deteclap.shard --audio-format pcm writes one")
    if (kind, channels, bits) != (WAV_PCM, WAV_CHANNELS, WAV_BITS):
        return f"format {kind}, {channels} channels, {bits} bits: expected PCM (1), mono, 16 bits"
    if data_size != size - WAV_HEADER_BYTES:
        return (f"its data chunk says {data_size} bytes, the member holds {size - WAV_HEADER_BYTES} after the "
                "header (truncated or padded)")
    if data_size % 2:
        return f"{data_size} bytes of samples: an odd count, not whole 16-bit samples"
    return None


def sample_audio_ext(members: Container[str]) -> str | None:
    """The audio member (AUDIO_EXTS) a sample holds, given its member extensions (a dict or a set),
    or None when it holds none."""
    return next((ext for ext in AUDIO_EXTS if ext in members), None)


def wav_rate(header: bytes) -> int:
    """The sample rate field of a canonical WAV header."""
    return _WAV_HEADER.unpack(bytes(header[:WAV_HEADER_BYTES]))[7]


def decode_wav(data: bytes) -> tuple[np.ndarray, int]:
    """A `KEY.wav` member -> (int16 [samples], sample rate); FormatError (`wav_problem`) for another layout."""
    problem = wav_problem(data[:WAV_HEADER_BYTES], len(data))
    if problem:
        raise FormatError(problem)
    return np.frombuffer(data, "<i2", offset=WAV_HEADER_BYTES), wav_rate(data)


def encode_frame_table(width: int, height: int, frames: list[tuple[int, int]]) -> bytes:
    """The `KEY.frames` member: little-endian uint32 [width, height, offset_0, size_0, ...]; frame i of
    the all-key-frame mp4 lies at mp4[offset_i : offset_i + size_i]."""
    return np.array([width, height, *[v for row in frames for v in row]], FRAME_TABLE_DTYPE).tobytes()


def decode_frame_table(data: bytes) -> tuple[int, int, list[tuple[int, int]]]:
    """`KEY.frames` bytes -> (width, height, [(offset, size)] per frame)."""
    if len(data) % 8 or len(data) < 8:
        raise FormatError(f"a frame table of {len(data)} bytes: expected 8 + 8 per frame")
    values = np.frombuffer(data, FRAME_TABLE_DTYPE).tolist()
    return values[0], values[1], list(zip(values[2::2], values[3::2]))


def frame_table_problem(data: bytes, mp4_size: int, frames_needed: int) -> str | None:
    """Why a `KEY.frames` member cannot be the frame table of an mp4 of `mp4_size` bytes holding at
    least `frames_needed` frames, or None. A frame table lists the frames in decoding order, each
    non-empty and inside the mp4, each starting after the one before ends: a table whose entries
    all point at frame 0 (or overlap) would make the DALI pipelines decode another frame than the
    one sampled, without an error."""
    try:
        _, _, frames = decode_frame_table(data)
    except FormatError as err:
        return str(err)
    if len(frames) < frames_needed:
        return f"it lists {len(frames)} frames, the config samples frame {frames_needed - 1}"
    end = 0
    for i, (offset, size) in enumerate(frames):
        if size == 0 or offset < end or offset + size > mp4_size:
            return (f"frame {i} at bytes [{offset}, {offset + size}) is empty, overlaps the frame before "
                    f"(ending at {end}) or lies past the mp4's {mp4_size} bytes")
        end = offset + size
    return None
