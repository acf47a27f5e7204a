"""The audio contract: CAV-MAE's Kaldi log-mel fbank as batched torch ops on any device.

CAV-MAE (src/dataloader.py) computes, per clip,
`torchaudio.compliance.kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=sr,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`,
zero-pads / cuts it to 1024 frames, applies SpecAugment (fine-tuning), normalises with
(x - (-5.081)) / 4.4849 and, in pretraining, adds noise and rolls along time. This module owns
those steps for a whole batch at once (no Python loop over samples), so both loaders (DALI and the
reference PyTorch loader) share one implementation:

- `kaldi_fbank(waves)`: equal-length batch -> [B, frames, bins] (mean removal included).
- `fbank_batch(waves, lengths)`: zero-padded batch of variable-length waves -> the whole contract
  (per-sample mean removal and frame count, zero padding / cutting, normalisation).
- `pad_or_cut`, `normalize_fbank`, `spec_augment`, `add_noise_and_roll`: the single steps.

Kaldi steps reproduced (torchaudio's implementation): framing with snip_edges (25 ms window,
10 ms shift), per-frame DC removal, pre-emphasis 0.97 (first sample against itself), symmetric
Hann window, zero padding to the next power of two (512), |rfft|^2, torchaudio's Kaldi mel banks
(with 128 bins at 16 kHz bin 3 is empty and gives log(eps)), log with an eps floor.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from torch import Tensor

from deteclap.config import FBANK_NORM_MEAN, FBANK_NORM_STD

SAMPLE_RATE = 16000
NUM_MEL_BINS = 128
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
MEL_HIGH_FREQ_FACTOR = 1127.0     # Kaldi mel scale: 1127 ln(1 + f / 700)
MEL_BREAK_FREQ = 700.0
LOW_FREQ = 20.0                   # Kaldi's default low-freq; high-freq 0 means Nyquist
EPSILON = torch.finfo(torch.float32).eps
NOISE_SCALE = 10.0                # CAV-MAE: fbank + rand * U(0, 1) / 10
CPU_CHUNK_FRAMES = 1024           # fbank frames per chunk on the CPU: one clip (measured fastest of 128-4096)
CPU_MEL_GROUPS = 8                # the CPU's mel product in bands of 16 filters (measured fastest of 4-32)


def _window_sizes(sample_rate: int) -> tuple[int, int, int]:
    """(window size, shift, FFT size) in samples, as torchaudio derives them."""
    size = int(sample_rate * FRAME_LENGTH_MS / 1000)
    shift = int(sample_rate * FRAME_SHIFT_MS / 1000)
    fft_size = 1 << (size - 1).bit_length()
    return size, shift, fft_size


def num_frames(num_samples: int | Tensor, sample_rate: int = SAMPLE_RATE) -> int | Tensor:
    """Frames Kaldi's snip_edges framing gives for `num_samples` (0 when shorter than a window)."""
    size, shift, _ = _window_sizes(sample_rate)
    if isinstance(num_samples, Tensor):
        return torch.where(num_samples >= size, 1 + (num_samples - size).div(shift, rounding_mode="floor"), 0)
    return 0 if num_samples < size else 1 + (num_samples - size) // shift


