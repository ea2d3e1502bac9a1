"""OKS average precision, the COCO / CrowdPose way (paper Sec. 4.1).

The AP numbers come from the official tools, never from a home-made re-implementation:

* COCO (and any schema with ``use_area=True``): pycocotools' ``COCOeval(gt, dt, "keypoints")`` with
  ``params.kpt_oks_sigmas`` set from the schema (COCOeval's default constants are COCO-17's).
* ``use_area=False`` (ground truth without a segmentation area): xtcocotools' ``COCOeval`` with
  ``iouType="keypoints", use_area=False``, which replaces the area by 0.53 * box area.
* CrowdPose: xtcocotools' ``COCOeval(..., iouType="keypoints_crowd", use_area=False)``, the tool
  mmpose uses, which adds AP (easy / medium / hard) from each image's ``crowdIndex``.

COCOeval prints a lot; we capture its stdout unless ``verbose=True``. The numbers are returned
unchanged (-1 is COCOeval's "no ground truth in this range").

``oks`` is a small reference implementation of the formula for tests and teaching only.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from lofr.data.schemas import KeypointSchema, get_schema

__all__ = [
    "COCO_KEYS", "CROWDPOSE_KEYS", "oks", "instance_score", "predictions_to_coco_results", "write_results",
    "load_results", "load_gt", "check_gt", "check_results", "coco_keypoint_eval", "crowdpose_eval",
]

# Order of COCOeval.stats for keypoints (pycocotools / xtcocotools ``_summarizeKps``).
COCO_KEYS = ("AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL")
# Order of xtcocotools' stats for iouType="keypoints_crowd" (``_summarizeKps_crowd``).
CROWDPOSE_KEYS = ("AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard")


# ----------------------------------------------------------------------------- reference OKS
def oks(pred, gt, area: float, sigmas) -> float:
    """Object keypoint similarity of one prediction (C, 2) with one ground truth (C, 3) = (x, y, v).

    The COCO formula: ``OKS = mean over labelled joints (v > 0) of exp(-d_i^2 / (2 s^2 k_i^2))``
    with ``d_i`` the pixel distance, ``s^2`` = the object's area and ``k_i = 2 sigma_i``. (COCOeval also
    handles a ground truth with no labelled joint via its box; we do not: that raises.) Reference for
    tests and teaching only: AP always comes from COCOeval.
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    if pred.shape != (len(sigmas), 2) or gt.shape != (len(sigmas), 3):
        raise ValueError(f"oks: pred must be (C, 2) and gt (C, 3) with C = {len(sigmas)}; "
                         f"got {pred.shape}, {gt.shape}")
    labelled = gt[:, 2] > 0
    if not labelled.any():
        raise ValueError("oks: the ground truth has no labelled joint")
    d2 = ((pred - gt[:, :2]) ** 2).sum(-1)  # (C,)
    k2 = (2.0 * sigmas) ** 2
    return float(np.exp(-d2 / (2.0 * area * k2))[labelled].mean())


# ----------------------------------------------------------------------------- results
def instance_score(keypoint_scores, box_score: float = 1.0, thr: float = 0.2) -> float:
    """Instance score for COCO results, the HRNet / mmpose top-down rule: the mean of the keypoint
    scores that are above ``thr`` (0 when none is), times the person-box score."""
    s = np.asarray(keypoint_scores, dtype=np.float64)
    valid = s > thr
    kpt = float(s[valid].mean()) if valid.any() else 0.0
    return kpt * float(box_score)


