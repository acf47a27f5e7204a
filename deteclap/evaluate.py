"""Evaluation as the paper reports it: audio<->visual retrieval and fine-tuned classification.

    python -m deteclap.evaluate --config configs/or.json --checkpoint runs/or [--json OUT]

Retrieval follows CAV-MAE's src/retrieval.py: embeddings from the joint layer with the modality
norms (`model.embed_audio` / `model.embed_video`: mean-pooled, no masking, evaluation frame 5),
L2-normalised, cosine similarity (one matrix product instead of its Python double loop), and for
each query the rank of its own pair; R@k for k in `eval.recall_at` (1/5/10), median rank (CAV-MAE's
`np.median(ranks) + 1`), on `eval.per_class` clips per class (CAV-MAE: 5; clips with no class left
out). sumR = those recalls of both directions added, as a percentage sum. a2v: audio queries retrieve
visual items; v2a: the reverse. Evaluation reads no label scores: the eval shards need none.
With a fine-tuning config (`finetune.task`) it reports accuracy (single-label, VGGSound) or mAP
(multi-label, AudioSet), on frame `data.eval_frame`, or with `eval.average_frames` as CAV-MAE reports
it: softmax / sigmoid outputs averaged over the frame instants 0..num_frames-1 (one pass over the
data per frame).
Fine-tuned with `finetune.average_from_step`, pass RUN/model_wa.pt for CAV-MAE's weight average.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deteclap.config import Config, add_config_args, load_config
from deteclap.device import pick_device
# the metrics are pure functions of deteclap.metrics; those names stay importable from here
from deteclap.metrics import (  # noqa: F401
    accuracy, average_precision, class_retrieval_map, cosine_similarity, hubness, mean_average_precision,
    ranks_of_pairs, recall_metrics, retrieval_metrics)
from deteclap.model.checkpoint import resolve_checkpoint


# ----------------------------------------------------------------------------------------------
# the retrieval subset
def per_class_subset(classes: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` clips of each class (in loader order); all when 0.

    classes [N, C] multi-hot; a clip counts for its first class, and a clip with no class (an
    all-zero row) is left out of the subset.
    """
    if per_class <= 0:
        return np.arange(len(classes))
    if classes.shape[1] == 0:
        raise ValueError("eval.per_class needs class labels, and these shards have none (sharded from a plain "
                         "folder?): set eval.per_class=0 to evaluate on every clip")
    first, has_class = classes.argmax(1), classes.any(1)
    chosen, counts = [], {}
    for index, cls in enumerate(first):
        if has_class[index] and counts.get(cls, 0) < per_class:
            counts[cls] = counts.get(cls, 0) + 1
            chosen.append(index)
    return np.asarray(chosen, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# running a checkpoint
@torch.no_grad()
def collect(cfg: Config, model: torch.nn.Module, device: torch.device, finetune: bool) -> dict[str, Any]:
    """Run the evaluation loader once; return embeddings (or logits), classes and keys.

    The loader runs on a copy of the config with labels.variant "cavmae": evaluation uses no label
    scores, so the eval shards need no `KEY.<labeller>.f16` members, and a clip whose labelling failed
    (NaN scores) is evaluated like any other. Raises RuntimeError when no clip could be read.
    """
    from deteclap.data import build

    cfg = copy.deepcopy(cfg)
    cfg.labels.variant = "cavmae"
    loader = build(cfg, train=False)
    audio, visual, logits, classes, keys = [], [], [], [], []
    model.eval()
    for batch in loader:
        fbank = batch["fbank"].to(device).float()
        frames = batch["frames"].to(device).float()
        if finetune:
            logits.append(model(fbank, frames, cfg.finetune.mode).float().cpu())
        else:
            audio.append(model.embed_audio(fbank).float().cpu())
            visual.append(model.embed_video(frames).float().cpu())
        classes.append(batch["classes"].float().cpu())
        keys.extend(batch["keys"])
    skipped = dict(getattr(loader, "skipped", {}) or {})
    if not keys:
        raise RuntimeError(f"no clip of {cfg.data.eval_shards} (split {cfg.data.eval_split!r}) could be read "
                           f"(skipped: {skipped}); check them with deteclap.shard --verify")
    out: dict[str, Any] = {"classes": torch.cat(classes).numpy(), "keys": keys, "skipped": skipped}
    if finetune:
        out["logits"] = torch.cat(logits).numpy()
    else:
        out["audio"], out["visual"] = torch.cat(audio), torch.cat(visual)
    return out


def class_probabilities(cfg: Config, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """Fine-tuned model -> {"probs" [N, K] (softmax single-label, sigmoid multi-label), "classes",
    "keys", "skipped", "frames"}: on data.eval_frame, or the mean over frames 0..num_frames-1 with
    eval.average_frames (CAV-MAE's multi-frame evaluation)."""
    frames = list(range(cfg.data.num_frames)) if cfg.eval.average_frames else [cfg.data.eval_frame]
    total, first = None, None
    for frame in frames:
        frame_cfg = copy.deepcopy(cfg)
        frame_cfg.data.eval_frame = frame
        data = collect(frame_cfg, model, device, finetune=True)
        logits = torch.from_numpy(data["logits"])
        probs = logits.softmax(dim=-1) if cfg.finetune.task == "single_label" else logits.sigmoid()
        if first is None:
            first, total = data, probs.double()
            continue
        if data["keys"] != first["keys"]:     # a sample readable on some frames only (data.on_error=skip)
            differ = sorted(set(data["keys"]) ^ set(first["keys"]))
            raise RuntimeError(f"frame {frame} gave other clips than frame {frames[0]}: {differ[:5]} (skipped "
                               f"{data['skipped']} vs {first['skipped']}); check them with deteclap.shard --verify")
        total += probs.double()
    return {"probs": (total / len(frames)).numpy(), "classes": first["classes"], "keys": first["keys"],
            "skipped": first["skipped"], "frames": frames}


def evaluate(cfg: Config, checkpoint: str | Path) -> dict[str, Any]:
    """Metrics of a checkpoint on `data.eval_shards` (retrieval, or classification when fine-tuning)."""
    from deteclap.model import build_finetune_model, build_model, load_checkpoint
    from deteclap.model.checkpoint import read_state_dict
    from deteclap.format import load_dataset_json

    info = load_dataset_json(cfg.data.eval_shards)
    path = resolve_checkpoint(checkpoint)
    device = pick_device(cfg.run.device)
    finetune = bool(cfg.finetune.task)
    state = read_state_dict(path)
    if finetune:
        model = build_finetune_model(cfg.model, len(info["classes"]))
    else:
        heads = state.get("label_head_a.weight")
        model = build_model(cfg.model, 0 if heads is None else int(heads.shape[0]))
    report = load_checkpoint(model, state)
    model.to(device)
    data = class_probabilities(cfg, model, device) if finetune else collect(cfg, model, device, finetune)
    result: dict[str, Any] = {"checkpoint": str(path), "eval_shards": cfg.data.eval_shards,
                              "load_report": {"missing": list(report.missing), "unexpected": list(report.unexpected)},
                              "skipped_samples": data["skipped"]}
    if finetune:
        probs = data["probs"]
        if cfg.finetune.task == "single_label":
            result["accuracy"] = accuracy(probs, data["classes"])
        else:
            result["mAP"] = mean_average_precision(probs, data["classes"])
        result["num_clips"], result["frames"] = int(len(probs)), data["frames"]
        return result
    subset = torch.from_numpy(per_class_subset(data["classes"], cfg.eval.per_class))
    audio, visual = data["audio"][subset], data["visual"][subset]
    result.update(retrieval_metrics(audio, visual, cfg.eval.recall_at))
    sim = cosine_similarity(audio, visual)
    result["hubness"] = {direction: hubness(s) for direction, s in (("a2v", sim), ("v2a", sim.T))}
    classes = data["classes"][subset.numpy()]
    if classes.shape[1] and classes.any(1).all():
        result["class_map"] = class_retrieval_map(sim, classes.argmax(1))
    return result


def format_table(rows: dict[str, dict[str, Any]]) -> str:
    """Rows name -> retrieval result, as the paper's Table I (R@k a->v and v->a, then sumR).

    The columns are the first row's recalls (`r<k>` keys of its a2v: eval.recall_at).
    """
    keys = [key for key in next(iter(rows.values()))["a2v"] if key[0] == "r" and key[1:].isdigit()]
    widths = [8] + [6] * (len(keys) - 1)
    recalls = " ".join(f"{'R@' + key[1:]:>{width}}" for key, width in zip(keys, widths))
    head = f"{'model':<14} | {'a->v':<4}{recalls[4:]} | {'v->a':<4}{recalls[4:]} | {'sumR':>6}"
    lines = [head, "-" * len(head)]
    for name, r in rows.items():
        a, v = (" ".join(f"{r[d][key]:{width}.1f}" for key, width in zip(keys, widths)) for d in ("a2v", "v2a"))
        lines.append(f"{name:<14} | {a} | {v} | {r['sumR']:6.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deteclap.evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument("--checkpoint", required=True,
                        help="model.pt, a checkpoint folder, or a run folder (uses checkpoints/latest)")
    parser.add_argument("--json", help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    result = evaluate(cfg, args.checkpoint)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if "a2v" in result:
        print(format_table({Path(cfg.source.split(" ")[0]).stem: result}))
    else:
        print(json.dumps({k: v for k, v in result.items() if k in ("accuracy", "mAP", "num_clips")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
