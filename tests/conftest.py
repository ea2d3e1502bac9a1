"""Shared test fixtures: a tiny hand-made COCO keypoint set, and a small SynthPose."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from lofr.data.schemas import COCO17

if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n 2 (conftest.py): the notebooks' kernel has the other core
    import torch

    torch.set_num_threads(1)

@pytest.fixture(autouse=True)
def _feature_caches_in_tmp(monkeypatch, tmp_path_factory):
    """Backbone feature caches built by tests (synth-cpu caches by default) go to the session's
    temporary folder, shared by its tests, never to the repository's data/feature_cache."""
    monkeypatch.setenv("LOFR_FEATURE_CACHE", str(tmp_path_factory.getbasetemp() / "feature_cache"))


# A standing person in a 160x120 (W x H) image, COCO-17 order, continuous pixel coordinates.
PERSON = np.array([
    [80, 20], [77, 17], [83, 17], [74, 19], [86, 19],  # nose, eyes, ears
    [70, 32], [90, 32], [66, 46], [94, 46], [64, 60], [96, 60],  # shoulders, elbows, wrists
    [74, 62], [86, 62], [73, 80], [87, 80], [72, 98], [88, 98],  # hips, knees, ankles
], dtype=np.float64) + 0.5
IMG_W, IMG_H = 160, 120


def _kps(points, v):
    out = []
    for (x, y), vi in zip(points, v):
        out += [float(x), float(y), int(vi)] if vi else [0.0, 0.0, 0]
    return out


def draw_dots(size_wh, dots, color=(255, 255, 255), background=(40, 40, 40), radius=2):
    """RGB image with filled squares of side 2*radius - 1 pixels centred on the pixels holding the
    given continuous points."""
    im = Image.new("RGB", size_wh, background)
    d = ImageDraw.Draw(im)
    for x, y in dots:
        j, i = int(np.floor(x)), int(np.floor(y))
        d.rectangle([j - radius + 1, i - radius + 1, j + radius - 1, i + radius - 1], fill=color)
    return im


def base_coco():
    """The default tiny COCO dict: 2 images, 5 annotations (3 usable, 1 crowd, 1 without keypoints)."""
    v_all = [2] * 17
    v_upper = [2] * 11 + [0] * 6
    return {
        "info": {"description": "lofr test fixture"},
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO17.keypoints),
                        "skeleton": COCO17.skeleton_coco}],
        "images": [
            {"id": 1, "file_name": "a.png", "width": IMG_W, "height": IMG_H},
            {"id": 2, "file_name": "b.png", "width": IMG_W, "height": IMG_H},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "iscrowd": 0, "keypoints": _kps(PERSON, v_all),
             "num_keypoints": 17, "bbox": [60.0, 12.0, 40.0, 92.0], "area": 3680.0,
             "segmentation": [[60, 12, 100, 12, 100, 104, 60, 104]]},
            {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0,
             "keypoints": _kps(PERSON + [-50, 0], v_upper), "num_keypoints": 11,
             "bbox": [10.0, 12.0, 40.0, 52.0], "area": 2080.0, "segmentation": []},
            {"id": 12, "image_id": 1, "category_id": 1, "iscrowd": 1, "keypoints": [0] * 51, "num_keypoints": 0,
             "bbox": [120.0, 10.0, 30.0, 30.0], "area": 900.0,
             "segmentation": {"counts": [0, 10], "size": [IMG_H, IMG_W]}},
            {"id": 13, "image_id": 2, "category_id": 1, "iscrowd": 0, "keypoints": [0] * 51, "num_keypoints": 0,
             "bbox": [5.0, 5.0, 20.0, 20.0], "area": 400.0, "segmentation": []},
            {"id": 14, "image_id": 2, "category_id": 1, "iscrowd": 0, "keypoints": _kps(PERSON, v_all),
             "num_keypoints": 17, "bbox": [60.0, 12.0, 40.0, 92.0], "area": 3680.0,
             "segmentation": [[60, 12, 100, 12, 100, 104, 60, 104]]},
        ],
    }


def write_coco(root: Path, data: dict, images: dict[str, Image.Image] | None = None):
    """Write ``data`` to root/ann.json and the images (default: dot images of every annotation's
    labelled keypoints) to root/img; returns (ann_file, img_dir)."""
    root = Path(root)
    img_dir = root / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    if images is None:
        images = {}
        for img in data["images"]:
            dots = []
            for a in data["annotations"]:
                if a.get("image_id") == img["id"] and isinstance(a.get("keypoints"), list):
                    k = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
                    dots += [tuple(p[:2]) for p in k if p[2] > 0]
            images[img["file_name"]] = draw_dots((img.get("width", IMG_W), img.get("height", IMG_H)), dots)
    for name, im in images.items():
        im.save(img_dir / name)
    ann_file = root / "ann.json"
    ann_file.write_text(json.dumps(data))
    return ann_file, img_dir


@pytest.fixture
def tiny_coco(tmp_path):
    """(ann_file, img_dir) of the default tiny set."""
    return write_coco(tmp_path, base_coco())


@pytest.fixture
def coco_data():
    """A fresh, mutable copy of the tiny set's dict (write it with ``write_coco``)."""
    return copy.deepcopy(base_coco())


@pytest.fixture(scope="session")
def synthpose_small(tmp_path_factory):
    """A small SynthPose set (200 train / 50 val) in a session tmp dir: returns its root, laid out
    as COCO (annotations/person_keypoints_{train,val}2017.json, {train,val}2017/*.jpg)."""
    from lofr.data import synth

    root = tmp_path_factory.mktemp("synthpose_small")
    synth.generate(root, n_train=200, n_val=50, seed=0, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny SynthPose set (16 train / 6 val images of 96x80) for the benchmark scripts' --quick runs."""
    from lofr.data import synth

    root = tmp_path_factory.mktemp("tiny_root")
    synth.generate(root, n_train=16, n_val=6, seed=0, image_size=(96, 80), workers=1, progress=False)
    return root


def load_benchmark(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the scripts import ``common`` by its bare name)."""
    import importlib.util
    import sys

    bench_dir = Path(__file__).resolve().parents[1] / "benchmarks"
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", bench_dir / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
