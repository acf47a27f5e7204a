"""Stage 3 of sharding: writing OUT, resumably, here or on a Ray cluster.

Shard membership comes from the plan (deteclap.inputs) before any clip is decoded, so a
restart gives identical shards, and so does any distributor. One shard is written by
`write_shard`: its stats file (`NAME.stats.json`: clips, samples, bytes, decode / encode seconds,
failures by reason and their failures.jsonl rows), its index, then its tar (as `.NAME.tar.tmp`,
renamed when complete; in object storage, built in a local staging folder and put whole). The
tar's presence marks the shard done: a re-run keeps shards whose tar exists and takes their
failure rows from their stats files, so a run (or a Ray task) killed at any point loses nothing.
Every skipped input is a row of failures.jsonl with a reason code. `--distributor ray` runs one
`write_shard` per Ray task; the driver alone holds OUT's lock and writes dataset.json,
failures.jsonl and the job's totals (`OUT/stats.json`). OUT may be a URL (deteclap.format.storage).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from deteclap.clip import CODECS, EncodeSettings, preload, process_clip, process_job
from deteclap.format import (AUDIO_FORMATS, DATASET_JSON, FORMAT_VERSION, FormatError, check_split,
                             folder_audio_format, folder_lock, index_entries, index_path, index_sample_count,
                             load_dataset_json, replace_synced, save_dataset_json, shard_name, storage,
                             tar_index_samples, tmp_path, write_atomic, write_index, write_tar)
from deteclap.inputs import (DEFAULT_SPLIT, MAX_SEGMENT_SECONDS, ClipInput, ShardError, collect_inputs, ignored_files,
                             plan_shards)

DEFAULT_SAMPLES_PER_SHARD = 1000
FAILURES_JSONL = "failures.jsonl"
STATS_SUFFIX = ".stats.json"        # per shard: clips, samples, bytes, decode / encode seconds, failures
JOB_STATS_JSON = "stats.json"       # the job's totals over the planned shards
Plan = dict[str, list[list[ClipInput]]]      # {split: [each shard's inputs]}


def _check_membership(tar_path: Path, items: list[ClipInput], failures: list[dict]) -> None:
    """A finished shard kept on resume must hold exactly the inputs the plan gives it now."""
    planned = {item.key for item in items}
    stored = set(index_entries(tar_path))
    failed = {row.get("key") for row in failures if row.get("shard") == tar_path.stem}
    if not stored <= planned or not planned - stored <= failed:
        raise ShardError(f"{storage.location(tar_path)} holds other clips than the inputs now planned for it (the "
                         "input list changed since it was written): use an empty OUT, or the same SRC to resume")


def _write_failures(out: Path, rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (r.get("split", ""), r.get("shard") or "", r["source"], r["reason"]))
    write_atomic(out / FAILURES_JSONL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())


def _samples_per_shard(out: Path, previous: dict | None, asked: int | None) -> int:
    """The shard size to plan with: `asked`, else the one OUT's dataset.json records, else the default.

    Raises ShardError when `asked` differs from the recorded one (the plan would put other clips
    under the existing shard names)."""
    recorded = (previous or {}).get("samples_per_shard")
    if asked is None:
        return recorded or DEFAULT_SAMPLES_PER_SHARD
    if recorded is not None and asked != recorded:
        raise ShardError(f"{storage.location(out)} holds shards of --samples-per-shard {recorded}, not the "
                         "--samples-per-shard "
                         f"{asked} asked for now: leave the option out (or give {recorded}) to resume or add "
                         "a split, or use an empty OUT")
    return asked


def stats_path(out: Path, name: str) -> Path:
    """The statistics file of shard `name` (STATS_SUFFIX beside its tar)."""
    return out / f"{name}{STATS_SUFFIX}"


def read_stats(out: Path, name: str) -> dict | None:
    """Shard `name`'s statistics (what write_shard returned), None when it has no stats file."""
    path = stats_path(out, name)
    return json.loads(storage.read_text(path)) if storage.is_file(path) else None


def _kept_failures(out: Path, plan: Plan, planned_names: set[str], read_splits: set[str]) -> list[dict]:
    """The failure rows that stay true after this run, before its new shards are written.

    Kept: the rows of the finished shards this run keeps (from each one's stats file, written
    before its tar; from OUT's failures.jsonl for shards written without one), and every row of a
    split this run does not shard (its shards stay listed as they are). Dropped: manifest-level
    rows (shard null) of the splits this run reads (collect_inputs lists them again), and rows of
    shards written again."""
    done = {name for name in planned_names if storage.exists(out / f"{name}.tar")}
    with_stats = {name: stats for name in sorted(done) if (stats := read_stats(out, name)) is not None}
    kept = [row for stats in with_stats.values() for row in stats["failure_rows"]]
    if not storage.exists(out / FAILURES_JSONL):
        return kept
    for line in storage.read_text(out / FAILURES_JSONL).splitlines():
        row = json.loads(line)
        if row.get("shard") is None:
            keep = row.get("split") not in read_splits
        elif row.get("split") not in plan:
            keep = True
        else:
            keep = row["shard"] in done and row["shard"] not in with_stats
        if keep:
            kept.append(row)
    return kept