def predictions_to_coco_results(image_ids, ann_ids, keypoints_img, keypoint_scores, box_scores=None,
                                category_id: int = 1, thr: float = 0.2) -> list[dict]:
    """Per-instance predictions in ORIGINAL image coordinates -> COCO keypoint results.

    image_ids (N,), ann_ids (N,) or None, keypoints_img (N, C, 2), keypoint_scores (N, C),
    box_scores (N,) or None (= 1). Each result is ``{"image_id", "category_id", "keypoints": [x, y, s]
    * C, "score"}`` (+ ``"ann_id"`` when given, which COCOeval ignores), where ``s`` is the keypoint
    score and ``score = instance_score(...)`` (mean keypoint score above ``thr`` times box score).
    No OKS-NMS is applied (with ground-truth boxes there is one prediction per person).
    Note: xtcocotools' COCOeval skips a result whose keypoint scores are all 0.
    """
    kp = np.asarray(keypoints_img, dtype=np.float64)
    sc = np.asarray(keypoint_scores, dtype=np.float64)
    n = len(image_ids)
    if kp.ndim != 3 or kp.shape[0] != n or kp.shape[2] != 2:
        raise ValueError(f"keypoints_img must be (N={n}, C, 2), got {kp.shape}")
    if sc.shape != kp.shape[:2]:
        raise ValueError(f"keypoint_scores must be (N, C) = {kp.shape[:2]}, got {sc.shape}")
    if ann_ids is not None and len(ann_ids) != n:
        raise ValueError(f"ann_ids has {len(ann_ids)} entries for {n} predictions")
    box = np.ones(n) if box_scores is None else np.asarray(box_scores, dtype=np.float64).reshape(-1)
    if box.shape[0] != n:
        raise ValueError(f"box_scores has {box.shape[0]} entries for {n} predictions")
    results = []
    for i in range(n):
        if not (np.isfinite(kp[i]).all() and np.isfinite(sc[i]).all()):
            raise ValueError(f"prediction {i} (image_id {image_ids[i]}) has non-finite keypoints or scores")
        flat = np.concatenate([kp[i], sc[i][:, None]], axis=1).reshape(-1)  # [x, y, s] * C
        r = {"image_id": _py(image_ids[i]), "category_id": int(category_id),
             "keypoints": [float(v) for v in flat], "score": instance_score(sc[i], box[i], thr)}
        if ann_ids is not None:
            r["ann_id"] = _py(ann_ids[i])
        results.append(r)
    return results


def _py(v):
    """numpy scalar -> plain Python (so json can write it)."""
    return v.item() if isinstance(v, np.generic) else v


def _json_default(v):
    """``json.dump`` hook: numpy scalars / arrays -> Python; anything else is an error."""
    if isinstance(v, (np.generic, np.ndarray)):
        return v.tolist()
    raise TypeError(f"cannot write a {type(v).__name__} to a results JSON")


def write_results(path, results: list[dict]) -> Path:
    """Write COCO results JSON atomically: a temp file in the same folder, then ``os.replace``, so a
    reader never sees a half-written file and nothing is left behind on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600 files; results are ordinary files
        with os.fdopen(fd, "w") as f:
            json.dump(results, f, default=_json_default)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_results(results) -> tuple[list[dict], str]:
    """A results list or a path to a results JSON -> (a deep copy of the list, a name for messages).
    (COCO's ``loadRes`` writes into the dicts it gets, so we never hand it the caller's.)"""
    if isinstance(results, (str, os.PathLike)):
        with open(results) as f:
            data = json.load(f)
        src = str(results)
    else:
        data, src = copy.deepcopy(list(results)), "results"
    if not isinstance(data, list):
        raise ValueError(f"{src}: COCO results must be a JSON list of objects, got {type(data).__name__}")
    return data, src


# ----------------------------------------------------------------------------- ground truth
def load_gt(gt) -> tuple[dict, str]:
    """Ground truth as a path, a COCO-format dict or a (pyco|xtco)cotools ``COCO`` object -> (a deep
    copy of the dataset dict, a name for messages). COCOeval writes flags into annotations, so we
    never let it touch the caller's."""
    if isinstance(gt, (str, os.PathLike)):
        with open(gt) as f:
            return json.load(f), str(gt)
    if isinstance(gt, dict):
        return copy.deepcopy(gt), "ground truth"
    if hasattr(gt, "dataset"):
        return copy.deepcopy(gt.dataset), "ground truth"
    raise TypeError(f"ground truth must be a path, a dict or a COCO object, got {type(gt).__name__}")


