"""A trained model applied to your own files: `load`, `embed_video_file`, `embed_audio_file`, `similarity`.

    import deteclap
    model = deteclap.load("runs/or")                  # run folder, checkpoint folder or model.pt
    score = deteclap.similarity("dog.mp4", "bark.wav")  # uses the model loaded last
    emb = model.embed_video_file("dog.mp4")            # Embedding: audio, video [D], label probabilities

The score is CAV-MAE's retrieval score: the cosine of the L2-normalised, mean-pooled joint-layer
embeddings of the audio (`model.embed_audio`) and of the evaluation frame (`model.embed_video`),
in [-1, 1]. Read it by ranking: of several candidates, the one scored highest is the model's best
match. Its absolute value says little: a contrastively trained model may score every pair of two
clips 0.9 or every pair 0.1, and values are not comparable across checkpoints, or between an
audio-video pair of one checkpoint and another pair's "threshold". Compare a matched pair against
mismatched ones (as `deteclap search` does), never against a fixed number.

Inputs are decoded with the shard writer's own clip code (`deteclap.shard.process_clip`: the 10
CAV-MAE frame instants re-encoded as the shards store them, the first audio channel resampled to
16 kHz, the first `seconds` of the file), then decoded as the loaders decode a shard sample
(frame `data.eval_frame`, CAV-MAE's resize / crop / normalisation, the Kaldi fbank of
deteclap.audio). So a video file embeds exactly as its shard sample does, and as
`deteclap.evaluate` embeds it. An audio file (any container PyAV reads) goes through the shard
writer's audio resampling and storage (first channel, 16 kHz, 16-bit PCM).

The model's config: `config=` (a JSON config or a run's config.json), else the config.json of the
run the checkpoint belongs to (RUN/config.json beside RUN/model_wa.pt or above
RUN/checkpoints/step_N/model.pt), else the default config (the official CAV-MAE model shape, for
official checkpoints). Label heads are used when the checkpoint has them; their class names come
from `vocabulary=`, else the config's `labels.vocabulary`, else the training shards' dataset.json,
else the Open Images V7 list.
"""

from __future__ import annotations

import copy
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deteclap.config import Config
from deteclap.format import AUDIO_EXT, AUDIO_EXTS, sample_audio_ext

DEFAULT_SECONDS = 10.0          # CAV-MAE's clip length: the fbank contract covers 10 s
DIGEST_CHUNK = 1 << 20
NO_HEAD_PREFIXES = ("decoder", "mask_token", "label_head")   # weights that embedding does not need

_last_loaded: LoadedModel | None = None


class InputError(ValueError):
    """One input file cannot be embedded; `reason` is a shard-writer or loader reason code."""

    def __init__(self, source: str, reason: str, detail: str):
        super().__init__(f"{source}: {reason}: {detail}")
        self.source, self.reason, self.detail = source, reason, detail


@dataclass
class Clip:
    """One clip as the model sees it: frame uint8 [3, S, S] (after CAV-MAE's resize and crop), wave
    float32 [samples] at 16 kHz (first channel), torch tensors or numpy arrays; either may be None
    (audio file / silent video)."""
    frame: torch.Tensor | np.ndarray | None
    wave: torch.Tensor | np.ndarray | None
    meta: dict[str, Any]


@dataclass
class Embedding:
    """Embeddings of one clip: audio, video float32 [D] L2-normalised; labels_audio, labels_video
    float32 [C] label-head probabilities (None without label heads or without that modality)."""
    audio: np.ndarray | None
    video: np.ndarray | None
    labels_audio: np.ndarray | None
    labels_video: np.ndarray | None


# ----------------------------------------------------------------------------------------------
# decoding: the shard writer's clip code, then the loaders' sample decoding
def clip_members(path: str | Path, start: float = 0.0, seconds: float = DEFAULT_SECONDS,
                 allow_silent: bool = False, key: str = "query") -> dict[str, bytes]:
    """A video file -> the shard sample members the shard writer would store for it ({ext: bytes}).

    Raises InputError with the writer's reason (missing_file, unreadable, empty_file, not_media,
    corrupt, truncated, no_video, no_audio, too_short)."""
    from deteclap.clip import EncodeSettings, process_clip
    from deteclap.inputs import ClipInput

    path = Path(path)
    if not path.exists():
        raise InputError(str(path), "missing_file", f"{path} does not exist")
    item = ClipInput(source=str(path), clip_id=key, key=key, split="", start=start,
                     end=start + seconds, shown_source=str(path))
    result = process_clip(item, EncodeSettings(seconds=seconds, allow_silent=allow_silent), 0)
    if "failure" in result:
        raise InputError(str(path), result["failure"]["reason"], result["failure"]["detail"])
    return result["members"]