def _check_options(settings: EncodeSettings, samples_per_shard: int | None) -> None:
    if not 0 < settings.seconds <= MAX_SEGMENT_SECONDS:        # (False for NaN too)
        raise ShardError(f"--seconds {settings.seconds:g}: a segment lasts more than 0 and at most "
                         f"{MAX_SEGMENT_SECONDS:g} s")
    if settings.codec not in CODECS:
        raise ShardError(f"--codec {settings.codec!r}: choose one of {sorted(CODECS)}")
    if settings.audio_format not in AUDIO_FORMATS:
        raise ShardError(f"--audio-format {settings.audio_format!r}: choose one of {sorted(AUDIO_FORMATS)}")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ShardError("--samples-per-shard must be at least 1")


def _check_previous(out: Path, previous: dict | None, encoding: dict, classes: list[str]) -> None:
    """OUT's shards must have been written with these encoding settings and classes (folders written
    before `audio_format` existed hold FLAC)."""
    if previous is None:
        return
    before = {**previous.get("encoding", {}), "audio_format": folder_audio_format(previous)}
    changed = [f"{key} {before.get(key)!r} there, {value!r} now" for key, value in encoding.items()
               if before.get(key) != value]
    if before["audio_format"] != encoding["audio_format"]:
        changed.append(f"resume it with --audio-format {before['audio_format']}")
    if previous.get("classes") != classes:
        changed.append("other classes")
    if changed:
        raise ShardError(f"{storage.location(out)} holds shards written with other encoding settings or classes "
                         f"({'; '.join(changed)}); use an empty OUT, or the same SRC and options to resume")


def _finished_and_pending(out: Path, plan: Plan, failures: list[dict]
                          ) -> tuple[int, list[tuple[str, list[ClipInput]]]]:
    """(shards already written, [(name, inputs)] of the shards to write). A finished shard must hold
    its planned inputs; its missing index is written again."""
    pending: list[tuple[str, list[ClipInput]]] = []
    finished = 0
    for split_name, shards in plan.items():
        for i, items in enumerate(shards):
            name = shard_name(split_name, i)
            tar_path = out / f"{name}.tar"
            if not storage.exists(tar_path):
                pending.append((name, items))
                continue
            _check_membership(tar_path, items, failures)
            finished += 1
            if not storage.exists(index_path(tar_path)):
                write_index(index_path(tar_path), tar_index_samples(tar_path))
    return finished, pending


def _dataset_meta(previous: dict | None, classes: list[str], labellers: list[str], pending: list,
                  encoding: dict, samples_per_shard: int) -> tuple[dict, dict]:
    """(the keys this run writes, the keys kept from OUT's dataset.json: what labelling recorded)."""
    from deteclap.labels.vocabulary import load_vocabulary

    # the shards written now carry no label scores: no labeller is complete, and labelling redoes them
    base = {"format_version": FORMAT_VERSION, "classes": classes, "label_vocabulary": load_vocabulary(),
            "labellers": [] if pending else labellers, "encoding": encoding, "samples_per_shard": samples_per_shard}
    kept = {k: v for k, v in (previous or {}).items() if k not in base and k != "shards"}
    rewritten = {f"{name}.tar" for name, _ in pending}
    if "labelled_shards" in kept:
        kept["labelled_shards"] = {labeller: [tar for tar in tars if tar not in rewritten]
                                   for labeller, tars in kept["labelled_shards"].items()}
    return base, kept


