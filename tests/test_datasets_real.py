"""COCO, MPII and CrowdPose in their published formats, on tiny fixtures written in those formats:
loading, label derivation, OKS-NMS, detected-box evaluation, test-dev results, MPII PCKh from
gt_valid.mat, CrowdPose AP, and ``lofr data check``."""

from __future__ import annotations

import argparse
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import torch
from PIL import Image

from lofr.data.check import add_data_check_arguments, check_dataset, cmd_data_check
from lofr.data.detections import DetectionTopDown, detection_dataset, load_detections
from lofr.data.errors import DataError
from lofr.data.mpii import MAT_JOINT_NAMES, ensure_coco, load_gt_mat, mpii_box, mpii_to_coco
from lofr.data.schemas import COCO17, CROWDPOSE14, MPII16
from lofr.data.topdown import TopDownDataset
from lofr.engine.evaluation import evaluate_with_detections
from lofr.eval import coco_keypoint_eval, crowdpose_eval, evaluate_keypoints, gt_records, oks
from lofr.eval.detections import detection_results, write_test_dev_results
from lofr.eval.mpii import format_pckh_table, pckh_from_mat, records_to_preds, write_pred_mat
from lofr.eval.nms import oks_nms, oks_nms_results, oks_pairwise

from conftest import PERSON, _kps, draw_dots

HERE_W, HERE_H = 160, 120


# ============================================================================ fixtures

def _coco_ann(aid, image_id, pts, bbox, schema_c=17):
    v = [2] * schema_c
    return {"id": aid, "image_id": image_id, "category_id": 1, "iscrowd": 0, "keypoints": _kps(pts, v),
            "num_keypoints": schema_c, "bbox": bbox, "area": float(bbox[2] * bbox[3])}


def _save_dots(path: Path, pts_list, size=(HERE_W, HERE_H)):
    path.parent.mkdir(parents=True, exist_ok=True)
    draw_dots(size, [tuple(p) for pts in pts_list for p in pts]).save(path)


