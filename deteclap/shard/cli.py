"""`python -m deteclap.shard SRC OUT` and `python -m deteclap.shard --verify OUT`."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from deteclap.clip import CODECS, DEFAULT_MIN_SECONDS, DEFAULT_SECONDS, DEFAULT_SHORT_SIDE, EncodeSettings
from deteclap.distribute import DISTRIBUTORS, DistributorError
from deteclap.format import AUDIO_FORMATS, FormatError, check_split
from deteclap.format.storage import StorageError
from deteclap.inputs import DEFAULT_SPLIT, REASONS, ShardError
from deteclap.shard.verify import verify_shards
from deteclap.shard.write import DEFAULT_SAMPLES_PER_SHARD, JOB_STATS_JSON, STATS_SUFFIX, write_shards

IGNORED_SHOWN = 20

def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deteclap.shard",
        description="Turn videos into WebDataset shards (shards/FORMAT.md): per clip the 10 CAV-MAE frame "
                    "instants as an all-key-frame VP9 mp4 and the first audio channel as 16 kHz 16-bit WAV (or FLAC). "
                    "SRC is a folder of videos (mp4 mkv webm avi mov m4v ts flv mpg mpeg 3gp ogv wmv, recursive; "
                    "files without an extension by content; every other file is listed as ignored) or a CSV / "
                    "JSONL manifest (path or file, optional id, start, end, class / label / labels, split; "
                    "or VGGSound's headerless CSV with --video-dir). Resumable: finished shards are kept. "
                    "`--verify OUT` checks a shard folder instead.",
        epilog="Reason codes in failures.jsonl: " + "; ".join(f"{k}: {v}" for k, v in REASONS.items()))
    parser.add_argument("paths", nargs="*", metavar="SRC OUT", help="input and output (OUT only with --verify)")
    parser.add_argument("--verify", action="store_true", help="verify the shard folder given as the only path")
    parser.add_argument("--workers", type=int, default=1, help="processes encoding clips")
    parser.add_argument("--strict", action="store_true", help="exit 1 if any input was skipped")
    parser.add_argument("--allow-silent", action="store_true", help="store silence for inputs without audio")
    parser.add_argument("--split", default=DEFAULT_SPLIT, help="split for inputs whose manifest row names none")
    parser.add_argument("--samples-per-shard", type=int, default=None,
                        help=f"samples per tar (default {DEFAULT_SAMPLES_PER_SHARD}; when OUT already holds "
                             "shards, the value they were written with)")
    parser.add_argument("--short-side", type=int, default=DEFAULT_SHORT_SIDE, help="stored frame short side (px)")
    parser.add_argument("--no-crop", dest="crop", action="store_false",
                        help="keep the whole frame (short side resized) instead of CAV-MAE's centre square")
    parser.add_argument("--codec", default="vp9", choices=sorted(CODECS), help="stored video codec")
    parser.add_argument("--audio-format", default=EncodeSettings.audio_format, choices=sorted(AUDIO_FORMATS),
                        help="pcm: KEY.wav, 16-bit samples the loaders read without decoding (the default: "
                             "decoding FLAC is the largest CPU cost per clip of every loader); flac: KEY.flac, "
                             "smaller files, the same samples (docs/DATA_PATH.md)")
    parser.add_argument("--seconds", type=float, default=DEFAULT_SECONDS, help="segment length from `start`")
    parser.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                        help="skip inputs whose segment is shorter")
    parser.add_argument("--video-dir", default=None, help="folder of the clips a manifest names (VGGSound CSV)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--distributor", default="local", choices=DISTRIBUTORS,
                        help="local: --workers processes here; ray: one Ray task per shard, same bytes "
                             "(pip install 'deteclap[ray]'; docs/SCALE.md)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to join (auto, or ray://HOST:10001); default: a local Ray instance "
                             "with --workers CPUs")
    return parser


def _verify(folder: str, quiet: bool) -> int:
    report = verify_shards(folder, progress=not quiet)
    for line in report.errors:
        print(f"ERROR {line}")
    print(f"verify {folder}: {report.shards} shards, {report.samples} samples, "
          f"{len(report.errors)} errors -> {'OK' if report.ok else 'FAILED'}")
    return 0 if report.ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verify:
        if len(args.paths) != 1:
            parser.error("--verify takes exactly one path: the shard folder")
        return _verify(args.paths[0], args.quiet)
    if len(args.paths) != 2:
        parser.error("expected SRC OUT (or --verify OUT)")
    try:
        check_split(args.split)
    except FormatError as err:
        parser.error(f"--split: {err}")
    if args.short_side < 2 or args.short_side % 2:
        parser.error("--short-side must be even and positive")
    settings = EncodeSettings(short_side=args.short_side, crop=args.crop, codec=args.codec, seconds=args.seconds,
                              min_seconds=args.min_seconds, allow_silent=args.allow_silent,
                              audio_format=args.audio_format)
    try:
        summary = write_shards(args.paths[0], args.paths[1], workers=args.workers, split=args.split,
                               samples_per_shard=args.samples_per_shard, settings=settings,
                               video_dir=args.video_dir, progress=not args.quiet, distributor=args.distributor,
                               ray_address=args.ray_address)
    except (ShardError, FormatError, DistributorError, StorageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    job = summary["job"]
    print(f"job: {job['clips']} clips, {job['bytes'] / 1e6:.1f} MB of shards, decode {job['decode_seconds']:.1f} s "
          f"+ encode {job['encode_seconds']:.1f} s of worker time, {job['wall_seconds']:.1f} s wall "
          f"({job['distributor']}); per shard: NAME{STATS_SUFFIX}, totals: {JOB_STATS_JSON}")
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items()) or "none"
    print(f"{summary['samples']} samples in {summary['shards']} shards under {summary['out']} "
          f"({summary['written_now']} written now, {summary['skipped_shards']} shards already done); "
          f"{summary['failed']} inputs skipped ({reasons})")
    _print_ignored(summary["ignored"])
    return 1 if args.strict and summary["failed"] else 0


def _print_ignored(ignored: list[dict]) -> None:
    """The files of a folder SRC that were not taken: counts by reason, then each file (the first
    IGNORED_SHOWN), so that nothing is left out without a word."""
    if not ignored:
        return
    counts = Counter(row["reason"] for row in ignored)
    print("ignored: " + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) + " (not video files)")
    for row in ignored[:IGNORED_SHOWN]:
        print(f"  ignored {row['source']}: {row['reason']} ({row['detail']})")
    if len(ignored) > IGNORED_SHOWN:
        print(f"  ... and {len(ignored) - IGNORED_SHOWN} more")


