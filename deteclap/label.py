"""`python -m deteclap.label SHARDS --labellers clap,yolo,truth`: store label scores inside the shards.

Each labeller adds a `KEY.<labeller>.f16` member to every sample (see deteclap.labels.store and
shards/FORMAT.md); a re-run skips shards already done (resumable). A re-run with settings that
change a labeller's scores (weights, truth noise, seed, ...) stops and says so; `--force` relabels.
At the end it prints, per labeller, the labels per clip at the default thresholds, the most
frequent classes and failures.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deteclap.format import folder_lock, storage
from deteclap.config import LabelsConfig
from deteclap.distribute import DISTRIBUTORS, DistributorError
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
# the options that change a labeller's scores; the others (--device, --batch-size, ...) do not
_TRUTH_SETTINGS = ("truth", "truth_noise", "seed")
SCORE_SETTINGS = {"truth_audio": _TRUTH_SETTINGS, "truth_visual": _TRUTH_SETTINGS,
                  "clap": ("clap_weights", "random_weights"),
                  "yolo": ("yolo_weights", "yolo_conf", "yolo_imgsz", "random_weights")}
RANDOM_WEIGHT_SETTINGS = ("seed",)   # with --random-weights the seed makes CLAP's / YOLO's weights
PATH_SETTINGS = ("truth", "clap_weights", "clap_text_embeddings", "yolo_weights", "vocabulary")   # files

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
    parser.add_argument("--vocabulary", default="", metavar="FILE",
                        help="label classes, one name per line (default: the folder's dataset.json "
                             "label_vocabulary, Open Images V7's 601 classes). Size it to the data: BCE over "
                             "hundreds of classes that never occur learns slowly (docs/demo.md)")
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
    parser.add_argument("--force", action="store_true",
                        help="relabel shards already done (needed to relabel with other settings)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    scale = parser.add_argument_group("distribution (docs/SCALE.md)")
    scale.add_argument("--distributor", default="local", choices=DISTRIBUTORS,
                       help="local: this process; ray: replicas of each labeller as Ray actors, one shard at a "
                            "time each (pip install 'deteclap[ray]')")
    scale.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (auto, or ray://HOST:10001); default: start a local one")
    scale.add_argument("--actors", type=int, default=0,
                       help="replicas per labeller (default: the cluster's GPUs / --num-gpus, or its CPUs "
                            "/ --num-cpus without GPUs)")
    scale.add_argument("--num-gpus", type=float, default=None,
                       help="GPUs per replica, fractional allowed (0.5: two replicas share a GPU; default 1 "
                            "when the cluster has GPUs, else 0)")
    scale.add_argument("--num-cpus", type=float, default=1, help="CPUs per replica (default 1)")
    return parser


# options that say where labelling runs, not what it computes: left out of labeller_settings
DISTRIBUTION_OPTIONS = ("distributor", "ray_address", "actors", "num_gpus", "num_cpus")


def labeller_names(args: argparse.Namespace) -> list[str]:
    """The score members --labellers asks for, in build_labellers' order, without building any."""
    names = [n.strip() for n in args.labellers.split(",") if n.strip()]
    out = []
    for group in LABELLERS:
        if group in names:
            out += [f"truth_{modality}" for modality in truth.MODALITY_FIELDS] if group == "truth" else [group]
    return out


def build_one(args: argparse.Namespace, vocabulary: list[str], name: str, clap_embeddings=None) -> store.Labeller:
    """The labeller whose score member is `name` (a Ray replica builds its own with this; CLAP's
    prompt table comes from the driver, so replicas on other machines need neither the table
    file nor the text model)."""
    group = "truth" if name.startswith("truth_") else name
    built = build_labellers(argparse.Namespace(**{**vars(args), "labellers": group}), vocabulary, clap_embeddings)
    return next(labeller for labeller in built if labeller.name == name)


