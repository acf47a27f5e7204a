"""Labelling: vocabulary, score storage in real shards, truth / CLAP / YOLO labellers, resumable CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from deteclap.labels import clap, store, truth, yolo
from deteclap.labels.vocabulary import load_vocabulary

SMALL_IMGSZ = 64             # YOLO input size in tests (speed; the shard frames are 64 pixels high)
RANDOM_CLS_BIAS = (-4.0, 1.0)  # random detector's class-logit bias: varied confidences around 2 %
TEST_CONF = 1e-4
RANDOM_GPT2_INNER = 64      # a 1-layer random GPT-2 with a thin MLP: the prompt table in seconds


@pytest.fixture
def shards(shard_dir, tmp_path) -> Path:
    """A private copy of the session shards (labelling rewrites tars)."""
    out = tmp_path / "shards"
    shutil.copytree(shard_dir, out)
    return out


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def replace_member(tar_path: Path, member_name: str, data: bytes) -> None:
    """Rewrite a tar with one member's bytes replaced (and its index regenerated)."""
    with tarfile.open(tar_path) as src:
        members = [(info, src.extractfile(info).read()) for info in src if info.isfile()]
    assert member_name in [info.name for info, _ in members]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as dst:
        for info, payload in members:
            payload = data if info.name == member_name else payload
            info.size = len(payload)
            dst.addfile(info, io.BytesIO(payload))
    store.rewrite_index(tar_path)


def test_vocabulary_is_ultralytics_open_images_v7(tmp_path):
    import yaml
    from ultralytics.utils import ROOT

    names = yaml.safe_load((ROOT / "cfg" / "datasets" / "open-images-v7.yaml").read_text())["names"]
    vocabulary = load_vocabulary()
    assert len(vocabulary) == 601
    assert vocabulary == [names[i] for i in range(len(names))]
    user = tmp_path / "vocab.txt"
    user.write_text("Dog\n\nCat\n")
    assert load_vocabulary(user) == ["Dog", "Cat"]
    user.write_text("Dog\nDog\n")
    with pytest.raises(ValueError, match="twice"):
        load_vocabulary(user)
    with pytest.raises(FileNotFoundError):
        load_vocabulary(tmp_path / "missing.txt")


def test_scores_round_trip_bit_exactly_and_verify(shards):
    from deteclap.shard import verify_shards

    meta = store.load_dataset_json(shards)
    num_classes = len(meta["label_vocabulary"])
    rng = np.random.default_rng(0)
    expected = {}
    for tar_path in store.shard_paths(shards):
        keys = [s["__key__"] for s in store.iter_samples(tar_path)]
        bits = rng.integers(0, 2**16, (len(keys), num_classes), dtype=np.uint16)
        values = bits.view(np.float16)                     # every float16 pattern, NaN and inf included
        expected.update(zip(keys, values))
        store.write_scores(tar_path, "probe", dict(zip(keys, values)))
    meta["labellers"] = ["probe"]
    store.save_dataset_json(shards, meta)
    scores = store.read_scores(shards)
    assert set(scores) == set(expected)
    for key, row in expected.items():
        assert scores[key]["probe"].dtype == np.float16
        assert np.array_equal(scores[key]["probe"].view(np.uint16), row.view(np.uint16))
    report = verify_shards(shards)                           # members, sizes and DALI index all agree
    assert report.ok, report


def test_truth_labeller_cli_matches_truth_and_is_resumable(shards, synth_dir, capsys):
    from deteclap.label import main

    argv = [str(shards), "--labellers", "truth", "--truth", str(synth_dir / "truth.jsonl"),
            "--seed", "3", "--no-progress"]
    assert main(argv) == 0
    assert "truth_audio" in capsys.readouterr().out
    before = folder_bytes(shards)
    assert main(argv) == 0                                   # resumed: nothing to do, nothing rewritten
    assert folder_bytes(shards) == before
    assert "skipped 3 already done" in capsys.readouterr().out

    meta = store.load_dataset_json(shards)
    assert meta["labellers"] == ["truth_audio", "truth_visual"]
    vocabulary = meta["label_vocabulary"]
    rows = truth.load_truth(synth_dir / "truth.jsonl")
    scores = store.read_scores(shards)
    assert set(scores) == set(rows)
    for modality, field in truth.MODALITY_FIELDS.items():
        labeller = truth.TruthLabeller(rows, vocabulary, modality, seed=3)
        for key, row in rows.items():
            present = np.zeros(len(vocabulary), bool)
            present[[vocabulary.index(n) for n in row[field]]] = True
            rng = np.random.default_rng([3, zlib.crc32(f"{modality}/{key}".encode())])
            want = truth.noisy_scores(present, labeller.noise, rng).astype(np.float16)
            assert np.array_equal(scores[key][f"truth_{modality}"], want)


