"""Shard-writer throughput: clips/s per worker count and bytes per clip (video, audio).

    python benchmarks/shard.py [--clips 64] [--seconds 10] [--workers 1,2] [--distributors local,ray]
                               [--samples-per-shard 32] [--repeats 1] [--json OUT]

Makes synthetic 10 s clips (160x120, 10 fps, H.264 + AAC stereo 22.05 kHz) once, then shards them
with each worker count into a fresh folder and times `write_shards` end to end (decode, the
writer's default frame preparation: CAV-MAE's resize to 224 + centre crop, VP9 encode, resample
to 16 kHz, the default audio format, frame table, tar + index). With `--distributors local,ray` each worker count
also runs as one Ray task per shard on a local Ray instance of that many CPUs (started before the
clock starts; its start-up time is reported apart) twice: `cold_seconds`, the first job, in which
each fresh Ray worker imports PyAV / torch / torchvision, and `seconds`, the same job again on the
warm workers (the steady state of a long job; the local pool forks a process that has imported
them). The difference to the local process pool is Ray's overhead (docs/SCALE.md). With
`--repeats N` the settings of one worker count run N times, interleaved, and the median is
reported (`all_seconds` keeps every run). Writes benchmarks/results/shard.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
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


def _start_ray(cpus: int) -> float:
    """Start a local Ray instance of `cpus` CPUs; returns the seconds it took."""
    import ray

    start = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, configure_logging=False, log_to_driver=False)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    from deteclap.format import AUDIO_EXTS
    from deteclap.shard import EncodeSettings, write_shards
    from deteclap.synth import generate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=64, help="synthetic clips to shard")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    parser.add_argument("--distributors", default="local", help="comma-separated: local, ray")
    parser.add_argument("--samples-per-shard", type=int, default=32, help="clips per shard (Ray: per task)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per setting (median reported)")
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
            distributors = args.distributors.split(",")
            ray_start_s = cold_s = None
            if "ray" in distributors:
                ray_start_s = _start_ray(workers)
                start = time.perf_counter()
                write_shards(src / "truth.jsonl", Path(tmp) / f"cold{workers}", workers=workers,
                             samples_per_shard=args.samples_per_shard, settings=settings, distributor="ray")
                cold_s = time.perf_counter() - start
            times: dict[str, list[float]] = {d: [] for d in distributors}
            for repeat in range(args.repeats):       # interleaved: both see the machine's load alike
                for distributor in distributors:
                    out = Path(tmp) / f"out_{distributor}{workers}_{repeat}"
                    start = time.perf_counter()
                    summary = write_shards(src / "truth.jsonl", out, workers=workers,
                                           samples_per_shard=args.samples_per_shard, settings=settings,
                                           distributor=distributor)
                    times[distributor].append(time.perf_counter() - start)
                    sizes = _member_bytes(out)
                    tar_bytes = sum(p.stat().st_size for p in out.glob("*.tar"))
                    shutil.rmtree(out)
            if "ray" in distributors:
                import ray

                ray.shutdown()
            for distributor in distributors:
                n, elapsed = summary["samples"], statistics.median(times[distributor])
                name = f"shard_workers{workers}" if distributor == "local" else f"shard_{distributor}_workers{workers}"
                result = {"name": name, "distributor": distributor, "workers": workers,
                          "samples_per_shard": args.samples_per_shard, "clips": n, "seconds": elapsed,
                          "all_seconds": times[distributor], "clips_per_s": n / elapsed,
                          "ray_start_s": ray_start_s if distributor == "ray" else None,
                          "cold_seconds": cold_s if distributor == "ray" else None, "clip_seconds": args.seconds,
                          "source": "synthetic 160x120 10 fps H.264 + AAC 22.05 kHz stereo",
                          "short_side": settings.short_side, "crop": settings.crop, "codec": settings.codec,
                          "video_bytes_per_clip": sizes.get("mp4", 0) / n,
                          "audio_format": settings.audio_format,
                          "audio_bytes_per_clip": sum(sizes.get(ext, 0) for ext in AUDIO_EXTS) / n,
                          "tar_bytes_per_clip": tar_bytes / n,
                          "failed": summary["failed"]}
                print(json.dumps(result))
                results.append(result)
    path = write_result("shard", results, args.json)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
