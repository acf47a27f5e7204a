"""`deteclap embed` / `deteclap search` and the inference API on the synthetic clips and their shards,
with a random-weight tiny model saved as train.py lays out a run (RUN/config.json,
RUN/checkpoints/step_N/model.pt, checkpoints/latest): videos embed exactly as their shard samples,
embed + search reproduce deteclap.evaluate's recalls, resume / incremental runs, refusals of
another model's index, bad inputs, a checkpoint without label heads, and exact top-k search."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from deteclap.config import load_config

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tiny.json"
STEP = "step_00000001"


def make_run(folder: Path, label_classes: int = 601, seed: int = 0) -> Path:
    """A run folder as deteclap/train.py leaves it, holding a random-weight tiny model."""
    from deteclap.model import build_model

    cfg = load_config(CONFIG)
    torch.manual_seed(seed)
    (folder / "checkpoints" / STEP).mkdir(parents=True)
    torch.save(build_model(cfg.model, label_classes).state_dict(), folder / "checkpoints" / STEP / "model.pt")
    (folder / "checkpoints" / "latest").write_text(STEP)
    (folder / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def model(run_dir):
    from deteclap.inference import load

    return load(run_dir, device="cpu")


@pytest.fixture(scope="module")
def shard_index(shard_dir, model, tmp_path_factory) -> Path:
    """The synthetic shards embedded by the tiny model."""
    from deteclap.index import build_index

    out = tmp_path_factory.mktemp("index") / "index"
    summary = build_index(shard_dir, out, model)
    assert summary == {"count": 8, "embedded_now": 8, "failed": 0, "reasons": {}, "out": str(out)}
    return out


def arrays(root: Path) -> dict:
    from deteclap.index import load_index

    index = load_index(root)
    return {"keys": [row["key"] for row in index.rows], **index.arrays}


# ----------------------------------------------------------------------------------------------
def test_videos_embed_exactly_as_their_shard_samples(synth_dir, shard_index, model, tmp_path):
    from deteclap.embed import main

    out = tmp_path / "videos"
    assert main([str(synth_dir / "truth.jsonl"), "--checkpoint", str(model.checkpoint), "--out", str(out),
                 "--quiet"]) == 0
    from_videos, from_shards = arrays(out), arrays(shard_index)
    assert from_videos["keys"] == from_shards["keys"] == [f"synth_{i:05d}" for i in range(8)]
    for name in ("audio", "video", "labels_audio", "labels_video"):
        assert from_videos[name].shape == from_shards[name].shape
        assert np.array_equal(from_videos[name], from_shards[name]), name
    assert np.allclose(np.linalg.norm(from_shards["audio"], axis=1), 1, atol=1e-5)
    assert from_shards["labels_audio"].shape == (8, 601) and from_shards["labels_audio"].dtype == np.float16
    info = json.loads((out / "index.json").read_text())
    assert info["count"] == 8 and info["dim"] == 96 and len(info["label_vocabulary"]) == 601
    assert info["checkpoint"] == str(model.checkpoint) and info["checkpoint_sha256"] == model.digest
    assert (out / "failures.jsonl").read_text() == ""
    rows = [json.loads(line) for line in (out / "parts" / "part-000000" / "meta.jsonl").read_text().splitlines()]
    truth = {json.loads(line)["id"]: json.loads(line)["class"] for line in (synth_dir / "truth.jsonl").open()}
    assert [row["classes"] for row in rows] == [[truth[row["key"]]] for row in rows]
    assert all(row["duration"] == pytest.approx(3.0) and row["start"] == 0.0 for row in rows)


def test_the_python_api_matches_the_index(synth_dir, shard_index, run_dir, tmp_path):
    import soundfile

    import deteclap
    from deteclap.inference import audio_file_wave

    model = deteclap.load(run_dir / "checkpoints" / STEP / "model.pt", device="cpu")   # finds RUN/config.json
    index = arrays(shard_index)
    clip = synth_dir / "synth_00003.mp4"
    emb = deteclap.embed_video_file(clip)
    np.testing.assert_allclose(emb.video, index["video"][3], atol=1e-5)
    np.testing.assert_allclose(emb.audio, index["audio"][3], atol=1e-5)
    np.testing.assert_allclose(emb.labels_video, index["labels_video"][3].astype(np.float32), atol=2e-3)
    # the soundtrack the model heard, as a plain 16 kHz audio file
    wav = tmp_path / "sound.wav"
    soundfile.write(wav, model.video_clip(clip).wave.numpy(), 16000, subtype="PCM_16")
    # stored again as 16-bit (x * 32767, read back as / 32768): at most one step off, above 0.5 only
    np.testing.assert_allclose(audio_file_wave(wav), model.video_clip(clip).wave.numpy(), rtol=0, atol=2 ** -15)
    np.testing.assert_allclose(deteclap.embed_audio_file(wav).audio, index["audio"][3], atol=1e-4)
    assert deteclap.embed_audio_file(wav).video is None
    score = deteclap.similarity(clip, synth_dir / "synth_00005.mp4")
    assert -1 <= score <= 1
    assert score == pytest.approx(float(index["video"][3] @ index["audio"][5]), abs=1e-5)
    assert model.similarity(clip, synth_dir / "synth_00005.mp4") == score


def test_embed_and_search_reproduce_evaluate_recalls(shard_dir, shard_index, model, run_dir, tmp_path):
    from deteclap.evaluate import evaluate
    from deteclap.search import main

    cfg = load_config(run_dir / "config.json", [f"data.eval_shards={shard_dir}", "data.eval_split=train",
                                                "data.loader=reference", "data.num_workers=0", "eval.per_class=0"])
    expected = evaluate(cfg, run_dir)
    assert expected["num_clips"] == 8
    keys = arrays(shard_index)["keys"]
    for query_side, direction in (("audio", "a2v"), ("video", "v2a")):
        ranks = []
        for key in keys:
            out = tmp_path / f"{direction}-{key}.json"
            assert main([str(shard_index), "--key", key, "--query-modality", query_side, "-k", "8",
                         "--json", str(out)]) == 0
            result = json.loads(out.read_text())
            assert result["query"]["modality"] == query_side and len(result["results"]) == 8
            assert [r["rank"] for r in result["results"]] == list(range(1, 9))
            scores = [r["score"] for r in result["results"]]
            assert scores == sorted(scores, reverse=True)
            ranks.append([r["key"] for r in result["results"]].index(key))
        for k in (1, 5, 10):
            assert 100 * np.mean(np.array(ranks) < k) == expected[direction][f"r{k}"], (direction, k)
        assert np.median(ranks) + 1 == expected[direction]["median_rank"]


def test_resume_after_a_kill_and_incremental_runs(synth_dir, model, tmp_path, monkeypatch):
    from deteclap.index import build_index

    src = tmp_path / "videos"
    src.mkdir()
    for i in range(5):
        shutil.copy(synth_dir / f"synth_{i:05d}.mp4", src)
    full = tmp_path / "full"
    build_index(src, full, model, part_size=2)

    out = tmp_path / "index"
    real = model.embed_clips
    calls = []

    def dies_on_the_third_batch(clips):
        calls.append(len(clips))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(clips)

    monkeypatch.setattr(model, "embed_clips", dies_on_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        build_index(src, out, model, batch_size=1, part_size=2)
    monkeypatch.undo()
    assert json.loads((out / "index.json").read_text())["count"] == 2          # one complete part
    (out / "parts" / ".part-000001.tmp").mkdir()                               # a half-written part
    summary = build_index(src, out, model, part_size=2)
    assert summary["embedded_now"] == 3 and summary["count"] == 5
    assert not list((out / "parts").glob(".*"))
    resumed, once = arrays(out), arrays(full)
    assert resumed["keys"] == once["keys"]
    assert np.array_equal(resumed["audio"], once["audio"]) and np.array_equal(resumed["video"], once["video"])

    for i in range(5, 8):                                                      # the folder grows
        shutil.copy(synth_dir / f"synth_{i:05d}.mp4", src)
    summary = build_index(src, out, model, part_size=2)
    assert summary["embedded_now"] == 3 and summary["count"] == 8
    grown = arrays(out)
    assert grown["keys"] == [f"synth_{i:05d}" for i in range(8)]
    assert np.array_equal(grown["audio"][:5], once["audio"])
    assert build_index(src, out, model)["embedded_now"] == 0


def test_decoding_workers_give_the_same_index(synth_dir, model, tmp_path):
    from deteclap.index import build_index

    src = tmp_path / "videos"
    src.mkdir()
    for i in (1, 4, 6):
        shutil.copy(synth_dir / f"synth_{i:05d}.mp4", src)
    (src / "broken.mp4").write_text("not a video\n" * 10)
    one, two = (build_index(src, tmp_path / f"w{n}", model, workers=n) for n in (1, 2))
    assert one["count"] == two["count"] == 3 and one["reasons"] == two["reasons"] == {"not_media": 1}
    serial, parallel = arrays(tmp_path / "w1"), arrays(tmp_path / "w2")
    assert serial["keys"] == parallel["keys"] and np.array_equal(serial["video"], parallel["video"])
    assert np.array_equal(serial["labels_audio"], parallel["labels_audio"])


def test_an_index_of_another_checkpoint_or_config_is_refused(shard_dir, shard_index, run_dir, tmp_path, capsys):
    from deteclap.embed import main

    index = tmp_path / "index"
    shutil.copytree(shard_index, index)
    before = {p: p.read_bytes() for p in index.rglob("*") if p.is_file()}
    other = make_run(tmp_path / "other", seed=1)
    assert main([str(shard_dir), "--checkpoint", str(other), "--out", str(index), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint sha256" in err and str(other) in err
    assert main([str(shard_dir), "--checkpoint", str(run_dir), "--out", str(index), "--quiet",
                 "--set", "data.eval_frame=3"]) == 2
    assert "data.eval_frame: 5 -> 3" in capsys.readouterr().err
    assert main([str(shard_dir), "--checkpoint", str(run_dir), "--out", str(index), "--quiet",
                 "--set", "model.modality_specific_depth=1"]) == 2
    assert "model.modality_specific_depth: 2 -> 1" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in index.rglob("*") if p.is_file()} == before
    # the same model adds nothing and changes nothing but index.json's rewrite
    assert main([str(shard_dir), "--checkpoint", str(run_dir), "--out", str(index), "--quiet"]) == 0
    assert "0 embedded now" in capsys.readouterr().out


def test_bad_inputs_are_failures_with_the_shard_writers_reasons(synth_dir, model, tmp_path, capsys):
    from deteclap.embed import main
    from deteclap.synth import make_broken_files

    src = tmp_path / "videos"
    src.mkdir()
    shutil.copy(synth_dir / "synth_00000.mp4", src)
    shutil.copy(synth_dir / "synth_00001.mp4", src)
    make_broken_files(src, synth_dir / "synth_00000.mp4", seconds=1.5, size=(64, 48))
    out = tmp_path / "index"
    argv = [str(src), "--checkpoint", str(model.checkpoint), "--out", str(out), "--quiet"]
    assert main(argv + ["--strict"]) == 1
    assert "2 items" in capsys.readouterr().out
    failures = {row["source"]: row["reason"] for row in map(json.loads, (out / "failures.jsonl").open())}
    assert failures == {"broken_audio_only.mp4": "no_video", "broken_video_only.mp4": "no_audio",
                        "broken_empty.mp4": "empty_file", "broken_text.mp4": "not_media",
                        "broken_truncated.mp4": failures["broken_truncated.mp4"]}
    assert failures["broken_truncated.mp4"] in ("corrupt", "truncated")
    assert json.loads((out / "index.json").read_text())["count"] == 2
    # failed inputs are tried again and stay listed; the good ones are not embedded twice
    assert main(argv) == 0
    assert "0 embedded now" in capsys.readouterr().out
    assert len((out / "failures.jsonl").read_text().splitlines()) == 5


def test_missing_checkpoint_and_wrong_shape_give_clear_errors(shard_dir, run_dir, tmp_path, capsys):
    from deteclap.embed import main

    out = tmp_path / "index"
    assert main([str(shard_dir), "--checkpoint", str(tmp_path / "nothing.pt"), "--out", str(out)]) == 2
    assert "nothing.pt" in capsys.readouterr().err
    assert main([str(shard_dir), "--checkpoint", str(run_dir), "--out", str(out), "--quiet",
                 "--config", str(CONFIG), "--set", "model.embed_dim=64"]) == 2
    err = capsys.readouterr().err
    assert "shape mismatch" in err and "--config" in err
    assert main([str(tmp_path / "no_such_src"), "--checkpoint", str(run_dir), "--out", str(out)]) == 2
    assert "no_such_src" in capsys.readouterr().err
    assert main([str(shard_dir), "--checkpoint", str(run_dir), "--out", str(out), "--split", "test"]) == 2
    assert "no shard of split 'test'" in capsys.readouterr().err
    assert not out.exists()


def test_a_checkpoint_without_label_heads_has_no_explanation(shard_dir, tmp_path, capsys):
    from deteclap.__main__ import main as deteclap_main

    run = make_run(tmp_path / "run", label_classes=0)
    out = tmp_path / "index"
    assert deteclap_main(["embed", str(shard_dir), "--checkpoint", str(run), "--out", str(out), "--quiet"]) == 0
    assert "no label heads" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "parts" / "part-000000").iterdir()) == ["audio.npy", "meta.jsonl",
                                                                                 "video.npy"]
    assert json.loads((out / "index.json").read_text())["label_vocabulary"] is None
    result_json, page = tmp_path / "r.json", tmp_path / "r.html"
    assert deteclap_main(["search", str(out), "--key", "synth_00002", "-k", "3", "--json", str(result_json),
                          "--html", str(page)]) == 0
    printed = capsys.readouterr().out
    assert "shared" not in printed and "synth_00002" in printed
    result = json.loads(result_json.read_text())
    assert [r["shared_classes"] for r in result["results"]] == [None] * 3
    assert "shared class" not in page.read_text()


def test_search_by_file_and_by_key_prints_the_shared_classes(synth_dir, shard_index, capsys, tmp_path):
    from deteclap.search import main

    out = tmp_path / "r.json"
    assert main([str(shard_index), "--audio", str(synth_dir / "synth_00004.mp4"), "-k", "3", "--json", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    by_file = json.loads(out.read_text())
    assert set(by_file["results"][0]) >= {"rank", "key", "score", "source", "shared_classes"}
    assert by_file["query"]["modality"] == "audio" and by_file["query"]["ranked"] == "video"
    first = by_file["results"][0]
    assert printed[1].split()[:3] == ["1", f"{first['score']:+.4f}", first["key"]]
    for shared in first["shared_classes"]:
        assert shared["query"] >= 0.5 and shared["result"] >= 0.5 and shared["class"] in printed[1]
    # the same clip taken from the index by key ranks the same items with the same scores
    assert main([str(shard_index), "--key", "synth_00004", "-k", "3", "--json", str(out)]) == 0
    by_key = json.loads(out.read_text())
    assert [r["key"] for r in by_key["results"]] == [r["key"] for r in by_file["results"]]
    np.testing.assert_allclose([r["score"] for r in by_key["results"]], [r["score"] for r in by_file["results"]],
                               atol=1e-5)
    # within one modality the query does not retrieve itself
    assert main([str(shard_index), "--key", "synth_00004", "--modality", "audio", "-k", "7", "--json", str(out)]) == 0
    assert "synth_00004" not in [r["key"] for r in json.loads(out.read_text())["results"]]
    assert main([str(shard_index), "--key", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main([str(shard_index), "--video", str(tmp_path / "missing.mp4")]) == 2
    assert "missing_file" in capsys.readouterr().err


def test_retrieval_pages_for_the_demo(shard_dir, model, tmp_path):
    from deteclap.results_page import write_retrieval_pages

    done = write_retrieval_pages(model, shard_dir, tmp_path / "pages", num_queries=2, k=3)
    assert done["count"] == 8 and [Path(p).name for p in done["pages"]] == ["synth_00000.html", "synth_00001.html"]
    for page, result in zip(done["pages"], done["results"]):
        text = Path(page).read_text()
        assert text.count('class="card result"') == 3 and text.count("<audio") == 4 and "shared class" in text
        assert json.loads(Path(page).with_suffix(".json").read_text()) == result


def test_top_k_is_exact_with_both_backends():
    from deteclap.index import top_k

    rng = np.random.default_rng(0)
    items = rng.standard_normal((5000, 32)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    query = items[17] + 0.1 * rng.standard_normal(32).astype(np.float32)
    scores = items @ query
    rows, best = top_k(items, query, 10, backend="numpy")
    assert rows.tolist() == np.argsort(-scores, kind="stable")[:10].tolist()
    assert np.array_equal(best, scores[rows]) and rows[0] == 17
    assert top_k(items, query, 10000)[0].tolist() == np.argsort(-scores, kind="stable").tolist()
    tied = np.repeat(items[:3], 4, axis=0)                      # ties keep the lower row first
    assert top_k(tied, items[1], 4)[0].tolist() == [4, 5, 6, 7]
    pytest.importorskip("faiss")
    faiss_rows, faiss_scores = top_k(items, query, 10, backend="faiss")
    assert faiss_rows.tolist() == rows.tolist()
    np.testing.assert_allclose(faiss_scores, best, atol=1e-5)


def test_import_deteclap_does_no_work():
    import subprocess
    import sys

    code = "import sys, deteclap; assert callable(deteclap.similarity.__call__); print('torch' in sys.modules)"
    lazy = "import sys, deteclap; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout == "False\n"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "True\n"


# ----------------------------------------------------------------------------------------------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# appended to a copy of the page: reports what loaded once every audio element has its metadata
CHECK_SCRIPT = """<script>
window.addEventListener('load', async () => {
  const audios = [...document.querySelectorAll('audio')];
  await Promise.all(audios.map(a => a.readyState >= 1 ? null
    : new Promise(done => { a.onloadedmetadata = done; a.onerror = done; })));
  const out = document.createElement('pre'); out.id = 'check';
  out.textContent = JSON.stringify({results: document.querySelectorAll('.result').length,
    images: [...document.images].map(i => i.naturalWidth), durations: audios.map(a => a.duration)});
  document.body.appendChild(out);
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> tuple[str, str]:
    import subprocess

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    proc = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=120)
    return proc.stdout, proc.stderr


@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")),
                    reason="needs Debian's chromium (apt-get install chromium)")
