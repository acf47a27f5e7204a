"""The embedding index: a folder of embeddings, label probabilities and metadata, built and queried.

Owns the INDEX folder format, `build_index(src, out, model)` (what `deteclap embed` runs),
`load_index`, `Searcher` / `top_k` (exact search by one matrix product; faiss's exact flat index
when asked) and `query_index`
(what `deteclap search` runs).

    INDEX/index.json     {"format": "deteclap.index", "version", "model", "checkpoint",
                          "checkpoint_sha256", "config": "config.json", "settings", "dim",
                          "label_vocabulary" (null without label heads), "count", "parts": [...],
                          "sources": [...]}
    INDEX/config.json    the resolved config the embeddings were made with
    INDEX/parts/part-NNNNNN/  audio.npy, video.npy (float32 [n, D], L2-normalised), meta.jsonl
                          (one row per item: key, source, start, duration, classes, split, origin),
                          labels_audio.npy, labels_video.npy (float16 [n, C] label-head
                          probabilities; only with label heads)
    INDEX/failures.jsonl one row per input the last run could not embed: source, key, reason, detail

Items are identified by key (the shard writer's key of a video, the sample key of a shard). A part
is written under a temporary name and renamed when complete, and index.json (written atomically
after every part) lists the parts; a killed run leaves complete parts only, and a re-run, or a run
on a grown folder, embeds only the keys no part holds (failed inputs are tried again). An INDEX
made by another checkpoint or with other embedding settings is refused, naming the difference.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deteclap.inference import DEFAULT_SECONDS, Clip, InputError, LoadedModel

FORMAT = "deteclap.index"
VERSION = 1
INDEX_JSON = "index.json"
CONFIG_JSON = "config.json"
FAILURES = "failures.jsonl"
PARTS = "parts"
META = "meta.jsonl"
ARRAYS = ("audio", "video", "labels_audio", "labels_video")
DEFAULT_PART_SIZE = 1000        # items per part: what a killed run can lose at most
LABEL_DTYPE = np.float16        # probabilities: 3 significant digits are plenty, half the bytes


class IndexFolderError(RuntimeError):
    """A problem with the INDEX folder as a whole (another model, a damaged file); names the file."""


# ----------------------------------------------------------------------------------------------
# what an index is made with
def index_settings(model: LoadedModel, seconds: float) -> dict[str, Any]:
    """Everything that changes an item's embedding besides the weights: compared on every re-run."""
    cfg = model.cfg
    shape = {k: v for k, v in cfg.to_dict()["model"].items() if k != "init_checkpoint"}
    return {"model": shape, "data.eval_frame": cfg.data.eval_frame, "seconds": seconds,
            "label_classes": 0 if model.vocabulary is None else len(model.vocabulary)}


