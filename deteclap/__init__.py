"""deteclap: DETECLAP = CAV-MAE + audio-visual object-label heads, with a fast WebDataset/DALI data path.

Modules (each owns one idea; nothing heavy is imported or computed at import time):
format (the shard format: member names, key rule, index, dataset.json), config (typed configs),
synth (synthetic clips), audio (Kaldi fbank), data (what both loaders share, the reference loader,
targets), model (CAV-MAE, losses, checkpoints), labels (CLAP / YOLO / truth labellers, score
store); the applications on top: shard (videos -> tars), label, train, evaluate, sweep, demo.
"""

__version__ = "0.1.0"
