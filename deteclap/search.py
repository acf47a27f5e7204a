"""`deteclap search INDEX (--audio F | --video F | --key K)`: query an index made by `deteclap embed`.

    python -m deteclap.search INDEX (--audio FILE | --video FILE | --key KEY) [--modality audio|video]
                              [-k 10] [--json OUT] [--html OUT] [--device auto] [--backend numpy|faiss]

The query is embedded on the fly with the index's own checkpoint and config (a changed checkpoint
file is refused), or taken from the index by key (--key: its audio embedding; --modality sets what
is ranked, --query-modality which side of the item queries). By default the other modality is
ranked: an audio query retrieves videos and the reverse. Exact search: one matrix product over all
items (~0.3 s for 1,000,000 x 768 on 2 cores), or faiss's exact IndexFlatIP with --backend faiss
(the `search` extra). Prints rank, score (cosine, [-1, 1]; compare within one query, not across
checkpoints), key, source and, when the checkpoint has label heads, the classes both heads predict (probability
>= --threshold on each side) with the query's and the result's probabilities.
--json OUT writes {"query": {...}, "results": [{"rank", "key", "score", "source", "shared_classes"}, ...]}
(shared_classes null without label heads). --html OUT writes one self-contained page.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deteclap.search", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("index", metavar="INDEX", help="index folder written by `deteclap embed`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--audio", metavar="FILE", help="query by this file's audio (audio or video file)")
    which.add_argument("--video", metavar="FILE", help="query by this video file's frame")
    which.add_argument("--key", metavar="KEY", help="query by an item of the index")
    parser.add_argument("--query-modality", default="audio", choices=("audio", "video"),
                        help="with --key: which of the item's embeddings queries (default audio)")
    parser.add_argument("--modality", default=None, choices=("audio", "video"),
                        help="what to rank (default: the modality the query is not)")
    parser.add_argument("-k", type=int, default=10, help="results to show")
    parser.add_argument("--threshold", type=float, default=0.5, help="label probability counted as predicted")
    parser.add_argument("--json", default=None, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--html", default=None, metavar="OUT", help="write a self-contained HTML page")
    parser.add_argument("--checkpoint", default=None,
                        help="the index's checkpoint where it has moved (default: the path index.json records)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the query is embedded")
    parser.add_argument("--backend", default="numpy", choices=("numpy", "faiss"),
                        help="exact search by numpy (default, faster for one query) or faiss's IndexFlatIP")
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error("-k must be at least 1")

    from deteclap.index import IndexFolderError, load_index, print_results, query_from_key, query_index
    from deteclap.inference import InputError, SampleDecoder, load
    from deteclap.model import CheckpointError

    try:
        index = load_index(args.index)
        model = None
        if args.key is not None:
            query = query_from_key(index, args.key, args.query_modality)
        else:
            model = load(args.checkpoint or index.info["checkpoint"], Path(args.index) / "config.json", (),
                         args.device, index.vocabulary)
            if model.digest != index.info["checkpoint_sha256"]:
                raise IndexFolderError(f"{index.info['checkpoint']} changed since {args.index} was made (sha256 "
                                       f"{model.digest[:12]}, the index has {index.info['checkpoint_sha256'][:12]})")
            path = args.audio or args.video
            clip = model.audio_clip(path) if args.audio else model.video_clip(path)
            out = model.embed_clips([clip])
            side = "audio" if args.audio else "video"
            labels = out[f"labels_{side}"]
            query = {"modality": side, "file": str(path), "source": str(path), "embedding": out[side][0],
                     "labels": None if labels is None else labels[0]}
        result = query_index(index, query, args.k, args.modality, args.threshold, backend=args.backend)
    except (FileNotFoundError, CheckpointError, IndexFolderError, InputError, KeyError) as err:
        print(f"error: {err.args[0] if isinstance(err, KeyError) else err}", file=sys.stderr)
        return 2
    print_results(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(args.json).with_name(f".{Path(args.json).name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.json)
    if args.html:
        from deteclap.results_page import clip_view, write_page

        decoder = model.decoder if model is not None else SampleDecoder(index.config())
        if args.key is not None:
            try:
                query_clip = clip_view(index.rows[index.keys[args.key]]["origin"], decoder)
            except (InputError, OSError):
                query_clip = None
        else:
            query_clip = clip
        rows = [index.rows[index.keys[r["key"]]] for r in result["results"]]
        write_page(args.html, result, query_clip, rows, decoder)
        print(f"page: {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
