"""COCO / CrowdPose AP through pycocotools / xtcocotools, results files, and the evaluation report.

Ground truths are tiny COCO-format dicts written here (no images are needed to evaluate).
"""

import dataclasses
import json
import math

import numpy as np
import pytest

from lofr.data.schemas import COCO17, CROWDPOSE14, MPII16
from lofr.eval import (coco_keypoint_eval, crops_from_gt, crowdpose_eval, evaluate_keypoints, format_per_joint,
                       format_report, gt_records, instance_score, mean_crop_pose, mean_pose_records, oks,
                       predictions_to_coco_results, write_results)

THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCOeval's OKS thresholds


def person(ann_id, image_id, box, uv, unlabelled=()):
    """A ground-truth person: keypoints at fractions ``uv`` (C, 2) of its box (x, y, w, h)."""
    x, y, w, h = box
    uv = np.asarray(uv, dtype=np.float64)
    v = np.full(len(uv), 2.0)
    v[list(unlabelled)] = 0
    xy = np.stack([x + uv[:, 0] * w, y + uv[:, 1] * h], -1) * (v[:, None] > 0)
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": [x, y, w, h],
            "area": 0.6 * w * h, "num_keypoints": int((v > 0).sum()),
            "keypoints": np.concatenate([xy, v[:, None]], 1).reshape(-1).tolist()}


def dataset(anns, n_images=3, crowd_index=(0.05, 0.5, 0.9)):
    images = [{"id": i + 1, "file_name": f"{i + 1}.jpg", "width": 640, "height": 480,
               "crowdIndex": crowd_index[i % len(crowd_index)]} for i in range(n_images)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def make_gt(c=17, seed=0):
    """5 persons on 3 images, random poses inside their boxes, a few unlabelled joints."""
    rng = np.random.default_rng(seed)
    boxes = [(10, 20, 100, 200), (200, 40, 120, 220), (30, 30, 150, 260), (300, 10, 90, 180), (50, 60, 130, 240)]
    imgs = [1, 1, 2, 3, 3]
    anns = [person(k + 1, imgs[k], b, rng.uniform(0.1, 0.9, (c, 2)), unlabelled=(k % 3, 7) if k else ())
            for k, b in enumerate(boxes)]
    return dataset(anns)


def as_results(gt, move=None):
    """Ground truth as COCO results (optionally moved by ``move(ann) -> (C, 2) offsets``)."""
    anns = gt["annotations"]
    kp = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)[..., :2]
    if move is not None:
        kp = kp + np.stack([move(a) for a in anns])
    return predictions_to_coco_results([a["image_id"] for a in anns], [a["id"] for a in anns], kp,
                                       np.ones(kp.shape[:2]))


# ----------------------------------------------------------------------------- AP = 1 for the GT
@pytest.mark.parametrize("as_path", [False, True])
def test_coco_gt_as_prediction_gives_ap_1(tmp_path, as_path):
    gt = make_gt()
    src = gt
    if as_path:
        src = tmp_path / "gt.json"
        src.write_text(json.dumps(gt))
    stats = coco_keypoint_eval(src, as_results(gt), schema="coco")
    assert stats["AP"] == 1.0 and stats["AP50"] == 1.0 and stats["AP75"] == 1.0 and stats["AR"] == 1.0
    assert stats["APL"] == 1.0 and stats["APM"] == -1.0  # every area is > 96^2: no medium persons
    assert list(stats) == ["AP", "AP50", "AP75", "APM", "APL", "AR", "AR50", "AR75", "ARM", "ARL"]


def test_crowdpose_gt_as_prediction_gives_ap_1():
    gt = make_gt(c=14)
    for a in gt["annotations"]:
        del a["area"]  # CrowdPose has no segmentation area
    stats = crowdpose_eval(gt, as_results(gt))
    assert list(stats) == ["AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"]
    assert set(stats.values()) == {1.0}


def test_crowdpose_levels_are_read_from_the_right_stats():
    """Perfect on the easy (image 1) and medium (image 2) images, far off on the hard one (image 3):
    checks that AP_easy / AP_medium / AP_hard are xtcocotools' stats[6:9] in that order."""
    gt = make_gt(c=14)
    res = as_results(gt, move=lambda a: np.full((14, 2), 80.0 if a["image_id"] == 3 else 0.0))
    stats = crowdpose_eval(gt, res, use_area=False)
    assert stats["AP_easy"] == 1.0 and stats["AP_medium"] == 1.0 and stats["AP_hard"] == 0.0
    assert 0.0 < stats["AP"] < 1.0


