"""One call from per-instance predictions to every number we report, and the tables that show them.

A *record* is one top-down prediction already mapped back to ORIGINAL image coordinates::

    {"image_id": 3, "ann_id": 17, "keypoints": (C, 2) array, "scores": (C,) array,
     "box_score": 1.0}            # optional, default 1

``ann_id`` names the ground-truth person the crop was cut around (ground-truth boxes), which is what
PCK and pixel error compare against. COCO AP ignores it and matches by OKS, as COCOeval does.

OKS AP is harsh at small training budgets (a supervised 4-minute CPU model scored AP 0.010 while its
PCK@0.2 was 0.82), so every report carries PCK@0.1 / PCK@0.2 of the box diagonal, the mean pixel
error, and can be set next to the MEAN-POSE PRIOR: the dataset's mean crop-space pose pasted into
every crop, the floor any model must beat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lofr.data.schemas import KeypointSchema, get_schema

from .coco import check_gt, coco_keypoint_eval, crowdpose_eval, load_gt, predictions_to_coco_results
from .pck import box_diagonal, mean_pixel_error, pck, pckh

__all__ = ["EvalReport", "evaluate_keypoints", "gt_records", "crops_from_gt", "mean_crop_pose",
           "mean_pose_records", "format_report", "format_per_joint", "PRIOR_NAME"]

PRIOR_NAME = "mean-pose prior"


@dataclass
class EvalReport:
    """Everything ``evaluate_keypoints`` measured. Fractions in [0, 1]; errors in image pixels."""

    schema: str
    ap: dict[str, float] | None  # COCOeval / xtcocotools stats by name; None for MPII (PCKh instead)
    pck: dict[float, float]  # threshold -> pooled PCK over all labelled joints
    pck_per_joint: dict[float, np.ndarray]  # threshold -> (C,)
    pck_per_group: dict[float, dict[str, float]]
    px_error: float
    px_error_per_joint: np.ndarray  # (C,)
    px_error_per_group: dict[str, float]
    num_labelled: np.ndarray  # (C,) labelled joints per keypoint type among evaluated instances
    num_instances: int  # records evaluated
    num_gt_without_prediction: int  # labelled, non-crowd GT persons no record points at
    pckh: dict | None = None  # MPII PCKh@0.5 (see ``pck.pckh``) when annotations carry "head_box"
    prior: EvalReport | None = field(default=None, repr=False)  # the prior on the same ground truth

    def summary(self) -> dict[str, float]:
        """Flat ``{column: value}``: AP stats, ``PCK@t`` for each threshold, ``px err``, ``PCKh``."""
        out = dict(self.ap or {})
        out.update({f"PCK@{t:g}": v for t, v in self.pck.items()})
        out["px err"] = self.px_error
        if self.pckh is not None:
            out["PCKh"] = self.pckh["total"]
        return out


# ----------------------------------------------------------------------------- records
def _check_records(records, anns: dict, schema: KeypointSchema, src: str):
    """records -> pred (N, C, 2), scores (N, C), box scores (N,), matched GT annotations."""
    c = schema.num_keypoints
    preds, scores, boxes, matched, seen = [], [], [], [], {}
    for i, r in enumerate(records):
        where = f"record {i} (image_id {r.get('image_id')}, ann_id {r.get('ann_id')})"
        for key in ("image_id", "ann_id", "keypoints", "scores"):
            if key not in r:
                raise ValueError(f"{where}: missing '{key}'")
        ann = anns.get(r["ann_id"])
        if ann is None:
            raise ValueError(f"{where}: ann_id {r['ann_id']!r} is not an annotation of {src}")
        if ann["image_id"] != r["image_id"]:
            raise ValueError(f"{where}: annotation {r['ann_id']} belongs to image_id {ann['image_id']}")
        if r["ann_id"] in seen:
            raise ValueError(f"{where}: ann_id {r['ann_id']} already predicted by record {seen[r['ann_id']]}")
        seen[r["ann_id"]] = i
        kp = np.asarray(r["keypoints"], dtype=np.float64)
        sc = np.asarray(r["scores"], dtype=np.float64)
        if kp.shape != (c, 2) or sc.shape != (c,):
            raise ValueError(f"{where}: keypoints must be ({c}, 2) and scores ({c},) for schema {schema.name}; "
                             f"got {kp.shape} and {sc.shape}")
        if not (np.isfinite(kp).all() and np.isfinite(sc).all()):
            raise ValueError(f"{where}: non-finite keypoints or scores")
        preds.append(kp)
        scores.append(sc)
        boxes.append(float(r.get("box_score", 1.0)))
        matched.append(ann)
    if not preds:
        raise ValueError("no records to evaluate")
    return np.stack(preds), np.stack(scores), np.asarray(boxes), matched


def _gt_arrays(anns: list[dict], c: int) -> tuple[np.ndarray, np.ndarray]:
    """annotations -> keypoints (N, C, 2), labelled mask (N, C) (v > 0; crowd regions: none)."""
    kp = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), c, 3)
    crowd = np.asarray([bool(a.get("iscrowd", 0)) for a in anns])
    return kp[..., :2], (kp[..., 2] > 0) & ~crowd[:, None]


def gt_records(gt, schema: str | KeypointSchema = "coco") -> list[dict]:
    """Ground truth as predictions (all non-crowd persons with a labelled joint; scores 1): the
    sanity row of a report (AP 1, PCK 1, error 0)."""
    schema = get_schema(schema)
    dataset, _ = load_gt(gt)
    recs = []
    for a in dataset["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=np.float64).reshape(schema.num_keypoints, 3)
        if a.get("iscrowd", 0) or not (kp[:, 2] > 0).any():
            continue
        recs.append({"image_id": a["image_id"], "ann_id": a["id"], "keypoints": kp[:, :2],
                     "scores": np.ones(schema.num_keypoints)})
    return recs


# ----------------------------------------------------------------------------- mean-pose prior
def crops_from_gt(gt, schema: str | KeypointSchema = "coco", input_hw=(256, 192), padding: float = 1.25) -> dict:
    """The top-down crops of the ground-truth boxes (non-crowd persons with a labelled joint):
    ``{"image_ids", "ann_ids", "centers" (N, 2), "scales" (N, 2)}`` via ``box_to_center_scale`` at the
    input's aspect ratio W / H, padded by ``padding`` (no rotation at test time)."""
    schema = get_schema(schema)
    dataset, src = load_gt(gt)
    check_gt(dataset, schema, src, need_area=False)
    return _crops(dataset, src, input_hw, padding)


