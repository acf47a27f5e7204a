"""DALI pipeline definitions: one WebDataset reader, pure processing functions, train / eval pipelines.

Only graph definitions live here (DALI is imported inside the functions); dali_pipes.iterator runs
them. Per sample the pipelines decode ONE frame of the shard's VP9 mp4 (training: a random instant
in [0, num_frames); evaluation: `eval_frame`) with `spec.video_decoder`: "mixed" (NVDEC) or "cpu"
(in a GPU pipeline its frames then move to the GPU; a CPU pipeline has `device_id=None`). DALI's
video decoder does not seek (2.4 decodes from frame 0 up to the frame asked for: frame 9 cost 8x
frame 0), so the frame's bytes are cut out of the mp4 with the sample's
`KEY.frames` table and decoded alone, wrapped in a 44-byte IVF header (`cut_frame`); shards without
the table (format version 1) decode from frame 0. Then: resize the short side to `img_size` with
DALI's cubic filter with antialiasing (the closest DALI has to PIL's antialiased BICUBIC; skipped
for the img_size x img_size frames the shard writer stores by default), centre-crop, normalise
with CAV-MAE's mean/std to NCHW; read the audio as int16 (`KEY.wav`: the samples after the 44-byte
header reinterpreted, no decoder; `KEY.flac`: DALI's audio decoder, first channel), return its rate
(the iterator refuses anything but 16 kHz) and pad it in the batch with its length;
reinterpret the raw label members (`.f16` -> float16 [C], `.cls` -> uint8 [C]). The Kaldi fbank is
NOT computed here: DALI's mel filter bank is not Kaldi's, so the iterator applies deteclap.audio
to the padded waves right after the pipeline (on the GPU when there is one). The `source_info` of
the mp4 member ("TAR:OFFSET:KEY.mp4") is returned so that the iterator knows each sample's key.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from deteclap.format import FRAME_TABLE_EXT, WAV_EXT, is_score_member

READER_NAME = "reader"
OUTPUTS = ("frames", "waves", "lengths", "rates", "classes", "source")  # then one per label-score member
WAV_HEAD = "wav_head"     # KEY.wav shards: the header [44] too (after OUTPUTS), checked by the iterator
IVF_FOURCC = {"vp9": b"VP90"}
FRAME_MARKER = {"vp9": (0xC0, 0x80)}     # (mask, value) of a frame's first byte: VP9's frame marker
IVF_FILE_HEADER = 32                      # "DKIF", version, header size, fourcc, width, height, rate, count


@dataclass
class PipeSpec:
    """Everything a pipeline needs, plain values (built from a Config by the iterator)."""
    tars: list[str]
    exts: list[str]                         # mp4, wav | flac, json, cls, [frames], then `<labeller>.f16`
    index_paths: list[str] = field(default_factory=list)
    batch_size: int = 8
    num_threads: int = 2
    device_id: int | None = None            # None: CPU-only pipeline
    shard_id: int = 0
    num_shards: int = 1
    seed: int = 0
    shuffle: bool = False
    initial_fill: int = 1000
    missing_component_behavior: str = "error"
    img_size: int = 224
    frame_dtype: str = "float32"
    num_frames: int = 10
    eval_frame: int = 5
    pad_last_batch: bool = False
    prefetch_queue_depth: int = 2
    codec: str = "vp9"                      # the shards' video codec (read from the first mp4)
    video_decoder: str = "cpu"              # "mixed" (NVDEC; needs device_id) | "cpu" (frames then moved
                                            # to the GPU when device_id is set)
    resize: bool = True                     # False: the shards store img_size x img_size frames


def read_shards(spec: PipeSpec) -> list[Any]:
    """THE reader: one DataNode (raw uint8 bytes) per member extension in `spec.exts`."""
    from nvidia.dali import fn, types

    kwargs: dict[str, Any] = {}
    if spec.index_paths:
        kwargs["index_paths"] = spec.index_paths
    if spec.shuffle:
        kwargs["initial_fill"] = spec.initial_fill
    outputs = fn.readers.webdataset(
        paths=spec.tars, ext=spec.exts, dtypes=[types.UINT8] * len(spec.exts), name=READER_NAME,
        missing_component_behavior=spec.missing_component_behavior, shard_id=spec.shard_id,
        num_shards=spec.num_shards, random_shuffle=spec.shuffle, pad_last_batch=spec.pad_last_batch, **kwargs)
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def random_frame_index(num_frames: int) -> Any:
    """int32 [1] per sample, uniform over the frame instants 0..num_frames-1 (training)."""
    from nvidia.dali import fn, types

    return fn.random.uniform(values=list(range(num_frames)), dtype=types.INT32, shape=[1])


def fixed_frame_index(frame: int) -> Any:
    """int32 [1] per sample, always `frame` (evaluation)."""
    from nvidia.dali import fn, types

    return fn.constant(idata=[frame], dtype=types.INT32, shape=[1])


def cut_frame(mp4: Any, table: Any, index: Any, codec: str) -> Any:
    """Frame `index` of each all-key-frame mp4 as a one-frame IVF stream -> uint8 [44 + frame bytes].

    table: the sample's raw `KEY.frames` member (uint32 [width, height, offset_i, size_i ...]);
    index: int32 [1]. IVF is the simplest container FFmpeg (and so DALI) demuxes: a 32-byte file
    header (with the frame size) and a 12-byte frame header (byte count, pts) before the bytes.

    Bad data must fail with an error that names the sample. DALI's decoder names its input's
    source_info only when it cannot open the stream, so a cut that is empty, a table whose frames
    reach past the mp4 (truncated member, bad table) or a frame without the codec's marker gets a zeroed
    IVF signature: the open fails, naming "TAR:OFFSET:KEY.mp4" (`fn.cat` keeps its inputs'
    source_info when they agree: an empty cut of the mp4 brings it, nothing brings another one).
    Damage inside a frame's bytes fails in the decoder without a name (dali_pipes.iterator says so)."""
    import numpy as np
    from nvidia.dali import fn, types
    from nvidia.dali.types import Constant

    # [2 + 2 * frames]. Arithmetic keeps its inputs' source_info only when they agree: adding 0 * a byte
    # of the mp4 drops the table's, which would clash with the mp4's in the stream below
    zero = fn.cast(fn.slice(mp4, start=0, shape=1, axes=[0], out_of_bounds_policy="pad"), dtype=types.INT32) * 0
    fields = fn.cast(fn.reinterpret(table, dtype=types.UINT32), dtype=types.INT32) + zero
    at = 2 + 2 * index[0]
    offset, size = fields[at], fields[at + 1]
    frame = fn.slice(mp4, start=offset, shape=size, axes=[0], out_of_bounds_policy="pad")
    first = fn.slice(mp4, start=offset, shape=1, axes=[0], out_of_bounds_policy="pad")       # [1]
    mask, marker = FRAME_MARKER[codec]
    length = mp4.shape(dtype=types.INT32)[0]
    # every frame inside the mp4 (so a truncated member fails whichever frame is drawn), this one
    # non-empty and starting with the codec's frame marker
    valid = ((offset >= 0) & (size > 0) & (fields[-2] + fields[-1] <= length)
             & ((first & mask) == marker))

    def as_bytes(values: Any, dtype: Any) -> Any:   # a 1-D slice: DALI 2.4 crashes reinterpreting a 0-D one
        return fn.reinterpret(fn.cast(values, dtype=dtype), dtype=types.UINT8)

    def const(data: bytes) -> Any:
        return Constant(np.frombuffer(data, np.uint8), dtype=types.UINT8)

    signature = fn.cast(const(b"DKIF") * fn.cast(valid, dtype=types.UINT8), dtype=types.UINT8)
    return fn.cat(fn.slice(mp4, start=0, shape=0, axes=[0]),            # no bytes: the mp4's source_info
                  signature, const(struct.pack("<HH4s", 0, IVF_FILE_HEADER, IVF_FOURCC[codec])),
                  as_bytes(fields[0:2], types.UINT16),                 # width, height
                  const(struct.pack("<IIII", 1, 1, 1, 0)),             # time base 1/1, 1 frame, unused
                  as_bytes(fields[at + 1:at + 2], types.UINT32),       # frame header: byte count ...
                  const(struct.pack("<Q", 0)),                         # ... and pts
                  frame)