def test_crowdpose_needs_crowd_index():
    gt = make_gt(c=14)
    del gt["images"][1]["crowdIndex"]
    with pytest.raises(ValueError, match="image id 2: no numeric 'crowdIndex'"):
        crowdpose_eval(gt, as_results(gt))


# ----------------------------------------------------------------------------- hand OKS vs COCOeval
def test_oks_by_hand_two_joints_moved():
    sig = np.asarray(COCO17.sigmas)
    area = 5000.0
    gt = np.concatenate([np.arange(34, dtype=float).reshape(17, 2) * 3, np.full((17, 1), 2.0)], 1)
    gt[3, 2] = 0  # left_ear unlabelled: it must not count, wherever the prediction puts it
    pred = gt[:, :2].copy()
    pred[5, 0] += 6.0  # left_shoulder moved 6 px right
    pred[11] += (3.0, 4.0)  # left_hip moved by (3, 4): 5 px
    pred[3] += 1000.0
    e5 = math.exp(-6.0 ** 2 / (2 * area * (2 * 0.079) ** 2))
    e11 = math.exp(-5.0 ** 2 / (2 * area * (2 * 0.107) ** 2))
    assert oks(pred, gt, area, sig) == pytest.approx((14 + e5 + e11) / 16)  # 16 labelled joints
    with pytest.raises(ValueError, match="no labelled joint"):
        oks(pred, np.zeros((17, 3)), area, sig)


@pytest.mark.parametrize("evaluator", ["pycocotools", "xtcocotools-no-area", "crowdpose"])
@pytest.mark.parametrize("d", [5.0, 10.0, 15.0, 20.0, 28.0])
def test_cocoeval_flips_where_hand_oks_crosses_thresholds(d, evaluator):
    """One person with a single labelled joint (the left hip), predicted d px away: OKS = exp(-d^2 /
    (2 s^2 (2 sigma)^2)) and COCOeval's AP must be the share of thresholds .50:.05:.95 that OKS reaches."""
    schema = CROWDPOSE14 if evaluator == "crowdpose" else COCO17
    hip = schema.keypoints.index("left_hip")
    w, h = 100.0, 200.0
    uv = np.full((schema.num_keypoints, 2), 0.5)
    ann = person(1, 1, (10, 20, w, h), uv, unlabelled=[i for i in range(schema.num_keypoints) if i != hip])
    ann["area"] = 0.53 * w * h  # = the 0.53 * box area that use_area=False falls back to
    gt = dataset([ann], n_images=1)
    s2, k = 0.53 * w * h, 2 * 0.107
    hand = math.exp(-d ** 2 / (2 * s2 * k ** 2))
    assert np.abs(hand - THRESHOLDS).min() > 1e-3  # no threshold ties
    gt_kp = np.asarray(ann["keypoints"]).reshape(-1, 3)
    pred = gt_kp[:, :2].copy()
    pred[hip, 0] += d
    assert oks(pred, gt_kp, s2, schema.sigmas) == pytest.approx(hand)
    res = predictions_to_coco_results([1], None, pred[None], np.ones((1, schema.num_keypoints)))
    if evaluator == "pycocotools":
        stats = coco_keypoint_eval(gt, res, schema=schema)
    elif evaluator == "xtcocotools-no-area":
        stats = coco_keypoint_eval(gt, res, schema=schema, use_area=False)
    else:
        stats = crowdpose_eval(gt, res, schema=schema)
    assert stats["AP"] == pytest.approx(np.mean(hand >= THRESHOLDS))
    assert stats["AP50"] == pytest.approx(float(hand >= 0.5))
    assert stats["AP75"] == pytest.approx(float(hand >= 0.75))