@pytest.fixture
def coco_root(tmp_path):
    """COCO 2017 layout: annotations/person_keypoints_{train,val}2017.json, {train,val}2017/*.jpg,
    person_detection_results/COCO_val2017_detections_AP_H_56_person.json, image_info_test-dev2017.json.
    val image 1 holds two people (A at x 60..100, B 50 px to the left), image 2 one person."""
    root = tmp_path / "coco"
    a, b = PERSON, PERSON + [-50, 0]
    box_a, box_b = [60.0, 12.0, 40.0, 92.0], [10.0, 12.0, 40.0, 92.0]
    cats = [{"id": 1, "name": "person", "keypoints": list(COCO17.keypoints), "skeleton": COCO17.skeleton_coco}]
    for split in ("train", "val"):
        images = [{"id": 1, "file_name": "000000000001.jpg", "width": HERE_W, "height": HERE_H},
                  {"id": 2, "file_name": "000000000002.jpg", "width": HERE_W, "height": HERE_H}]
        anns = [_coco_ann(1, 1, a, box_a), _coco_ann(2, 1, b, box_b), _coco_ann(3, 2, a, box_a)]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"person_keypoints_{split}2017.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
        _save_dots(root / f"{split}2017" / "000000000001.jpg", [a, b])
        _save_dots(root / f"{split}2017" / "000000000002.jpg", [a])
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": box_a, "score": 0.9},
        {"image_id": 1, "category_id": 1, "bbox": [61.0, 13.0, 39.0, 90.0], "score": 0.85},  # duplicate of A
        {"image_id": 1, "category_id": 1, "bbox": box_b, "score": 0.8},
        {"image_id": 2, "category_id": 1, "bbox": box_a, "score": 0.7},
        {"image_id": 2, "category_id": 1, "bbox": [0.0, 0.0, 20.0, 20.0], "score": 0.05},  # below 0.1
        {"image_id": 2, "category_id": 3, "bbox": [0.0, 0.0, 50.0, 20.0], "score": 0.99},  # a car
    ]
    (root / "person_detection_results").mkdir()
    (root / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json").write_text(json.dumps(dets))
    info = {"images": [{"id": 7, "file_name": "000000000007.jpg", "width": HERE_W, "height": HERE_H}],
            "categories": cats}
    (root / "annotations" / "image_info_test-dev2017.json").write_text(json.dumps(info))
    _save_dots(root / "test2017" / "000000000007.jpg", [a])
    return root


def _det_file(root):
    return root / "person_detection_results" / "COCO_val2017_detections_AP_H_56_person.json"


def _gt_records_for_crops(ds: DetectionTopDown, gt: dict) -> list[dict]:
    """A perfect pose estimator on detection crops: each crop gets the keypoints of the ground-truth
    person whose box overlaps it most (scores 1)."""
    def iou(p, q):
        x0, y0 = max(p[0], q[0]), max(p[1], q[1])
        x1, y1 = min(p[0] + p[2], q[0] + q[2]), min(p[1] + p[3], q[1] + q[3])
        inter = max(0, x1 - x0) * max(0, y1 - y0)
        return inter / (p[2] * p[3] + q[2] * q[3] - inter)

    out = []
    for r in ds.records:
        cands = [a for a in gt["annotations"] if a["image_id"] == r.image_id]
        best = max(cands, key=lambda a: iou(a["bbox"], r.bbox.tolist()))
        kp = np.asarray(best["keypoints"], dtype=np.float64).reshape(-1, 3)
        out.append({"image_id": r.image_id, "ann_id": r.ann_id, "keypoints": kp[:, :2], "scores": np.ones(len(kp))})
    return out


# ---------------------------------------------------------------------------- MPII fixture
# Three persons on two 200x160 images; head boxes chosen so the PCKh thresholds (0.5 x 0.6 x diag)
# are 15, 30 and 7.5 px.
MPII_HEAD = [(20, 10, 50, 50), (100, 10, 160, 90), (30, 20, 45, 40)]  # 1-based x1, y1, x2, y2
MPII_MISSING = [(), (0, 5), (9, 10, 15)]  # joints absent from gt_valid.mat per person
MAT_ORDER = list(MAT_JOINT_NAMES)  # rank, rkne, ... in the real file's order


def _mpii_joints(i: int) -> np.ndarray:
    """(16, 2) 1-based joints of MPII person i: a vertical chain, distinct per person."""
    return np.stack([np.full(16, 40.0 + 50 * i), 20.0 + 7.0 * np.arange(16)], axis=1)


def write_gt_mat(path: Path, joints, missing, head):
    """A gt_valid.mat with the real file's structure: dataset_joints (1, 16) cell of names,
    jnt_missing (16, N), pos_gt_src (16, 2, N), headboxes_src (2, 2, N)."""
    n = len(joints)
    names = np.empty((1, 16), dtype=object)
    for k, name in enumerate(MAT_ORDER):
        names[0, k] = np.array([name])
    # our joint order -> the mat's row order (the same permutation as the real file: identity)
    perm = [MPII16.keypoints.index(MAT_JOINT_NAMES[name]) for name in MAT_ORDER]
    jm = np.zeros((16, n))
    pos = np.zeros((16, 2, n))
    hb = np.zeros((2, 2, n))
    for i in range(n):
        for row, j in enumerate(perm):
            jm[row, i] = float(j in missing[i])
            pos[row, :, i] = joints[i][j]
        hb[0, :, i] = head[i][:2]
        hb[1, :, i] = head[i][2:]
    sio.savemat(str(path), {"dataset_joints": names, "jnt_missing": jm, "pos_gt_src": pos, "headboxes_src": hb})


@pytest.fixture
def mpii_root(tmp_path):
    """mmpose's MPII layout: annotations/mpii_{train,val}.json, annotations/mpii_gt_val.mat, images/."""
    root = tmp_path / "mpii"
    (root / "annotations").mkdir(parents=True)
    entries = []
    for i in range(3):
        vis = [0 if j in MPII_MISSING[i] else 1 for j in range(16)]
        if i == 1:
            vis[0] = vis[5] = 1  # the JSON claims the ankles of person 1; gt_valid.mat says missing
        entries.append({"image": "000000001.jpg" if i < 2 else "000000002.jpg", "center": [70.0 + 50 * i, 60.0],
                        "scale": 0.5, "joints": _mpii_joints(i).tolist(), "joints_vis": vis})
    (root / "annotations" / "mpii_val.json").write_text(json.dumps(entries))
    (root / "annotations" / "mpii_train.json").write_text(json.dumps(entries))
    write_gt_mat(root / "annotations" / "mpii_gt_val.mat", [_mpii_joints(i) for i in range(3)], MPII_MISSING,
                 MPII_HEAD)
    for name, people in (("000000001.jpg", [0, 1]), ("000000002.jpg", [2])):
        _save_dots(root / "images" / name, [_mpii_joints(i) - 0.5 for i in people], size=(200, 160))
    return root


# ---------------------------------------------------------------------------- CrowdPose fixture
@pytest.fixture
def crowdpose_root(tmp_path):
    """CrowdPose layout: annotations/crowdpose_{trainval,test}.json (14 keypoints, crowdIndex), images/."""
    root = tmp_path / "crowdpose"
    (root / "annotations").mkdir(parents=True)
    base = PERSON[[5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 0, 0]] + np.array([[0, 0]] * 12 + [[0, -8], [0, 6]])
    cats = [{"id": 1, "name": "person", "keypoints": list(CROWDPOSE14.keypoints),
             "skeleton": CROWDPOSE14.skeleton_coco}]
    images, anns = [], []
    for k, ci in enumerate((0.05, 0.5, 0.9)):  # easy, medium, hard
        name = f"10{k}.jpg"
        images.append({"id": 100 + k, "file_name": name, "width": HERE_W, "height": HERE_H, "crowdIndex": ci})
        people = [base, base + [-50, 0]] if k else [base]
        for p, pts in enumerate(people):
            box = [float(pts[:, 0].min() - 4), float(pts[:, 1].min() - 4), 40.0, 92.0]
            anns.append(_coco_ann(1000 + 10 * k + p, 100 + k, pts, box, 14))
        _save_dots(root / "images" / name, people)
    for split in ("trainval", "test"):
        (root / "annotations" / f"crowdpose_{split}.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


# ============================================================================ OKS-NMS
def test_oks_nms_hand_case():
    # one keypoint with sigma 0.5 (k^2 = 1); areas 2 -> s^2 = 2: OKS(A, B) = exp(-1 / 4), OKS(A, C) = exp(-9 / 4)
    kp = np.array([[[0.0, 0.0]], [[1.0, 0.0]], [[3.0, 0.0]]])
    areas = [2.0, 2.0, 2.0]
    ovr = oks_pairwise(kp[0], kp[1:], 2.0, areas[1:], [0.5])
    np.testing.assert_allclose(ovr, [math.exp(-0.25), math.exp(-2.25)], rtol=1e-12)
    assert oks_nms(kp, [0.9, 0.8, 0.7], areas, thr=0.5, sigmas=[0.5]) == [0, 2]  # B (0.78) suppressed by A
    assert oks_nms(kp, [0.9, 0.8, 0.7], areas, thr=0.8, sigmas=[0.5]) == [0, 1, 2]  # 0.78 <= 0.8: kept
    assert oks_nms(kp, [0.7, 0.9, 0.8], areas, thr=0.5, sigmas=[0.5]) == [1, 2]  # B first now: A suppressed
    # suppression needs OKS > thr (HRNet keeps "oks <= thresh"): identical poses (OKS 1) survive thr = 1
    assert oks_nms(kp[[0, 0]], [0.9, 0.8], [2.0, 2.0], thr=1.0, sigmas=[0.5]) == [0, 1]
    assert oks_nms(kp[[0, 0]], [0.9, 0.8], [2.0, 2.0], thr=0.99, sigmas=[0.5]) == [0]
    # different areas: the mean (2 + 6) / 2 = 4 is the scale -> exp(-1 / 8)
    np.testing.assert_allclose(oks_pairwise(kp[0], kp[1:2], 2.0, [6.0], [0.5]), [math.exp(-1 / 8)])


def test_oks_pairwise_matches_reference_oks_and_vis_thr():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 50, (17, 2)), rng.uniform(0, 50, (17, 2))
    ref = oks(b, np.concatenate([a, np.full((17, 1), 2.0)], 1), 900.0, COCO17.sigmas)
    np.testing.assert_allclose(oks_pairwise(a, b[None], 900.0, [900.0], COCO17.sigmas), [ref], rtol=1e-9)
    # vis_thr: only keypoints above it in BOTH poses count; none -> 0
    kp = np.array([[[0.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [9.0, 0.0]]])
    s = np.array([[0.9, 0.9], [0.9, 0.1]])
    v = oks_pairwise(kp[0], kp[1:], 1.0, [1.0], [0.5, 0.5], s[0], s[1:], vis_thr=0.5)
    np.testing.assert_allclose(v, [1.0])  # the far keypoint has score 0.1: ignored
    assert oks_pairwise(kp[0], kp[1:], 1.0, [1.0], [0.5, 0.5], s[0], s[1:] * 0, vis_thr=0.5)[0] == 0.0


def test_oks_nms_results_per_image_and_errors():
    res = [{"image_id": 1, "keypoints": [0, 0, 1], "score": 0.5}, {"image_id": 2, "keypoints": [0, 0, 1], "score": 0.4},
           {"image_id": 1, "keypoints": [0, 0, 1], "score": 0.9}]
    kept = oks_nms_results(res, [1.0, 1.0, 1.0], 0.9, schema=_one_kp_schema())
    assert kept == [res[1], res[2]]  # image 2's pose is not suppressed by image 1's identical one
    with pytest.raises(ValueError, match="area"):
        oks_nms(np.zeros((2, 1, 2)), [1, 1], [1.0, 0.0], sigmas=[0.5])
    assert oks_nms(np.zeros((0, 1, 2)), [], [], sigmas=[0.5]) == []


def _one_kp_schema():
    from lofr.data.schemas import KeypointSchema

    return KeypointSchema("one", ("a",), (), (), (0.5,), (0,))


# ============================================================================ COCO + detections
def test_load_detections_filters_and_reports(coco_root):
    dets, rep = load_detections(_det_file(coco_root), image_ids={1, 2}, score_thr=0.1)
    assert rep == {"entries": 6, "other_category": 1, "below_threshold": 1, "kept": 4, "score_thr": 0.1}
    assert [d["index"] for d in dets] == [0, 1, 2, 3]


@pytest.mark.parametrize("entry, match", [
    ({"image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, "image_id 99 is not in"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 0, 5], "score": 0.5}, "zero or negative"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5], "score": 0.5}, "4 finite numbers"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5]}, "has no \\['score'\\]"),
    ({"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": float("nan")}, "finite number"),
])
def test_load_detections_bad_entries_raise(tmp_path, entry, match):
    f = tmp_path / "dets.json"
    f.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}, entry]))
    with pytest.raises(DataError, match=match) as e:
        load_detections(f, image_ids={1})
    assert "dets.json" in str(e.value) and "entry 1" in str(e.value)


