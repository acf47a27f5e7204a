"""Stage 3 of sharding: writing OUT, resumably.

Shard membership comes from the plan (deteclap.inputs) before any clip is decoded, so a
restart gives identical shards. A shard is written as `.NAME.tar.tmp`, its failures are recorded,
and it is renamed (fsynced) when complete; a re-run keeps shards whose tar exists. Every skipped
input is a row of failures.jsonl with a reason code.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path

from deteclap.format import (DATASET_JSON, FORMAT_VERSION, FormatError, check_split, folder_lock, index_path,
                             load_dataset_json, read_tar_samples, replace_synced, save_dataset_json, shard_name,
                             tar_index_samples, tmp_path, write_atomic, write_index, write_tar)
from deteclap.clip import CODECS, EncodeSettings, process_job
from deteclap.inputs import (DEFAULT_SPLIT, MAX_SEGMENT_SECONDS, ClipInput, ShardError, collect_inputs,
                                   folder_files, plan_shards)

DEFAULT_SAMPLES_PER_SHARD = 1000
FAILURES_JSONL = "failures.jsonl"
Plan = dict[str, list[list[ClipInput]]]      # {split: [each shard's inputs]}


def _check_membership(tar_path: Path, items: list[ClipInput], failures: list[dict]) -> None:
    """A finished shard kept on resume must hold exactly the inputs the plan gives it now."""
    planned = {item.key for item in items}
    stored = {key for key, _ in read_tar_samples(tar_path)}
    failed = {row.get("key") for row in failures if row.get("shard") == tar_path.stem}
    if not stored <= planned or not planned - stored <= failed:
        raise ShardError(f"{tar_path} holds other clips than the inputs now planned for it (the input list "
                         f"changed since it was written): use an empty OUT, or the same SRC to resume")


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
        raise ShardError(f"{out} holds shards of --samples-per-shard {recorded}, not the --samples-per-shard "
                         f"{asked} asked for now: leave the option out (or give {recorded}) to resume or add "
                         "a split, or use an empty OUT")
    return asked


def _kept_failures(out: Path, plan: Plan, planned_names: set[str], read_splits: set[str]) -> list[dict]:
    """The rows of OUT's failures.jsonl that stay true after this run.

    Kept: rows of the finished shards this run keeps, and every row of a split this run does not
    shard (its shards stay listed as they are). Dropped: manifest-level rows (shard null) of the
    splits this run reads (collect_inputs lists them again), and rows of shards written again."""
    if not (out / FAILURES_JSONL).exists():
        return []
    kept = []
    for line in (out / FAILURES_JSONL).read_text().splitlines():
        row = json.loads(line)
        if row.get("shard") is None:
            keep = row.get("split") not in read_splits
        elif row.get("split") not in plan:
            keep = True
        else:
            keep = row["shard"] in planned_names and (out / f"{row['shard']}.tar").exists()
        if keep:
            kept.append(row)
    return kept


def _check_options(settings: EncodeSettings, samples_per_shard: int | None) -> None:
    if not 0 < settings.seconds <= MAX_SEGMENT_SECONDS:        # (False for NaN too)
        raise ShardError(f"--seconds {settings.seconds:g}: a segment lasts more than 0 and at most "
                         f"{MAX_SEGMENT_SECONDS:g} s")
    if settings.codec not in CODECS:
        raise ShardError(f"--codec {settings.codec!r}: choose one of {sorted(CODECS)}")
    if samples_per_shard is not None and samples_per_shard < 1:
        raise ShardError("--samples-per-shard must be at least 1")


def _check_previous(out: Path, previous: dict | None, encoding: dict, classes: list[str]) -> None:
    """OUT's shards must have been written with these encoding settings and classes."""
    if previous is not None and (previous.get("encoding") != encoding or previous.get("classes") != classes):
        raise ShardError(f"{out} holds shards written with other encoding settings or classes; "
                         "use an empty OUT (or the same SRC and options to resume)")


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
            if not tar_path.exists():
                pending.append((name, items))
                continue
            _check_membership(tar_path, items, failures)
            finished += 1
            if not index_path(tar_path).exists():
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


def _write_pending(out: Path, pending: list[tuple[str, list[ClipInput]]], settings: EncodeSettings,
                   num_classes: int, workers: int, progress: bool, failures: list[dict]) -> int:
    """Encode and write the pending shards in order; returns the samples written. Each tar is renamed
    into place only after its failures are recorded, so a kill at any point redoes the shard."""
    jobs = [(item, settings, num_classes) for _, items in pending for item in items]
    results = _run_jobs(jobs, workers, progress)
    written = 0
    for name, items in pending:
        samples = []
        for item in items:
            result = next(results)
            if "failure" in result:
                failures.append(dict(result["failure"], shard=name))
            else:
                samples.append((item.key, result["members"]))
        tar_path = out / f"{name}.tar"
        entries = write_tar(tmp_path(tar_path), samples)
        write_index(index_path(tar_path), entries)
        _write_failures(out, failures)        # before the tar appears: a kill here redoes the shard
        replace_synced(tmp_path(tar_path), tar_path)
        written += len(samples)
    return written


