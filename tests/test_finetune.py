"""Fine-tuning: pretrained weights load into CAVMAEFT, the real train.py fine-tunes (single- and
multi-label, mixup + SpecAugment on) and `python -m deteclap.evaluate` reports accuracy / mAP;
batched mixup against a per-sample reading of CAV-MAE's dataloader.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO, set_args, set_values, small_run, subprocess_env

TRAIN = str(REPO / "deteclap" / "train.py")
CONFIG = str(REPO / "configs" / "finetune_tiny.json")
PRETRAIN_SEED = 1234
ENCODER_PREFIXES = ("patch_embed_a", "patch_embed_v", "blocks_a", "blocks_v", "blocks_u", "modality_a", "norm_a")


def run_values(shards: Path, **extra: object) -> dict[str, object]:
    """A short fine-tuning run on the synthetic shards: batches of 4, 3 steps."""
    return small_run(shards, **{"data.batch_size": 4, "run.max_steps": 3, "run.checkpoint_every": 3, **extra})


def settings(shards: Path, **extra: object) -> list[str]:
    """`section.key=value` overrides of `run_values`."""
    return set_values(run_values(shards, **extra))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A pretraining checkpoint (CAVMAE with label heads, tiny shapes) whose weights differ from any
    seed-0 initialisation, saved as train.py saves model.pt."""
    from deteclap.config import load_config
    from deteclap.model import build_model, save_state_dict

    cfg = load_config(CONFIG)
    torch.manual_seed(PRETRAIN_SEED)
    model = build_model(cfg.model, num_label_classes=7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path_factory.mktemp("pretrain") / "model.pt"
    save_state_dict(model, path)
    return path


def test_pretrained_encoder_weights_load_and_head_gets_its_lr(pretrained, shard_dir):
    from deteclap.config import load_config
    from deteclap.format import load_dataset_json
    from deteclap.train import build_objective

    state = torch.load(pretrained, weights_only=True)
    info = load_dataset_json(shard_dir)
    for source, should_match in (("", False), (str(pretrained), True)):
        cfg = load_config(CONFIG, settings(shard_dir, **{"finetune.pretrained": source}))
        torch.manual_seed(0)
        objective, groups = build_objective(cfg, info)
        own = objective.model.state_dict()
        encoder = [k for k in own if k.startswith(ENCODER_PREFIXES)]
        assert len(encoder) > 20
        assert all(torch.equal(own[k], state[k]) for k in encoder) is should_match
        assert torch.equal(own["pos_embed_a"], state["pos_embed_a"]) is should_match
    assert own["mlp_head.1.weight"].shape == (len(info["classes"]), cfg.model.embed_dim)
    head_ids = {id(p) for p in objective.model.mlp_head.parameters()}
    assert {id(p) for p in groups[1]["params"]} == head_ids
    assert groups[1]["lr"] == pytest.approx(cfg.optim.lr * cfg.finetune.head_lr_scale)


def test_pretrained_without_encoder_weights_is_refused(pretrained, shard_dir, tmp_path):
    from deteclap.config import load_config
    from deteclap.format import load_dataset_json
    from deteclap.train import build_objective

    state = torch.load(pretrained, weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks_a")}, partial)
    cfg = load_config(CONFIG, settings(shard_dir, **{"finetune.pretrained": str(partial)}))
    with pytest.raises(RuntimeError, match="missing encoder weights.*blocks_a"):
        build_objective(cfg, load_dataset_json(shard_dir))


def test_mixup_in_pretraining_fails_at_start_up(shard_dir):
    from deteclap.config import load_config
    from deteclap.format import load_dataset_json
    from deteclap.train import build_objective

    cfg = load_config(REPO / "configs" / "tiny.json", ["data.mixup=0.5", "labels.variant=cavmae"])
    with pytest.raises(ValueError, match="mixup"):
        build_objective(cfg, load_dataset_json(shard_dir))


def test_missing_init_checkpoint_says_where_the_official_one_is(shard_dir, tmp_path):
    """base.json starts pretraining from CAV-MAE's ImageNet-MAE weights, as its recipes do; without
    the file the run stops at start-up and says how to get it (or how to start from random weights)."""
    from deteclap.config import load_config
    from deteclap.format import load_dataset_json
    from deteclap.train import IMAGENET_INIT_URL, build_objective

    assert load_config(REPO / "configs" / "or.json").model.init_checkpoint == "weights/IN-initial.pth"
    cfg = load_config(REPO / "configs" / "tiny.json", [f"model.init_checkpoint={tmp_path / 'IN-initial.pth'}"])
    with pytest.raises(FileNotFoundError, match="no such file") as err:
        build_objective(cfg, load_dataset_json(shard_dir))
    assert IMAGENET_INIT_URL in str(err.value) and "--set model.init_checkpoint=" in str(err.value)


@pytest.mark.parametrize("task,metric,term", [("single_label", "accuracy", "ce"), ("multi_label", "mAP", "bce")])
def test_finetune_end_to_end_then_evaluate(pretrained, shard_dir, tmp_path, task, metric, term):
    """Fine-tune 3 steps (checkpoints at 1, 2, 3; weight average of 2 and 3), then evaluate the weight
    average with the multi-frame evaluation, as CAV-MAE reports its numbers."""
    run_dir = tmp_path / "run"
    args = set_args(run_values(shard_dir, **{"finetune.task": task, "finetune.pretrained": str(pretrained),
                                      "run.out_dir": str(run_dir), "run.checkpoint_every": 1,
                                      "finetune.average_from_step": 2, "data.num_frames": 3,
                                      "eval.average_frames": True}))
    proc = subprocess.run([sys.executable, TRAIN, "--config", CONFIG, *args], capture_output=True, text=True,
                          env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "fine-tuning from" in proc.stdout and "new head" in proc.stdout
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r[term] > 0 and r["total"] == r[term] for r in log)
    trained = torch.load(run_dir / "checkpoints" / "step_00000003" / "model.pt", weights_only=True)
    start = torch.load(pretrained, weights_only=True)
    assert not torch.equal(trained["blocks_a.0.attn.qkv.weight"], start["blocks_a.0.attn.qkv.weight"])

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["weight_average"]["steps"] == [2, 3] and (run_dir / "model_wa.pt").is_file()

    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "deteclap.evaluate", "--config", CONFIG, "--checkpoint",
                           str(run_dir / "model_wa.pt"), "--json", str(out), *args],
                          capture_output=True, text=True, env=subprocess_env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert printed[metric] == result[metric] and 0.0 <= result[metric] <= 100.0
    assert result["num_clips"] == 8 and result["load_report"]["missing"] == [] and result["frames"] == [0, 1, 2]


def _official_mix(w1: torch.Tensor, w2: torch.Tensor, lam: float) -> torch.Tensor:
    """CAV-MAE _wav2fbank's waveform mix (before its final mean removal) for one pair."""
    w1, w2 = w1 - w1.mean(), w2 - w2.mean()
    w2 = torch.nn.functional.pad(w2, (0, max(0, len(w1) - len(w2))))[: len(w1)]
    return lam * w1 + (1 - lam) * w2


def test_mixup_batch_matches_the_per_sample_official_mix():
    from deteclap.data.mixup import mixup_batch

    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1000, 700, 1200, 400])
    waves = torch.zeros(4, 1200)
    for i, n in enumerate(lengths):
        waves[i, :n] = torch.randn(n, generator=gen) + i          # different means
    frames = torch.randn(4, 3, 8, 8, generator=gen)
    classes = torch.eye(4)

    same = mixup_batch(waves, lengths, frames, classes, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(same[0], waves) and torch.equal(same[1], frames) and torch.equal(same[2], classes)

    mixed_w, mixed_f, mixed_c = mixup_batch(waves, lengths, frames, classes, 1.0, torch.Generator().manual_seed(1))
    assert torch.allclose(mixed_c.sum(1), torch.ones(4))
    for i in range(4):
        lam = float(mixed_c[i, i])                     # one-hot classes: the row shows lambda and partner
        others = mixed_c[i].clone()
        others[i] = -1.0
        partner = int(others.argmax()) if lam < 1 else i   # lam == 1: mixed with itself
        assert 0.0 < lam <= 1.0
        n = int(lengths[i])
        ref = _official_mix(waves[i, :n], waves[partner, : int(lengths[partner])], lam)
        got = mixed_w[i, :n]
        assert torch.allclose(got - got.mean(), ref - ref.mean(), atol=1e-5)
        assert torch.all(mixed_w[i, n:] == 0)
        assert torch.allclose(mixed_f[i], lam * frames[i] + (1 - lam) * frames[partner], atol=1e-6)


def test_label_smoothing_is_cav_mae_s_over_k_plus_rest(shard_dir):
    """finetune.label_smooth: training class targets s / K + (1 - s) y (CAV-MAE's mixed-sample rule), rows
    still summing to 1 for one-hot labels; evaluation batches and pretraining stay unsmoothed."""
    from deteclap.config import load_config
    from deteclap.data.loader import build_loader
    from deteclap.data.targets import smooth_labels

    y = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.3, 0.0, 0.7, 0.0]])
    assert torch.allclose(smooth_labels(y, 0.1), torch.tensor([[0.025, 0.925, 0.025, 0.025],
                                                               [0.295, 0.025, 0.655, 0.025]]))
    with pytest.raises(ValueError, match="label_smooth"):
        smooth_labels(y, 1.0)
    cfg = load_config(REPO / "configs" / "finetune_tiny.json",
                      [f"data.train_shards={shard_dir}", f"data.eval_shards={shard_dir}", "data.eval_split=train",
                       "data.num_workers=0", "data.batch_size=4", "data.mixup=0", "run.device=cpu",
                       "finetune.label_smooth=0.1"])
    train = next(iter(build_loader(cfg, train=True)))["classes"]
    low = 0.1 / train.shape[1]
    assert torch.allclose(train.sum(1), torch.ones(len(train)))
    assert bool(((train - low).abs().lt(1e-6) | (train - 0.9 - low).abs().lt(1e-6)).all()), train
    evaluation = next(iter(build_loader(cfg, train=False)))["classes"]
    assert set(evaluation.flatten().tolist()) == {0.0, 1.0}


