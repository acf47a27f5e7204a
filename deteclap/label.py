"""`python -m deteclap.label SHARDS --labellers clap,yolo,truth`: store label scores inside the shards.

Each labeller adds a `KEY.<labeller>.f16` member to every sample (see deteclap.labels.store and
shards/FORMAT.md); a re-run skips shards already done (resumable). At the end it prints, per
labeller, the labels per clip at the default thresholds, the most frequent classes and failures.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deteclap.config import LabelsConfig
from deteclap.labels import clap, store, truth, yolo
from deteclap.labels.vocabulary import load_vocabulary

LABELLERS = ("clap", "yolo", "truth")
TOP_CLASSES = 10
RANDOM_GPT2_LAYERS = 1      # --random-weights: a 1-layer, thin random GPT-2 (the scores mean nothing anyway)
RANDOM_GPT2_INNER = 64
FAILURES_SHOWN = 5
_DEFAULTS = LabelsConfig()
THRESHOLDS = {"clap": _DEFAULTS.audio_threshold, "truth_audio": _DEFAULTS.audio_threshold,
              "yolo": _DEFAULTS.visual_threshold, "truth_visual": _DEFAULTS.visual_threshold}

EPILOG = """\
labellers:
  clap   MS-CLAP 2023 zero-shot audio tagging: cosine between the clip's audio embedding and the
         prompt "this is a sound of {label}" (member clap.f16). Needs the CLAP 2023 weights file
         CLAP_weights_2023.pth (https://huggingface.co/microsoft/msclap/tree/main) via
         --clap-weights. The prompt embeddings are computed once (this needs the GPT-2 tokenizer
         and model from the Hugging Face hub, or its local cache) and stored in
         --clap-text-embeddings; later runs need only that file and the weights.
  yolo   YOLOv8x-oiv7 (Open Images V7, 601 classes) on the 10 frames of each clip, max confidence
         per class over the frames (member yolo.f16). Needs yolov8x-oiv7.pt
         (https://github.com/ultralytics/assets/releases, listed on docs.ultralytics.com's Open
         Images V7 page) via --yolo-weights.
  truth  synthetic ground truth from truth.jsonl (python -m deteclap.synth) with per-modality
         noise: members truth_audio.f16 (heard objects) and truth_visual.f16 (seen objects).

A sample whose labelling fails (e.g. undecodable audio) stores NaN scores; its key and reason go to
dataset.json `label_failures`. Thresholds and AND / OR merges are chosen at training time.

examples:
  python -m deteclap.label shards/ --labellers truth --truth synth/truth.jsonl
  python -m deteclap.label shards/ --labellers clap,yolo --clap-weights CLAP_weights_2023.pth \\
      --yolo-weights yolov8x-oiv7.pt --device cuda:0 --batch-size 32
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m deteclap.label", description=__doc__.split("\n")[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", help="shard folder (with dataset.json) written by python -m deteclap.shard")
    parser.add_argument("--labellers", default="clap,yolo", help=f"comma list of {', '.join(LABELLERS)}")
    parser.add_argument("--truth", default="", help="truth.jsonl of the synthetic set (labeller truth)")
    parser.add_argument("--truth-noise", action="append", default=[], metavar="MODALITY.FIELD=VALUE",
                        help="change the truth noise, repeatable: MODALITY audio|visual, FIELD one of "
                             "miss_rate, false_positive_rate, jitter, positive_range=LOW,HIGH, "
                             "negative_range=LOW,HIGH (defaults in deteclap/labels/truth.py)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the truth noise (and random weights)")
    parser.add_argument("--clap-weights", default="", help="CLAP_weights_2023.pth (see below)")
    parser.add_argument("--clap-text-embeddings", default="",
                        help="prompt-embedding table (.npz); computed and saved here when missing or "
                             "made by other weights (default: SHARDS/clap_text_embeddings.npz)")
    parser.add_argument("--yolo-weights", default="", help="yolov8x-oiv7.pt (see below)")
    parser.add_argument("--yolo-conf", type=float, default=yolo.DEFAULT_CONF,
                        help="lowest detection confidence kept (default %(default)s)")
    parser.add_argument("--yolo-imgsz", type=int, default=yolo.DEFAULT_IMGSZ, help="YOLO input size")
    parser.add_argument("--random-weights", action="store_true",
                        help="build CLAP / YOLO with random weights (machinery tests and benchmarks only: "
                             "the scores mean nothing)")
    parser.add_argument("--device", default="auto", help="auto (GPU when present) | cpu | cuda | cuda:N")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per model batch")
    parser.add_argument("--force", action="store_true", help="relabel shards already done")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def build_labellers(args: argparse.Namespace, vocabulary: list[str]) -> list[store.Labeller]:
    """The labellers named by --labellers, built from the options (clear errors for missing files)."""
    names = [n.strip() for n in args.labellers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(LABELLERS))
    if unknown or not names:
        raise ValueError(f"--labellers: unknown {unknown}; choose from {', '.join(LABELLERS)}")
    device = yolo.resolve_device(args.device)
    out: list[store.Labeller] = []
    if "truth" in names:
        if not args.truth:
            raise ValueError("--labellers truth needs --truth truth.jsonl")
        rows = truth.load_truth(args.truth)
        noise = truth.parse_noise(args.truth_noise)
        out += [truth.TruthLabeller(rows, vocabulary, modality, noise[modality], args.seed)
                for modality in truth.MODALITY_FIELDS]
    if "clap" in names or "yolo" in names:
        import torch

        torch.manual_seed(args.seed)
    if "clap" in names:
        out.append(_build_clap(args, vocabulary, device))
    if "yolo" in names:
        if args.random_weights:
            model = random_yolo()
        elif not args.yolo_weights:
            raise ValueError("--labellers yolo needs --yolo-weights yolov8x-oiv7.pt (or --random-weights)")
        else:
            model = yolo.load_yolo(args.yolo_weights)
        out.append(yolo.YoloLabeller(model, vocabulary, device, conf=args.yolo_conf, imgsz=args.yolo_imgsz))
    return out


