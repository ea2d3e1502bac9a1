"""PCK / PCKh / pixel error against values worked out by hand (no images, no torch)."""

import math

import numpy as np
import pytest

from lofr.data.schemas import MPII16, KeypointSchema
from lofr.eval import box_diagonal, head_sizes, mean_pixel_error, pck, pckh

TINY = KeypointSchema(name="tiny", keypoints=("a", "b", "c"), edges=((0, 1), (1, 2)), flip_pairs=(),
                      sigmas=(.1, .1, .1), upper_body=(0,), groups={"top": (0,), "rest": (1, 2)})


@pytest.fixture
def three_people():
    """3 persons x 3 joints. Boxes (x, y, w, h) with 3-4-5 diagonals: 50, 100, 10.
    Offsets pred - gt and the distance d / box diagonal they give:
        person 0 (diag 50):  a (0, 3) d=3 r=.06 | b (0, 7) d=7 r=.14 | c (9, 12) d=15 r=.30
        person 1 (diag 100): a (0, 0) d=0 r=0   | b (0, 15) d=15 r=.15 | c UNLABELLED, 500 px off
        person 2 (diag 10):  a (0, 3) d=3 r=.30 | b (0, .5) d=.5 r=.05 | c (0, 1.5) d=1.5 r=.15
    """
    gt = np.array([[[10, 10], [20, 20], [15, 30]],
                   [[50, 40], [60, 70], [55, 80]],
                   [[2, 2], [3, 4], [4, 6]]], dtype=np.float64)
    off = np.array([[[0, 3], [0, 7], [9, 12]],
                    [[0, 0], [0, 15], [500, 500]],
                    [[0, 3], [0, .5], [0, 1.5]]], dtype=np.float64)
    mask = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1]], dtype=bool)
    boxes = np.array([[0, 0, 30, 40], [10, 10, 60, 80], [0, 0, 6, 8]], dtype=np.float64)
    return gt + off, gt, mask, boxes


def test_box_diagonal():
    np.testing.assert_allclose(box_diagonal([[0, 0, 30, 40], [5, 5, 6, 8]]), [50.0, 10.0])
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        box_diagonal([[1, 2, 3]])


def test_pck_by_hand(three_people):
    pred, gt, mask, boxes = three_people
    out = pck(pred, gt, mask, box_diagonal(boxes), thresholds=(0.1, 0.2), schema=TINY)
    # @0.1 hits: p0.a, p1.a, p2.b -> 3 of the 8 labelled joints; @0.2 also p0.b, p1.b, p2.c -> 6 / 8.
    assert out["overall"][0.1] == pytest.approx(3 / 8)
    assert out["overall"][0.2] == pytest.approx(6 / 8)
    # per joint: a 2/3, b 1/3, c 0/2 (@0.1); a 2/3, b 3/3, c 1/2 (@0.2); c has 2 labelled, not 3.
    np.testing.assert_allclose(out["per_joint"][0.1], [2 / 3, 1 / 3, 0.0])
    np.testing.assert_allclose(out["per_joint"][0.2], [2 / 3, 1.0, 0.5])
    np.testing.assert_array_equal(out["num_labelled"], [3, 3, 2])
    # groups pool joints: rest = b + c = 5 labelled, @0.1 1 hit, @0.2 4 hits.
    assert out["per_group"][0.1] == pytest.approx({"top": 2 / 3, "rest": 1 / 5})
    assert out["per_group"][0.2] == pytest.approx({"top": 2 / 3, "rest": 4 / 5})


def test_mean_pixel_error_by_hand(three_people):
    pred, gt, mask, _ = three_people
    out = mean_pixel_error(pred, gt, mask, schema=TINY)
    assert out["overall"] == pytest.approx((3 + 7 + 15 + 0 + 15 + 3 + 0.5 + 1.5) / 8)  # 5.625
    np.testing.assert_allclose(out["per_joint"], [(3 + 0 + 3) / 3, (7 + 15 + .5) / 3, (15 + 1.5) / 2])
    assert out["per_group"]["rest"] == pytest.approx((7 + 15 + .5 + 15 + 1.5) / 5)


def test_unlabelled_joint_is_ignored_even_if_nan(three_people):
    pred, gt, mask, boxes = three_people
    pred = pred.copy()
    pred[1, 2] = np.nan  # person 1's joint c is unlabelled: its prediction must not matter
    assert mean_pixel_error(pred, gt, mask)["overall"] == pytest.approx(5.625)
    assert pck(pred, gt, mask, box_diagonal(boxes))["overall"][0.2] == pytest.approx(6 / 8)
    pred[0, 0] = np.nan  # ... but a labelled one must raise
    with pytest.raises(ValueError, match="instance 0, joint 0"):
        mean_pixel_error(pred, gt, mask)


def test_joint_never_labelled_is_nan_not_zero(three_people):
    pred, gt, mask, boxes = three_people
    mask = mask.copy()
    mask[:, 2] = False
    out = pck(pred, gt, mask, box_diagonal(boxes))
    assert math.isnan(out["per_joint"][0.1][2])
    assert out["overall"][0.1] == pytest.approx(3 / 6)


