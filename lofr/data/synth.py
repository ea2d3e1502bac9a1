"""SynthPose: a small synthetic COCO-keypoints dataset that makes location-free training a real problem.

LOFR learns keypoint locations from image-level labels only ("this crop contains a left wrist, no
left ankle"). That signal is only informative when the labels vary across instances and when each
keypoint has *local* visual evidence that a CAM can latch onto. SynthPose is built around both:

**The person.** An articulated 2.5D figure (:mod:`lofr.data.synth_figure`): torso, neck, head,
upper/lower arms, hands, thighs, shins and feet, with jittered body proportions and joint angles
inside joint limits (standing, walking, reaching, crouching, ...). It is seen from the front, the
back, in profile or anywhere in between, and tilted in the image plane. Left and right can only be
told apart from context, as in photos: in a front view the person's left shoulder is on the
image's right, in a back view on the image's left; in profile the far limbs are hidden behind the
body; from the back the face is hidden by hair.

**Local appearance** (:mod:`lofr.data.synth_paint`). Clothes are textured (stripes, checks, dots,
noise, solid) in random colours; skin comes in several tones. Keypoints sit on parts with their
own look: eyes (white + pupil + brow), nose, mouth, ears, hair at the back of the head; elbow and
knee creases, sleeve ends, cuffs and bracelets, kneecaps below shorts, hands with finger gaps,
shoes with a contrasting top at the ankle, belts at the hips.

**Clutter.** Backgrounds are gradients, faint textures, random shapes (some skin- or
cloth-coloured: colour alone does not find the person) and long straight furniture edges.
Occluders (boxes, balls, poles) stand in front of the person; unannotated distractor people (tiny
ones, and big ones mostly outside the frame so that only a limb shows) play COCO's background
people; sometimes a second annotated person shares the image.

**Truncation and labels, COCO style.** About 40% of main persons are complete (the paper notes
that fewer than half of COCO instances are); the rest are cut by the bottom, top, left or right
border at random depths. Keypoints outside the image get v=0 (x=y=0). Inside the image, whether
a keypoint is visible is read from the rendered part-id map (:class:`~lofr.data.synth_paint.Canvas`):
visible (v=2) when its own body parts are on top there; hidden behind the person's own body
(profile, crossed arms) v=1 most of the time; behind an occluder or another person v=1 or
unlabelled v=0 (annotators skip heavily occluded joints); face keypoints turned away from the
camera are mostly unlabelled, as COCO annotators do for back views.

**Format.** Exactly MS-COCO: ``annotations/person_keypoints_{train,val}2017.json`` and
``{train,val}2017/<id>.jpg``; ``bbox`` is the tight box of the visible silhouette, ``segmentation``
its RLE, ``area`` its pixel count. Keypoint coordinates follow lofr's convention (pixel (i, j)
covers [j, j+1) x [i, i+1)); PIL draws a shape at coordinate p into pixel round(p), so a drawn
point p is annotated at p + 0.5. Rendering is deterministic per (seed, split, image index), so the
output is identical whatever ``workers`` is.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from pycocotools import mask as mask_utils

from lofr.errors import OutputExistsError, UsageError

from .schemas import COCO17
from .synth_figure import Projection, project, sample_figure, sample_view
from .synth_paint import (FACE_MIN, PART, PARTS_PER_PERSON, Canvas, background, occluder, paint_person,
                          sample_look)

__all__ = ["VERSION", "DEFAULT_TRAIN", "DEFAULT_VAL", "DEFAULT_IMAGE_SIZE", "generate", "render_image",
           "presence_table", "format_presence_table", "ensure_synthpose", "stamp_params"]

VERSION = "synthpose-1.0"
DEFAULT_JPEG_QUALITY = 90
DEFAULT_TRAIN = 5000
DEFAULT_VAL = 500
DEFAULT_IMAGE_SIZE = (192, 160)  # (H, W)
SPLITS = {"train": 0, "val": 1}
STAMP = "synthpose.json"
_CHUNK = 25

# For each COCO keypoint: the body parts that own it (its pixels count as "the keypoint is seen").
# The torso / pelvis own the shoulders / hips only when that side of the body faces the camera.
_OWNERS = {
    0: ("head",), 1: ("head",), 2: ("head",), 3: ("head",), 4: ("head",),
    5: ("left_upper_arm",), 6: ("right_upper_arm",),
    7: ("left_upper_arm", "left_forearm"), 8: ("right_upper_arm", "right_forearm"),
    9: ("left_forearm", "left_hand"), 10: ("right_forearm", "right_hand"),
    11: ("left_thigh",), 12: ("right_thigh",),
    13: ("left_thigh", "left_shin"), 14: ("right_thigh", "right_shin"),
    15: ("left_shin", "left_foot"), 16: ("right_shin", "right_foot"),
}
_TRUNK = {5: ("torso", "left"), 6: ("torso", "right"), 11: ("pelvis", "left"), 12: ("pelvis", "right")}
# Annotator behaviour: P(v=1) for a keypoint that is in the image but not visible, by cause.
P_LABEL_SELF, P_LABEL_EXTERNAL, P_LABEL_FACE_AWAY = 0.85, 0.5, 0.15


# ---------------------------------------------------------------------------------------------
# one image


def _extent(fig, yaw, tilt) -> np.ndarray:
    """(x0, y0, x1, y1) of the figure at 1 px per height unit, pelvis at the origin, padded by a
    head radius so that silhouettes (not just joints) fit."""
    xy = project(fig, yaw, tilt, 1.0).xy
    pad = fig.radius["head"]
    return np.array([xy[:, 0].min() - pad, xy[:, 1].min() - pad, xy[:, 0].max() + pad, xy[:, 1].max() + pad])


def _place_main(rng, ext, hw) -> tuple[float, np.ndarray, str]:
    """Scale (px per height) and pelvis position of the main person, and its truncation mode.

    'full' keeps the whole figure inside; 'bottom' / 'top' / 'left' / 'right' put that image border
    through the figure at a random depth (a fraction of its extent); 'corner' does bottom + a side.
    """
    h, w = hw
    x0, y0, x1, y1 = ext
    ew, eh = x1 - x0, y1 - y0
    mode = str(rng.choice(["full", "bottom", "top", "left", "right", "corner"],
                          p=[0.4, 0.25, 0.12, 0.08, 0.08, 0.07]))
    if mode in ("full", "left", "right"):
        px = min(rng.uniform(0.45, 0.95) * h / eh, 0.95 * w / ew)
    else:
        px = min(rng.uniform(0.7, 1.5) * h / eh, 1.6 * w / ew)
    ox = rng.uniform(-x0 * px, max(-x0 * px, w - x1 * px))
    oy = rng.uniform(-y0 * px, max(-y0 * px, h - y1 * px))
    if mode in ("bottom", "corner"):
        f = rng.uniform(max(0.1, 1 - 0.97 * h / (eh * px)), 0.8)  # fraction of the height cut off
        oy = h - (y0 + (1 - f) * eh) * px
    elif mode == "top":
        f = rng.uniform(0.08, 0.55)
        oy = -(y0 + f * eh) * px
    if mode in ("left", "right", "corner"):
        # the border cuts 15-60% of the width but never more than 0.08 height units past the pelvis
        f = rng.uniform(0.15, 0.6)
        left = mode == "left" or (mode == "corner" and rng.random() < 0.5)
        ox = -min(x0 + f * ew, 0.08) * px if left else w - max(x1 - f * ew, -0.08) * px
    return float(px), np.array([ox, oy]), mode


def _keypoints(rng, ids: np.ndarray, pr: Projection, base: int, hw) -> list[float]:
    """COCO [x, y, v] * 17 for the person painted with ids base..base+15, read off the id map."""
    h, w = hw
    rr = max(1, int(round(0.012 * pr.px)))
    own_all = (ids >= base) & (ids < base + PARTS_PER_PERSON)
    out = []
    for j in range(17):
        x, y = pr.xy[j] + 0.5  # PIL coordinate -> lofr continuous pixel coordinate
        if not (0 <= x < w and 0 <= y < h):
            out += [0, 0, 0]
            continue
        xi, yi = int(x), int(y)
        win = ids[max(0, yi - rr):yi + rr + 1, max(0, xi - rr):xi + rr + 1]
        owners = [base + PART[p] for p in _OWNERS[j]]
        if j in _TRUNK and pr.side_facing[_TRUNK[j][1]] > -0.3:
            owners.append(base + PART[_TRUNK[j][0]])
        own = np.isin(win, owners)
        other = (win != 0) & ~own
        n_own, n_other = int(own.sum()), int(other.sum())
        name = COCO17.keypoints[j]
        face_away = name in FACE_MIN and pr.face_facing[name] <= FACE_MIN[name]
        if not face_away and n_own > 0 and n_own >= n_other:
            v = 2
        else:
            if face_away:
                p_label = P_LABEL_FACE_AWAY
            else:
                win_own = own_all[max(0, yi - rr):yi + rr + 1, max(0, xi - rr):xi + rr + 1]
                self_occ = int((win_own & other).sum()) * 2 >= n_other
                p_label = P_LABEL_SELF if self_occ else P_LABEL_EXTERNAL
            v = 1 if rng.random() < p_label else 0
        if v == 0:
            out += [0, 0, 0]
        else:
            out += [min(round(float(x), 2), w - 0.01), min(round(float(y), 2), h - 0.01), v]
    return out


def _person(rng):
    fig = sample_figure(rng)
    yaw, tilt = sample_view(rng)
    return fig, yaw, tilt


def _scene(rng, hw):
    """Sample and paint one scene; returns (image, persons) where persons are dicts with the
    keypoints / mask of each annotated person, or None when the sample is unusable."""
    h, w = hw
    img = background(rng, hw)
    cv = Canvas(img)
    # main person
    fig, yaw, tilt = _person(rng)
    ext = _extent(fig, yaw, tilt)
    px, origin, mode = _place_main(rng, ext, hw)
    people = [dict(fig=fig, pr=project(fig, yaw, tilt, px, origin), slot=0, z=0.0, mode=mode, main=True)]
    # a second annotated person (behind or in front)
    if rng.random() < 0.3:
        fig2, yaw2, tilt2 = _person(rng)
        ext2 = _extent(fig2, yaw2, tilt2)
        px2 = min(px * rng.uniform(0.5, 1.0), 0.95 * h / (ext2[3] - ext2[1]))
        o2 = np.array([rng.uniform(0, w), rng.uniform(0.3, 0.8) * h])
        people.append(dict(fig=fig2, pr=project(fig2, yaw2, tilt2, px2, o2), slot=1,
                           z=-1.0 if rng.random() < 0.7 else 1.0, mode="other", main=False))
    # unannotated distractors: tiny people, or big ones mostly outside the frame
    for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15]))):
        figd, yawd, tiltd = _person(rng)
        extd = _extent(figd, yawd, tiltd)
        if rng.random() < 0.4:  # small background person (always behind)
            pxd = rng.uniform(0.1, 0.22) * h / (extd[3] - extd[1])
            od = np.array([rng.uniform(0, w), rng.uniform(0.1, 0.9) * h])
            z = -2.0
        else:  # big, mostly outside the frame: only a limb or a shoulder enters
            pxd = rng.uniform(0.7, 1.4) * h / (extd[3] - extd[1])
            gap = rng.uniform(0.35, 0.8) * (extd[2] - extd[0]) * pxd
            od = np.array([-gap if rng.random() < 0.5 else w + gap, rng.uniform(0.2, 0.8) * h])
            z = -2.0 if rng.random() < 0.6 else 2.0
        people.append(dict(fig=figd, pr=project(figd, yawd, tiltd, pxd, od), slot=None, z=z,
                           mode="distractor", main=False))
    for p in sorted(people, key=lambda p: p["z"]):
        look = sample_look(rng, p["pr"].px)
        base = None if p["slot"] is None else 1 + PARTS_PER_PERSON * p["slot"]
        paint_person(cv, p["fig"], p["pr"], look, base)
    # occluders in front of annotated people
    annotated = [p for p in people if p["slot"] is not None]
    for _ in range(int(rng.choice(3, p=[0.45, 0.4, 0.15]))):
        target = annotated[0] if rng.random() < 0.8 else annotated[-1]
        j = int(rng.integers(17))
        c = target["pr"].xy[j] + rng.normal(0, 0.05, 2) * target["pr"].px
        occluder(cv, rng, c, rng.uniform(0.12, 0.45) * target["pr"].px)
    ids = np.asarray(cv.ids)
    out = []
    for p in annotated:
        base = 1 + PARTS_PER_PERSON * p["slot"]
        m = (ids >= base) & (ids < base + PARTS_PER_PERSON)
        kps = _keypoints(rng, ids, p["pr"], base, hw)
        nk = sum(1 for v in kps[2::3] if v > 0)
        if nk == 0 or m.sum() < 20:
            return None
        out.append(dict(mask=m, keypoints=kps, num_keypoints=nk, main=p["main"], mode=p["mode"],
                        yaw=p["pr"].yaw, tilt=p["pr"].tilt))
    return cv.img, out


_NOISE: dict = {}


def _noise_tile(hw) -> np.ndarray:
    """A fixed (2H, 2W, 3) unit Gaussian noise tile (same in every process); images take a random
    window of it, which is much cheaper than drawing fresh noise per image."""
    if hw not in _NOISE:
        _NOISE[hw] = np.random.default_rng(12345).standard_normal((2 * hw[0], 2 * hw[1], 3), dtype=np.float32)
    return _NOISE[hw]


def _finish(rng, img: Image.Image) -> Image.Image:
    """Camera effects: exposure / contrast, sensor noise, a little blur."""
    h, w = img.height, img.width
    c, b = rng.uniform(0.75, 1.2), rng.uniform(-25, 25)
    lut = [min(255, max(0, int(round((v - 128) * c + 128 + b)))) for v in range(256)]
    img = img.point(lut * 3)
    oy, ox, sigma = int(rng.integers(h)), int(rng.integers(w)), np.float32(rng.uniform(1, 6))
    a = np.asarray(img, np.float32) + _noise_tile((h, w))[oy:oy + h, ox:ox + w] * sigma
    img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    return img


def render_image(seed: int, split: str, index: int, image_size=DEFAULT_IMAGE_SIZE, camera_effects: bool = True):
    """Render image ``index`` of ``split``: (PIL image, list of annotated persons with 'mask' (H, W)
    bool, 'keypoints' [x, y, v] * 17, 'num_keypoints', 'main', 'mode', 'yaw', 'tilt').
    Depends only on (seed, split, index, image_size). ``camera_effects=False`` skips the final
    exposure / noise / blur (same scene, clean pixels)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
    hw = (int(image_size[0]), int(image_size[1]))
    rng = np.random.default_rng([int(seed), SPLITS[split], int(index)])
    for _ in range(50):
        res = _scene(rng, hw)
        if res is not None:
            img, persons = res
            return (_finish(rng, img) if camera_effects else img), persons
    raise RuntimeError(f"SynthPose: no usable scene for seed={seed} split={split} index={index} in 50 tries")


