"""Visual labels: YOLOv8-oiv7 detections on a clip's 10 frames -> per-class max confidence.

For every clip the shard video's frames (the 10 CAV-MAE instants) are decoded and run through
ultralytics in one batch per group of clips; a class scores the highest confidence of any of its
detections over the frames, 0 when never detected (below `conf`). Model class ids map to the
label vocabulary by name, so a model trained on Open Images V7 (601 names) fills the default
vocabulary and a user vocabulary keeps only the names it shares with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deteclap.data.decode import DecodeError, decode_video_frames
from deteclap.labels.store import Sample

NAME = "yolo"
DEFAULT_CONF = 0.05        # keep detections down to this confidence (the paper's best threshold is 0.4)
DEFAULT_IOU = 0.7          # ultralytics' NMS IoU default
DEFAULT_IMGSZ = 640        # YOLOv8-oiv7's training size
VIDEO_MEMBER = "mp4"


def resolve_device(device: str = "auto") -> str:
    """"auto" -> "cuda:0" when a GPU exists, else "cpu"; anything else is returned as given."""
    if device != "auto":
        return device
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def import_ultralytics() -> Any:
    """`import ultralytics` keeping torch's CPU thread count (ultralytics lowers it to cpu_count - 1)."""
    import torch

    threads = torch.get_num_threads()
    import ultralytics

    torch.set_num_threads(threads)
    return ultralytics


def load_yolo(weights: str | Path) -> Any:
    """An ultralytics YOLO model from a local file (never downloads: the file must exist).

    Real runs: yolov8x-oiv7.pt from https://github.com/ultralytics/assets/releases (the
    ultralytics docs' Open Images V7 page lists it).
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"YOLO weights not found: {path} (download yolov8x-oiv7.pt, see --help)")
    return import_ultralytics().YOLO(str(path))


def class_map(model_names: dict[int, str], vocabulary: Sequence[str]) -> np.ndarray:
    """int64 [num_model_classes]: vocabulary index of each model class id (-1 = not in the vocabulary).

    Raises:
        ValueError: no model class is in the vocabulary.
    """
    index = {name: i for i, name in enumerate(vocabulary)}
    mapping = np.full(max(model_names) + 1, -1, np.int64)
    for class_id, name in model_names.items():
        mapping[class_id] = index.get(name, -1)
    if (mapping < 0).all():
        raise ValueError("no class of the YOLO model is in the label vocabulary "
                         f"(model names start {list(model_names.values())[:3]})")
    return mapping


def max_over_frames(class_ids: np.ndarray, confidences: np.ndarray, frame_clip: np.ndarray,
                    mapping: np.ndarray, num_clips: int, num_classes: int) -> np.ndarray:
    """Detections of a batch -> float32 [num_clips, num_classes] max confidence per clip and class.

    Args:
        class_ids, confidences: [D] model class id and confidence of each detection.
        frame_clip: [D] the clip each detection belongs to.
    """
    scores = np.zeros((num_clips, num_classes), np.float32)
    vocab_ids = mapping[class_ids.astype(np.int64)]
    keep = vocab_ids >= 0
    np.maximum.at(scores, (frame_clip[keep], vocab_ids[keep]), confidences[keep].astype(np.float32))
    return scores


class YoloLabeller:
    """Score clips with an ultralytics detection model (see the module docstring)."""

    name = NAME

    def __init__(self, model: Any, vocabulary: Sequence[str], device: str = "auto",
                 conf: float = DEFAULT_CONF, iou: float = DEFAULT_IOU, imgsz: int = DEFAULT_IMGSZ):
        self.model = model
        self.num_classes = len(vocabulary)
        self.mapping = class_map(dict(model.names), vocabulary)
        self.device = resolve_device(device)
        self.conf, self.iou, self.imgsz = conf, iou, imgsz

    def detect(self, frames_bgr: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Run the model on frames (uint8 [H, W, 3] BGR) -> per frame (class ids [D], confidences [D])."""
        if not frames_bgr:
            return []
        import torch

        threads = torch.get_num_threads()       # ultralytics' device setup sets cpu_count - 1 on the CPU
        results = self.model.predict(frames_bgr, conf=self.conf, iou=self.iou, imgsz=self.imgsz,
                                     device=self.device, batch=len(frames_bgr), verbose=False)
        torch.set_num_threads(threads)
        return [(r.boxes.cls.cpu().numpy(), r.boxes.conf.cpu().numpy()) for r in results]

    def __call__(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[str | None]]:
        """Score a batch -> float32 [n, C] (NaN rows where the video did not decode), reasons."""
        frames, owner, reasons = [], [], []
        for row, sample in enumerate(samples):
            try:
                if VIDEO_MEMBER not in sample:
                    raise DecodeError(f"no .{VIDEO_MEMBER} member")
                clip = decode_video_frames(sample[VIDEO_MEMBER])      # [10, H, W, 3] RGB
            except DecodeError as err:
                reasons.append(f"video: {err}")
                continue
            frames.extend(np.ascontiguousarray(frame[..., ::-1]) for frame in clip)  # ultralytics wants BGR
            owner.extend([row] * len(clip))
            reasons.append(None)
        detections = self.detect(frames)
        class_ids = [ids for ids, _ in detections]
        frame_clip = [np.full(len(ids), owner[i], np.int64) for i, (ids, _) in enumerate(detections)]
        scores = max_over_frames(np.concatenate(class_ids or [np.zeros(0)]),
                                 np.concatenate([c for _, c in detections] or [np.zeros(0)]),
                                 np.concatenate(frame_clip or [np.zeros(0, np.int64)]),
                                 self.mapping, len(samples), self.num_classes)
        scores[[r for r, reason in enumerate(reasons) if reason is not None]] = np.nan
        return scores, reasons
