"""Typed run configuration: dataclasses loaded from JSON, with `extends` and `--set` overrides.

A config file is a JSON object with one object per section (model, data, labels, loss, optim,
deepspeed, eval, run, finetune). A file may name a base file with `"extends": "base.json"`
(relative to itself); its sections are merged key by key over the base. Overrides
`section.key=value` are applied last; the value is parsed as JSON when it parses, else taken as a
string. Every unknown key, wrong type, value out of range (`validate`: choices, bounds and relations
between keys) or missing file raises `ConfigError` naming the key and file.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from collections.abc import Iterable

# CAV-MAE's dataset statistics for the normalised fbank (src/run_cavmae_pretrain.py defaults).
FBANK_NORM_MEAN = -5.081
FBANK_NORM_STD = 4.4849
# ImageNet statistics that CAV-MAE's loader normalises frames with.
IMAGE_MEAN = (0.4850, 0.4560, 0.4060)
IMAGE_STD = (0.2290, 0.2240, 0.2250)

VARIANTS = ("cavmae", "audio", "visual", "separate", "and", "or",
            "soft_audio", "soft_visual", "soft_max")


class ConfigError(ValueError):
    """A configuration problem; the message names the file and the key."""


@dataclass
class ModelConfig:
    """CAV-MAE shape; the defaults are the official pretraining model (191,036,160 parameters)."""
    img_size: int = 224
    audio_length: int = 1024          # fbank frames after padding / cutting
    num_mel_bins: int = 128
    patch_size: int = 16
    embed_dim: int = 768
    modality_specific_depth: int = 11
    joint_depth: int = 1              # official: 12 - modality_specific_depth = 1
    num_heads: int = 12
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    mlp_ratio: float = 4.0
    norm_pix_loss: bool = True        # as the official pretraining scripts run it
    tr_pos: bool = False              # fixed sin-cos position embeddings
    init_checkpoint: str = ""         # official CAV-MAE / our checkpoint to start from ("" = none)


@dataclass
class DataConfig:
    train_shards: str = ""            # shard folder written by `python -m deteclap.shard` (with dataset.json)
    eval_shards: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    loader: str = "auto"              # auto | dali | reference
    dali_device: str = "auto"         # auto | gpu | cpu
    batch_size: int = 48
    num_workers: int = 2
    shuffle_buffer: int = 1000
    frame_dtype: str = "float32"      # float32 | float16
    eval_frame: int = 5               # CAV-MAE evaluates on the middle of its 10 frame instants
    num_frames: int = 10              # frame instants per clip stored in the shard
    noise: bool = True                # CAV-MAE pretraining's fbank noise + time roll
    freqm: int = 0                    # SpecAugment frequency mask width (fine-tuning: 48)
    timem: int = 0                    # SpecAugment time mask width (fine-tuning: 192)
    mixup: float = 0.0                # probability of mixup (fine-tuning)
    on_error: str = "raise"           # raise | skip  (bad sample inside a shard)
    seed: int = 0


@dataclass
class LabelsConfig:
    variant: str = "cavmae"           # one of VARIANTS
    audio_labeller: str = "clap"      # stored score member that gives y_a
    visual_labeller: str = "yolo"     # stored score member that gives y_v
    audio_threshold: float = 0.5      # CLAP cosine >= this is a positive
    visual_threshold: float = 0.4     # YOLO probability >= this is a positive
    vocabulary: str = ""              # "" = the shards' dataset.json vocabulary


@dataclass
class LossConfig:
    mae_weight: float = 1.0
    contrastive_weight: float = 0.01
    contrastive_tau: float = 0.05
    bidirectional: bool = False       # official default: one direction (audio -> visual columns)
    a2l_weight: float = 1.0
    v2l_weight: float = 1.0
    mask_ratio_a: float = 0.75
    mask_ratio_v: float = 0.75
    mask_mode: str = "unstructured"   # unstructured | time | freq | tf (audio only)


@dataclass
class OptimConfig:
    """CAV-MAE: torch.optim.Adam(lr, weight_decay=5e-7, betas=(0.95, 0.999)); DETECLAP: lr 5e-5."""
    lr: float = 5e-5
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    warmup_steps: int = 0             # linear warm-up (CAV-MAE passes --warmup True, which its trainers never read)
    decay_start_step: int = 0         # 0 = no step decay; else lr *= decay_rate every decay_every
    decay_every: int = 0
    decay_rate: float = 0.5
    grad_clip: float = 0.0            # 0 = off (CAV-MAE does not clip)


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    precision: str = "bf16"           # bf16 | fp16 | fp32
    grad_accum_steps: int = 1


@dataclass
class EvalConfig:
    per_class: int = 5                # retrieval subset: this many clips per class (0 = all)
    batch_size: int = 64              # evaluation batches, both loaders (data.batch_size is training's)
    recall_at: tuple[int, ...] = (1, 5, 10)
    average_frames: bool = False      # classification: mean probabilities over frames 0..num_frames-1


@dataclass
class FinetuneConfig:
    task: str = ""                    # "" (pretraining) | single_label | multi_label
    pretrained: str = ""              # pretraining checkpoint to start from
    head_lr_scale: float = 100.0      # CAV-MAE's fine-tuning: new head at 100x the encoder lr
    label_smooth: float = 0.0         # training targets s / K + (1 - s) y (CAV-MAE's recipes: 0.1)
    average_from_step: int = 0        # > 0: RUN/model_wa.pt = mean of the checkpoints from this step on
    balanced_sampling: bool = False   # training draws clips by CAV-MAE's class weights (deteclap.data.balance)
    mode: str = "multimodal"          # multimodal | audioonly | videoonly


@dataclass
class RunConfig:
    out_dir: str = "runs/default"
    max_steps: int = 1000
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    seed: int = 0
    device: str = "auto"              # auto | cpu | cuda


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    run: RunConfig = field(default_factory=RunConfig)
    source: str = ""                  # the file this config came from (set by load_config)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


_CHOICES = {
    ("data", "loader"): ("auto", "dali", "reference"),
    ("data", "dali_device"): ("auto", "gpu", "cpu"),
    ("data", "frame_dtype"): ("float32", "float16"),
    ("data", "on_error"): ("raise", "skip"),
    ("labels", "variant"): VARIANTS,
    ("loss", "mask_mode"): ("unstructured", "time", "freq", "tf"),
    ("deepspeed", "precision"): ("bf16", "fp16", "fp32"),
    ("deepspeed", "zero_stage"): (0, 1, 2, 3),
    ("finetune", "task"): ("", "single_label", "multi_label"),
    ("finetune", "mode"): ("multimodal", "audioonly", "videoonly"),
    ("run", "device"): ("auto", "cpu", "cuda"),
}
# Bounds of numeric keys, one place: ">= x", "> x", or an interval "[a, b]" / "[a, b)" / "(a, b]".
# Tuple values (optim.betas, eval.recall_at) are checked element by element. A bound refuses a
# value that lies outside it; NaN lies outside nothing and passes (JSON has no NaN: only a deliberate
# `--set key=NaN` writes one, which is how a run's stop on a non-finite loss is provoked).
_BOUNDS = {
    ("model", "img_size"): ">= 1",
    ("model", "audio_length"): ">= 1",
    ("model", "num_mel_bins"): ">= 1",
    ("model", "patch_size"): ">= 1",
    ("model", "embed_dim"): ">= 1",
    ("model", "modality_specific_depth"): ">= 0",
    ("model", "joint_depth"): ">= 0",
    ("model", "num_heads"): ">= 1",
    ("model", "decoder_embed_dim"): ">= 1",
    ("model", "decoder_depth"): ">= 0",
    ("model", "decoder_num_heads"): ">= 1",
    ("model", "mlp_ratio"): "> 0",
    ("data", "batch_size"): ">= 1",
    ("data", "num_workers"): ">= 0",
    ("data", "shuffle_buffer"): ">= 0",
    ("data", "eval_frame"): ">= 0",
    ("data", "num_frames"): ">= 1",
    ("data", "freqm"): ">= 0",
    ("data", "timem"): ">= 0",
    ("data", "mixup"): "[0, 1]",
    ("data", "seed"): ">= 0",
    ("labels", "audio_threshold"): "[-1, 1]",      # CLAP cosine (truth scores lie in [0, 1])
    ("labels", "visual_threshold"): "[0, 1]",      # YOLO probability
    ("loss", "mae_weight"): ">= 0",
    ("loss", "contrastive_weight"): ">= 0",
    ("loss", "contrastive_tau"): "> 0",
    ("loss", "a2l_weight"): ">= 0",
    ("loss", "v2l_weight"): ">= 0",
    ("loss", "mask_ratio_a"): "[0, 1)",           # 1 would leave the encoder no patch at all
    ("loss", "mask_ratio_v"): "[0, 1)",
    ("optim", "lr"): "> 0",
    ("optim", "weight_decay"): ">= 0",
    ("optim", "betas"): "[0, 1)",
    ("optim", "warmup_steps"): ">= 0",
    ("optim", "decay_start_step"): ">= 0",
    ("optim", "decay_every"): ">= 0",
    ("optim", "decay_rate"): "> 0",
    ("optim", "grad_clip"): ">= 0",
    ("deepspeed", "grad_accum_steps"): ">= 1",
    ("eval", "per_class"): ">= 0",
    ("eval", "batch_size"): ">= 1",
    ("eval", "recall_at"): ">= 1",
    ("finetune", "head_lr_scale"): "> 0",
    ("finetune", "label_smooth"): "[0, 1)",
    ("finetune", "average_from_step"): ">= 0",
    ("run", "max_steps"): ">= 1",
    ("run", "log_every"): ">= 1",
    ("run", "checkpoint_every"): ">= 1",
    ("run", "keep_checkpoints"): ">= 0",          # 0 keeps every checkpoint
    ("run", "seed"): ">= 0",
}
# (section, key, section, key): the first must divide evenly by the second
_DIVISIBLE = (
    ("model", "img_size", "model", "patch_size"),
    ("model", "audio_length", "model", "patch_size"),
    ("model", "num_mel_bins", "model", "patch_size"),
    ("model", "embed_dim", "model", "num_heads"),
    ("model", "decoder_embed_dim", "model", "decoder_num_heads"),
)


def _outside(value: float, bound: str) -> bool:
    """True when `value` lies outside `bound` (see _BOUNDS for the notation)."""
    if bound.startswith(">= "):
        return value < float(bound[3:])
    if bound.startswith("> "):
        return value <= float(bound[2:])
    low, high = (float(x) for x in bound[1:-1].split(","))
    return (value < low or (bound[0] == "(" and value == low)
            or value > high or (bound[-1] == ")" and value == high))


def validate(cfg: Config) -> None:
    """Check every choice, bound and relation between keys; raise ConfigError naming the file and key.

    `load_config` calls this; call it again after changing a Config in code.
    """
    for section in dataclasses.fields(cfg):
        if section.name == "source":
            continue
        values = getattr(cfg, section.name)
        for key in dataclasses.fields(values):
            value = getattr(values, key.name)
            where = f"{cfg.source}: {section.name}.{key.name}"
            choices = _CHOICES.get((section.name, key.name))
            if choices is not None and value not in choices:
                raise ConfigError(f"{where}: {json.dumps(value)} is not one of {list(choices)}")
            bound = _BOUNDS.get((section.name, key.name))
            if bound is not None and any(_outside(v, bound) for v in (value if isinstance(value, tuple) else (value,))):
                rule = f"must be {bound}" if bound[0] in "<>" else f"must lie in {bound}"
                raise ConfigError(f"{where}: {json.dumps(value)} {rule}")
    for section, key, by_section, by_key in _DIVISIBLE:
        value, by = getattr(getattr(cfg, section), key), getattr(getattr(cfg, by_section), by_key)
        if value % by:
            raise ConfigError(f"{cfg.source}: {section}.{key}={value} is not a multiple of {by_section}.{by_key}={by}")
    if cfg.optim.decay_start_step > 0 and cfg.optim.decay_every == 0:
        raise ConfigError(f"{cfg.source}: optim.decay_start_step={cfg.optim.decay_start_step} needs "
                          f"optim.decay_every > 0 (the steps between lr decays); set decay_start_step=0 for no decay")


def _read_json(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and merge it over the file it `extends` (recursively)."""
    if not path.is_file():
        where = f" (extended from {seen[-1]})" if seen else ""
        raise ConfigError(f"{path}: config file not found{where}")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: `extends` loops back to itself")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a JSON object")
    base_name = raw.pop("extends", None)
    if base_name is None:
        return raw
    base = _read_json(path.parent / base_name, seen + (path.resolve(),))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return base


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against a type hint; return it converted (lists -> tuples, int -> float)."""
    origin = typing.get_origin(hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple and isinstance(value, (list, tuple)):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(args) == len(value):
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    type_name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{where}: expected {type_name}, got {json.dumps(value)}")


def _build(raw: dict[str, Any], source: str) -> Config:
    sections = {f.name: f for f in dataclasses.fields(Config) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in sections:
            raise ConfigError(f"{source}: unknown section `{name}` (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section `{name}` must be a JSON object")
        cls = sections[name].default_factory  # type: ignore[misc]
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}
        parsed = {}
        for key, value in values.items():
            where = f"{source}: {name}.{key}"
            if key not in known:
                raise ConfigError(f"{source}: unknown key `{name}.{key}` (known: {', '.join(sorted(known))})")
            parsed[key] = _coerce(value, hints[key], where)
        kwargs[name] = cls(**parsed)
    config = Config(**kwargs, source=source)
    validate(config)
    return config


def parse_override(text: str) -> tuple[str, str, Any]:
    """`section.key=value` -> (section, key, value); value is JSON if it parses, else a string."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise ConfigError(f"--set {text!r}: expected section.key=value")
    dotted, value_text = text.split("=", 1)
    section, key = dotted.split(".", 1)
    try:
        value = json.loads(value_text)
    except json.JSONDecodeError:
        value = value_text
    return section, key, value


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> Config:
    """Load a JSON config (following `extends`) and apply `section.key=value` overrides.

    Raises ConfigError naming the file and key for unknown keys, wrong types, values out of range
    or against another key (`validate`) or a missing file.
    """
    path = Path(path)
    raw = _read_json(path)
    source = str(path)
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise ConfigError(f"{source}: section `{section}` must be a JSON object")
        raw[section][key] = value
    if overrides:
        source = f"{path} (with --set overrides)"
    return _build(raw, source)


