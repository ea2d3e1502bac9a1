"""Distance metrics in ORIGINAL IMAGE coordinates: PCK, PCKh (MPII) and mean pixel error.

All functions take numpy arrays (no torch):

* ``pred``, ``gt``: (N, C, 2) keypoints (x, y) of N person instances in the same image frame;
* ``mask``: (N, C) bool, True where the ground-truth joint is labelled (COCO visibility v > 0).
  Unlabelled joints are ignored everywhere (they count neither as hits nor as misses).

Every "overall" / "per group" number is *pooled* over labelled joints (hits / labelled joints), so a
joint type that is rarely labelled weighs less than one that is always labelled. Per-joint and
per-group values are ``nan`` when nothing of that kind is labelled. Fractions are in [0, 1] (not %).

A joint is correct when ``distance <= thr * norm`` (``<=`` as in the MPII / HRNet evaluation code).
"""

from __future__ import annotations

import numpy as np

from lofr.data.schemas import KeypointSchema, get_schema

__all__ = ["box_diagonal", "head_sizes", "pck", "pckh", "mean_pixel_error", "MPII_SC_BIAS"]

MPII_SC_BIAS = 0.6  # MPII head size = 0.6 * head-box diagonal (the standard MPII evaluation rule)

# (column, left joint, right joint) of the MPII results table (paper Table 2); "Head" is head_top alone.
_MPII_TABLE = (("Head", "head_top", "head_top"), ("Shoulder", "left_shoulder", "right_shoulder"),
               ("Elbow", "left_elbow", "right_elbow"), ("Wrist", "left_wrist", "right_wrist"),
               ("Hip", "left_hip", "right_hip"), ("Knee", "left_knee", "right_knee"),
               ("Ankle", "left_ankle", "right_ankle"))


def box_diagonal(boxes) -> np.ndarray:
    """COCO boxes (N, 4) as (x, y, w, h) -> (N,) diagonals sqrt(w^2 + h^2)."""
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) as (x, y, w, h), got shape {b.shape}")
    return np.hypot(b[:, 2], b[:, 3])