def test_vocabulary_option_sets_the_classes_and_guards_stored_scores(shards, synth_dir, tmp_path, capsys):
    """--vocabulary FILE labels over the file's classes (dataset.json label_vocabulary, score members
    of 2 bytes per class); over scores stored with another vocabulary it stops without --force, and
    with --force marks every labeller's shards unlabelled before relabelling the ones it runs."""
    from deteclap.label import main
    from deteclap.synth import object_names

    vocabulary_file = tmp_path / "objects.txt"
    vocabulary_file.write_text("\n".join(object_names()) + "\n")
    truth_args = ["--labellers", "truth", "--truth", str(synth_dir / "truth.jsonl"), "--no-progress"]
    assert main([str(shards), *truth_args]) == 0                              # over the 601 classes
    assert main([str(shards), *truth_args, "--vocabulary", str(vocabulary_file)]) == 2
    assert "601-class label_vocabulary" in capsys.readouterr().err
    assert len(store.load_dataset_json(shards)["label_vocabulary"]) == 601    # nothing changed
    meta = store.load_dataset_json(shards)
    meta["labelled_shards"]["clap"] = list(meta["labelled_shards"]["truth_audio"])   # as if clap had run
    store.save_dataset_json(shards, meta)
    assert main([str(shards), *truth_args, "--vocabulary", str(vocabulary_file), "--force"]) == 0
    meta = store.load_dataset_json(shards)
    assert meta["label_vocabulary"] == object_names()
    assert meta["labelled_shards"]["clap"] == [] and len(meta["labelled_shards"]["truth_audio"]) == 3
    scores = store.read_scores(shards)
    rows = truth.load_truth(synth_dir / "truth.jsonl")
    labeller = truth.TruthLabeller(rows, object_names(), "audio", seed=0)
    for key, row in rows.items():
        present = np.isin(object_names(), row["heard"])
        rng = np.random.default_rng([0, zlib.crc32(f"audio/{key}".encode())])
        want = truth.noisy_scores(present, labeller.noise, rng)
        assert np.array_equal(scores[key]["truth_audio"], want.astype(np.float16))
    assert main([str(shards), *truth_args, "--vocabulary", str(vocabulary_file)]) == 0   # the same: a resume


def test_truth_noise_rates_cross_the_thresholds():
    rng = np.random.default_rng(0)
    present = np.zeros(601, bool)
    present[:5] = True
    for modality, threshold in (("audio", 0.5), ("visual", 0.4)):
        noise = truth.DEFAULT_NOISE[modality]
        runs = np.stack([truth.noisy_scores(present, noise, rng) for _ in range(2000)])
        recall = (runs[:, :5] >= threshold).mean()
        false_pos = (runs[:, 5:] >= threshold).mean()
        assert 0.7 < recall < 0.9                  # misses plus positives drawn just below the threshold
        assert 0.0005 < false_pos < 0.005          # false positives around the configured rate
        assert ((runs >= 0) & (runs <= 1)).all()
    custom = truth.parse_noise(["audio.miss_rate=1", "visual.positive_range=0.9,1.0"])
    assert custom["audio"].miss_rate == 1.0 and custom["visual"].positive_range == (0.9, 1.0)
    with pytest.raises(ValueError):
        truth.parse_noise(["sound.miss_rate=1"])


