"""Audio formats of the shards (`python -m deteclap.shard --audio-format pcm|flac`): bytes and CPU per clip.

    python benchmarks/audio.py --shards DIR [--repeats 5] [--json OUT]

Takes every audio member of the shard folder DIR (either format), decodes it once to the 16-bit
samples both formats hold, and per format: encodes every clip as the shard writer does
(`deteclap.clip.encode_audio`) and reads it back as both loaders' CPU path does
(`deteclap.data.decode.decode_audio_member`: a `KEY.wav` is reinterpreted, a `KEY.flac` decoded
by soundfile), one clip after another on one core, `--repeats` times (median kept). It checks that
both formats give the same samples (they are both lossless 16-bit, so the choice changes no
number a model sees). Per format: `bytes_per_clip` (the member), `read_ms_per_clip` and
`encode_ms_per_clip` (median over repeats), and `clip_seconds` (mean clip length, for scale:
the cost grows with it). The DALI pipeline reads `KEY.wav` without any decoder either, so a GPU
rank's audio cost is `read_ms_per_clip` of FLAC or about nothing. Results:
benchmarks/results/audio.json (benchmarks.common schema; also appended to history.jsonl).

Synthetic audio is tones and noise: FLAC compresses it differently from speech or music, so
`bytes_per_clip` of FLAC is indicative only; PCM's is exact (32,000 bytes per second + 44).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402


def shard_waves(shards: str) -> list:
    """float32 [samples] of every audio member of the folder's tars (its own format decoded)."""
    from deteclap.data.decode import decode_audio_member
    from deteclap.format import iter_tar_samples, list_tars, sample_audio_ext

    waves = []
    for tar in list_tars(Path(shards)):
        for _, members in iter_tar_samples(tar):
            ext = sample_audio_ext(members)
            if ext is not None:
                waves.append(decode_audio_member(ext, members[ext])[0])
    return waves


def time_format(waves: list, audio_format: str, rate: int, repeats: int) -> tuple[dict, list]:
    """Encode + read timings and sizes of one format over all clips; (result, the waves read back)."""
    from deteclap.clip import encode_audio
    from deteclap.data.decode import decode_audio_member

    encode_runs, read_runs = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        encoded = [encode_audio(wave, rate, audio_format) for wave in waves]
        encode_runs.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoded = [decode_audio_member(ext, data)[0] for ext, data in encoded]
        read_runs.append(time.perf_counter() - start)
    n = len(waves)
    return {"name": audio_format, "clips": n, "bytes_per_clip": sum(len(d) for _, d in encoded) / n,
            "read_ms_per_clip": 1000 * statistics.median(read_runs) / n,
            "encode_ms_per_clip": 1000 * statistics.median(encode_runs) / n,
            "clip_seconds": sum(len(w) for w in waves) / n / rate, "repeats": repeats,
            "read_ms_per_clip_runs": [round(1000 * s / n, 3) for s in read_runs]}, decoded


def main(argv: list[str] | None = None) -> int:
    from deteclap.audio import SAMPLE_RATE
    from deteclap.format import AUDIO_FORMATS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="shard folder made by deteclap.shard (either format)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default=None, help="result file (default benchmarks/results/audio.json)")
    args = parser.parse_args(argv)
    if not Path(args.shards).is_dir():
        parser.error(f"--shards {args.shards}: not a folder")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    waves = shard_waves(args.shards)
    if not waves:
        parser.error(f"--shards {args.shards}: no audio members found")
    import numpy as np

    results, read_back = [], {}
    for audio_format in AUDIO_FORMATS:
        result, read_back[audio_format] = time_format(waves, audio_format, SAMPLE_RATE, args.repeats)
        print(f"{audio_format:>5}: {result['bytes_per_clip']:10,.0f} bytes/clip  "
              f"read {result['read_ms_per_clip']:7.3f} ms/clip  encode {result['encode_ms_per_clip']:7.3f} ms/clip  "
              f"({result['clips']} clips of {result['clip_seconds']:.1f} s)", flush=True)
        results.append(result)
    first, *others = read_back.values()
    if not all(np.array_equal(a, b) for other in others for a, b in zip(first, other)):
        raise SystemExit("error: the formats read back different samples")
    print(f"wrote {write_result('audio', results, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