def _annotation(p: dict, image_id: int) -> dict:
    m = p["mask"]
    ys, xs = np.nonzero(m)
    x0, y0 = int(xs.min()), int(ys.min())
    rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
    return {
        "image_id": image_id, "category_id": 1, "iscrowd": 0,
        "bbox": [float(x0), float(y0), float(xs.max() + 1 - x0), float(ys.max() + 1 - y0)],
        "area": float(m.sum()),
        "num_keypoints": p["num_keypoints"], "keypoints": p["keypoints"],
        "segmentation": {"size": [int(m.shape[0]), int(m.shape[1])], "counts": rle["counts"].decode("ascii")},
        "synth": {"main": p["main"], "truncation": p["mode"], "yaw": round(p["yaw"], 1), "tilt": round(p["tilt"], 1)},
    }


def _render_chunk(job) -> list:
    out_dir, split, seed, indices, hw, quality = job
    res = []
    for i in indices:
        img, persons = render_image(seed, split, i, hw)
        image_id = i + 1
        name = f"{image_id:012d}.jpg"
        img.save(Path(out_dir) / f"{split}2017" / name, quality=quality)
        res.append(({"id": image_id, "file_name": name, "width": hw[1], "height": hw[0]},
                    [_annotation(p, image_id) for p in persons]))
    return res


