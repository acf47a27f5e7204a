"""DALI pipeline definitions: one WebDataset reader, pure processing functions, train / eval pipelines.

Only graph definitions live here (DALI is imported inside the functions); dali_pipes.iterator runs
them. Per sample the pipelines decode ONE frame of the shard's VP9 mp4 (training: a random instant
in [0, num_frames); evaluation: `eval_frame`) on "mixed" (NVDEC) with a GPU or on the "cpu" with
`device_id=None`, resize the short side to `img_size` with DALI's cubic filter with antialiasing
(the closest DALI has to PIL's antialiased BICUBIC), centre-crop, normalise with CAV-MAE's
mean/std to NCHW; decode the FLAC (16 kHz mono float) and pad it in the batch with its length;
reinterpret the raw label members (`.f16` -> float16 [C], `.cls` -> uint8 [C]). The Kaldi fbank is
NOT computed here: DALI's mel filter bank is not Kaldi's, so the iterator applies deteclap.audio
to the padded waves right after the pipeline (on the GPU when there is one). The `source_info` of
the mp4 member ("TAR:OFFSET:KEY.mp4") is returned so that the iterator knows each sample's key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Any

READER_NAME = "reader"
OUTPUTS = ("frames", "waves", "lengths", "classes", "source")  # then one output per label-score member


@dataclass
class PipeSpec:
    """Everything a pipeline needs, plain values (built from a Config by the iterator)."""
    tars: list[str]
    exts: list[str]                         # mp4, flac, json, cls, then `<labeller>.f16`
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
    from nvidia.dali import types
    from nvidia.dali.types import Constant

    return Constant([frame], dtype=types.INT32)


def decode_frame(mp4: Any, index: Any, gpu: bool) -> Any:
    """Decode frame `index` of each encoded video -> uint8 [H, W, 3] (GPU with NVDEC, else CPU)."""
    from nvidia.dali import fn

    frames = fn.decoders.video(mp4, device="mixed" if gpu else "cpu", frames=index)   # [1, H, W, 3]
    return fn.element_extract(frames, element_map=[0])


def prepare_frame(frame: Any, img_size: int, frame_dtype: str) -> Any:
    """Resize short side to img_size (cubic, antialiased), centre crop, CAV-MAE normalise, CHW."""
    from nvidia.dali import fn, types

    from deteclap.config import IMAGE_MEAN, IMAGE_STD

    pixel_max = 255.0
    resized = fn.resize(frame, resize_shorter=img_size, interp_type=types.INTERP_CUBIC, antialias=True)
    return fn.crop_mirror_normalize(
        resized, crop=(img_size, img_size), crop_pos_x=0.5, crop_pos_y=0.5,
        mean=[m * pixel_max for m in IMAGE_MEAN], std=[s * pixel_max for s in IMAGE_STD], output_layout="CHW",
        dtype=types.FLOAT16 if frame_dtype == "float16" else types.FLOAT)


def decode_wave(flac: Any) -> tuple[Any, Any]:
    """FLAC bytes -> (float wave padded to the batch's longest [S], its length int32 [1]) at 16 kHz."""
    from nvidia.dali import fn, types

    from deteclap.audio import SAMPLE_RATE

    wave, _ = fn.decoders.audio(flac, sample_rate=SAMPLE_RATE, downmix=False, dtype=types.FLOAT)  # [S, C]
    wave = wave[:, 0]                           # the first channel, as CAV-MAE's `sox remix 1`
    length = wave.shape(dtype=types.INT32)      # [1]
    return fn.pad(wave, fill_value=0.0, axes=[0]), length


def label_scores(member: Any) -> Any:
    """Raw little-endian float16 label scores -> float16 [C]."""
    from nvidia.dali import fn, types

    return fn.reinterpret(member, dtype=types.FLOAT16)


def source_info(member: Any) -> Any:
    """"TAR:OFFSET:KEY.ext" of a reader output as uint8 bytes, zero-padded in the batch."""
    from nvidia.dali import fn

    return fn.pad(fn.get_property(member, key="source_info"), fill_value=0)


def _outputs(spec: PipeSpec, members: list[Any], index: Any) -> tuple[Any, ...]:
    """Shared processing of the reader outputs, in the order of OUTPUTS + label scores."""
    mp4, flac, _json, cls, *scores = members
    gpu = spec.device_id is not None
    frames = prepare_frame(decode_frame(mp4, index, gpu), spec.img_size, spec.frame_dtype)
    wave, length = decode_wave(flac)
    if gpu:
        wave = wave.gpu()
    return (frames, wave, length, cls, source_info(mp4), *[label_scores(s) for s in scores])


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