def test_ap50_1_ap75_0_for_oks_about_06():
    ann = person(1, 1, (0, 0, 100, 200), np.full((17, 2), 0.5), unlabelled=range(1, 17))  # only the nose
    gt = dataset([ann], n_images=1)
    k2, s2 = (2 * 0.026) ** 2, ann["area"]
    d = math.sqrt(-math.log(0.6) * 2 * s2 * k2)  # the distance that gives OKS 0.6 exactly ...
    pred = np.asarray(ann["keypoints"]).reshape(17, 3)[:, :2].copy()
    pred[0, 1] += d * 1.02  # ... moved 2 % further: OKS ~0.59
    hand = oks(pred, np.asarray(ann["keypoints"]).reshape(17, 3), s2, COCO17.sigmas)
    assert 0.58 < hand < 0.6
    stats = coco_keypoint_eval(gt, predictions_to_coco_results([1], None, pred[None], np.ones((1, 17))))
    assert stats["AP50"] == pytest.approx(1.0) and stats["AP75"] == 0.0 and stats["AP"] == pytest.approx(0.2)


def test_sigmas_come_from_the_schema():
    """The same 14-joint data scored with CrowdPose's sigmas vs all-tiny sigmas differ (and COCOeval's
    17 default constants could not even be broadcast against 14 joints)."""
    gt = make_gt(c=14)
    res = as_results(gt, move=lambda a: np.full((14, 2), 4.0))
    base = coco_keypoint_eval(gt, res, schema=CROWDPOSE14)["AP"]
    tight = dataclasses.replace(CROWDPOSE14, name="tight", sigmas=(0.01,) * 14)
    assert coco_keypoint_eval(gt, res, schema=tight)["AP"] < base


# ----------------------------------------------------------------------------- results files
def test_instance_score_rule():
    assert instance_score([0.1, 0.5, 0.9], box_score=0.8) == pytest.approx(0.8 * (0.5 + 0.9) / 2)
    assert instance_score([0.1, 0.2, 0.05]) == 0.0  # nothing above 0.2 (strictly)


def test_results_json_accepted_by_loadres(tmp_path):
    from pycocotools.coco import COCO

    gt = make_gt()
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    kp = np.zeros((2, 17, 2), dtype=np.float32) + 50
    res = predictions_to_coco_results(np.array([1, 3]), np.array([1, 4]), kp, np.full((2, 17), 0.5, np.float32),
                                      box_scores=[1.0, 0.5])
    assert [r["score"] for r in res] == pytest.approx([0.5, 0.25])
    assert res[0]["keypoints"][:3] == [50.0, 50.0, 0.5] and len(res[0]["keypoints"]) == 51
    path = write_results(tmp_path / "out" / "results.json", res)
    coco = COCO(str(gt_path))
    dt = coco.loadRes(str(path))
    assert sorted(dt.getImgIds(imgIds=[1, 3])) == [1, 3] and len(dt.anns) == 2
    assert sorted(a["ann_id"] for a in dt.anns.values()) == [1, 4]
    # a results path works too
    assert coco_keypoint_eval(gt_path, path)["AP"] == 0.0


def test_write_results_is_atomic(tmp_path):
    res = as_results(make_gt())
    path = write_results(tmp_path / "r.json", res)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    before = path.read_text()
    with pytest.raises(TypeError, match="cannot write a object"):
        write_results(path, [{"image_id": object()}])  # not JSON: fails half way
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left ...
    assert path.read_text() == before  # ... and the old file untouched


def test_bad_results_entries_raise_naming_the_entry(tmp_path):
    gt = make_gt()
    res = as_results(gt)
    res[1]["keypoints"] = res[1]["keypoints"][:-3]
    with pytest.raises(ValueError, match=r"entry 1 \(image_id 1\): keypoints must be a flat list of 51 .* got 48"):
        coco_keypoint_eval(gt, res)
    res = as_results(gt)
    res[2]["image_id"] = 999
    path = write_results(tmp_path / "bad.json", res)
    with pytest.raises(ValueError, match=r"bad.json: entry 2 \(image_id 999\): unknown image_id 999"):
        coco_keypoint_eval(gt, path)
    res = as_results(gt)
    res[0]["keypoints"][4] = float("nan")
    with pytest.raises(ValueError, match="entry 0 .*non-finite"):
        coco_keypoint_eval(gt, res)
    with pytest.raises(ValueError, match="no results"):
        coco_keypoint_eval(gt, [])