def distribution(args: argparse.Namespace, vocabulary: list[str], name: str) -> store.Distribution:
    """How `name` is labelled: here, or by Ray actors sized from the options and the cluster."""
    if args.distributor == "local":
        return store.Distribution()
    from deteclap import distribute

    ray = distribute.init_ray(args.ray_address)
    resources = ray.cluster_resources()
    num_gpus = args.num_gpus if args.num_gpus is not None else (1.0 if resources.get("GPU", 0) >= 1 else 0.0)
    actors = args.actors or max(1, int(resources.get("GPU", 0) / num_gpus) if num_gpus > 0
                                else int(resources.get("CPU", 1) / max(args.num_cpus, 1e-3)))
    embeddings = _clap_embeddings(args, vocabulary, yolo.resolve_device(args.device)) if name == "clap" else None
    return store.Distribution("ray", functools.partial(build_one, args, vocabulary, name, embeddings), actors=actors,
                              num_gpus=num_gpus, num_cpus=args.num_cpus, ray_address=args.ray_address)


def build_labellers(args: argparse.Namespace, vocabulary: list[str], clap_embeddings=None) -> list[store.Labeller]:
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
        out.append(_build_clap(args, vocabulary, device, clap_embeddings))
    if "yolo" in names:
        if args.random_weights:
            model = random_yolo()
        elif not args.yolo_weights:
            raise ValueError("--labellers yolo needs --yolo-weights yolov8x-oiv7.pt (or --random-weights)")
        else:
            model = yolo.load_yolo(args.yolo_weights)
        out.append(yolo.YoloLabeller(model, vocabulary, device, conf=args.yolo_conf, imgsz=args.yolo_imgsz))
    return out


def _build_clap(args: argparse.Namespace, vocabulary: list[str], device: str, embeddings=None) -> clap.ClapLabeller:
    weights = None if args.random_weights else args.clap_weights
    if embeddings is None:
        embeddings = _clap_embeddings(args, vocabulary, device)
    encoder = clap.build_audio_encoder(weights, device)
    return clap.ClapLabeller(encoder, embeddings, device)


def _clap_embeddings(args: argparse.Namespace, vocabulary: list[str], device: str):
    """The prompt-embedding table: read from --clap-text-embeddings, or computed and saved there."""
    if not args.clap_weights and not args.random_weights:
        raise ValueError("--labellers clap needs --clap-weights CLAP_weights_2023.pth (or --random-weights)")
    weights = None if args.random_weights else args.clap_weights
    identity = clap.weights_identity(weights)
    if not args.clap_text_embeddings and storage.is_url(args.shards):
        raise ValueError(f"{args.shards} is in object storage: give --clap-text-embeddings a local .npz path")
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
    return embeddings


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
    """Whole samples in these tars (from their member headers, `deteclap.format.scan_shard`)."""
    from deteclap.format import scan_shard

    return sum(len(scan_shard(Path(tar)).entries) for tar in tars)


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


def changed_settings(meta: dict, labeller: str, settings: dict) -> list[str]:
    """How `settings` differ from those the shards' `labeller` scores were made with, on the options
    that change scores: one "option: stored -> wanted" line each; [] when no shard holds its scores."""
    if not meta.get("labelled_shards", {}).get(labeller):
        return []
    stored = meta.get("labeller_settings", {}).get(labeller, {})
    keys = SCORE_SETTINGS.get(labeller, tuple(settings))
    if labeller in ("clap", "yolo") and (stored.get("random_weights") or settings.get("random_weights")):
        keys += RANDOM_WEIGHT_SETTINGS
    return [f"--{k.replace('_', '-')}: {stored.get(k)!r} -> {settings.get(k)!r}"
            for k in keys if _setting_value(k, stored.get(k)) != _setting_value(k, settings.get(k))]


def _setting_value(key: str, value: object) -> object:
    """A setting as compared: a file option's local path made absolute (the same file named from
    another folder, or relative and absolute, is the same setting)."""
    if key in PATH_SETTINGS and isinstance(value, str) and value and not storage.is_url(value):
        return os.path.abspath(value)
    return value