def _build_clap(args: argparse.Namespace, vocabulary: list[str], device: str) -> clap.ClapLabeller:
    if not args.clap_weights and not args.random_weights:
        raise ValueError("--labellers clap needs --clap-weights CLAP_weights_2023.pth (or --random-weights)")
    weights = None if args.random_weights else args.clap_weights
    identity = clap.weights_identity(weights)
    table = Path(args.clap_text_embeddings or Path(args.shards) / "clap_text_embeddings.npz")
    stored = clap.text_embeddings_source(table) if table.is_file() else None
    if stored == identity:
        embeddings = clap.load_text_embeddings(table, vocabulary)
    else:                                  # missing, or made by other weights (e.g. random ones): recompute
        if stored is not None:
            print(f"{table} was made by other CLAP weights ({stored or 'unknown'}): recomputing it", file=sys.stderr)
        if weights is None:
            from transformers import GPT2Config

            embeddings = clap.offline_text_embeddings(vocabulary, gpt2_config=GPT2Config(
                n_layer=RANDOM_GPT2_LAYERS, n_inner=RANDOM_GPT2_INNER))
        else:
            embeddings = clap.clap_text_embeddings(weights, vocabulary, device=device)
        clap.save_text_embeddings(table, embeddings, vocabulary, source=identity)
        print(f"saved CLAP prompt embeddings to {table}", file=sys.stderr)
    encoder = clap.build_audio_encoder(weights, device)
    return clap.ClapLabeller(encoder, embeddings, device)


def random_yolo(nc: int = 0) -> object:
    """A random-weight YOLOv8n with the Open Images V7 class names (offline; tests and benchmarks)."""
    import yaml

    yolo.import_ultralytics()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import ROOT

    names = yaml.safe_load((ROOT / "cfg" / "datasets" / "open-images-v7.yaml").read_text())["names"]
    model = YOLO("yolov8n.yaml")
    model.model = DetectionModel("yolov8n.yaml", nc=nc or len(names), verbose=False)
    model.model.names = {i: names[i] for i in range(nc or len(names))}
    return model


def count_samples(tars: Sequence[Path]) -> int:
    """Samples in these tars (read from their index files when present)."""
    from deteclap.format import index_sample_count

    return sum(index_sample_count(Path(tar)) for tar in tars)


def summary(shards_dir: str | Path, labellers: Sequence[str], vocabulary: list[str]) -> str:
    """Labels per clip at the default thresholds, top classes and failures of each labeller."""
    scores = store.read_scores(shards_dir)
    meta = store.load_dataset_json(shards_dir)
    lines = []
    for name in labellers:
        stored = [s[name] for s in scores.values() if name in s]
        rows = np.stack(stored) if stored else np.zeros((0, len(vocabulary)), store.SCORE_DTYPE)
        failed = np.isnan(rows).any(axis=1)
        threshold = THRESHOLDS.get(name, _DEFAULTS.audio_threshold)
        positive = rows[~failed].astype(np.float32) >= threshold
        per_clip = positive.sum(axis=1)
        lines.append(f"{name}: {len(rows)} clips, {failed.sum()} failed; labels per clip at >= {threshold}: "
                     f"mean {per_clip.mean() if len(per_clip) else 0:.2f}, "
                     f"max {per_clip.max() if len(per_clip) else 0}")
        counts = positive.sum(axis=0)
        for index in np.argsort(-counts, kind="stable")[:TOP_CLASSES]:
            if counts[index]:
                lines.append(f"    {vocabulary[index]:<30} {counts[index]:>7} clips")
        failures = meta.get("label_failures", {}).get(name, {})
        for key, reason in list(failures.items())[:FAILURES_SHOWN]:
            lines.append(f"    failed {key}: {reason}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    try:
        meta = store.load_dataset_json(args.shards)
        vocabulary = meta.get("label_vocabulary") or load_vocabulary()
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        labellers = build_labellers(args, vocabulary)
        tars = store.shard_paths(args.shards)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    total = count_samples(tars)
    for labeller in labellers:
        settings = {k: v for k, v in vars(args).items() if k not in ("shards", "no_progress", "force")}
        with tqdm(total=total, desc=labeller.name, unit="clip", disable=args.no_progress) as bar:
            report = store.label_shards(args.shards, labeller, args.batch_size, settings, args.force,
                                        progress=bar.update)
        print(f"{labeller.name}: labelled {len(report.shards_done)} shards ({report.samples} clips), "
              f"skipped {len(report.shards_skipped)} already done, {len(report.failures)} failures")
    print(summary(args.shards, [lab.name for lab in labellers], vocabulary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
