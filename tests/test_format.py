"""deteclap.format: the key rule, the index (one writer, one reader, the check against its tar),
dataset.json (one reader, one writer, its format version), atomic writes, on real tar files."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from deteclap import format as fmt
from tests.conftest import needs_wds2idx


@pytest.mark.parametrize("name, key, ext", [
    ("key.mp4", "key", "mp4"),
    ("dir/key.mp4", "dir/key", "mp4"),
    ("./key.mp4", "./key", "mp4"),
    ("a.b.c", "a", "b.c"),
    ("k.clap.f16", "k", "clap.f16"),
    ("d.x/key.flac", "d.x/key", "flac"),     # a dot in a folder name is not the key's end
    ("noext", "noext", ""),
])
def test_key_rule_is_webdatasets(name, key, ext):
    assert fmt.split_member_name(name) == (key, ext)


def test_key_rule_agrees_with_webdataset_itself():
    from webdataset.tariterators import base_plus_ext

    for name in ["key.mp4", "dir/key.mp4", "./key.mp4", "a.b.c", "k.clap.f16", "d.x/key.flac"]:
        assert base_plus_ext(name) == fmt.split_member_name(name), name


def test_member_names_and_score_members():
    assert fmt.member_name("dir/k", "mp4") == "dir/k.mp4"
    with pytest.raises(fmt.FormatError, match="dot"):
        fmt.member_name("a.b", "mp4")
    assert fmt.score_member("clap") == "clap.f16"
    assert fmt.is_score_member("clap.f16") and not fmt.is_score_member("f16") and not fmt.is_score_member("mp4")
    assert fmt.labeller_of("truth_audio.f16") == "truth_audio"
    with pytest.raises(ValueError):
        fmt.score_member("a.b")
    assert fmt.make_key("a/b c.d") == "a_b_c_d"
    long = fmt.make_key("x" * 200)
    assert len(long) == fmt.spec.MAX_KEY_LENGTH and long != fmt.make_key("x" * 199)
    assert fmt.shard_name("train", 3) == "train-000003"


def test_frame_table_round_trip():
    table = fmt.encode_frame_table(224, 160, [(48, 1000), (1048, 900)])
    assert fmt.decode_frame_table(table) == (224, 160, [(48, 1000), (1048, 900)])
    with pytest.raises(fmt.FormatError):
        fmt.decode_frame_table(b"\0" * 12)


def _samples():
    return [("a", {"mp4": b"v" * 700, "flac": b"f" * 10, "json": b"{}"}), ("b", {"cls": b"\1", "json": b"{}"})]


def test_write_tar_and_index_round_trip(tmp_path):
    tar = tmp_path / "train-000000.tar"
    entries = fmt.write_tar(tar, _samples())
    idx = fmt.write_index(fmt.index_path(tar), entries)
    assert idx == tmp_path / "train-000000.idx"
    assert fmt.read_index(idx) == entries == fmt.tar_index_samples(tar)
    assert fmt.check_index(tar) is None
    assert fmt.index_sample_count(tar) == 2
    assert list(fmt.index_entries(tar)) == ["a", "b"]
    # members in the fixed order, and each entry's offset / size address its member's bytes
    data = tar.read_bytes()
    for (key, members), sample in zip(_samples(), entries):
        assert [e[0] for e in sample] == sorted(members, key=fmt.MEMBER_EXTENSIONS.index)
        for ext, offset, size, name in sample:
            assert name == f"{key}.{ext}" and data[offset:offset + size] == members[ext]
    assert [(k, m) for k, m in fmt.iter_tar_samples(tar)] == [(k, dict(m)) for k, m in _samples()]


def test_check_index_names_a_stale_or_missing_index(tmp_path):
    tar, other = tmp_path / "t.tar", tmp_path / "o.tar"
    fmt.write_index(fmt.index_path(tar), fmt.write_tar(tar, _samples()))
    fmt.write_tar(other, _samples()[:1])
    fmt.index_path(tar).replace(fmt.index_path(other))          # o.idx now describes t.tar
    assert "t.idx: missing" in fmt.check_index(tar)
    assert "does not match o.tar" in fmt.check_index(other)


@pytest.mark.parametrize("text, problem", [("v1.1 1\nmp4 512 3 a.mp4\n", "not a v1.2"),
                                           ("v1.2 2\nmp4 512 3 a.mp4\n", "header says 2"),
                                           ("v1.2 1\nmp4 512 a.mp4\n", "groups of"),
                                           ("v1.2 1\nmp4 x 3 a.mp4\n", "not a number"), ("", "not a v1.2")])
def test_read_index_refuses_bad_indexes(tmp_path, text, problem):
    (tmp_path / "x.idx").write_text(text)
    with pytest.raises(fmt.FormatError, match=problem):
        fmt.read_index(tmp_path / "x.idx")


def test_members_under_a_folder_group_by_full_key(tmp_path):
    """`tar -C d .` style names: `./k.mp4`; and two folders holding the same base name stay apart."""
    tar = tmp_path / "t.tar"
    with tarfile.open(tar, "w") as out:
        for name in ["./k.mp4", "./k.json", "a/k.mp4", "b/k.mp4"]:
            info = tarfile.TarInfo(name)
            info.size = 1
            out.addfile(info, io.BytesIO(b"x"))
    assert [key for key, _ in fmt.read_tar_samples(tar)] == ["./k", "a/k", "b/k"]
    assert [key for key, _ in fmt.iter_tar_samples(tar)] == ["./k", "a/k", "b/k"]
    assert list(fmt.index_entries(tar)) == ["./k", "a/k", "b/k"]
    fmt.write_index(fmt.index_path(tar), fmt.tar_index_samples(tar))
    assert list(fmt.index_entries(tar)) == ["./k", "a/k", "b/k"]          # the same keys from the index


def test_dataset_json_round_trip_and_version(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m deteclap.shard"):
        fmt.load_dataset_json(tmp_path)
    meta = {"format_version": fmt.FORMAT_VERSION, "shards": [], "classes": ["a"], "label_vocabulary": ["x"],
            "labellers": [], "encoding": {}}
    fmt.save_dataset_json(tmp_path, meta)
    assert fmt.load_dataset_json(tmp_path) == meta
    assert fmt.dataset_problems(meta) == []
    assert json.loads((tmp_path / fmt.DATASET_JSON).read_text())["format_version"] == 2
    assert not list(tmp_path.glob(".*.tmp"))
    newer = dict(meta, format_version=fmt.FORMAT_VERSION + 1)
    assert any("format_version 3" in p for p in fmt.dataset_problems(newer))
    assert fmt.dataset_problems({"shards": [{"tar": "x.tar"}]}) == \
        [f"dataset.json: missing `{k}`" for k in fmt.DATASET_KEYS if k != "shards"] + \
        ["dataset.json: shard row {'tar': 'x.tar'} lacks ['split', 'index', 'samples']"]
    (tmp_path / fmt.DATASET_JSON).write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        fmt.load_dataset_json(tmp_path)


def test_list_tars_reads_dataset_json_or_the_split_names(tmp_path):
    for name in ["train-000000.tar", "train-000001.tar", "test-000000.tar"]:
        fmt.write_tar(tmp_path / name, _samples())
    assert [p.name for p in fmt.list_tars(tmp_path, "train")] == ["train-000000.tar", "train-000001.tar"]
    assert len(fmt.list_tars(tmp_path)) == 3
    rows = [{"split": "train", "tar": "train-000001.tar", "index": "train-000001.idx", "samples": 2}]
    fmt.save_dataset_json(tmp_path, {"shards": rows})
    assert fmt.list_tars(tmp_path, "train") == [tmp_path / "train-000001.tar"]
    assert fmt.list_tars(tmp_path, "test") == []
    for outside in ["../../x.tar", "/etc/passwd", "a/../../x.tar"]:
        escaping = [{"split": "train", "tar": outside, "index": "train-000001.idx", "samples": 2}]
        fmt.save_dataset_json(tmp_path, {"shards": escaping})
        with pytest.raises(fmt.FormatError, match="outside the shard folder"):
            fmt.list_tars(tmp_path, "train")
        assert any("outside the shard folder" in p for p in fmt.dataset_problems({"shards": escaping}))


def test_write_atomic_replaces_whole(tmp_path):
    path = tmp_path / "f.bin"
    fmt.write_atomic(path, b"one")
    fmt.write_atomic(path, b"two")
    assert path.read_bytes() == b"two" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    assert fmt.tmp_path(Path("/x/f.bin")) == Path("/x/.f.bin.tmp")


def test_plain_webdataset_reads_our_shards(labelled_shards):
    """Our shards are standard WebDataset: `webdataset.WebDataset` yields the same samples, with the same
    keys and members, as deteclap.format reads (label scores included), and decodes them."""
    import numpy as np
    import webdataset as wds

    tars = fmt.list_tars(labelled_shards, "train")
    ours = [(key, members) for tar in tars for key, members in fmt.iter_tar_samples(tar)]
    dataset = wds.WebDataset([str(t) for t in tars], shardshuffle=False, empty_check=False)
    theirs = list(dataset)
    assert [s["__key__"] for s in theirs] == [key for key, _ in ours] and len(ours) == 8
    for sample, (_, members) in zip(theirs, ours):
        assert {ext: data for ext, data in sample.items() if not ext.startswith("__")} == members
    # webdataset's default decoders read `.cls` as a text integer; ours is raw multi-hot bytes, so a
    # user decodes only the members that are standard (json) and reads the raw ones with numpy
    reader = wds.WebDataset([str(tars[0])], shardshuffle=False).decode(only=["json"])
    meta, scores, cls = next(iter(reader.to_tuple("json", "truth_audio.f16", "cls")))
    assert np.frombuffer(cls, np.uint8).sum() == 1
    assert meta["key"] == ours[0][0]
    vocabulary = fmt.load_dataset_json(labelled_shards)["label_vocabulary"]
    assert np.frombuffer(scores, fmt.SCORE_DTYPE).shape == (len(vocabulary),)


@needs_wds2idx
def test_wds2idx_agrees_with_our_index_after_labelling(labelled_shards, tmp_path):
    """DALI's wds2idx writes the index our writer wrote, also after labelling rewrote the tars."""
    import wds2idx

    for tar in fmt.list_tars(labelled_shards):
        with wds2idx.IndexCreator(str(tar), str(tmp_path / "x.idx"), verbose=False) as creator:
            creator.create_index()
        assert (tmp_path / "x.idx").read_text() == fmt.index_path(tar).read_text()
        assert fmt.check_index(tar) is None