class _FailOnSecondShard:
    """A labeller that dies on its second batch: a crash in the middle of a run."""
    name = "crashy"

    def __init__(self, num_classes: int, fail_on: int | None = 1):
        self.num_classes, self.fail_on, self.calls = num_classes, fail_on, 0

    def __call__(self, samples):
        self.calls += 1
        if self.calls - 1 == self.fail_on:
            raise RuntimeError("simulated crash")
        return np.full((len(samples), self.num_classes), 0.25, np.float32), [None] * len(samples)


def test_crashed_run_resumes_with_the_remaining_shards(shards):
    num_classes = len(store.load_dataset_json(shards)["label_vocabulary"])
    tars = [p.name for p in store.shard_paths(shards)]
    with pytest.raises(RuntimeError, match="simulated crash"):
        store.label_shards(shards, _FailOnSecondShard(num_classes), batch_size=8)
    meta = store.load_dataset_json(shards)
    assert meta["labelled_shards"]["crashy"] == tars[:1]
    assert "crashy" not in meta["labellers"]
    resumed = _FailOnSecondShard(num_classes, fail_on=None)
    report = store.label_shards(shards, resumed, batch_size=8)
    assert report.shards_skipped == tars[:1] and report.shards_done == tars[1:]
    assert "crashy" in store.load_dataset_json(shards)["labellers"]
    assert all(np.all(s["crashy"] == np.float16(0.25)) for s in store.read_scores(shards).values())


def sample_members(shards: Path) -> dict[str, list[str]]:
    """key -> its member extensions in tar order, over every shard."""
    out: dict[str, list[str]] = {}
    for tar_path in store.shard_paths(shards):
        with tarfile.open(tar_path) as tar:
            for info in tar:
                key, ext = store.split_member_name(info.name)
                out.setdefault(key, []).append(ext)
    return out


def test_relabel_replaces_the_score_members(shards, synth_dir, monkeypatch):
    vocabulary = store.load_dataset_json(shards)["label_vocabulary"]
    rows = truth.load_truth(synth_dir / "truth.jsonl")
    first, second = (truth.TruthLabeller(rows, vocabulary, "audio", seed=seed) for seed in (0, 1))
    store.label_shards(shards, first)
    members = sample_members(shards)
    assert all(exts[-1] == "truth_audio.f16" and exts.count("truth_audio.f16") == 1 for exts in members.values())

    def expected(labeller):
        return {key: scores.astype(np.float16) for key, scores in
                zip(rows, labeller([{"__key__": key} for key in rows])[0])}

    store.label_shards(shards, second, force=True)           # python -m deteclap.label --force
    assert sample_members(shards) == members
    stored = store.read_scores(shards)
    assert all(np.array_equal(stored[key]["truth_audio"], want) for key, want in expected(second).items())

    # killed between rewriting the first tar and recording it: the resumed run rewrites that tar again
    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    visual = truth.TruthLabeller(rows, vocabulary, "visual")
    with monkeypatch.context() as patch:
        patch.setattr(store, "_record_shard", killed)
        with pytest.raises(KeyboardInterrupt):
            store.label_shards(shards, visual)
    report = store.label_shards(shards, visual)
    assert report.shards_done == [p.name for p in store.shard_paths(shards)]
    assert sample_members(shards) == {key: [*exts, "truth_visual.f16"] for key, exts in members.items()}
    stored = store.read_scores(shards)
    assert all(np.array_equal(stored[key]["truth_visual"], want) for key, want in expected(visual).items())
    assert store.load_dataset_json(shards)["labellers"] == ["truth_audio", "truth_visual"]


class _FailKeys:
    """A labeller that scores 0.25 and fails the samples named in `failing`."""
    name = "flaky"

    def __init__(self, num_classes: int, failing: set[str]):
        self.num_classes, self.failing = num_classes, failing

    def __call__(self, samples):
        reasons = ["audio: broken" if s["__key__"] in self.failing else None for s in samples]
        return np.full((len(samples), self.num_classes), 0.25, np.float32), reasons


