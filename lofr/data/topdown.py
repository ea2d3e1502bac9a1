"""Top-down person crops from any COCO-format keypoint file (COCO, SynthPose, CrowdPose-style).

One sample = one annotated person: its box becomes a crop (padding 1.25 at the input's aspect ratio,
``box_to_center_scale``), the crop is warped to ``input_size`` (H, W), and the sample carries the
*image-level category labels* LOFR learns from (paper Sec. 3.2 / 3.5: "this crop contains a left
wrist") next to the locations (keypoints, heatmaps) that only the evaluation and the semi-weak
setting (Sec. 4.3.2) use.

Label rule (``labels=``): ``"crop"`` (default, as mmpose's target weights and, we assume, the paper's
pipeline): ``labels[c] = 1`` iff keypoint c is annotated (v > 0) AND lies inside the crop after
augmentation, i.e. 0 <= x < W and 0 <= y < H in input pixels. Note what that costs a location-free
claim: deciding "inside" needs the keypoint's coordinates, so augmentation that cuts joints out of the
crop (scale, rotation, and half-body, which picks its crop FROM the coordinates) turns the labels into
a weak location signal (on SynthPose at 64x48 with the synth-cpu augmentation: 10 % of the annotated
joints of a training crop, in 28 % of the crops, are labelled absent this way). ``"annotation"``
is the strict reading: ``labels[c] = 1`` iff c is annotated, whatever the augmentation did; half-body
augmentation is then refused (it needs coordinates). Evaluation crops are not augmented, so both rules
give the same validation labels.

Filling (``fill=``) what the crop shows outside the image, and why it matters for LOFR: a model
that only gets "is there a left ankle?" can learn the shortcut "black padding at the bottom => no
ankle" instead of looking at the person. ``"zeros"`` pads black, ``"edge"`` repeats the border
pixels, ``"leakfree"`` (training default) is ``"edge"`` plus, in ``aug.background_prob`` of the
training samples, everything outside the person box replaced by a random crop of another image of
the dataset. ``lofr.data.probe`` measures how much each choice gives away.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from torch.utils.data import Dataset, default_collate

from .errors import DataError
from .schemas import KeypointSchema, get_schema
from .transforms import (
    affine_points, box_to_center_scale, crop_affine, crop_sampling_points, gaussian_heatmaps,
    half_body_center_scale, normalize_image, warp_image,
)

__all__ = ["AugConfig", "CropParams", "TopDownDataset", "load_rgb", "mean_pose_prior", "location_prior", "crop_poses", "collate", "FILLS"]

log = logging.getLogger("lofr.data")

FILLS = ("zeros", "edge", "leakfree")
LABEL_RULES = ("crop", "annotation")
collate = default_collate  # every field of a sample is a tensor or a number: the default suffices


@dataclass
class AugConfig:
    """Training augmentation (paper Sec. 4.2: random flip, random resize in [0.65, 1.35], no cutout;
    rotation and half-body as in HRNet / mmpose).

    Choices: the scale factor is drawn uniformly in ``scale_range`` and the rotation uniformly in
    [-rot_factor, rot_factor] with probability ``rot_prob`` (HRNet draws both from clipped normals);
    ``background_prob`` only matters for ``fill="leakfree"``.
    """

    flip_prob: float = 0.5
    scale_range: tuple[float, float] = (0.65, 1.35)
    rot_factor: float = 40.0
    rot_prob: float = 0.6
    half_body_prob: float = 0.3
    half_body_min_joints: int = 8  # labelled joints an instance needs before half-body is tried
    half_body_padding: float = 1.5
    background_prob: float = 0.5


@dataclass
class CropParams:
    """Everything random about one sample; ``TopDownDataset.get(i, params)`` is deterministic.

    ``background``: for the leak-free fill, (record index of the background image, region size as
    a fraction of the largest that fits, x position in [0, 1], y position in [0, 1]); None = no
    background replacement.
    """

    center: np.ndarray
    scale: np.ndarray
    rotation: float = 0.0
    flip: bool = False
    background: tuple[int, float, float, float] | None = None


@dataclass
class _Record:
    index: int
    ann_id: int
    image_id: int
    file: Path
    bbox: np.ndarray  # (4,) x, y, w, h (clipped to the image)
    keypoints: np.ndarray  # (C, 3) x, y, v
    area: float
    center: np.ndarray  # (2,)
    scale: np.ndarray  # (2,)
    has_location: float = 1.0
    ann: dict = field(default_factory=dict, repr=False)


class _Bad(Exception):
    def __init__(self, reason: str, problem: str):
        super().__init__(problem)
        self.reason, self.problem = reason, problem


# ----------------------------------------------------------------------------------------- images
def load_rgb(path, image_id=None) -> np.ndarray:
    """Read an image as 8-bit RGB (h, w, 3) uint8.

    Grayscale, palette, RGBA (alpha dropped, not composited), CMYK and 16-bit / 32-bit integer
    images are converted; 16-bit values are scaled by 255/65535. EXIF orientation is NOT applied
    (COCO annotations refer to the stored pixel grid). Unreadable or truncated files raise DataError.
    """
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                a = np.asarray(im, dtype=np.float64)
                if im.mode.startswith("I;16") or a.max(initial=0) > 255:
                    a = a * (255.0 / 65535.0)
                a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
                return np.repeat(a[:, :, None], 3, axis=2)
            if im.mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except FileNotFoundError as e:
        raise DataError("image file not found", file=path, image_id=image_id) from e
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"unreadable or truncated image ({type(e).__name__}: {e})",
                        file=path, image_id=image_id) from e


def _segmentation_mask(ann: dict, bbox, h: int, w: int) -> np.ndarray:
    """(h, w) uint8 person mask from the annotation's polygons / RLE, or its box when it has none."""
    seg = ann.get("segmentation")
    if isinstance(seg, list) and len(seg) > 0:
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and "counts" in seg:
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    else:
        m = np.zeros((h, w), dtype=np.uint8)
        x, y, bw, bh = bbox
        m[int(np.floor(y)):int(np.ceil(y + bh)), int(np.floor(x)):int(np.ceil(x + bw))] = 1
        return m
    with warnings.catch_warnings():  # pycocotools' decode trips a numpy-2 DeprecationWarning
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