def test_wav_member_is_a_standard_wav_and_its_problems_are_named() -> None:
    """`KEY.wav`: the bytes libsndfile writes for 16-bit mono PCM (so any WAV reader opens it), read
    back as int16 without a decoder; every other layout is named by wav_problem."""

    import soundfile

    pcm = (np.sin(np.arange(16000) / 7) * 20000).astype(np.int16)
    data = fmt.encode_wav(pcm, 16000)
    buf = io.BytesIO()
    soundfile.write(buf, pcm, 16000, format="WAV", subtype="PCM_16")
    assert data == buf.getvalue() and len(data) == fmt.WAV_HEADER_BYTES + 2 * len(pcm)
    samples, rate = fmt.decode_wav(data)
    assert rate == 16000 and np.array_equal(samples, pcm)
    assert fmt.wav_problem(data[:44], len(data)) is None
    stereo = io.BytesIO()
    soundfile.write(stereo, np.stack([pcm, pcm], 1), 16000, format="WAV", subtype="PCM_16")
    float32 = io.BytesIO()
    soundfile.write(float32, pcm / 32768, 16000, format="WAV", subtype="FLOAT")
    odd = data[:40] + (len(data) - 45).to_bytes(4, "little") + data[44:-1]   # its header agrees
    for bad, words in ((data[:-1], "truncated"), (odd, "odd count"), (data[:20], "shorter than"),
                       (b"x" * 100, "not a canonical"), (stereo.getvalue(), "mono"),
                       (float32.getvalue(), "not a canonical")):
        with pytest.raises(fmt.FormatError, match=words):
            fmt.decode_wav(bad)
    assert fmt.audio_ext("pcm") == "wav" and fmt.audio_ext("flac") == "flac"
    with pytest.raises(fmt.FormatError, match="known formats"):
        fmt.audio_ext("mp3")