def test_detection_crops(coco_root):
    ds = DetectionTopDown(_det_file(coco_root), coco_root / "annotations/person_keypoints_val2017.json",
                          coco_root / "val2017", input_size=(64, 48), score_thr=0.1)
    assert len(ds) == 4 and ds.box_scores == [0.9, 0.85, 0.8, 0.7]
    r = ds.records[0]
    # box 40 x 92 at aspect 48 / 64 = 0.75 -> 69 x 92, padded x1.25 -> 86.25 x 115, centred on the box
    np.testing.assert_allclose(r.center, [80.0, 58.0])
    np.testing.assert_allclose(r.scale, [86.25, 115.0])
    s = ds[0]
    assert s["image"].shape == (3, 64, 48) and s["labels"].sum() == 0 and s["meta"]["ann_id"] == 0


def test_coco_eval_with_detections_and_oks_nms(coco_root):
    """A perfect pose estimator on detected boxes. Without NMS the ranked results are TP (0.9), FP
    (0.85, the duplicate on A), TP, TP of 3 persons: recall 1/3, 1/3, 2/3, 1 at precision 1, 1/2, 2/3,
    3/4; COCOeval's interpolated precision is 1 up to recall 1/3 (34 of its 101 recall points, 0 ..
    0.33) and 3/4 beyond (67 points), so AP = (34 + 67 x 3/4) / 101 at every OKS threshold. OKS-NMS
    removes the duplicate (OKS 1 with A's pose > 0.9) and AP = 1."""
    gt_file = coco_root / "annotations/person_keypoints_val2017.json"
    gt = json.loads(gt_file.read_text())
    ds = DetectionTopDown(_det_file(coco_root), gt_file, coco_root / "val2017", input_size=(64, 48), score_thr=0.1)
    records = _gt_records_for_crops(ds, gt)
    raw = detection_results(ds, records, nms_thr=None)
    assert [r["score"] for r in raw] == [0.9, 0.85, 0.8, 0.7]  # mean keypoint score 1 x box score
    kept = detection_results(ds, records, nms_thr=0.9)
    assert len(kept) == 3 and [r["ann_id"] for r in kept] == [0, 2, 3]
    ap_raw = coco_keypoint_eval(gt_file, raw)
    ap_nms = coco_keypoint_eval(gt_file, kept)
    assert ap_raw["AP"] == pytest.approx((34 + 67 * 0.75) / 101, abs=1e-6)
    assert ap_nms["AP"] == pytest.approx(1.0)