def test_bad_ground_truth_names_the_annotation(tmp_path):
    gt = make_gt()
    del gt["annotations"][2]["area"]
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    with pytest.raises(ValueError, match=r"gt.json: annotation id 3: no numeric 'area'.*use_area=False"):
        coco_keypoint_eval(path, as_results(gt))
    assert coco_keypoint_eval(path, as_results(gt), use_area=False)["AP"] == 1.0
    gt = make_gt()
    gt["annotations"][4]["keypoints"] = gt["annotations"][4]["keypoints"][:-3]
    with pytest.raises(ValueError, match="annotation id 5: 48 keypoint values"):
        coco_keypoint_eval(gt, as_results(make_gt()))


def test_quiet_unless_verbose_and_inputs_untouched(capsys):
    gt = make_gt()
    res = as_results(gt)
    coco_keypoint_eval(gt, res)
    crowd = make_gt(c=14)
    crowdpose_eval(crowd, as_results(crowd))
    assert capsys.readouterr().out == ""
    assert set(res[0]) == {"image_id", "ann_id", "category_id", "keypoints", "score"}  # loadRes adds keys
    assert "ignore" not in gt["annotations"][0]  # COCOeval adds flags to the gt it is given
    coco_keypoint_eval(gt, res, verbose=True)
    assert "Average Precision" in capsys.readouterr().out


def test_crop_space_round_trip_gives_ap_1():
    """Predict in crop space (a rotated 256x192 crop of each padded box), map back with crop_to_image."""
    from lofr.data.transforms import affine_points, box_to_center_scale, crop_to_image, get_affine_transform

    gt = make_gt()
    hw, rot = (256, 192), 25.0
    ids, kps = [], []
    for a in gt["annotations"]:
        c, s = box_to_center_scale(a["bbox"], hw[1] / hw[0])
        crop = affine_points(np.asarray(a["keypoints"]).reshape(17, 3)[:, :2], get_affine_transform(c, s, rot, hw))
        kps.append((crop, crop_to_image(crop, c, s, rot, hw)))
        ids.append(a["image_id"])
    crop_space = np.stack([k[0] for k in kps])
    image_space = np.stack([k[1] for k in kps])
    scores = np.ones((len(ids), 17))
    assert coco_keypoint_eval(gt, predictions_to_coco_results(ids, None, image_space, scores))["AP"] == 1.0
    assert coco_keypoint_eval(gt, predictions_to_coco_results(ids, None, crop_space, scores))["AP"] < 0.1


# ----------------------------------------------------------------------------- report
def test_report_ground_truth_and_prior():
    gt = make_gt()
    crops = crops_from_gt(gt)
    prior = mean_pose_records(mean_crop_pose(gt), crops["image_ids"], crops["ann_ids"], crops["centers"],
                              crops["scales"])
    rep = evaluate_keypoints(gt, gt_records(gt), "coco", prior=prior)
    assert rep.ap["AP"] == 1.0 and rep.pck == {0.1: 1.0, 0.2: 1.0} and rep.px_error == 0.0
    assert rep.num_instances == 5 and rep.num_gt_without_prediction == 0
    assert rep.num_labelled.sum() == 17 * 5 - 2 * 4 and rep.num_labelled[7] == 1  # joint 7 labelled once
    assert rep.prior.pck[0.2] < 1.0 and rep.prior.px_error > 1.0 and rep.prior.ap["AP"] < 1.0
    table = format_report({"ground truth": rep})
    lines = table.splitlines()
    assert lines[0].split() == ["method", "AP", "AP50", "AP75", "APM", "APL", "AR", "PCK@0.1", "PCK@0.2",
                                "px", "err"]
    assert lines[2].split() == ["ground", "truth", "1.000", "1.000", "1.000", "-", "1.000", "1.000", "1.000",
                                "1.000", "0.00"]
    assert lines[3].startswith("mean-pose prior")
    assert len({len(line) for line in lines}) == 1  # fixed width
    per_joint = format_per_joint(rep.prior, "coco").splitlines()
    assert len(per_joint) == 2 + 17 + 1 + 3 + 1 and per_joint[-1].split()[:2] == ["all", str(17 * 5 - 8)]