def _crops(dataset: dict, src: str, input_hw, padding: float) -> dict:
    from lofr.data.transforms import box_to_center_scale  # lazily: that module imports torch

    out = {"image_ids": [], "ann_ids": [], "centers": [], "scales": []}
    for a in dataset["annotations"]:
        if a["iscrowd"] or not any(v > 0 for v in a["keypoints"][2::3]):
            continue
        if not (a["bbox"][2] > 0 and a["bbox"][3] > 0):
            raise ValueError(f"{src}: annotation id {a['id']}: bbox {a['bbox']} has no area")
        center, scale = box_to_center_scale(a["bbox"], input_hw[1] / input_hw[0], padding)
        out["image_ids"].append(a["image_id"])
        out["ann_ids"].append(a["id"])
        out["centers"].append(center)
        out["scales"].append(scale)
    out["centers"] = np.asarray(out["centers"], dtype=np.float64).reshape(-1, 2)  # (N, 2)
    out["scales"] = np.asarray(out["scales"], dtype=np.float64).reshape(-1, 2)  # (N, 2)
    return out


def mean_crop_pose(gt, schema: str | KeypointSchema = "coco", input_hw=(256, 192),
                   padding: float = 1.25) -> np.ndarray:
    """(C, 2) mean crop-space position of each keypoint over the labelled joints of ``gt`` (use the
    TRAINING annotations), in the ``input_hw`` crop of each ground-truth box (``crops_from_gt``).
    A keypoint that is never labelled raises (there is no mean to take)."""
    from lofr.data.transforms import affine_points, get_affine_transform

    schema = get_schema(schema)
    dataset, src = load_gt(gt)
    check_gt(dataset, schema, src, need_area=False)
    crops = _crops(dataset, src, input_hw, padding)
    anns = {a["id"]: a for a in dataset["annotations"]}
    total = np.zeros((schema.num_keypoints, 2))
    count = np.zeros(schema.num_keypoints)
    for aid, c, s in zip(crops["ann_ids"], crops["centers"], crops["scales"]):
        kp = np.asarray(anns[aid]["keypoints"], dtype=np.float64).reshape(-1, 3)  # (C, 3)
        lab = kp[:, 2] > 0
        crop = affine_points(kp[:, :2], get_affine_transform(c, s, 0.0, input_hw))  # (C, 2)
        total[lab] += crop[lab]
        count += lab
    if (count == 0).any():
        names = [schema.keypoints[i] for i in np.flatnonzero(count == 0)]
        raise ValueError(f"{src}: keypoints {names} are never labelled: no mean pose for them")
    return total / count[:, None]