def test_evaluate_with_detections_end_to_end(coco_root, tmp_path):
    from lofr.engine.trainer import SupOnly

    torch.manual_seed(0)
    model = SupOnly(17, "small")
    gt_file = coco_root / "annotations/person_keypoints_val2017.json"
    ds = DetectionTopDown(_det_file(coco_root), gt_file, coco_root / "val2017", input_size=(64, 48))
    results, ap = evaluate_with_detections(model, ds, gt_file, batch_size=4, results_file=tmp_path / "r.json")
    assert 1 <= len(results) <= 5 and set(ap) >= {"AP", "AP50", "AR"} and 0.0 <= ap["AP"] <= 1.0
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(results))


def test_test_dev_results_written_in_server_format(coco_root, tmp_path):
    info = coco_root / "annotations/image_info_test-dev2017.json"
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([{"image_id": 7, "category_id": 1, "bbox": [60.0, 12.0, 40.0, 92.0], "score": 0.8}]))
    ds = DetectionTopDown(dets, info, coco_root / "test2017", input_size=(64, 48))  # image info: no annotations
    recs = [{"image_id": 7, "ann_id": 0, "keypoints": PERSON, "scores": np.full(17, 0.5)}]
    results = detection_results(ds, recs)
    path, zpath = write_test_dev_results(results, tmp_path / "out", method="lofrR50", image_info=info)
    assert path.name == "person_keypoints_test-dev2017_lofrR50_results.json"
    data = json.loads(path.read_text())
    assert len(data) == 1 and set(data[0]) == {"image_id", "category_id", "keypoints", "score"}
    assert data[0]["image_id"] == 7 and data[0]["category_id"] == 1 and len(data[0]["keypoints"]) == 51
    assert data[0]["score"] == pytest.approx(0.5 * 0.8)
    with zipfile.ZipFile(zpath) as z:
        assert z.namelist() == [path.name] and json.loads(z.read(path.name)) == data
    with pytest.raises(ValueError, match="not a test-dev image"):
        write_test_dev_results([{**data[0], "image_id": 8}], tmp_path / "out", image_info=info)
    with pytest.raises(ValueError, match="method name"):
        write_test_dev_results(data, tmp_path / "out", method="my_method")