def audio_file_wave(path: str | Path, start: float = 0.0, seconds: float = DEFAULT_SECONDS) -> np.ndarray:
    """The first channel of any file with an audio stream, resampled to 16 kHz by the shard writer's
    resampling and stored as it stores it (16-bit, read as the loaders read it), from
    `start` for `seconds` -> float32 [samples]. So the soundtrack of a video file given here embeds
    exactly as the audio of its shard sample. Raises InputError."""
    import av

    from deteclap.audio import SAMPLE_RATE
    from deteclap.clip import EncodeSettings, _segment_audio, encode_audio
    from deteclap.data.decode import decode_audio_member

    path = Path(path)
    if not path.is_file():
        raise InputError(str(path), "missing_file", f"{path} does not exist or is not a file")
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError) as err:
        raise InputError(str(path), "corrupt", f"cannot open: {err}") from None
    with container:
        if not container.streams.audio:
            raise InputError(str(path), "no_audio", "no audio stream")
        origin = container.start_time / av.time_base if container.start_time else 0.0
        try:
            chunks, t0 = _segment_audio(container, container.streams.audio[0], origin, start + seconds, SAMPLE_RATE)
        except av.FFmpegError as err:
            raise InputError(str(path), "corrupt", f"decoding failed: {err}") from None
    if not chunks:
        raise InputError(str(path), "no_audio", "the audio stream holds no sample")
    wave = np.concatenate([c.to_ndarray()[0] for c in chunks]).astype(np.float32)
    offset = int(round((start - (t0 or 0.0)) * SAMPLE_RATE))     # as the writer aligns a segment
    wave = wave[offset:] if offset >= 0 else np.concatenate([np.zeros(-offset, np.float32), wave])
    wave = wave[: int(round(seconds * SAMPLE_RATE))]
    if len(wave) == 0:
        raise InputError(str(path), "too_short", f"no audio after {start:g} s")
    return decode_audio_member(*encode_audio(wave, SAMPLE_RATE, EncodeSettings.audio_format))[0]


def has_video_stream(path: str | Path) -> bool:
    """Whether PyAV finds a video stream in the file (False for anything it cannot open)."""
    import av

    try:
        with av.open(str(path)) as container:
            return bool(container.streams.video)
    except (av.FFmpegError, UnicodeDecodeError, ValueError, OSError):
        return False


class SampleDecoder:
    """Shard sample members -> Clip, by the reference loader's own evaluation decoding (frame
    `data.eval_frame`, CAV-MAE's resize + crop, the `KEY.wav` or `KEY.flac` audio at 16 kHz).
    Raises InputError with the loader's reason codes (missing_member, corrupt_mp4, corrupt_wav /
    corrupt_flac, bad_audio)."""

    def __init__(self, cfg: Config):
        from deteclap.data.common import DataError
        from deteclap.data.loader import ShardSamples, frame_transform

        cfg = copy.deepcopy(cfg)
        cfg.labels.variant = "cavmae"             # embedding reads no label scores
        self._samples = {ext: ShardSamples([], cfg, train=False, seed=0, audio_ext=ext) for ext in AUDIO_EXTS}
        self._transform = frame_transform(cfg.model.img_size)
        self._error = DataError
        self._rng = random.Random(0)              # unused in evaluation (the frame is fixed)

    def __call__(self, members: dict[str, bytes], source: str = "", key: str = "") -> Clip:
        try:
            samples = self._samples[sample_audio_ext(members) or AUDIO_EXT]
            item = samples.decode(Path(source), key, members, self._rng, self._transform)
        except self._error as err:
            reason, detail = err.args
            raise InputError(source, reason, detail) from None
        meta = json.loads(members["json"]) if "json" in members else {}
        silent = bool(meta.get("silent", False))
        return Clip(item["frame"], None if silent else item["wave"], meta)


