"""Labelling throughput: clips/s per labeller (CLAP, YOLO, truth) on the CPU and on the GPU when present.

    python benchmarks/label.py [--shards DIR --truth JSONL] [--clips 8] [--seconds 10] [--devices cpu,cuda]
                               [--yolo-model yolov8x] [--batch-size 8] [--json OUT]

Times `deteclap.labels.label_shards` end to end (read tar, read the audio / decode VP9, model, tar rewrite
and index) on a private copy of the shards. The models have random weights (no download here) but
the real architectures: msclap's CLAP 2023 audio encoder (HTSAT, 7 s windows at 44.1 kHz) and
YOLOv8x with 601 classes at 640 pixels on the 10 frames of each clip, so the speed is that of a
real run. Without --shards it makes `--clips` synthetic clips of `--seconds` and shards them.
Shards already labelled are relabelled (the copy is labelled with force). A labeller that cannot run
(truth without --truth, a missing package) or labels no clip stops the run rather than leave its
row out or write 0 clips/s.
Writes benchmarks/results/label.json.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402

SYNTH_SIZE = (160, 120)
SYNTH_FPS = 10
LABELLERS = ("truth", "clap", "yolo")


def _make_shards(work: Path, clips: int, seconds: float) -> tuple[Path, Path]:
    from deteclap.shard import write_shards
    from deteclap.synth import generate

    generate(work / "clips", clips, seconds=seconds, seed=0, size=SYNTH_SIZE, fps=SYNTH_FPS)
    write_shards(work / "clips" / "truth.jsonl", work / "shards", split="train")
    return work / "shards", work / "clips" / "truth.jsonl"


def _build(name: str, vocabulary: list[str], device: str, args: argparse.Namespace, truth_path: Path | None):
    import torch

    torch.manual_seed(0)
    if name == "clap":
        from transformers import GPT2Config

        from deteclap.labels import clap

        table = clap.offline_text_embeddings(vocabulary, gpt2_config=GPT2Config(n_layer=1, n_inner=64))
        return clap.ClapLabeller(clap.build_audio_encoder(None, device), table, device)
    if name == "yolo":
        from deteclap.labels.yolo import import_ultralytics

        import_ultralytics()
        from ultralytics import YOLO
        from ultralytics.nn.tasks import DetectionModel

        from deteclap.labels import yolo

        model = YOLO(f"{args.yolo_model}.yaml")
        model.model = DetectionModel(f"{args.yolo_model}.yaml", nc=len(vocabulary), verbose=False)
        model.model.names = dict(enumerate(vocabulary))
        return yolo.YoloLabeller(model, vocabulary, device)
    from deteclap.labels import truth

    return truth.TruthLabeller(truth.load_truth(truth_path), vocabulary, "audio")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default=None, help="shard folder to label (a copy is labelled)")
    parser.add_argument("--truth", default=None,
                        help="truth.jsonl of --shards (needed there when --labellers names truth)")
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips when no --shards is given")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the synthetic clips")
    parser.add_argument("--labellers", default=",".join(LABELLERS))
    parser.add_argument("--devices", default="", help="comma list (default: cpu, plus cuda when present)")
    parser.add_argument("--yolo-model", default="yolov8x", help="ultralytics architecture (yolov8x = the paper's)")
    parser.add_argument("--batch-size", type=int, default=8, help="clips per model batch")
    parser.add_argument("--json", default=None, help="output file (default benchmarks/results/label.json)")
    args = parser.parse_args(argv)
    labellers = args.labellers.split(",")
    if unknown := set(labellers) - set(LABELLERS):
        parser.error(f"--labellers: unknown {sorted(unknown)} (choose from {','.join(LABELLERS)})")
    if "truth" in labellers and args.shards and not args.truth:
        parser.error("the truth labeller needs --truth (the truth.jsonl of --shards)")

    import os

    import torch

    from deteclap.labels import label_shards, store

    os.environ.setdefault("YOLO_OFFLINE", "1")
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    results = []
    with tempfile.TemporaryDirectory(prefix="label-bench-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("YOLO_CONFIG_DIR", str(work / "yolo-config"))
        truth_path = Path(args.truth) if args.truth else None
        source = Path(args.shards) if args.shards else None
        if source is None:
            source, truth_path = _make_shards(work, args.clips, args.seconds)
        vocabulary = store.load_dataset_json(source)["label_vocabulary"]
        for device in devices:
            for name in labellers:
                labeller = _build(name, vocabulary, device, args, truth_path)
                copy = work / f"copy-{device}-{name}"
                shutil.copytree(source, copy)
                warm = next(store.iter_samples(store.shard_paths(copy)[0]))
                labeller([warm])                                    # warm-up (kernels, allocator)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                # the copy keeps the source's labelled_shards: relabel them all
                report = label_shards(copy, labeller, batch_size=args.batch_size, force=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                if report.samples == 0:
                    raise RuntimeError(f"{labeller.name}-{device}: no clip labelled in {source}; no row written")
                row = {"name": f"{labeller.name}-{device}", "labeller": labeller.name, "device": device,
                       "clips": report.samples, "seconds": round(seconds, 3),
                       "clips_per_s": round(report.samples / seconds, 3), "batch_size": args.batch_size,
                       "failures": len(report.failures), "torch_threads": torch.get_num_threads()}
                if name == "yolo":
                    row["model"] = args.yolo_model
                print(row, flush=True)
                results.append(row)
                shutil.rmtree(copy)
    print("wrote", write_result("label", results, args.json))
    return 0


if __name__ == "__main__":
    sys.exit(main())
