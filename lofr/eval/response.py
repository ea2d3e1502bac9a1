"""Table 7's metric: the average normalised response at the true joints.

The paper (Sec. 4.4, Table 7) reports, per joint, "the average response around the body joints",
normalised to [0, 1]. Our reading, for one response map R_c of one crop (the fused stride-4 map that
the model decodes; any (h, w) map on a stride-``s`` grid works):

1. normalise by the map's own maximum, R_c / max R_c, so the value is in [0, 1] and 1 means "the
   peak of the map is at this point" (a flat map scores 1 everywhere: read Table 7 next to PCK);
2. read it at the TRUE keypoint (x, y) in input pixels, by bilinear interpolation between the four
   nearest cell centres (``mode="bilinear"``, the default) or in the cell that contains the point
   (``mode="nearest"``). Cell (i, j) covers pixels [j s, (j + 1) s) x [i s, (i + 1) s) and its
   centre is ((j + 0.5) s, (i + 0.5) s), the convention of ``lofr.data.transforms`` and
   ``decode_response_maps``; bilinear sampling clamps at the border cells' centres (a point in
   the outer half-cell takes the border value);
3. average over every (crop, joint) whose joint is present (labelled and inside the crop, the
   image-level label) — per joint type, plus the pooled mean.

The reference a number must beat: the mean of the same normalised map over all its cells (what a
point drawn uniformly in the crop would read; 1 for a flat map, ~0 for a sharp peak), averaged the
same way (``map_mean``). A model localises a joint when its value at the joint exceeds that.

numpy in, numpy out (as the rest of ``lofr.eval``): pass CPU tensors through ``np.asarray``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["normalised_response_at", "average_joint_response", "pool_response"]

MODES = ("bilinear", "nearest")


def _normalise(maps: np.ndarray) -> np.ndarray:
    """(N, C, h, w) -> each map divided by its maximum (a map with max <= 0 becomes all zeros)."""
    peak = maps.max(axis=(-2, -1), keepdims=True)  # (N, C, 1, 1)
    return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0)


def normalised_response_at(maps, keypoints, stride: float, mode: str = "bilinear") -> np.ndarray:
    """The max-normalised response of every map at its keypoint.

    maps (N, C, h, w) >= 0; keypoints (N, C, 2) as (x, y) in input pixels; stride = input pixels
    per map cell. -> (N, C) values in [0, 1] (see the module docstring for the sampling).
    """
    maps = np.asarray(maps, dtype=np.float64)
    kp = np.asarray(keypoints, dtype=np.float64)
    if maps.ndim != 4 or kp.shape != maps.shape[:2] + (2,):
        raise ValueError(f"maps must be (N, C, h, w) and keypoints (N, C, 2); got {maps.shape}, {kp.shape}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if (maps < 0).any():
        raise ValueError("response maps must be >= 0 (attention maps / heatmaps clipped at 0)")
    norm = _normalise(maps)
    n, c, h, w = norm.shape
    ni, ci = np.meshgrid(np.arange(n), np.arange(c), indexing="ij")  # (N, C) each
    if mode == "nearest":
        j = np.clip(np.floor(kp[..., 0] / stride), 0, w - 1).astype(int)  # (N, C)
        i = np.clip(np.floor(kp[..., 1] / stride), 0, h - 1).astype(int)
        return norm[ni, ci, i, j]
    u = np.clip(kp[..., 0] / stride - 0.5, 0, w - 1)  # (N, C) continuous column of the cell centres
    v = np.clip(kp[..., 1] / stride - 0.5, 0, h - 1)
    j0, i0 = np.floor(u).astype(int), np.floor(v).astype(int)
    j1, i1 = np.minimum(j0 + 1, w - 1), np.minimum(i0 + 1, h - 1)
    fu, fv = u - j0, v - i0
    top = (1 - fu) * norm[ni, ci, i0, j0] + fu * norm[ni, ci, i0, j1]
    bottom = (1 - fu) * norm[ni, ci, i1, j0] + fu * norm[ni, ci, i1, j1]
    return (1 - fv) * top + fv * bottom


def average_joint_response(maps, keypoints, present, stride: float, mode: str = "bilinear") -> dict:
    """Table 7 over a set of crops.

    maps (N, C, h, w), keypoints (N, C, 2) input pixels, present (N, C) bool / 0-1 (the joint is
    labelled and inside the crop), stride. -> dict:
        per_joint (C,)      mean value at the joint over the crops where it is present (nan if never)
        map_mean (C,)       mean over the same crops of the normalised map's average over its cells
        count (C,)          how many crops have the joint
        sum, map_sum (C,)   the two sums (to pool batches: sum / count)
        mean, map_mean_all  both pooled over every present (crop, joint)
    """
    values = normalised_response_at(maps, keypoints, stride, mode)  # (N, C)
    present = np.asarray(present).astype(bool)
    if present.shape != values.shape:
        raise ValueError(f"present must be (N, C) = {values.shape}, got {present.shape}")
    flat = _normalise(np.asarray(maps, dtype=np.float64)).mean(axis=(-2, -1))  # (N, C)
    return pool_response(np.where(present, values, 0.0).sum(axis=0), np.where(present, flat, 0.0).sum(axis=0),
                         present.sum(axis=0))


def pool_response(total, map_total, count) -> dict:
    """Per-joint sums (C,) of the values at the joints, of the map means, and the counts -> the
    dict of :func:`average_joint_response` (use it to pool the sums of several batches)."""
    total, map_total, count = (np.asarray(a, dtype=np.float64) for a in (total, map_total, count))
    n = count.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        map_mean = np.where(count > 0, map_total / np.maximum(count, 1), np.nan)
    return {"per_joint": per_joint, "map_mean": map_mean, "count": count.astype(int), "sum": total,
            "map_sum": map_total, "mean": float(total.sum() / n) if n else float("nan"),
            "map_mean_all": float(map_total.sum() / n) if n else float("nan")}