def mean_pose_records(mean_crop, image_ids, ann_ids, centers, scales, input_hw=(256, 192),
                      rotations=None, score: float = 1.0) -> list[dict]:
    """The MEAN-POSE PRIOR as records: the same (C, 2) crop-space pose in every evaluation crop
    (centre (N, 2), scale (N, 2), rotation (N,) degrees or None), mapped back to image coordinates
    with ``crop_to_image``. Every keypoint score is ``score`` (keep it > 0: xtcocotools skips results
    whose scores are all 0)."""
    from lofr.data.transforms import crop_to_image

    mean_crop = np.asarray(mean_crop, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64).reshape(-1, 2)
    scales = np.asarray(scales, dtype=np.float64).reshape(-1, 2)
    n = len(image_ids)
    if not (len(ann_ids) == centers.shape[0] == scales.shape[0] == n):
        raise ValueError(f"image_ids, ann_ids, centers, scales must have one entry per crop "
                         f"({n}, {len(ann_ids)}, {centers.shape[0]}, {scales.shape[0]})")
    rotations = np.zeros(n) if rotations is None else np.asarray(rotations, dtype=np.float64)
    return [{"image_id": image_ids[i], "ann_id": ann_ids[i],
             "keypoints": crop_to_image(mean_crop, centers[i], scales[i], rotations[i], input_hw),
             "scores": np.full(len(mean_crop), float(score))} for i in range(n)]


# ----------------------------------------------------------------------------- evaluation
def evaluate_keypoints(gt_coco, records, schema: str | KeypointSchema = "coco", prior=None,
                       thresholds=(0.1, 0.2), use_area: bool | None = None, verbose: bool = False) -> EvalReport:
    """Evaluate per-instance predictions (records, image coordinates) against a COCO-format ground truth.

    * AP: COCO schema -> ``coco_keypoint_eval`` (pycocotools); CrowdPose -> ``crowdpose_eval``
      (xtcocotools, needs ``crowdIndex`` per image); MPII -> no AP (``ap=None``; the MPII metric is
      PCKh, computed when every predicted annotation has ``"head_box": [x1, y1, x2, y2]``).
      ``use_area=None`` uses the annotations' ``area`` when all have one, else 0.53 * box area.
    * PCK@thresholds of the GT box diagonal, mean pixel error: per joint, per ``schema.groups``, pooled
      over labelled joints of the annotations the records point at.
    * ``prior``: optional records of a reference predictor (e.g. ``mean_pose_records``), evaluated on
      the same ground truth and kept as ``report.prior`` (``format_report`` shows it as a row).
    """
    schema = get_schema(schema)
    dataset, src = load_gt(gt_coco)
    if use_area is None:
        use_area = all(isinstance(a.get("area"), (int, float)) for a in dataset["annotations"])
    check_gt(dataset, schema, src, need_area=use_area)
    anns = {a["id"]: a for a in dataset["annotations"]}
    records = list(records)
    pred, scores, box_scores, matched = _check_records(records, anns, schema, src)
    gt_xy, mask = _gt_arrays(matched, schema.num_keypoints)  # (N, C, 2), (N, C)

    ap = None
    if schema.name != "mpii":
        results = predictions_to_coco_results([a["image_id"] for a in matched], [a["id"] for a in matched],
                                              pred, scores, box_scores)
        if schema.name == "crowdpose":
            ap = crowdpose_eval(dataset, results, schema, use_area=use_area, verbose=verbose)
        else:
            ap = coco_keypoint_eval(dataset, results, schema, use_area=use_area, verbose=verbose)

    p = pck(pred, gt_xy, mask, box_diagonal([a["bbox"] for a in matched]), thresholds, schema)
    err = mean_pixel_error(pred, gt_xy, mask, schema)
    head = None
    if schema.name == "mpii" and all("head_box" in a for a in matched):
        head = pckh(pred, gt_xy, mask, np.asarray([a["head_box"] for a in matched], dtype=np.float64),
                    schema=schema)

    predicted = {a["id"] for a in matched}
    missing = sum(1 for a in dataset["annotations"] if a["id"] not in predicted and not a["iscrowd"]
                  and any(v > 0 for v in a["keypoints"][2::3]))
    prior_report = None
    if prior is not None:
        prior_report = evaluate_keypoints(dataset, prior, schema, None, thresholds, use_area, verbose)
    return EvalReport(schema=schema.name, ap=ap, pck=p["overall"], pck_per_joint=p["per_joint"],
                      pck_per_group=p["per_group"], px_error=err["overall"], px_error_per_joint=err["per_joint"],
                      px_error_per_group=err["per_group"], num_labelled=mask.sum(0), num_instances=len(matched),
                      num_gt_without_prediction=missing, pckh=head, prior=prior_report)


