"""CAV-MAE + DETECLAP label heads: models, builders and checkpoint I/O (losses in .losses)."""

from deteclap.model.build import build_finetune_model, build_model
from deteclap.model.cavmae import CAVMAE, CAVMAEFT
from deteclap.model.checkpoint import CheckpointError, LoadReport, load_checkpoint, save_state_dict

__all__ = ["CAVMAE", "CAVMAEFT", "CheckpointError", "LoadReport", "build_finetune_model", "build_model",
           "load_checkpoint", "save_state_dict"]
