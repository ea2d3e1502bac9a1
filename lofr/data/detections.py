"""Top-down crops around DETECTED person boxes (COCO val / test-dev), as SimpleBaseline / HRNet use them.

The person-detection results file is a COCO *detection results* list, e.g. the widely used
``COCO_val2017_detections_AP_H_56_person.json``::

    [{"image_id": 397133, "category_id": 1, "bbox": [x, y, w, h], "score": 0.99}, ...]

1. ``load_detections``: keep category_id 1 (person) with score >= ``score_thr`` (HRNet's
   ``IMAGE_THRE``, default 0.0: every box); anything malformed raises ``DataError`` naming the file
   and the entry; unknown image ids are errors, never dropped.
2. ``DetectionTopDown``: one eval crop per kept box (padding 1.25 at the input's aspect ratio, the
   same rule as ground-truth boxes; detected boxes are NOT clipped to the image, as in HRNet);
   ``detection_dataset(cfg)`` builds it from a TrainConfig.

The rest of the pipeline is not data: the model predicts every crop and the predictions are
rescored and OKS-NMS'd into COCO results by ``lofr.engine.evaluation.evaluate_with_detections``
(``lofr.eval.detections.detection_results``; ``write_test_dev_results`` for the test-dev server).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from lofr.config_utils import ConfigError

from .errors import DataError
from .topdown import TopDownDataset, _Record, log
from .transforms import box_to_center_scale

__all__ = ["load_detections", "DetectionTopDown", "detection_dataset"]


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise DataError(f"{what} not found", file=path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=path) from e


def load_detections(det_file, image_ids=None, score_thr: float = 0.0, category_id: int = 1) -> tuple[list[dict], dict]:
    """Person boxes from a COCO detection-results JSON -> (detections, report).

    Each kept detection is ``{"index": position in the file, "image_id", "bbox": [x, y, w, h],
    "score"}``; ``report`` counts ``entries``, ``other_category``, ``below_threshold``, ``kept``.
    ``image_ids``: the ids the ground truth / image-info file knows; an entry for any other image
    raises DataError. Boxes must have 4 finite numbers with w, h > 0, scores must be finite.
    """
    det_file = Path(det_file)
    data = _read_json(det_file, "person detection results file")
    if not isinstance(data, list):
        raise DataError(f"a detection results file is a JSON list of {{image_id, category_id, bbox, score}}, "
                        f"got a {type(data).__name__}", file=det_file)
    known = None if image_ids is None else set(image_ids)
    counts = Counter()
    dets = []
    for i, d in enumerate(data):
        where = f"entry {i}"
        if not isinstance(d, dict):
            raise DataError(f"{where} is not an object", file=det_file)
        missing = [k for k in ("image_id", "category_id", "bbox", "score") if k not in d]
        if missing:
            raise DataError(f"{where} has no {missing}", file=det_file, image_id=d.get("image_id"))
        counts["entries"] += 1
        if d["category_id"] != category_id:
            counts["other_category"] += 1
            continue
        box, score = d["bbox"], d["score"]
        if not (isinstance(box, (list, tuple)) and len(box) == 4
                and all(isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DataError(f"{where}: 'bbox' must be 4 finite numbers [x, y, w, h], got {box!r}",
                            file=det_file, image_id=d["image_id"])
        if not (box[2] > 0 and box[3] > 0):
            raise DataError(f"{where}: bbox {box} has zero or negative width / height", file=det_file,
                            image_id=d["image_id"])
        if not (isinstance(score, (int, float)) and math.isfinite(score)):
            raise DataError(f"{where}: 'score' must be a finite number, got {score!r}", file=det_file,
                            image_id=d["image_id"])
        if known is not None and d["image_id"] not in known:
            raise DataError(f"{where}: image_id {d['image_id']!r} is not in the annotation / image-info file "
                            f"(detections of another split?)", file=det_file, image_id=d["image_id"])
        if score < score_thr:
            counts["below_threshold"] += 1
            continue
        dets.append({"index": i, "image_id": d["image_id"], "bbox": [float(v) for v in box], "score": float(score)})
    report = {"entries": counts["entries"], "other_category": counts["other_category"],
              "below_threshold": counts["below_threshold"], "kept": len(dets), "score_thr": score_thr}
    return dets, report


class DetectionTopDown(TopDownDataset):
    """Eval crops around detected person boxes (no ground truth needed: works on test-dev).

    Args:
        det_file: detection results JSON (module docstring).
        ann_file: a COCO keypoint file of the split (val) or its image-info file
            (``image_info_test-dev2017.json``: ``images`` only): image ids, file names, sizes.
        img_dir, schema, input_size, heatmap_stride, sigma, fill: as ``TopDownDataset`` (eval mode).
        score_thr: keep boxes with score >= score_thr.

    ``records[i].ann_id`` is the detection's position in ``det_file`` (not a ground-truth id);
    ``box_scores[i]`` its score. Samples carry all-zero labels / keypoints (there is no ground truth).
    """

    def __init__(self, det_file, ann_file, img_dir, schema="coco", input_size=(256, 192), score_thr: float = 0.0,
                 heatmap_stride: int = 4, sigma: float | None = None, fill: str = "edge"):
        self.det_file, self.score_thr = Path(det_file), float(score_thr)
        self.box_scores: list[float] = []
        super().__init__(ann_file, img_dir, schema=schema, input_size=input_size, train=False,
                         heatmap_stride=heatmap_stride, sigma=sigma, fill=fill, on_bad="raise")

    def _load_coco(self) -> COCO:
        data = _read_json(self.ann_file, "annotation / image-info file")
        if not isinstance(data, dict) or not isinstance(data.get("images"), list):
            raise DataError("needs an 'images' list (a COCO annotation or image-info file)", file=self.ann_file)
        data = dict(data)
        data.setdefault("annotations", [])  # image-info files (test-dev) have none
        for i, img in enumerate(data["images"]):
            if not isinstance(img, dict) or "id" not in img or "file_name" not in img:
                raise DataError(f"images[{i}] needs 'id' and 'file_name'", file=self.ann_file)
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco

    def _build_records(self) -> list[_Record]:
        dets, self.det_report = load_detections(self.det_file, self.coco.imgs.keys(), self.score_thr)
        try:
            present = set(os.listdir(self.img_dir))
        except FileNotFoundError:
            raise DataError(f"image folder not found: {self.img_dir}", file=self.ann_file) from None
        c = self.schema.num_keypoints
        aspect = self.input_size[1] / self.input_size[0]
        records = []
        for d in dets:
            img = self.coco.imgs[d["image_id"]]
            name = img["file_name"]
            if name not in present and not (self.img_dir / name).is_file():
                raise DataError(f"image file not found: {self.img_dir / name} (detection entry {d['index']})",
                                file=self.det_file, image_id=d["image_id"])
            bbox = np.asarray(d["bbox"], dtype=np.float32)
            center, scale = box_to_center_scale(bbox, aspect, padding=1.25)
            records.append(_Record(len(records), d["index"], d["image_id"], self.img_dir / name, bbox,
                                   np.zeros((c, 3)), float(bbox[2] * bbox[3]), center, scale))
            self.box_scores.append(d["score"])
        self.report = {**self.det_report, "replaced_unreadable": 0}
        r = self.det_report
        log.info(f"{self.det_file.name}: kept {r['kept']} of {r['entries']} detections (other categories: "
                 f"{r['other_category']}, score < {self.score_thr:g}: {r['below_threshold']})")
        if not records:
            raise DataError(f"no person detection with score >= {self.score_thr:g}", file=self.det_file)
        return records


def detection_dataset(cfg) -> DetectionTopDown:
    """The val split's detection crops from a TrainConfig: ``data.det_file`` (relative to
    ``data.root``) on ``data.val_ann`` / ``data.val_img``, boxes with score >= ``data.det_score_thr``."""
    d = cfg.data
    if not d.det_file:
        raise ConfigError("data.det_file is empty: set it to the person detection results, e.g. "
                         "data.det_file=person_detection_results/COCO_val2017_detections_AP_H_56_person.json")
    root = Path(d.root).expanduser()
    return DetectionTopDown(root / d.det_file, root / d.val_ann, root / d.val_img, d.schema, tuple(d.input_size),
                            d.det_score_thr)
