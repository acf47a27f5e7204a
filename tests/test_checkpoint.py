"""deteclap.model.checkpoint: official CAV-MAE key layout, wrappers, reports, errors, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deteclap.model import CAVMAE, CAVMAEFT, CheckpointError, load_checkpoint, save_state_dict

SMALL = dict(img_size=32, audio_length=64, num_mel_bins=32, embed_dim=32, modality_specific_depth=2,
             num_heads=4)
SMALL_DECODER = dict(decoder_embed_dim=16, decoder_depth=2, decoder_num_heads=4)
OFFICIAL_TOTAL_DEPTH = 12        # official: blocks_u has 12 - modality_specific_depth blocks


def _block_keys(prefix: str, dim: int, mlp_ratio: float = 4.0) -> dict[str, tuple[int, ...]]:
    """A block of the official cav_mae.py: three norm sets, timm-0.4.5 Attention and Mlp."""
    hidden = int(dim * mlp_ratio)
    norms = ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v")
    keys = {f"{prefix}.{n}.{w}": (dim,) for n in norms for w in ("weight", "bias")}
    keys.update({f"{prefix}.attn.qkv.weight": (3 * dim, dim), f"{prefix}.attn.qkv.bias": (3 * dim,),
                 f"{prefix}.attn.proj.weight": (dim, dim), f"{prefix}.attn.proj.bias": (dim,),
                 f"{prefix}.mlp.fc1.weight": (hidden, dim), f"{prefix}.mlp.fc1.bias": (hidden,),
                 f"{prefix}.mlp.fc2.weight": (dim, hidden), f"{prefix}.mlp.fc2.bias": (dim,)})
    return keys


def official_layout(img_size: int = 224, audio_length: int = 1024, num_mel_bins: int = 128, patch: int = 16,
                    embed_dim: int = 768, modality_specific_depth: int = 11, num_heads: int = 12,
                    decoder_embed_dim: int = 512, decoder_depth: int = 8, decoder_num_heads: int = 16,
                    pretraining: bool = True, label_dim: int = 0) -> dict[str, tuple[int, ...]]:
    """State-dict names and shapes of the official CAVMAE (pretraining) or CAVMAEFT, written out
    from reading src/models/cav_mae.py (num_heads only changes no shape)."""
    d, la, lv = embed_dim, (audio_length // patch) * (num_mel_bins // patch), (img_size // patch) ** 2
    keys: dict[str, tuple[int, ...]] = {
        "patch_embed_a.proj.weight": (d, 1, patch, patch), "patch_embed_a.proj.bias": (d,),
        "patch_embed_v.proj.weight": (d, 3, patch, patch), "patch_embed_v.proj.bias": (d,),
        "modality_a": (1, 1, d), "modality_v": (1, 1, d),
        "pos_embed_a": (1, la, d), "pos_embed_v": (1, lv, d)}
    for name, depth in (("blocks_a", modality_specific_depth), ("blocks_v", modality_specific_depth),
                        ("blocks_u", OFFICIAL_TOTAL_DEPTH - modality_specific_depth)):
        for i in range(depth):
            keys.update(_block_keys(f"{name}.{i}", d))
    for norm in ("norm_a", "norm_v", "norm"):
        keys.update({f"{norm}.weight": (d,), f"{norm}.bias": (d,)})
    if pretraining:
        dd = decoder_embed_dim
        keys.update({"decoder_embed.weight": (dd, d), "decoder_embed.bias": (dd,), "mask_token": (1, 1, dd),
                     "decoder_modality_a": (1, 1, dd), "decoder_modality_v": (1, 1, dd),
                     "decoder_pos_embed_a": (1, la, dd), "decoder_pos_embed_v": (1, lv, dd),
                     "decoder_norm.weight": (dd,), "decoder_norm.bias": (dd,),
                     "decoder_pred_a.weight": (patch * patch, dd), "decoder_pred_a.bias": (patch * patch,),
                     "decoder_pred_v.weight": (patch * patch * 3, dd),
                     "decoder_pred_v.bias": (patch * patch * 3,)})
        for i in range(decoder_depth):
            keys.update(_block_keys(f"decoder_blocks.{i}", dd))
    if label_dim:
        keys.update({"mlp_head.0.weight": (d,), "mlp_head.0.bias": (d,),
                     "mlp_head.1.weight": (label_dim, d), "mlp_head.1.bias": (label_dim,)})
    return keys


def official_state_dict(layout: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """A DataParallel-saved (`module.`-prefixed) state dict with random values in that layout."""
    g = torch.Generator().manual_seed(seed)
    return {f"module.{k}": torch.randn(shape, generator=g) for k, shape in layout.items()}


def _shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_default_models_have_the_official_layout() -> None:
    assert _shapes(CAVMAE()) == official_layout()
    assert _shapes(CAVMAEFT(527)) == official_layout(pretraining=False, label_dim=527)


def test_official_pretraining_checkpoint_loads_into_deteclap_model() -> None:
    layout = official_layout(**{**SMALL, "modality_specific_depth": 10}, **SMALL_DECODER)
    state = official_state_dict(layout)
    model = CAVMAE(**{**SMALL, "modality_specific_depth": 10}, **SMALL_DECODER, joint_depth=2,
                   num_label_classes=7)
    report = load_checkpoint(model, state)
    assert sorted(report.missing) == ["label_head_a.bias", "label_head_a.weight",
                                      "label_head_v.bias", "label_head_v.weight"]
    assert report.unexpected == []
    own = model.state_dict()
    for key in ("blocks_u.1.attn.qkv.weight", "pos_embed_a", "decoder_blocks.1.mlp.fc2.bias", "mask_token"):
        assert torch.equal(own[key], state[f"module.{key}"])


def test_pretraining_checkpoint_into_finetune_model(tmp_path: Path) -> None:
    state = official_state_dict(official_layout(**SMALL, **SMALL_DECODER))
    model = CAVMAEFT(5, **SMALL, joint_depth=10)
    path = tmp_path / "audio_model.pth"
    torch.save(state, path)
    report = load_checkpoint(model, path)
    assert sorted(report.missing) == [f"mlp_head.{i}.{w}" for i in (0, 1) for w in ("bias", "weight")]
    assert report.unexpected and all(k.startswith(("decoder_", "mask_token")) for k in report.unexpected)
    assert torch.equal(model.blocks_v[1].norm2_v.weight.detach(), state["module.blocks_v.1.norm2_v.weight"])


@pytest.mark.parametrize("wrap", ["module", "model", "module.module"])
def test_wrapped_state_dicts(wrap: str) -> None:
    model = CAVMAE(**SMALL, **SMALL_DECODER)
    source = CAVMAE(**SMALL, **SMALL_DECODER)
    plain = source.state_dict()
    if wrap == "module.module":
        wrapped = {f"module.module.{k}": v for k, v in plain.items()}
    else:
        wrapped = {wrap: plain, "optimizer": {"step": torch.tensor(3)}}
    report = load_checkpoint(model, wrapped)
    assert report.missing == [] and report.unexpected == []
    assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())


def test_deepspeed_module_states_of_train_py_load(tmp_path: Path) -> None:
    """train.py's DeepSpeed checkpoints hold the training objective's state dict (keys `model.*`
    under `module`): they load into the bare model; a file none of whose keys fit raises."""
    from deteclap.config import LossConfig
    from deteclap.model.losses import PretrainObjective

    source = CAVMAE(**SMALL, **SMALL_DECODER)
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": PretrainObjective(source, LossConfig()).state_dict(), "ds_version": "0.19.8",
                "step": 4}, path)
    model = CAVMAE(**SMALL, **SMALL_DECODER)
    report = load_checkpoint(model, path)
    assert report.missing == [] and report.unexpected == []
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="none of its 2 keys is a key of this model"):
        load_checkpoint(model, {"encoder.weight": torch.zeros(2), "head.bias": torch.zeros(1)})


def test_shape_mismatch_names_the_key_and_loads_nothing() -> None:
    model = CAVMAE(**SMALL, **SMALL_DECODER, num_label_classes=3)
    state = CAVMAE(**SMALL, **SMALL_DECODER, num_label_classes=4).state_dict()
    before = model.modality_a.detach().clone()
    want = r"label_head_a\.weight: checkpoint \[4, 32\] vs model \[3, 32\]"
    with pytest.raises(CheckpointError, match=want):
        load_checkpoint(model, state)
    assert torch.equal(model.modality_a.detach(), before)


def test_save_round_trip_is_atomic(tmp_path: Path) -> None:
    model = CAVMAE(**SMALL, **SMALL_DECODER, num_label_classes=3).eval()
    path = tmp_path / "ckpt" / "model.pt"
    save_state_dict(model, path)
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]
    fresh = CAVMAE(**SMALL, **SMALL_DECODER, num_label_classes=3).eval()
    report = load_checkpoint(fresh, path)
    assert report.missing == [] and report.unexpected == []
    fbank, frames = torch.randn(2, 64, 32), torch.randn(2, 3, 32, 32)
    for key in ("audio", "visual"):
        assert torch.equal(fresh.predict_labels(fbank, frames)[key], model.predict_labels(fbank, frames)[key])
    save_state_dict(model.state_dict(), tmp_path / "plain.pt")      # a state dict is accepted too
    assert set(torch.load(tmp_path / "plain.pt", weights_only=True)) == set(model.state_dict())


def test_bad_inputs_raise_clear_errors(tmp_path: Path) -> None:
    model = CAVMAE(**SMALL, **SMALL_DECODER)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(model, tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(model, tmp_path / "junk.pt")
    with pytest.raises(CheckpointError, match="not tensors"):
        load_checkpoint(model, {"modality_a": [1, 2]})