@pytest.mark.parametrize("query", ["key", "video"])
def test_html_page_in_headless_chromium(synth_dir, shard_index, tmp_path, query):
    import re

    import PIL.Image

    from deteclap.search import main

    page = tmp_path / "page.html"
    ask = ["--key", "synth_00001"] if query == "key" else ["--video", str(synth_dir / "synth_00006.mp4")]
    assert main([str(shard_index), *ask, "-k", "4", "--html", str(page)]) == 0
    text = page.read_text()
    assert "http" not in text.replace("http-equiv", "")          # nothing fetched: the page is self-contained
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("</body>", CHECK_SCRIPT + "</body>"))
    dom, log = chromium(tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=15000",
                        "--dump-dom", checked.as_uri())
    assert "CONSOLE" not in log, log                              # no console message, no script error
    report = json.loads(re.search(r'<pre id="check">(.*?)</pre>', dom).group(1))
    assert report["results"] == 4
    # the query's frame and audio, then each result's: the frame the model saw (96 px), 3 s of audio
    assert report["images"] == [96] * 5
    assert len(report["durations"]) == 5
    assert all(d == pytest.approx(3.0, abs=0.05) for d in report["durations"])
    shot = tmp_path / "shot.png"
    chromium(tmp_path, "--window-size=1000,1400", f"--screenshot={shot}", page.as_uri())
    pixels = np.asarray(PIL.Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.std() > 10 and (pixels < 128).mean() > 0.01    # not a blank page
