"""Position encodings for the transformer (the baseline's, and LOFR's base before SPE adds φ).

* :class:`SinePositionEncoding` — DETR's fixed 2-D sine encoding: half of the d channels encode
  the row y, the other half the column x, each as sin/cos pairs at geometrically spaced
  frequencies. One difference from DETR, to follow lofr's pixel-centre convention
  (``lofr/data/transforms.py``): the cell (i, j) is placed at its centre, y = (i + 0.5) / h * 2π,
  x = (j + 0.5) / w * 2π (DETR uses (i + 1) / h * 2π).
* :class:`LearnedPositionEncoding` — DETR's learned variant: a random-initialised row table and
  column table (d/2 channels each), the "random initialized position embedding" that the paper's
  SPE is compared against (Sec. 3.3, Fig. 5).

Both are called as ``pe(h, w)`` and return a (d, h, w) map to be added to a (B, d, h, w) feature.
"""

from __future__ import annotations

import math

import torch
from einops import repeat
from torch import nn

__all__ = ["SinePositionEncoding", "LearnedPositionEncoding", "sine_encoding_1d"]


def sine_encoding_1d(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """(N,) positions in radians -> (N, dim) features; channel k is sin (k even) or cos (k odd)
    of pos / temperature^(2 floor(k/2) / dim)."""
    if dim % 2:
        raise ValueError(f"sine encoding needs an even number of channels, got {dim}")
    k = torch.arange(dim, dtype=torch.float32, device=pos.device)
    freq = temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / dim)  # (dim,)
    angle = pos[:, None].float() / freq  # (N, dim)
    return torch.where(k % 2 == 0, angle.sin(), angle.cos())  # (N, dim)


class SinePositionEncoding(nn.Module):
    """DETR's 2-D sine encoding (no parameters). ``pe(h, w) -> (dim, h, w)``; channels
    [0, dim/2) encode y, [dim/2, dim) encode x."""

    def __init__(self, dim: int, temperature: float = 10000.0):
        super().__init__()
        if dim % 4:
            raise ValueError(f"2-D sine encoding needs dim divisible by 4, got {dim}")
        self.dim, self.temperature = dim, temperature

    def forward(self, h: int, w: int, device=None) -> torch.Tensor:
        y = (torch.arange(h, device=device) + 0.5) / h * 2 * math.pi  # (h,) cell centres
        x = (torch.arange(w, device=device) + 0.5) / w * 2 * math.pi  # (w,)
        pe_y = sine_encoding_1d(y, self.dim // 2, self.temperature)  # (h, dim/2)
        pe_x = sine_encoding_1d(x, self.dim // 2, self.temperature)  # (w, dim/2)
        pe_y = repeat(pe_y, "h c -> c h w", w=w)
        pe_x = repeat(pe_x, "w c -> c h w", h=h)
        return torch.cat([pe_y, pe_x], dim=0)  # (dim, h, w)


class LearnedPositionEncoding(nn.Module):
    """DETR's learned encoding: random-initialised row and column embeddings, d/2 channels each,
    for maps up to ``max_size`` = (H, W) cells. ``pe(h, w) -> (dim, h, w)``; channels [0, dim/2)
    come from the row y, [dim/2, dim) from the column x."""

    def __init__(self, dim: int, max_size: tuple[int, int] = (128, 128)):
        super().__init__()
        if dim % 2:
            raise ValueError(f"learned 2-D encoding needs an even dim, got {dim}")
        self.row = nn.Embedding(max_size[0], dim // 2)
        self.col = nn.Embedding(max_size[1], dim // 2)
        nn.init.uniform_(self.row.weight)
        nn.init.uniform_(self.col.weight)

    def forward(self, h: int, w: int, device=None) -> torch.Tensor:
        if h > self.row.num_embeddings or w > self.col.num_embeddings:
            raise ValueError(f"LearnedPositionEncoding holds at most {self.row.num_embeddings}x"
                             f"{self.col.num_embeddings} cells, got a {h}x{w} map")
        device = self.row.weight.device
        pe_y = self.row(torch.arange(h, device=device))  # (h, dim/2)
        pe_x = self.col(torch.arange(w, device=device))  # (w, dim/2)
        pe_y = repeat(pe_y, "h c -> c h w", w=w)
        pe_x = repeat(pe_x, "w c -> c h w", h=h)
        return torch.cat([pe_y, pe_x], dim=0)  # (dim, h, w)