# ---------------------------------------------------------------------------------------------
# dataset


def _pool_context():
    """'fork' where available, so that scripts need no ``if __name__ == "__main__"`` guard; but
    'forkserver' in an interactive session (no ``__main__.__file__``, e.g. a Jupyter kernel) that
    runs threads, where forking is unsafe (and deprecated from Python 3.12) and where the
    forkserver cannot re-import a main script; 'spawn' where fork does not exist (Windows)."""
    import sys

    methods = mp.get_all_start_methods()
    interactive = not hasattr(sys.modules.get("__main__"), "__file__")
    if "fork" in methods and not (interactive and threading.active_count() > 1 and "forkserver" in methods):
        return mp.get_context("fork")
    return mp.get_context("forkserver" if "forkserver" in methods else "spawn")


def generate(out_dir, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL, seed: int = 0,
             image_size=DEFAULT_IMAGE_SIZE, workers: int = 2, progress: bool = True,
             jpeg_quality: int = DEFAULT_JPEG_QUALITY, overwrite: bool = False) -> dict:
    """Write SynthPose in the MS-COCO keypoint layout under ``out_dir`` and return stats.

    ``image_size`` (H, W) sets the resolution; people, parts and textures scale with it, so e.g.
    (384, 320) renders the same kind of scenes at twice the detail. Returns
    ``{'train': {...}, 'val': {...}, 'wall_time_s': float, 'out_dir': str}`` where each split has
    'images', 'annotations', 'box_height_median' and 'presence' (see :func:`presence_table`).
    An existing dataset in ``out_dir`` is only replaced with ``overwrite=True`` (else OutputExistsError).

    Atomic enough that a failure never leaves a half-written dataset: the images and annotation
    files are written into a sibling ``.<name>.partial-<pid>`` folder (removed on any error) and
    moved into ``out_dir`` only when both splits are complete, the annotation files last (an old
    dataset's are removed first, so an interruption during the move leaves no annotation file that
    disagrees with the images; a stale partial folder is removed by the next run). The ``synthpose.json``
    stamp (:func:`stamp_params`) is written last, so :func:`ensure_synthpose` uses the set as it is.
    """
    from tqdm.auto import tqdm

    for name, n in (("n_train", n_train), ("n_val", n_val)):
        if int(n) != n or n < 0:
            raise UsageError(f"{name} must be a non-negative integer, got {n!r}")
    hw = tuple(int(v) for v in image_size)
    if len(hw) != 2 or min(hw) < 32:
        raise UsageError(f"image_size must be (H, W) with both >= 32, got {image_size!r}")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    t0 = time.perf_counter()
    stats = {}
    params = {"n_train": int(n_train), "n_val": int(n_val), "seed": int(seed), "image_size": list(hw),
              "jpeg_quality": int(jpeg_quality)}
    for split in ("train", "val"):
        ann = out / "annotations" / f"person_keypoints_{split}2017.json"
        if ann.exists() and not overwrite:
            raise OutputExistsError(f"{ann} exists; pass overwrite=True (--overwrite) to regenerate into {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.glob(f".{out.name}.partial-*"):  # left by a killed run
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    pool = _pool_context().Pool(workers) if workers > 1 else None
    try:
        for split, n in (("train", n_train), ("val", n_val)):
            (stage / f"{split}2017").mkdir(parents=True, exist_ok=True)
            (stage / "annotations").mkdir(parents=True, exist_ok=True)
            jobs = [(str(stage), split, int(seed), list(range(i, min(n, i + _CHUNK))), hw, int(jpeg_quality))
                    for i in range(0, n, _CHUNK)]
            results = pool.imap(_render_chunk, jobs) if pool else map(_render_chunk, jobs)
            images, anns = [], []
            with tqdm(total=n, desc=f"SynthPose {split}", disable=not progress, unit="img") as bar:
                for chunk in results:
                    for image, image_anns in chunk:
                        images.append(image)
                        for a in image_anns:
                            anns.append({"id": len(anns) + 1, **a})
                    bar.update(len(chunk))
            data = {
                "info": {"description": "SynthPose: synthetic COCO-style person keypoints (lofr)",
                         "version": VERSION, "year": 2026, **params, "split": split},
                "licenses": [],
                "images": images,
                "annotations": anns,
                "categories": [{"id": 1, "name": "person", "supercategory": "person",
                                "keypoints": list(COCO17.keypoints), "skeleton": COCO17.skeleton_coco}],
            }
            path = stage / "annotations" / f"person_keypoints_{split}2017.json"
            path.write_text(json.dumps(data, separators=(",", ":")))
            heights = [a["bbox"][3] for a in anns]
            stats[split] = {"images": len(images), "annotations": len(anns),
                            "box_height_median": float(np.median(heights)) if heights else 0.0,
                            "presence": presence_table(data)}
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        (out / STAMP).unlink(missing_ok=True)  # an old set's stamp never describes the new images
        _move_into_place(stage, out)
        # the stamp that ensure_synthpose reads: a set made by `lofr synth` with the defaults is used as is
        # (no timing in it: the same parameters give the same bytes, stamp included)
        (out / STAMP).write_text(json.dumps({"params": stamp_params(n_train, n_val, seed, hw, jpeg_quality)}, indent=1))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        shutil.rmtree(stage, ignore_errors=True)
    stats["wall_time_s"] = time.perf_counter() - t0
    stats["out_dir"] = str(out)
    return stats


def _move_into_place(stage: Path, out: Path) -> None:
    """Move a complete dataset from ``stage`` into ``out`` (see :func:`generate`): the old
    annotation files go first, then the image folders (no stale images from a bigger run), then the
    new annotation files."""
    names = [f"person_keypoints_{s}2017.json" for s in SPLITS]
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / "annotations" / name).unlink(missing_ok=True)
    for split in SPLITS:
        shutil.rmtree(out / f"{split}2017", ignore_errors=True)
        os.replace(stage / f"{split}2017", out / f"{split}2017")
    for name in names:
        os.replace(stage / "annotations" / name, out / "annotations" / name)


