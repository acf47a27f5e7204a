"""deteclap.synth: determinism, truth.jsonl contents, real H.264 + AAC stereo files."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from deteclap.synth import HEARD_DISTRACTORS, SEEN_DISTRACTORS, SUPER_CLASSES, class_names, generate, main

VOCAB_PATH = Path(__file__).parents[1] / "deteclap" / "assets" / "oiv7_classes.txt"


def _vocabulary() -> set[str]:
    return set(VOCAB_PATH.read_text().splitlines())


def test_class_structure_uses_oiv7_names():
    vocab = _vocabulary()
    assert len(SUPER_CLASSES) >= 3
    for super_name, (_, names) in SUPER_CLASSES.items():
        assert len(names) >= 4
        assert super_name in vocab and set(names) <= vocab
    assert set(SEEN_DISTRACTORS) <= vocab and set(HEARD_DISTRACTORS) <= vocab
    assert len(set(class_names())) == len(class_names())


def test_deterministic_whatever_the_workers(tmp_path):
    kwargs = dict(seconds=1.0, seed=3, size=(48, 32), fps=8)
    rows_a = generate(tmp_path / "a", 4, workers=1, **kwargs)
    rows_b = generate(tmp_path / "b", 4, workers=2, **kwargs)
    assert rows_a == rows_b
    for row in rows_a:
        assert (tmp_path / "a" / row["file"]).read_bytes() == (tmp_path / "b" / row["file"]).read_bytes()
    rows_c = generate(tmp_path / "c", 4, **{**kwargs, "seed": 4})
    assert any((tmp_path / "a" / r["file"]).read_bytes() != (tmp_path / "c" / r["file"]).read_bytes()
               for r in rows_c)


def test_truth_file_matches_clips(synth_dir):
    rows = [json.loads(line) for line in (synth_dir / "truth.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    assert len({r["class"] for r in rows}) == 8            # balanced: 8 clips, 8 different classes
    for row in rows:
        assert set(row) == {"file", "id", "class", "super_class", "seen", "heard"}
        assert row["class"] in SUPER_CLASSES[row["super_class"]][1]
        assert row["class"] in row["seen"] or row["class"] in row["heard"]
        assert set(row["seen"]) - {row["class"]} <= set(SEEN_DISTRACTORS)
        assert set(row["heard"]) - {row["class"]} <= set(HEARD_DISTRACTORS)
        with av.open(str(synth_dir / row["file"])) as container:
            video, audio = container.streams.video[0], container.streams.audio[0]
            assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
            assert (video.width, video.height) == (64, 48) and audio.channels == 2
            chunks = [f.to_ndarray() for f in container.decode(audio)]
        wave = np.concatenate(chunks, axis=1)
        if row["heard"]:   # the two channels are different mixes
            assert np.abs(wave[0] - wave[1]).mean() > 0.01 * np.abs(wave[0]).mean()


def test_cli_writes_files(tmp_path, capsys):
    assert main([str(tmp_path), "--clips", "2", "--seconds", "0.5", "--size", "32x32", "--fps", "4"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth_00000.mp4", "synth_00001.mp4", "truth.jsonl"]
    assert "wrote 2 clips" in capsys.readouterr().out


def test_difficulty_scales_the_nuisances_only(tmp_path):
    kwargs = dict(seconds=0.5, seed=3, size=(48, 32), fps=4)
    easy = generate(tmp_path / "easy", 30, difficulty=0.0, **kwargs)
    full = generate(tmp_path / "full", 30, **kwargs)
    assert [r["class"] for r in easy] == [r["class"] for r in full]          # the same clips, class by class
    for row in easy:                                                         # the object alone, seen and heard
        assert row["seen"] == [row["class"]] and row["heard"] == [row["class"]]
    assert any(len(r["seen"]) > 1 or len(r["heard"]) > 1 for r in full)
    assert any(r["class"] not in r["seen"] or r["class"] not in r["heard"] for r in full)
    explicit = generate(tmp_path / "explicit", 2, difficulty=1.0, **kwargs)  # 1 is the default: same files
    for row in explicit:
        assert (tmp_path / "explicit" / row["file"]).read_bytes() == (tmp_path / "full" / row["file"]).read_bytes()
    with pytest.raises(ValueError, match="difficulty"):
        generate(tmp_path / "bad", 1, difficulty=1.5, **kwargs)
