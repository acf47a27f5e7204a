"""Fine-tuning: pretrained weights load into CAVMAEFT, the real train.py fine-tunes (single- and
multi-label, mixup + SpecAugment on) and `python -m deteclap.evaluate` reports accuracy / mAP;
batched mixup against a per-sample reading of CAV-MAE's dataloader.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "deteclap" / "train.py")
CONFIG = str(REPO / "configs" / "finetune_tiny.json")
PRETRAIN_SEED = 1234
ENCODER_PREFIXES = ("patch_embed_a", "patch_embed_v", "blocks_a", "blocks_v", "blocks_u", "modality_a", "norm_a")


def settings(shards: Path, **extra: object) -> list[str]:
    """`section.key=value` overrides: the synthetic shards, small batches, 3 steps."""
    values = {"data.train_shards": str(shards), "data.eval_shards": str(shards), "data.eval_split": "train",
              "data.batch_size": 4, "data.num_workers": 0, "deepspeed.precision": "fp32",
              "run.max_steps": 3, "run.log_every": 1, "run.checkpoint_every": 3, **extra}
    return [f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in values.items()]


def cli(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def env() -> dict[str, str]:
    import os

    out = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    out.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return out


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
    from deteclap.shard import load_dataset_json
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
    from deteclap.shard import load_dataset_json
    from deteclap.train import build_objective

    state = torch.load(pretrained, weights_only=True)
    partial = tmp_path / "partial.pt"
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks_a")}, partial)
    cfg = load_config(CONFIG, settings(shard_dir, **{"finetune.pretrained": str(partial)}))
    with pytest.raises(RuntimeError, match="missing encoder weights.*blocks_a"):
        build_objective(cfg, load_dataset_json(shard_dir))


def test_mixup_in_pretraining_fails_at_start_up(shard_dir):
    from deteclap.config import load_config
    from deteclap.shard import load_dataset_json
    from deteclap.train import build_objective

    cfg = load_config(REPO / "configs" / "tiny.json", ["data.mixup=0.5", "labels.variant=cavmae"])
    with pytest.raises(ValueError, match="mixup"):
        build_objective(cfg, load_dataset_json(shard_dir))


@pytest.mark.parametrize("task,metric,term", [("single_label", "accuracy", "ce"), ("multi_label", "mAP", "bce")])
def test_finetune_end_to_end_then_evaluate(pretrained, shard_dir, tmp_path, task, metric, term):
    run_dir = tmp_path / "run"
    args = cli(settings(shard_dir, **{"finetune.task": task, "finetune.pretrained": str(pretrained),
                                      "run.out_dir": str(run_dir)}))
    proc = subprocess.run([sys.executable, TRAIN, "--config", CONFIG, *args], capture_output=True, text=True,
                          env=env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "fine-tuning from" in proc.stdout and "new head" in proc.stdout
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r[term] > 0 and r["total"] == r[term] for r in log)
    trained = torch.load(run_dir / "checkpoints" / "step_00000003" / "model.pt", weights_only=True)
    start = torch.load(pretrained, weights_only=True)
    assert not torch.equal(trained["blocks_a.0.attn.qkv.weight"], start["blocks_a.0.attn.qkv.weight"])

    out = tmp_path / "eval.json"
    proc = subprocess.run([sys.executable, "-m", "deteclap.evaluate", "--config", CONFIG, "--checkpoint",
                           str(run_dir), "--json", str(out), *args],
                          capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    result = json.loads(out.read_text())
    assert printed[metric] == result[metric] and 0.0 <= result[metric] <= 100.0
    assert result["num_clips"] == 8 and result["load_report"]["missing"] == []


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