def checkpoint_digest(path: str | Path) -> str:
    """sha256 of a checkpoint file (hex): what an index records to refuse another model's queries."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(DIGEST_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def find_run_config(checkpoint: Path) -> Path | None:
    """RUN/config.json of a checkpoint train.py wrote (RUN/model_wa.pt, RUN/checkpoints/step_N/model.pt)."""
    for folder in (checkpoint.parent, *checkpoint.parents[1:3]):
        if (folder / "config.json").is_file():
            return folder / "config.json"
    return None


def head_vocabulary(cfg: Config, num_classes: int, vocabulary: str | Path | list[str] | None = None) -> list[str]:
    """Class names of the label heads (see the module docstring for where they come from); with a
    list of another length, `class_<i>` names and a printed warning."""
    from deteclap.labels.vocabulary import load_vocabulary

    where = "the Open Images V7 list"
    if isinstance(vocabulary, list):
        names, where = vocabulary, "vocabulary="
    elif vocabulary or cfg.labels.vocabulary:
        names = load_vocabulary(vocabulary or cfg.labels.vocabulary)
        where = str(vocabulary or cfg.labels.vocabulary)
    else:
        names = None
        dataset = Path(cfg.data.train_shards) / "dataset.json" if cfg.data.train_shards else None
        if dataset is not None and dataset.is_file():
            try:
                names, where = json.loads(dataset.read_text()).get("label_vocabulary"), str(dataset)
            except (OSError, json.JSONDecodeError):
                names = None
        if not names:
            names, where = load_vocabulary(), "the Open Images V7 list"
    if len(names) != num_classes:
        print(f"warning: the label heads have {num_classes} classes, {where} names {len(names)}: classes are "
              f"shown as class_<i> (pass vocabulary= / --vocabulary with the list the model was trained on)")
        return [f"class_{i}" for i in range(num_classes)]
    return list(names)


# ----------------------------------------------------------------------------------------------
# the model
class LoadedModel:
    """A checkpoint ready to embed: the model (eval mode, on `device`), its config, preprocessing
    (`decoder`), checkpoint path and sha256, and the label heads' class names (None: no heads)."""

    def __init__(self, model: torch.nn.Module, cfg: Config, device: torch.device, checkpoint: Path,
                 digest: str, vocabulary: list[str] | None):
        self.model, self.cfg, self.device = model, cfg, device
        self.checkpoint, self.digest, self.vocabulary = checkpoint, digest, vocabulary
        self.decoder = SampleDecoder(cfg)

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def has_label_heads(self) -> bool:
        return self.vocabulary is not None

    @torch.no_grad()
    def embed_clips(self, clips: list[Clip]) -> dict[str, np.ndarray | None]:
        """A batch of clips -> {"audio", "video": float32 [B, D] L2-normalised, "labels_audio",
        "labels_video": float32 [B, C] or None}. Every clip must have the same modalities.

        The inputs are prepared as the loaders' finish_batch prepares an evaluation batch: frames
        through `normalize_frames`, waves zero-padded through `audio.fbank_batch` (fbank contract,
        padded / cut to model.audio_length) and `audio.normalize_fbank`.
        """
        from deteclap import audio
        from deteclap.data.common import normalize_frames

        out: dict[str, np.ndarray | None] = {"audio": None, "video": None, "labels_audio": None, "labels_video": None}
        heads = self.has_label_heads
        if clips and clips[0].wave is not None:
            lengths = torch.tensor([len(clip.wave) for clip in clips])
            waves = torch.zeros(len(clips), int(lengths.max()))
            for i, clip in enumerate(clips):
                waves[i, : lengths[i]] = torch.as_tensor(clip.wave)
            fbank = audio.fbank_batch(waves.to(self.device), lengths, self.cfg.model.audio_length, normalize=False)
            a_bar = self.model.embed_audio(audio.normalize_fbank(fbank)).float()
            out["audio"] = torch.nn.functional.normalize(a_bar, dim=-1).cpu().numpy()
            if heads:
                out["labels_audio"] = torch.sigmoid(self.model.label_head_a(a_bar)).float().cpu().numpy()
        if clips and clips[0].frame is not None:
            frames = normalize_frames(torch.stack([torch.as_tensor(clip.frame) for clip in clips]).to(self.device))
            v_bar = self.model.embed_video(frames).float()
            out["video"] = torch.nn.functional.normalize(v_bar, dim=-1).cpu().numpy()
            if heads:
                out["labels_video"] = torch.sigmoid(self.model.label_head_v(v_bar)).float().cpu().numpy()
        return out

    def _one(self, clip: Clip) -> Embedding:
        out = self.embed_clips([clip])
        return Embedding(*(None if out[k] is None else out[k][0]
                           for k in ("audio", "video", "labels_audio", "labels_video")))

    def video_clip(self, path: str | Path, start: float = 0.0, seconds: float = DEFAULT_SECONDS) -> Clip:
        """A video file's clip (its audio None when the file has no audio stream). Raises InputError."""
        members = clip_members(path, start, seconds, allow_silent=True)
        return self.decoder(members, str(path), "query")

    def audio_clip(self, path: str | Path, start: float = 0.0, seconds: float = DEFAULT_SECONDS) -> Clip:
        """An audio or video file's first channel at 16 kHz as a clip without frame. A video file's
        soundtrack is the one its shard sample holds (cut to the span its frames cover), so it embeds
        exactly as that sample's audio. Raises InputError."""
        from deteclap.data.common import bad_audio_detail

        if has_video_stream(path):
            clip = self.decoder(clip_members(path, start, seconds), str(path), "query")
            if clip.wave is None:
                raise InputError(str(path), "no_audio", "no audio stream")
            return Clip(None, clip.wave, clip.meta)
        wave = audio_file_wave(path, start, seconds)
        bad = bad_audio_detail(len(wave), 16000)
        if bad:
            raise InputError(str(path), "bad_audio", bad)
        return Clip(None, torch.from_numpy(wave), {"source": str(path), "start": start,
                                                   "duration": round(len(wave) / 16000, 6)})

    def embed_video_file(self, path: str | Path, start: float = 0.0, seconds: float = DEFAULT_SECONDS) -> Embedding:
        """Embed a video file: `video` from its evaluation frame, `audio` from its soundtrack (None
        when it has none). Raises InputError naming the file and the reason."""
        return self._one(self.video_clip(path, start, seconds))

    def embed_audio_file(self, path: str | Path, start: float = 0.0, seconds: float = DEFAULT_SECONDS) -> Embedding:
        """Embed an audio file (wav, flac, mp3, ... or a video's soundtrack): `audio` only."""
        return self._one(self.audio_clip(path, start, seconds))

    def similarity(self, video_path: str | Path, audio_path: str | Path) -> float:
        """Cosine in [-1, 1] of the video file's frame embedding and the audio file's audio embedding
        (see the module docstring for how to read it)."""
        video = self.embed_video_file(video_path).video
        sound = self.embed_audio_file(audio_path).audio
        return float(np.dot(video.astype(np.float64), sound.astype(np.float64)))


