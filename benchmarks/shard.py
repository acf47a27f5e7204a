"""Shard-writer throughput: clips/s per worker count and bytes per clip (video, audio).

    python benchmarks/shard.py [--clips 64] [--seconds 10] [--workers 1,2] [--json OUT]

Makes synthetic 10 s clips (160x120, 10 fps, H.264 + AAC stereo 22.05 kHz) once, then shards them
with each worker count into a fresh folder and times `write_shards` end to end (decode, the
writer's default frame preparation: CAV-MAE's resize to 224 + centre crop, VP9 encode, resample
to 16 kHz, FLAC, frame table, tar + index). Writes
benchmarks/results/shard.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import write_result  # noqa: E402


def _member_bytes(out: Path) -> dict[str, int]:
    sizes: dict[str, int] = {}
    from deteclap.format import list_tars, read_tar_samples

    for tar_path in list_tars(out):
        for _, members in read_tar_samples(tar_path):
            for ext, info in members.items():
                sizes[ext] = sizes.get(ext, 0) + info.size
    return sizes


def main(argv: list[str] | None = None) -> int:
    from deteclap.shard import EncodeSettings, write_shards
    from deteclap.synth import generate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="synthetic clips to shard")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--json", default=None, help="result file (default benchmarks/results/shard.json)")
    args = parser.parse_args(argv)
    results, settings = [], EncodeSettings()  # the shard writer's defaults
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as tmp:
        src = Path(tmp) / "clips"
        start = time.perf_counter()
        generate(src, args.clips, seconds=args.seconds, workers=2)
        synth_s = time.perf_counter() - start
        print(f"synth: {args.clips} clips of {args.seconds:g} s in {synth_s:.1f} s (2 workers)")
        import torchvision.transforms.functional  # noqa: F401  (a one-time ~1 s import, not per clip)
        for workers in [int(w) for w in args.workers.split(",")]:
            out = Path(tmp) / f"out{workers}"
            start = time.perf_counter()
            summary = write_shards(src / "truth.jsonl", out, workers=workers, samples_per_shard=32, settings=settings)
            elapsed = time.perf_counter() - start
            sizes = _member_bytes(out)
            n = summary["samples"]
            result = {"name": f"shard_workers{workers}", "workers": workers, "clips": n, "seconds": elapsed,
                      "clips_per_s": n / elapsed, "clip_seconds": args.seconds,
                      "source": "synthetic 160x120 10 fps H.264 + AAC 22.05 kHz stereo",
                      "short_side": settings.short_side, "crop": settings.crop, "codec": settings.codec,
                      "video_bytes_per_clip": sizes.get("mp4", 0) / n, "audio_bytes_per_clip": sizes.get("flac", 0) / n,
                      "tar_bytes_per_clip": sum(p.stat().st_size for p in out.glob("*.tar")) / n,
                      "failed": summary["failed"]}
            print(json.dumps(result))
            results.append(result)
            shutil.rmtree(out)
    path = write_result("shard", results, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
