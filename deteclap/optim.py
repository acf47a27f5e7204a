"""Optimiser, learning-rate schedule and DeepSpeed config, built from the typed config.

CAV-MAE trains with `torch.optim.Adam(params, lr, weight_decay=5e-7, betas=(0.95, 0.999))`: Adam with
L2 weight decay added to the gradient, not AdamW's decoupled decay. DeepSpeed's config optimiser
"Adam" means AdamW unless `adam_w_mode` is false, so we build the optimiser ourselves and hand it
to `deepspeed.initialize`: apex's FusedAdam (adam_w_mode=False) where apex imports and a GPU
exists, else torch's Adam (fused on CUDA).
"""

from __future__ import annotations

from typing import Any
from collections.abc import Iterable

import torch

from deteclap.config import Config, OptimConfig


def build_optimizer(param_groups: Iterable[dict[str, Any]], cfg: OptimConfig,
                    device: torch.device) -> torch.optim.Optimizer:
    """Adam with CAV-MAE's L2 weight decay; apex FusedAdam when importable on CUDA."""
    groups = list(param_groups)
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if device.type == "cuda":
        try:
            from apex.optimizers import FusedAdam  # type: ignore[import-not-found]
            return FusedAdam(groups, adam_w_mode=False, **kwargs)
        except ImportError:
            return torch.optim.Adam(groups, fused=True, **kwargs)
    return torch.optim.Adam(groups, **kwargs)


def lr_factor(step: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at optimiser step `step` (0-based): linear warm-up, then step decay.

    CAV-MAE halves the lr every `lrscheduler_step` epochs from epoch `lrscheduler_start` on
    (MultiStepLR, stepped once per epoch); here the milestones are counted in optimiser steps
    (decay_start_step, decay_every). Its trainers parse `--warmup` but never read it: the official
    recipes have no warm-up (warmup_steps 0); a warm-up here is an option of ours.
    """
    factor = 1.0
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        factor = (step + 1) / cfg.warmup_steps
    if cfg.decay_start_step > 0 and cfg.decay_every > 0 and step >= cfg.decay_start_step:
        factor *= cfg.decay_rate ** (1 + (step - cfg.decay_start_step) // cfg.decay_every)
    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))


def deepspeed_config(cfg: Config) -> dict[str, Any]:
    """The DeepSpeed JSON config for this run (micro batch = data.batch_size per rank).

    bf16 runs as DeepSpeed's `torch_autocast` (fp32 master weights, bf16 matmuls: what CAV-MAE's
    torch.cuda.amp autocast does); fp16 uses DeepSpeed's fp16 engine with dynamic loss scaling.
    """
    ds: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.deepspeed.grad_accum_steps,
        "zero_optimization": {"stage": cfg.deepspeed.zero_stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if cfg.optim.grad_clip > 0:
        ds["gradient_clipping"] = cfg.optim.grad_clip
    if cfg.deepspeed.precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif cfg.deepspeed.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16}
    return ds
