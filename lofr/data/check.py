"""``lofr data check ROOT --schema coco|mpii|crowdpose``: is a downloaded dataset where and what lofr expects?

``check_dataset(root, schema)`` looks for the expected files (the layouts of ``docs/datasets.md``),
opens and validates every annotation file it finds, whether or not the images are there
(``validate_annotation_file``: JSON syntax, the required COCO keys, the schema's keypoint count, ids
used twice or referring to nothing; each problem names the file and the ids), loads the annotation
files the way training will (``TopDownDataset(on_bad="skip")``, so every problem is counted instead
of stopping at the first), compares the counts with the official release, draws one annotated image
with its boxes and skeletons to a PNG, and returns a ``CheckReport`` whose ``problems`` say what to
do (download X, unzip it in Y, ...).

Severity: a *problem* makes the check fail (something training or evaluation needs is missing or
unusable); a *warning* does not (a count that differs from the official release, an optional file
that is absent).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from .errors import DataError
from .schemas import KeypointSchema, get_schema

__all__ = ["CheckReport", "check_dataset", "validate_annotation_file", "draw_sample", "LAYOUTS",
           "add_data_check_arguments", "cmd_data_check"]

# (role, relative path candidates (first found wins), required, official counts or None, where to get it)
LAYOUTS: dict[str, list[tuple]] = {
    "coco": [
        ("train_ann", ["annotations/person_keypoints_train2017.json"], True,
         {"images": 118287, "annotations": 262465, "usable": 149813},
         "annotations_trainval2017.zip from https://cocodataset.org/#download, unzipped in ROOT"),
        ("val_ann", ["annotations/person_keypoints_val2017.json"], True,
         {"images": 5000, "annotations": 11004, "usable": 6352},
         "annotations_trainval2017.zip from https://cocodataset.org/#download, unzipped in ROOT"),
        ("train_img", ["train2017"], True, None,
         "train2017.zip from https://cocodataset.org/#download, unzipped in ROOT"),
        ("val_img", ["val2017"], True, None, "val2017.zip from https://cocodataset.org/#download, unzipped in ROOT"),
        ("det_file", ["person_detection_results/COCO_val2017_detections_AP_H_56_person.json"], False, None,
         "the person detections HRNet distributes (see docs/datasets.md), in ROOT/person_detection_results/"),
        ("test_info", ["annotations/image_info_test-dev2017.json"], False, None,
         "image_info_test2017.zip from https://cocodataset.org/#download (only for test-dev)"),
    ],
    "mpii": [
        ("train_ann", ["annotations/mpii_train.json", "annot/train.json"], True, {"annotations": 22246},
         "the MPII JSON conversion (mmpose: mpii_train.json / mpii_val.json / mpii_gt_val.mat; HRNet: "
         "annot/train.json / valid.json / gt_valid.mat), see docs/datasets.md"),
        ("val_ann", ["annotations/mpii_val.json", "annot/valid.json"], True, {"annotations": 2958},
         "the MPII JSON conversion (see docs/datasets.md)"),
        ("gt_mat", ["annotations/mpii_gt_val.mat", "annot/gt_valid.mat"], True, None,
         "gt_valid.mat, the validation ground truth with head boxes for PCKh (see docs/datasets.md)"),
        ("train_img", ["images"], True, None,
         "mpii_human_pose_v1.tar.gz (images) from http://human-pose.mpi-inf.mpg.de, unpacked to ROOT/images"),
    ],
    "crowdpose": [
        ("train_ann", ["annotations/crowdpose_trainval.json"], True, {"images": 12000},
         "the CrowdPose annotations (crowdpose_trainval.json, crowdpose_test.json) from "
         "https://github.com/Jeff-sjtu/CrowdPose, in ROOT/annotations"),
        ("val_ann", ["annotations/crowdpose_test.json"], True, {"images": 8000},
         "crowdpose_test.json from https://github.com/Jeff-sjtu/CrowdPose, in ROOT/annotations"),
        ("train_img", ["images"], True, None, "the CrowdPose images.zip, unzipped to ROOT/images"),
    ],
}


@dataclass
class CheckReport:
    """What ``check_dataset`` found. ``ok`` = no problems (warnings allowed)."""

    root: str
    schema: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    files: dict[str, str | None] = field(default_factory=dict)  # role -> path found (None = absent)
    counts: dict[str, dict] = field(default_factory=dict)  # role -> counts
    sample_png: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def format(self) -> str:
        lines = [f"lofr data check {self.root} --schema {self.schema}: {'OK' if self.ok else 'PROBLEMS FOUND'}", ""]
        for role, path in self.files.items():
            lines.append(f"  {role:<10} {path if path else '(not found)'}")
        for role, c in self.counts.items():
            lines.append(f"  {role:<10} " + ", ".join(f"{k} {v}" for k, v in c.items()))
        if self.sample_png:
            lines.append(f"  sample drawn to {self.sample_png}")
        for title, items in (("Problems (fix these)", self.problems), ("Warnings", self.warnings)):
            if items:
                lines += ["", f"{title}:"] + [f"  - {m}" for m in items]
        return "\n".join(lines)


def _find(root: Path, candidates: list[str]) -> Path | None:
    for rel in candidates:
        if (root / rel).exists():
            return root / rel
    return None


def _load_checked(ann: Path, img_dir: Path, schema: KeypointSchema, rep: CheckReport, role: str, gt_mat=None,
                  quiet_if_empty: bool = False):
    """Load ``ann`` as training would (an MPII JSON converted in memory first) -> (COCO dict or None,
    TopDownDataset or None); what is wrong goes into ``rep``. ``quiet_if_empty``: the file's own
    problems are reported already, so "no usable person instance" (their consequence) is not."""
    from .topdown import TopDownDataset

    with tempfile.TemporaryDirectory(prefix="lofr_check_") as tmp:
        src = ann
        try:
            if schema.name == "mpii":
                from .mpii import is_coco_file, load_mpii_json, mpii_to_coco

                if not is_coco_file(ann):
                    names = sorted({a["image"] for a in load_mpii_json(ann)})
                    present = set(os.listdir(img_dir)) if img_dir.is_dir() else set()
                    absent = [n for n in names if n not in present]
                    if absent:
                        rep.problems.append(f"{role}: {len(absent)} of {len(names)} images of {ann.name} are not in "
                                            f"{img_dir} (e.g. {absent[0]}): unpack the MPII images there")
                    data, conv = mpii_to_coco(ann, None if absent else img_dir, gt_mat)
                    if conv["json_mat_disagreements"]:
                        rep.warnings.append(f"{role}: {conv['json_mat_disagreements']} joints differ between "
                                            f"{ann.name} and {Path(gt_mat).name}: are they the same split?")
                    src = Path(tmp) / ann.name
                    src.write_text(json.dumps(data))
            ds = TopDownDataset(src, img_dir, schema=schema, input_size=(256, 192), on_bad="skip", fill="edge")
        except DataError as e:
            empty = "no usable person instance" in str(e)
            if not (empty and quiet_if_empty):
                rep.problems.append(f"{role}: {str(e).replace(str(src), str(ann))}")
            return None, None
    ds.ann_file = ann
    ds.skipped = [m.replace(str(src), str(ann)) for m in ds.skipped]
    return ds.coco.dataset, ds


# ------------------------------------------------------------------------------ annotation files
_EXAMPLES = 3  # ids quoted per kind of problem
# TopDownDataset's reasons to skip an instance that validate_annotation_file reports itself
_FILE_LEVEL_REASONS = ("bad_keypoints_length", "unknown_image_id", "missing_file_name", "bad_bbox")


def _where(entry: dict, key: str, index: int) -> str:
    """``annotation id 7 (image id 3)`` / ``image id 3`` / ``annotations[12]`` (no usable id)."""
    noun = {"annotations": "annotation", "images": "image", "categories": "category"}[key]
    ident = entry.get("id") if isinstance(entry, dict) else None
    if ident is None or isinstance(ident, (dict, list)):
        return f"{key}[{index}]"
    extra = f" (image id {entry['image_id']})" if key == "annotations" and "image_id" in entry else ""
    return f"{noun} id {ident}{extra}"


class _Findings:
    """Problems of one file, grouped by kind: one line per kind, with its count and the first ids."""

    def __init__(self, path: Path, totals: dict[str, int]):
        self.path, self.totals, self.kinds = path, totals, {}

    def add(self, key: str, kind: str, where: str) -> None:
        """``key``: "images" / "annotations" / "categories"; ``kind``: what is wrong with them."""
        self.kinds.setdefault((key, kind), []).append(where)

    def lines(self) -> list[str]:
        out = []
        for (key, kind), wheres in self.kinds.items():
            ex = "; ".join(wheres[:_EXAMPLES]) + ("; ..." if len(wheres) > _EXAMPLES else "")
            out.append(f"{self.path}: {len(wheres)} of {self.totals[key]} {key} {kind} (e.g. {ex})")
        return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_annotation_file(path, schema: str | KeypointSchema, image_info: bool = False):
    """Open one annotation file and check what training and evaluation rely on -> (the parsed JSON
    or None when nothing in it can be used, [problems]); each problem names the file and the ids.

    COCO keypoint files (``image_info=True``: an image-info file, ``images`` only): valid JSON; an
    object with ``images``, ``annotations`` and ``categories`` lists; every image with ``id`` and
    ``file_name``, every annotation with ``id``, ``image_id``, ``category_id``, ``keypoints`` and
    ``bbox`` ([x, y, w, h]); no id used twice; no ``image_id`` / ``category_id`` that refers to nothing; 3 x C
    keypoint values per annotation and C keypoint names per category (C = the schema's count).
    MPII's JSON conversion (a list) is checked by ``lofr.data.mpii.load_mpii_json``."""
    schema = get_schema(schema)
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        return None, [f"{path}: malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg} "
                      f"-- a truncated or partial download? Download it again"]
    except UnicodeDecodeError as e:
        return None, [f"{path}: not a UTF-8 text file ({e})"]
    except OSError as e:
        return None, [f"{path}: cannot be read ({type(e).__name__}: {e})"]
    if schema.name == "mpii" and isinstance(data, list) and not image_info:
        from .mpii import load_mpii_json

        try:
            load_mpii_json(path)
        except DataError as e:
            return None, [str(e)]
        return data, []
    what = "image-info" if image_info else "keypoint annotation"
    needed = ("images",) if image_info else ("images", "annotations", "categories")
    if not isinstance(data, dict):
        return None, [f"{path}: not a COCO {what} file: the top level is a JSON {type(data).__name__}, not an "
                      f"object with {list(needed)}"]
    missing = [k for k in needed if not isinstance(data.get(k), list)]
    if missing:
        return None, [f"{path}: not a COCO {what} file: no {' / '.join(repr(k) for k in missing)} list"]
    found = _Findings(path, {k: len(data.get(k) or []) for k in ("images", "annotations", "categories")})

    def entries(key: str, required: tuple[str, ...]) -> dict:
        """Check the entries of ``data[key]`` -> {id: entry} of those with a usable id."""
        by_id: dict = {}
        for i, entry in enumerate(data[key]):
            where = _where(entry, key, i)
            if not isinstance(entry, dict):
                found.add(key, "are not JSON objects", where)
                continue
            absent = [k for k in required if k not in entry]
            if absent:
                found.add(key, f"have no {' / '.join(repr(k) for k in absent)}", where)
            ident = entry.get("id")
            if ident is None or isinstance(ident, (dict, list)):
                continue
            if ident in by_id:
                found.add(key, "reuse an id that another entry has", where)
            by_id[ident] = entry
        return by_id

    entries("images", ("id", "file_name"))
    if image_info:
        return data, found.lines()
    image_ids = {im["id"] for im in data["images"] if isinstance(im, dict) and "id" in im}
    cats = entries("categories", ("id", "name"))
    c = schema.num_keypoints
    for ident, cat in cats.items():
        names = cat.get("keypoints")
        if isinstance(names, list) and len(names) != c:
            found.add("categories", f"do not list {c} keypoint names (the first lists {len(names)}): is "
                      f"{path.name} a {schema.name} file? (--schema)", f"category id {ident}")
    anns = data["annotations"]
    entries("annotations", ("id", "image_id", "category_id", "keypoints", "bbox"))
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            continue
        where = _where(a, "annotations", i)
        if "image_id" in a and a["image_id"] not in image_ids:
            found.add("annotations", "refer to an image_id that is not in 'images'", where)
        if "category_id" in a and cats and a["category_id"] not in cats:
            found.add("annotations", "refer to a category_id that is not in 'categories'", where)
        box = a.get("bbox")
        if "bbox" in a and not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            found.add("annotations", "have a 'bbox' that is not [x, y, w, h]", where)
        kps = a.get("keypoints")
        if "keypoints" in a and not (isinstance(kps, list) and len(kps) == 3 * c):
            n = f"{len(kps)} values" if isinstance(kps, list) else f"a {type(kps).__name__}"
            found.add("annotations", f"do not have {c} keypoints (x, y, v: {3 * c} values; the first has {n}): is "
                      f"{path.name} a {schema.name} file? (--schema)", where)
    return data, found.lines()


def check_dataset(root, schema: str, out_png=None, draw: bool = True) -> CheckReport:
    """Check a dataset download (module docstring). ``out_png``: where to draw the sample (default
    ``lofr.paths.data_dir()/checks/<schema>_sample.png``); ``draw=False`` skips it."""
    schema_obj = get_schema(schema)
    root = Path(root).expanduser()
    rep = CheckReport(str(root), schema_obj.name)
    if not root.is_dir():
        rep.problems.append(f"{root} is not a folder: pass the dataset root (the folder that holds annotations/ ...)")
        return rep
    found = {}
    for role, cands, required, _, where in LAYOUTS[schema_obj.name]:
        p = _find(root, cands)
        found[role] = p
        rep.files[role] = str(p) if p else None
        if p is None:
            (rep.problems if required else rep.warnings).append(
                f"{role}: none of {cands} under {root}: get {where}")
    if found.get("train_ann") is None and found.get("val_ann") is None:
        for other, layout in LAYOUTS.items():
            if other != schema_obj.name and any(_find(root, x[1]) for x in layout if x[0].endswith("_ann")):
                rep.problems.append(f"{root} looks like a {other} dataset: did you mean --schema {other}?")
    has_val_img = any(x[0] == "val_img" for x in LAYOUTS[schema_obj.name])  # MPII / CrowdPose: one folder
    img = {"train_ann": found.get("train_img"), "val_ann": found.get("val_img" if has_val_img else "train_img")}
    for role in ("test_info",):  # opened and checked, never loaded as a dataset
        if found.get(role) is not None:
            rep.problems += [f"{role}: {m}" for m in validate_annotation_file(found[role], schema_obj, True)[1]]
    datasets = {}
    for role in ("train_ann", "val_ann"):
        ann, img_dir = found.get(role), img.get(role)
        if ann is None:
            continue
        parsed, file_problems = validate_annotation_file(ann, schema_obj)  # with or without the images
        rep.problems += [f"{role}: {m}" for m in file_problems]
        if parsed is None or img_dir is None:
            continue
        gt_mat = found.get("gt_mat") if role == "val_ann" else None
        data, ds = _load_checked(ann, img_dir, schema_obj, rep, role, gt_mat, quiet_if_empty=bool(file_problems))
        if data is None:
            continue
        n_anns = len(data["annotations"])
        c = {"images": len(data.get("images", [])), "annotations": n_anns}
        if ds is not None:
            r = ds.report
            c.update(usable=r["kept"], crowd=r["excluded_iscrowd"], no_keypoints=r["excluded_no_keypoints"],
                     skipped_bad=r["skipped_bad"])
            # what validate_annotation_file said already is not said twice
            reasons = {k: v for k, v in r["skipped_bad_reasons"].items() if k not in _FILE_LEVEL_REASONS}
            if reasons:
                example = next(m for m, k in zip(ds.skipped, ds.skipped_reasons) if k in reasons)
                n_bad = sum(reasons.values())
                msg = f"{role}: {n_bad} person annotations cannot be used ({reasons}), e.g. {example}"
                if "missing_image_file" in reasons:
                    msg += f" -- images missing from {img_dir}: unzip the image archive there"
                else:
                    msg += " -- training stops at the first of these unless you fix them or set data.on_bad=skip"
                rep.problems.append(msg)
            datasets[role] = ds
        if schema_obj.name == "crowdpose" and role == "val_ann":
            no_ci = [im["id"] for im in data.get("images", []) if not isinstance(im.get("crowdIndex"), (int, float))]
            if no_ci:
                rep.problems.append(f"{role}: {len(no_ci)} images have no 'crowdIndex' (e.g. image id {no_ci[0]}): "
                                    f"AP easy / medium / hard need it; use the official crowdpose_test.json")
        if schema_obj.name == "mpii" and role == "val_ann" and found.get("gt_mat") is not None:
            c["head_boxes"] = sum(1 for a in data["annotations"] if "head_box" in a)
        official = next(x[3] for x in LAYOUTS[schema_obj.name] if x[0] == role)
        for k, v in (official or {}).items():
            if k in c and c[k] != v:
                rep.warnings.append(f"{role}: {c[k]} {k} where the official release has {v}: a partial download "
                                    f"or a different version? (fine if you meant to use a subset)")
        rep.counts[role] = c
    if found.get("det_file") is not None:  # its image ids are checked against val_ann's when that loaded
        from .detections import load_detections

        known = datasets["val_ann"].coco.imgs.keys() if "val_ann" in datasets else None
        try:
            _, det = load_detections(found["det_file"], known)
            rep.counts["det_file"] = {"detections": det["entries"], "persons": det["kept"]}
        except DataError as e:
            rep.problems.append(f"det_file: {e}")
    if draw and datasets:
        ds = datasets.get("val_ann") or datasets.get("train_ann")
        from lofr.paths import data_dir

        out = Path(out_png) if out_png else data_dir() / "checks" / f"{schema_obj.name}_sample.png"
        try:
            rep.sample_png = str(draw_sample(ds, out))
        except DataError as e:
            rep.problems.append(f"sample drawing: {e}")
    return rep


_COLOURS = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
            (70, 240, 240), (240, 50, 230)]