def config_differences(run_dir: str | Path, cfg: Config, ignore: tuple[str, ...] = ("run.out_dir",)) -> list[str]:
    """How `cfg` differs from the config a run was trained with (RUN/config.json, which
    deteclap/train.py writes): one "section.key: stored -> wanted" line per differing value, [] when
    the run was trained with `cfg`. A missing or unreadable config.json is one difference.

    `ignore` names the keys that may differ without changing the run; by default only run.out_dir
    (where the run is written: the same folder may be reached by another path). Everything else
    counts, run.max_steps and even run.log_every (the logged loss curves) included.
    """
    path = Path(run_dir) / "config.json"
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return [f"{path} is missing or unreadable"]
    wanted = json.loads(json.dumps(cfg.to_dict()))      # tuples -> lists, as config.json holds them
    absent = object()

    def show(value: Any) -> str:
        return "(absent)" if value is absent else json.dumps(value)

    differences = []
    for section in dict.fromkeys([*wanted, *stored]):
        old, new = stored.get(section, {}), wanted.get(section, {})
        for key in dict.fromkeys([*new, *old]):
            old_value, new_value = old.get(key, absent), new.get(key, absent)
            if f"{section}.{key}" not in ignore and old_value != new_value:
                differences.append(f"{section}.{key}: {show(old_value)} -> {show(new_value)}")
    return differences


def add_config_args(parser: Any, required: bool = True) -> None:
    """Add `--config` and repeatable `--set section.key=value` to an argparse parser."""
    parser.add_argument("--config", required=required, help="JSON config file (see configs/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="SECTION.KEY=VALUE", help="override one config value (repeatable)")
