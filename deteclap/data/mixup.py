"""Fine-tuning mixup (CAV-MAE src/dataloader.py), batched: the one implementation both loaders use.

CAV-MAE, with probability `data.mixup`, mixes a sample with a random partner: lambda ~ Beta(10, 10),
waveform = lambda * (w1 - mean w1) + (1 - lambda) * (w2 - mean w2) with w2 zero-padded or cut to
w1's length (the mean of the mix is removed again by the fbank contract), frame =
lambda * f1 + (1 - lambda) * f2, label = lambda * y1 + (1 - lambda) * y2.

Differences from the official loader: the partner is drawn from the same batch instead of the whole
dataset (so mixing needs no extra decoding); label smoothing follows the mix (`finetune.label_smooth`,
deteclap.data.targets.smooth_labels). Random numbers come from torch's global generator, which
train.py seeds per step, so a resumed run mixes the same pairs.
"""

from __future__ import annotations

import torch
from torch import Tensor

# CAV-MAE: mix_lambda = np.random.beta(10, 10)
MIXUP_BETA = 10.0


def mixup_batch(waves: Tensor, lengths: Tensor, frames: Tensor, classes: Tensor, prob: float,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Mix each sample, with probability `prob`, with a random partner of the batch.

    Args:
        waves: float [B, S] zero-padded waveforms; lengths: int [B] valid samples per row.
        frames: float [B, 3, H, W]; classes: float [B, K] (multi-hot or one-hot).
        prob: probability that a sample is mixed (CAV-MAE fine-tuning: 0.5).
    Returns:
        (waves [B, S], frames [B, 3, H, W], classes [B, K] soft labels); lengths are unchanged
        (a mixed row keeps its own length, as CAV-MAE pads / cuts the partner to it).
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mixup probability must lie in [0, 1], got {prob}")
    batch, samples = waves.shape
    mixed = torch.rand(batch, generator=generator) < prob
    partner = torch.randint(batch, (batch,), generator=generator)
    beta = torch.distributions.Beta(torch.tensor(MIXUP_BETA), torch.tensor(MIXUP_BETA))
    lam = torch.where(mixed, beta.sample((batch,)), torch.ones(batch))   # 1 = not mixed
    device = waves.device
    lam, partner, lengths = lam.to(device), partner.to(device), lengths.to(device)

    valid = torch.arange(samples, device=device).unsqueeze(0) < lengths.unsqueeze(1)      # [B, S]
    means = (waves * valid).sum(dim=1, keepdim=True) / lengths.unsqueeze(1).to(waves.dtype)
    centred = (waves - means) * valid                      # each wave without its mean, zero-padded
    other = centred[partner] * valid                       # partner padded / cut to this row's length
    lam_w = lam.to(waves.dtype).unsqueeze(1)
    out_waves = torch.where(valid, lam_w * centred + (1 - lam_w) * other, torch.zeros_like(waves))
    out_waves = torch.where(mixed.to(device).unsqueeze(1), out_waves, waves)

    lam_f = lam.to(frames.dtype).view(-1, 1, 1, 1)
    out_frames = lam_f * frames + (1 - lam_f) * frames[partner]
    lam_c = lam.to(classes.dtype).unsqueeze(1)
    out_classes = lam_c * classes + (1 - lam_c) * classes[partner]
    return out_waves, out_frames, out_classes
