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
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

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
def _device_pair_banks(num_bins: int, sample_rate: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """mel_banks with every FFT bin's column twice [num_bins, 2 * 257] (see `_mel_energies`), on
    `device`, made once per process: a copy per batch would wait for the GPU."""
    return mel_banks(num_bins, sample_rate, device, dtype).repeat_interleave(2, dim=1)


@functools.lru_cache(maxsize=8)
def _mel_bands_cpu(num_bins: int, fft_size: int, sample_rate: int) -> list[tuple[int, int, int, Tensor]]:
    """The mel bank in CPU_MEL_GROUPS bands of consecutive filters: (first filter, end filter, first
    column of the squares `_mel_energies` takes, band weights [columns of the band, filters]), each band
    restricted to the FFT bins its filters cover. A mel filter covers few bins (the bank is 98.5 %
    zeros; the 8 bands hold 13 % of its weights), so the banded products sum the same non-zero terms
    (the same values up to float rounding) in a third of the dense product's time on one core."""
    banks = _mel_banks_cpu(num_bins, fft_size, sample_rate)
    step = -(-num_bins // CPU_MEL_GROUPS)
    bands = []
    for first in range(0, num_bins, step):
        rows = banks[first:first + step]
        used = rows.sum(dim=0).nonzero().flatten()
        lo, hi = (int(used.min()), int(used.max()) + 1) if len(used) else (0, 1)
        bands.append((first, first + len(rows), 2 * lo, rows[:, lo:hi].T.repeat_interleave(2, dim=0).contiguous()))
    return bands


def _mel_energies(squares: Tensor, sample_rate: int, num_bins: int, out: Tensor | None = None) -> Tensor:
    """Squared spectrum [..., 2 * 257] (re^2, im^2 of each FFT bin, side by side) -> mel energies
    [..., num_bins] (into `out` when given): one dense product on a GPU, bands on the CPU.

    The squares go into the product as they lie, each weighted by its bin's filter weight, rather
    than summed to |X|^2 first: summing the strided real and imaginary parts cost more (12 ms per
    batch of 32 clips on one core) than the square in place and the twice-as-long product together."""
    _, _, fft_size = _window_sizes(sample_rate)
    if squares.device.type != "cpu" or squares.dtype != torch.float32:
        return torch.matmul(squares, _device_pair_banks(num_bins, sample_rate, squares.device, squares.dtype).T,
                            out=out)
    out = squares.new_empty(*squares.shape[:-1], num_bins) if out is None else out
    for first, end, lo, weights in _mel_bands_cpu(num_bins, fft_size, sample_rate):
        torch.matmul(squares[..., lo:lo + weights.shape[0]], weights, out=out[..., first:end])
    return out


def _fbank_rows(waves: Tensor, means: Tensor, counts: list[int] | Tensor, out_frames: int, sample_rate: int,
                num_bins: int, threads: int = 1, normalize: bool = False) -> Tensor:
    """Fbank of each row's first counts[i] frames of (waves - means), zero frames after them, then
    (`normalize`) normalised with normalize_fbank.

    waves [B, S], means [B, 1], counts [B] (on the CPU a list, elsewhere a tensor on the waves' device:
    a list would be copied there, waiting for the queued work) -> [B, out_frames, num_bins]. Counts
    as a tensor take the whole batch at once (the path of every device but the CPU). The wave
    mean cancels in Kaldi's per-frame DC removal in exact arithmetic, not in float32: without it near-
    silent low bins moved by up to 4e-3 (log units) from torchaudio, with it by 1e-6. On the CPU each
    row goes through in chunks of CPU_CHUNK_FRAMES frames, written in place into the output: the whole
    batch's [B * T, 512] FFT buffers do not fit in the cache (one batched call was 3-4x slower than one
    call per clip, 256-frame chunks 1.3x slower: more calls), and frames past a row's count are not
    computed; each row is normalised while it is in the cache. The rows are shared by `threads`
    Python threads (torch's ops release the GIL; each runs on one intra-op thread: OpenMP's threads
    spin where loader threads hold the cores, these wait). Other devices take the batch at once.
    """
    _, shift, _ = _window_sizes(sample_rate)
    if isinstance(counts, Tensor):
        frames = min(out_frames, int(num_frames(waves.shape[1], sample_rate)))
        fbank = _wave_to_fbank(waves, means, frames, sample_rate, num_bins)
        valid = torch.arange(frames, device=waves.device) < counts[:, None]
        fbank = pad_or_cut(fbank * valid.unsqueeze(-1), out_frames)
        return normalize_fbank(fbank) if normalize else fbank
    out = waves.new_empty(waves.shape[0], out_frames, num_bins)

    def row_fbank(row: int) -> None:
        count = min(counts[row], out_frames)
        for start in range(0, count, CPU_CHUNK_FRAMES):
            end = min(start + CPU_CHUNK_FRAMES, count)
            _wave_to_fbank(waves[row, start * shift:], means[row], end - start, sample_rate, num_bins,
                           out=out[row, start:end])
        out[row, count:].zero_()
        if normalize:
            normalize_fbank(out[row], inplace=True)

    _each_row(row_fbank, len(counts), threads)
    return out


def _each_row(work: Callable[[int], None], rows: int, threads: int) -> None:
    """work(row) for every row, shared by `threads` Python threads (1: in this thread)."""
    if threads > 1 and rows > 1:
        list(_row_threads(threads, os.getpid()).map(work, range(rows)))
    else:
        for row in range(rows):
            work(row)


@functools.lru_cache(maxsize=4)
def _row_threads(threads: int, process: int) -> ThreadPoolExecutor:
    """The CPU rows' threads, started once per process (keyed by pid: a forked child has none), each
    with one intra-op thread (a thread keeps the count it starts with; this leaves the caller's alone)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="fbank", initializer=torch.set_num_threads, initargs=(1,))


@functools.lru_cache(maxsize=8)
def _hann_window(size: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Kaldi's symmetric Hann window [size] (made once per device: ~8 us a call on the CPU)."""
    return torch.hann_window(size, periodic=False, device=device, dtype=dtype)


def _wave_to_fbank(waves: Tensor, means: Tensor, frames: int, sample_rate: int, num_bins: int,
                   out: Tensor | None = None) -> Tensor:
    """The first `frames` Kaldi frames of (waves - means) -> log-mel [..., frames, num_bins] (into `out`).

    waves [..., S] (S >= the frames' span), means [..., 1]. torchaudio's op order and roundings:
    per-frame DC removal, pre-emphasis (0.97 * the sample before, the first sample against itself),
    Hann window, written straight into the zero-padded FFT buffer (the values of torchaudio's cat /
    pad, without their copies); |rfft|^2 as re^2 + im^2 (within 3e-7 relative of abs().pow(2)).
    The order matters: pre-emphasis before the DC removal (once over the wave, the DC removal folded
    in) rounds at the raw samples' scale, and a loud low hum (an int16 0.7 sin(50 Hz)) then moved
    near-silent bins by 1.3e-3 after normalisation from torchaudio, against 5e-7 in this order."""
    size, shift, fft_size = _window_sizes(sample_rate)
    span = (frames - 1) * shift + size
    raw = (waves[..., :span] - means).unfold(-1, size, shift)            # [..., frames, size], a view
    centred = raw - raw.mean(dim=-1, keepdim=True)                       # per-frame DC removal
    buffer = centred.new_empty(*centred.shape[:-1], fft_size)
    buffer[..., size:].zero_()
    body = buffer[..., :size]
    torch.mul(centred[..., :-1], -PREEMPHASIS, out=body[..., 1:]).add_(centred[..., 1:])   # y_i - 0.97 y_{i-1}
    body[..., :1] = centred[..., :1] - PREEMPHASIS * centred[..., :1]    # the first sample against itself
    body.mul_(_hann_window(size, waves.device, waves.dtype))
    squares = torch.view_as_real(torch.fft.rfft(buffer)).square_().flatten(-2)   # [..., frames, 2 * 257]
    return _mel_energies(squares, sample_rate, num_bins, out).clamp_(min=EPSILON).log_()


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


def normalize_fbank(fbank: Tensor, inplace: bool = False) -> Tensor:
    """(fbank - mean) / std with CAV-MAE's dataset statistics (-5.081, 4.4849); `inplace` overwrites fbank."""
    return (fbank.sub_(FBANK_NORM_MEAN) if inplace else fbank - FBANK_NORM_MEAN).div_(FBANK_NORM_STD)


def _masked_means_and_counts(waves: Tensor, lengths: Tensor, sample_rate: int) -> tuple[Tensor, Tensor]:
    """Each row's mean over its first lengths[i] samples [B, 1] and its frame count [B], on the waves'
    device, by one masked reduction (no per-row loop, no value read back to the host)."""
    lengths = lengths.to(device=waves.device, dtype=torch.long, non_blocking=True)
    inside = torch.arange(waves.shape[1], device=waves.device) < lengths[:, None]
    means = torch.where(inside, waves, 0).sum(dim=1, keepdim=True) / lengths[:, None]
    return means, num_frames(lengths, sample_rate)


def fbank_batch(waves: Tensor, lengths: Tensor, target_length: int, sample_rate: int = SAMPLE_RATE,
                normalize: bool = True, threads: int = 1) -> Tensor:
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
        threads: on the CPU, the Python threads that share the rows (1: the calling thread alone).
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
    return _fbank_rows(waves, means, counts, target_length, sample_rate, NUM_MEL_BINS, threads, normalize)


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


def add_noise_and_roll(fbank: Tensor, generator: torch.Generator | None = None, threads: int = 1) -> Tensor:
    """CAV-MAE's pretraining noise: fbank + rand * U(0,1) / 10, then a roll along time by a
    per-sample shift in [-T, T). Applied to the normalised fbank [B, T, F] -> [B, T, F].

    The random numbers are drawn on the fbank's device (or the generator's): on a GPU, noise drawn
    on the CPU cost ~70 ms per batch of 256 plus a 130 MB copy. The roll comes first and the noise
    is added in place: the noise is i.i.d., so rolling it would change nothing. On the CPU (`threads`
    Python threads sharing the rows, as in fbank_batch) each row's noise comes from numpy's SFC64
    seeded from the torch generator (so runs stay reproducible), drawn straight into the output, and
    the rolled row is added to it in one pass of two slices: 6 ms of random numbers per batch of 32
    on one core where torch.rand took 15, and half the time of an index and an in-place add."""
    batch, frames, bins = fbank.shape
    device = fbank.device if generator is None else generator.device
    scale = torch.rand(batch, 1, 1, generator=generator, device=device) / NOISE_SCALE
    shift = torch.randint(-frames, frames, (batch, 1), generator=generator, device=device)
    if fbank.device.type == "cpu" and fbank.dtype == torch.float32:
        seeds = torch.randint(0, 2**62, (batch,), generator=generator, device=device).tolist()
        shifts, weights = (shift.view(-1) % frames).tolist(), scale.view(-1).tolist()
        out = torch.empty(fbank.shape, dtype=fbank.dtype)    # contiguous: numpy fills its rows

        def row_noise(row: int) -> None:
            k, noise = shifts[row], out[row]
            np.random.Generator(np.random.SFC64(seeds[row])).random(dtype=np.float32, out=noise.numpy())
            torch.add(fbank[row, frames - k:], noise[:k], alpha=weights[row], out=noise[:k])
            torch.add(fbank[row, :frames - k], noise[k:], alpha=weights[row], out=noise[k:])

        _each_row(row_noise, batch, threads)
        return out
    source = (torch.arange(frames, device=device).unsqueeze(0) - shift) % frames
    rows = torch.arange(batch, device=device).unsqueeze(1)
    rolled = fbank[rows.to(fbank.device), source.to(fbank.device)]   # whole rows: no [B, T, F] index
    noise = torch.rand((batch, frames, bins), generator=generator, device=device)
    noise = noise.to(device=fbank.device, dtype=fbank.dtype)
    return rolled.addcmul_(noise, scale.to(device=fbank.device, dtype=fbank.dtype))   # one pass
