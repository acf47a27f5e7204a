"""deteclap: DETECLAP = CAV-MAE + audio-visual object-label heads, with a fast WebDataset/DALI data path.

Modules (each owns one idea; nothing heavy is imported or computed at import time):
config (typed configs), synth (synthetic clips), shard (videos -> tars), audio (Kaldi fbank),
data (reference loader, targets), model (CAV-MAE, losses, checkpoints), labels (CLAP / YOLO /
truth labellers, score store), train, evaluate, demo.
"""

__version__ = "0.1.0"