# ---------------------------------------------------------------------------------------- dataset
class TopDownDataset(Dataset):
    """Person crops + image-level labels from a COCO-format keypoint annotation file.

    Args:
        ann_file: COCO-format JSON (``images``, ``annotations`` with ``keypoints``/``bbox``).
        img_dir: folder holding the images' ``file_name``.
        schema: keypoint schema or its name ("coco", "mpii", "crowdpose").
        input_size: (H, W) of the network input.
        train: draw augmentation (``aug``) per sample; eval crops are deterministic.
        heatmap_stride, sigma: Gaussian heatmap targets; sigma None = 2 at a 48-wide heatmap,
            scaled with the heatmap width.
        fill: "zeros" | "edge" | "leakfree" (see the module docstring).
        labels: "crop" (annotated and inside the augmented crop) | "annotation" (annotated; strictly
            location-free, no half-body augmentation); see the module docstring.
        on_bad: "raise" (default) or "skip" (bad instances counted in ``report`` and skipped;
            unreadable images at load time replaced by the next sample).
        labelled_fraction: None = every instance has locations (``has_location`` = 1); f in
            [0, 1] = a fixed subset of round(f * N) instances drawn with ``seed`` (paper Sec. 4.3.2).
        with_person_mask: also return ``person_mask`` (1, H, W): True / "segmentation" = the
            annotation's segmentation (its box when it has none), "box" = its box, warped into the
            crop (used by the label-leak probe).

    Instances with iscrowd=1 or no labelled keypoints are excluded (standard top-down protocol),
    boxes reaching beyond the image are clipped to it (as mmpose does); both are counted in
    ``report`` and logged once. Any other problem raises ``DataError``.
    Note: counts made at load time (``replaced_unreadable``) stay in the DataLoader worker that
    made them.
    """

    def __init__(self, ann_file, img_dir, schema: str | KeypointSchema = "coco", input_size=(256, 192),
                 train: bool = False, aug: AugConfig | None = None, heatmap_stride: int = 4,
                 sigma: float | None = None, fill: str = "leakfree", on_bad: str = "raise",
                 labelled_fraction: float | None = None, seed: int = 0, with_person_mask: bool | str = False,
                 labels: str = "crop"):
        self.ann_file, self.img_dir = Path(ann_file), Path(img_dir)
        try:
            self.schema = get_schema(schema)
        except ValueError as e:
            raise DataError(str(e), file=self.ann_file) from e
        if fill not in FILLS:
            raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
        if labels not in LABEL_RULES:
            raise ValueError(f"labels must be one of {LABEL_RULES}, got {labels!r}")
        self.label_rule = labels
        if labels == "annotation" and train and (aug or AugConfig()).half_body_prob > 0:
            raise ValueError("labels='annotation' (strictly location-free) refuses half-body augmentation: it picks "
                             "the crop from the keypoint coordinates; set aug.half_body_prob=0")
        if on_bad not in ("raise", "skip"):
            raise ValueError(f"on_bad must be 'raise' or 'skip', got {on_bad!r}")
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if self.input_size[0] % heatmap_stride or self.input_size[1] % heatmap_stride:
            raise ValueError(f"input_size {self.input_size} is not divisible by heatmap_stride {heatmap_stride}")
        self.train, self.aug, self.fill, self.on_bad = train, aug or AugConfig(), fill, on_bad
        self.heatmap_stride, self.sigma, self.seed = heatmap_stride, sigma, seed
        if with_person_mask not in (False, True, "segmentation", "box"):
            raise ValueError(f"with_person_mask must be a bool, 'segmentation' or 'box', got {with_person_mask!r}")
        self.with_person_mask = with_person_mask
        self.coco = self._load_coco()
        self.report: dict = {}
        self.skipped: list[str] = []  # messages of the instances skipped with on_bad="skip"
        self.skipped_reasons: list[str] = []  # and their reasons (the keys of report["skipped_bad_reasons"])
        self.records = self._build_records()
        self._assign_locations(labelled_fraction)
        self._bad_files: set[str] = set()

    # ---- construction -------------------------------------------------------------------------
    def _load_coco(self) -> COCO:
        if not self.ann_file.is_file():
            raise DataError("annotation file not found", file=self.ann_file)
        try:
            with open(self.ann_file, encoding="utf-8") as f:
                data = json.load(f)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON at line {e.lineno} column {e.colno} (char {e.pos}): {e.msg}",
                            file=self.ann_file) from e
        except UnicodeDecodeError as e:
            raise DataError(f"not a UTF-8 text file ({e})", file=self.ann_file) from e
        if not isinstance(data, dict) or not isinstance(data.get("images"), list) \
                or not isinstance(data.get("annotations"), list):
            raise DataError("not a COCO annotation file: needs 'images' and 'annotations' lists",
                            file=self.ann_file)
        for key in ("images", "annotations"):
            for i, entry in enumerate(data[key]):
                if not isinstance(entry, dict) or "id" not in entry:
                    raise DataError(f"{key}[{i}] has no 'id'", file=self.ann_file)
        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
            coco.createIndex()
        return coco

    def _build_records(self) -> list[_Record]:
        counts = Counter()
        bad = Counter()
        records: list[_Record] = []
        aspect = self.input_size[1] / self.input_size[0]
        try:
            present = set(os.listdir(self.img_dir))
        except FileNotFoundError:
            raise DataError(f"image folder not found: {self.img_dir}", file=self.ann_file) from None
        anns = sorted(self.coco.dataset["annotations"], key=lambda a: a["id"])
        for ann in anns:
            counts["annotations"] += 1
            if ann.get("iscrowd", 0):
                counts["excluded_iscrowd"] += 1
                continue
            try:
                kps, bbox, clipped, img = self._validate(ann, present)
            except _Bad as b:
                err = DataError(b.problem, file=self.ann_file, ann_id=ann["id"], image_id=ann.get("image_id"))
                if self.on_bad == "raise":
                    raise err from None
                bad[b.reason] += 1
                self.skipped.append(str(err))
                self.skipped_reasons.append(b.reason)
                continue
            if kps is None:
                counts["excluded_no_keypoints"] += 1
                continue
            counts["clipped_box"] += clipped
            center, scale = box_to_center_scale(bbox, aspect, padding=1.25)
            records.append(_Record(len(records), int(ann["id"]), int(ann["image_id"]),
                                   self.img_dir / img["file_name"], bbox, kps,
                                   float(ann.get("area", bbox[2] * bbox[3])), center, scale, ann=ann))
        self.report = {
            "annotations": counts["annotations"], "kept": len(records),
            "excluded_iscrowd": counts["excluded_iscrowd"],
            "excluded_no_keypoints": counts["excluded_no_keypoints"],
            "clipped_box": counts["clipped_box"],
            "skipped_bad": sum(bad.values()), "skipped_bad_reasons": dict(bad),
            "replaced_unreadable": 0,
        }
        msg = (f"{self.ann_file.name}: kept {len(records)} of {counts['annotations']} person annotations "
               f"(excluded iscrowd=1: {counts['excluded_iscrowd']}, num_keypoints=0: "
               f"{counts['excluded_no_keypoints']}; boxes clipped to the image: {counts['clipped_box']}")
        if bad:
            log.warning(msg + f"; SKIPPED as bad: {dict(bad)}, e.g. {self.skipped[0]})")
        else:
            log.info(msg + ")")
        if not records:
            raise DataError("no usable person instance", file=self.ann_file)
        return records

    def _validate(self, ann: dict, present: set[str]):
        """-> (keypoints (C, 3) or None when nothing is labelled, clipped bbox, was_clipped, image)."""
        c = self.schema.num_keypoints
        img = self.coco.imgs.get(ann.get("image_id"))
        if img is None:
            raise _Bad("unknown_image_id", f"image_id {ann.get('image_id')!r} is not in 'images'")
        if "file_name" not in img:
            raise _Bad("missing_file_name", "its image entry has no 'file_name'")
        raw = ann.get("keypoints")
        if not isinstance(raw, list) or len(raw) != 3 * c:
            n = len(raw) if isinstance(raw, list) else raw
            raise _Bad("bad_keypoints_length", f"'keypoints' has {n} values, schema {self.schema.name!r} "
                       f"needs {3 * c} (x, y, v for {c} keypoints)")
        kps = np.asarray(raw, dtype=np.float64).reshape(c, 3)
        if not np.all(np.isfinite(kps)):
            raise _Bad("non_finite_keypoints", "'keypoints' contains NaN or inf")
        v = kps[:, 2]
        if not np.all(np.isin(v, (0, 1, 2))):
            raise _Bad("bad_visibility", f"visibility flags must be 0, 1 or 2, got {sorted(set(v.tolist()))}")
        n_lab = int((v > 0).sum())
        n_claimed = ann.get("num_keypoints", n_lab)
        if n_lab == 0 and n_claimed > 0:
            raise _Bad("all_unlabelled", f"num_keypoints is {n_claimed} but every keypoint has v=0")
        if n_claimed != n_lab:
            raise _Bad("num_keypoints_mismatch", f"num_keypoints is {n_claimed} but {n_lab} keypoints have v>0")
        box = ann.get("bbox")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise _Bad("bad_bbox", f"'bbox' must be [x, y, w, h], got {box!r}")
        x, y, w, h = (float(t) for t in box)
        if not (w > 0 and h > 0):
            raise _Bad("zero_area_box", f"bbox {box} has zero area")
        clipped = 0
        if "width" in img and "height" in img:
            iw, ih = float(img["width"]), float(img["height"])
            x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, iw), min(y + h, ih)
            if x1 <= x0 or y1 <= y0:
                raise _Bad("box_outside_image", f"bbox {box} lies outside the {iw:g}x{ih:g} image")
            clipped = int((x0, y0, x1, y1) != (x, y, x + w, y + h))
            x, y, w, h = x0, y0, x1 - x0, y1 - y0
        if n_lab == 0:
            return None, None, 0, img
        name = img["file_name"]
        if name not in present and not ("/" in name and (self.img_dir / name).is_file()):
            raise _Bad("missing_image_file", f"image file not found: {self.img_dir / img['file_name']}")
        return kps, np.array([x, y, w, h], dtype=np.float32), clipped, img

    def _assign_locations(self, fraction: float | None) -> None:
        if fraction is None:
            return
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"labelled_fraction must be in [0, 1], got {fraction}")
        n = len(self.records)
        chosen = np.random.default_rng(self.seed).choice(n, size=int(round(fraction * n)), replace=False)
        for r in self.records:
            r.has_location = 0.0
        for i in chosen:
            self.records[i].has_location = 1.0

    # ---- sampling -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def crop_params(self, index: int, rng: np.random.Generator | None = None) -> CropParams:
        """The crop of sample ``index``: the padded person box at eval, augmented in training."""
        rec = self.records[index]
        if not self.train:
            return CropParams(rec.center.copy(), rec.scale.copy())
        rng = rng if rng is not None else np.random.default_rng()
        a, aspect = self.aug, self.input_size[1] / self.input_size[0]
        center, scale = rec.center.copy(), rec.scale.copy()
        labelled = rec.keypoints[:, 2] > 0
        if labelled.sum() >= a.half_body_min_joints and rng.random() < a.half_body_prob:
            hb = half_body_center_scale(rec.keypoints[:, :2], labelled, self.schema.upper_body, aspect, rng,
                                        padding=a.half_body_padding)
            if hb is not None:
                center, scale = hb
        scale = scale * rng.uniform(*a.scale_range)
        rotation = float(rng.uniform(-a.rot_factor, a.rot_factor)) if rng.random() < a.rot_prob else 0.0
        flip = bool(rng.random() < a.flip_prob)
        background = None
        if self.fill == "leakfree" and len(self.records) > 1 and rng.random() < a.background_prob:
            other = int(rng.integers(len(self.records) - 1))
            other += other >= index  # any sample but this one
            background = (other, float(rng.uniform(0.3, 1.0)), float(rng.random()), float(rng.random()))
        return CropParams(center.astype(np.float32), scale.astype(np.float32), rotation, flip, background)

    def __getitem__(self, index: int) -> dict:
        rng = None
        if self.train:  # augmentation draws from torch's RNG, which DataLoader seeds per worker
            rng = np.random.default_rng(torch.randint(0, 2**31 - 1, (2,)).tolist())
        for _ in range(min(len(self), 20)):
            try:
                return self.get(index, rng=rng)
            except DataError as e:
                if self.on_bad != "skip" or not e.problem.startswith("unreadable"):
                    raise
                self._bad_files.add(str(e.file))
                self.report["replaced_unreadable"] += 1
                log.warning("%s; using sample %d instead", e, (index + 1) % len(self))
                index = (index + 1) % len(self)
        raise DataError("too many unreadable images in a row", file=self.img_dir)

    def _image(self, rec: _Record) -> torch.Tensor:
        """(3, h, w) float RGB in [0, 1]; checks the size against the annotation file."""
        if str(rec.file) in self._bad_files:
            raise DataError("unreadable or truncated image (seen before)", file=rec.file, image_id=rec.image_id)
        rgb = load_rgb(rec.file, rec.image_id)
        entry = self.coco.imgs[rec.image_id]
        if "width" in entry and "height" in entry and rgb.shape[:2] != (entry["height"], entry["width"]):
            raise DataError(f"image is {rgb.shape[1]}x{rgb.shape[0]} but the annotation file says "
                            f"{entry['width']}x{entry['height']}", file=rec.file, image_id=rec.image_id)
        return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)

    def _background(self, spec, out_hw) -> torch.Tensor:
        """A crop of another image, at the input's aspect ratio and entirely inside that image."""
        other, frac, fx, fy = spec
        img = self._image(self.records[other])
        h, w = img.shape[-2:]
        out_h, out_w = out_hw
        bh = frac * min(h, w * out_h / out_w)  # region height; its width bh * out_w / out_h fits in w
        bw = bh * out_w / out_h
        center = (bw / 2 + fx * (w - bw), bh / 2 + fy * (h - bh))
        return warp_image(img, crop_affine(center, (bw, bh), 0.0, out_hw), out_hw, fill="edge")

    def get(self, index: int, params: CropParams | None = None, rng: np.random.Generator | None = None) -> dict:
        """Sample ``index`` under crop ``params`` (drawn with ``rng`` when not given):

        image (3, H, W) ImageNet-normalised; labels (C,) image-level labels (``labels`` rule: v > 0
        and inside the crop, or v > 0); keypoints (C, 2) input pixels (0 where v = 0; labelled but
        outside the crop keeps its coordinate); visible = target_weight = v > 0 and inside the crop
        (what the heatmap loss can use); visibility (C,) raw v (after the flip swap);
        heatmaps (C, H/stride, W/stride); has_location (); meta: center, scale, rotation, flipped,
        image_id, ann_id, bbox, area, index. A crop point p maps back to the image by
        ``crop_to_image(p', center, scale, rotation, input_size)`` with p' = (W - x, y) if flipped.
        """
        rec = self.records[index]
        p = params if params is not None else self.crop_params(index, rng)
        out_hw = self.input_size
        mat = crop_affine(p.center, p.scale, p.rotation, out_hw, flip=p.flip)  # image -> crop

        image = self._image(rec)  # (3, h, w)
        crop = warp_image(image, mat, out_hw, fill="zeros" if self.fill == "zeros" else "edge")  # (3, H, W)
        if p.background is not None:
            pts = crop_sampling_points(mat, out_hw)  # (H, W, 2) image coords of the crop pixels
            x, y, w, h = rec.bbox.tolist()
            inside = (pts[..., 0] >= x) & (pts[..., 0] < x + w) & (pts[..., 1] >= y) & (pts[..., 1] < y + h)
            crop = torch.where(inside[None], crop, self._background(p.background, out_hw))

        # keypoints into the crop, then mirrored joints swap names
        kp = affine_points(rec.keypoints[:, :2], mat)  # (C, 2)
        v = rec.keypoints[:, 2].copy()
        if p.flip:
            kp, v = kp[self.schema.flip_index], v[self.schema.flip_index]
        in_h, in_w = out_hw
        inside_crop = (kp[:, 0] >= 0) & (kp[:, 0] < in_w) & (kp[:, 1] >= 0) & (kp[:, 1] < in_h)
        located = ((v > 0) & inside_crop).astype(np.float32)  # (C,) annotated and in the crop
        labels = located if self.label_rule == "crop" else (v > 0).astype(np.float32)  # image-level labels
        kp = np.where((v > 0)[:, None], kp, 0.0).astype(np.float32)
        heatmaps = gaussian_heatmaps(kp, located, out_hw, self.heatmap_stride, self.sigma)

        sample = {
            "image": normalize_image(crop),
            "labels": torch.from_numpy(labels),
            "keypoints": torch.from_numpy(kp),
            "visible": torch.from_numpy(located.copy()),
            "visibility": torch.from_numpy(v.astype(np.float32)),
            "heatmaps": torch.from_numpy(heatmaps),
            "target_weight": torch.from_numpy(located.copy()),
            "has_location": torch.tensor(rec.has_location, dtype=torch.float32),
            "meta": {
                "center": torch.as_tensor(p.center, dtype=torch.float32),
                "scale": torch.as_tensor(p.scale, dtype=torch.float32),
                "rotation": float(p.rotation), "flipped": int(p.flip),
                "image_id": rec.image_id, "ann_id": rec.ann_id,
                "bbox": torch.from_numpy(rec.bbox.copy()), "area": rec.area, "index": index,
            },
        }
        if self.with_person_mask:
            h, w = image.shape[-2:]
            ann = {} if self.with_person_mask == "box" else rec.ann
            m = torch.from_numpy(_segmentation_mask(ann, rec.bbox, h, w)).float()[None]  # (1, h, w)
            sample["person_mask"] = (warp_image(m, mat, out_hw, fill="zeros") > 0).float()  # (1, H, W)
        return sample