def decode_frame(stream: Any, index: Any | None, decoder: str) -> Any:
    """Decode frame `index` (None: the only frame) of each encoded video -> uint8 [H, W, 3], with
    `decoder` "mixed" (NVDEC, output on the GPU) or "cpu"."""
    from nvidia.dali import fn

    kwargs: dict[str, Any] = {} if index is None else {"frames": index}
    if decoder == "mixed":   # its thread pool would pin threads to cores via NVML, which sandboxed machines may refuse
        kwargs["affine"] = False
    frames = fn.decoders.video(stream, device=decoder, **kwargs)   # [1, H, W, 3]
    return fn.element_extract(frames, element_map=[0])


def prepare_frame(frame: Any, img_size: int, frame_dtype: str, resize: bool = True) -> Any:
    """Resize short side to img_size (cubic, antialiased), centre crop, CAV-MAE normalise, CHW.

    resize=False for frames stored at img_size x img_size: DALI's resize costs as much (~1 ms per
    frame on one core) when it changes nothing, and the crop is then an identity too."""
    from nvidia.dali import fn, types

    from deteclap.config import IMAGE_MEAN, IMAGE_STD

    pixel_max = 255.0
    if resize:
        frame = fn.resize(frame, resize_shorter=img_size, interp_type=types.INTERP_CUBIC, antialias=True)
    return fn.crop_mirror_normalize(
        frame, crop=(img_size, img_size), crop_pos_x=0.5, crop_pos_y=0.5,
        mean=[m * pixel_max for m in IMAGE_MEAN], std=[s * pixel_max for s in IMAGE_STD], output_layout="CHW",
        dtype=types.FLOAT16 if frame_dtype == "float16" else types.FLOAT)