def set_vocabulary(shards: str, vocabulary: list[str], force: bool) -> list[str]:
    """Make `vocabulary` the folder's dataset.json label_vocabulary; returns it. Scores stored over
    another vocabulary would no longer fit it: without `force` that is a ValueError naming them;
    with it every labeller's shards are marked unlabelled (the ones run now relabel them, the
    others must run again: training refuses them until then)."""
    with folder_lock(storage.location(shards), "labeller (vocabulary)"):
        meta = store.load_dataset_json(shards)    # as it is now, under the lock
        if vocabulary == meta.get("label_vocabulary"):
            return vocabulary
        stored = sorted(name for name, done in meta.get("labelled_shards", {}).items() if done)
        if stored and not force:
            raise ValueError(f"{shards}: {', '.join(stored)} scores are stored over dataset.json's "
                             f"{len(meta.get('label_vocabulary') or [])}-class label_vocabulary; --vocabulary with "
                             f"{len(vocabulary)} classes changes every labeller's classes. Add --force to relabel "
                             f"(labellers not run now are marked unlabelled and must run again)")
        meta["label_vocabulary"] = vocabulary
        meta["labelled_shards"] = {name: [] for name in meta.get("labelled_shards", {})}
        store.save_dataset_json(shards, meta)
    return vocabulary


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tqdm import tqdm

    try:
        meta = store.load_dataset_json(args.shards)
        vocabulary = meta.get("label_vocabulary") or load_vocabulary()
        if args.vocabulary:
            vocabulary = set_vocabulary(args.shards, load_vocabulary(args.vocabulary), args.force)
            meta = store.load_dataset_json(args.shards)
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        if args.distributor == "local":
            labellers: list[store.Labeller | str] = list(build_labellers(args, vocabulary))
        else:                   # each replica builds its own; the driver needs no model
            labellers = labeller_names(args)
        tars = store.shard_paths(args.shards)
    except (ValueError, FileNotFoundError, DistributorError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    settings = {k: _setting_value(k, v) for k, v in vars(args).items()
                if k not in ("shards", "no_progress", "force", *DISTRIBUTION_OPTIONS)}
    names = [lab if isinstance(lab, str) else lab.name for lab in labellers]
    for name in names:
        changes = changed_settings(meta, name, settings)
        if changes and not args.force:
            done = len(meta["labelled_shards"][name])
            print(f"error: {args.shards}: {done} shard(s) hold `{name}` scores made with other settings "
                  f"({'; '.join(changes)}); a rerun would keep those scores. Add --force to relabel every shard "
                  f"with the new settings, or rerun with the stored ones to finish an interrupted labelling",
                  file=sys.stderr)
            return 2
        if changes:
            # --force with new settings: forget the shards done with the old ones, so that a forced
            # run cut short resumes (without --force) by relabelling the rest, not by keeping them
            meta.setdefault("labelled_shards", {})[name] = []
            store.save_dataset_json(args.shards, meta)
    total = count_samples(tars)
    failed_shards: set[str] = set()
    for labeller, name in zip(labellers, names):
        try:
            where = distribution(args, vocabulary, name)
        except (DistributorError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        with tqdm(total=total, desc=name, unit="clip", disable=args.no_progress) as bar:
            report = store.label_shards(args.shards, labeller, args.batch_size, settings, args.force,
                                        progress=bar.update, distribution=where)
        print(f"{name}: labelled {len(report.shards_done)} shards ({report.samples} clips), "
              f"skipped {len(report.shards_skipped)} already done, {len(report.failures)} failures")
        for tar, why in report.shards_failed.items():
            print(f"error: {name}: {tar} not labelled (left as it was): {why}", file=sys.stderr)
        failed_shards |= set(report.shards_failed)
    if not failed_shards:
        print(summary(args.shards, names, vocabulary))
    if failed_shards:
        print(f"error: {len(failed_shards)} damaged shards not labelled: reshard them (python -m deteclap.shard "
              "SRC OUT rewrites a removed tar) or remove their rows from dataset.json", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
