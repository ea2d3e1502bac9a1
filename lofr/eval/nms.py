"""OKS non-maximum suppression over the pose predictions of one image (top-down with detected boxes).

A person detector often puts two boxes on one person; top-down pose estimation then predicts two
nearly identical poses, and the second one is a false positive for OKS AP. SimpleBaseline / HRNet
remove such duplicates greedily, the way box NMS does, with OKS instead of box IoU:

    OKS(i, j) = 1/|K| sum_{k in K} exp(-d_k^2 / (2 s^2 (2 sigma_k)^2)),   s^2 = (area_i + area_j) / 2

where d_k is the distance between the two poses' keypoint k and K is every keypoint (or, with
``vis_thr``, only those whose score exceeds ``vis_thr`` in BOTH poses). Predictions are visited by
decreasing score; each kept pose suppresses every remaining pose whose OKS with it is > ``thr``.

Choices (where HRNet's ``oks_nms`` is not a formula):
* the area of a prediction is the area of its crop region (``scale_w * scale_h`` in image pixels,
  HRNet's ``area``), supplied by the caller;
* with ``vis_thr``, HRNet's code reads ``list(vg > t) and list(vd > t)``, which in Python is just the
  second list; we use what it means, "above the threshold in both". HRNet's COCO evaluation calls
  it without ``vis_thr``, which is also our default;
* when no keypoint qualifies, OKS = 0 (nothing is suppressed), as in HRNet;
* equal scores keep the earlier prediction first (a stable sort), so the result is deterministic.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from lofr.data.schemas import KeypointSchema, get_schema

__all__ = ["oks_pairwise", "oks_nms", "oks_nms_results"]


def oks_pairwise(kpt, kpts, area: float, areas, sigmas, kpt_scores=None, kpts_scores=None,
                 vis_thr: float | None = None) -> np.ndarray:
    """OKS between one pose ``kpt`` (C, 2) of area ``area`` and poses ``kpts`` (M, C, 2) of ``areas``
    (M,), with the mean area as scale (module docstring). Scores (C,) / (M, C) are only read with
    ``vis_thr``. Returns (M,)."""
    kpt = np.asarray(kpt, dtype=np.float64)
    kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, *kpt.shape)  # (M, C, 2)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)  # (M,)
    var = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2  # (C,) k_i^2
    d2 = ((kpts - kpt[None]) ** 2).sum(-1)  # (M, C)
    s2 = (area + areas)[:, None] / 2.0 + np.spacing(1)  # (M, 1)
    e = np.exp(-d2 / (2.0 * s2 * var[None]))  # (M, C)
    if vis_thr is None:
        return e.mean(-1)
    ok = (np.asarray(kpt_scores)[None] > vis_thr) & (np.asarray(kpts_scores).reshape(e.shape) > vis_thr)  # (M, C)
    n = ok.sum(-1)
    return np.where(n > 0, (e * ok).sum(-1) / np.maximum(n, 1), 0.0)


def oks_nms(keypoints, scores, areas, thr: float = 0.9, sigmas=None, keypoint_scores=None,
            vis_thr: float | None = None, schema: str | KeypointSchema = "coco") -> list[int]:
    """Greedy OKS-NMS over the N poses of ONE image -> indices of the kept poses, best first.

    keypoints (N, C, 2), scores (N,) instance scores, areas (N,) > 0; a pose is suppressed when its
    OKS with an already kept, higher-scored pose is > ``thr`` (HRNet's default 0.9). ``sigmas``
    default to ``schema``'s; ``keypoint_scores`` (N, C) are needed only with ``vis_thr``.
    """
    kp = np.asarray(keypoints, dtype=np.float64)
    sc = np.asarray(scores, dtype=np.float64).reshape(-1)
    ar = np.asarray(areas, dtype=np.float64).reshape(-1)
    n = len(sc)
    if n == 0:
        return []
    if kp.ndim != 3 or kp.shape[0] != n or kp.shape[2] != 2 or ar.shape[0] != n:
        raise ValueError(f"oks_nms: keypoints must be (N, C, 2), scores (N,), areas (N,); "
                         f"got {kp.shape}, {sc.shape}, {ar.shape}")
    if not (np.isfinite(kp).all() and np.isfinite(sc).all() and (ar > 0).all()):
        raise ValueError("oks_nms: keypoints and scores must be finite and every area > 0")
    sigmas = get_schema(schema).sigmas if sigmas is None else sigmas
    if len(sigmas) != kp.shape[1]:
        raise ValueError(f"oks_nms: {len(sigmas)} sigmas for {kp.shape[1]} keypoints")
    if vis_thr is not None and keypoint_scores is None:
        raise ValueError("oks_nms: vis_thr needs keypoint_scores")
    ks = None if keypoint_scores is None else np.asarray(keypoint_scores, dtype=np.float64).reshape(n, -1)
    order = np.argsort(-sc, kind="stable")
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]
        keep.append(int(i))
        if rest.size == 0:
            break
        ovr = oks_pairwise(kp[i], kp[rest], ar[i], ar[rest], sigmas,
                           None if ks is None else ks[i], None if ks is None else ks[rest], vis_thr)
        order = rest[ovr <= thr]
    return keep


def oks_nms_results(results: list[dict], areas, thr: float = 0.9, schema: str | KeypointSchema = "coco",
                    vis_thr: float | None = None) -> list[dict]:
    """OKS-NMS image by image over COCO keypoint results (``{"image_id", "keypoints": [x, y, s] * C,
    "score"}``) with one area per result -> the kept results, in input order."""
    schema = get_schema(schema)
    areas = np.asarray(areas, dtype=np.float64).reshape(-1)
    if len(areas) != len(results):
        raise ValueError(f"oks_nms_results: {len(areas)} areas for {len(results)} results")
    by_image = defaultdict(list)
    for i, r in enumerate(results):
        by_image[r["image_id"]].append(i)
    kept = []
    for idx in by_image.values():
        flat = np.asarray([results[i]["keypoints"] for i in idx], dtype=np.float64).reshape(len(idx), -1, 3)
        keep = oks_nms(flat[..., :2], [results[i]["score"] for i in idx], areas[idx], thr, schema.sigmas,
                       flat[..., 2], vis_thr, schema)
        kept += [idx[k] for k in keep]
    return [results[i] for i in sorted(kept)]
