"""`deteclap embed SRC --checkpoint CKPT --out INDEX`: embed videos or shards with a trained model.

    python -m deteclap.embed SRC --checkpoint CKPT --out INDEX [--config C] [--set k=v] [--device auto]
                             [--split S] [--batch-size B] [--workers N] [--seconds 10]

SRC: a shard folder (`python -m deteclap.shard` output), a folder of videos or a CSV / JSONL
manifest as `deteclap.shard` reads them. Videos are decoded with the shard writer's own clip code
and embedded as `deteclap.evaluate` embeds shards (frame `data.eval_frame`, the Kaldi fbank of the
first channel at 16 kHz). INDEX gets L2-normalised audio and video embeddings, the label heads'
probabilities when the checkpoint has heads, one metadata row per item, failures.jsonl and
index.json (see deteclap/index.py for the layout). Re-running resumes; on a grown folder it embeds
only the new items; an INDEX of another checkpoint or config is refused. Exit 0 when every input
was embedded, 1 with --strict when some failed, 2 on an error that stops the run.
"""

from __future__ import annotations

import argparse
import sys

from deteclap.config import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deteclap.embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", metavar="SRC", help="shard folder, folder of videos, or .csv / .jsonl manifest")
    parser.add_argument("--checkpoint", required=True,
                        help="model.pt, model_wa.pt, a checkpoint folder or a run folder (its latest checkpoint)")
    parser.add_argument("--out", required=True, metavar="INDEX", help="index folder (created; resumed when present)")
    parser.add_argument("--config", default=None,
                        help="the config the model was trained with (default: the run's config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable; needs --config or a run config.json)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--vocabulary", default=None, help="label-head class names file (one per line)")
    parser.add_argument("--split", default=None,
                        help="shard folder: embed this split only (default all); videos: split of rows naming none")
    parser.add_argument("--batch-size", type=int, default=None, help="clips per model batch (default eval.batch_size)")
    parser.add_argument("--workers", type=int, default=1, help="processes decoding the inputs")
    parser.add_argument("--seconds", type=float, default=10.0, help="video segment length from its start")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input could not be embedded")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    from deteclap.index import IndexFolderError, build_index
    from deteclap.inference import load
    from deteclap.model import CheckpointError
    from deteclap.inputs import ShardError

    try:
        model = load(args.checkpoint, args.config, args.overrides, args.device, args.vocabulary)
        summary = build_index(args.src, args.out, model, split=args.split, batch_size=args.batch_size,
                              workers=args.workers, seconds=args.seconds, progress=not args.quiet)
    except (FileNotFoundError, CheckpointError, ConfigError, IndexFolderError, ShardError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
    heads = "with label-head probabilities" if model.has_label_heads else "no label heads in this checkpoint"
    print(f"{summary['count']} items in {summary['out']} ({summary['embedded_now']} embedded now, {heads}); "
          f"{summary['failed']} inputs not embedded ({reasons}; see failures.jsonl)")
    return 1 if args.strict and summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
