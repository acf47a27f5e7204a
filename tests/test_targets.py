"""deteclap.data.targets: every label variant on hand-made score cases."""

from __future__ import annotations

import pytest
import torch

from deteclap.config import VARIANTS, LabelsConfig
from deteclap.data.targets import build_targets, required_labellers

# Two samples, four classes. CLAP cosines (threshold 0.5) and YOLO probabilities (threshold 0.4),
# with values exactly at the thresholds and a negative cosine.
CLAP = [[0.7, 0.5, 0.2, -0.3],
        [0.1, 0.49, 1.2, 0.6]]
YOLO = [[0.9, 0.1, 0.4, 0.0],
        [0.39, 0.8, 0.0, 0.6]]
Y_A = [[1, 1, 0, 0], [0, 0, 1, 1]]
Y_V = [[1, 0, 1, 0], [0, 1, 0, 1]]
SOFT_A = [[0.7, 0.5, 0.2, 0.0], [0.1, 0.49, 1.0, 0.6]]
CASES = {
    "audio": (Y_A, Y_A),
    "visual": (Y_V, Y_V),
    "separate": (Y_A, Y_V),
    "and": ([[1, 0, 0, 0], [0, 0, 0, 1]],) * 2,
    "or": ([[1, 1, 1, 0], [0, 1, 1, 1]],) * 2,
    "soft_audio": (SOFT_A, SOFT_A),
    "soft_visual": (YOLO, YOLO),
    "soft_max": ([[0.9, 0.5, 0.4, 0.0], [0.39, 0.8, 1.0, 0.6]],) * 2,
}


def _scores(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {"clap": torch.tensor(CLAP, dtype=dtype), "yolo": torch.tensor(YOLO, dtype=dtype)}


@pytest.mark.parametrize("variant", sorted(CASES))
def test_variant_targets(variant: str) -> None:
    out = build_targets(_scores(), LabelsConfig(variant=variant))
    want_a, want_v = CASES[variant]
    assert set(out) == {"a2l", "v2l"}
    for key, want in (("a2l", want_a), ("v2l", want_v)):
        assert out[key].dtype == torch.float32
        torch.testing.assert_close(out[key], torch.tensor(want, dtype=torch.float32), rtol=0, atol=1e-6)


def test_every_config_variant_is_covered() -> None:
    assert set(CASES) | {"cavmae"} == set(VARIANTS)


def test_cavmae_has_no_targets_and_needs_no_scores() -> None:
    cfg = LabelsConfig(variant="cavmae")
    assert required_labellers(cfg) == []
    assert build_targets({}, cfg) == {}


def test_required_labellers() -> None:
    assert required_labellers(LabelsConfig(variant="audio")) == ["clap"]
    assert required_labellers(LabelsConfig(variant="soft_visual")) == ["yolo"]
    assert required_labellers(LabelsConfig(variant="or")) == ["clap", "yolo"]
    same = LabelsConfig(variant="or", audio_labeller="truth", visual_labeller="truth")
    assert required_labellers(same) == ["truth"]
    with pytest.raises(ValueError, match="variant"):
        required_labellers(LabelsConfig(variant="xor"))


def test_thresholds_come_from_config() -> None:
    cfg = LabelsConfig(variant="separate", audio_threshold=0.65, visual_threshold=0.85)
    out = build_targets(_scores(), cfg)
    torch.testing.assert_close(out["a2l"], torch.tensor([[1.0, 0, 0, 0], [0, 0, 1, 0]]))
    torch.testing.assert_close(out["v2l"], torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]]))


def test_float16_scores_give_float32_targets() -> None:
    out = build_targets(_scores(torch.float16), LabelsConfig(variant="or"))
    assert out["a2l"].dtype == torch.float32
    torch.testing.assert_close(out["a2l"], torch.tensor(CASES["or"][0], dtype=torch.float32))


def test_missing_labeller_names_it_and_the_present_ones() -> None:
    with pytest.raises(KeyError, match=r"'yolo'.*\['clap'\]"):
        build_targets({"clap": torch.zeros(1, 4)}, LabelsConfig(variant="or"))