def decode_wave(flac: Any) -> tuple[Any, Any, Any]:
    """FLAC bytes -> (int16 wave padded to the batch's longest [S], its length int32 [1], its sample
    rate). int16, not float: half the bytes to pad and copy to the GPU; the iterator scales by
    1 / 32768 where the fbank runs, which is the float libsndfile (so DALI's float output and the
    reference loader's soundfile) gives for the shards' 16-bit FLAC. No resampling: the shards store
    16 kHz, and the iterator refuses another rate as the reference loader does."""
    from nvidia.dali import fn, types

    wave, rate = fn.decoders.audio(flac, downmix=False, dtype=types.INT16)   # [S, C], float []
    wave = wave[:, 0]                           # the first channel, as CAV-MAE's `sox remix 1`
    length = wave.shape(dtype=types.INT32)      # [1]
    return fn.pad(wave, fill_value=0, axes=[0]), length, rate


def read_wave(wav: Any) -> tuple[Any, Any, Any, Any]:
    """`KEY.wav` bytes -> (int16 wave padded to the batch's longest [S], its length int32 [1], its
    sample rate float [1], the header uint8 [44]). No decoder: the format's canonical header is 44
    bytes (deteclap.format.encode_wav), the rest little-endian int16, reinterpreted in place. The
    iterator checks each header (deteclap.format.wav_problem) against the member's size: a member of
    another layout is refused there, never read as sound. An odd byte count (a truncated member) is
    cut to whole samples so that the reinterpretation itself cannot fail."""
    from nvidia.dali import fn, math, types

    from deteclap.format import WAV_HEADER_BYTES, WAV_RATE_OFFSET

    head = fn.slice(wav, start=0, shape=WAV_HEADER_BYTES, axes=[0], out_of_bounds_policy="pad")
    body_bytes = math.max(wav.shape(dtype=types.INT32)[0] - WAV_HEADER_BYTES, 0) & -2
    body = fn.slice(wav, start=WAV_HEADER_BYTES, shape=body_bytes, axes=[0], out_of_bounds_policy="pad")
    wave = fn.reinterpret(body, dtype=types.INT16)
    rate = fn.cast(fn.reinterpret(fn.slice(head, start=WAV_RATE_OFFSET, shape=4, axes=[0]), dtype=types.UINT32),
                   dtype=types.FLOAT)
    length = wave.shape(dtype=types.INT32)      # [1]
    return fn.pad(wave, fill_value=0, axes=[0]), length, rate, head


def label_scores(member: Any) -> Any:
    """Raw little-endian float16 label scores -> float16 [C]."""
    from nvidia.dali import fn, types

    return fn.reinterpret(member, dtype=types.FLOAT16)


def source_info(member: Any) -> Any:
    """"TAR:OFFSET:KEY.ext" of a reader output as uint8 bytes, zero-padded in the batch."""
    from nvidia.dali import fn

    return fn.pad(fn.get_property(member, key="source_info"), fill_value=0)


def _outputs(spec: PipeSpec, nodes: list[Any], index: Any) -> tuple[Any, ...]:
    """Shared processing of the reader outputs, in the order of OUTPUTS (+ WAV_HEAD) + label scores."""
    members = dict(zip(spec.exts, nodes))
    mp4, gpu = members["mp4"], spec.device_id is not None
    if FRAME_TABLE_EXT in members:
        frame = decode_frame(cut_frame(mp4, members[FRAME_TABLE_EXT], index, spec.codec), None, spec.video_decoder)
    else:
        frame = decode_frame(mp4, index, spec.video_decoder)
    if gpu and spec.video_decoder == "cpu":
        frame = frame.gpu()                     # decoded on the CPU; resized and normalised on the GPU
    frames = prepare_frame(frame, spec.img_size, spec.frame_dtype, spec.resize)
    extra = []
    if WAV_EXT in members:
        wave, length, rate, head = read_wave(members[WAV_EXT])
        extra.append(head)
    else:
        wave, length, rate = decode_wave(members["flac"])
    if gpu:
        wave = wave.gpu()                       # int16: half the bytes of float32 to copy
    scores = [label_scores(node) for ext, node in members.items() if is_score_member(ext)]
    return (frames, wave, length, rate, members["cls"], source_info(mp4), *extra, *scores)


def _pipeline(spec: PipeSpec, frame_index: Callable[[], Any]) -> Any:
    """One pipeline over the shared reader and processing steps; `frame_index` picks the instant."""
    from nvidia.dali import pipeline_def

    @pipeline_def(batch_size=spec.batch_size, num_threads=spec.num_threads, device_id=spec.device_id,
                  seed=spec.seed, prefetch_queue_depth=spec.prefetch_queue_depth, exec_dynamic=True)
    def pipe() -> tuple[Any, ...]:
        return _outputs(spec, read_shards(spec), frame_index())

    return pipe()


def train_pipeline(spec: PipeSpec) -> Any:
    """Training: shuffled reader (random_shuffle + initial_fill), a random frame instant."""
    return _pipeline(spec, lambda: random_frame_index(spec.num_frames))


def eval_pipeline(spec: PipeSpec) -> Any:
    """Evaluation: reader in shard order, frame `eval_frame`."""
    return _pipeline(spec, lambda: fixed_frame_index(spec.eval_frame))
