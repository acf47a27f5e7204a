"""Where one video frame lies inside an in-memory mp4: a minimal ISO-BMFF sample-table reader.

The reference loader decodes ONE frame per sample from the shard's all-key-frame VP9 mp4. Opening
the file with PyAV (avformat probing, stream set-up, a fresh decoder) cost ~1.3 ms of the ~3.5 ms
per frame; reading the sample table here and handing the frame's bytes to a reused decoder
(deteclap.data.loader.decode_frame) does not. Only single-track files are read; anything else
raises `Mp4LayoutError` and the caller falls back to PyAV.

Boxes read: moov/trak/mdia/minf/stbl with stsd (codec), stsz (sizes), stco / co64 (chunk
offsets), stsc (samples per chunk) and stss (key frames; absent = every sample is a key frame).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

CONTAINER_BOXES = {b"moov", b"trak", b"mdia", b"minf", b"stbl"}
TABLE_BOXES = {b"stsd", b"stsz", b"stco", b"co64", b"stsc", b"stss"}
FULL_BOX_HEADER = 4                      # version + flags before a table's fields
CODECS = {b"vp09": "vp9", b"vp08": "vp8"}


class Mp4LayoutError(ValueError):
    """The file is not a single-track mp4 whose sample table this reader understands."""


@dataclass
class Sample:
    """One frame's bytes in the file: data[offset : offset + size]; codec is the FFmpeg decoder name."""
    offset: int
    size: int
    codec: str
    keyframe: bool


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in data[start:end]."""
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size, header = struct.unpack_from(">Q", data, pos + 8)[0], 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise Mp4LayoutError(f"box {kind!r} at {pos} of size {size} does not fit in [{start}, {end})")
        yield kind, pos + header, pos + size
        pos += size


def _tables(data: bytes) -> dict[bytes, int]:
    """Payload start (after version + flags) of each sample-table box of the single track."""
    found: dict[bytes, int] = {}
    tracks = 0

    def walk(start: int, end: int) -> None:
        nonlocal tracks
        for kind, payload, box_end in _boxes(data, start, end):
            if kind == b"trak":
                tracks += 1
            if kind in CONTAINER_BOXES:
                walk(payload, box_end)
            elif kind in TABLE_BOXES:
                found[kind] = payload + FULL_BOX_HEADER
    walk(0, len(data))
    if tracks != 1:
        raise Mp4LayoutError(f"{tracks} tracks (need exactly 1)")
    missing = {b"stsd", b"stsz", b"stsc"} - set(found)
    if missing or not ({b"stco", b"co64"} & set(found)):
        raise Mp4LayoutError(f"sample table incomplete (found {sorted(found)})")
    return found


def _uints(data: bytes, at: int, fmt: str) -> tuple[int, ...]:
    """A count-prefixed array of big-endian unsigned-int entries starting at `at`, flat: `fmt` is
    one entry ("I", "Q", or "III" for stsc's three fields), the count is of entries."""
    count = struct.unpack_from(">I", data, at)[0]
    return struct.unpack_from(f">{count * len(fmt)}{fmt[0]}", data, at + 4)


def read_samples(data: bytes) -> list[Sample]:
    """Where every sample (frame, in decoding order) of a single-track mp4 lies.

    Raises:
        Mp4LayoutError: not a single-track mp4 with a readable sample table, an unknown codec, or
            a sample past the end of the file.
    """
    try:
        tables = _tables(data)
        entry_format = struct.unpack_from(">4s", data, tables[b"stsd"] + 8)[0]   # count, entry size
        fixed, count = struct.unpack_from(">II", data, tables[b"stsz"])
        sizes = [fixed] * count if fixed else list(struct.unpack_from(f">{count}I", data, tables[b"stsz"] + 8))
        offsets = _uints(data, tables[b"stco"], "I") if b"stco" in tables else _uints(data, tables[b"co64"], "Q")
        runs = _uints(data, tables[b"stsc"], "III")   # (first chunk, samples per chunk, description) flat
        sync = set(_uints(data, tables[b"stss"], "I")) if b"stss" in tables else None
    except struct.error as err:
        raise Mp4LayoutError(f"sample table truncated: {err}") from err
    if entry_format not in CODECS:
        raise Mp4LayoutError(f"codec {entry_format!r} not in {sorted(CODECS)}")
    firsts, per_chunk = runs[0::3], runs[1::3]
    samples: list[Sample] = []
    for run, first in enumerate(firsts):
        last = firsts[run + 1] - 1 if run + 1 < len(firsts) else len(offsets)
        for chunk in range(first, last + 1):
            if chunk > len(offsets):
                raise Mp4LayoutError(f"chunk {chunk} past the {len(offsets)} chunk offsets")
            offset = offsets[chunk - 1]
            for _ in range(per_chunk[run]):
                if len(samples) == count:
                    return samples
                size = sizes[len(samples)]
                if offset + size > len(data):
                    raise Mp4LayoutError(f"sample {len(samples)} ends past the file ({len(data)} bytes)")
                keyframe = sync is None or len(samples) + 1 in sync
                samples.append(Sample(offset, size, CODECS[entry_format], keyframe))
                offset += size
    if len(samples) != count:
        raise Mp4LayoutError(f"the chunks hold {len(samples)} of the {count} samples")
    return samples


def find_sample(data: bytes, index: int) -> Sample:
    """Where sample `index` (0-based, decoding order) of a single-track mp4 lies.

    Raises:
        Mp4LayoutError: as `read_samples`, or `index` out of range.
    """
    samples = read_samples(data)
    if not 0 <= index < len(samples):
        raise Mp4LayoutError(f"sample {index} out of range ({len(samples)} samples)")
    return samples[index]