def test_pck_bad_input(three_people):
    pred, gt, mask, boxes = three_people
    with pytest.raises(ValueError, match="norm of instance 2"):
        pck(pred, gt, mask, np.array([50.0, 100.0, 0.0]))
    with pytest.raises(ValueError, match="one value per instance"):
        pck(pred, gt, mask, np.array([50.0, 100.0]))
    with pytest.raises(ValueError, match=r"\(N, C, 2\)"):
        pck(pred[:, :2], gt, mask, box_diagonal(boxes))
    with pytest.raises(ValueError, match="mask"):
        pck(pred, gt, mask[:, :2], box_diagonal(boxes))
    with pytest.raises(ValueError, match="16 keypoints, arrays have 3"):  # a schema that does not fit the arrays
        mean_pixel_error(pred, gt, mask, schema=MPII16)


@pytest.fixture
def mpii_people():
    """3 MPII persons. Head boxes 30x40 (size .6*50 = 30, PCKh@.5 radius 15), 60x80 (radius 30),
    6x8 (radius 3). Offsets (0, dy):
        p0: all dy=10 (hit) except pelvis, thorax dy=100 and right_wrist dy=20 (misses)
        p1: all dy=20 (hit) except head_top dy=40 (miss); left_shoulder unlabelled (dy=1000)
        p2: all dy=4 (miss) except right_shoulder dy=2 (hit); left_ankle unlabelled
    """
    j = {n: i for i, n in enumerate(MPII16.keypoints)}
    c = MPII16.num_keypoints
    gt = np.stack([np.stack([100 + 10 * np.arange(c), 200 + 5 * np.arange(c)], -1)] * 3).astype(np.float64)
    dy = np.array([[10.0] * c, [20.0] * c, [4.0] * c])
    dy[0, [j["pelvis"], j["thorax"]]] = 100
    dy[0, j["right_wrist"]] = 20
    dy[1, j["head_top"]] = 40
    dy[1, j["left_shoulder"]] = 1000
    dy[2, j["right_shoulder"]] = 2
    mask = np.ones((3, c), dtype=bool)
    mask[1, j["left_shoulder"]] = False
    mask[2, j["left_ankle"]] = False
    pred = gt.copy()
    pred[..., 1] += dy
    heads = np.array([[0, 0, 30, 40], [5, 5, 65, 85], [0, 0, 6, 8]], dtype=np.float64)
    return pred, gt, mask, heads, j


def test_pckh_by_hand(mpii_people):
    pred, gt, mask, heads, j = mpii_people
    out = pckh(pred, gt, mask, heads, thr=0.5, schema="mpii")
    pj = out["per_joint"]
    assert pj[j["pelvis"]] == pytest.approx(1 / 3) and pj[j["thorax"]] == pytest.approx(1 / 3)
    assert pj[j["head_top"]] == pytest.approx(1 / 3)
    assert pj[j["right_shoulder"]] == pytest.approx(1.0)
    assert pj[j["left_shoulder"]] == pytest.approx(1 / 2)  # 2 labelled
    assert pj[j["left_ankle"]] == pytest.approx(1.0)  # 2 labelled
    assert pj[j["right_ankle"]] == pytest.approx(2 / 3)
    # Total excludes pelvis and thorax (HRNet / mmpose): 14 joints x 3 - 2 unlabelled = 40 labelled,
    # hits p0 13 + p1 12 + p2 1 = 26. (Including them would give 28 / 46.)
    assert out["total"] == pytest.approx(26 / 40)
    # Table 2 columns: Head = head_top only; Shoulder = unweighted mean of left / right (pooled: 4/5).
    assert out["table"]["Head"] == pytest.approx(1 / 3)
    assert out["table"]["Shoulder"] == pytest.approx(0.5 * (1 / 2 + 1.0))
    assert out["table"]["Ankle"] == pytest.approx(0.5 * (1.0 + 2 / 3))
    assert out["table"]["Total"] == out["total"]
    # head sizes given directly (0.6 * diagonal) give the same numbers
    same = pckh(pred, gt, mask, np.array([30.0, 60.0, 6.0]), schema="mpii")
    np.testing.assert_allclose(same["per_joint"], pj)
    np.testing.assert_allclose(head_sizes(heads), [30.0, 60.0, 6.0])


def test_pckh_exclude_override_and_groups(mpii_people):
    pred, gt, mask, heads, j = mpii_people
    out = pckh(pred, gt, mask, heads, exclude=())
    assert out["total"] == pytest.approx(28 / 46)
    # torso group = pelvis + thorax: p1's two hits of 6
    assert out["per_group"]["torso"] == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="not keypoints"):
        pckh(pred, gt, mask, heads, exclude=("spine",))


def test_pckh_threshold_is_inclusive():
    """MPII / HRNet count d <= thr * head size as correct."""
    gt = np.zeros((1, 16, 2))
    pred = gt.copy()
    pred[0, :, 0], pred[0, :, 1] = 9.0, 12.0  # d = 15 = 0.5 * 30 exactly
    out = pckh(pred, gt, np.ones((1, 16), bool), np.array([30.0]))
    assert out["total"] == 1.0
    pred[0, :, 1] = 12.01
    assert pckh(pred, gt, np.ones((1, 16), bool), np.array([30.0]))["total"] == 0.0