def write_shard(out: str, name: str, items: list[ClipInput], settings: EncodeSettings, num_classes: int,
                results: list[dict] | None = None) -> dict:
    """Write shard `name` of OUT (a folder or URL): its stats file, its index, then its tar, whose
    presence marks the shard done (so whatever runs this may be killed and run again: the same
    bytes come out). `results`: process_clip of each item when computed elsewhere (local mode's
    clip pool); else the clips are processed here (one Ray task per shard).

    Returns the shard's statistics (what its stats file holds): {"shard", "split", "clips"
    (inputs planned), "samples", "bytes" (of the tar), "decode_seconds", "encode_seconds",
    "failures" ({reason: count}), "failure_rows" (its failures.jsonl rows), "host"}.
    """
    out_path = Path(out)
    if results is None:
        preload()
        results = [process_clip(item, settings, num_classes) for item in items]
    samples, failure_rows = [], []
    for item, result in zip(items, results):
        if "failure" in result:
            failure_rows.append(dict(result["failure"], shard=name))
        else:
            samples.append((item.key, result["members"]))
    remote = storage.is_url(out)
    staging = Path(tempfile.mkdtemp(prefix="deteclap-shard-")) if remote else out_path
    try:
        tmp_tar = tmp_path(staging / f"{name}.tar")
        entries = write_tar(tmp_tar, samples)
        stats = {"shard": name, "split": items[0].split if items else "", "clips": len(items),
                 "samples": len(samples), "bytes": tmp_tar.stat().st_size,
                 "decode_seconds": round(sum(r["seconds"]["decode"] for r in results), 4),
                 "encode_seconds": round(sum(r["seconds"]["encode"] for r in results), 4),
                 "failures": dict(sorted(Counter(r["reason"] for r in failure_rows).items())),
                 "failure_rows": failure_rows, "host": socket.gethostname()}
        write_atomic(stats_path(out_path, name), json.dumps(stats, indent=1, sort_keys=True).encode())
        write_index(index_path(out_path / f"{name}.tar"), entries)
        if remote:
            storage.put_file(tmp_tar, storage.join(out, f"{name}.tar"))
        else:
            replace_synced(tmp_tar, out_path / f"{name}.tar")
    finally:
        if remote:
            shutil.rmtree(staging, ignore_errors=True)
    return stats


def _write_pending(out: str, pending: list[tuple[str, list[ClipInput]]], settings: EncodeSettings,
                   num_classes: int, workers: int, progress: bool, distributor: str, ray_address: str | None
                   ) -> Iterator[dict]:
    """write_shard for every pending shard; yields each one's statistics as it is written.

    local: the clips of all shards on a pool of `workers` processes (in plan order), each shard
    written here when its clips are done. ray: one task per shard, retried when its worker dies
    (deteclap.distribute). One progress bar over all clips either way."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(len(items) for _, items in pending), desc="shard", unit="clip")
    try:
        if distributor == "local":
            jobs = [(item, settings, num_classes) for _, items in pending for item in items]
            if jobs:
                preload()         # once here: the pool's forked workers inherit the imports
            results = _run_jobs(jobs, workers, bar)
            for name, items in pending:
                yield write_shard(out, name, items, settings, num_classes, [next(results) for _ in items])
            return
        from deteclap.distribute import run_tasks

        jobs = [(out, name, items, settings, num_classes) for name, items in pending]
        for _, stats in run_tasks(write_shard, jobs, distributor=distributor, workers=workers,
                                  ray_address=ray_address):
            if bar is not None:
                bar.update(stats["clips"])
            yield stats
    finally:
        if bar is not None:
            bar.close()


def _shard_rows(out: Path, plan: Plan) -> list[dict]:
    """dataset.json `shards` rows of the planned shards that hold samples."""
    rows = []
    for split_name, shards in plan.items():
        for i in range(len(shards)):
            name = shard_name(split_name, i)
            count = index_sample_count(out / f"{name}.tar")
            if count == 0:
                continue      # every input of this shard failed: the tar stays as a resume marker
            rows.append({"split": split_name, "tar": f"{name}.tar", "index": f"{name}.idx", "samples": count})
    return rows


def _job_stats(out: Path, plan: Plan, shard_rows: list[dict], reasons: dict, **extra) -> dict:
    """The job's totals over its planned shards (their stats files) for OUT/stats.json."""
    stats = [found for split_name, shards in plan.items() for i in range(len(shards))
             if (found := read_stats(out, shard_name(split_name, i))) is not None]
    return {"samples": sum(s["samples"] for s in shard_rows), "shards": len(shard_rows),
            "bytes": sum(s["bytes"] for s in stats),
            "decode_seconds": round(sum(s["decode_seconds"] for s in stats), 3),
            "encode_seconds": round(sum(s["encode_seconds"] for s in stats), 3),
            "failures": reasons, "shards_without_stats": sum(len(shards) for shards in plan.values()) - len(stats),
            **extra}