def _differences(info: dict, digest: str, checkpoint: str, settings: dict) -> list[str]:
    out = []
    if info.get("checkpoint_sha256") != digest:
        out.append(f"checkpoint sha256 {str(info.get('checkpoint_sha256'))[:12]} ({info.get('checkpoint')}) "
                   f"-> {digest[:12]} ({checkpoint})")
    old = info.get("settings", {})
    for key in dict.fromkeys([*old, *settings]):
        if isinstance(settings.get(key), dict) or isinstance(old.get(key), dict):
            before, after = old.get(key) or {}, settings.get(key) or {}
            out += [f"{key}.{k}: {json.dumps(before.get(k))} -> {json.dumps(after.get(k))}"
                    for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
        elif old.get(key) != settings.get(key):
            out.append(f"{key}: {json.dumps(old.get(key))} -> {json.dumps(settings.get(key))}")
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def read_info(root: str | Path) -> dict:
    """INDEX/index.json. Raises IndexFolderError when it is missing or not an index of this format."""
    path = Path(root) / INDEX_JSON
    if not path.is_file():
        raise IndexFolderError(f"{path} not found: is {root} an index written by `deteclap embed`?")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise IndexFolderError(f"{path}: not valid JSON ({err})") from None
    if info.get("format") != FORMAT or info.get("version") != VERSION:
        raise IndexFolderError(f"{path}: format {info.get('format')!r} version {info.get('version')!r}, "
                          f"expected {FORMAT!r} version {VERSION}")
    return info


# ----------------------------------------------------------------------------------------------
# inputs
@dataclass
class Item:
    """One input to embed: its key, what to decode (`members` of a shard sample, or a video `path`)
    and its metadata row."""
    key: str
    meta: dict[str, Any]
    members: dict[str, bytes] | None = None
    path: str | None = None
    start: float = 0.0
    seconds: float = DEFAULT_SECONDS


def is_shard_folder(src: Path) -> bool:
    return src.is_dir() and (src / "dataset.json").is_file()


def _shard_items(src: Path, split: str | None, done: set[str]) -> Iterator[Item]:
    """Samples of the tars a shard folder's dataset.json lists (one split, or all), skipping `done` keys."""
    from deteclap.format import iter_tar_samples
    from deteclap.format import load_dataset_json

    for row in load_dataset_json(src).get("shards", []):
        if split is not None and row["split"] != split:
            continue
        tar = (src / row["tar"]).resolve()
        for key, members in iter_tar_samples(tar):
            if key in done:
                continue
            try:
                stored = json.loads(members.get("json", b"{}"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                stored = {}
            meta = {"key": key, "source": stored.get("source", f"{row['tar']}:{key}"),
                    "start": stored.get("start", 0.0), "duration": stored.get("duration"),
                    "classes": stored.get("classes", []), "split": row["split"],
                    "origin": {"tar": str(tar), "key": key}}
            yield Item(key, meta, members=members)


def _video_items(src: Path, split: str, seconds: float, done: set[str]) -> tuple[list[Item], list[dict]]:
    """Inputs of a video folder or manifest as the shard writer lists them (its `collect_inputs`),
    sorted by key; a second input with a key already listed is a `duplicate_key` failure."""
    from deteclap.inputs import collect_inputs

    inputs, failures = collect_inputs(src, split)
    items, seen = [], set()
    for clip in sorted(inputs, key=lambda c: (c.key, c.source)):
        if clip.key in seen:
            failures.append({"source": clip.shown_source, "reason": "duplicate_key", "key": clip.key,
                             "detail": f"key {clip.key!r} already used by another input"})
            continue
        seen.add(clip.key)
        if clip.key in done:
            continue
        length = (clip.end - clip.start) if clip.end is not None else seconds
        meta = {"key": clip.key, "source": clip.shown_source, "start": clip.start, "duration": None,
                "classes": list(clip.classes), "split": clip.split,
                "origin": {"file": str(Path(clip.source).resolve()), "start": clip.start, "seconds": length}}
        items.append(Item(clip.key, meta, path=clip.source, start=clip.start, seconds=length))
    return items, [dict(f, key=f.get("key")) for f in failures]


_worker_decoder: Any = None     # the SampleDecoder of this process (set before the pool forks)


def _decode(item: Item) -> tuple[Item, Clip | None, dict | None]:
    """One item -> (item, Clip, None) or (item, None, failure row); run in the workers."""
    from deteclap.inference import clip_members

    decoder = _worker_decoder
    try:
        members = item.members
        if members is None:
            members = clip_members(item.path, item.start, item.seconds, key=item.key)
        clip = decoder(members, item.meta["source"], item.key)
    except InputError as err:
        return item, None, {"source": item.meta["source"], "key": item.key, "reason": err.reason,
                            "detail": err.detail}
    if item.meta.get("duration") is None:
        item.meta["duration"] = clip.meta.get("duration")
    item.members = None                    # the bytes are not needed any more (and not sent back)
    # numpy, not torch, crosses the process boundary: torch's pickling of tensors shares them through
    # file descriptors, which hung a fork pool's result pipe here
    return item, Clip(*(None if x is None else x.numpy() for x in (clip.frame, clip.wave)), clip.meta), None


def _decoded(items: Iterable[Item], decoder: Any, workers: int) -> Iterator[tuple[Item, Clip | None, dict | None]]:
    """`_decode` over the items in order, in a process pool when workers > 1 (forked: the decoder,
    whose frame transform is a closure, is inherited rather than pickled)."""
    global _worker_decoder
    _worker_decoder = decoder
    if workers <= 1:
        yield from map(_decode, items)
        return
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        yield from pool.imap(_decode, items, chunksize=2)
    finally:
        pool.terminate()
        pool.join()


# ----------------------------------------------------------------------------------------------
# writing
def _part_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / PARTS).glob("part-*") if p.is_dir())


def _part_keys(root: Path, name: str) -> list[str]:
    return [json.loads(line)["key"] for line in (root / PARTS / name / META).read_text().splitlines() if line]


def _write_part(root: Path, name: str, rows: list[dict], arrays: dict[str, list[np.ndarray]]) -> None:
    """A complete part folder, built under a temporary name and renamed (never half there)."""
    parts = root / PARTS
    tmp = parts / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for array_name, chunks in arrays.items():
        if chunks:
            value = np.concatenate(chunks)
            np.save(tmp / f"{array_name}.npy", value.astype(LABEL_DTYPE if array_name.startswith("labels") else
                                                            np.float32))
    (tmp / META).write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    os.replace(tmp, parts / name)


def _write_info(root: Path, info: dict, part_counts: dict[str, int]) -> None:
    """index.json listing the parts {name: items} (those on disk: a part renamed into place before
    a kill is complete and counts)."""
    counts = [{"name": name, "count": part_counts[name]} for name in sorted(part_counts)]
    info = dict(info, parts=counts, count=sum(c["count"] for c in counts))
    _atomic_write(root / INDEX_JSON, (json.dumps(info, indent=1) + "\n").encode())


def _write_failures(root: Path, rows: list[dict]) -> None:
    ordered = sorted(rows, key=lambda r: (str(r.get("key")), r["source"], r["reason"]))
    _atomic_write(root / FAILURES, "".join(json.dumps(r, sort_keys=True) + "\n" for r in ordered).encode())


def build_index(src: str | Path, out: str | Path, model: LoadedModel, split: str | None = None,
                batch_size: int | None = None, workers: int = 1, part_size: int = DEFAULT_PART_SIZE,
                seconds: float = DEFAULT_SECONDS, progress: bool = False) -> dict[str, Any]:
    """Embed SRC (a shard folder, a folder of videos or a CSV / JSONL manifest) into the index OUT.

    `split`: a shard folder's split to embed (None: all); for videos, the split of rows naming none.
    Returns {"count" (items in the index), "embedded_now", "failed", "reasons": {reason: n}, "out"}.
    Raises IndexFolderError when OUT was made by another checkpoint or settings, FileNotFoundError /
    ShardError for an unusable SRC.
    """
    src, root = Path(src), Path(out)
    settings = index_settings(model, seconds)
    if (root / INDEX_JSON).exists():
        info = read_info(root)
        differences = _differences(info, model.digest, str(model.checkpoint), settings)
        if differences:
            raise IndexFolderError(f"{root} was made by another model or settings: " + "; ".join(differences)
                                   + ". Use another --out, or the same checkpoint and config to add to it")
    elif (root / PARTS).is_dir() and _part_names(root):
        raise IndexFolderError(f"{root} holds parts but no {INDEX_JSON}: which model made them is unknown; "
                               "use another --out")
    else:
        info = {}
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder (SRC: a shard folder, a folder of videos, "
                                "or a .csv / .jsonl manifest)")
    part_keys = {name: _part_keys(root, name) for name in _part_names(root)} if (root / PARTS).is_dir() else {}
    part_counts = {name: len(keys) for name, keys in part_keys.items()}
    done = {key for keys in part_keys.values() for key in keys}
    # SRC is read before anything is written: a bad SRC leaves OUT as it was
    if is_shard_folder(src):
        from deteclap.format import load_dataset_json

        splits = sorted({row["split"] for row in load_dataset_json(src).get("shards", [])})
        if split is not None and split not in splits:
            raise FileNotFoundError(f"{src}: no shard of split {split!r} (its splits: {splits})")
        items: Iterable[Item] = _shard_items(src, split, done)
        failures: list[dict] = []
        total = None
    elif src.is_dir() and not any(src.glob("*.tar")) or src.is_file():
        items, failures = _video_items(src, split or "train", seconds, done)
        total = len(items)
    else:
        raise FileNotFoundError(f"{src}: a folder with tars but no dataset.json: SRC must be a shard folder "
                                "written by `python -m deteclap.shard`, a folder of videos or a manifest")
    (root / PARTS).mkdir(parents=True, exist_ok=True)
    for stale in (root / PARTS).glob(".*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    sources = list(dict.fromkeys([*info.get("sources", []), str(src.resolve())]))
    info = {"format": FORMAT, "version": VERSION, "model": type(model.model).__name__,
            "checkpoint": str(model.checkpoint), "checkpoint_sha256": model.digest, "config": CONFIG_JSON,
            "settings": settings, "dim": model.dim, "label_vocabulary": model.vocabulary, "sources": sources}
    _atomic_write(root / CONFIG_JSON, (json.dumps(model.cfg.to_dict(), indent=2) + "\n").encode())
    _write_info(root, info, part_counts)    # claims OUT for this model before any part is written
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="embed", unit="clip")
    batch_size = batch_size or model.cfg.eval.batch_size
    next_part = 1 + max((int(name.split("-")[1]) for name in part_counts), default=-1)
    rows: list[dict] = []
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    pending: list[tuple[Item, Clip]] = []
    embedded = 0
    seen: set[str] = set()

    def flush_batch() -> None:
        out = model.embed_clips([clip for _, clip in pending])
        for name in ARRAYS:
            if out[name] is not None:
                arrays[name].append(out[name])
        rows.extend(item.meta for item, _ in pending)
        pending.clear()

    def flush_part() -> None:
        nonlocal next_part, rows, arrays, embedded
        if pending:
            flush_batch()
        if rows:
            name = f"part-{next_part:06d}"
            _write_part(root, name, rows, arrays)
            part_counts[name] = len(rows)
            _write_failures(root, failures)
            _write_info(root, info, part_counts)
            embedded += len(rows)
            next_part += 1
        rows, arrays = [], {name: [] for name in ARRAYS}

    try:
        for item, clip, failure in _decoded(items, model.decoder, workers):
            if bar is not None:
                bar.update(1)
            if failure is None and item.key in seen:     # a key in two splits of a shard folder
                failure = {"source": item.meta["source"], "key": item.key, "reason": "duplicate_key",
                           "detail": f"key {item.key!r} already embedded from another split"}
            if failure is not None:
                failures.append(failure)
                continue
            seen.add(item.key)
            if clip.wave is None:          # a silent sample of shards written with --allow-silent
                failures.append({"source": item.meta["source"], "key": item.key, "reason": "no_audio",
                                 "detail": "the sample was stored as silence (sharded with --allow-silent)"})
                continue
            pending.append((item, clip))
            if len(pending) >= batch_size:
                flush_batch()
            if len(rows) + len(pending) >= part_size:
                flush_part()
        flush_part()
    finally:
        if bar is not None:
            bar.close()
    _write_failures(root, failures)
    _write_info(root, info, part_counts)
    reasons = Counter(row["reason"] for row in failures)
    return {"count": sum(part_counts.values()), "embedded_now": embedded, "failed": len(failures),
            "reasons": dict(sorted(reasons.items())), "out": str(root)}


# ----------------------------------------------------------------------------------------------
# reading and searching
@dataclass
class Index:
    """A loaded index: info (index.json), rows (metadata, one per item), arrays by name (absent
    label arrays: None), and `keys` {key: row number}."""
    root: Path
    info: dict[str, Any]
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray | None]
    keys: dict[str, int]
    searchers: dict[tuple[str, str], Searcher] = field(default_factory=dict)

    def searcher(self, modality: str, backend: str = "numpy") -> Searcher:
        """The (cached) Searcher over one modality's embeddings."""
        if (modality, backend) not in self.searchers:
            self.searchers[(modality, backend)] = Searcher(self.arrays[modality], backend)
        return self.searchers[(modality, backend)]

    @property
    def vocabulary(self) -> list[str] | None:
        return self.info.get("label_vocabulary")

    def config(self) -> Any:
        """The Config the index was made with (INDEX/config.json)."""
        from deteclap.config import load_config

        return load_config(self.root / CONFIG_JSON)