def _load(src) -> tuple[dict, str]:
    if isinstance(src, dict):
        return src, "<dict>"
    if hasattr(src, "dataset"):  # pycocotools / xtcocotools COCO
        return src.dataset, "<COCO>"
    path = Path(src)
    if not path.is_file():
        raise FileNotFoundError(f"no annotation file at {path}")
    return json.loads(path.read_text()), str(path)


def presence_table(src) -> list[dict]:
    """Per keypoint: the fraction of person instances (iscrowd = 0) where it is present (v > 0),
    visible (v = 2) and absent (v = 0). ``src``: a COCO keypoints json path, a loaded dict, or a
    ``pycocotools.coco.COCO``. Rows: {'keypoint', 'present', 'visible', 'absent', 'instances'}."""
    data, where = _load(src)
    names = list(COCO17.keypoints)
    for cat in data.get("categories", []):
        if cat.get("keypoints"):
            names = list(cat["keypoints"])
    vis = []
    for a in data.get("annotations", []):
        if a.get("iscrowd", 0):
            continue
        k = a.get("keypoints")
        if k is None or len(k) != 3 * len(names):
            raise ValueError(f"{where}: annotation {a.get('id')} has {None if k is None else len(k)} keypoint "
                             f"values, expected {3 * len(names)}")
        v = np.asarray(k[2::3])
        if not np.isin(v, (0, 1, 2)).all():
            raise ValueError(f"{where}: annotation {a.get('id')} has visibility flags {sorted(set(v.tolist()))}, "
                             "expected values in {0, 1, 2}")
        vis.append(v)
    v = np.stack(vis) if vis else np.zeros((0, len(names)))
    n = max(1, len(v))
    return [{"keypoint": name, "present": float((v[:, j] > 0).sum() / n), "visible": float((v[:, j] == 2).sum() / n),
             "absent": float((v[:, j] == 0).sum() / n), "instances": len(v)} for j, name in enumerate(names)]


