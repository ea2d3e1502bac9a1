"""MPII Human Pose in its widely used JSON conversion -> a COCO-format keypoint file (schema ``mpii``).

The conversion HRNet / mmpose distribute (``train.json`` / ``valid.json``, mmpose: ``mpii_train.json``
/ ``mpii_val.json``) is a JSON list with one entry per annotated person::

    {"image": "015601864.jpg", "center": [594.0, 257.0], "scale": 3.021,
     "joints": [[620.0, 394.0], ...16 x (x, y)], "joints_vis": [1, 1, ...16 x 0/1]}

* 16 joints in MPII order (= ``lofr.data.schemas.MPII16``): r ankle, r knee, r hip, l hip, l knee,
  l ankle, pelvis, thorax, upper neck, head top, r wrist, r elbow, r shoulder, l shoulder, l elbow,
  l wrist. ``joints_vis`` 0 = not annotated (-> COCO v = 0), else annotated (-> v = 2).
* coordinates are MATLAB's, 1-based: pixel k (1-based) has its centre at k. lofr's convention
  (``lofr.data.transforms``) puts the centre of 0-based pixel j at j + 0.5, so
  ``x_lofr = x_mpii - 0.5`` for joints, centres and head boxes (HRNet subtracts 1 because it puts
  pixel centres at integers; the difference is a convention, not a shift of the content).
* ``scale`` is the person height / 200 px. Person box (our rule, HRNet's crop without its padding):
  a square of side ``200 * scale`` centred on ``center`` moved down by ``15 * scale`` px (HRNet /
  mmpose: "adjust center/scale slightly to avoid cropping limbs"). ``TopDownDataset`` then pads it
  by 1.25, which gives exactly HRNet's ``scale * 1.25`` crop at 256x256. Note: TopDownDataset clips
  boxes that reach beyond the image (as it does for COCO), which moves such crops' centre; HRNet
  does not clip MPII boxes.
* ``gt_valid.mat`` (the official validation ground truth, mmpose's ``mpii_gt_val.mat``) holds, for
  the N persons of ``valid.json`` in the same order: ``dataset_joints`` (1, 16) joint names,
  ``jnt_missing`` (16, N), ``pos_gt_src`` (16, 2, N) 1-based positions, ``headboxes_src`` (2, 2, N)
  = (corner, x / y, person), corner 0 = top-left, 1 = bottom-right. With it, the val annotations
  take their keypoints and missing flags FROM THE MAT (the metric's ground truth) and get
  ``head_box`` [x1, y1, x2, y2], so ``lofr.eval.evaluate_keypoints`` computes PCKh@0.5 (head size =
  0.6 x head-box diagonal) exactly as HRNet's ``MPIIDataset.evaluate``; ``lofr.eval.mpii.pckh_from_mat``
  computes it straight from the mat.

``ensure_coco(json_file, ...)`` converts once and caches the result next to the user's file
(``<name>.lofr-coco.json``) or, when that folder is read-only, in ``lofr.paths.data_dir()/cache``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import DataError
from .schemas import MPII16

__all__ = ["MAT_JOINT_NAMES", "load_mpii_json", "load_gt_mat", "mpii_to_coco", "ensure_coco", "is_coco_file",
           "MATLAB_OFFSET", "PIXEL_STD", "CENTER_SHIFT"]

log = logging.getLogger("lofr.data")

MATLAB_OFFSET = 0.5  # x_lofr = x_mpii - MATLAB_OFFSET
PIXEL_STD = 200.0  # MPII's scale unit: person height / 200 px
CENTER_SHIFT = 15.0  # the box centre moves down by 15 * scale px (HRNet / mmpose)
CONVERTER_VERSION = 1

# gt_valid.mat's joint names -> MPII16's
MAT_JOINT_NAMES = {
    "rank": "right_ankle", "rkne": "right_knee", "rhip": "right_hip", "lhip": "left_hip", "lkne": "left_knee",
    "lank": "left_ankle", "pelv": "pelvis", "thrx": "thorax", "neck": "upper_neck", "head": "head_top",
    "rwri": "right_wrist", "relb": "right_elbow", "rsho": "right_shoulder", "lsho": "left_shoulder",
    "lelb": "left_elbow", "lwri": "left_wrist",
}


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------------------- reading
def load_mpii_json(path) -> list[dict]:
    """Read and check an MPII JSON conversion file (module docstring). Any malformed entry raises
    DataError naming the file, the entry index and the image."""
    path = Path(path)
    if not path.is_file():
        raise DataError("MPII annotation file not found", file=path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}", file=path) from e
    if not isinstance(data, list):
        raise DataError("not the MPII JSON conversion: expected a list of {image, center, scale, joints, "
                        "joints_vis} (a dict with 'images' is a COCO file)", file=path)
    c = MPII16.num_keypoints
    for i, a in enumerate(data):
        where = f"entry {i} ({a.get('image', '?') if isinstance(a, dict) else '?'})"
        if not isinstance(a, dict):
            raise DataError(f"entry {i} is not an object", file=path)
        missing = [k for k in ("image", "center", "scale", "joints", "joints_vis") if k not in a]
        if missing:
            raise DataError(f"{where}: missing {missing}", file=path)
        if not (isinstance(a["center"], list) and len(a["center"]) == 2 and all(_num(v) for v in a["center"])):
            raise DataError(f"{where}: 'center' must be [x, y], got {a['center']!r}", file=path)
        if a["center"][0] == -1:
            raise DataError(f"{where}: center is -1 (no person position: a test-set entry?)", file=path)
        if not (_num(a["scale"]) and a["scale"] > 0):
            raise DataError(f"{where}: 'scale' must be a number > 0, got {a['scale']!r}", file=path)
        j, v = a["joints"], a["joints_vis"]
        if not (isinstance(j, list) and len(j) == c and all(isinstance(p, list) and len(p) == 2
                                                           and all(_num(x) for x in p) for p in j)):
            raise DataError(f"{where}: 'joints' must be {c} pairs [x, y] of finite numbers", file=path)
        if not (isinstance(v, list) and len(v) == c and all(_num(x) and x in (0, 1, 2) for x in v)):
            raise DataError(f"{where}: 'joints_vis' must be {c} flags 0 / 1, got {v!r}", file=path)
    if not data:
        raise DataError("no person entries", file=path)
    return data


def _mat_names(arr, path: Path) -> list[str]:
    """``dataset_joints`` as loadmat returns it (a (1, 16) cell of 1-element string arrays) -> names."""
    flat = np.asarray(arr, dtype=object).reshape(-1)
    names = []
    for x in flat:
        while isinstance(x, np.ndarray):
            if x.size != 1:
                raise DataError(f"'dataset_joints' entry {x!r} is not one name", file=path)
            x = x.reshape(-1)[0]
        names.append(str(x).strip())
    return names


def load_gt_mat(path, n: int | None = None) -> dict:
    """Read MPII's ``gt_valid.mat`` (scipy.io) -> ``{"missing" (N, 16) bool, "joints" (N, 16, 2),
    "head_boxes" (N, 4) x1 y1 x2 y2}`` in MPII16 order and lofr coordinates (MATLAB - 0.5).
    ``n``: the number of persons the matching JSON has (a mismatch raises)."""
    from scipy.io import loadmat

    path = Path(path)
    if not path.is_file():
        raise DataError("MPII ground-truth .mat file (gt_valid.mat) not found", file=path)
    try:
        m = loadmat(str(path))
    except Exception as e:  # scipy raises several types for non-.mat files
        raise DataError(f"not a readable MATLAB .mat file ({type(e).__name__}: {e})", file=path) from e
    for key in ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src"):
        if key not in m:
            raise DataError(f"no '{key}' variable: not MPII's gt_valid.mat", file=path)
    names = _mat_names(m["dataset_joints"], path)
    unknown = [x for x in names if x not in MAT_JOINT_NAMES]
    if len(names) != 16 or unknown or len(set(names)) != 16:
        raise DataError(f"'dataset_joints' must name the 16 MPII joints {sorted(MAT_JOINT_NAMES)}, got {names}",
                        file=path)
    missing, pos, head = (np.asarray(m[k], dtype=np.float64) for k in ("jnt_missing", "pos_gt_src", "headboxes_src"))
    big_n = missing.shape[-1] if missing.ndim == 2 else -1
    if missing.shape != (16, big_n) or pos.shape != (16, 2, big_n) or head.shape != (2, 2, big_n):
        raise DataError(f"shapes jnt_missing {missing.shape}, pos_gt_src {pos.shape}, headboxes_src {head.shape}; "
                        f"expected (16, N), (16, 2, N), (2, 2, N)", file=path)
    if n is not None and big_n != n:
        raise DataError(f"has {big_n} persons but the MPII JSON has {n}: they must be the same split, in the same "
                        f"order (gt_valid.mat goes with valid.json)", file=path)
    order = [names.index(k) for k, v in sorted(MAT_JOINT_NAMES.items(), key=lambda kv: MPII16.keypoints.index(kv[1]))]
    missing = missing[order].T.astype(bool)  # (N, 16)
    joints = pos[order].transpose(2, 0, 1) - MATLAB_OFFSET  # (N, 16, 2)
    boxes = head.transpose(2, 0, 1).reshape(big_n, 4) - MATLAB_OFFSET  # (N, 4): (x1, y1, x2, y2)
    if not np.isfinite(joints[~missing]).all() or not np.isfinite(boxes).all():
        raise DataError("non-finite joint or head-box coordinates", file=path)
    bad = np.flatnonzero((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1]))
    if bad.size:
        raise DataError(f"head box of person {int(bad[0])} (0-based) has no area: {boxes[bad[0]].tolist()}", file=path)
    return {"missing": missing, "joints": joints, "head_boxes": boxes}


# ----------------------------------------------------------------------------------------- conversion
def mpii_box(center, scale) -> list[float]:
    """The person box [x, y, w, h] (lofr coordinates) of an MPII entry: a square of side 200 * scale
    around the centre moved down by 15 * scale (module docstring)."""
    side = PIXEL_STD * scale
    cx, cy = center[0] - MATLAB_OFFSET, center[1] + CENTER_SHIFT * scale - MATLAB_OFFSET
    return [cx - side / 2, cy - side / 2, side, side]


def mpii_to_coco(json_file, img_dir=None, gt_mat=None) -> tuple[dict, dict]:
    """MPII JSON conversion -> (COCO-format keypoint dict with schema ``mpii``, report).

    Annotation ``id`` = entry index + 1 (so predictions map back to the JSON / mat order), image ids
    1..M in order of first appearance. ``img_dir``: read every image's size (header only) into
    ``width`` / ``height`` (a missing or unreadable image raises); without it the sizes are omitted.
    ``gt_mat``: the split's ``gt_valid.mat``: keypoints from the mat + ``head_box`` (module docstring).
    Each annotation keeps the original ``center`` / ``scale`` and its ``mpii_index``.
    report: ``persons``, ``images``, ``labelled_joints``, ``json_mat_disagreements`` (joints whose
    labelled flag or position (> 1 px) differ between the JSON and the mat).
    """
    json_file = Path(json_file)
    entries = load_mpii_json(json_file)
    gt = load_gt_mat(gt_mat, len(entries)) if gt_mat is not None else None
    images, image_ids = [], {}
    for a in entries:
        if a["image"] not in image_ids:
            image_ids[a["image"]] = len(image_ids) + 1
            img = {"id": image_ids[a["image"]], "file_name": a["image"]}
            if img_dir is not None:
                p = Path(img_dir) / a["image"]
                try:
                    with Image.open(p) as im:
                        img["width"], img["height"] = im.size
                except FileNotFoundError:
                    raise DataError(f"image file not found: {p}", file=json_file, image_id=img["id"]) from None
                except OSError as e:
                    raise DataError(f"unreadable image {p} ({e})", file=json_file, image_id=img["id"]) from e
            images.append(img)
    anns, disagree, labelled = [], 0, 0
    for i, a in enumerate(entries):
        xy = np.asarray(a["joints"], dtype=np.float64) - MATLAB_OFFSET  # (16, 2)
        lab = np.asarray(a["joints_vis"]) > 0  # (16,)
        ann = {"id": i + 1, "image_id": image_ids[a["image"]], "category_id": 1, "iscrowd": 0,
               "center": [float(v) for v in a["center"]], "scale": float(a["scale"]), "mpii_index": i}
        if gt is not None:
            g_lab = ~gt["missing"][i]
            both = lab & g_lab
            disagree += int((lab != g_lab).sum() + (np.linalg.norm(xy - gt["joints"][i], axis=1)[both] > 1.0).sum())
            xy, lab = gt["joints"][i], g_lab
            ann["head_box"] = [float(v) for v in gt["head_boxes"][i]]
        kps = []
        for (x, y), ok in zip(xy, lab):
            kps += [float(x), float(y), 2] if ok else [0.0, 0.0, 0]
        box = mpii_box(a["center"], a["scale"])
        ann.update(keypoints=kps, num_keypoints=int(lab.sum()), bbox=box, area=box[2] * box[3])
        labelled += int(lab.sum())
        anns.append(ann)
    if disagree:
        log.warning("%s: %d joints differ between the JSON and %s (labelled flag, or > 1 px); the .mat wins",
                    json_file.name, disagree, Path(gt_mat).name)
    data = {
        "info": {"description": f"MPII converted by lofr from {json_file.name}"},
        "categories": [{"id": 1, "name": "person", "supercategory": "person", "keypoints": list(MPII16.keypoints),
                        "skeleton": MPII16.skeleton_coco}],
        "images": images, "annotations": anns,
    }
    report = {"persons": len(anns), "images": len(images), "labelled_joints": labelled,
              "json_mat_disagreements": disagree}
    return data, report


def is_coco_file(path) -> bool:
    """True when ``path`` holds a JSON object (a COCO file), False for a JSON list (the MPII form)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head[:1] == b"{"