def _shard_rows(out: Path, plan: Plan) -> list[dict]:
    """dataset.json `shards` rows of the planned shards that hold samples."""
    rows = []
    for split_name, shards in plan.items():
        for i in range(len(shards)):
            name = shard_name(split_name, i)
            count = len(read_tar_samples(out / f"{name}.tar"))
            if count == 0:
                continue      # every input of this shard failed: the tar stays as a resume marker
            rows.append({"split": split_name, "tar": f"{name}.tar", "index": f"{name}.idx", "samples": count})
    return rows


def write_shards(src: str | Path, out: str | Path, workers: int = 1, split: str = DEFAULT_SPLIT,
                 samples_per_shard: int | None = None, settings: EncodeSettings | None = None,
                 video_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Shard SRC into OUT (see the module docstring); returns the summary dict that is also printed.

    `samples_per_shard` None: the value OUT's dataset.json records (a resume or another split),
    else DEFAULT_SAMPLES_PER_SHARD. Summary: {"inputs", "samples" (in the listed shards),
    "written_now", "skipped_shards" (done by an earlier run), "shards", "failed", "reasons":
    {reason: count}, "out", "ignored": [{"source", "reason", "detail"}] (files of a folder SRC not
    taken, `deteclap.inputs.folder_files`)}. Raises ShardError for an unusable SRC, a `split` that is not a plain
    name, or an OUT written with other settings.

    Holds OUT's lock (`deteclap.format.folder_lock`) throughout: a second writer or labeller on OUT
    waits, so that two splits written at once both stay listed in dataset.json.
    """
    settings = settings or EncodeSettings()
    _check_options(settings, samples_per_shard)
    try:
        check_split(split)
    except FormatError as err:
        raise ShardError(f"--split: {err}") from None
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out, "shard writer"):
        return _write_locked(src, out, workers, split, samples_per_shard, settings, video_dir, progress)


def _write_locked(src: str | Path, out: Path, workers: int, split: str, samples_per_shard: int | None,
                  settings: EncodeSettings, video_dir: str | Path | None, progress: bool) -> dict:
    previous = load_dataset_json(out) if (out / DATASET_JSON).exists() else None
    samples_per_shard = _samples_per_shard(out, previous, samples_per_shard)
    inputs, plan_failures = collect_inputs(src, split, video_dir)
    plan, classes, dup_failures = plan_shards(inputs, samples_per_shard)
    plan_failures += dup_failures
    encoding = asdict(settings)
    _check_previous(out, previous, encoding, classes)
    labellers = previous.get("labellers", []) if previous else []
    other_shards = [s for s in (previous or {}).get("shards", []) if s["split"] not in plan]

    for stale in out.glob(".*.tmp"):
        stale.unlink()
    planned_names = {shard_name(s, i) for s, shards in plan.items() for i in range(len(shards))}
    read_splits = set(plan) | {r["split"] for r in plan_failures}
    failures: list[dict] = [dict(r, shard=None) for r in plan_failures]
    failures += _kept_failures(out, plan, planned_names, read_splits)
    skipped, pending = _finished_and_pending(out, plan, failures)

    base, kept = _dataset_meta(previous, classes, labellers, pending, encoding, samples_per_shard)
    save_dataset_json(out, {**kept, **base, "shards": other_shards})
    written = _write_pending(out, pending, settings, len(classes), workers, progress, failures)
    shard_rows = _shard_rows(out, plan)
    if pending and labellers:
        # the new shards carry no label scores yet: `python -m deteclap.label` labels just those
        print(f"note: {len(pending)} new shard(s) have no label scores for {labellers}; run "
              f"`python -m deteclap.label {out} --labellers ...` again (it resumes)", file=sys.stderr)
    save_dataset_json(out, {**kept, **base, "shards": sorted(other_shards + shard_rows, key=lambda s: s["tar"])})
    _write_failures(out, failures)
    run_failures = [r for r in failures if r["split"] in read_splits]    # not the other splits' rows
    return {"inputs": len(inputs) + sum(1 for r in plan_failures if r["reason"] != "duplicate_key"),
            "samples": sum(s["samples"] for s in shard_rows), "written_now": written,
            "skipped_shards": skipped, "shards": len(shard_rows), "failed": len(run_failures),
            "reasons": dict(sorted(Counter(r["reason"] for r in run_failures).items())), "out": str(out),
            "ignored": folder_files(Path(src))[1] if Path(src).is_dir() else []}


def _run_jobs(jobs: list, workers: int, progress: bool) -> Iterator[dict]:
    """Results of process_clip in job order, from a process pool when workers > 1."""
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(jobs), desc="shard", unit="clip")
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
        if bar is not None:
            bar.close()