def load_index(root: str | Path, mmap: bool = False) -> Index:
    """Read the parts index.json lists. Raises IndexFolderError when a part is missing or its arrays and
    metadata disagree (named)."""
    root = Path(root)
    info = read_info(root)
    rows: list[dict] = []
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
    for part in info.get("parts", []):
        folder = root / PARTS / part["name"]
        try:
            part_rows = [json.loads(line) for line in (folder / META).read_text().splitlines() if line]
            for name in ARRAYS:
                path = folder / f"{name}.npy"
                if path.is_file():
                    chunks[name].append(np.load(path, mmap_mode="r" if mmap else None))
        except (OSError, ValueError) as err:
            raise IndexFolderError(f"{folder}: cannot read ({err}); run `deteclap embed` again to rebuild it") from None
        if len(part_rows) != part["count"]:
            raise IndexFolderError(f"{folder}: {len(part_rows)} rows, {INDEX_JSON} says {part['count']}")
        rows.extend(part_rows)
    arrays: dict[str, np.ndarray | None] = {}
    for name, values in chunks.items():
        if not values:
            arrays[name] = None
            continue
        arrays[name] = values[0] if len(values) == 1 else np.concatenate(values)
        if len(arrays[name]) != len(rows):
            raise IndexFolderError(f"{root}: {name}.npy holds {len(arrays[name])} rows in all, "
                                   f"the metadata {len(rows)}")
    if arrays["audio"] is None and rows:
        raise IndexFolderError(f"{root}: no embeddings")
    return Index(root, info, rows, arrays, {row["key"]: i for i, row in enumerate(rows)})


