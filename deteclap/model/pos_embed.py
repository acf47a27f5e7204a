"""Fixed 2-D sine-cosine position embeddings laid out as CAV-MAE's (MAE's) pos_embed.py.

For a grid of `grid_h x grid_w` patches flattened row-major (index = h * grid_w + w), the
embedding of a patch is concat(sincos_{D/2}(w), sincos_{D/2}(h)); each 1-D part is
concat(sin(pos * omega), cos(pos * omega)) with omega_k = 10000 ** (-k / (D/4)). Computed in
float64 (the official code uses numpy float64) and returned as float32.
"""

from __future__ import annotations

import torch

SINCOS_BASE = 10000.0


def sincos_1d(embed_dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions [M] -> [M, embed_dim] = concat(sin(pos * omega), cos(pos * omega))."""
    if embed_dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {embed_dim}")
    omega = torch.arange(embed_dim // 2, dtype=torch.float64) / (embed_dim / 2.0)
    omega = 1.0 / SINCOS_BASE ** omega                                 # [D/2]
    out = positions.to(torch.float64).reshape(-1, 1) * omega           # [M, D/2]
    return torch.cat([out.sin(), out.cos()], dim=1)


def sincos_2d(embed_dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """-> float32 [grid_h * grid_w, embed_dim], row-major over (h, w); first half encodes w."""
    if embed_dim % 4:
        raise ValueError(f"2-D sin-cos embedding needs a dimension divisible by 4, got {embed_dim}")
    hh, ww = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")  # [h, w]
    emb_w = sincos_1d(embed_dim // 2, ww.reshape(-1))
    emb_h = sincos_1d(embed_dim // 2, hh.reshape(-1))
    return torch.cat([emb_w, emb_h], dim=1).float()