def test_coco_layout_loads_with_labels(coco_root):
    ds = TopDownDataset(coco_root / "annotations/person_keypoints_train2017.json", coco_root / "train2017",
                        input_size=(64, 48), fill="edge")
    assert len(ds) == 3 and torch.equal(ds[0]["labels"], torch.ones(17))


# ============================================================================ MPII
def test_mpii_conversion(mpii_root):
    ann = mpii_root / "annotations"
    data, rep = mpii_to_coco(ann / "mpii_val.json", mpii_root / "images", ann / "mpii_gt_val.mat")
    assert rep["persons"] == 3 and rep["images"] == 2 and rep["json_mat_disagreements"] == 2
    assert [im["width"] for im in data["images"]] == [200, 200] and data["images"][0]["height"] == 160
    assert data["categories"][0]["keypoints"] == list(MPII16.keypoints)
    a1 = data["annotations"][1]
    assert a1["id"] == 2 and a1["image_id"] == 1
    kp = np.asarray(a1["keypoints"]).reshape(16, 3)
    # the mat wins: person 1's ankles (0, 5) are missing although the JSON marks them
    assert kp[0, 2] == 0 and kp[5, 2] == 0 and a1["num_keypoints"] == 14
    np.testing.assert_allclose(kp[3, :2], [90.0 - 0.5, 20.0 + 21.0 - 0.5])  # MATLAB 1-based -> lofr
    # box: centre (120, 60) moved down 15 * 0.5 = 7.5, side 200 * 0.5 = 100, minus 0.5
    assert a1["bbox"] == [69.5, 17.0, 100.0, 100.0] == mpii_box([120.0, 60.0], 0.5)
    assert a1["head_box"] == [99.5, 9.5, 159.5, 89.5]
    # without the mat: the JSON's flags, no head boxes, no image sizes
    d2, r2 = mpii_to_coco(ann / "mpii_val.json")
    assert d2["annotations"][1]["num_keypoints"] == 16 and "head_box" not in d2["annotations"][1]
    assert "width" not in d2["images"][0] and r2["json_mat_disagreements"] == 0


