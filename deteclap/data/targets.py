"""Label-head targets from stored label scores: thresholds, AND / OR / separate, soft variants.

Owns the one definition of every DETECLAP label variant (DESIGN.md), shared by the reference
loader and the DALI loader. Pure torch, so it runs on whatever device the scores are on.

With s_a = scores[cfg.audio_labeller] (CLAP cosine), s_v = scores[cfg.visual_labeller] (YOLO
probability), y_a = s_a >= audio_threshold, y_v = s_v >= visual_threshold:

| variant     | a2l (audio head)     | v2l (visual head)    |
| ----------- | -------------------- | -------------------- |
| cavmae      | -                    | -                    |
| audio       | y_a                  | y_a                  |
| visual      | y_v                  | y_v                  |
| separate    | y_a                  | y_v                  |
| and / or    | y_a AND / OR y_v     | same                 |
| soft_audio  | clamp(s_a, 0, 1)     | same                 |
| soft_visual | clamp(s_v, 0, 1)     | same                 |
| soft_max    | max of the two soft scores | same           |

Fine-tuning's class targets get CAV-MAE's label smoothing here too (`smooth_labels`).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from deteclap.config import VARIANTS, LabelsConfig

_USES_AUDIO = {"audio", "separate", "and", "or", "soft_audio", "soft_max"}
_USES_VISUAL = {"visual", "separate", "and", "or", "soft_visual", "soft_max"}


def required_labellers(cfg: LabelsConfig) -> list[str]:
    """The score members (labeller names) the variant needs; [] for cavmae."""
    if cfg.variant not in VARIANTS:
        raise ValueError(f"labels.variant must be one of {VARIANTS}, got {cfg.variant!r}")
    names = []
    if cfg.variant in _USES_AUDIO:
        names.append(cfg.audio_labeller)
    if cfg.variant in _USES_VISUAL and cfg.visual_labeller not in names:
        names.append(cfg.visual_labeller)
    return names


def _score(scores: Mapping[str, torch.Tensor], name: str) -> torch.Tensor:
    if name not in scores:
        raise KeyError(f"label scores {name!r} missing; present: {sorted(scores)}")
    return scores[name]


def build_targets(scores: Mapping[str, torch.Tensor], cfg: LabelsConfig) -> dict[str, torch.Tensor]:
    """scores {labeller: [B, C]} (any float dtype) -> {"a2l": [B, C], "v2l": [B, C]} float32 on
    the scores' device ({} for cavmae). Both keys may hold the same tensor. Raises KeyError naming
    a missing labeller and the ones present."""
    variant = cfg.variant
    if not required_labellers(cfg):          # also validates the variant
        return {}
    s_a = _score(scores, cfg.audio_labeller) if variant in _USES_AUDIO else None
    s_v = _score(scores, cfg.visual_labeller) if variant in _USES_VISUAL else None
    if variant == "soft_audio":
        y = s_a.float().clamp(0.0, 1.0)
    elif variant == "soft_visual":
        y = s_v.float().clamp(0.0, 1.0)
    elif variant == "soft_max":
        y = torch.maximum(s_a.float().clamp(0.0, 1.0), s_v.float().clamp(0.0, 1.0))
    else:
        # compared in the scores' own dtype: a float16 score stored for 0.4 passes threshold 0.4
        y_a = (s_a >= cfg.audio_threshold).float() if s_a is not None else None
        y_v = (s_v >= cfg.visual_threshold).float() if s_v is not None else None
        if variant == "separate":
            return {"a2l": y_a, "v2l": y_v}
        if variant == "audio":
            y = y_a
        elif variant == "visual":
            y = y_v
        elif variant == "and":
            y = y_a * y_v
        else:  # "or"
            y = torch.maximum(y_a, y_v)
    return {"a2l": y, "v2l": y}


def smooth_labels(classes: torch.Tensor, smoothing: float) -> torch.Tensor:
    """CAV-MAE's fine-tuning label smoothing of (mixed) class targets [B, K] -> s / K + (1 - s) * y.

    CAV-MAE writes it so for mixed samples; an unmixed one gets exactly 1 - s on its positives
    (s / K less: 3e-4 for VGGSound's 309 classes at s = 0.1), which this does not copy."""
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"finetune.label_smooth must lie in [0, 1), got {smoothing}")
    return smoothing / classes.shape[1] + (1.0 - smoothing) * classes