def test_relabel_replaces_the_recorded_failures(shards):
    num_classes = len(store.load_dataset_json(shards)["label_vocabulary"])
    first_keys, second_keys = ([s["__key__"] for s in store.iter_samples(tar)] for tar in store.shard_paths(shards)[:2])
    store.label_shards(shards, _FailKeys(num_classes, {first_keys[0], second_keys[0]}))
    assert set(store.load_dataset_json(shards)["label_failures"]["flaky"]) == {first_keys[0], second_keys[0]}
    store.label_shards(shards, _FailKeys(num_classes, {second_keys[0]}), force=True)   # first clip fixed
    assert store.load_dataset_json(shards)["label_failures"]["flaky"] == {second_keys[0]: "audio: broken"}
    scores = store.read_scores(shards)
    assert np.all(scores[first_keys[0]]["flaky"] == np.float16(0.25))
    assert np.isnan(scores[second_keys[0]]["flaky"]).all()


@pytest.fixture(scope="module")
def clap_parts():
    """msclap's real audio encoder with random weights and a random-text-encoder prompt table."""
    import torch
    from transformers import GPT2Config

    torch.manual_seed(0)
    vocabulary = load_vocabulary()
    embeddings = clap.offline_text_embeddings(vocabulary, gpt2_config=GPT2Config(n_layer=1, n_inner=RANDOM_GPT2_INNER))
    return clap.build_audio_encoder(None), embeddings, vocabulary


def test_clap_scores_are_cosines_and_a_corrupt_audio_member_keeps_the_others(shards, clap_parts, tmp_path):
    encoder, embeddings, vocabulary = clap_parts
    table = tmp_path / "text.npz"
    clap.save_text_embeddings(table, embeddings, vocabulary)
    with pytest.raises(ValueError, match="vocabulary"):
        clap.load_text_embeddings(table, vocabulary[:-1])
    labeller = clap.ClapLabeller(encoder, clap.load_text_embeddings(table, vocabulary))

    first_tar = store.shard_paths(shards)[0]
    samples = list(store.iter_samples(first_tar))
    broken, good = samples[0]["__key__"], samples[1]
    replace_member(first_tar, f"{broken}.wav", b"RIFF" + bytes(200))
    report = store.label_shards(shards, labeller, batch_size=4)
    assert list(report.failures) == [broken] and "audio" in report.failures[broken]
    assert store.load_dataset_json(shards)["label_failures"]["clap"] == report.failures

    scores = store.read_scores(shards)
    assert np.isnan(scores[broken]["clap"]).all()
    others = [s["clap"] for k, s in scores.items() if k != broken]
    assert len(others) == len(scores) - 1 and all(np.isfinite(s).all() for s in others)

    # One clip by hand: msclap preprocessing -> audio encoder -> cosine with each prompt.
    import torch

    from deteclap.data.decode import decode_audio_member

    wave, rate = decode_audio_member("wav", good["wav"])
    windows = clap.audio_windows(wave, rate, 44100, 7.0)
    assert windows.shape == (1, 7 * 44100)                   # a 3 s clip is repeated to one 7 s window
    with torch.no_grad():
        audio = torch.nn.functional.normalize(encoder(windows)[0], dim=-1)
    text = torch.nn.functional.normalize(torch.from_numpy(embeddings), dim=-1)
    want = (audio @ text.T).max(dim=0).values.numpy()
    np.testing.assert_allclose(scores[good["__key__"]]["clap"].astype(np.float32), want, atol=2e-3)


def test_clap_prompt_table_is_remade_for_other_weights(shards, clap_parts, tmp_path, monkeypatch, capsys):
    from deteclap import label

    encoder, random_table, vocabulary = clap_parts
    real_table = np.random.default_rng(0).normal(size=random_table.shape).astype(np.float32)
    made = []

    def hub_table(weights, vocab, device):                   # stands in for the hub's GPT-2 text side
        made.append(weights)
        return real_table

    monkeypatch.setattr(clap, "build_audio_encoder", lambda weights, device: encoder)
    monkeypatch.setattr(clap, "offline_text_embeddings", lambda vocab, gpt2_config=None: random_table)
    monkeypatch.setattr(clap, "clap_text_embeddings", hub_table)
    weights, other_weights = tmp_path / "CLAP_weights_2023.pth", tmp_path / "finetuned.pth"
    weights.write_bytes(b"stand-in weights")
    other_weights.write_bytes(b"other weights")

    def build(*options: str) -> np.ndarray:
        args = label.build_parser().parse_args([str(shards), "--labellers", "clap", *options])
        return label._build_clap(args, vocabulary, "cpu").text.numpy()

    def normalised(table: np.ndarray) -> np.ndarray:
        return table / np.linalg.norm(table, axis=1, keepdims=True)

    np.testing.assert_allclose(build("--random-weights"), normalised(random_table), atol=1e-6)
    np.testing.assert_allclose(build("--clap-weights", str(weights)), normalised(real_table), atol=1e-6)
    assert made == [str(weights)] and "other CLAP weights (random)" in capsys.readouterr().err
    np.testing.assert_allclose(build("--clap-weights", str(weights)), normalised(real_table), atol=1e-6)
    assert made == [str(weights)]                            # same weights: the stored table is reused
    build("--clap-weights", str(other_weights))
    assert made == [str(weights), str(other_weights)]
    assert clap.text_embeddings_source(shards / "clap_text_embeddings.npz") == clap.weights_identity(other_weights)


