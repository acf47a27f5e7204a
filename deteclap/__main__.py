"""`deteclap` / `python -m deteclap`: the list of commands; each one's `--help` explains itself."""

from __future__ import annotations

import sys

COMMANDS = {
    "synth": "python -m deteclap.synth OUT --clips N          synthetic fine-grained clips + truth.jsonl",
    "shard": "python -m deteclap.shard SRC OUT                videos / manifest -> WebDataset tars (--verify OUT)",
    "label": "python -m deteclap.label SHARDS --labellers ... CLAP / YOLO / truth label scores into the shards",
    "train": "deepspeed deteclap/train.py --config C          pretrain (or fine-tune) with DeepSpeed ZeRO",
    "evaluate": "python -m deteclap.evaluate --config C --checkpoint CKPT   retrieval / classification metrics",
    "embed": "python -m deteclap.embed SRC --checkpoint CKPT --out INDEX   embed videos / shards into an index",
    "search": "python -m deteclap.search INDEX --audio F | --video F | --key K   query an index (--json, --html)",
    "sweep": "python -m deteclap.sweep --config C ...         label-threshold sweep (paper Fig. 3)",
    "demo": "python -m deteclap.demo [--out DIR]            CAV-MAE vs DETECLAP (OR) on synthetic data, CPU ok",
    "benchmarks": "python -m benchmarks                    shard / loader / label / train-step benchmarks",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS and argv[0] not in ("train", "benchmarks"):
        import importlib

        return importlib.import_module(f"deteclap.{argv[0]}").main(argv[1:])
    if argv and argv[0] == "train":
        from deteclap.train import main as train_main

        return train_main(argv[1:])
    print("deteclap: DETECLAP (CAV-MAE + audio-visual object labels) with a fast WebDataset / DALI data path.\n")
    print("usage: deteclap COMMAND [ARGS]   (or the module form below; COMMAND --help for details)\n")
    for name, line in COMMANDS.items():
        print(f"  {name:<11} {line}")
    return 0 if not argv or argv[0] in ("-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
