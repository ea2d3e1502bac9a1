"""Results on DETECTED person boxes (COCO val / test-dev), as SimpleBaseline / HRNet make them.

``detection_results``: the predictions on the crops of a ``lofr.data.detections.DetectionTopDown``
-> COCO keypoint results, instance score = box score x mean of the keypoint scores > 0.2
(``lofr.eval.instance_score``), then OKS-NMS per image (``lofr.eval.nms``, threshold 0.9, area = the
crop region's area). ``write_test_dev_results``: those results in the form the COCO test-dev server
takes. (Predicting the crops is the model's job: ``lofr.engine.evaluation.evaluate_with_detections``
runs the whole pipeline.)
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lofr.data.errors import DataError

from .coco import predictions_to_coco_results, write_results
from .nms import oks_nms_results

__all__ = ["detection_results", "write_test_dev_results", "TEST_DEV_KEYS"]

TEST_DEV_KEYS = ("image_id", "category_id", "keypoints", "score")


def _image_info(path: Path) -> list[dict]:
    """The ``images`` list of a COCO image-info file; DataError naming the file when it is not one."""
    if not path.is_file():
        raise DataError("image-info file not found", file=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=path) from e
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, dict) and "id" in i for i in images):
        raise DataError("an image-info file needs an 'images' list of objects with an 'id'", file=path)
    return images


def detection_results(dataset, records: list[dict], nms_thr: float | None = 0.9,
                      kpt_thr: float = 0.2, vis_thr: float | None = None) -> list[dict]:
    """Predictions on ``dataset``'s crops (``predict_records`` output, image coordinates) -> COCO
    keypoint results: score = box score x mean keypoint score above ``kpt_thr``; then OKS-NMS per
    image at ``nms_thr`` (None = no NMS) with area = the crop region's w x h (HRNet's rule)."""
    by_det = {r.ann_id: r for r in dataset.records}
    if len(records) != len(by_det):
        raise ValueError(f"{len(records)} predictions for {len(by_det)} detection crops")
    recs = []
    for p in records:
        if p["ann_id"] not in by_det:
            raise ValueError(f"prediction for detection {p['ann_id']} which is not a crop of this dataset")
        recs.append(by_det[p["ann_id"]])
    results = predictions_to_coco_results([p["image_id"] for p in records], [p["ann_id"] for p in records],
                                          np.stack([p["keypoints"] for p in records]),
                                          np.stack([p["scores"] for p in records]),
                                          [dataset.box_scores[r.index] for r in recs], thr=kpt_thr)
    if nms_thr is None:
        return results
    areas = [float(r.scale[0] * r.scale[1]) for r in recs]
    return oks_nms_results(results, areas, nms_thr, dataset.schema, vis_thr)


def write_test_dev_results(results: list[dict], out_dir, method: str = "lofr", image_info=None,
                           num_keypoints: int = 17) -> tuple[Path, Path]:
    """Write results for the COCO test-dev server: ``person_keypoints_test-dev2017_<method>_results.json``
    (a list of ``{"image_id", "category_id", "keypoints", "score"}``, nothing else) and the same file
    zipped next to it (what the server takes). ``image_info``: the image-info JSON's path; when given,
    every image_id must be one of its images. Returns (json path, zip path)."""
    if not method or any(ch in method for ch in "_/\\ "):
        raise ValueError(f"method name {method!r} must be non-empty without '_', '/' or spaces (the server "
                         f"parses the file name)")
    known = None
    if image_info is not None:
        known = {img["id"] for img in _image_info(Path(image_info))}
    clean = []
    for i, r in enumerate(results):
        if len(r.get("keypoints", ())) != 3 * num_keypoints:
            n = len(r.get("keypoints", ()))
            raise ValueError(f"result {i}: keypoints must be {3 * num_keypoints} numbers, got {n}")
        if known is not None and r["image_id"] not in known:
            raise ValueError(f"result {i}: image_id {r['image_id']} is not a test-dev image of {image_info}")
        clean.append({"image_id": int(r["image_id"]), "category_id": int(r["category_id"]),
                      "keypoints": [round(float(v), 3) for v in r["keypoints"]], "score": float(r["score"])})
    out_dir = Path(out_dir)
    path = write_results(out_dir / f"person_keypoints_test-dev2017_{method}_results.json", clean)
    zpath = path.with_suffix(".zip")
    fd, tmp = tempfile.mkstemp(prefix=f".{zpath.name}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:  # atomic like write_results: a failed write leaves no half-written zip
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
            z.write(path, arcname=path.name)
        os.chmod(tmp, 0o644)
        os.replace(tmp, zpath)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path, zpath
