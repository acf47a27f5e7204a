"""Loss terms and the training objectives that DeepSpeed wraps.

Owns: the CAV-MAE contrastive loss and MAE loss (as the official forward_contrastive /
forward_mae_loss), DETECLAP's label BCE, `PretrainObjective` and `FinetuneObjective`.

Contrastive direction, as the official code computes it: sim = norm(a) @ norm(v)^T / tau with
audio rows and visual columns, `log_softmax(sim, dim=0)` (each visual column is a softmax over
the batch's audio clips, i.e. visual -> audio retrieval), loss = -mean(diagonal). This
one-directional form is the official default (`bidirect_contrast=False`) and the one the
published CAV-MAE / DETECLAP numbers used; `LossConfig.bidirectional=True` averages it with the
transposed direction. c_acc is the fraction of columns whose argmax is the matching row.
All losses are computed in float32 (also under bf16 / fp16 autocast).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from deteclap.config import LossConfig
from deteclap.model.cavmae import CAVMAE, CAVMAEFT, FINETUNE_MODES

# Official forward_mae_loss: variance epsilon of the per-patch target normalisation.
NORM_PIX_EPS = 1.0e-6
LABEL_TARGET_KEYS = {"a2l": "label_logits_a", "v2l": "label_logits_v"}
FINETUNE_TASKS = ("single_label", "multi_label")


def _one_direction(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """sim [B, B] -> (-mean diag of log_softmax over dim 0, accuracy of argmax over dim 0)."""
    nce = -torch.diagonal(F.log_softmax(sim, dim=0)).mean()
    target = torch.arange(sim.shape[0], device=sim.device)
    c_acc = (sim.argmax(dim=0) == target).float().mean()
    return nce, c_acc


def contrastive_loss(audio_rep: torch.Tensor, video_rep: torch.Tensor, tau: float = 0.05,
                     bidirectional: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """audio_rep, video_rep [B, D] -> (InfoNCE loss, c_acc), both scalars (see module doc)."""
    with torch.autocast(audio_rep.device.type, enabled=False):
        a = F.normalize(audio_rep.float(), dim=-1)
        v = F.normalize(video_rep.float(), dim=-1)
        sim = a @ v.t() / tau
    nce, c_acc = _one_direction(sim)
    if bidirectional:
        nce_t, c_acc_t = _one_direction(sim.t())
        nce, c_acc = (nce + nce_t) / 2, (c_acc + c_acc_t) / 2
    return nce, c_acc


def mae_loss(target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor,
             norm_pix_loss: bool) -> torch.Tensor:
    """Mean squared error on removed patches.

    target, pred [B, L, P] (target from model.patchify_*), mask [B, L] (1 = removed) -> scalar.
    With norm_pix_loss each target patch is normalised by its own mean and variance (unbiased,
    as torch.var and the official code).
    """
    target = target.float()
    if norm_pix_loss:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.float()
    return (per_patch * mask).sum() / mask.sum()


def label_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE-with-logits, mean over batch and classes: logits [B, C], target [B, C] in [0, 1]."""
    if logits.shape != target.shape:
        raise ValueError(f"label target shape {list(target.shape)} != logits shape {list(logits.shape)}")
    return F.binary_cross_entropy_with_logits(logits.float(), target.float())


class PretrainObjective(nn.Module):
    """CAV-MAE (+ DETECLAP label) pretraining loss around a CAVMAE model.

    forward(fbank [B, T, F], frames [B, 3, H, W], targets {"a2l"?: [B, C], "v2l"?: [B, C]}) ->
    {"total", "contrastive", "mae_audio", "mae_visual", "a2l", "v2l", "c_acc"} scalar tensors.
    Terms are unweighted; total = mae_weight * (mae_audio + mae_visual) + contrastive_weight *
    contrastive + a2l_weight * a2l + v2l_weight * v2l. An absent target key gives a 0 term that
    is not added. With mae_weight == 0 the decoder is skipped (as the official code does).
    """

    def __init__(self, model: CAVMAE, loss_cfg: LossConfig):
        super().__init__()
        self.model = model
        self.cfg = loss_cfg

    def forward(self, fbank: torch.Tensor, frames: torch.Tensor,
                targets: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        cfg, model = self.cfg, self.model
        targets = targets or {}
        unknown = set(targets) - set(LABEL_TARGET_KEYS)
        if unknown:
            raise KeyError(f"unknown target keys {sorted(unknown)}; "
                           f"expected a subset of {sorted(LABEL_TARGET_KEYS)}")
        if targets and model.num_label_classes <= 0:
            raise ValueError(f"targets {sorted(targets)} given but the model has no label heads")
        out = model(fbank, frames, cfg.mask_ratio_a, cfg.mask_ratio_v, cfg.mask_mode,
                    decode=cfg.mae_weight != 0)
        zero = out["a_bar"].new_zeros((), dtype=torch.float32)
        losses = {"contrastive": zero, "mae_audio": zero, "mae_visual": zero, "a2l": zero, "v2l": zero}
        losses["contrastive"], losses["c_acc"] = contrastive_loss(
            out["a_bar"], out["v_bar"], cfg.contrastive_tau, cfg.bidirectional)
        total = cfg.contrastive_weight * losses["contrastive"]
        if cfg.mae_weight != 0:
            losses["mae_audio"] = mae_loss(model.patchify_audio(fbank), out["pred_a"], out["mask_a"],
                                           model.norm_pix_loss)
            losses["mae_visual"] = mae_loss(model.patchify_video(frames), out["pred_v"], out["mask_v"],
                                            model.norm_pix_loss)
            total = total + cfg.mae_weight * (losses["mae_audio"] + losses["mae_visual"])
        weights = {"a2l": cfg.a2l_weight, "v2l": cfg.v2l_weight}
        for key, target in targets.items():
            losses[key] = label_loss(out[LABEL_TARGET_KEYS[key]], target)
            total = total + weights[key] * losses[key]
        losses["total"] = total
        return losses


class FinetuneObjective(nn.Module):
    """Fine-tuning loss around a CAVMAEFT model (official traintest_ft.py).

    task "single_label": cross-entropy (labels [B] class indices or [B, K] one-hot / mixed-up
    probabilities, as the official CrossEntropyLoss receives them); "multi_label": BCE-with-logits
    on [B, K] multi-hot labels. forward(fbank, frames, labels, return_logits=False) ->
    {"total", "ce" | "bce"} (+ "logits" [B, K], detached, when return_logits).
    """

    def __init__(self, model: CAVMAEFT, task: str, mode: str = "multimodal"):
        super().__init__()
        if task not in FINETUNE_TASKS:
            raise ValueError(f"task must be one of {FINETUNE_TASKS}, got {task!r}")
        if mode not in FINETUNE_MODES:
            raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")
        self.model, self.task, self.mode = model, task, mode

    def forward(self, fbank: torch.Tensor | None, frames: torch.Tensor | None, labels: torch.Tensor,
                return_logits: bool = False) -> dict[str, torch.Tensor]:
        logits = self.model(fbank, frames, self.mode).float()
        if self.task == "single_label":
            target = labels.long() if labels.dim() == 1 else labels.float()
            out = {"ce": F.cross_entropy(logits, target)}
        else:
            out = {"bce": F.binary_cross_entropy_with_logits(logits, labels.float())}
        out["total"] = next(iter(out.values()))
        if return_logits:
            out["logits"] = logits.detach()
        return out
