"""Top-down geometry: person box -> crop, and back.

Conventions (used everywhere in lofr):

* coordinates are continuous pixels: the pixel with index (i, j) covers [j, j+1) x [i, i+1), so its
  centre is (j + 0.5, i + 0.5). COCO keypoints are read as such coordinates.
* a crop is described by ``center`` (cx, cy) and ``scale`` (w, h), the size in image pixels of the
  region that is warped onto the network input (already padded and at the input's aspect ratio),
  and ``rotation`` in degrees. The region's corners map onto the input's corners.
* sizes are written (H, W) (``input_size=(256, 192)`` as in the paper's "256x192").
* a horizontal flip of a crop of width W maps x -> W - x (pixel j <-> pixel W-1-j) and swaps
  left/right keypoints with ``schema.flip_index``.
* heatmaps at ``stride`` s: heatmap cell (i, j) covers input pixels [s*j, s*(j+1)) x [s*i, s*(i+1)),
  so an input point p sits at heatmap coordinate p / s and cell centres are at (j + 0.5, i + 0.5).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "box_to_center_scale", "get_affine_transform", "affine_points", "crop_to_image",
    "crop_affine", "half_body_center_scale", "crop_sampling_points", "warp_image",
    "gaussian_heatmaps", "heatmap_sigma", "normalize_image", "IMAGENET_MEAN", "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def box_to_center_scale(box, aspect_ratio: float, padding: float = 1.25) -> tuple[np.ndarray, np.ndarray]:
    """COCO box (x, y, w, h) -> centre (cx, cy) and region size (w, h) at ``aspect_ratio`` = W / H of
    the network input, enlarged by ``padding`` (1.25 as in SimpleBaseline / HRNet)."""
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + w / 2.0, y + h / 2.0], dtype=np.float32)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w * padding, h * padding], dtype=np.float32)


def get_affine_transform(center, scale, rotation: float, out_hw, inverse: bool = False) -> np.ndarray:
    """2x3 matrix mapping image coordinates onto crop coordinates (or back with ``inverse``).

    p_crop = S R (p - center) + (W/2, H/2), with S = diag(W / scale_w, H / scale_h) and R the rotation
    by ``rotation`` degrees (positive turns the content counter-clockwise on screen, y pointing down).
    """
    out_h, out_w = out_hw
    c = np.asarray(center, dtype=np.float64)
    sx, sy = out_w / float(scale[0]), out_h / float(scale[1])
    a = np.deg2rad(rotation)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    lin = np.diag([sx, sy]) @ rot
    off = np.array([out_w / 2.0, out_h / 2.0]) - lin @ c
    m = np.concatenate([lin, off[:, None]], axis=1)
    if inverse:
        inv = np.linalg.inv(lin)
        m = np.concatenate([inv, (-inv @ off)[:, None]], axis=1)
    return m.astype(np.float64)


def affine_points(points, mat) -> np.ndarray:
    """Apply a 2x3 affine to (..., 2) points."""
    p = np.asarray(points, dtype=np.float64)
    return p @ np.asarray(mat)[:, :2].T + np.asarray(mat)[:, 2]


def crop_to_image(points, center, scale, rotation, out_hw) -> np.ndarray:
    """Crop-space points (..., 2) -> original image coordinates (the inverse affine)."""
    return affine_points(points, get_affine_transform(center, scale, rotation, out_hw, inverse=True))


def crop_affine(center, scale, rotation: float, out_hw, flip: bool = False) -> np.ndarray:
    """Image -> crop 2x3 matrix like ``get_affine_transform``, followed by the mirror x -> W - x when
    ``flip`` (so the warped crop is already flipped; keypoints still need ``flip_index``)."""
    m = get_affine_transform(center, scale, rotation, out_hw)
    if flip:
        m = np.array([[-1.0, 0.0, float(out_hw[1])], [0.0, 1.0, 0.0]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    return m


def half_body_center_scale(keypoints, labelled, upper_body, aspect_ratio: float, rng: np.random.Generator,
                           padding: float = 1.5, min_joints: int = 3):
    """Half-body augmentation (HRNet's ``half_body_transform``): a crop around the labelled joints of
    the upper or the lower body (coin flip, falling back to the other half when a half has fewer than
    ``min_joints`` labelled joints), at ``aspect_ratio`` = W / H, enlarged by ``padding``.

    keypoints (C, 2) image coords; labelled (C,) bool. Returns (center, scale) or None when neither
    half has ``min_joints`` joints. (HRNet draws the coin with ``randn() < 0.5``, i.e. p ~ 0.69 for
    the upper body; we use a fair coin.)
    """
    labelled = np.asarray(labelled, dtype=bool)
    is_upper = np.zeros(len(labelled), dtype=bool)
    is_upper[list(upper_body)] = True
    upper, lower = np.flatnonzero(labelled & is_upper), np.flatnonzero(labelled & ~is_upper)
    first, second = (upper, lower) if rng.random() < 0.5 else (lower, upper)
    chosen = first if len(first) >= min_joints else second
    if len(chosen) < min_joints:
        return None
    pts = np.asarray(keypoints, dtype=np.float64)[chosen]  # (k, 2)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center = ((lo + hi) / 2.0).astype(np.float32)
    w, h = max(hi[0] - lo[0], 1.0), max(hi[1] - lo[1], 1.0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w * padding, h * padding], dtype=np.float32)


def crop_sampling_points(mat, out_hw) -> torch.Tensor:
    """Image coordinates (H, W, 2) of the centres of the crop's pixels, for an image -> crop ``mat``."""
    out_h, out_w = out_hw
    inv = np.linalg.inv(np.vstack([np.asarray(mat, dtype=np.float64), [0.0, 0.0, 1.0]]))[:2]
    ys, xs = torch.meshgrid(torch.arange(out_h, dtype=torch.float64) + 0.5,
                            torch.arange(out_w, dtype=torch.float64) + 0.5, indexing="ij")
    crop_pts = torch.stack([xs, ys], dim=-1)  # (H, W, 2)
    inv = torch.from_numpy(inv)
    return crop_pts @ inv[:, :2].T + inv[:, 2]  # (H, W, 2)


def warp_image(image: torch.Tensor, mat, out_hw, fill: str = "zeros", mode: str = "bilinear") -> torch.Tensor:
    """Warp an image (C, h, w) onto the crop (C, H, W) of the image -> crop affine ``mat``.

    Each crop pixel centre is mapped back into the image and sampled bilinearly (``grid_sample`` with
    ``align_corners=False``, whose -1 / +1 are the image's outer pixel *edges*: exactly our continuous
    pixel convention). ``fill`` decides what lies outside the image: ``"zeros"`` (black, the
    cv2.warpAffine / grid_sample default) or ``"edge"`` (the nearest border pixel repeated).
    """
    if fill not in ("zeros", "edge"):
        raise ValueError(f"fill must be 'zeros' or 'edge', got {fill!r}")
    h, w = image.shape[-2:]
    pts = crop_sampling_points(mat, out_hw)  # (H, W, 2) image coords
    grid = torch.stack([pts[..., 0] * (2.0 / w) - 1.0, pts[..., 1] * (2.0 / h) - 1.0], dim=-1)
    out = F.grid_sample(image[None].float(), grid[None].float(), mode=mode,
                        padding_mode="zeros" if fill == "zeros" else "border", align_corners=False)
    return out[0]  # (C, H, W)


def heatmap_sigma(heatmap_width: int, sigma_at_48: float = 2.0) -> float:
    """Default Gaussian sigma: 2 heatmap pixels at a 48-wide heatmap (256x192 input, stride 4),
    scaled in proportion to the heatmap width (3 at 72 wide = 384x288)."""
    return sigma_at_48 * heatmap_width / 48.0


def gaussian_heatmaps(keypoints, weights, input_hw, stride: int = 4, sigma: float | None = None) -> np.ndarray:
    """Gaussian heatmap targets (C, H/stride, W/stride) for keypoints (C, 2) in input pixels.

    value(i, j) = exp(-((j + 0.5 - x/s)^2 + (i + 0.5 - y/s)^2) / (2 sigma^2)) for joints with
    weight > 0, all zeros otherwise (see the module docstring for the cell convention: the peak is
    the cell that contains the keypoint).
    """
    in_h, in_w = input_hw
    if in_h % stride or in_w % stride:
        raise ValueError(f"input size {tuple(input_hw)} is not divisible by the heatmap stride {stride}")
    hh, hw = in_h // stride, in_w // stride
    sigma = heatmap_sigma(hw) if sigma is None else float(sigma)
    kp = np.asarray(keypoints, dtype=np.float64) / stride  # (C, 2) heatmap coords
    xs = np.arange(hw, dtype=np.float64) + 0.5
    ys = np.arange(hh, dtype=np.float64) + 0.5
    gx = np.exp(-((xs[None, :] - kp[:, :1]) ** 2) / (2 * sigma**2))  # (C, w)
    gy = np.exp(-((ys[None, :] - kp[:, 1:]) ** 2) / (2 * sigma**2))  # (C, h)
    maps = gy[:, :, None] * gx[:, None, :]  # (C, h, w)
    maps *= (np.asarray(weights) > 0)[:, None, None]
    return maps.astype(np.float32)


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) RGB in [0, 1] -> ImageNet-normalised."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype)[:, None, None]
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype)[:, None, None]
    return (image - mean) / std
