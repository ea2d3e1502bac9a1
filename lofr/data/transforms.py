"""Top-down geometry: person box -> crop, and back.

Conventions (used everywhere in lofr):

* coordinates are continuous pixels: the pixel with index (i, j) covers [j, j+1) x [i, i+1), so its
  centre is (j + 0.5, i + 0.5). COCO keypoints are read as such coordinates.
* a crop is described by ``center`` (cx, cy) and ``scale`` (w, h), the size in image pixels of the
  region that is warped onto the network input (already padded and at the input's aspect ratio),
  and ``rotation`` in degrees. The region's corners map onto the input's corners.
* sizes are written (H, W) (``input_size=(256, 192)`` as in the paper's "256x192").
"""

from __future__ import annotations

import numpy as np

__all__ = ["box_to_center_scale", "get_affine_transform", "affine_points", "crop_to_image"]


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