def test_mean_pose_prior_is_exact_when_every_person_has_the_same_pose():
    """Same pose (as box fractions), boxes of one aspect ratio -> identical crop-space poses, so the
    mean-pose prior mapped back through crop_to_image must reproduce every ground truth."""
    uv = np.random.default_rng(1).uniform(0.1, 0.9, (17, 2))
    anns = [person(k + 1, k % 3 + 1, b, uv) for k, b in enumerate([(0, 0, 50, 100), (100, 50, 100, 200),
                                                                    (20, 300, 80, 160)])]
    gt = dataset(anns)
    crops = crops_from_gt(gt, "coco", input_hw=(64, 48))
    mean = mean_crop_pose(gt, input_hw=(64, 48))
    prior = mean_pose_records(mean, crops["image_ids"], crops["ann_ids"], crops["centers"], crops["scales"],
                              input_hw=(64, 48))
    rep = evaluate_keypoints(gt, prior, "coco")
    assert rep.px_error < 1e-6 and rep.pck[0.1] == 1.0 and rep.ap["AP"] == 1.0
    # the mean is that crop-space pose. Boxes are w = h / 2, narrower than the input's 48 / 64, so the
    # region is widened to 0.75 h and padded: x = 24 + (u - 1/2) * w * 48 / (1.25 * 0.75 h) = 24 + 25.6 (u - 1/2)
    np.testing.assert_allclose(mean[:, 0], 24 + 25.6 * (uv[:, 0] - 0.5), atol=1e-4)
    np.testing.assert_allclose(mean[:, 1], 32 + 64 / 1.25 * (uv[:, 1] - 0.5), atol=1e-4)
    for a in gt["annotations"]:
        a["keypoints"][2] = a["keypoints"][3 * 15 + 2] = 0  # nobody labels the nose or the left ankle
    with pytest.raises(ValueError, match=r"keypoints \['nose', 'left_ankle'\] are never labelled"):
        mean_crop_pose(gt)


def test_report_counts_missing_predictions_and_rejects_bad_records():
    gt = make_gt()
    recs = gt_records(gt)
    rep = evaluate_keypoints(gt, recs[1:], "coco")
    assert rep.num_gt_without_prediction == 1 and rep.num_instances == 4
    assert rep.pck[0.1] == 1.0 and rep.ap["AR"] < 1.0  # the missed person costs recall
    bad = [dict(recs[0], ann_id=999)]
    with pytest.raises(ValueError, match="record 0 .*ann_id 999 is not an annotation"):
        evaluate_keypoints(gt, bad, "coco")
    with pytest.raises(ValueError, match="record 1 .*already predicted by record 0"):
        evaluate_keypoints(gt, [recs[0], recs[0]], "coco")
    with pytest.raises(ValueError, match=r"record 0 .*\(17, 2\)"):
        evaluate_keypoints(gt, [dict(recs[0], keypoints=np.zeros((14, 2)))], "coco")
    with pytest.raises(ValueError, match="belongs to image_id 1"):
        evaluate_keypoints(gt, [dict(recs[0], image_id=2)], "coco")


def test_report_crowdpose_and_mpii():
    crowd = make_gt(c=14)
    rep = evaluate_keypoints(crowd, gt_records(crowd, "crowdpose"), "crowdpose")
    assert rep.ap["AP_hard"] == 1.0 and rep.pck[0.2] == 1.0
    row = format_report({"gt": rep}).splitlines()[2].split()
    assert row[4:6] == ["-", "-"]  # no APM / APL on CrowdPose
    mpii = make_gt(c=16)
    for a in mpii["annotations"]:
        x, y, w, h = a["bbox"]
        a["head_box"] = [x, y, x + w / 4, y + h / 6]
    recs = gt_records(mpii, MPII16)
    recs[0]["keypoints"] = recs[0]["keypoints"] + 1000.0  # person 1: every joint wrong
    rep = evaluate_keypoints(mpii, recs, "mpii")
    assert rep.ap is None
    # 14 joints count (pelvis, thorax excluded); 4 of them unlabelled over persons 2-5; person 1 misses 14
    assert rep.pckh["total"] == pytest.approx(1 - 14 / (14 * 5 - 4))
    assert "PCKh" in format_per_joint(rep, "mpii")