def test_weight_average_keeps_the_models_it_needs(tmp_path):
    """prune() keeps model.pt of the checkpoints from `keep_models_from` on (only model.pt), and
    average_models() writes their element-wise mean (CAV-MAE's wa_model)."""
    from deteclap.model.checkpoint import read_state_dict, save_state_dict
    from deteclap.train import RunDir

    run = RunDir(tmp_path / "run")
    for step in (1, 2, 3, 4):
        folder = run.checkpoints / f"step_{step:08d}"
        (folder / "deepspeed_state").mkdir(parents=True)
        save_state_dict({"w": torch.full((2, 2), float(step)), "n": torch.tensor([step])}, folder / "model.pt")
    run.set_latest("step_00000004")
    run.prune(keep=1, keep_models_from=2)
    assert not (run.checkpoints / "step_00000001").exists()
    assert sorted(p.name for p in (run.checkpoints / "step_00000002").iterdir()) == ["model.pt"]
    assert (run.checkpoints / "step_00000004" / "deepspeed_state").is_dir()
    report = run.average_models(from_step=2)
    assert report["steps"] == [2, 3, 4]
    averaged = read_state_dict(report["path"])
    assert torch.equal(averaged["w"], torch.full((2, 2), 3.0)) and averaged["n"].tolist() == [4]
    assert run.average_models(from_step=5) is None


