"""Automatic audio-visual labels: vocabulary, CLAP / YOLO / ground-truth labellers, score storage.

Heavy libraries (msclap, ultralytics, torch) load only when a labeller is built.
"""

from deteclap.labels.store import label_shards, read_scores
from deteclap.labels.vocabulary import load_vocabulary

__all__ = ["label_shards", "load_vocabulary", "read_scores"]