def draw_sample(dataset, out, index: int = 0) -> Path:
    """Draw the image of ``dataset.records[index]`` with every usable person of that image: box,
    skeleton (``schema.edges``) and labelled keypoints (left joints filled, right ones hollow);
    MPII head boxes in white. Also checks that the image size matches the annotation file."""
    from .topdown import load_rgb

    rec = dataset.records[index]
    rgb = load_rgb(rec.file, rec.image_id)
    entry = dataset.coco.imgs[rec.image_id]
    if "width" in entry and rgb.shape[:2] != (entry["height"], entry["width"]):
        raise DataError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but the annotation file says "
                        f"{entry['width']}x{entry['height']}", file=rec.file, image_id=rec.image_id)
    im = Image.fromarray(rgb)
    d = ImageDraw.Draw(im)
    schema = dataset.schema
    r = max(2, round(max(im.size) / 250))
    for k, other in enumerate(o for o in dataset.records if o.image_id == rec.image_id):
        col = _COLOURS[k % len(_COLOURS)]
        x, y, w, h = other.bbox.tolist()
        d.rectangle([x, y, x + w, y + h], outline=col, width=max(1, r // 2))
        kp = other.keypoints
        for a, b in schema.edges:
            if kp[a, 2] > 0 and kp[b, 2] > 0:
                d.line([tuple(kp[a, :2]), tuple(kp[b, :2])], fill=col, width=r)
        for j, (px, py, v) in enumerate(kp):
            if v > 0:
                left = "left" in schema.keypoints[j]
                d.ellipse([px - r, py - r, px + r, py + r], fill=col if left else None, outline=col,
                          width=max(1, r // 2))
        if "head_box" in other.ann:
            d.rectangle(other.ann["head_box"], outline=(255, 255, 255), width=1)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    im.save(out)
    return out


# ----------------------------------------------------------------------------------------- CLI
def add_data_check_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of ``lofr data check`` (for ``lofr/cli.py``)."""
    p.add_argument("root", help="dataset root folder (see docs/datasets.md for the expected layout)")
    p.add_argument("--schema", required=True, choices=["coco", "mpii", "crowdpose"], help="which dataset it is")
    p.add_argument("--out", default=None, help="PNG to draw a sample into (default: data/checks/<schema>_sample.png)")
    p.add_argument("--no-draw", action="store_true", help="do not draw a sample")
    return p


def cmd_data_check(args: argparse.Namespace) -> int:
    """``lofr data check``: print the report; exit status 0 when OK, 1 when there are problems."""
    logging.getLogger("lofr.data").setLevel(logging.ERROR)  # the report says it all
    rep = check_dataset(args.root, args.schema, out_png=args.out, draw=not args.no_draw)
    print(rep.format())
    return 0 if rep.ok else 1