def check_gt(dataset: dict, schema: KeypointSchema, src: str, need_area: bool = True,
             need_crowd_index: bool = False) -> None:
    """Raise a ValueError naming the file and annotation / image id for anything COCOeval would
    choke on or silently misread."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"{src}: a COCO keypoint ground truth needs a list under '{key}'")
    c = schema.num_keypoints
    image_ids = set()
    for img in dataset["images"]:
        if "id" not in img:
            raise ValueError(f"{src}: an image entry has no 'id': {img}")
        image_ids.add(img["id"])
        if need_crowd_index and not isinstance(img.get("crowdIndex"), (int, float)):
            raise ValueError(f"{src}: image id {img['id']}: no numeric 'crowdIndex' (CrowdPose's AP easy / "
                             f"medium / hard need one on every image)")
    for ann in dataset["annotations"]:
        where = f"{src}: annotation id {ann.get('id')}"
        for key in ("id", "image_id", "category_id", "keypoints", "num_keypoints", "bbox", "iscrowd"):
            if key not in ann:
                raise ValueError(f"{where}: missing '{key}'")
        if ann["image_id"] not in image_ids:
            raise ValueError(f"{where}: image_id {ann['image_id']} is not in 'images'")
        if len(ann["keypoints"]) != 3 * c:
            raise ValueError(f"{where}: {len(ann['keypoints'])} keypoint values, schema {schema.name} needs "
                             f"3 * {c} = {3 * c}")
        if len(ann["bbox"]) != 4:
            raise ValueError(f"{where}: bbox must be [x, y, w, h], got {ann['bbox']}")
        if need_area and not isinstance(ann.get("area"), (int, float)):
            raise ValueError(f"{where}: no numeric 'area' (pass use_area=False to use 0.53 * box area)")


def check_results(results: list[dict], dataset: dict, schema: KeypointSchema, src: str = "results") -> None:
    """Raise a ValueError naming the entry for a result COCOeval would reject or misread: unknown
    image_id / category_id, wrong keypoint length, non-finite numbers, missing score."""
    if not results:
        raise ValueError(f"{src}: no results to evaluate (COCOeval cannot load an empty list)")
    image_ids = {img["id"] for img in dataset["images"]}
    cat_ids = {cat["id"] for cat in dataset["categories"]}
    n = 3 * schema.num_keypoints
    for i, r in enumerate(results):
        where = f"{src}: entry {i} (image_id {r.get('image_id') if isinstance(r, dict) else '?'})"
        if not isinstance(r, dict):
            raise ValueError(f"{where}: not a dict")
        for key in ("image_id", "category_id", "keypoints", "score"):
            if key not in r:
                raise ValueError(f"{where}: missing '{key}'")
        if r["image_id"] not in image_ids:
            raise ValueError(f"{where}: unknown image_id {r['image_id']!r} (not in the ground truth)")
        if r["category_id"] not in cat_ids:
            raise ValueError(f"{where}: unknown category_id {r['category_id']!r}")
        kp = r["keypoints"]
        if not isinstance(kp, (list, tuple)) or len(kp) != n:
            length = len(kp) if isinstance(kp, (list, tuple)) else type(kp).__name__
            raise ValueError(f"{where}: keypoints must be a flat list of {n} values ([x, y, s] * "
                             f"{schema.num_keypoints}, schema {schema.name}), got {length}")
        if not (np.isfinite(np.asarray(kp, dtype=np.float64)).all() and np.isfinite(float(r["score"]))):
            raise ValueError(f"{where}: non-finite keypoints or score")


# ----------------------------------------------------------------------------- xtcocotools import
def _xtcocotools():
    """xtcocotools' ``(COCO, COCOeval)`` classes.

    xtcocotools 1.14.3 (the newest release) ships a compiled mask extension built against numpy 1.x
    that fails to import under numpy 2 ("numpy.dtype size changed"). Keypoint evaluation never uses
    masks (only segm / bbox IoU do), so on exactly that failure we import xtcocotools' pure-Python
    ``coco`` / ``cocoeval`` with pycocotools' ``mask`` (the same API) standing in for its own, and
    remove the stand-in from ``sys.modules`` again afterwards. Any other import error is raised.
    """
    try:
        from xtcocotools.coco import COCO
        from xtcocotools.cocoeval import COCOeval
        return COCO, COCOeval
    except ValueError as e:
        if "dtype size changed" not in str(e):
            raise
    import sys

    import pycocotools.mask
    import xtcocotools

    sys.modules["xtcocotools.mask"] = pycocotools.mask
    try:
        from xtcocotools.coco import COCO
        from xtcocotools.cocoeval import COCOeval
    finally:
        del sys.modules["xtcocotools.mask"]
        if getattr(xtcocotools, "mask", None) is pycocotools.mask:
            del xtcocotools.mask
    return COCO, COCOeval


# ----------------------------------------------------------------------------- COCOeval
@contextlib.contextmanager
def _quiet(verbose: bool):
    if verbose:
        yield
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            yield


def _run(evaluator, keys) -> dict[str, float]:
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return {k: float(v) for k, v in zip(keys, evaluator.stats)}


def coco_keypoint_eval(gt, results, schema: str | KeypointSchema = "coco", use_area: bool = True,
                       verbose: bool = False) -> dict[str, float]:
    """COCO keypoint AP / AR: ``{"AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"}``.

    ``gt``: path, dict or COCO object; ``results``: list of result dicts or a path to a results JSON.
    OKS sigmas come from ``schema``. With ``use_area=True`` pycocotools' COCOeval runs (OKS scale =
    the annotation's ``area``); with ``use_area=False`` xtcocotools' COCOeval (scale = 0.53 * box area).
    """
    schema = get_schema(schema)
    dataset, gsrc = load_gt(gt)
    check_gt(dataset, schema, gsrc, need_area=use_area)
    dets, rsrc = load_results(results)
    check_results(dets, dataset, schema, rsrc)
    sigmas = np.asarray(schema.sigmas, dtype=np.float64)
    with _quiet(verbose):
        if use_area:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = dataset
            coco_gt.createIndex()
            ev = COCOeval(coco_gt, coco_gt.loadRes(dets), "keypoints")
            ev.params.kpt_oks_sigmas = sigmas
        else:
            XCOCO, XCOCOeval = _xtcocotools()
            coco_gt = XCOCO()
            coco_gt.dataset = dataset
            coco_gt.createIndex()
            ev = XCOCOeval(coco_gt, coco_gt.loadRes(dets), "keypoints", sigmas=sigmas, use_area=False)
        return _run(ev, COCO_KEYS)


def crowdpose_eval(gt, results, schema: str | KeypointSchema = "crowdpose", use_area: bool = False,
                   verbose: bool = False) -> dict[str, float]:
    """CrowdPose AP via xtcocotools (``iouType="keypoints_crowd"``): ``{"AP", "AP50", "AP75", "AR",
    "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"}`` (the order of xtcocotools' ``stats``).

    CrowdPose annotations carry no segmentation area, so ``use_area=False`` (0.53 * box area), as in
    mmpose. Every image needs a ``crowdIndex``. Note: the paper's text says easy / medium / hard =
    crowd index in [0, 0.1) / [0.1, 0.8) / [0.8, 1]; the official code (which xtcocotools copies) splits
    at 0.2 and 0.8 and we keep its numbers. ``num_keypoints`` decides which persons are ignored (0).
    xtcocotools reads the ground truth back from its file to split by crowd index, so a dict / COCO
    object is written to a temporary JSON file first.
    """
    XCOCO, XCOCOeval = _xtcocotools()
    schema = get_schema(schema)
    dataset, gsrc = load_gt(gt)
    check_gt(dataset, schema, gsrc, need_area=use_area, need_crowd_index=True)
    dets, rsrc = load_results(results)
    check_results(dets, dataset, schema, rsrc)
    with tempfile.TemporaryDirectory(prefix="lofr_crowdpose_") as tmp, _quiet(verbose):
        gt_file = str(gt) if isinstance(gt, (str, os.PathLike)) else os.path.join(tmp, "gt.json")
        if gt_file.startswith(tmp):
            with open(gt_file, "w") as f:
                json.dump(dataset, f, default=_json_default)
        coco_gt = XCOCO(gt_file)
        ev = XCOCOeval(coco_gt, coco_gt.loadRes(dets), "keypoints_crowd",
                       sigmas=np.asarray(schema.sigmas, dtype=np.float64), use_area=use_area)
        with warnings.catch_warnings():
            # xtcocotools' crowd-index split opens the ground-truth file without closing it.
            warnings.simplefilter("ignore", ResourceWarning)
            return _run(ev, CROWDPOSE_KEYS)