def test_audio_windows_cover_a_long_clip():
    wave = np.arange(10 * 16000, dtype=np.float32) / (10 * 16000)
    windows = clap.audio_windows(wave, 16000, 44100, 7.0)
    assert windows.shape == (2, 7 * 44100)
    assert windows[0, 1000] < 0.01 and windows[-1, -1000] > 0.99   # from the start to the end


@pytest.fixture(scope="module")
def random_yolo():
    import torch

    from deteclap.label import random_yolo as build

    torch.manual_seed(0)
    model = build()
    for branch in model.model.model[-1].cv3:                 # class-logit convs of the Detect head
        torch.nn.init.normal_(branch[-1].bias, *RANDOM_CLS_BIAS)
    return model


def test_yolo_max_over_frames_and_class_mapping(shards, random_yolo):
    vocabulary = load_vocabulary()[::-1][:400]               # reordered subset: ids must map by name
    labeller = yolo.YoloLabeller(random_yolo, vocabulary, device="cpu", conf=TEST_CONF, imgsz=SMALL_IMGSZ)
    for class_id, name in random_yolo.names.items():
        assert labeller.mapping[class_id] == (vocabulary.index(name) if name in vocabulary else -1)
    assert labeller.mapping[600] == 0 and (labeller.mapping == -1).sum() == 601 - 400
    num_classes = len(store.load_dataset_json(shards)["label_vocabulary"])
    samples = list(store.iter_samples(store.shard_paths(shards)[0]))
    scores, reasons = labeller(samples)
    assert reasons == [None] * len(samples) and scores.shape == (len(samples), 400)
    assert (scores > 0).sum() > 0

    from deteclap.data.decode import decode_video_frames

    for row, sample in enumerate(samples[:2]):
        frames = decode_video_frames(sample["mp4"])
        assert len(frames) == 10
        want = np.zeros(400, np.float32)
        for frame in frames:                                 # one frame at a time, by hand
            result = random_yolo.predict(np.ascontiguousarray(frame[..., ::-1]), conf=TEST_CONF,
                                         imgsz=SMALL_IMGSZ, device="cpu", verbose=False)[0]
            for cls, conf in zip(result.boxes.cls.tolist(), result.boxes.conf.tolist()):
                name = random_yolo.names[int(cls)]
                if name in vocabulary:
                    want[vocabulary.index(name)] = max(want[vocabulary.index(name)], conf)
        np.testing.assert_allclose(scores[row], want, atol=1e-5)

    with pytest.raises(ValueError, match="no class"):
        yolo.class_map({0: "not a class"}, vocabulary)
    full = yolo.YoloLabeller(random_yolo, load_vocabulary(), device="cpu", conf=TEST_CONF, imgsz=SMALL_IMGSZ)
    report = store.label_shards(shards, full, batch_size=4)
    assert report.samples == sum(s["samples"] for s in store.load_dataset_json(shards)["shards"])
    stored = store.read_scores(shards)[samples[0]["__key__"]]["yolo"]
    assert stored.shape == (num_classes,) and stored.max() > 0


