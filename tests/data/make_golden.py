"""Make tests/data/fbank_golden.npz: torchaudio's Kaldi fbank of a few short FLAC clips.

The clips are synthesised here (tones, a chirp, noise bursts, a DC offset; seeded; then a loud
hum alone), written as
16 kHz 16-bit FLAC with soundfile, decoded again and passed through CAV-MAE's exact call
`torchaudio.compliance.kaldi.fbank(wav - wav.mean(), htk_compat=True, sample_frequency=16000,
use_energy=False, window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)`, padded /
cut to 1024 frames and normalised. To keep the file small the npz stores the FLAC bytes and every
FRAME_STRIDE-th frame of the reference (plus the rows around each clip's last frame).

Run (needs torchaudio): python tests/data/make_golden.py [--out tests/data/fbank_golden.npz]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
TARGET_LENGTH = 1024
FRAME_STRIDE = 16
DURATIONS_S = (0.5, 3.2, 10.0, 10.9)    # shorter and longer than CAV-MAE's 10 s / 1024 frames
HUM_S = 10.0                            # then a loud mains hum alone (`hum_wave`)
SEED = 7


def synth_wave(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A mixture of tones, a chirp and noise bursts with a DC offset, float32 in [-1, 1]."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    wave = 0.05 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
    wave += 0.02 * np.sin(2 * np.pi * (200 + 600 * t) * t)
    bursts = (np.sin(2 * np.pi * 1.5 * t) > 0.95).astype(np.float64)
    wave += 0.01 * bursts * rng.standard_normal(t.size)
    wave += 0.03                                          # DC offset: mean removal must matter
    return np.clip(wave, -1, 1).astype(np.float32)


def hum_wave(seconds: float) -> np.ndarray:
    """A loud 50 Hz hum and nothing else: its high bins hold only rounding, where an fbank that
    rounds in another order than torchaudio's moves them (by over 1e-3 after normalisation)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.7 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)


def reference_rows(frames_total: int) -> np.ndarray:
    """Frame indices stored: a stride over [0, 1024) plus the neighbours of the last real frame."""
    last = min(frames_total, TARGET_LENGTH) - 1
    rows = set(range(0, TARGET_LENGTH, FRAME_STRIDE)) | {max(last - 1, 0), last, min(last + 1, TARGET_LENGTH - 1)}
    return np.array(sorted(rows), dtype=np.int64)


def main(argv: list[str] | None = None) -> None:
    import soundfile
    import torch
    import torchaudio

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(Path(__file__).with_name("fbank_golden.npz")))
    args = parser.parse_args(argv)
    rng = np.random.default_rng(SEED)
    arrays: dict[str, np.ndarray] = {"durations": np.array(DURATIONS_S + (HUM_S,))}
    clips = [synth_wave(seconds, rng) for seconds in DURATIONS_S] + [hum_wave(HUM_S)]
    for i, clip in enumerate(clips):
        buffer = io.BytesIO()
        soundfile.write(buffer, clip, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
        flac = buffer.getvalue()
        wave, _ = soundfile.read(io.BytesIO(flac), dtype="float32")
        wave = torch.from_numpy(wave)[None]
        fbank = torchaudio.compliance.kaldi.fbank(
            wave - wave.mean(), htk_compat=True, sample_frequency=SAMPLE_RATE, use_energy=False,
            window_type="hanning", num_mel_bins=128, dither=0.0, frame_shift=10)
        frames_total = fbank.shape[0]
        fbank = torch.nn.functional.pad(fbank, (0, 0, 0, max(TARGET_LENGTH - frames_total, 0)))[:TARGET_LENGTH]
        fbank = (fbank - (-5.081)) / 4.4849
        rows = reference_rows(frames_total)
        arrays[f"flac_{i}"] = np.frombuffer(flac, dtype=np.uint8)
        arrays[f"frames_{i}"] = np.array(frames_total)
        arrays[f"rows_{i}"] = rows
        arrays[f"fbank_{i}"] = fbank.numpy()[rows]
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