# ----------------------------------------------------------------------------- tables
def _fmt(v, digits: int = 3, width: int = 8) -> str:
    """A number, or '-' for missing / NaN / COCOeval's -1 ("no ground truth in that range")."""
    if v is None or (isinstance(v, float) and (math.isnan(v) or v == -1.0)):
        return f"{'-':>{width}}"
    return f"{v:>{width}.{digits}f}"


def format_report(reports: dict[str, EvalReport]) -> str:
    """One fixed-width table: rows = methods (in the given order; a report's ``prior`` is added as a
    "mean-pose prior" row unless one is already there), columns AP, AP50, AP75, APM, APL, AR,
    PCK@0.1, PCK@0.2, mean px err. '-' marks a metric that does not exist for that row (e.g. APM on
    CrowdPose, or COCOeval's -1 when no ground truth falls in a size range)."""
    rows = dict(reports)
    for rep in reports.values():
        if rep.prior is not None and PRIOR_NAME not in rows:
            rows[PRIOR_NAME] = rep.prior
    thr = sorted({t for rep in rows.values() for t in rep.pck}) or [0.1, 0.2]
    cols = ["AP", "AP50", "AP75", "APM", "APL", "AR"] + [f"PCK@{t:g}" for t in thr] + ["px err"]
    name_w = max([len("method")] + [len(n) for n in rows])
    lines = [f"{'method':<{name_w}}" + "".join(f"{c:>9}" for c in cols)]
    lines.append("-" * len(lines[0]))
    for name, rep in rows.items():
        s = rep.summary()
        cells = [_fmt(s.get(c), 2 if c == "px err" else 3) for c in cols]
        lines.append(f"{name:<{name_w}}" + "".join(f" {c}" for c in cells))
    return "\n".join(lines)


def format_per_joint(report: EvalReport, schema: str | KeypointSchema) -> str:
    """Fixed-width table, rows = joints, then ``schema.groups``, then "all"; columns = labelled count
    n, PCK@t for each threshold, mean px err (and PCKh when the report has it)."""
    schema = get_schema(schema)
    if len(report.num_labelled) != schema.num_keypoints:
        raise ValueError(f"report has {len(report.num_labelled)} keypoints, schema {schema.name} "
                         f"{schema.num_keypoints}")
    thr = list(report.pck)
    cols = ["n"] + [f"PCK@{t:g}" for t in thr] + ["px err"] + (["PCKh"] if report.pckh else [])
    name_w = max(len(n) for n in (*schema.keypoints, *schema.groups, "joint"))
    lines = [f"{'joint':<{name_w}}" + "".join(f"{c:>9}" for c in cols)]
    lines.append("-" * len(lines[0]))

    def row(name, n, pcks, err, h):
        cells = [f"{int(n):>8d}"] + [_fmt(v) for v in pcks] + [_fmt(err, 2)] + ([_fmt(h)] if report.pckh else [])
        lines.append(f"{name:<{name_w}}" + "".join(f" {c}" for c in cells))

    for j, name in enumerate(schema.keypoints):
        row(name, report.num_labelled[j], [report.pck_per_joint[t][j] for t in thr], report.px_error_per_joint[j],
            report.pckh["per_joint"][j] if report.pckh else None)
    lines.append("-" * len(lines[0]))
    for g, idx in schema.groups.items():
        row(g, report.num_labelled[list(idx)].sum(), [report.pck_per_group[t][g] for t in thr],
            report.px_error_per_group[g], report.pckh["per_group"][g] if report.pckh else None)
    row("all", report.num_labelled.sum(), [report.pck[t] for t in thr], report.px_error,
        report.pckh["total"] if report.pckh else None)
    return "\n".join(lines)
