"""deteclap.model: CAV-MAE stages, masking, embeddings, label heads, losses and objectives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deteclap.config import LossConfig, ModelConfig, load_config
from deteclap.model import CAVMAE, CAVMAEFT, build_finetune_model, build_model
from deteclap.model.losses import FinetuneObjective, PretrainObjective, contrastive_loss, mae_loss
from deteclap.model.pos_embed import sincos_2d

OFFICIAL_PARAMETERS = 191_036_160
NUM_CLASSES = 5
BATCH = 4
# A tiny model: audio grid 4 x 8 (fbank 128 x 64), visual grid 2 x 2 (32 x 32 frames).
TINY = dict(img_size=32, audio_length=128, num_mel_bins=64, embed_dim=32, modality_specific_depth=2,
            num_heads=4, decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=4)


def tiny_model(num_label_classes: int = NUM_CLASSES, **kw) -> CAVMAE:
    torch.manual_seed(0)
    return CAVMAE(**{**TINY, **kw}, num_label_classes=num_label_classes)


def tiny_inputs(batch: int = BATCH, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, TINY["audio_length"], TINY["num_mel_bins"], generator=g),
            torch.randn(batch, 3, TINY["img_size"], TINY["img_size"], generator=g))


def test_default_model_is_the_official_size() -> None:
    model = CAVMAE()
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMETERS
    assert not model.pos_embed_a.requires_grad and not model.decoder_pos_embed_v.requires_grad
    assert model.pos_embed_a.shape == (1, 512, 768) and model.pos_embed_v.shape == (1, 196, 768)
    assert (len(model.blocks_a), len(model.blocks_v), len(model.blocks_u)) == (11, 11, 1)
    assert all(blk.attn.fused_attn for blk in model.modules() if hasattr(blk, "attn"))   # timm SDPA path
    with_heads = build_model(ModelConfig(), num_label_classes=601)
    extra = sum(p.numel() for p in with_heads.parameters()) - OFFICIAL_PARAMETERS
    assert extra == 2 * (768 * 601 + 601)


def _official_sincos_numpy(dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """The official pos_embed.py algorithm (meshgrid(w, h), reshape, numpy float64), rewritten."""
    grid = np.stack(np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32)))
    grid = grid.reshape([2, 1, grid_w, grid_h])

    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    return np.concatenate([one(dim // 2, grid[0]), one(dim // 2, grid[1])], axis=1)


@pytest.mark.parametrize("dim,grid_h,grid_w", [(768, 8, 64), (512, 14, 14), (32, 4, 8)])
def test_position_embeddings_match_official_layout(dim: int, grid_h: int, grid_w: int) -> None:
    want = torch.from_numpy(_official_sincos_numpy(dim, grid_h, grid_w)).float()
    assert torch.equal(sincos_2d(dim, grid_h, grid_w), want)


def test_model_position_embeddings_use_f_by_t_audio_grid() -> None:
    model = tiny_model()
    assert model.audio_grid == (4, 8)
    assert torch.equal(model.pos_embed_a[0], sincos_2d(32, 4, 8))
    assert torch.equal(model.decoder_pos_embed_v[0], sincos_2d(16, 2, 2))


def test_patchify_round_trip_and_audio_layout() -> None:
    model = tiny_model()
    fbank, frames = tiny_inputs()
    p = model.patch_size
    patches_v = model.patchify_video(frames)
    assert patches_v.shape == (BATCH, 4, p * p * 3)
    assert torch.equal(model.unpatchify(patches_v, 3, 2, 2, p), frames)
    patches_a = model.patchify_audio(fbank)
    assert patches_a.shape == (BATCH, 32, p * p)
    image = model.unpatchify(patches_a, 1, 4, 8, p)
    assert torch.equal(image[:, 0].transpose(1, 2), fbank)
    # audio token f * 8 + t holds fbank frames [16 t, 16 t + 16) and bins [16 f, 16 f + 16)
    f, t = 2, 5
    block = fbank[0, t * p:(t + 1) * p, f * p:(f + 1) * p].t().reshape(-1)
    assert torch.equal(patches_a[0, f * 8 + t], block)


def test_shapes_through_every_stage() -> None:
    model = tiny_model()
    fbank, frames = tiny_inputs()
    assert model.tokens_audio(fbank).shape == (BATCH, 32, 32)
    assert model.tokens_video(frames).shape == (BATCH, 4, 32)
    enc = model.forward_encoder(fbank, frames, 0.75, 0.5)
    ka, kv = 8, 2
    assert enc["latent"].shape == (BATCH, ka + kv, 32)
    assert enc["latent_c_a"].shape == (BATCH, ka, 32) and enc["latent_c_v"].shape == (BATCH, kv, 32)
    assert enc["mask_a"].shape == enc["ids_restore_a"].shape == (BATCH, 32)
    assert enc["mask_v"].shape == enc["ids_restore_v"].shape == (BATCH, 4)
    pred_a, pred_v = model.forward_decoder(enc["latent"], enc["ids_restore_a"], enc["ids_restore_v"], ka)
    assert pred_a.shape == (BATCH, 32, 256) and pred_v.shape == (BATCH, 4, 768)
    out = model(fbank, frames)
    assert out["a_bar"].shape == out["v_bar"].shape == (BATCH, 32)
    assert out["label_logits_a"].shape == out["label_logits_v"].shape == (BATCH, NUM_CLASSES)
    assert "pred_a" not in model(fbank, frames, decode=False)
    assert "label_logits_a" not in tiny_model(num_label_classes=0)(fbank, frames)
    with pytest.raises(ValueError, match=r"fbank must be \[B, 128, 64\]"):
        model(fbank[:, :100], frames)


@pytest.mark.parametrize("mode", ["unstructured", "time", "freq", "tf"])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_masking_keeps_exact_ratio_per_sample(mode: str, ratio: float) -> None:
    model = tiny_model()
    x = torch.randn(6, 32, 32)
    kept, mask, ids_restore = model.random_masking(x, ratio, mode)
    keep = int(32 * (1 - ratio))
    assert kept.shape == (6, keep, 32)
    assert torch.equal(mask.sum(dim=1), torch.full((6,), 32.0 - keep))
    # the kept tokens are exactly the unmasked ones, in shuffle order
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    assert torch.equal(torch.sort(ids_shuffle[:, :keep]).values,
                       torch.stack([torch.nonzero(m == 0).flatten() for m in mask]))
    assert torch.equal(kept, torch.gather(x, 1, ids_shuffle[:, :keep, None].expand(-1, -1, 32)))


@pytest.mark.parametrize("mode,cols,rows", [("time", 6, 0), ("freq", 0, 3), ("tf", 4, 2)])
def test_structured_masking_removes_whole_rows_and_columns(mode: str, cols: int, rows: int) -> None:
    model = tiny_model()           # audio grid f=4, t=8
    torch.manual_seed(3)
    _, mask, _ = model.random_masking(torch.randn(64, 32, 8), 0.75, mode)
    grid = mask.reshape(64, 4, 8)
    full_cols = (grid.sum(dim=1) == 4).sum(dim=1)
    full_rows = (grid.sum(dim=2) == 8).sum(dim=1)
    # int(8 * .75) = 6 columns (time); int(4 * .75) = 3 rows (freq); tf: int(8*.75*.7)=4, int(4*.75*.7)=2
    assert (full_cols >= cols).all() and (full_rows >= rows).all()
    # each sample picks its own columns / rows
    assert len({tuple(m.flatten().tolist()) for m in grid}) > 1


def test_decoder_unshuffles_tokens() -> None:
    """Shuffled visible tokens + ids_restore give the same prediction as tokens in place."""
    model = tiny_model().eval()
    latent = torch.randn(2, 36, 32)
    perm_a, perm_v = torch.randperm(32), torch.randperm(4)
    shuffled = torch.cat([latent[:, :32][:, perm_a], latent[:, 32:][:, perm_v]], dim=1)
    ident_a, ident_v = torch.arange(32).expand(2, -1), torch.arange(4).expand(2, -1)
    want = model.forward_decoder(latent, ident_a, ident_v, 32)
    restore_a, restore_v = torch.argsort(perm_a).expand(2, -1), torch.argsort(perm_v).expand(2, -1)
    got = model.forward_decoder(shuffled, restore_a, restore_v, 32)
    for w, g in zip(want, got):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def _manual_block(blk: torch.nn.Module, x: torch.Tensor, modality: str | None, heads: int) -> torch.Tensor:
    """timm-0.4.5 Block math written out (explicit softmax attention, exact GELU)."""
    suffix = {None: "", "a": "_a", "v": "_v"}[modality]
    norm1, norm2 = getattr(blk, "norm1" + suffix), getattr(blk, "norm2" + suffix)
    b, n, c = x.shape
    qkv = F.linear(norm1(x), blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(b, n, 3, heads, c // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-2, -1) * (c // heads) ** -0.5).softmax(dim=-1)
    x = x + F.linear((attn @ v).transpose(1, 2).reshape(b, n, c), blk.attn.proj.weight, blk.attn.proj.bias)
    hidden = F.gelu(F.linear(norm2(x), blk.mlp.fc1.weight, blk.mlp.fc1.bias))
    return x + F.linear(hidden, blk.mlp.fc2.weight, blk.mlp.fc2.bias)


def test_embeddings_equal_official_forward_feat_by_hand() -> None:
    model = tiny_model().eval()
    fbank, frames = tiny_inputs()
    heads = TINY["num_heads"]
    with torch.no_grad():
        a = model.patch_embed_a.proj(fbank.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
        a = a + model.pos_embed_a + model.modality_a
        v = model.patch_embed_v.proj(frames).flatten(2).transpose(1, 2) + model.pos_embed_v + model.modality_v
        for blk in model.blocks_a:
            a = _manual_block(blk, a, None, heads)
        for blk in model.blocks_v:
            v = _manual_block(blk, v, None, heads)
        for blk in model.blocks_u:
            a = _manual_block(blk, a, "a", heads)
            v = _manual_block(blk, v, "v", heads)
        want_a, want_v = model.norm_a(a).mean(dim=1), model.norm_v(v).mean(dim=1)
        torch.testing.assert_close(model.embed_audio(fbank), want_a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.embed_video(frames), want_v, rtol=1e-4, atol=1e-5)
        # without masking, the pretraining contrastive branch sees the same representation
        out = model(fbank, frames, mask_ratio_a=0.0, mask_ratio_v=0.0)
        torch.testing.assert_close(out["a_bar"], want_a, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(out["v_bar"], want_v, rtol=1e-4, atol=1e-5)
        probs = model.predict_labels(fbank, frames)
        for key, head, rep in (("audio", model.label_head_a, want_a), ("visual", model.label_head_v, want_v)):
            torch.testing.assert_close(probs[key], torch.sigmoid(head(rep)), rtol=1e-4, atol=1e-5)


def test_contrastive_loss_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    a, v = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    an, vn = a / a.norm(dim=1, keepdim=True), v / v.norm(dim=1, keepdim=True)
    sim = (an @ vn.t() / 0.05).double()
    # column j: softmax over audio rows i (official log_softmax(dim=0))
    want = -sum(sim[j, j] - torch.logsumexp(sim[:, j], dim=0) for j in range(6)) / 6
    want_acc = sum(int(sim[:, j].argmax() == j) for j in range(6)) / 6
    nce, acc = contrastive_loss(a, v, tau=0.05)
    torch.testing.assert_close(nce.double(), want, rtol=1e-5, atol=1e-5)
    assert acc.item() == pytest.approx(want_acc)
    other, _ = contrastive_loss(v, a, tau=0.05)
    both, _ = contrastive_loss(a, v, tau=0.05, bidirectional=True)
    torch.testing.assert_close(both, (nce + other) / 2)
    assert contrastive_loss(a, a, tau=0.05)[1].item() == 1.0


def test_mae_loss_only_counts_removed_patches() -> None:
    target, pred = torch.randn(2, 5, 12), torch.randn(2, 5, 12)
    mask = torch.zeros(2, 5)
    mask[1, 3] = 1
    want = ((pred[1, 3] - target[1, 3]) ** 2).mean()
    torch.testing.assert_close(mae_loss(target, pred, mask, norm_pix_loss=False), want)
    t = target[1, 3]
    normed = (t - t.mean()) / (t.var() + 1e-6) ** 0.5
    want = ((pred[1, 3] - normed) ** 2).mean()
    torch.testing.assert_close(mae_loss(target, pred, mask, norm_pix_loss=True), want)


def test_objective_weights_and_absent_targets() -> None:
    model = tiny_model()
    fbank, frames = tiny_inputs()
    labels = (torch.rand(BATCH, NUM_CLASSES) > 0.5).float()
    cfg = LossConfig(mae_weight=0.5, contrastive_weight=0.1, a2l_weight=2.0, v2l_weight=3.0)
    torch.manual_seed(5)
    out = PretrainObjective(model, cfg)(fbank, frames, {"a2l": labels})
    assert set(out) == {"total", "contrastive", "mae_audio", "mae_visual", "a2l", "v2l", "c_acc"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    assert out["v2l"].item() == 0.0 and out["a2l"].item() > 0
    want = 0.5 * (out["mae_audio"] + out["mae_visual"]) + 0.1 * out["contrastive"] + 2.0 * out["a2l"]
    torch.testing.assert_close(out["total"], want)
    no_mae = PretrainObjective(model, LossConfig(mae_weight=0.0))(fbank, frames, {})
    assert no_mae["mae_audio"].item() == 0.0
    torch.testing.assert_close(no_mae["total"], 0.01 * no_mae["contrastive"])
    with pytest.raises(ValueError, match="no label heads"):
        PretrainObjective(tiny_model(num_label_classes=0), cfg)(fbank, frames, {"a2l": labels})


def test_tiny_model_overfits_one_batch() -> None:
    model = tiny_model(norm_pix_loss=True)
    # each clip repeats one random 16 x 16 tile, so masked patches are predictable from visible ones
    g = torch.Generator().manual_seed(1)
    fbank = torch.randn(BATCH, 16, 16, generator=g).repeat(1, 8, 4)
    frames = torch.randn(BATCH, 3, 16, 16, generator=g).repeat(1, 1, 2, 2)
    targets = {key: (torch.rand(BATCH, NUM_CLASSES, generator=g) > 0.5).float() for key in ("a2l", "v2l")}
    objective = PretrainObjective(model, LossConfig(contrastive_weight=0.1))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(30):
        out = objective(fbank, frames, targets)
        opt.zero_grad()
        out["total"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    assert all(np.isfinite(list(h.values())).all() for h in history)

    def mean(key: str, part: slice) -> float:
        return float(np.mean([h[key] for h in history[part]]))
    for key in ("total", "contrastive", "mae_audio", "mae_visual", "a2l", "v2l"):
        assert mean(key, slice(-5, None)) < 0.8 * mean(key, slice(0, 5)), key


# bf16 keeps 8 mantissa bits (relative step 2**-8 ~ 0.4 %); the losses themselves are computed in
# fp32, so they stay within 1 % of fp32 (measured: at most 0.15 %, the contrastive term).
BF16_RTOL = 0.01


def test_bf16_autocast_losses_close_to_fp32() -> None:
    model = tiny_model()
    fbank, frames = tiny_inputs()
    targets = {"a2l": torch.rand(BATCH, NUM_CLASSES), "v2l": torch.rand(BATCH, NUM_CLASSES)}
    objective = PretrainObjective(model, LossConfig())
    torch.manual_seed(9)
    fp32 = objective(fbank, frames, targets)
    torch.manual_seed(9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = objective(fbank, frames, targets)
    for key in ("total", "contrastive", "mae_audio", "mae_visual", "a2l", "v2l"):
        assert bf16[key].dtype == torch.float32
        assert bf16[key].item() == pytest.approx(fp32[key].item(), rel=BF16_RTOL), key


FT_MODES = ["multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly"]


def test_finetune_model_modes() -> None:
    torch.manual_seed(0)
    ft = CAVMAEFT(7, **{k: TINY[k] for k in ("img_size", "audio_length", "num_mel_bins", "embed_dim",
                                               "modality_specific_depth", "num_heads")}).eval()
    assert ft.pos_embed_a.requires_grad        # official CAVMAEFT: tr_pos=True
    fbank, frames = tiny_inputs()
    with torch.no_grad():
        for mode in FT_MODES:
            assert ft(fbank, frames, mode).shape == (BATCH, 7)
        torch.testing.assert_close(ft(fbank, None, "audioonly"), ft.mlp_head(ft.embed_audio(fbank)))
        torch.testing.assert_close(ft(None, frames, "videoonly"), ft.mlp_head(ft.embed_video(frames)))
        a = ft.run_blocks(ft.tokens_audio(fbank), ft.blocks_a)
        v = ft.run_blocks(ft.tokens_video(frames), ft.blocks_v)
        joint = ft.norm(ft.run_blocks(torch.cat([a, v], dim=1), ft.blocks_u)).mean(dim=1)
        torch.testing.assert_close(ft(fbank, frames, "multimodal"), ft.mlp_head(joint))
        missing = (ft.norm(ft.run_blocks(a, ft.blocks_u)).mean(dim=1) + ft.embed_audio(fbank)) / 2
        torch.testing.assert_close(ft(fbank, None, "missingaudioonly"), ft.mlp_head(missing))
    with pytest.raises(ValueError, match="needs frames"):
        ft(fbank, None, "videoonly")


def test_finetune_objective() -> None:
    cfg = load_config("configs/tiny.json")
    ft = build_finetune_model(cfg, 3)
    assert ft.mlp_head[1].out_features == 3 and ft.audio_length == cfg.model.audio_length
    fbank = torch.randn(2, cfg.model.audio_length, cfg.model.num_mel_bins)
    frames = torch.randn(2, 3, cfg.model.img_size, cfg.model.img_size)
    single = FinetuneObjective(ft, "single_label", "multimodal")
    by_index = single(fbank, frames, torch.tensor([2, 0]), return_logits=True)
    one_hot = single(fbank, frames, torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    torch.testing.assert_close(by_index["ce"], one_hot["ce"])
    logits = by_index["logits"]
    torch.testing.assert_close(by_index["total"], F.cross_entropy(logits, torch.tensor([2, 0])))
    multi_hot = torch.tensor([[1.0, 0, 1], [0, 0, 0]])
    multi = FinetuneObjective(ft, "multi_label", "audioonly")(fbank, None, multi_hot)
    assert set(multi) == {"total", "bce"} and torch.isfinite(multi["bce"])
    with pytest.raises(ValueError, match="task"):
        FinetuneObjective(ft, "regression")


def test_build_model_from_config() -> None:
    cfg = load_config("configs/tiny.json").model
    model = build_model(cfg, num_label_classes=11)
    assert model.label_head_v.out_features == 11 and model.norm_pix_loss == cfg.norm_pix_loss
    assert len(model.blocks_a) == cfg.modality_specific_depth
    assert len(model.decoder_blocks) == cfg.decoder_depth
    assert model.pos_embed_a.shape == (1, cfg.audio_length // 16 * cfg.num_mel_bins // 16, cfg.embed_dim)
