"""SynthPose generator: COCO validity, determinism, label statistics, geometry and caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from lofr.data import synth
from lofr.data.schemas import COCO17
from lofr.data.synth import (VERSION, ensure_synthpose, format_presence_table, generate, presence_table,
                             render_image)
from lofr.data.synth_figure import IDX, project, rot_x, rot_y, rot_z, sample_figure, sample_pose
from lofr.data.synth_paint import OCCLUDER_ID, PART, background

HW = (192, 160)
# pycocotools' mask.decode trips a numpy 2 DeprecationWarning inside pycocotools (not ours)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "sp"
    stats = generate(out, n_train=40, n_val=10, seed=3, workers=2, progress=False)
    return out, stats


def _load(out: Path, split: str) -> dict:
    return json.loads((out / "annotations" / f"person_keypoints_{split}2017.json").read_text())


def _all_bytes(out: Path) -> dict:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# format


def test_coco_layout_and_fields(small):
    out, stats = small
    for split, n in (("train", 40), ("val", 10)):
        coco = COCO(str(out / "annotations" / f"person_keypoints_{split}2017.json"))
        data = coco.dataset
        assert len(data["images"]) == n == stats[split]["images"]
        assert len(data["annotations"]) == stats[split]["annotations"] >= n
        (cat,) = data["categories"]
        assert cat["id"] == 1 and cat["name"] == "person"
        assert cat["keypoints"] == list(COCO17.keypoints)
        assert cat["skeleton"] == COCO17.skeleton_coco
        info = data["info"]
        assert info["version"] == VERSION and info["seed"] == 3 and info["image_size"] == list(HW)
        assert info["n_train"] == 40 and info["n_val"] == 10
        for im in data["images"]:
            assert {"id", "file_name", "width", "height"} <= set(im)
            with Image.open(out / f"{split}2017" / im["file_name"]) as f:
                assert f.size == (im["width"], im["height"]) == (HW[1], HW[0])
                assert f.format == "JPEG"
        assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
        assert coco.getAnnIds() and coco.getCatIds(catNms=["person"]) == [1]


def test_annotations_are_valid_coco_keypoints(small):
    out, _ = small
    for split in ("train", "val"):
        data = _load(out, split)
        sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
        for a in data["annotations"]:
            h, w = sizes[a["image_id"]]
            assert a["category_id"] == 1 and a["iscrowd"] == 0
            k = np.asarray(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            assert k.shape == (17, 3)
            v = k[:, 2]
            assert set(v.tolist()) <= {0, 1, 2}
            assert (k[v == 0, :2] == 0).all(), a["id"]
            lab = k[v > 0]
            assert ((lab[:, 0] >= 0) & (lab[:, 0] < w) & (lab[:, 1] >= 0) & (lab[:, 1] < h)).all(), a["id"]
            assert a["num_keypoints"] == int((v > 0).sum()) >= 1
            x, y, bw, bh = a["bbox"]
            assert bw > 0 and bh > 0 and x >= 0 and y >= 0 and x + bw <= w and y + bh <= h
            # segmentation: RLE of the visible silhouette; bbox is its tight box, area its size
            m = mask_utils.decode(a["segmentation"]).astype(bool)
            assert m.shape == (h, w)
            ys, xs = np.nonzero(m)
            assert [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()] == [x, y, bw, bh]
            assert a["area"] == m.sum()


def test_visible_keypoints_lie_on_the_silhouette(small):
    out, _ = small
    data = _load(out, "train")
    n = 0
    for a in data["annotations"]:
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        for x, y, v in np.asarray(a["keypoints"]).reshape(-1, 3):
            if v == 2:
                xi, yi = int(x), int(y)
                assert m[max(0, yi - 3):yi + 4, max(0, xi - 3):xi + 4].any(), (a["id"], x, y)
                n += 1
    assert n > 100


def test_visible_keypoints_differ_from_background_only_render():
    # the scene's rng draws the background first: the same rng reproduces the empty scene
    diffs = []
    for i in range(12):
        img, persons = render_image(5, "train", i, HW, camera_effects=False)
        bg = background(np.random.default_rng([5, 0, i]), HW)
        a, b = np.asarray(img, np.float32), np.asarray(bg, np.float32)
        for p in persons:
            for x, y, v in np.asarray(p["keypoints"]).reshape(-1, 3):
                if v == 2:
                    xi, yi = int(x), int(y)
                    win = (slice(max(0, yi - 1), yi + 2), slice(max(0, xi - 1), xi + 2))
                    diffs.append(np.abs(a[win] - b[win]).mean())
    diffs = np.array(diffs)
    assert len(diffs) > 50
    assert (diffs > 8).mean() > 0.9  # a person (not the empty background) is painted there


def test_annotator_policy_on_a_hand_made_id_map(monkeypatch):
    fig = sample_figure(np.random.default_rng(0))
    hw = (40, 80)
    ids = np.zeros(hw, np.uint8)
    base = 1
    ids[10:16, 20:26] = base + PART["left_hand"]  # left wrist lies on its own hand
    ids[10:16, 50:56] = OCCLUDER_ID  # right wrist hidden by an occluder
    ids[30:36, 20:26] = base + PART["head"]  # nose on the head
    ids[30:36, 50:56] = base + PART["torso"]  # left elbow over the own torso (self-occlusion)

    def labels(yaw):
        pr = project(fig, yaw, 0.0, 100.0)
        pr.xy[:] = -50.0  # everything outside the image ...
        pr.xy[9], pr.xy[10], pr.xy[0], pr.xy[7] = (22, 12), (52, 12), (22, 32), (52, 32)  # ... but these
        return np.asarray(synth._keypoints(np.random.default_rng(0), ids, pr, base, hw)).reshape(17, 3)

    for p_label, v_hidden in ((1.0, 1), (0.0, 0)):
        monkeypatch.setattr(synth, "P_LABEL_EXTERNAL", p_label)
        monkeypatch.setattr(synth, "P_LABEL_SELF", p_label)
        monkeypatch.setattr(synth, "P_LABEL_FACE_AWAY", p_label)
        k = labels(yaw=0.0)
        np.testing.assert_array_equal(k[9], [22.5, 12.5, 2])  # PIL coordinate + 0.5 (pixel centres)
        np.testing.assert_array_equal(k[0], [22.5, 32.5, 2])  # front view: the nose is seen
        assert k[10, 2] == v_hidden and k[7, 2] == v_hidden
        assert (k[10, :2] == [52.5, 12.5]).all() if v_hidden else (k[10] == 0).all()
        assert (k[[1, 2, 3, 4, 5, 6, 8, 11, 12, 13, 14, 15, 16]] == 0).all()  # outside the image: v = 0
        assert labels(yaw=180.0)[0, 2] == v_hidden  # back view: the nose is turned away


# ------------------------------------------------------------------------------------------------
# determinism


def test_deterministic_across_runs_and_workers(tmp_path, small):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate(a, n_train=12, n_val=4, seed=11, workers=1, progress=False)
    generate(b, n_train=12, n_val=4, seed=11, workers=2, progress=False)
    generate(c, n_train=12, n_val=4, seed=12, workers=2, progress=False)
    fa, fb, fc = _all_bytes(a), _all_bytes(b), _all_bytes(c)
    assert fa.keys() == fb.keys() and len(fa) == 2 + 16 + 1  # annotations, images, the stamp
    assert fa == fb
    key = "annotations/person_keypoints_train2017.json"
    assert fa[key] != fc[key]
    assert fa["train2017/000000000001.jpg"] != fc["train2017/000000000001.jpg"]


def test_val_does_not_depend_on_train_size(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    generate(a, n_train=2, n_val=3, seed=1, workers=1, progress=False)
    generate(b, n_train=5, n_val=3, seed=1, workers=1, progress=False)
    assert _all_bytes(a / "val2017") == _all_bytes(b / "val2017")


# ------------------------------------------------------------------------------------------------
# label statistics


def test_every_keypoint_is_often_absent_and_often_present(tmp_path):
    stats = generate(tmp_path / "p", n_train=240, n_val=0, seed=0, workers=2, progress=False)
    rows = stats["train"]["presence"]
    assert rows[0]["instances"] >= 300
    for r in rows:
        assert r["absent"] >= 0.15, format_presence_table(rows)
        assert r["present"] >= 0.25, format_presence_table(rows)
        assert r["visible"] > 0.15, format_presence_table(rows)


def test_presence_table_on_hand_made_annotations(tmp_path):
    k1 = [0, 0, 0] * 17
    k1[0:3] = [10, 10, 2]  # nose visible
    k2 = [0, 0, 0] * 17
    k2[0:3] = [5, 5, 1]  # nose occluded
    k2[3:6] = [6, 6, 2]  # left eye visible
    data = {"categories": [{"id": 1, "keypoints": list(COCO17.keypoints)}],
            "annotations": [{"id": 1, "keypoints": k1}, {"id": 2, "keypoints": k2},
                            {"id": 3, "keypoints": [1] * 51, "iscrowd": 1}]}  # crowd: ignored
    rows = presence_table(data)
    assert [r["keypoint"] for r in rows] == list(COCO17.keypoints)
    assert rows[0] == {"keypoint": "nose", "present": 1.0, "visible": 0.5, "absent": 0.0, "instances": 2}
    assert rows[1]["present"] == 0.5 and rows[1]["visible"] == 0.5 and rows[1]["absent"] == 0.5
    assert rows[16]["absent"] == 1.0
    path = tmp_path / "a.json"
    path.write_text(json.dumps(data))
    assert presence_table(path) == rows
    text = format_presence_table(rows, title="demo")
    lines = text.splitlines()
    assert lines[0] == "demo" and len(lines) == 3 + 17
    assert lines[3].split() == ["nose", "100.0%", "50.0%", "0.0%"]
    assert len({len(line) for line in lines[3:]}) == 1  # fixed width


def test_presence_table_rejects_bad_annotations(tmp_path):
    bad_len = {"annotations": [{"id": 7, "keypoints": [0] * 50}]}
    with pytest.raises(ValueError, match="annotation 7 .*50"):
        presence_table(bad_len)
    bad_v = {"annotations": [{"id": 9, "keypoints": [0, 0, 3] + [0] * 48}]}
    with pytest.raises(ValueError, match="annotation 9"):
        presence_table(bad_v)
    with pytest.raises(FileNotFoundError):
        presence_table(tmp_path / "missing.json")


def test_generate_stats(small):
    out, stats = small
    assert stats["wall_time_s"] > 0
    for split in ("train", "val"):
        assert len(stats[split]["presence"]) == 17
        assert 30 <= stats[split]["box_height_median"] <= 192
        coco = COCO(str(out / "annotations" / f"person_keypoints_{split}2017.json"))
        assert presence_table(coco) == stats[split]["presence"]


def test_generate_does_not_silently_overwrite(tmp_path):
    out = tmp_path / "sp"
    generate(out, n_train=4, n_val=1, seed=0, workers=1, progress=False)
    with pytest.raises(FileExistsError, match="overwrite"):
        generate(out, n_train=2, n_val=1, seed=0, workers=1, progress=False)
    generate(out, n_train=2, n_val=1, seed=0, workers=1, progress=False, overwrite=True)
    assert len(list((out / "train2017").iterdir())) == 2  # no stale images from the bigger run


def test_higher_resolution_scales_the_scene(tmp_path):
    small_img, small_p = render_image(2, "val", 0, (192, 160))
    big_img, big_p = render_image(2, "val", 0, (384, 320))
    assert big_img.size == (320, 384)
    # same scene at twice the resolution: keypoints (and their labels) scale with it
    ks, kb = (np.asarray(p[0]["keypoints"], float).reshape(-1, 3) for p in (small_p, big_p))
    both = (ks[:, 2] > 0) & (kb[:, 2] > 0)
    assert both.sum() >= 1
    np.testing.assert_allclose(kb[both, :2], 2 * ks[both, :2], atol=1.5)
    assert big_p[0]["mask"].sum() == pytest.approx(4 * small_p[0]["mask"].sum(), rel=0.15)


def test_generate_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_train"):
        generate(tmp_path, n_train=-1, n_val=1, progress=False)
    with pytest.raises(ValueError, match="image_size"):
        generate(tmp_path, n_train=1, n_val=1, image_size=(16, 16), progress=False)


# ------------------------------------------------------------------------------------------------
# kinematics and views


def test_rotations_follow_the_documented_conventions():
    down, up = np.array([0.0, -1, 0]), np.array([0.0, 1, 0])
    np.testing.assert_allclose(rot_x(90) @ up, [0, 0, 1], atol=1e-12)  # lean forward
    np.testing.assert_allclose(rot_z(90) @ down, [1, 0, 0], atol=1e-12)  # swing to the left
    np.testing.assert_allclose(rot_y(90) @ np.array([0.0, 0, 1]), [1, 0, 0], atol=1e-12)


def test_joint_limits_and_segment_lengths():
    rng = np.random.default_rng(0)
    for _ in range(200):
        p = sample_pose(rng)
        for s in ("left", "right"):
            flex, abd, elbow, _ = p[f"{s}_arm"]
            hflex, habd, knee = p[f"{s}_leg"]
            assert -50 <= flex <= 175 and -10 <= abd <= 110 and 0 <= elbow <= 150
            assert -30 <= hflex <= 110 and -10 <= habd <= 45 and 0 <= knee <= 145
    fig = sample_figure(np.random.default_rng(1))
    d = lambda a, b: np.linalg.norm(fig.pts[IDX[a]] - fig.pts[IDX[b]])  # noqa: E731
    assert 0.1 < d("left_shoulder", "left_elbow") < 0.22
    assert 0.1 < d("left_elbow", "left_wrist") < 0.2
    assert 0.17 < d("left_knee", "left_ankle") < 0.3
    for s in range(20):  # elbows / knees only bend towards their bend direction (no hyperextension)
        fig = sample_figure(np.random.default_rng(s))
        for side in ("left", "right"):
            for a, b, c in (("shoulder", "elbow", "wrist"), ("hip", "knee", "ankle")):
                pa, pb, pc = (fig.pts[IDX[f"{side}_{n}"]] for n in (a, b, c))
                assert (pc - pb) @ fig.bend[f"{side}_{b}"] >= -1e-9
                assert abs((pb - pa) @ fig.bend[f"{side}_{b}"]) < 1e-9  # bend dir is across the bone


@pytest.mark.parametrize("seed", range(5))
def test_left_right_depends_on_the_view(seed):
    fig = sample_figure(np.random.default_rng(seed))
    front = project(fig, yaw=0.0, tilt=0.0, px=100.0)
    back = project(fig, yaw=180.0, tilt=0.0, px=100.0)
    prof = project(fig, yaw=90.0, tilt=0.0, px=100.0)
    ls, rs = IDX["left_shoulder"], IDX["right_shoulder"]
    # front view: the person's left shoulder is on the image's right; back view: on the left
    assert front.xy[ls, 0] > front.xy[rs, 0]
    assert back.xy[ls, 0] < back.xy[rs, 0]
    # image y points down: the head is above the hips
    assert front.xy[IDX["head"], 1] < front.xy[IDX["pelvis"], 1]
    # profile at yaw=+90 faces the image's right; the left side is the far side
    assert prof.side_facing["left"] < -0.9 and prof.side_facing["right"] > 0.9
    assert prof.depth[IDX["left_hip"]] < prof.depth[IDX["right_hip"]]
    assert front.face_facing["nose"] > 0 > back.face_facing["nose"]


def test_tilt_rotates_counter_clockwise_on_screen():
    fig = sample_figure(np.random.default_rng(0))
    up = project(fig, 0.0, 0.0, 100.0)
    tilted = project(fig, 0.0, 90.0, 100.0)
    v0 = up.xy[IDX["head"]] - up.xy[IDX["pelvis"]]
    v1 = tilted.xy[IDX["head"]] - tilted.xy[IDX["pelvis"]]
    assert v0[1] < -30  # upright: the head is above the pelvis (image y down)
    np.testing.assert_allclose(v1, [v0[1], -v0[0]], atol=1e-9)  # 'up' turns to the image's left


def test_generated_front_and_back_views_are_labelled_consistently(tmp_path):
    generate(tmp_path / "lr", n_train=60, n_val=0, seed=4, workers=2, progress=False)
    data = _load(tmp_path / "lr", "train")
    agree = {"front": [], "back": []}
    for a in data["annotations"]:
        k = np.asarray(a["keypoints"]).reshape(-1, 3)
        yaw, tilt = a["synth"]["yaw"], a["synth"]["tilt"]
        if k[5, 2] == 2 and k[6, 2] == 2 and abs(tilt) < 25:
            if abs(yaw) < 25:
                agree["front"].append(k[5, 0] > k[6, 0])
            elif abs(yaw) > 155:
                agree["back"].append(k[5, 0] < k[6, 0])
    for view, ok in agree.items():
        assert len(ok) >= 3, view
        assert np.mean(ok) >= 0.9, view


def test_back_views_hide_the_face(tmp_path):
    # COCO annotators leave the eyes / nose of a person seen from the back unlabelled (mostly)
    n, labelled = 0, 0
    for i in range(40):
        _, persons = render_image(8, "train", i, HW)
        for p in persons:
            if abs(p["yaw"]) > 160:
                k = np.asarray(p["keypoints"]).reshape(-1, 3)
                n += 1
                labelled += int(k[1, 2] > 0) + int(k[2, 2] > 0)
    assert n >= 5 and labelled / (2 * n) < 0.4


# ------------------------------------------------------------------------------------------------
# caching


def test_ensure_synthpose_caches_and_regenerates(tmp_path, monkeypatch):
    root = tmp_path / "synthpose"
    calls = []
    real = synth.generate

    def counting(*args, **kw):
        calls.append(args)
        return real(*args, **kw)

    monkeypatch.setattr(synth, "generate", counting)
    assert ensure_synthpose(root, n_train=3, n_val=2, seed=0, progress=False) == root
    assert len(calls) == 1
    stamp = json.loads((root / "synthpose.json").read_text())
    assert stamp["params"]["n_train"] == 3 and stamp["params"]["version"] == VERSION
    assert (root / "annotations" / "person_keypoints_val2017.json").is_file()
    ensure_synthpose(root, n_train=3, n_val=2, seed=0, progress=False)
    assert len(calls) == 1  # cached
    ensure_synthpose(root, n_train=3, n_val=2, seed=1, progress=False)
    assert len(calls) == 2  # parameters changed -> regenerated in place
    assert json.loads((root / "synthpose.json").read_text())["params"]["seed"] == 1
    (root / "annotations" / "person_keypoints_train2017.json").unlink()
    ensure_synthpose(root, n_train=3, n_val=2, seed=1, progress=False)
    assert len(calls) == 3  # damaged -> regenerated
    assert (root / "annotations" / "person_keypoints_train2017.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthpose"]  # no temp dirs left


def test_generated_set_is_stamped_so_ensure_uses_it(tmp_path, monkeypatch):
    """`lofr synth` (generate) writes the stamp ensure_synthpose reads: training on a set it made with the
    same parameters does not regenerate it (which would also change its images' mtimes, the feature cache's key)."""
    root = tmp_path / "synthpose"
    synth.generate(root, n_train=3, n_val=2, seed=0, progress=False, workers=1)
    assert json.loads((root / synth.STAMP).read_text())["params"] == synth.stamp_params(3, 2, 0, synth.DEFAULT_IMAGE_SIZE)
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    monkeypatch.setattr(synth, "generate", lambda *a, **k: pytest.fail("regenerated a set made with these parameters"))
    assert ensure_synthpose(root, n_train=3, n_val=2, seed=0, progress=False) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == before
    # another JPEG quality is another set: its stamp records it, so it never matches ensure_synthpose's params
    other = synth.stamp_params(3, 2, 0, synth.DEFAULT_IMAGE_SIZE, jpeg_quality=50)
    assert other["jpeg_quality"] == 50 and other != synth.stamp_params(3, 2, 0, synth.DEFAULT_IMAGE_SIZE)


def test_ensure_synthpose_is_safe_when_interrupted(tmp_path, monkeypatch):
    root = tmp_path / "synthpose"
    ensure_synthpose(root, n_train=2, n_val=1, seed=0, progress=False)
    before = _all_bytes(root)

    def boom(out, *args, **kw):
        Path(out, "train2017").mkdir(parents=True)
        Path(out, "train2017", "000000000001.jpg").write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(synth, "generate", boom)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthpose(root, n_train=2, n_val=1, seed=5, progress=False)
    assert _all_bytes(root) == before  # the complete old dataset is untouched
    monkeypatch.undo()
    ensure_synthpose(root, n_train=2, n_val=1, seed=5, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthpose"]  # stale temp dir removed


def test_ensure_synthpose_refuses_foreign_directories(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        ensure_synthpose(root, n_train=1, n_val=1, progress=False)
    assert (root / "thesis.tex").read_text() == "precious"