def test_mpii_converted_file_loads_with_labels_and_is_cached(mpii_root):
    ann = mpii_root / "annotations"
    out = ensure_coco(ann / "mpii_val.json", mpii_root / "images", ann / "mpii_gt_val.mat")
    assert out == ann / "mpii_val.mpii_gt_val.lofr-coco.json"
    stamp = out.stat().st_mtime_ns
    assert ensure_coco(ann / "mpii_val.json", mpii_root / "images", ann / "mpii_gt_val.mat") == out
    assert out.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert ensure_coco(out) == out  # a COCO file is used as it is
    with pytest.raises(DataError, match="already a COCO-format file"):
        ensure_coco(out, gt_mat=ann / "mpii_gt_val.mat")
    ds = TopDownDataset(out, mpii_root / "images", schema="mpii", input_size=(64, 64), fill="edge")
    assert len(ds) == 3
    labels = ds[2]["labels"]  # person 2: head top and both wrists missing in the mat
    assert labels.shape == (16,) and labels[[9, 10, 15]].sum() == 0 and labels.sum() == 13


def test_mpii_pckh_three_person_fixture(mpii_root):
    """Hand-computed PCKh@0.5: predictions = ground truth + (d, 0) with d = 5 px for head top,
    0 for the right wrist, 28 px for every other joint; thresholds 15 / 30 / 7.5 px (0.5 x 0.6 x
    head-box diagonal; with 0.5 x 0.5 x diagonal person 1 would miss at 28 > 25).
    Person 0 hits head top + r wrist (2 of 14 counted joints), person 1 hits all (12 of 12 counted:
    ankles missing), person 2 nothing (11 counted) -> Total = 14 / 37."""
    ann = mpii_root / "annotations"
    mat = ann / "mpii_gt_val.mat"
    d = np.full(16, 28.0)
    d[9], d[10] = 5.0, 0.0
    preds = np.stack([_mpii_joints(i) - 0.5 + np.stack([d, np.zeros(16)], 1) for i in range(3)])
    res = pckh_from_mat(preds, mat)
    assert res["total"] == pytest.approx(14 / 37)
    third = 1 / 3
    expect = [0, third, third, third, third, 0, third, third, third, 1, 1, third, third, third, third, 0.5]
    np.testing.assert_allclose(res["per_joint"], expect)
    assert res["table"] == pytest.approx({"Head": 1.0, "Shoulder": third, "Elbow": third, "Wrist": 0.75,
                                          "Hip": third, "Knee": third, "Ankle": 0.0, "Total": 14 / 37})
    assert "Total" in format_pckh_table(res) and "37.8" in format_pckh_table(res)
    # the same numbers through the converted file's head_box annotations and evaluate_keypoints
    out = ensure_coco(ann / "mpii_val.json", None, mat)
    records = [{"image_id": a["image_id"], "ann_id": a["id"], "keypoints": preds[a["id"] - 1], "scores": np.ones(16)}
               for a in json.loads(out.read_text())["annotations"]]
    rep = evaluate_keypoints(out, records, "mpii")
    assert rep.ap is None and rep.pckh["total"] == pytest.approx(14 / 37)
    np.testing.assert_allclose(records_to_preds(records[::-1], 3), preds)


def test_mpii_pred_mat_and_bad_inputs(mpii_root, tmp_path):
    preds = np.stack([_mpii_joints(i) - 0.5 for i in range(3)])
    p = write_pred_mat(preds, tmp_path / "pred.mat")
    np.testing.assert_allclose(sio.loadmat(str(p))["preds"], preds + 0.5)  # back to MATLAB 1-based
    with pytest.raises(DataError, match="has 3 persons but the MPII JSON has 2"):
        load_gt_mat(mpii_root / "annotations/mpii_gt_val.mat", n=2)
    with pytest.raises(ValueError, match="no prediction"):
        records_to_preds([{"ann_id": 1, "keypoints": preds[0]}], 3)
    bad = json.loads((mpii_root / "annotations/mpii_val.json").read_text())
    bad[1]["joints"] = bad[1]["joints"][:15]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"bad.json: entry 1 \(000000001.jpg\): 'joints' must be 16"):
        mpii_to_coco(f)
    sio.savemat(str(tmp_path / "x.mat"), {"jnt_missing": np.zeros((16, 3))})
    with pytest.raises(DataError, match="no 'dataset_joints'"):
        load_gt_mat(tmp_path / "x.mat")


