"""The GPU paths the CPU machines cannot run: DALI on "mixed" (NVDEC decoding the cut-out IVF frame),
the fbank / noise / frame normalisation on CUDA. Skipped without CUDA (every CPU CI run); run on a
GPU machine with `python -m pytest -q tests/test_gpu.py` (scripts/gpu_check.sh does). The checks
are functions of the device so that their logic also runs on the CPU (`check_*(..., "cpu")`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deteclap import audio
from tests.test_loader import keep, make_cfg, rewrite_shards
from tests.conftest import needs_dali

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

FBANK_TOL = 1e-3
AUDIO_LENGTH = 1024
GOLDEN = Path(__file__).parent / "data" / "fbank_golden.npz"


def check_fbank(device: str) -> None:
    """fbank_batch on `device` against the committed torchaudio golden file (after normalisation)
    and against the CPU path (banded and chunked there, dense and batched on a GPU)."""
    from deteclap.data.decode import decode_audio

    golden = np.load(GOLDEN)
    waves = [torch.from_numpy(decode_audio(golden[f"flac_{i}"].tobytes())[0]) for i in range(len(golden["durations"]))]
    lengths = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, wave in enumerate(waves):
        batch[i, : len(wave)] = wave
    ours = audio.fbank_batch(batch.to(device), lengths.to(device), AUDIO_LENGTH).cpu()
    for i in range(len(waves)):
        rows = torch.from_numpy(golden[f"rows_{i}"])
        assert (ours[i, rows] - torch.from_numpy(golden[f"fbank_{i}"])).abs().max() <= FBANK_TOL, i
    assert (ours - audio.fbank_batch(batch, lengths, AUDIO_LENGTH)).abs().max() <= FBANK_TOL


def check_noise_and_frames(device: str) -> None:
    from deteclap.data.common import normalize_frames

    noisy = audio.add_noise_and_roll(torch.zeros(2, AUDIO_LENGTH, 128, device=device))
    assert noisy.device.type == device and float(noisy.min()) >= 0 and float(noisy.max()) < 1 / audio.NOISE_SCALE
    frames = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    assert torch.allclose(normalize_frames(frames.to(device)).cpu(), normalize_frames(frames), atol=1e-6)


def check_dali_matches_reference(shards: Path, device: str) -> None:
    """DALI (`device` gpu: NVDEC decodes the frame cut out of the mp4 as an IVF stream, the fbank runs
    on the GPU) against the reference loader: same keys at the same positions, frames within
    tolerance, fbank <= 1e-3, at three frame instants; then one training epoch."""
    from dali_pipes.iterator import build_dali_loader
    from deteclap.data.loader import build_loader
    from tests.test_dali import assert_frames_close

    cfg = make_cfg(shards, variant="or")
    for frame in (0, 5, 9):
        cfg.data.eval_frame = frame
        ref = list(build_loader(cfg, train=False))
        dali = list(build_dali_loader(cfg, train=False, device=device))
        assert [b["keys"] for b in dali] == [b["keys"] for b in ref]
        for a, b in zip(ref, dali):
            assert_frames_close(a["frames"], b["frames"], frame)     # tolerances of tests/test_dali.py
            assert (a["fbank"] - b["fbank"].cpu()).abs().max() <= FBANK_TOL
    train = list(build_dali_loader(cfg, train=True, device=device))
    assert train and all(b["frames"].shape[1:] == (3, 224, 224) for b in train)


def test_fbank_on_the_gpu() -> None:
    check_fbank("cuda")


def test_noise_and_frames_stay_on_the_gpu() -> None:
    check_noise_and_frames("cuda")


@needs_dali
def test_dali_gpu_pipeline_matches_the_reference(shard_dir: Path, tmp_path: Path) -> None:
    check_dali_matches_reference(rewrite_shards(shard_dir, tmp_path / "s", keep, add_scores=True), "gpu")