def write_shards(src: str | Path, out: str | Path, workers: int = 1, split: str = DEFAULT_SPLIT,
                 samples_per_shard: int | None = None, settings: EncodeSettings | None = None,
                 video_dir: str | Path | None = None, progress: bool = False, distributor: str = "local",
                 ray_address: str | None = None) -> dict:
    """Shard SRC into OUT (see the module docstring); returns the summary dict that is also printed.

    `samples_per_shard` None: the value OUT's dataset.json records (a resume or another split),
    else DEFAULT_SAMPLES_PER_SHARD. `distributor` "local": clips on `workers` processes here;
    "ray": one Ray task per shard (on the cluster at `ray_address`, or a local Ray instance with
    `workers` CPUs), the same bytes. SRC and OUT may be URLs (deteclap.format.storage). Summary:
    {"inputs", "samples" (in the listed shards), "written_now", "skipped_shards" (done by an
    earlier run), "shards", "failed", "reasons": {reason: count}, "out", "job" (OUT/stats.json),
    "ignored": [{"source", "reason", "detail"}] (files of a folder SRC not taken,
    `deteclap.inputs.ignored_files`)}. Raises ShardError for an unusable SRC, a `split` that is
    not a plain name, or an OUT written with other settings.

    The driver (this process) holds OUT's lock (`deteclap.format.folder_lock`) throughout: a second
    writer or labeller on OUT waits, so that two splits written at once both stay listed in
    dataset.json. Ray tasks write only their own shard's files and take no lock. (A URL OUT has no
    lock: object stores offer none.)
    """
    started = time.perf_counter()
    settings = settings or EncodeSettings()
    _check_options(settings, samples_per_shard)
    from deteclap.distribute import check_distributor

    check_distributor(distributor)         # before any work: a typo must not cost a planning pass
    try:
        check_split(split)
    except FormatError as err:
        raise ShardError(f"--split: {err}") from None
    out_text = storage.location(out)
    storage.make_dirs(out_text)
    with folder_lock(out_text, "shard writer"):
        return _write_locked(src, out_text, workers, split, samples_per_shard, settings, video_dir, progress,
                             distributor, ray_address, started)


def _write_locked(src: str | Path, out_text: str, workers: int, split: str, samples_per_shard: int | None,
                  settings: EncodeSettings, video_dir: str | Path | None, progress: bool, distributor: str,
                  ray_address: str | None, started: float) -> dict:
    out = Path(out_text)
    previous = load_dataset_json(out) if storage.exists(out / DATASET_JSON) else None
    samples_per_shard = _samples_per_shard(out, previous, samples_per_shard)
    inputs, plan_failures = collect_inputs(src, split, video_dir)
    plan, classes, dup_failures = plan_shards(inputs, samples_per_shard)
    plan_failures += dup_failures
    encoding = asdict(settings)
    _check_previous(out, previous, encoding, classes)
    labellers = previous.get("labellers", []) if previous else []
    other_shards = [s for s in (previous or {}).get("shards", []) if s["split"] not in plan]

    if not storage.is_url(out_text):
        for stale in out.glob(".*.tmp"):
            stale.unlink()
    planned_names = {shard_name(s, i) for s, shards in plan.items() for i in range(len(shards))}
    read_splits = set(plan) | {r["split"] for r in plan_failures}
    failures: list[dict] = [dict(r, shard=None) for r in plan_failures]
    failures += _kept_failures(out, plan, planned_names, read_splits)
    skipped, pending = _finished_and_pending(out, plan, failures)

    base, kept = _dataset_meta(previous, classes, labellers, pending, encoding, samples_per_shard)
    save_dataset_json(out, {**kept, **base, "shards": other_shards})
    written = 0
    for stats in _write_pending(out_text, pending, settings, len(classes), workers, progress, distributor,
                                ray_address):
        failures.extend(stats["failure_rows"])
        written += stats["samples"]
    shard_rows = _shard_rows(out, plan)
    if pending and labellers:
        # the new shards carry no label scores yet: `python -m deteclap.label` labels just those
        print(f"note: {len(pending)} new shard(s) have no label scores for {labellers}; run "
              f"`python -m deteclap.label {out_text} --labellers ...` again (it resumes)", file=sys.stderr)
    save_dataset_json(out, {**kept, **base, "shards": sorted(other_shards + shard_rows, key=lambda s: s["tar"])})
    _write_failures(out, failures)
    run_failures = [r for r in failures if r["split"] in read_splits]    # not the other splits' rows
    reasons = dict(sorted(Counter(r["reason"] for r in run_failures).items()))
    clips = len(inputs) + sum(1 for r in plan_failures if r["reason"] != "duplicate_key")
    job = _job_stats(out, plan, shard_rows, reasons, clips=clips, written_now=written, skipped_shards=skipped,
                     wall_seconds=round(time.perf_counter() - started, 3), distributor=distributor, workers=workers)
    write_atomic(out / JOB_STATS_JSON, json.dumps(job, indent=1, sort_keys=True).encode())
    return {"inputs": clips, "samples": job["samples"], "written_now": written, "skipped_shards": skipped,
            "shards": len(shard_rows), "failed": len(run_failures), "reasons": reasons, "out": out_text, "job": job,
            "ignored": ignored_files(src)}


def _run_jobs(jobs: list, workers: int, bar=None) -> Iterator[dict]:
    """Results of process_clip in job order, from a process pool when workers > 1."""
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)
        source: Iterable[dict] = pool.imap(process_job, jobs, chunksize=1)
    else:
        pool, source = None, map(process_job, jobs)
    try:
        for result in source:
            if bar is not None:
                bar.update(1)
            yield result
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