# ============================================================================ CrowdPose
def test_crowdpose_gt_as_prediction_ap_is_one(crowdpose_root):
    gt = crowdpose_root / "annotations/crowdpose_test.json"
    ap = crowdpose_eval(gt, _results_from(gt_records(gt, "crowdpose")))
    for k in ("AP", "AP50", "AP75", "AP_easy", "AP_medium", "AP_hard"):
        assert ap[k] == pytest.approx(1.0), k


def _results_from(records):
    from lofr.engine.trainer import records_to_results

    return records_to_results(records)


def test_crowdpose_loads_with_labels(crowdpose_root):
    ds = TopDownDataset(crowdpose_root / "annotations/crowdpose_trainval.json", crowdpose_root / "images",
                        schema="crowdpose", input_size=(64, 48), fill="edge")
    assert len(ds) == 5 and ds[0]["labels"].shape == (14,) and ds[0]["labels"].sum() == 14


# ============================================================================ configs
def test_configs_reach_the_real_formats(mpii_root, coco_root):
    from lofr.engine.config import load_config
    from lofr.engine.trainer import build_datasets

    cfg = load_config("mpii-r50-256x256", [f"data.root={mpii_root}", "data.train_ann=annotations/mpii_train.json",
                                           "data.val_ann=annotations/mpii_val.json",
                                           "data.mpii_gt_mat=annotations/mpii_gt_val.mat", "data.input_size=[64,64]"])
    train_ds, val_ds = build_datasets(cfg)
    assert len(train_ds) == 3 and len(val_ds) == 3
    assert "head_box" in val_ds.coco.dataset["annotations"][0] and "head_box" not in train_ds.records[0].ann
    cfg = load_config("coco-r50-256x192", [f"data.root={coco_root}", "data.det_score_thr=0.1",
                                           "data.input_size=[64,48]", "data.det_file=person_detection_results/"
                                           "COCO_val2017_detections_AP_H_56_person.json"])
    assert len(detection_dataset(cfg)) == 4
    with pytest.raises(ValueError, match="det_file is empty"):
        detection_dataset(load_config("coco-r50-256x192"))


# ============================================================================ lofr data check
@pytest.mark.parametrize("schema", ["coco", "mpii", "crowdpose"])
def test_data_check_ok(schema, coco_root, mpii_root, crowdpose_root, tmp_path):
    root = {"coco": coco_root, "mpii": mpii_root, "crowdpose": crowdpose_root}[schema]
    rep = check_dataset(root, schema, out_png=tmp_path / "s.png")
    assert rep.ok, rep.format()
    assert Image.open(tmp_path / "s.png").size == ((200, 160) if schema == "mpii" else (HERE_W, HERE_H))
    assert any("official release" in w for w in rep.warnings)  # tiny fixtures are not the full release
    usable = {"coco": 3, "mpii": 3, "crowdpose": 5}[schema]
    assert rep.counts["val_ann"]["usable"] == usable
    if schema == "mpii":
        assert rep.counts["val_ann"]["head_boxes"] == 3
    if schema == "coco":
        assert rep.counts["det_file"] == {"detections": 6, "persons": 5}