def test_average_frames_is_the_mean_of_per_frame_probabilities(shard_dir):
    """eval.average_frames: softmax outputs averaged over frames 0..num_frames-1, each frame as the
    single-frame evaluation gives it."""
    from deteclap.config import load_config
    from deteclap.evaluate import class_probabilities, collect
    from deteclap.model import build_finetune_model
    from deteclap.format import load_dataset_json

    cfg = load_config(REPO / "configs" / "finetune_tiny.json",
                      [f"data.train_shards={shard_dir}", f"data.eval_shards={shard_dir}", "data.eval_split=train",
                       "data.num_workers=0", "data.num_frames=3", "run.device=cpu", "eval.average_frames=true"])
    torch.manual_seed(0)
    model = build_finetune_model(cfg.model, len(load_dataset_json(shard_dir)["classes"]))
    averaged = class_probabilities(cfg, model, torch.device("cpu"))
    assert averaged["frames"] == [0, 1, 2]
    per_frame = []
    for frame in range(3):
        cfg.data.eval_frame = frame
        logits = collect(cfg, model, torch.device("cpu"), finetune=True)["logits"]
        per_frame.append(torch.from_numpy(logits).softmax(-1))
    assert not torch.allclose(per_frame[0], per_frame[2])                     # the frames do differ
    assert np.allclose(averaged["probs"], torch.stack(per_frame).double().mean(0).numpy(), atol=1e-6)