def crop_poses(dataset: TopDownDataset) -> np.ndarray:
    """(N, C, 2) every instance's joints in its eval-mode crop (input pixels; no augmentation, no image
    reads), NaN where a joint is unlabelled or outside the crop: the locations a pose prior is fitted on,
    without their images (``lofr.eval.pose_prior``)."""
    in_h, in_w = dataset.input_size
    out = np.full((len(dataset.records), dataset.schema.num_keypoints, 2), np.nan)
    for i, rec in enumerate(dataset.records):
        kp = affine_points(rec.keypoints[:, :2], crop_affine(rec.center, rec.scale, 0.0, dataset.input_size))
        ok = (rec.keypoints[:, 2] > 0) & (kp[:, 0] >= 0) & (kp[:, 0] < in_w) & (kp[:, 1] >= 0) & (kp[:, 1] < in_h)
        out[i, ok] = kp[ok]
    return out


def location_prior(dataset: TopDownDataset) -> tuple[np.ndarray, np.ndarray]:
    """((C, 2) mean, (C, 2) std) of each joint's position (x, y; input pixels) over the instances where it
    is labelled and inside the eval-mode crop (:func:`crop_poses`: no image reads); NaN for a joint seen
    fewer than twice. What ``LOFR.set_location_prior`` (``arch.dec_prior_bias``) is fitted on."""
    poses = crop_poses(dataset)  # (N, C, 2)
    seen = np.isfinite(poses[..., 0]).sum(axis=0)  # (C,)
    mean, std = np.full(poses.shape[1:], np.nan), np.full(poses.shape[1:], np.nan)
    ok = seen >= 2
    mean[ok] = np.nanmean(poses[:, ok], axis=0)
    std[ok] = np.nanstd(poses[:, ok], axis=0, ddof=1)
    return mean, std


def mean_pose_prior(dataset: TopDownDataset) -> np.ndarray:
    """(C, 2) mean position (input pixels) of each joint over the instances where it is labelled
    and inside the eval-mode crop (no augmentation, no image reads). NaN for a joint never seen."""
    poses = crop_poses(dataset)  # (N, C, 2), NaN where unlabelled or outside
    seen = np.isfinite(poses[..., 0]).sum(axis=0)  # (C,)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nansum(poses, axis=0) / seen[:, None]
