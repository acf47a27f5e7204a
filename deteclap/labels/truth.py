"""Ground-truth labeller for the synthetic set: noisy scores from truth.jsonl `heard` / `seen` lists.

It writes two labellers' members, `truth_audio` (from `heard`) and `truth_visual` (from `seen`),
with realistic per-modality noise so that the training thresholds (0.5 audio, 0.4 visual) matter:
a present object scores in `positive_range` (straddling the threshold a little), an absent one in
`negative_range` (well below it); with `miss_rate` a present object scores like an absent one and
with `false_positive_rate` (per class) an absent one like a present one; Gaussian `jitter` is
added to every score, then scores are clipped to [0, 1]. Each sample's noise comes from its own
generator seeded by (seed, modality, key), so scores do not depend on batch or shard order.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deteclap.labels.store import Sample
from deteclap.format import make_key

MODALITY_FIELDS = {"audio": "heard", "visual": "seen"}   # modality -> truth.jsonl list
LABELLER_PREFIX = "truth"


@dataclass(frozen=True)
class ModalityNoise:
    """Score model of one modality (defaults: audio, threshold 0.5)."""
    positive_range: tuple[float, float] = (0.45, 0.85)   # present objects (12.5 % below 0.5 before jitter)
    negative_range: tuple[float, float] = (0.0, 0.3)     # absent objects
    miss_rate: float = 0.1               # P(a present object scores like an absent one)
    false_positive_rate: float = 0.002   # P(an absent class scores like a present one), per class
    jitter: float = 0.02                 # std of Gaussian noise added to every score


DEFAULT_NOISE = {
    "audio": ModalityNoise(),
    "visual": ModalityNoise(positive_range=(0.35, 0.95), negative_range=(0.0, 0.25)),  # threshold 0.4
}


def parse_noise(overrides: Sequence[str], base: dict[str, ModalityNoise] | None = None) -> dict[str, ModalityNoise]:
    """Apply `modality.field=value` overrides (e.g. `audio.miss_rate=0.2`, `visual.positive_range=0.3,0.9`)."""
    noise = dict(base or DEFAULT_NOISE)
    fields = {f.name for f in dataclasses.fields(ModalityNoise)}
    for text in overrides:
        dotted, sep, value = text.partition("=")
        modality, _, name = dotted.partition(".")
        if not sep or modality not in noise or name not in fields:
            raise ValueError(f"--truth-noise {text!r}: expected MODALITY.FIELD=VALUE with MODALITY in "
                             f"{sorted(noise)} and FIELD in {sorted(fields)}")
        try:
            parsed = tuple(float(v) for v in value.split(",")) if name.endswith("_range") else float(value)
        except ValueError:
            raise ValueError(f"--truth-noise {text!r}: {value!r} is not a number") from None
        if isinstance(parsed, tuple) and len(parsed) != 2:
            raise ValueError(f"--truth-noise {text!r}: a range is LOW,HIGH")
        noise[modality] = dataclasses.replace(noise[modality], **{name: parsed})
    return noise


def load_truth(path: str | Path) -> dict[str, dict]:
    """truth.jsonl -> {shard key: row}; rows are keyed by their `id` (else the `file` stem)."""
    rows = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        ident = row.get("id") or Path(row.get("file", "")).with_suffix("").as_posix()  # the shard's id rule
        if not ident:
            raise ValueError(f"{path}:{number}: a truth row needs `id` or `file`")
        rows[make_key(ident)] = row
    return rows


def noisy_scores(present: np.ndarray, noise: ModalityNoise, rng: np.random.Generator) -> np.ndarray:
    """Bool [C] ground truth -> float32 [C] noisy scores in [0, 1]."""
    num_classes = present.shape[0]
    missed = present & (rng.random(num_classes) < noise.miss_rate)
    false_pos = ~present & (rng.random(num_classes) < noise.false_positive_rate)
    scores_high = present & ~missed | false_pos
    scores = np.where(scores_high, rng.uniform(*noise.positive_range, num_classes),
                      rng.uniform(*noise.negative_range, num_classes))
    scores = scores + rng.normal(0.0, noise.jitter, num_classes)
    return np.clip(scores, 0.0, 1.0).astype(np.float32)


class TruthLabeller:
    """One modality of the ground-truth labeller: `TruthLabeller(truth, vocab, "audio")` is `truth_audio`."""

    def __init__(self, truth: dict[str, dict], vocabulary: Sequence[str], modality: str,
                 noise: ModalityNoise | None = None, seed: int = 0):
        if modality not in MODALITY_FIELDS:
            raise ValueError(f"modality must be one of {sorted(MODALITY_FIELDS)}, got {modality!r}")
        self.name = f"{LABELLER_PREFIX}_{modality}"
        self.truth, self.modality, self.seed = truth, modality, seed
        self.noise = noise or DEFAULT_NOISE[modality]
        self.index = {name: i for i, name in enumerate(vocabulary)}
        self.num_classes = len(vocabulary)
        unknown = sorted({name for row in truth.values() for name in row.get(MODALITY_FIELDS[modality], [])
                          if name not in self.index})
        if unknown:
            raise ValueError(f"truth names not in the label vocabulary: {unknown}")

    def present(self, key: str) -> np.ndarray:
        """Bool [C]: the clip's true objects of this modality."""
        present = np.zeros(self.num_classes, bool)
        for name in self.truth[key].get(MODALITY_FIELDS[self.modality], []):
            present[self.index[name]] = True
        return present

    def __call__(self, samples: Sequence[Sample]) -> tuple[np.ndarray, list[str | None]]:
        """Score a batch -> float32 [n, C] (NaN rows for clips missing from truth.jsonl), reasons."""
        scores = np.full((len(samples), self.num_classes), np.nan, np.float32)
        reasons: list[str | None] = []
        for row, sample in enumerate(samples):
            key = sample["__key__"]
            if key not in self.truth:
                reasons.append("not in truth.jsonl")
                continue
            salt = zlib.crc32(f"{self.modality}/{key}".encode())
            scores[row] = noisy_scores(self.present(key), self.noise, np.random.default_rng([self.seed, salt]))
            reasons.append(None)
        return scores, reasons