def format_presence_table(rows_or_src, title: str | None = None) -> str:
    """Fixed-width text table of :func:`presence_table` rows (or of its ``src``)."""
    rows = rows_or_src if isinstance(rows_or_src, list) else presence_table(rows_or_src)
    n = rows[0]["instances"] if rows else 0
    lines = [title] if title else []
    lines.append(f"{'keypoint':<16}{'present':>9}{'visible':>9}{'absent':>9}   ({n} instances)")
    lines.append("-" * 43)
    for r in rows:
        lines.append(f"{r['keypoint']:<16}{r['present']:>9.1%}{r['visible']:>9.1%}{r['absent']:>9.1%}")
    return "\n".join(lines)


def _pid_alive(pid: str) -> bool:
    """Whether the process that named a temporary directory is still running (then leave it)."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid) != os.getpid()


def stamp_params(n_train: int, n_val: int, seed: int, image_size, jpeg_quality: int = DEFAULT_JPEG_QUALITY) -> dict:
    """What ``synthpose.json`` records of a generated set, and what :func:`ensure_synthpose` compares:
    the generator version, sizes, seed and image size (the JPEG quality only where it is not the default)."""
    params = {"version": VERSION, "n_train": int(n_train), "n_val": int(n_val), "seed": int(seed),
              "image_size": [int(v) for v in image_size]}
    return params if int(jpeg_quality) == DEFAULT_JPEG_QUALITY else {**params, "jpeg_quality": int(jpeg_quality)}


def ensure_synthpose(root=None, n_train: int = DEFAULT_TRAIN, n_val: int = DEFAULT_VAL, seed: int = 0,
                     image_size=DEFAULT_IMAGE_SIZE, workers: int = 2, progress: bool = True) -> Path:
    """Return the SynthPose root, generating it first if it is missing or was made with other
    parameters (read from the ``synthpose.json`` stamp). Generation goes into a temporary sibling
    directory that is renamed into place only when complete, so an interrupted run never leaves a
    half-written dataset behind (a stale temporary directory is removed next time)."""
    from ..paths import synthpose_dir

    root = Path(root) if root is not None else synthpose_dir()
    params = stamp_params(n_train, n_val, seed, image_size)
    stamp = root / STAMP
    complete = all((root / "annotations" / f"person_keypoints_{s}2017.json").is_file() for s in SPLITS)
    if stamp.is_file() and complete:
        try:
            if json.loads(stamp.read_text()).get("params") == params:
                return root
        except json.JSONDecodeError:
            pass
    if root.exists() and any(root.iterdir()):
        ours = {STAMP, "annotations", "train2017", "val2017"}
        foreign = sorted(p.name for p in root.iterdir() if p.name not in ours)
        if foreign:
            raise OutputExistsError(f"{root} exists and holds files that are not SynthPose's ({foreign[:5]}); "
                                    "refusing to overwrite it: pass another root or empty it")
    root.parent.mkdir(parents=True, exist_ok=True)
    for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by an interrupted run
        if not _pid_alive(stale.name.rsplit("-", 1)[-1]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    generate(tmp, n_train, n_val, seed, image_size, workers=workers, progress=progress)  # writes the stamp
    if root.exists():
        old = root.parent / f".{root.name}.tmp-old-{os.getpid()}"
        root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(root)
    return root
