"""Typed configs: extends, overrides, and errors that name the file and the key."""

import json
from pathlib import Path

import pytest

from deteclap.config import VARIANTS, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.json")), ids=lambda p: p.name)
def test_every_shipped_config_loads_with_the_public_keys(path):
    cfg = load_config(path)
    assert cfg.run.max_steps > 0 and cfg.run.out_dir
    assert isinstance(cfg.data.train_shards, str) and isinstance(cfg.data.eval_shards, str)


def test_one_config_per_variant_and_variants_are_small_files():
    for variant in VARIANTS:
        path = CONFIGS / f"{variant}.json"
        assert load_config(path).labels.variant == variant
        assert len(path.read_text().splitlines()) <= 6, "a variant file only states what differs from base"


def test_extends_merges_sections_key_by_key(tmp_path):
    (tmp_path / "base.json").write_text(json.dumps({"optim": {"lr": 0.1, "warmup_steps": 7}}))
    (tmp_path / "child.json").write_text(json.dumps({"extends": "base.json", "optim": {"lr": 0.2}}))
    cfg = load_config(tmp_path / "child.json")
    assert (cfg.optim.lr, cfg.optim.warmup_steps) == (0.2, 7)


def test_overrides_parse_json_values_and_strings():
    cfg = load_config(CONFIGS / "tiny.json", ["run.max_steps=3", "optim.betas=[0.9,0.99]",
                                              "data.train_shards=/some/where", "loss.bidirectional=true"])
    assert cfg.run.max_steps == 3 and cfg.optim.betas == (0.9, 0.99)
    assert cfg.data.train_shards == "/some/where" and cfg.loss.bidirectional is True


@pytest.mark.parametrize("override, fragment", [
    ("run.maxsteps=3", "unknown key `run.maxsteps`"),
    ("runs.max_steps=3", "unknown section `runs`"),
    ("run.max_steps=three", "run.max_steps: expected int"),
    ("labels.variant=xor", "labels.variant: \"xor\" is not one of"),
    ("deepspeed.zero_stage=4", "deepspeed.zero_stage: 4 is not one of"),
    ("finetune.label_smooth=1.5", "finetune.label_smooth: 1.5 must lie in [0, 1)"),
    ("run.max_steps", "expected section.key=value"),
])
def test_bad_values_name_the_key_and_the_file(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.json", [override])
    assert fragment in str(err.value)
    if "section.key" not in fragment:
        assert "tiny.json" in str(err.value)


@pytest.mark.parametrize("override, fragment", [
    ("data.batch_size=0", "data.batch_size: 0 must be >= 1"),
    ("data.batch_size=-1", "data.batch_size: -1 must be >= 1"),
    ("run.checkpoint_every=0", "run.checkpoint_every: 0 must be >= 1"),
    ("run.max_steps=-5", "run.max_steps: -5 must be >= 1"),
    ("run.log_every=0", "run.log_every: 0 must be >= 1"),
    ("loss.mask_ratio_a=1.5", "loss.mask_ratio_a: 1.5 must lie in [0, 1)"),
    ("loss.mask_ratio_v=1", "loss.mask_ratio_v: 1.0 must lie in [0, 1)"),
    ("loss.contrastive_tau=0", "loss.contrastive_tau: 0.0 must be > 0"),
    ("loss.mae_weight=-1", "loss.mae_weight: -1.0 must be >= 0"),
    ("optim.lr=0", "optim.lr: 0.0 must be > 0"),
    ("optim.lr=-1e-4", "optim.lr: -0.0001 must be > 0"),
    ("optim.betas=[0.9,1.0]", "optim.betas: [0.9, 1.0] must lie in [0, 1)"),
    ("data.mixup=1.5", "data.mixup: 1.5 must lie in [0, 1]"),
    ("data.num_workers=-1", "data.num_workers: -1 must be >= 0"),
    ("labels.visual_threshold=1.2", "labels.visual_threshold: 1.2 must lie in [0, 1]"),
    ("labels.audio_threshold=-2", "labels.audio_threshold: -2.0 must lie in [-1, 1]"),
    ("eval.recall_at=[1,0]", "eval.recall_at: [1, 0] must be >= 1"),
    ("deepspeed.grad_accum_steps=0", "deepspeed.grad_accum_steps: 0 must be >= 1"),
    ("model.img_size=100", "model.img_size=100 is not a multiple of model.patch_size=16"),
    ("optim.decay_every=0", "optim.decay_start_step=38270 needs optim.decay_every > 0"),
])
def test_values_out_of_range_are_refused_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "base.json", [override])
    assert fragment in str(err.value)
    assert "base.json" in str(err.value)


def test_value_out_of_range_in_a_file_names_that_file(tmp_path):
    path = tmp_path / "zero_batch.json"
    path.write_text(json.dumps({"extends": str(CONFIGS / "tiny.json"), "data": {"batch_size": 0}}))
    with pytest.raises(ConfigError, match=r"zero_batch\.json: data\.batch_size: 0 must be >= 1"):
        load_config(path)


def test_edges_of_the_bounds_are_accepted():
    cfg = load_config(CONFIGS / "tiny.json", ["loss.mask_ratio_a=0", "data.mixup=1", "labels.visual_threshold=1",
                                              "run.max_steps=1", "run.keep_checkpoints=0", "data.num_workers=0"])
    assert (cfg.loss.mask_ratio_a, cfg.data.mixup, cfg.run.max_steps) == (0.0, 1.0, 1)


def test_unknown_key_in_a_file_names_that_file(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"extends": str(CONFIGS / "base.json"), "loss": {"mae_wieght": 1.0}}))
    with pytest.raises(ConfigError, match=r"bad\.json: unknown key `loss\.mae_wieght`"):
        load_config(path)


def test_missing_file_and_missing_base_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.json: config file not found"):
        load_config(tmp_path / "nope.json")
    (tmp_path / "child.json").write_text(json.dumps({"extends": "gone.json"}))
    with pytest.raises(ConfigError, match=r"gone\.json: config file not found \(extended from .*child\.json\)"):
        load_config(tmp_path / "child.json")


@pytest.mark.parametrize("name, epochs, start, every, steps_per_epoch", [
    ("base.json", 25, 10, 5, 3827),                 # egs/*/run_cavmae_pretrain*.sh
    ("finetune_vggsound.json", 10, 2, 1, 3827),     # egs/vggsound/run_cavmae_ft.sh
    ("finetune_audioset20k.json", 15, 5, 1, 519),   # egs/audioset/run_cavmae_ft_bal.sh
])
def test_recipes_follow_cav_mae_multisteplr(name, epochs, start, every, steps_per_epoch):
    """The shipped recipes' lr at every step is CAV-MAE's: MultiStepLR(range(start, 1000, every),
    gamma 0.5) stepped once per epoch, no warm-up (its trainers never read --warmup)."""
    import torch

    from deteclap.optim import lr_factor

    cfg = load_config(CONFIGS / name)
    assert cfg.run.max_steps == epochs * steps_per_epoch and cfg.optim.warmup_steps == 0
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    official = torch.optim.lr_scheduler.MultiStepLR(optimizer, list(range(start, 1000, every)), gamma=0.5)
    for epoch in range(epochs):
        want = optimizer.param_groups[0]["lr"]
        for step in (epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch - 1):
            assert lr_factor(step, cfg.optim) == pytest.approx(want), (name, epoch, step)
        optimizer.step()
        official.step()