def _check(pred, gt, mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    mask = np.asarray(mask)
    if pred.ndim != 3 or pred.shape[-1] != 2 or gt.shape != pred.shape:
        raise ValueError(f"pred and gt must both be (N, C, 2); got {pred.shape} and {gt.shape}")
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask must be (N, C) = {pred.shape[:2]}, got {mask.shape}")
    if mask.dtype != bool:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("mask must be boolean (or 0/1): True where the joint is labelled")
        mask = mask.astype(bool)
    for name, arr in (("pred", pred), ("gt", gt)):
        bad = mask & ~np.isfinite(arr).all(-1)
        if bad.any():
            n, c = np.argwhere(bad)[0]
            raise ValueError(f"{name} has a non-finite value at instance {n}, joint {c} (a labelled joint)")
    return pred, gt, mask


def _distances(pred, gt, mask) -> np.ndarray:
    """(N, C) Euclidean distances, 0 where unlabelled (never read there)."""
    return np.where(mask, np.linalg.norm(pred - gt, axis=-1), 0.0)


def _check_norm(norm, mask, what: str) -> np.ndarray:
    norm = np.asarray(norm, dtype=np.float64).reshape(-1)
    if norm.shape[0] != mask.shape[0]:
        raise ValueError(f"{what} must have one value per instance ({mask.shape[0]}), got {norm.shape[0]}")
    bad = mask.any(1) & ~(np.isfinite(norm) & (norm > 0))
    if bad.any():
        n = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{what} of instance {n} is {norm[n]}: it must be finite and > 0 (the instance "
                         f"has labelled joints)")
    return norm


def _pool(values: np.ndarray, mask: np.ndarray, joints=None) -> float:
    """Mean of ``values`` (N, C) over labelled entries of the ``joints`` columns (all if None)."""
    if joints is not None:
        idx = list(joints)
        values, mask = values[:, idx], mask[:, idx]
    n = mask.sum()
    return float(values[mask].sum() / n) if n else float("nan")


def _per_joint(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    count = mask.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(mask, values, 0.0).sum(0) / np.maximum(count, 1), np.nan)


def _per_group(values, mask, schema: KeypointSchema | None) -> dict[str, float]:
    if schema is None:
        return {}
    if schema.num_keypoints != mask.shape[1]:
        raise ValueError(f"schema {schema.name} has {schema.num_keypoints} keypoints, arrays have {mask.shape[1]}")
    return {g: _pool(values, mask, idx) for g, idx in schema.groups.items()}


def _summary(values, mask, schema) -> dict:
    return {"overall": _pool(values, mask), "per_joint": _per_joint(values, mask),
            "per_group": _per_group(values, mask, schema)}


def pck(pred, gt, mask, norm, thresholds=(0.1, 0.2), schema: str | KeypointSchema | None = None) -> dict:
    """PCK@t: fraction of labelled joints with ``||pred - gt|| <= t * norm``.

    ``norm`` (N,) is the person-box diagonal in the same frame as the keypoints (``box_diagonal`` of
    the annotation's bbox), as the task asks for "PCK@0.1 / 0.2 of the box diagonal".

    Returns ``{"overall": {t: float}, "per_joint": {t: (C,)}, "per_group": {t: {group: float}},
    "num_labelled": (C,)}``; groups come from ``schema.groups`` when a schema is given.
    """
    pred, gt, mask = _check(pred, gt, mask)
    norm = _check_norm(norm, mask, "norm")
    schema = get_schema(schema) if schema is not None else None
    ratio = _distances(pred, gt, mask) / np.where(norm > 0, norm, 1.0)[:, None]  # (N, C)
    out = {"overall": {}, "per_joint": {}, "per_group": {}, "num_labelled": mask.sum(0)}
    for t in thresholds:
        s = _summary((ratio <= t).astype(np.float64), mask, schema)
        out["overall"][float(t)] = s["overall"]
        out["per_joint"][float(t)] = s["per_joint"]
        out["per_group"][float(t)] = s["per_group"]
    return out


def mean_pixel_error(pred, gt, mask, schema: str | KeypointSchema | None = None) -> dict:
    """Mean Euclidean distance (pixels of the frame the inputs are in) over labelled joints.

    Returns ``{"overall": float, "per_joint": (C,), "per_group": {group: float}, "num_labelled": (C,)}``.
    """
    pred, gt, mask = _check(pred, gt, mask)
    schema = get_schema(schema) if schema is not None else None
    out = _summary(_distances(pred, gt, mask), mask, schema)
    out["num_labelled"] = mask.sum(0)
    return out


def head_sizes(head) -> np.ndarray:
    """MPII head size: ``(N, 4)`` head boxes (x1, y1, x2, y2) -> 0.6 * ||(x2 - x1, y2 - y1)||; an
    ``(N,)`` array is taken as head sizes already."""
    h = np.asarray(head, dtype=np.float64)
    if h.ndim == 1:
        return h
    if h.ndim != 2 or h.shape[1] != 4:
        raise ValueError(f"head must be (N, 4) head boxes (x1, y1, x2, y2) or (N,) head sizes, got {h.shape}")
    return MPII_SC_BIAS * np.hypot(h[:, 2] - h[:, 0], h[:, 3] - h[:, 1])


def pckh(pred, gt, mask, head, thr: float = 0.5, schema: str | KeypointSchema = "mpii",
         exclude: tuple[str, ...] | None = None) -> dict:
    """PCKh@thr (MPII): a joint is correct when ``||pred - gt|| <= thr * head_size``.

    ``head`` is (N, 4) head boxes (x1, y1, x2, y2) -> head size 0.6 * box diagonal (MPII's SC_BIAS
    rule), or (N,) head sizes.

    Conventions follow the MPII evaluation used by HRNet (``lib/dataset/mpii.py``) and mmpose:

    * ``total`` is pooled over labelled joints EXCLUDING pelvis and thorax (HRNet masks joints 6:8 and
      weights per-joint PCKh by labelled counts, which equals hits / labelled over the other joints).
      ``exclude`` overrides the excluded joint names (default: pelvis, thorax if the schema has them).
    * ``table`` (MPII schema only) gives the paper's Table 2 columns: Head = head_top alone (upper_neck
      only enters Total), and Shoulder ... Ankle = the UNWEIGHTED mean of the left and right joint's
      PCKh, as in HRNet; plus Total.

    Returns ``{"per_joint": (C,), "total": float, "per_group": {group: float}, "table": {col: float},
    "num_labelled": (C,)}``.
    """
    schema = get_schema(schema)
    pred, gt, mask = _check(pred, gt, mask)
    if mask.shape[1] != schema.num_keypoints:
        raise ValueError(f"schema {schema.name} has {schema.num_keypoints} keypoints, arrays have {mask.shape[1]}")
    size = _check_norm(head_sizes(head), mask, "head size")
    hits = (_distances(pred, gt, mask) <= thr * np.where(size > 0, size, 1.0)[:, None]).astype(np.float64)
    if exclude is None:
        exclude = tuple(n for n in ("pelvis", "thorax") if n in schema.keypoints)
    unknown = set(exclude) - set(schema.keypoints)
    if unknown:
        raise ValueError(f"exclude names {sorted(unknown)} are not keypoints of schema {schema.name}")
    kept = [i for i, n in enumerate(schema.keypoints) if n not in exclude]
    per_joint = _per_joint(hits, mask)
    total = _pool(hits, mask, kept)
    table = {}
    if all(n in schema.keypoints for _, a, b in _MPII_TABLE for n in (a, b)):
        ix = schema.keypoints.index
        table = {col: float(0.5 * (per_joint[ix(a)] + per_joint[ix(b)])) for col, a, b in _MPII_TABLE}
        table["Total"] = total
    return {"per_joint": per_joint, "total": total, "per_group": _per_group(hits, mask, schema),
            "table": table, "num_labelled": mask.sum(0)}