def test_cli_help_and_errors(shards, capsys):
    from deteclap.label import main

    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "yolov8x-oiv7.pt" in text and "CLAP_weights_2023.pth" in text and "--truth-noise" in text
    assert main([str(shards), "--labellers", "truth"]) == 2
    assert main([str(shards), "--labellers", "nope"]) == 2
    assert main([str(shards), "--labellers", "yolo"]) == 2
    assert main([str(shards / "missing"), "--labellers", "truth", "--truth", "x"]) == 2
    assert "error:" in capsys.readouterr().err
    assert json.loads((shards / "dataset.json").read_text())["labellers"] == []


def test_cli_on_shards_without_samples(tmp_path, capsys):
    from deteclap.label import main
    from deteclap.shard import write_shards

    (tmp_path / "broken.mp4").write_text("not a video\n")
    (tmp_path / "truth.jsonl").write_text('{"file": "broken.mp4"}\n{"file": "missing.mp4"}\n')
    summary = write_shards(tmp_path / "truth.jsonl", tmp_path / "shards")
    assert summary["samples"] == 0 and summary["failed"] == 2
    argv = [str(tmp_path / "shards"), "--labellers", "truth", "--truth", str(tmp_path / "truth.jsonl"), "--no-progress"]
    assert main(argv) == 0
    assert "truth_audio: 0 clips, 0 failed" in capsys.readouterr().out


def test_relabelling_with_other_settings_stops_and_says_how_to_force(shards, synth_dir, capsys):
    from deteclap.label import main

    truth_file = str(synth_dir / "truth.jsonl")
    argv = [str(shards), "--labellers", "truth", "--truth", truth_file, "--no-progress"]
    assert main([*argv, "--seed", "3"]) == 0
    before = folder_bytes(shards)
    capsys.readouterr()
    assert main([*argv, "--seed", "4"]) == 2                 # other noise: the stored scores would be kept
    err = capsys.readouterr().err
    assert "3 shard(s) hold `truth_audio` scores made with other settings" in err
    assert "--seed: 3 -> 4" in err and "--force" in err
    assert folder_bytes(shards) == before
    assert main([*argv, "--seed", "3", "--batch-size", "2", "--device", "cpu"]) == 0   # no effect on scores
    assert "skipped 3 already done" in capsys.readouterr().out
    assert folder_bytes(shards) == before
    old = store.read_scores(shards)
    assert main([*argv, "--seed", "4", "--force"]) == 0
    new = store.read_scores(shards)
    assert any(not np.array_equal(old[k]["truth_audio"], new[k]["truth_audio"]) for k in old)
    assert store.load_dataset_json(shards)["labeller_settings"]["truth_audio"]["seed"] == 4
    assert main([*argv, "--seed", "4"]) == 0                 # the new settings are the stored ones now
    relative = os.path.relpath(truth_file)                   # the same file named another way
    assert main([str(shards), "--labellers", "truth", "--truth", relative, "--no-progress", "--seed", "4"]) == 0
    assert "skipped 3 already done" in capsys.readouterr().out


def test_forced_relabelling_cut_short_resumes_with_the_new_settings(shards, shard_dir, synth_dir, tmp_path,
                                                                   monkeypatch):
    from deteclap.label import main

    argv = [str(shards), "--labellers", "truth", "--truth", str(synth_dir / "truth.jsonl"), "--no-progress"]
    assert main([*argv, "--seed", "3"]) == 0
    real_write, written = store.write_scores, []

    def write_then_fail(tar_path, labeller, scores):   # the forced run dies after its first shard
        if written:
            raise KeyboardInterrupt
        written.append(tar_path)
        real_write(tar_path, labeller, scores)

    monkeypatch.setattr(store, "write_scores", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        main([*argv, "--seed", "4", "--force"])
    monkeypatch.setattr(store, "write_scores", real_write)
    assert main([*argv, "--seed", "4"]) == 0                 # resumes: relabels the shards left with seed 3
    fresh = tmp_path / "fresh"
    shutil.copytree(shard_dir, fresh)
    assert main([str(fresh), *argv[1:], "--seed", "4"]) == 0
    got, want = store.read_scores(shards), store.read_scores(fresh)
    assert set(got) == set(want)
    for key in want:
        for name in ("truth_audio", "truth_visual"):
            assert np.array_equal(got[key][name], want[key][name]), (key, name)
