"""deteclap.audio: parity of the batched Kaldi fbank with torchaudio, a committed golden file and
kaldi-native-fbank; padding with per-sample lengths; SpecAugment and pretraining noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deteclap import audio
from deteclap.data.decode import decode_audio

GOLDEN = Path(__file__).parent / "data" / "fbank_golden.npz"
TOLERANCE = 1e-3          # max abs difference after normalisation (the contract)
TARGET = 1024
RATE = 16000


def _waves(lengths: list[int], seed: int = 0) -> list[torch.Tensor]:
    """Tones plus noise with a DC offset, one wave per length."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        t = torch.arange(n) / RATE
        freq = 200 + 1800 * torch.rand(1, generator=gen)
        out.append(0.3 * torch.sin(2 * torch.pi * freq * t) + 0.05 * torch.randn(n, generator=gen) + 0.04)
    return out


def _pad(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([w.numel() for w in waves])
    batch = torch.zeros(len(waves), int(lengths.max()))
    for i, w in enumerate(waves):
        batch[i, : w.numel()] = w
    return batch, lengths


def _torchaudio_contract(wave: torch.Tensor, bins: int = 128) -> torch.Tensor:
    """CAV-MAE's exact per-clip call (src/dataloader.py), unpadded and unnormalised."""
    kaldi = pytest.importorskip("torchaudio.compliance.kaldi")
    wave = wave[None]
    return kaldi.fbank(wave - wave.mean(), htk_compat=True, sample_frequency=RATE, use_energy=False,
                       window_type="hanning", num_mel_bins=bins, dither=0.0, frame_shift=10)


def _cavmae_pad_norm(fbank: torch.Tensor) -> torch.Tensor:
    frames = fbank.shape[0]
    if frames < TARGET:
        fbank = torch.nn.ZeroPad2d((0, 0, 0, TARGET - frames))(fbank)
    return audio.normalize_fbank(fbank[:TARGET])


def test_kaldi_fbank_matches_torchaudio() -> None:
    waves = torch.stack(_waves([3 * RATE] * 3))
    ours = audio.kaldi_fbank(waves, RATE)
    assert ours.shape == (3, audio.num_frames(3 * RATE), 128)
    for i in range(3):
        ref = _torchaudio_contract(waves[i])
        diff = (audio.normalize_fbank(ours[i]) - audio.normalize_fbank(ref)).abs().max()
        assert diff <= TOLERANCE, f"sample {i}: max abs difference {diff}"
    # torchaudio's 128-bin bank at 16 kHz has an empty bin 3: its output is log(eps) everywhere
    assert torch.allclose(ours[:, :, 3], torch.tensor(np.log(audio.EPSILON), dtype=torch.float32))


def test_fbank_batch_matches_torchaudio_per_sample() -> None:
    """Variable lengths (shorter and longer than 10 s) in one padded batch = per-clip CAV-MAE calls."""
    lengths = [RATE // 2 + 37, 4 * RATE, 10 * RATE, 11 * RATE + 5]
    waves = _waves(lengths, seed=1)
    batch, lens = _pad(waves)
    ours = audio.fbank_batch(batch, lens, TARGET)
    assert ours.shape == (4, TARGET, 128)
    for i, wave in enumerate(waves):
        ref = _cavmae_pad_norm(_torchaudio_contract(wave))
        diff = (ours[i] - ref).abs().max()
        assert diff <= TOLERANCE, f"length {lengths[i]}: max abs difference {diff}"


def test_fbank_batch_equals_unpadded_call_without_torchaudio() -> None:
    waves = _waves([RATE, 2 * RATE + 123], seed=2)
    batch, lens = _pad(waves)
    ours = audio.fbank_batch(batch, lens, 300, normalize=False)
    for i, wave in enumerate(waves):
        alone = audio.pad_or_cut(audio.kaldi_fbank(wave[None]), 300)[0]
        assert (ours[i] - alone).abs().max() <= TOLERANCE
        frames = audio.num_frames(wave.numel())
        assert frames < 300 and bool((ours[i, frames:] == 0).all())   # zero BEFORE normalisation
        assert not bool((ours[i, frames - 1] == 0).all())


def test_fbank_batch_rejects_too_short_wave() -> None:
    batch, lens = _pad(_waves([RATE, 399]))
    with pytest.raises(ValueError, match="lengths"):
        audio.fbank_batch(batch, lens, TARGET)


def test_golden_file() -> None:
    """Committed torchaudio output (tests/data/make_golden.py) for decoded FLAC clips."""
    golden = np.load(GOLDEN)
    count = len(golden["durations"])
    waves = []
    for i in range(count):
        wave, rate = decode_audio(golden[f"flac_{i}"].tobytes())
        assert rate == RATE
        waves.append(torch.from_numpy(wave))
    batch, lens = _pad(waves)
    ours = audio.fbank_batch(batch, lens, TARGET)
    frame_counts = [int(golden[f"frames_{i}"]) for i in range(count)]
    assert min(frame_counts) < TARGET < max(frame_counts)
    for i in range(count):
        rows = torch.from_numpy(golden[f"rows_{i}"])
        diff = (ours[i, rows] - torch.from_numpy(golden[f"fbank_{i}"])).abs().max()
        assert diff <= TOLERANCE, f"golden clip {i}: max abs difference {diff}"
        assert audio.num_frames(int(lens[i])) == frame_counts[i]


def test_batched_device_path_gives_the_golden_values_on_the_cpu() -> None:
    """The path every device but the CPU takes (masked per-row means, frame counts as a tensor, the
    whole batch at once, the dense mel product), run on the CPU: the golden file within the contract's
    tolerance, and the CPU path's values."""
    golden = np.load(GOLDEN)
    count = len(golden["durations"])
    batch, lens = _pad([torch.from_numpy(decode_audio(golden[f"flac_{i}"].tobytes())[0]) for i in range(count)])
    means, counts = audio._masked_means_and_counts(batch, lens, RATE)
    assert isinstance(counts, torch.Tensor) and counts.tolist() == [int(golden[f"frames_{i}"]) for i in range(count)]
    batched = audio.normalize_fbank(audio._fbank_rows(batch, means, counts, TARGET, RATE, audio.NUM_MEL_BINS))
    for i in range(count):
        rows = torch.from_numpy(golden[f"rows_{i}"])
        assert (batched[i, rows] - torch.from_numpy(golden[f"fbank_{i}"])).abs().max() <= TOLERANCE, i
    assert (batched - audio.fbank_batch(batch, lens, TARGET)).abs().max() <= TOLERANCE   # (float rounding)


def test_fbank_batch_reads_no_value_back_from_the_device() -> None:
    """On a device the whole contract is queued without reading a value back (no .item(), .tolist(),
    bool() of a device tensor: those wait for the GPU). A "meta" tensor holds no values, so any such
    read raises: the batch goes through on it, the lengths given on the CPU as the loaders give them."""
    batch, lens = _pad(_waves([RATE * 3, RATE * 2 + 77, 4000]))
    out = audio.fbank_batch(batch.to("meta"), lens, TARGET)
    assert out.device.type == "meta" and out.shape == (3, TARGET, audio.NUM_MEL_BINS)
    noisy = audio.add_noise_and_roll(audio.spec_augment(out, 48, 192))
    assert noisy.device.type == "meta" and noisy.shape == out.shape
    with pytest.raises(ValueError, match="must lie in"):             # lengths are still checked (on the CPU)
        audio.fbank_batch(batch.to("meta"), torch.tensor([RATE, 100, 4000]), TARGET)


@pytest.mark.parametrize("bins", [80, 64])
def test_matches_kaldi_native_fbank(bins: int) -> None:
    knf = pytest.importorskip("kaldi_native_fbank")
    waves = torch.stack(_waves([2 * RATE] * 2, seed=3))
    ours = audio.kaldi_fbank(waves, RATE, num_mel_bins=bins)
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.window_type = "hanning"
    opts.frame_opts.samp_freq = RATE
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = bins
    opts.use_energy = False
    opts.htk_compat = True
    for i in range(2):
        online = knf.OnlineFbank(opts)
        online.accept_waveform(RATE, (waves[i] - waves[i].mean()).tolist())
        online.input_finished()
        ref = torch.from_numpy(np.stack([online.get_frame(j) for j in range(online.num_frames_ready)]))
        assert ref.shape == ours[i].shape
        diff = (audio.normalize_fbank(ours[i]) - audio.normalize_fbank(ref)).abs().max()
        assert diff <= TOLERANCE, f"{bins} bins: max abs difference {diff}"


def test_spec_augment_matches_torchaudio_masking() -> None:
    functional = pytest.importorskip("torchaudio.functional")
    fbank = torch.randn(4, 200, 128) + 10.0
    torch.manual_seed(5)
    ours = audio.spec_augment(fbank, freqm=48, timem=60)
    torch.manual_seed(5)
    spec = fbank.transpose(1, 2)                    # [B, F, T] as CAV-MAE masks it
    spec = functional.mask_along_axis_iid(spec, 48, 0.0, axis=1)
    spec = functional.mask_along_axis_iid(spec, 60, 0.0, axis=2)
    assert torch.equal(ours, spec.transpose(1, 2))
    masked_bins = (ours == 0).all(dim=1).sum(dim=1)
    assert bool((masked_bins <= 48).all()) and int(masked_bins.sum()) > 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["cpu-rows", "device-path"])
def test_add_noise_and_roll(dtype: torch.dtype) -> None:
    """Each row rolled along time by its own shift, plus noise in [0, 0.1): float32 on the CPU takes
    the per-row path, any other dtype the batched path a GPU takes."""
    gen = torch.Generator().manual_seed(0)
    frames = 50
    fbank = torch.arange(frames, dtype=dtype).view(1, frames, 1).expand(3, frames, 4).contiguous()
    out = audio.add_noise_and_roll(fbank, generator=gen)
    shifts = set()
    for i in range(3):
        # the rolled input is recovered from the first column up to noise in [0, 0.1)
        shift = -int(torch.round(out[i, 0, 0]).item()) % frames
        rolled = torch.roll(fbank[i], shift, dims=0)
        noise = out[i] - rolled
        assert bool((noise >= 0).all()) and bool((noise < 1 / audio.NOISE_SCALE).all())
        assert float(noise.max()) > 0
        shifts.add(shift)
    assert len(shifts) > 1, "every sample rolled by the same shift"


def test_banded_mel_product_equals_the_dense_one() -> None:
    """The CPU's banded mel product of the squared spectrum (re^2, im^2 side by side) sums the same
    terms as |X|^2 @ mel_banks().T; so does the device path's dense product of the pairs."""
    squares = torch.rand(300, 2 * 257, generator=torch.Generator().manual_seed(0)) * 10
    dense = (squares[:, 0::2] + squares[:, 1::2]) @ audio.mel_banks().T
    banded = audio._mel_energies(squares, audio.SAMPLE_RATE, audio.NUM_MEL_BINS)
    assert torch.allclose(banded, dense, rtol=1e-5, atol=1e-6)
    paired = audio._mel_energies(squares.double(), audio.SAMPLE_RATE, audio.NUM_MEL_BINS)   # the dense path
    assert torch.allclose(paired.float(), dense, rtol=1e-5, atol=1e-6)


def test_noise_is_reproducible_from_the_torch_generator() -> None:
    """The CPU noise comes from numpy seeded by torch's generator: the same seed, the same noise (a
    resumed run re-seeds torch per step); another seed, other noise."""
    fbank = torch.zeros(2, 64, 8)
    first = audio.add_noise_and_roll(fbank, generator=torch.Generator().manual_seed(3))
    again = audio.add_noise_and_roll(fbank, generator=torch.Generator().manual_seed(3))
    other = audio.add_noise_and_roll(fbank, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)
    torch.manual_seed(5)
    default = audio.add_noise_and_roll(fbank)
    torch.manual_seed(5)
    assert torch.equal(default, audio.add_noise_and_roll(fbank))


def test_cpu_rows_on_threads_give_the_same_values() -> None:
    """fbank_batch and the noise share their rows over threads on the CPU: the same values as on one
    thread; the normalisation done row by row equals normalize_fbank of the whole batch."""
    batch, lens = _pad(_waves([RATE, 3 * RATE + 77, 2 * RATE], seed=3))
    one = audio.fbank_batch(batch, lens, 300, normalize=False)
    assert torch.equal(audio.fbank_batch(batch, lens, 300, normalize=False, threads=3), one)
    assert torch.equal(audio.fbank_batch(batch, lens, 300, threads=2), audio.normalize_fbank(one))
    noised = [audio.add_noise_and_roll(one, torch.Generator().manual_seed(1), threads=n) for n in (1, 2)]
    assert torch.equal(noised[0], noised[1]) and not torch.equal(noised[0], one)
