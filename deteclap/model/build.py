"""Model builders from the typed config: `build_model` (pretraining) and `build_finetune_model`.

Builders only construct; loading `model.init_checkpoint` / `finetune.pretrained` is the caller's
job (`load_checkpoint`, which returns the missing / unexpected keys to report).
"""

from __future__ import annotations

from typing import Any

from deteclap.config import Config, ModelConfig
from deteclap.model.cavmae import CAVMAE, CAVMAEFT


def _encoder_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    return dict(img_size=cfg.img_size, audio_length=cfg.audio_length, num_mel_bins=cfg.num_mel_bins,
                patch_size=cfg.patch_size, embed_dim=cfg.embed_dim,
                modality_specific_depth=cfg.modality_specific_depth, joint_depth=cfg.joint_depth,
                num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio)


def build_model(cfg: ModelConfig, num_label_classes: int = 0) -> CAVMAE:
    """CAVMAE shaped by `cfg`, with label heads when num_label_classes > 0."""
    return CAVMAE(**_encoder_kwargs(cfg), decoder_embed_dim=cfg.decoder_embed_dim,
                  decoder_depth=cfg.decoder_depth, decoder_num_heads=cfg.decoder_num_heads,
                  norm_pix_loss=cfg.norm_pix_loss, tr_pos=cfg.tr_pos, num_label_classes=num_label_classes)


def build_finetune_model(cfg: Config | ModelConfig, label_dim: int) -> CAVMAEFT:
    """CAVMAEFT shaped by the model config (a Config's `model` section, or a ModelConfig), with
    trainable position embeddings as the official fine-tuning model."""
    model_cfg = cfg.model if isinstance(cfg, Config) else cfg
    return CAVMAEFT(label_dim, **_encoder_kwargs(model_cfg))
