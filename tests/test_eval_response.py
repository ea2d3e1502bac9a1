"""Table 7's normalised response at the true joints, on hand-made maps (values worked out by hand)."""

import math

import numpy as np
import pytest

from lofr.eval.response import average_joint_response, normalised_response_at, pool_response

# one 2 x 3 map on a stride-4 grid: cell centres at x = 2, 6, 10 and y = 2, 6. Max 8, so normalised:
#   [[0, .25, .5 ],
#    [.125, 0, 1 ]]
MAP = np.array([[0.0, 2.0, 4.0], [1.0, 0.0, 8.0]])


def one(kp, mode, m=MAP):
    return float(normalised_response_at(m[None, None], np.array(kp, float)[None, None], 4, mode)[0, 0])


def test_bilinear_by_hand():
    assert one((6, 2), "bilinear") == pytest.approx(0.25)  # exactly on cell (0, 1)'s centre
    assert one((8, 4), "bilinear") == pytest.approx((0.25 + 0.5 + 0.0 + 1.0) / 4)  # between four centres
    assert one((4, 2), "bilinear") == pytest.approx(0.125)  # halfway between cells (0, 0) and (0, 1)
    assert one((10, 3), "bilinear") == pytest.approx(0.75 * 0.5 + 0.25 * 1.0)  # a quarter of the way down
    assert one((1, 7), "bilinear") == pytest.approx(0.125)  # outer half-cell: clamped to cell (1, 0)'s centre
    assert one((11.9, 7.9), "bilinear") == pytest.approx(1.0)


def test_nearest_by_hand():
    assert one((6, 2), "nearest") == pytest.approx(0.25)
    assert one((8, 4), "nearest") == pytest.approx(1.0)  # pixel (8, 4) lies in cell (1, 2)
    assert one((7.9, 3.9), "nearest") == pytest.approx(0.25)  # still cell (0, 1)
    assert one((0, 0), "nearest") == 0.0 and one((11.9, 7.9), "nearest") == 1.0


def test_normalisation_edge_cases():
    assert one((5, 5), "bilinear", np.zeros((2, 3))) == 0.0  # a map that is 0 everywhere
    assert one((5, 5), "nearest", np.full((2, 3), 1 / 6)) == pytest.approx(1.0)  # flat: 1 everywhere
    assert one((8, 4), "bilinear", 3 * MAP) == pytest.approx(one((8, 4), "bilinear"))  # scale-free


def test_average_over_present_joints():
    # 2 crops x 2 joints; joint 1 of crop 1 is absent and must not count
    maps = np.stack([np.stack([MAP, MAP[::-1]]), np.stack([MAP, MAP])])  # (2, 2, 2, 3)
    kps = np.array([[[10, 6], [2, 2]], [[2, 2], [10, 6]]], float)  # (2, 2, 2)
    present = np.array([[1, 1], [1, 0]], bool)
    out = average_joint_response(maps, kps, present, stride=4, mode="nearest")
    # joint 0: crop 0 at cell (1, 2) = 1, crop 1 at cell (0, 0) = 0 -> 0.5; joint 1: crop 0's flipped
    # map at cell (0, 0) = .125 (crop 1 absent)
    np.testing.assert_allclose(out["per_joint"], [0.5, 0.125])
    np.testing.assert_array_equal(out["count"], [2, 1])
    # every map here is MAP or its mirror: normalised cells 0, .25, .5, .125, 0, 1 -> mean 1.875 / 6
    np.testing.assert_allclose(out["map_mean"], [1.875 / 6] * 2)
    assert out["map_mean_all"] == pytest.approx(1.875 / 6)
    assert out["mean"] == pytest.approx((1 + 0 + 0.125) / 3)
    # pooling two halves by their sums gives the same numbers
    a, b = (average_joint_response(maps[k:k + 1], kps[k:k + 1], present[k:k + 1], 4, "nearest") for k in (0, 1))
    pooled = pool_response(a["sum"] + b["sum"], a["map_sum"] + b["map_sum"], a["count"] + b["count"])
    np.testing.assert_allclose(pooled["per_joint"], out["per_joint"])
    assert pooled["mean"] == pytest.approx(out["mean"])
    never = average_joint_response(maps, kps, np.zeros((2, 2), bool), 4)
    assert math.isnan(never["mean"]) and np.isnan(never["per_joint"]).all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="mode"):
        normalised_response_at(MAP[None, None], np.zeros((1, 1, 2)), 4, mode="cubic")
    with pytest.raises(ValueError, match=r"\(N, C, 2\)"):
        normalised_response_at(MAP[None, None], np.zeros((1, 2, 2)), 4)
    with pytest.raises(ValueError, match=">= 0"):
        normalised_response_at(-MAP[None, None], np.zeros((1, 1, 2)), 4)
    with pytest.raises(ValueError, match="present"):
        average_joint_response(MAP[None, None], np.zeros((1, 1, 2)), np.ones((2, 1)), 4)
