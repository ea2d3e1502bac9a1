"""Spatial-aware Position Encoding, SPE (paper Sec. 3.3, Eq. 3-4).

The CAMs M (Eq. 1) say roughly where each keypoint is. SPE turns them into a position prior for
the encoder:

1. coarse keypoint location maps F^key (B, C, h, w) "via finding the max value of M": for each
   keypoint c, the centre of the CAM's arg-max cell, in input pixels, becomes a Gaussian bump
   rendered at the cell centres of each encoder scale (stride 4, 8, 16). Choices: the Gaussian's
   sigma is in input pixels (default half a CAM cell, so at the CAM's own stride the map is close
   to the one-hot of the arg-max and at finer strides it is a smooth blob); each keypoint's map is
   scaled by its CNN presence probability sigmoid(logit_c), so a keypoint the CNN thinks is absent
   (whose CAM is ~0 and whose arg-max is meaningless) contributes little. F^key is a prior, built
   without gradient (the arg-max has none anyway).
2. Eq. 3, φ = F ⊗ F^key. The paper calls ⊗ a "cross-product" without defining it. Our choice
   (``mode="product"``): per location, a bilinear interaction of the feature F(x, y) (d) with the
   location vector F^key(x, y) (C) through one learned d-vector e_c per keypoint,

       φ(x, y) = sum_c F^key_c(x, y) (e_c ⊙ F(x, y)) = F(x, y) ⊙ (E^T F^key(x, y)),   E (C, d),

   i.e. the C location maps are projected onto the feature channels (a 1x1 conv without bias)
   and gate the features there: φ is zero away from every keypoint and carries "which keypoint is
   near" x "what the feature is" near one. The alternative, ``mode="embed"``, drops the feature
   factor: φ = E^T F^key, a pure learned position code added like DETR's.
3. Eq. 4, F' = ψ(φ ⊕ F), ⊕ the element-wise sum and ψ a 1x1 conv (our choice of "feature
   transformation"). SPE returns F' (the encoder input) and φ (the "updated positional encoding").
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

__all__ = ["SPE", "cam_peaks", "render_location_maps", "keypoint_location_maps"]

MODES = ("product", "embed")


def cam_peaks(cams: torch.Tensor, stride: int) -> torch.Tensor:
    """Arg-max of each CAM as input-pixel coordinates of the cell centre.

    cams (B, C, h, w) -> (B, C, 2) points (x, y) = ((j + 0.5) * stride, (i + 0.5) * stride).
    Ties go to the first cell in row-major order (torch.argmax).
    """
    w = cams.shape[-1]
    idx = rearrange(cams, "b c h w -> b c (h w)").argmax(dim=-1)  # (B, C)
    i, j = torch.div(idx, w, rounding_mode="floor"), idx % w
    return torch.stack([(j + 0.5) * stride, (i + 0.5) * stride], dim=-1).float()  # (B, C, 2)


def render_location_maps(points: torch.Tensor, size: tuple[int, int], stride: int, sigma: float) -> torch.Tensor:
    """Gaussians exp(-|p - q|^2 / (2 sigma^2)) at the cell centres q of an (h, w) map of the given
    stride, in input pixels. points (B, C, 2) as (x, y) -> maps (B, C, h, w) in [0, 1]."""
    h, w = size
    ys = (torch.arange(h, device=points.device) + 0.5) * stride  # (h,)
    xs = (torch.arange(w, device=points.device) + 0.5) * stride  # (w,)
    dx = xs[None, None, None, :] - points[..., 0, None, None]  # (B, C, 1, w)
    dy = ys[None, None, :, None] - points[..., 1, None, None]  # (B, C, h, 1)
    return torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2))  # (B, C, h, w)


@torch.no_grad()
def keypoint_location_maps(cams: torch.Tensor, cam_stride: int, sizes: list[tuple[int, int]],
                           strides: list[int] | tuple[int, ...], presence: torch.Tensor | None = None,
                           sigma: float | None = None) -> list[torch.Tensor]:
    """Coarse keypoint location maps F^key at every encoder scale (step 1 of the module docstring).

    cams (B, C, h, w) at ``cam_stride``; ``sizes``/``strides``: each scale's (h_s, w_s) and stride;
    presence (B, C) in [0, 1] or None; sigma in input pixels (default cam_stride / 2).
    -> [(B, C, h_s, w_s)] per scale, no gradient.
    """
    sigma = cam_stride / 2 if sigma is None else sigma
    peaks = cam_peaks(cams, cam_stride)  # (B, C, 2)
    maps = [render_location_maps(peaks, size, s, sigma) for size, s in zip(sizes, strides)]
    if presence is not None:
        maps = [m * presence[..., None, None] for m in maps]
    return maps


class SPE(nn.Module):
    """Eq. 3-4 for one scale: (F (B, d, h, w), F^key (B, C, h, w)) -> (F' (B, d, h, w), φ (B, d, h, w))."""

    def __init__(self, dim: int, num_keypoints: int, mode: str = "product"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"SPE: mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.embed = nn.Conv2d(num_keypoints, dim, 1, bias=False)  # E: F^key -> d channels
        self.psi = nn.Conv2d(dim, dim, 1)  # ψ

    def forward(self, feat: torch.Tensor, key_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if key_maps.shape[-2:] != feat.shape[-2:]:
            raise ValueError(f"SPE: location maps {tuple(key_maps.shape[-2:])} and features "
                             f"{tuple(feat.shape[-2:])} differ in size")
        e = self.embed(key_maps)  # (B, d, h, w)
        phi = feat * e if self.mode == "product" else e  # Eq. 3
        return self.psi(phi + feat), phi  # Eq. 4
