"""A search result as one self-contained HTML page: the query, then the top k, each with the frame
the model saw, a playable audio snippet (what the model heard), the score and the shared classes.

Owns `clip_view` (an index row's origin -> what the model saw and heard), `write_page`, and
`write_retrieval_pages` (index + a few pages in one call, for the demo).
Everything is inlined (JPEG and FLAC as data: URIs, CSS in the page, no script), so the page opens
offline from the file system. Media come from the item's origin as the index recorded it (its
shard tar, or its video file decoded again with the shard writer's clip code); an origin that is
gone shows a note instead of the media.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from deteclap.inference import Clip, InputError, SampleDecoder, clip_members

JPEG_QUALITY = 88
SAMPLE_RATE = 16000

STYLE = """
body { font-family: sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; } .meta { color: #555; font-size: 0.9em; }
.card { display: flex; gap: 1em; align-items: flex-start; background: #fff; border: 1px solid #ddd;
        border-radius: 6px; padding: 0.8em; margin: 0.6em 0; }
.card img { width: 160px; height: 160px; object-fit: cover; border-radius: 4px; background: #000; }
.noimg { width: 160px; height: 160px; display: flex; align-items: center; justify-content: center;
         background: #eee; color: #777; font-size: 0.8em; text-align: center; border-radius: 4px; }
.query { border: 2px solid #2a6fdb; } .score { font-weight: bold; font-size: 1.1em; }
table.classes { border-collapse: collapse; font-size: 0.85em; margin-top: 0.4em; }
table.classes td, table.classes th { border: 1px solid #ddd; padding: 2px 6px; }
"""


def _tar_members(tar: str, key: str) -> dict[str, bytes]:
    from deteclap.format import index_entries

    entries = index_entries(Path(tar)).get(key)
    if not entries:
        raise InputError(tar, "missing_member", f"no sample {key!r} in the tar")
    with open(tar, "rb") as fh:
        out = {}
        for ext, offset, size, _ in entries:
            fh.seek(offset)
            out[ext] = fh.read(size)
    return out


def clip_view(origin: dict[str, Any], decoder: SampleDecoder) -> Clip:
    """An index row's `origin` ({"tar", "key"} or {"file", "start", "seconds"}) -> the Clip the model
    saw. Raises InputError (or OSError) when the origin cannot be read any more."""
    if "tar" in origin:
        members = _tar_members(origin["tar"], origin["key"])
        return decoder(members, origin["tar"], origin["key"])
    members = clip_members(origin["file"], origin.get("start", 0.0), origin.get("seconds", 10.0))
    return decoder(members, origin["file"], "item")


def _jpeg_uri(frame) -> str:
    """uint8 [3, H, W] tensor -> data:image/jpeg URI."""
    import PIL.Image

    buf = io.BytesIO()
    image = PIL.Image.fromarray(np.ascontiguousarray(np.asarray(frame).transpose(1, 2, 0)))
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _flac_uri(wave) -> str:
    """float32 [samples] at 16 kHz -> data:audio/flac URI (16-bit, as the shards store it)."""
    import soundfile

    pcm = np.round(np.clip(np.asarray(wave), -1.0, 1.0) * 32767).astype(np.int16)
    buf = io.BytesIO()
    soundfile.write(buf, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return "data:audio/flac;base64," + base64.b64encode(buf.getvalue()).decode()


def _media(clip: Clip | None, problem: str | None) -> str:
    if clip is None:
        return f'<div class="noimg">media unavailable<br>{html.escape(problem or "")}</div>'
    parts = []
    if clip.frame is not None:
        parts.append(f'<img alt="frame the model saw" src="{_jpeg_uri(clip.frame)}">')
    else:
        parts.append('<div class="noimg">audio only</div>')
    if clip.wave is not None:
        parts.append(f'<audio controls preload="metadata" src="{_flac_uri(clip.wave)}"></audio>')
    return '<div class="media">' + "<br>".join(parts) + "</div>"


def _classes_table(shared: list[dict] | None) -> str:
    if shared is None:                        # no label heads: the explanation column is absent
        return ""
    if not shared:
        return '<div class="meta">no shared label classes</div>'
    rows = "".join(f"<tr><td>{html.escape(c['class'])}</td><td>{c['query']:.2f}</td><td>{c['result']:.2f}</td></tr>"
                   for c in shared)
    return f'<table class="classes"><tr><th>shared class</th><th>query</th><th>result</th></tr>{rows}</table>'


def render_page(result: dict[str, Any], query_clip: Clip | None, result_clips: list[tuple[Clip | None, str | None]]
                ) -> str:
    """The page's HTML: `result` as query_index returns it, the query's Clip, one (Clip, problem) per result."""
    query = result["query"]
    name = html.escape(str(query.get("key") or query.get("file")))
    cards = []
    for item, (clip, problem) in zip(result["results"], result_clips):
        classes = ", ".join(item.get("classes") or [])
        cards.append(
            f'<div class="card result" data-rank="{item["rank"]}">{_media(clip, problem)}<div>'
            f'<div><span class="score">#{item["rank"]} &nbsp; {item["score"]:+.4f}</span></div>'
            f'<div>{html.escape(item["key"])}</div><div class="meta">{html.escape(str(item["source"]))}'
            f'{" &middot; " + html.escape(classes) if classes else ""}</div>'
            f'{_classes_table(item["shared_classes"])}</div></div>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>deteclap search: {name}</title><style>{STYLE}</style></head><body>'
            f'<h1>{html.escape(query["modality"])} query: {name}</h1>'
            f'<div class="card query">{_media(query_clip, None)}<div>'
            f'<div class="meta">{html.escape(str(query.get("source") or query.get("file") or ""))}</div>'
            f'<div class="meta">ranked: {html.escape(query["ranked"])} of {query["count"]} items in '
            f'{html.escape(query["index"])}</div></div></div>'
            f'<h2>top {len(result["results"])}</h2>{"".join(cards)}</body></html>\n')


def write_page(path: str | Path, result: dict[str, Any], query_clip: Clip | None, rows: list[dict[str, Any]],
               decoder: SampleDecoder) -> Path:
    """Write the page for `result` (rows: the index metadata rows of its results, in order), atomically."""
    views: list[tuple[Clip | None, str | None]] = []
    for row in rows:
        try:
            views.append((clip_view(row["origin"], decoder), None))
        except (InputError, OSError, KeyError) as err:
            views.append((None, str(err)))
    text = render_page(result, query_clip, views)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_retrieval_pages(model: Any, src: str | Path, out: str | Path, num_queries: int = 3, k: int = 5,
                          query_modality: str = "audio", progress: bool = False) -> dict[str, Any]:
    """Embed SRC into OUT/index and write one page per query item, OUT/<key>.html, for the first
    `num_queries` keys of the index (their `query_modality` against the other modality), plus the
    search results as OUT/<key>.json. `model`: a LoadedModel or a checkpoint path (loaded with its
    run's config). For the demo: a few retrievals of each trained model to look at.

    Returns {"index": path, "count": items, "pages": [paths], "results": [search results]}.
    """
    from deteclap.index import build_index, load_index, query_from_key, query_index
    from deteclap.inference import LoadedModel, load

    model = model if isinstance(model, LoadedModel) else load(model)
    out = Path(out)
    build_index(src, out / "index", model, progress=progress)
    index = load_index(out / "index")
    pages, results = [], []
    for row in index.rows[:num_queries]:
        result = query_index(index, query_from_key(index, row["key"], query_modality), k)
        hits = [index.rows[index.keys[r["key"]]] for r in result["results"]]
        try:
            query_clip = clip_view(row["origin"], model.decoder)
        except (InputError, OSError):
            query_clip = None
        pages.append(write_page(out / f"{row['key']}.html", result, query_clip, hits, model.decoder))
        tmp = out / f".{row['key']}.json.tmp"
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, out / f"{row['key']}.json")
        results.append(result)
    return {"index": str(out / "index"), "count": len(index.rows), "pages": [str(p) for p in pages],
            "results": results}
