"""deteclap: DETECLAP = CAV-MAE + audio-visual object-label heads, with a fast WebDataset/DALI data path.

Modules (each owns one idea; nothing heavy is imported or computed at import time):
format (the shard format: member names, key rule, index, dataset.json), config (typed configs),
synth (synthetic clips), audio (Kaldi fbank), data (what both loaders share, the reference loader,
targets), model (CAV-MAE, losses, checkpoints), labels (CLAP / YOLO / truth labellers, score
store), inference (a trained model on your files), index (embedding indexes); the applications on
top: shard (videos -> tars), label, train, evaluate, sweep, demo, embed, search.

`deteclap.load`, `deteclap.embed_video_file`, `deteclap.embed_audio_file` and
`deteclap.similarity` are deteclap.inference's, imported on first use.
"""

__version__ = "0.1.0"

_INFERENCE_NAMES = ("load", "embed_video_file", "embed_audio_file", "similarity")


def __getattr__(name: str):
    """The inference API on first use (torch is not imported with the package)."""
    if name in _INFERENCE_NAMES:
        from deteclap import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'deteclap' has no attribute {name!r}")
