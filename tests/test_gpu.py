"""The GPU paths the CPU machines cannot run: DALI on "mixed" (NVDEC decoding the cut-out IVF frame)
and its fallback to DALI's CPU decoder, the lifetime of the batches a GPU pipeline yields, the
fbank / noise / frame normalisation on CUDA (golden values, no host sync). Skipped without CUDA
(every CPU CI run); run on a GPU machine with `python -m pytest -q tests/test_gpu.py`
(scripts/gpu_check.sh stage1 does). The checks are functions of the device so that their logic also
runs on the CPU (`check_*(..., "cpu")`); the decision and fallback logic is tested on the CPU with
the GPU branch simulated in tests/test_dali.py."""

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


def check_dali_matches_reference(shards: Path, device: str, video_decode: str = "auto") -> None:
    """DALI (`device` gpu: NVDEC decodes the frame cut out of the mp4 as an IVF stream, the fbank runs
    on the GPU) against the reference loader: same keys at the same positions, frames within
    tolerance, fbank <= 1e-3, at three frame instants; then one training epoch."""
    from dali_pipes.iterator import build_dali_loader
    from deteclap.data.loader import build_loader
    from tests.test_dali import assert_frames_close

    cfg = make_cfg(shards, variant="or")
    cfg.data.video_decode = video_decode
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


def nvdec_setting() -> str:
    """data.video_decode for the GPU tests: gpu where NVDEC decodes the shards' VP9 (a failure is then
    an error), else auto (the CPU decoder; the probe's reason is printed)."""
    from dali_pipes.nvdec import probe_nvdec

    reason = probe_nvdec(torch.cuda.current_device())
    if reason is not None:
        print(f"no NVDEC here ({reason}): the DALI GPU tests decode video on the CPU")
    return "gpu" if reason is None else "auto"


@needs_dali
def test_dali_gpu_pipeline_matches_the_reference(shard_dir: Path, tmp_path: Path) -> None:
    check_dali_matches_reference(rewrite_shards(shard_dir, tmp_path / "s", keep, add_scores=True), "gpu",
                                 nvdec_setting())


def test_fbank_queues_without_a_host_sync() -> None:
    """fbank_batch, SpecAugment and the noise on CUDA with the lengths on the CPU, as both loaders give
    them: CUDA's sync debug mode raises on any operation that waits for the GPU."""
    batch = torch.randn(4, 16000 * 10, device="cuda") * 0.1
    lengths = torch.tensor([16000 * 10, 16000 * 7, 16000 * 3, 401])
    batch[1:, :] *= (torch.arange(batch.shape[1], device="cuda") < lengths[1:, None].cuda())
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fbank = audio.fbank_batch(batch, lengths, AUDIO_LENGTH)
        fbank = audio.add_noise_and_roll(audio.spec_augment(fbank, 48, 192))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert fbank.shape == (4, AUDIO_LENGTH, 128)
    cpu = audio.fbank_batch(batch.cpu(), lengths, AUDIO_LENGTH)
    assert (audio.fbank_batch(batch, lengths, AUDIO_LENGTH).cpu() - cpu).abs().max() <= FBANK_TOL


@needs_dali
def test_batches_outlive_the_next_ones(shard_dir: Path) -> None:
    """A GPU pipeline's outputs live in buffers DALI may reuse: a batch taken with next() must keep its
    values while the next two are pulled (every tensor cloned right away, compared afterwards)."""
    from dali_pipes.iterator import build_dali_loader

    cfg = make_cfg(shard_dir, batch=2)
    cfg.data.video_decode = nvdec_setting()
    batches = iter(build_dali_loader(cfg, train=True, device="gpu"))
    first = next(batches)
    assert first["frames"].is_cuda and first["fbank"].is_cuda
    copies = {name: first[name].clone() for name in ("frames", "fbank", "classes")}
    next(batches), next(batches)
    torch.cuda.synchronize()
    for name, copy in copies.items():
        assert torch.equal(first[name], copy), name


@needs_dali
def test_cpu_decoder_in_a_gpu_pipeline_matches_the_reference(shard_dir: Path, tmp_path: Path,
                                                              monkeypatch) -> None:
    """data.video_decode=cpu, and auto where NVDEC is reported missing: DALI's CPU decoder, frames moved
    to the GPU, the rest there; the reference loader's keys, frames and fbank; the fallback recorded."""
    from dali_pipes import iterator

    shards = rewrite_shards(shard_dir, tmp_path / "s", keep, add_scores=True)
    check_dali_matches_reference(shards, "gpu", "cpu")
    monkeypatch.setattr(iterator, "_NVDEC_FALLBACK", {})
    monkeypatch.setattr(iterator, "probe_nvdec", lambda device: "no NVDEC (simulated on a GPU)")
    with pytest.warns(RuntimeWarning, match="no NVDEC .simulated on a GPU"):
        loader = iterator.build_dali_loader(make_cfg(shards), train=False, device="gpu")
    assert loader.video_decoder == "cpu" and loader.video_fallback == "no NVDEC (simulated on a GPU)"
    check_dali_matches_reference(shards, "gpu")