def load(checkpoint: str | Path, config: str | Path | None = None, overrides: tuple[str, ...] | list[str] = (),
         device: str = "auto", vocabulary: str | Path | list[str] | None = None) -> LoadedModel:
    """A checkpoint (model.pt, checkpoint folder, run folder, model_wa.pt, official CAV-MAE file) ->
    LoadedModel in eval mode on `device` (auto | cpu | cuda); also the model the module-level
    `embed_video_file` / `embed_audio_file` / `similarity` use from then on.

    Raises:
        FileNotFoundError: no checkpoint at that path.
        deteclap.model.CheckpointError: weights of another model shape (the message names the config
            used and the fix), or encoder weights missing.
    """
    global _last_loaded
    from deteclap.config import load_config
    from deteclap.device import pick_device
    from deteclap.model import CheckpointError, build_model, load_checkpoint
    from deteclap.model.checkpoint import read_state_dict, resolve_checkpoint

    path = resolve_checkpoint(checkpoint).resolve()
    config_path = Path(config) if config else find_run_config(path)
    if overrides and not config_path:
        raise ValueError(f"--set {list(overrides)}: no config to apply them to (no config.json of a run beside "
                         f"{path}); pass --config")
    cfg = load_config(config_path, overrides) if config_path else Config()
    shape_from = str(config_path) if config_path else "the default config (official CAV-MAE shape)"
    state = read_state_dict(path)
    heads = state.get("label_head_a.weight")
    num_classes = 0 if heads is None else int(heads.shape[0])
    model = build_model(cfg.model, num_classes)
    try:
        report = load_checkpoint(model, state)
    except CheckpointError as err:
        raise CheckpointError(f"{path}: {err} (model shape from {shape_from}; pass --config / config= with the "
                              f"config it was trained with)") from None
    missing = [k for k in report.missing if not k.startswith(NO_HEAD_PREFIXES)]
    if missing:
        raise CheckpointError(f"{path}: encoder weights missing {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                              f"(model shape from {shape_from}): not a CAV-MAE / DETECLAP checkpoint of this shape")
    target = pick_device(device)
    model.eval().to(target)
    names = head_vocabulary(cfg, num_classes, vocabulary) if num_classes else None
    _last_loaded = LoadedModel(model, cfg, target, path, checkpoint_digest(path), names)
    return _last_loaded


def _model(model: LoadedModel | None) -> LoadedModel:
    if model is not None:
        return model
    if _last_loaded is None:
        raise ValueError("no model loaded: call deteclap.load(CHECKPOINT) first, or pass model=")
    return _last_loaded


def embed_video_file(path: str | Path, model: LoadedModel | None = None, start: float = 0.0,
                     seconds: float = DEFAULT_SECONDS) -> Embedding:
    """`LoadedModel.embed_video_file` with `model`, or the model `load` returned last."""
    return _model(model).embed_video_file(path, start, seconds)


def embed_audio_file(path: str | Path, model: LoadedModel | None = None, start: float = 0.0,
                     seconds: float = DEFAULT_SECONDS) -> Embedding:
    """`LoadedModel.embed_audio_file` with `model`, or the model `load` returned last."""
    return _model(model).embed_audio_file(path, start, seconds)


def similarity(video_path: str | Path, audio_path: str | Path, model: LoadedModel | None = None) -> float:
    """Cosine in [-1, 1] of the video's frame embedding and the audio's embedding, by `model` or the
    model `load` returned last. Rank candidates by it; absolute values do not compare across
    checkpoints (module docstring)."""
    return _model(model).similarity(video_path, audio_path)