class Searcher:
    """Exact top-k by inner product (cosine for L2-normalised rows) over fixed items [N, D].

    backend: numpy (one matrix product + argpartition), or faiss (its exact IndexFlatIP, built
    once here; the `search` extra). numpy is the default: for one query against 1,000,000 x 768
    items it measured 330 ms against faiss's 759 ms (+ 3 s to build) on 2 loaded cores
    (benchmarks/embed.py); faiss is there for those who go on to its batched or approximate search.
    """

    def __init__(self, items: np.ndarray, backend: str = "numpy"):
        if backend not in ("numpy", "faiss"):
            raise ValueError(f"backend {backend!r}: choose numpy or faiss")
        self.items, self.backend, self._faiss = items, backend, None
        if backend == "faiss":
            import faiss

            self._faiss = faiss.IndexFlatIP(items.shape[1])
            self._faiss.add(np.ascontiguousarray(items, dtype=np.float32))

    def top_k(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query [D] -> (row numbers [k'], scores [k']) best first, k' = min(k, N); numpy keeps the
        lower row first among ties."""
        k = min(k, len(self.items))
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        query = np.ascontiguousarray(query, dtype=np.float32)
        if self._faiss is not None:
            scores, rows = self._faiss.search(query[None], k)
            return rows[0].astype(np.int64), scores[0]
        scores = self.items @ query
        best = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
        order = np.lexsort((best, -scores[best]))
        return best[order].astype(np.int64), scores[best[order]]


def top_k(items: np.ndarray, query: np.ndarray, k: int, backend: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """One query's exact top-k over items [N, D] (see Searcher): (row numbers, scores) best first."""
    return Searcher(items, backend).top_k(query, k)


def _faiss_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("faiss") is not None


def shared_classes(query_probs: np.ndarray | None, result_probs: np.ndarray | None, vocabulary: list[str] | None,
                   threshold: float, limit: int) -> list[dict] | None:
    """Classes both label heads predict (probability >= threshold on each side), most certain first
    (by the smaller of the two): [{"class", "query", "result"}]; None without label heads."""
    if query_probs is None or result_probs is None or vocabulary is None:
        return None
    q, r = query_probs.astype(np.float64), result_probs.astype(np.float64)
    both = np.flatnonzero((q >= threshold) & (r >= threshold))
    both = both[np.lexsort((both, -np.minimum(q[both], r[both])))][:limit]
    return [{"class": vocabulary[i], "query": round(float(q[i]), 4), "result": round(float(r[i]), 4)} for i in both]


def query_index(index: Index, query: dict[str, Any], k: int = 10, modality: str | None = None,
                threshold: float = 0.5, max_classes: int = 5, backend: str = "numpy") -> dict[str, Any]:
    """Rank the index against a query; the search result of `deteclap search --json`.

    query: {"modality": "audio" | "video", "embedding": [D] L2-normalised, "labels": [C] or None,
    plus any descriptive fields ("key", "file")}. `modality` is what to rank (default: the other one).
    A query taken from the index by key does not retrieve itself in its own modality.
    Returns {"query": {...}, "results": [{"rank", "key", "score", "source", "shared_classes", ...}]}.
    """
    target = modality or ("video" if query["modality"] == "audio" else "audio")
    if target not in ("audio", "video"):
        raise ValueError(f"modality {target!r}: choose audio or video")
    if not index.rows:
        raise IndexFolderError(f"{index.root} holds no item (see its {FAILURES})")
    own = index.keys.get(query.get("key")) if target == query["modality"] else None
    rows, scores = index.searcher(target, backend).top_k(query["embedding"], k + (own is not None))
    labels = index.arrays[f"labels_{target}"]
    results = []
    for row, score in zip(rows.tolist(), scores.tolist()):
        if row == own:
            continue
        meta = index.rows[row]
        results.append({"rank": len(results) + 1, "key": meta["key"], "score": round(float(score), 6),
                        "source": meta.get("source"), "modality": target, "classes": meta.get("classes", []),
                        "shared_classes": shared_classes(query.get("labels"), None if labels is None else labels[row],
                                                         index.vocabulary, threshold, max_classes)})
    shown = {k_: v for k_, v in query.items() if k_ not in ("embedding", "labels")}
    return {"query": dict(shown, ranked=target, index=str(index.root), count=len(index.rows)),
            "results": results[:k]}


def query_from_key(index: Index, key: str, modality: str) -> dict[str, Any]:
    """The query of an item already in the index (its `modality` embedding). Raises KeyError naming the key."""
    if key not in index.keys:
        raise KeyError(f"key {key!r} is not in {index.root} ({len(index.rows)} items; keys look like "
                       f"{[r['key'] for r in index.rows[:3]]})")
    row = index.keys[key]
    labels = index.arrays[f"labels_{modality}"]
    meta = index.rows[row]
    return {"modality": modality, "key": key, "source": meta.get("source"), "classes": meta.get("classes", []),
            "embedding": np.asarray(index.arrays[modality][row], np.float32),
            "labels": None if labels is None else np.asarray(labels[row], np.float32)}


def print_results(result: dict[str, Any], out: Any = None) -> None:
    """The results as a table: rank, score, key, source, shared classes with both probabilities."""
    out = out or sys.stdout
    query = result["query"]
    what = query.get("key") or query.get("file")
    print(f"query: {query['modality']} of {what}  ->  {query['ranked']} of {query['count']} items in {query['index']}",
          file=out)
    for r in result["results"]:
        line = f"{r['rank']:>4}  {r['score']:+.4f}  {r['key']}  {r['source']}"
        if r["shared_classes"] is not None:
            shared = ", ".join(f"{c['class']} ({c['query']:.2f}/{c['result']:.2f})" for c in r["shared_classes"])
            line += f"  | shared: {shared or '-'}"
        print(line, file=out)
