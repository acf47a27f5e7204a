"""CAV-MAE (Gong et al., ICLR 2023) as published in YuanGongND/cav-mae src/models/cav_mae.py, plus
DETECLAP's two label heads.

Owns the network: patch embeddings, the three-norm transformer Block, the audio / visual / joint
encoders, the MAE decoder, masking, retrieval embeddings and the label heads. Losses live in
`losses.py`, checkpoint loading in `checkpoint.py`.

Attribute names equal the official ones so that released checkpoints load after stripping
`module.` only. Attention and Mlp are timm's (their state-dict keys `qkv`, `proj`, `fc1`, `fc2`
are the same in timm 0.4.5 and timm 1.x); timm's fused attention (SDPA) is used. Unlike the
official code, nothing in timm is monkey-patched.

Audio layout (official): the fbank [B, T, F] is transposed to an image [B, 1, F, T], so audio
patches form an [F/16, T/16] grid (8 x 64 for 1024 x 128) flattened row-major: index f * 64 + t.

Known difference: with `joint_depth > 1` the official pretraining forward applies each joint
block to the *input* of the joint stage in the modality-alone branch (`ca = blk(a, 'a')` in a
loop, keeping only the last block's output), while its `forward_feat` chains the blocks. Here
both chain the blocks. With the published `joint_depth = 1` the two are identical.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.models.vision_transformer import Attention, Mlp

from deteclap.model.pos_embed import sincos_2d

# Official initialisation: "timm's trunc_normal_(std=.02) is effectively normal_(std=0.02)".
TOKEN_INIT_STD = 0.02
# Structured masking (official ablation): masked rows / columns get a noise above any rand() value.
MASKED_NOISE = 1.1
# In "tf" mode the official code masks this fraction of mask_ratio along each of time and frequency.
TF_MASK_FACTOR = 0.7
MASK_MODES = ("unstructured", "time", "freq", "tf")
FINETUNE_MODES = ("multimodal", "audioonly", "videoonly", "missingaudioonly", "missingvideoonly")


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches: [B, C, H, W] -> [B, (H/p) * (W/p), D] (row-major grid)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Block(nn.Module):
    """Pre-norm transformer block with three LayerNorm sets: joint (norm1/norm2), audio
    (norm1_a/norm2_a) and visual (norm1_v/norm2_v); attention and MLP weights are shared.

    forward(x [B, L, D], modality None | "a" | "v") -> [B, L, D].
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm1_a = nn.LayerNorm(dim)
        self.norm1_v = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim)
        self.norm2_a = nn.LayerNorm(dim)
        self.norm2_v = nn.LayerNorm(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        if modality is None:
            norm1, norm2 = self.norm1, self.norm2
        elif modality == "a":
            norm1, norm2 = self.norm1_a, self.norm2_a
        elif modality == "v":
            norm1, norm2 = self.norm1_v, self.norm2_v
        else:
            raise ValueError(f"modality must be None, 'a' or 'v', got {modality!r}")
        x = x + self.attn(norm1(x))
        return x + self.mlp(norm2(x))


def _init_linear_and_norm(m: nn.Module) -> None:
    """Official init: xavier-uniform Linear weights, zero biases, LayerNorm (1, 0)."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


def _fixed_pos_embed(num_tokens: int, dim: int, trainable: bool) -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, num_tokens, dim), requires_grad=trainable)


class CAVMAEEncoder(nn.Module):
    """The encoder shared by CAVMAE and CAVMAEFT: patch embeddings, modality tokens, fixed
    sin-cos position embeddings, 11 audio + 11 visual blocks, joint blocks and three final norms.

    Shapes: fbank [B, audio_length, num_mel_bins] (normalised), frames [B, 3, img_size, img_size].
    """

    def __init__(self, img_size: int = 224, audio_length: int = 1024, num_mel_bins: int = 128,
                 patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 modality_specific_depth: int = 11, joint_depth: int = 1, num_heads: int = 12,
                 mlp_ratio: float = 4.0, tr_pos: bool = False):
        super().__init__()
        for name, size in (("img_size", img_size), ("audio_length", audio_length),
                           ("num_mel_bins", num_mel_bins)):
            if size % patch_size:
                raise ValueError(f"{name}={size} is not a multiple of patch_size={patch_size}")
        self.img_size, self.audio_length, self.num_mel_bins = img_size, audio_length, num_mel_bins
        self.patch_size, self.in_chans, self.embed_dim = patch_size, in_chans, embed_dim
        self.audio_grid = (num_mel_bins // patch_size, audio_length // patch_size)   # (f, t)
        self.video_grid = (img_size // patch_size, img_size // patch_size)
        self.num_patches_a = self.audio_grid[0] * self.audio_grid[1]
        self.num_patches_v = self.video_grid[0] * self.video_grid[1]

        self.patch_embed_a = PatchEmbed(patch_size, 1, embed_dim)
        self.patch_embed_v = PatchEmbed(patch_size, in_chans, embed_dim)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed_a = _fixed_pos_embed(self.num_patches_a, embed_dim, tr_pos)
        self.pos_embed_v = _fixed_pos_embed(self.num_patches_v, embed_dim, tr_pos)
        self.blocks_a = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio)
                                       for _ in range(modality_specific_depth)])
        self.blocks_v = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio)
                                       for _ in range(modality_specific_depth)])
        self.blocks_u = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(joint_depth)])
        self.norm_a, self.norm_v, self.norm = (nn.LayerNorm(embed_dim), nn.LayerNorm(embed_dim),
                                               nn.LayerNorm(embed_dim))

    def _init_encoder(self) -> None:
        """Official initialize_weights (encoder part); Linear / LayerNorm init is applied by the
        subclass over the whole model."""
        self.pos_embed_a.data.copy_(sincos_2d(self.embed_dim, *self.audio_grid).unsqueeze(0))
        self.pos_embed_v.data.copy_(sincos_2d(self.embed_dim, *self.video_grid).unsqueeze(0))
        for proj in (self.patch_embed_a.proj, self.patch_embed_v.proj):
            w = proj.weight.data
            nn.init.xavier_uniform_(w.view([w.shape[0], -1]))    # like nn.Linear, not nn.Conv2d
        nn.init.normal_(self.modality_a, std=TOKEN_INIT_STD)
        nn.init.normal_(self.modality_v, std=TOKEN_INIT_STD)

    # ---- shapes -------------------------------------------------------------------------------
    def _check_inputs(self, fbank: torch.Tensor | None, frames: torch.Tensor | None) -> None:
        want_a = (self.audio_length, self.num_mel_bins)
        if fbank is not None and (fbank.dim() != 3 or tuple(fbank.shape[1:]) != want_a):
            raise ValueError(f"fbank must be [B, {want_a[0]}, {want_a[1]}], got {list(fbank.shape)}")
        want_v = (self.in_chans, self.img_size, self.img_size)
        if frames is not None and (frames.dim() != 4 or tuple(frames.shape[1:]) != want_v):
            raise ValueError(f"frames must be [B, {', '.join(map(str, want_v))}], got {list(frames.shape)}")

    @staticmethod
    def audio_as_image(fbank: torch.Tensor) -> torch.Tensor:
        """[B, T, F] -> [B, 1, F, T] (the official `a.unsqueeze(1).transpose(2, 3)`)."""
        return fbank.unsqueeze(1).transpose(2, 3)

    # ---- encoder stages -------------------------------------------------------------------------
    def tokens_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, F] -> embedded audio tokens [B, La, D] (+ position + modality)."""
        x = self.audio_as_image(fbank).to(self.patch_embed_a.proj.weight.dtype)
        return self.patch_embed_a(x) + self.pos_embed_a + self.modality_a

    def tokens_video(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, 3, H, W] -> embedded visual tokens [B, Lv, D] (+ position + modality)."""
        x = frames.to(self.patch_embed_v.proj.weight.dtype)
        return self.patch_embed_v(x) + self.pos_embed_v + self.modality_v

    @staticmethod
    def run_blocks(x: torch.Tensor, blocks: nn.ModuleList, modality: str | None = None) -> torch.Tensor:
        """[B, L, D] -> [B, L, D] through `blocks` in order, with the given norm set."""
        for blk in blocks:
            x = blk(x, modality)
        return x

    def joint_alone(self, x: torch.Tensor, modality: str) -> torch.Tensor:
        """One modality alone through the joint blocks with its own norms: [B, L, D] -> [B, L, D]."""
        norm = self.norm_a if modality == "a" else self.norm_v
        return norm(self.run_blocks(x, self.blocks_u, modality))

    def joint_unified(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens through the joint blocks with the joint norms: [B, L, D] -> [B, L, D]."""
        return self.norm(self.run_blocks(x, self.blocks_u))

    def forward_feat_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """Official forward_feat, audio half (no masking): [B, T, F] -> [B, La, D]."""
        self._check_inputs(fbank, None)
        a = self.run_blocks(self.tokens_audio(fbank), self.blocks_a)
        return self.joint_alone(a, "a")

    def forward_feat_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Official forward_feat, visual half (no masking): [B, 3, H, W] -> [B, Lv, D]."""
        self._check_inputs(None, frames)
        v = self.run_blocks(self.tokens_video(frames), self.blocks_v)
        return self.joint_alone(v, "v")

    def forward_feat(self, fbank: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Official forward_feat: -> (audio tokens [B, La, D], visual tokens [B, Lv, D])."""
        return self.forward_feat_audio(fbank), self.forward_feat_video(frames)

    def embed_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: fbank [B, T, F] -> [B, D], mean-pooled, not L2-normalised."""
        return self.forward_feat_audio(fbank).mean(dim=1)

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Retrieval embedding: frames [B, 3, H, W] -> [B, D], mean-pooled, not L2-normalised."""
        return self.forward_feat_video(frames).mean(dim=1)


class CAVMAE(CAVMAEEncoder):
    """The CAV-MAE pretraining model (defaults = the official one, 191,036,160 parameters) with
    optional DETECLAP label heads `label_head_a` / `label_head_v` (Linear D -> num_label_classes
    on the mean-pooled modality-alone joint outputs a_bar / v_bar).
    """

    def __init__(self, img_size: int = 224, audio_length: int = 1024, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, modality_specific_depth: int = 11,
                 num_heads: int = 12, decoder_embed_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int = 16, mlp_ratio: float = 4.0, norm_pix_loss: bool = False,
                 tr_pos: bool = False, num_mel_bins: int = 128, joint_depth: int = 1,
                 num_label_classes: int = 0):
        super().__init__(img_size=img_size, audio_length=audio_length, num_mel_bins=num_mel_bins,
                         patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         modality_specific_depth=modality_specific_depth, joint_depth=joint_depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, tr_pos=tr_pos)
        self.norm_pix_loss = norm_pix_loss
        self.num_label_classes = num_label_classes

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed_a = _fixed_pos_embed(self.num_patches_a, decoder_embed_dim, tr_pos)
        self.decoder_pos_embed_v = _fixed_pos_embed(self.num_patches_v, decoder_embed_dim, tr_pos)
        self.decoder_blocks = nn.ModuleList([Block(decoder_embed_dim, decoder_num_heads, mlp_ratio)
                                             for _ in range(decoder_depth)])
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred_a = nn.Linear(decoder_embed_dim, patch_size ** 2 * 1, bias=True)
        self.decoder_pred_v = nn.Linear(decoder_embed_dim, patch_size ** 2 * in_chans, bias=True)
        if num_label_classes > 0:
            self.label_head_a = nn.Linear(embed_dim, num_label_classes)
            self.label_head_v = nn.Linear(embed_dim, num_label_classes)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Official initialisation (fixed sin-cos position embeddings, xavier, normal tokens)."""
        self._init_encoder()
        dim = self.decoder_embed.out_features
        self.decoder_pos_embed_a.data.copy_(sincos_2d(dim, *self.audio_grid).unsqueeze(0))
        self.decoder_pos_embed_v.data.copy_(sincos_2d(dim, *self.video_grid).unsqueeze(0))
        for token in (self.decoder_modality_a, self.decoder_modality_v, self.mask_token):
            nn.init.normal_(token, std=TOKEN_INIT_STD)
        self.apply(_init_linear_and_norm)

    # ---- patches --------------------------------------------------------------------------------
    @staticmethod
    def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
        """imgs [N, C, H, W] -> [N, (H/p) * (W/p), p * p * C] (official channel-last patch order)."""
        n, c, h, w = imgs.shape
        x = imgs.reshape(n, c, h // p, p, w // p, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    @staticmethod
    def unpatchify(x: torch.Tensor, c: int, h: int, w: int, p: int) -> torch.Tensor:
        """x [N, h * w, p * p * c] -> imgs [N, c, h * p, w * p]; inverse of `patchify`."""
        if h * w != x.shape[1]:
            raise ValueError(f"{x.shape[1]} patches do not form a {h} x {w} grid")
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def patchify_audio(self, fbank: torch.Tensor) -> torch.Tensor:
        """fbank [B, T, F] -> MAE target patches [B, La, p * p] in the audio token order."""
        return self.patchify(self.audio_as_image(fbank), self.patch_size)

    def patchify_video(self, frames: torch.Tensor) -> torch.Tensor:
        """frames [B, 3, H, W] -> MAE target patches [B, Lv, p * p * 3]."""
        return self.patchify(frames, self.patch_size)

    # ---- masking --------------------------------------------------------------------------------
    @staticmethod
    def num_keep(num_tokens: int, mask_ratio: float) -> int:
        """Tokens kept visible: int(L * (1 - mask_ratio)), as the official code rounds."""
        return int(num_tokens * (1 - mask_ratio))

    def _structured_noise(self, n: int, mask_ratio: float, mode: str, device: torch.device) -> torch.Tensor:
        """Official random_masking_structured noise, vectorised: [n, La]. Whole time columns
        ("time"), frequency rows ("freq") or both ("tf", 0.7 x the ratio each) get MASKED_NOISE, so
        they are removed first. The row / column subsets are uniformly random per sample, drawn
        with torch's generator instead of Python's `random.sample`."""
        f, t = self.audio_grid
        noise = torch.rand(n, f, t, device=device)        # audio patches are [f, t], not [t, f]
        scale = TF_MASK_FACTOR if mode == "tf" else 1.0
        if mode in ("time", "tf"):
            cols = torch.rand(n, t, device=device).argsort(dim=1)[:, :int(t * mask_ratio * scale)]
            drop = torch.zeros(n, t, dtype=torch.bool, device=device).scatter_(1, cols, True)
            noise = noise.masked_fill(drop[:, None, :], MASKED_NOISE)
        if mode in ("freq", "tf"):
            rows = torch.rand(n, f, device=device).argsort(dim=1)[:, :int(f * mask_ratio * scale)]
            drop = torch.zeros(n, f, dtype=torch.bool, device=device).scatter_(1, rows, True)
            noise = noise.masked_fill(drop[:, :, None], MASKED_NOISE)
        return noise.reshape(n, f * t)

    def random_masking(self, x: torch.Tensor, mask_ratio: float, mode: str = "unstructured",
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-sample masking by argsort of random noise (MAE).

        x [N, L, D] -> (x_masked [N, L_keep, D], mask [N, L] (0 keep, 1 removed, float),
        ids_restore [N, L]); L_keep = int(L * (1 - mask_ratio)) for every sample. `mode` other
        than "unstructured" is the official structured audio masking (x must be audio tokens).
        """
        if mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {MASK_MODES}, got {mode!r}")
        n, length, dim = x.shape
        keep = self.num_keep(length, mask_ratio)
        if mode == "unstructured":
            noise = torch.rand(n, length, device=x.device)
        else:
            noise = self._structured_noise(n, mask_ratio, mode, x.device)
        ids_shuffle = torch.argsort(noise, dim=1)          # ascending: small is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x_masked = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_masked, mask, ids_restore

    # ---- pretraining forward ------------------------------------------------------------------
    def forward_encoder(self, fbank: torch.Tensor, frames: torch.Tensor, mask_ratio_a: float,
                        mask_ratio_v: float, mask_mode: str = "unstructured") -> dict[str, torch.Tensor]:
        """Masked encoding.

        fbank [B, T, F], frames [B, 3, H, W] -> dict:
          latent [B, Ka + Kv, D]: visible audio then visual tokens through the joint blocks (norm);
          latent_c_a [B, Ka, D], latent_c_v [B, Kv, D]: each modality alone through the joint
            blocks with its own norms (the contrastive branch);
          mask_a [B, La], ids_restore_a [B, La], mask_v [B, Lv], ids_restore_v [B, Lv].
        Ka = int(La * (1 - mask_ratio_a)), Kv likewise. Video masking is always unstructured.
        """
        self._check_inputs(fbank, frames)
        a, mask_a, ids_restore_a = self.random_masking(self.tokens_audio(fbank), mask_ratio_a, mask_mode)
        v, mask_v, ids_restore_v = self.random_masking(self.tokens_video(frames), mask_ratio_v)
        a = self.run_blocks(a, self.blocks_a)
        v = self.run_blocks(v, self.blocks_v)
        latent = self.joint_unified(torch.cat((a, v), dim=1))
        return {"latent": latent, "latent_c_a": self.joint_alone(a, "a"),
                "latent_c_v": self.joint_alone(v, "v"), "mask_a": mask_a, "ids_restore_a": ids_restore_a,
                "mask_v": mask_v, "ids_restore_v": ids_restore_v}

    def forward_decoder(self, latent: torch.Tensor, ids_restore_a: torch.Tensor,
                        ids_restore_v: torch.Tensor, num_keep_a: int) -> tuple[torch.Tensor, torch.Tensor]:
        """latent [B, Ka + Kv, D] -> (pred_a [B, La, p*p], pred_v [B, Lv, p*p*3]).

        Mask tokens fill the removed positions, tokens are unshuffled with ids_restore, then
        position and modality embeddings are added and the decoder blocks run on both modalities.
        """
        x = self.decoder_embed(latent)
        b, _, dim = x.shape
        la, lv = ids_restore_a.shape[1], ids_restore_v.shape[1]
        visible_a, visible_v = x[:, :num_keep_a], x[:, num_keep_a:]
        a_ = torch.cat([visible_a, self.mask_token.expand(b, la - num_keep_a, dim).to(x.dtype)], dim=1)
        a_ = torch.gather(a_, 1, ids_restore_a.unsqueeze(-1).expand(-1, -1, dim))
        num_keep_v = visible_v.shape[1]
        v_ = torch.cat([visible_v, self.mask_token.expand(b, lv - num_keep_v, dim).to(x.dtype)], dim=1)
        v_ = torch.gather(v_, 1, ids_restore_v.unsqueeze(-1).expand(-1, -1, dim))
        a_ = a_ + self.decoder_pos_embed_a + self.decoder_modality_a
        v_ = v_ + self.decoder_pos_embed_v + self.decoder_modality_v
        x = self.decoder_norm(self.run_blocks(torch.cat([a_, v_], dim=1), self.decoder_blocks))
        return self.decoder_pred_a(x[:, :la]), self.decoder_pred_v(x[:, la:])

    def label_logits(self, a_bar: torch.Tensor, v_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """a_bar, v_bar [B, D] -> label logits (audio head, visual head), each [B, C]."""
        if self.num_label_classes <= 0:
            raise RuntimeError("this CAVMAE has no label heads (num_label_classes=0)")
        return self.label_head_a(a_bar), self.label_head_v(v_bar)

    def forward(self, fbank: torch.Tensor, frames: torch.Tensor, mask_ratio_a: float = 0.75,
                mask_ratio_v: float = 0.75, mask_mode: str = "unstructured",
                decode: bool = True) -> dict[str, torch.Tensor]:
        """One pretraining forward pass.

        Returns forward_encoder's dict plus a_bar [B, D], v_bar [B, D] (mean of latent_c_a /
        latent_c_v, what the contrastive loss and the label heads use), pred_a [B, La, p*p] and
        pred_v [B, Lv, p*p*3] when `decode`, and label_logits_a / label_logits_v [B, C] when the
        model has label heads.
        """
        out = self.forward_encoder(fbank, frames, mask_ratio_a, mask_ratio_v, mask_mode)
        out["a_bar"] = out["latent_c_a"].mean(dim=1)
        out["v_bar"] = out["latent_c_v"].mean(dim=1)
        if decode:
            num_keep_a = self.num_keep(self.num_patches_a, mask_ratio_a)
            out["pred_a"], out["pred_v"] = self.forward_decoder(
                out["latent"], out["ids_restore_a"], out["ids_restore_v"], num_keep_a)
        if self.num_label_classes > 0:
            out["label_logits_a"], out["label_logits_v"] = self.label_logits(out["a_bar"], out["v_bar"])
        return out

    @torch.no_grad()
    def predict_labels(self, fbank: torch.Tensor, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        """Label probabilities from unmasked inputs: {"audio": [B, C], "visual": [B, C]}."""
        logits_a, logits_v = self.label_logits(self.embed_audio(fbank), self.embed_video(frames))
        return {"audio": torch.sigmoid(logits_a), "visual": torch.sigmoid(logits_v)}


class CAVMAEFT(CAVMAEEncoder):
    """The official fine-tuning model: the CAV-MAE encoder + mlp_head (LayerNorm, Linear).

    forward(fbank [B, T, F], frames [B, 3, H, W], mode) -> logits [B, label_dim]; modes as the
    official: multimodal (joint blocks on both, joint norm), audioonly / videoonly (one modality,
    its own norms), missingaudioonly / missingvideoonly (trained multimodal, one modality at test:
    mean of the joint-norm and modality-norm passes). Inputs a mode does not use may be None.
    Position embeddings are trainable by default, as the official CAVMAEFT (tr_pos=True).
    """

    def __init__(self, label_dim: int, img_size: int = 224, audio_length: int = 1024,
                 patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 modality_specific_depth: int = 11, num_heads: int = 12, mlp_ratio: float = 4.0,
                 tr_pos: bool = True, num_mel_bins: int = 128, joint_depth: int = 1):
        super().__init__(img_size=img_size, audio_length=audio_length, num_mel_bins=num_mel_bins,
                         patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         modality_specific_depth=modality_specific_depth, joint_depth=joint_depth,
                         num_heads=num_heads, mlp_ratio=mlp_ratio, tr_pos=tr_pos)
        self.mlp_head = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, label_dim))
        self._init_encoder()
        self.apply(_init_linear_and_norm)

    def _specific(self, fbank: torch.Tensor | None, frames: torch.Tensor | None, which: str) -> torch.Tensor:
        """Tokens of one modality after its modality-specific blocks: [B, L, D]."""
        if which == "a":
            if fbank is None:
                raise ValueError("this mode needs fbank")
            self._check_inputs(fbank, None)
            return self.run_blocks(self.tokens_audio(fbank), self.blocks_a)
        if frames is None:
            raise ValueError("this mode needs frames")
        self._check_inputs(None, frames)
        return self.run_blocks(self.tokens_video(frames), self.blocks_v)

    def features(self, fbank: torch.Tensor | None, frames: torch.Tensor | None,
                 mode: str = "multimodal") -> torch.Tensor:
        """Pooled representation before mlp_head: [B, D]."""
        if mode == "multimodal":
            x = torch.cat((self._specific(fbank, None, "a"), self._specific(None, frames, "v")), dim=1)
            return self.joint_unified(x).mean(dim=1)
        if mode in ("audioonly", "videoonly"):
            which = mode[0]
            return self.joint_alone(self._specific(fbank, frames, which), which).mean(dim=1)
        if mode in ("missingaudioonly", "missingvideoonly"):
            which = "a" if mode == "missingaudioonly" else "v"
            x = self._specific(fbank, frames, which)
            return (self.joint_unified(x).mean(dim=1) + self.joint_alone(x, which).mean(dim=1)) / 2
        raise ValueError(f"mode must be one of {FINETUNE_MODES}, got {mode!r}")

    def forward(self, fbank: torch.Tensor | None, frames: torch.Tensor | None,
                mode: str = "multimodal") -> torch.Tensor:
        return self.mlp_head(self.features(fbank, frames, mode))