@functools.lru_cache(maxsize=8)
def _mel_banks_cpu(num_bins: int, fft_size: int, sample_rate: int) -> Tensor:
    """Kaldi mel filter bank [num_bins, fft_size // 2 + 1] computed with torchaudio's float32 ops."""
    def mel(freq):
        return MEL_HIGH_FREQ_FACTOR * (1.0 + freq / MEL_BREAK_FREQ).log()

    mel_low = MEL_HIGH_FREQ_FACTOR * math.log(1.0 + LOW_FREQ / MEL_BREAK_FREQ)
    mel_high = MEL_HIGH_FREQ_FACTOR * math.log(1.0 + 0.5 * sample_rate / MEL_BREAK_FREQ)
    delta = (mel_high - mel_low) / (num_bins + 1)
    index = torch.arange(num_bins).unsqueeze(1)
    left = mel_low + index * delta
    centre = mel_low + (index + 1.0) * delta
    right = mel_low + (index + 2.0) * delta
    fft_mel = mel(sample_rate / fft_size * torch.arange(fft_size // 2)).unsqueeze(0)
    up = (fft_mel - left) / (centre - left)
    down = (right - fft_mel) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return torch.nn.functional.pad(banks, (0, 1))  # the Nyquist bin gets no weight


def mel_banks(num_bins: int = NUM_MEL_BINS, sample_rate: int = SAMPLE_RATE,
              device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> Tensor:
    """Kaldi (torchaudio) mel filter bank [num_bins, 257] at 16 kHz, on `device`."""
    _, _, fft_size = _window_sizes(sample_rate)
    return _mel_banks_cpu(num_bins, fft_size, sample_rate).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _device_mel_banks(num_bins: int, sample_rate: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """mel_banks on `device`, copied there once per process: a copy per batch would wait for the GPU."""
    return mel_banks(num_bins, sample_rate, device, dtype)


@functools.lru_cache(maxsize=8)
def _mel_bands_cpu(num_bins: int, fft_size: int, sample_rate: int) -> list[tuple[int, int, int, Tensor]]:
    """The mel bank in CPU_MEL_GROUPS bands of consecutive filters: (first filter, end filter, first
    FFT bin, band weights [bins of the band, filters]), each band restricted to the FFT bins its
    filters cover. A mel filter covers few bins (the bank is 98.5 % zeros; the 8 bands hold 13 % of
    its weights), so the banded products sum the same non-zero terms (the same values up to float
    rounding) in a third of the dense product's time (160 -> 53 us per 256 frames on one core)."""
    banks = _mel_banks_cpu(num_bins, fft_size, sample_rate)
    step = -(-num_bins // CPU_MEL_GROUPS)
    bands = []
    for first in range(0, num_bins, step):
        rows = banks[first:first + step]
        used = rows.sum(dim=0).nonzero().flatten()
        lo, hi = (int(used.min()), int(used.max()) + 1) if len(used) else (0, 1)
        bands.append((first, first + len(rows), lo, rows[:, lo:hi].T.contiguous()))
    return bands


def _mel_energies(power: Tensor, sample_rate: int, num_bins: int) -> Tensor:
    """|X|^2 [..., 257] -> mel energies [..., num_bins]: one dense product on a GPU, bands on the CPU."""
    _, _, fft_size = _window_sizes(sample_rate)
    if power.device.type != "cpu" or power.dtype != torch.float32:
        return power @ _device_mel_banks(num_bins, sample_rate, power.device, power.dtype).T
    out = power.new_empty(*power.shape[:-1], num_bins)
    for first, end, lo, weights in _mel_bands_cpu(num_bins, fft_size, sample_rate):
        torch.matmul(power[..., lo:lo + weights.shape[0]], weights, out=out[..., first:end])
    return out


def _fbank_rows(waves: Tensor, means: Tensor, counts: list[int] | Tensor, out_frames: int, sample_rate: int,
                num_bins: int) -> Tensor:
    """Fbank of each row's first counts[i] frames of (waves - means), zero frames after them.

    waves [B, S], means [B, 1], counts [B] (on the CPU a list, elsewhere a tensor on the waves' device:
    a list would be copied there, waiting for the queued work) -> [B, out_frames, num_bins]. Counts
    as a tensor take the whole batch at once (the path of every device but the CPU). The wave
    mean cancels in Kaldi's per-frame DC removal in exact arithmetic, not in float32: without it near-
    silent low bins moved by up to 4e-3 (log units) from torchaudio, with it by 1e-6. On the CPU each
    row goes through in chunks of CPU_CHUNK_FRAMES frames: the whole batch's [B * T, 512] FFT buffers do
    not fit in the cache (one batched call was 3-4x slower than one call per clip, 256-frame chunks 1.3x
    slower: more calls), and frames past a row's count are not computed. Other devices take the batch at
    once.
    """
    size, shift, _ = _window_sizes(sample_rate)
    frames = waves.unfold(1, size, shift)[:, :out_frames]                      # a view, no copy
    if isinstance(counts, Tensor):
        fbank = _frames_to_fbank(frames, means.unsqueeze(-1), sample_rate, num_bins)
        valid = torch.arange(frames.shape[1], device=waves.device) < counts[:, None]
        return pad_or_cut(fbank * valid.unsqueeze(-1), out_frames)
    out = waves.new_zeros(waves.shape[0], out_frames, num_bins)
    for row, count in enumerate(counts):
        for start in range(0, min(count, out_frames), CPU_CHUNK_FRAMES):
            chunk = slice(start, min(start + CPU_CHUNK_FRAMES, count, out_frames))
            out[row, chunk] = _frames_to_fbank(frames[row, chunk], means[row], sample_rate, num_bins)
    return out


@functools.lru_cache(maxsize=8)
def _hann_window(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Kaldi's symmetric Hann window [size] (made once per device: ~8 us a call on the CPU)."""
    return torch.hann_window(size, periodic=False, device=device, dtype=dtype)


def _frames_to_fbank(frames: Tensor, means: Tensor, sample_rate: int, num_bins: int) -> Tensor:
    """[..., T, window] raw frames minus the wave means (broadcast) -> [..., T, num_bins], torchaudio's
    op order and roundings (|X|^2 as re^2 + im^2: within 3e-7 relative of torchaudio's abs().pow(2)).

    DC removal, pre-emphasis and the window are written straight into the zero-padded FFT buffer
    (the same values as torchaudio's cat / pad, without their copies)."""
    size, _, fft_size = _window_sizes(sample_rate)
    frames = frames - means
    frames.sub_(frames.mean(dim=-1, keepdim=True))
    buffer = frames.new_empty(*frames.shape[:-1], fft_size)
    buffer[..., size:].zero_()
    emphasised = buffer[..., :size]
    torch.mul(frames, PREEMPHASIS, out=emphasised)          # 0.97 * previous sample, rounded as torchaudio
    emphasised[..., 1:] = frames[..., 1:] - emphasised[..., :-1]
    emphasised[..., :1] = frames[..., :1] - emphasised[..., :1]   # the first sample against itself
    emphasised.mul_(_hann_window(size, frames.device, frames.dtype))
    spectrum = torch.fft.rfft(buffer)
    power = spectrum.real.square() + spectrum.imag.square()   # |X|^2 without complex abs's hypot (~4x faster)
    return _mel_energies(power, sample_rate, num_bins).clamp_(min=EPSILON).log_()


def kaldi_fbank(waves: Tensor, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS) -> Tensor:
    """CAV-MAE's Kaldi fbank of an equal-length batch, mean removal included.

    Args:
        waves: float [B, S] (or [S]) waveforms in [-1, 1], any device.
    Returns:
        [B, frames, num_mel_bins] log-mel fbank before padding and normalisation, with
        frames = 1 + (S - 400) // 160 at 16 kHz.
    Raises:
        ValueError: waves shorter than one 25 ms window.
    """
    if waves.dim() == 1:
        waves = waves.unsqueeze(0)
    if waves.dim() != 2:
        raise ValueError(f"kaldi_fbank expects waves [B, samples], got shape {tuple(waves.shape)}")
    size, shift, _ = _window_sizes(sample_rate)
    if waves.shape[1] < size:
        raise ValueError(f"waves of {waves.shape[1]} samples are shorter than one window ({size})")
    frames = int(num_frames(waves.shape[1], sample_rate))
    counts = [frames] * waves.shape[0] if waves.device.type == "cpu" else torch.full(
        (waves.shape[0],), frames, device=waves.device)
    return _fbank_rows(waves, waves.mean(dim=1, keepdim=True), counts, frames, sample_rate, num_mel_bins)


def pad_or_cut(fbank: Tensor, target_length: int) -> Tensor:
    """Zero-pad at the end or cut [B, T, F] to [B, target_length, F] (CAV-MAE's ZeroPad2d / slice)."""
    frames = fbank.shape[-2]
    if frames >= target_length:
        return fbank[..., :target_length, :]
    return torch.nn.functional.pad(fbank, (0, 0, 0, target_length - frames))


def normalize_fbank(fbank: Tensor) -> Tensor:
    """(fbank - mean) / std with CAV-MAE's dataset statistics (-5.081, 4.4849)."""
    return (fbank - FBANK_NORM_MEAN).div_(FBANK_NORM_STD)


def _masked_means_and_counts(waves: Tensor, lengths: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Each row's mean over its first lengths[i] samples [B, 1] and its frame count [B], on the waves'
    device, by one masked reduction (no per-row loop, no value read back to the host)."""
    lengths = lengths.to(device=waves.device, dtype=torch.long, non_blocking=True)
    inside = torch.arange(waves.shape[1], device=waves.device) < lengths[:, None]
    means = torch.where(inside, waves, 0).sum(dim=1, keepdim=True) / lengths[:, None]
    return means, num_frames(lengths, sample_rate)


def fbank_batch(waves: Tensor, lengths: Tensor, target_length: int, sample_rate: int = SAMPLE_RATE,
                normalize: bool = True) -> Tensor:
    """The whole CAV-MAE audio contract for a zero-padded batch of variable-length waves.

    Each row equals the per-sample call on the unpadded wave: mean removal over its own samples,
    its own frame count, zero frames after it (before normalisation, as CAV-MAE pads), then
    cut / padded to `target_length` and normalised.

    No host synchronisation on a GPU: the lengths are checked from their CPU values (DALI and the
    reference loader both return them on the CPU; lengths on the GPU cost one copy back), and the
    per-row means and frame counts come from one masked reduction and one comparison on the device,
    so the host queues the whole batch without waiting for it. On the CPU each row's mean is taken
    over its own samples in a loop (10x faster there than the masked reduction over the padding).

    Args:
        waves: float [B, S] padded waveforms; lengths: int [B] valid samples per row (CPU or device).
    Returns:
        float [B, target_length, 128], on the waves' device.
    Raises:
        ValueError: a length shorter than one window or longer than S.
    """
    size, shift, _ = _window_sizes(sample_rate)
    sizes = lengths.cpu().tolist()
    if waves.shape[1] < size or min(sizes, default=size) < size or max(sizes, default=0) > waves.shape[1]:
        raise ValueError(f"wave lengths {sizes} must lie in [{size}, {waves.shape[1]}] samples")
    if waves.device.type == "cpu":
        means = waves.new_zeros(len(sizes), 1)      # each row's mean over its own samples, as CAV-MAE's call
        for row, length in enumerate(sizes):
            means[row] = waves[row, :length].mean()
        counts: list[int] | Tensor = [int(num_frames(length, sample_rate)) for length in sizes]
    else:
        means, counts = _masked_means_and_counts(waves, lengths, sample_rate)
    fbank = _fbank_rows(waves, means, counts, target_length, sample_rate, NUM_MEL_BINS)
    return normalize_fbank(fbank) if normalize else fbank


def _mask_along(fbank: Tensor, mask_param: int, axis: int, generator: torch.Generator | None) -> Tensor:
    """One mask per sample along `axis` (1 = time, 2 = freq), torchaudio's iid masking rule."""
    if mask_param < 1:
        return fbank
    batch, size = fbank.shape[0], fbank.shape[axis]
    value = torch.rand(batch, generator=generator) * mask_param
    start = torch.rand(batch, generator=generator) * (size - value)
    begin = start.long()
    end = begin + value.long()
    index = torch.arange(size)
    mask = (index.unsqueeze(0) >= begin.unsqueeze(1)) & (index.unsqueeze(0) < end.unsqueeze(1))
    shape = [batch, 1, 1]
    shape[axis] = size
    return fbank.masked_fill(mask.view(shape).to(fbank.device, non_blocking=True), 0.0)   # no wait for the GPU


def spec_augment(fbank: Tensor, freqm: int, timem: int, generator: torch.Generator | None = None) -> Tensor:
    """SpecAugment as CAV-MAE applies it (torchaudio FrequencyMasking / TimeMasking, value 0).

    CAV-MAE masks the padded, not yet normalised fbank. fbank: [B, T, F] -> [B, T, F].
    """
    fbank = _mask_along(fbank, freqm, 2, generator)
    return _mask_along(fbank, timem, 1, generator)


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) float32 on `device`. On the CPU from numpy's PCG64, seeded from the torch generator (so
    runs stay reproducible): 5.5 ms instead of torch.rand's 9-14 ms for a [32, 1024, 128] batch."""
    if device.type != "cpu":
        return torch.rand(shape, generator=generator, device=device)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).random(shape, dtype=np.float32))


def add_noise_and_roll(fbank: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """CAV-MAE's pretraining noise: fbank + rand * U(0,1) / 10, then a roll along time by a
    per-sample shift in [-T, T). Applied to the normalised fbank [B, T, F] -> [B, T, F].

    The random numbers are drawn on the fbank's device (or the generator's): on a GPU, noise drawn
    on the CPU cost ~70 ms per batch of 256 plus a 130 MB copy. The roll comes first and the noise
    is added in place: the noise is i.i.d., so rolling it would change nothing."""
    batch, frames, bins = fbank.shape
    device = fbank.device if generator is None else generator.device
    scale = torch.rand(batch, 1, 1, generator=generator, device=device) / NOISE_SCALE
    shift = torch.randint(-frames, frames, (batch, 1), generator=generator, device=device)
    source = (torch.arange(frames, device=device).unsqueeze(0) - shift) % frames
    rows = torch.arange(batch, device=device).unsqueeze(1)
    rolled = fbank[rows.to(fbank.device), source.to(fbank.device)]   # whole rows: no [B, T, F] index
    noise = _uniform((batch, frames, bins), generator, device).to(device=fbank.device, dtype=fbank.dtype)
    return rolled.addcmul_(noise, scale.to(device=fbank.device, dtype=fbank.dtype))   # one pass