def _source_key(json_file: Path, img_dir, gt_mat) -> dict:
    def stamp(p):
        s = Path(p).stat()
        return [str(Path(p).resolve()), s.st_size, s.st_mtime_ns]

    return {"version": CONVERTER_VERSION, "json": stamp(json_file),
            "gt_mat": stamp(gt_mat) if gt_mat is not None else None,
            "img_dir": str(Path(img_dir).resolve()) if img_dir is not None else None}


def ensure_coco(json_file, img_dir=None, gt_mat=None, cache_dir=None) -> Path:
    """A COCO-format file for ``json_file``: the file itself when it already is one, else the cached
    conversion (``mpii_to_coco``), rebuilt when the JSON / mat / image folder changed. A COCO file
    with ``gt_mat`` raises (the mat's order only matches the MPII JSON).

    Cache location: ``cache_dir`` if given, else next to ``json_file`` as ``<stem>.lofr-coco.json``
    (``<stem>.<mat stem>.lofr-coco.json`` with a mat), else (read-only folder)
    ``lofr.paths.data_dir()/cache/mpii``. Written atomically (safe with several processes)."""
    json_file = Path(json_file)
    if not json_file.is_file():
        raise DataError("MPII annotation file not found", file=json_file)
    if is_coco_file(json_file):
        if gt_mat is not None:
            raise DataError(f"is already a COCO-format file, so the head boxes of {gt_mat} cannot be added (they "
                            f"follow the MPII JSON's order): point to the MPII JSON conversion (valid.json / "
                            f"mpii_val.json), or drop the .mat and give each annotation a 'head_box'", file=json_file)
        return json_file
    key = _source_key(json_file, img_dir, gt_mat)
    name = json_file.stem + (f".{Path(gt_mat).stem}" if gt_mat is not None else "") + ".lofr-coco.json"
    if cache_dir is None and os.access(json_file.parent, os.W_OK):
        out = json_file.parent / name
    else:
        from lofr.paths import data_dir

        digest = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:10]
        out = Path(cache_dir or data_dir() / "cache" / "mpii") / f"{digest}.{name}"
    if out.is_file():
        try:
            with open(out, encoding="utf-8") as f:
                if json.load(f).get("info", {}).get("lofr_source") == key:
                    return out
        except (OSError, ValueError):
            pass  # unreadable cache: rebuild it
    data, report = mpii_to_coco(json_file, img_dir, gt_mat)
    data["info"]["lofr_source"] = key
    data["info"]["lofr_report"] = report
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("%s: %d persons on %d images converted to %s", json_file.name, report["persons"], report["images"], out)
    return out