def test_data_check_reports_actionable_problems(coco_root, crowdpose_root, tmp_path):
    for f in (coco_root / "val2017").iterdir():
        f.unlink()
    (coco_root / "val2017").rmdir()
    (coco_root / "train2017" / "000000000002.jpg").unlink()
    rep = check_dataset(coco_root, "coco", draw=False)
    assert not rep.ok
    text = rep.format()
    assert "val_img: none of ['val2017']" in text and "val2017.zip" in text
    assert "missing_image_file" in text and "unzip the image archive" in text
    # CrowdPose test file without crowdIndex; and the wrong --schema
    f = crowdpose_root / "annotations/crowdpose_test.json"
    data = json.loads(f.read_text())
    del data["images"][0]["crowdIndex"]
    f.write_text(json.dumps(data))
    rep = check_dataset(crowdpose_root, "crowdpose", draw=False)
    assert any("crowdIndex" in p for p in rep.problems)
    rep = check_dataset(crowdpose_root, "coco", draw=False)
    assert any("looks like a crowdpose dataset: did you mean --schema crowdpose" in p for p in rep.problems)
    (coco_root / "annotations/person_keypoints_train2017.json").write_text(f.read_text())  # 14 keypoints
    rep = check_dataset(coco_root, "coco", draw=False)
    assert any("do not have 17 keypoints" in p and "(--schema)" in p for p in rep.problems), rep.format()


def test_cmd_data_check(mpii_root, tmp_path, capsys):
    p = add_data_check_arguments(argparse.ArgumentParser())
    args = p.parse_args([str(mpii_root), "--schema", "mpii", "--out", str(tmp_path / "m.png")])
    assert cmd_data_check(args) == 0
    assert "OK" in capsys.readouterr().out
    args = p.parse_args([str(tmp_path / "nowhere"), "--schema", "mpii", "--no-draw"])
    assert cmd_data_check(args) == 1
    assert "is not a folder" in capsys.readouterr().out


def test_data_check_opens_every_annotation_file_and_names_file_and_ids(coco_root):
    ann = coco_root / "annotations"
    # the case: a truncated train file next to missing image folders is reported, not skipped
    for split in ("train", "val"):
        for f in (coco_root / f"{split}2017").iterdir():
            f.unlink()
        (coco_root / f"{split}2017").rmdir()
    train = ann / "person_keypoints_train2017.json"
    train.write_text(train.read_text()[:300])
    val = ann / "person_keypoints_val2017.json"
    data = json.loads(val.read_text())
    data["annotations"][0]["image_id"] = 99  # refers to no image
    data["annotations"][1]["category_id"] = 7  # refers to no category
    data["annotations"][2]["keypoints"] = data["annotations"][2]["keypoints"][:-3]  # 16 keypoints
    data["annotations"].append({**data["annotations"][1], "category_id": 1})  # id 2 a second time
    del data["images"][1]["file_name"]
    val.write_text(json.dumps(data))
    (ann / "image_info_test-dev2017.json").write_text('{"images": [{"id": 7}')  # truncated too
    rep = check_dataset(coco_root, "coco", draw=False)
    assert not rep.ok

    def problem(*parts):
        hits = [p for p in rep.problems if all(s in p for s in parts)]
        assert len(hits) == 1, f"{parts} in\n" + rep.format()
        return hits[0]

    problem("train_ann", str(train), "malformed JSON at line 1 column", "truncated")
    problem("test_info", "image_info_test-dev2017.json", "malformed JSON")
    problem(str(val), "image_id that is not in 'images'", "annotation id 1 (image id 99)")
    problem(str(val), "category_id that is not in 'categories'", "annotation id 2 (image id 1)")
    problem(str(val), "1 of 4 annotations do not have 17 keypoints", "annotation id 3 (image id 2)", "(--schema)")
    problem(str(val), "reuse an id", "annotation id 2 (image id 1)")
    problem(str(val), "1 of 2 images have no 'file_name'", "image id 2")
    assert "train2017.zip" in problem("train_img: none of")  # the missing folders are still listed


def test_validate_annotation_file_passes_a_clean_file_and_reports_structure(coco_root, tmp_path):
    from lofr.data.check import validate_annotation_file

    good = coco_root / "annotations" / "person_keypoints_val2017.json"
    data, problems = validate_annotation_file(good, "coco")
    assert problems == [] and len(data["annotations"]) == 3
    assert validate_annotation_file(good, "crowdpose")[1]  # 17 keypoints are not CrowdPose's 14
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    data, problems = validate_annotation_file(listed, "coco")
    assert data is None and problems == [f"{listed}: not a COCO keypoint annotation file: the top level is a "
                                         f"JSON list, not an object with ['images', 'annotations', 'categories']"]
    nocat = tmp_path / "nocat.json"
    nocat.write_text(json.dumps({"images": [], "annotations": []}))
    assert "no 'categories' list" in validate_annotation_file(nocat, "coco")[1][0]
