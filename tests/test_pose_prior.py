"""The pose-prior decoder (lofr.eval.pose_prior): candidates, the exact tree maximisation, the fit."""

from __future__ import annotations

import itertools

import numpy as np

from lofr.data.schemas import get_schema
from lofr.eval.pose_prior import PosePrior, local_maxima, spanning_tree


def test_spanning_tree_reaches_every_coco_joint_once_parents_first():
    schema = get_schema("coco")
    tree = spanning_tree(schema.num_keypoints, schema.edges)
    children = [c for _, c in tree]
    assert len(tree) == schema.num_keypoints - 1 and sorted(children) == list(range(1, schema.num_keypoints))
    placed = {0}
    for p, c in tree:  # every parent is placed before its child
        assert p in placed
        placed.add(c)


def test_local_maxima_are_the_3x3_peaks_best_first_padded_with_the_best():
    m = np.array([[[[0.6, 0.0, 0.0, 0.4]]]])  # maxima at columns 0 and 3
    cells, vals = local_maxima(m, 3)
    assert cells[0, 0].tolist() == [[0, 0], [0, 3], [0, 0]]
    assert np.allclose(vals[0, 0], [0.6, 0.4, 0.6])


def _two_joint_prior(offset_std=0.5):
    # joint 1 sits one pixel right of joint 0; the per-joint spread is so wide that it hardly matters
    return PosePrior(mean=np.array([[2.0, 0.5], [2.0, 0.5]]), std=np.full((2, 2), 100.0), tree=[(0, 1)],
                     offset_mean=np.array([[1.0, 0.0]]), offset_std=np.full((1, 2), offset_std), input_size=(1, 4))


def test_decode_hand_computed_two_joints():
    # joint 0's map peaks at x = 0.5 (0.6) and 3.5 (0.4); joint 1's at 1.5 (0.45) and 3.5 (0.55). Each arg-max
    # alone: (0.5, 3.5), an offset of 3 px. Jointly, (0.5 -> 1.5): log 0.6 + log 0.45 = -1.31 with the offset
    # exactly right beats (3.5 -> 3.5): log 0.4 + log 0.55 - 0.5 (1 / 0.5)^2 = -3.51, and any pair through a
    # joint's mean position (x = 2, map value 0: log 1e-12)
    maps = np.array([[[[0.6, 0.0, 0.0, 0.4]], [[0.0, 0.45, 0.0, 0.55]]]])
    kp = _two_joint_prior().decode(maps, stride=1)
    assert np.allclose(kp[0], [[0.5, 0.5], [1.5, 0.5]])
    # a loose pose model gives each joint its own arg-max back
    kp = _two_joint_prior(offset_std=1e3).decode(maps, stride=1)
    assert np.allclose(kp[0], [[0.5, 0.5], [3.5, 0.5]])


def test_a_flat_map_leaves_the_joint_at_its_mean():
    maps = np.ones((1, 2, 1, 4)) / 4  # no information: every cell, and the mean's cell, scores the same
    kp = _two_joint_prior(offset_std=1e3).decode(maps, stride=1)
    assert np.allclose(kp[0], [[2.0, 0.5], [2.0, 0.5]])  # the per-joint Gaussian breaks the tie: the mean
    # with the tight offset model the pair moves apart by its mean offset (1.5 -> 2.5 costs nothing there)
    kp = _two_joint_prior().decode(maps, stride=1)
    assert np.allclose(kp[0, 1] - kp[0, 0], [1.0, 0.0])


def test_decode_is_the_exact_maximum_over_the_candidates():
    rng = np.random.default_rng(0)
    c, edges = 4, [(0, 1), (1, 2), (1, 3), (2, 3)]  # a cycle: the decoder uses its spanning tree
    poses = rng.normal([[10, 5], [12, 9], [9, 14], [15, 14]], 1.5, size=(200, c, 2))
    poses[rng.random((200, c)) < 0.1] = np.nan
    prior = PosePrior.fit(poses, edges, (20, 24))
    maps = rng.random((3, c, 5, 6)) ** 4
    kp = prior.decode(maps, stride=4, top_k=3)
    xy, logm = prior.candidates(maps, 4, top_k=3)

    def objective(b, pick):
        pts = np.stack([xy[b, j, k] for j, k in enumerate(pick)])
        val = sum(logm[b, j, k] for j, k in enumerate(pick))
        val += (-0.5 * ((pts - prior.mean) / prior.std) ** 2 - np.log(prior.std)).sum()
        for e, (p, ch) in enumerate(prior.tree):
            d = pts[ch] - pts[p] - prior.offset_mean[e]
            val += (-0.5 * (d / prior.offset_std[e]) ** 2 - np.log(prior.offset_std[e])).sum()
        return val, pts

    for b in range(3):
        best = max((objective(b, pick) for pick in itertools.product(range(4), repeat=c)), key=lambda t: t[0])
        assert np.allclose(kp[b], best[1])


def test_fit_means_offsets_and_the_unseen_joint():
    poses = np.array([[[1.0, 1.0], [3.0, 1.0], [np.nan, np.nan]], [[3.0, 3.0], [7.0, 3.0], [np.nan, np.nan]]])
    prior = PosePrior.fit(poses, [(0, 1), (1, 2)], (8, 10), min_std=0.1)
    assert np.allclose(prior.mean[:2], [[2.0, 2.0], [5.0, 2.0]])
    assert np.allclose(prior.std[:2], [[1.0, 1.0], [2.0, 1.0]])
    assert np.allclose(prior.mean[2], [5.0, 4.0]) and np.allclose(prior.std[2], [10.0, 8.0])  # crop centre, crop size
    assert prior.tree == [(0, 1), (1, 2)]
    assert np.allclose(prior.offset_mean[0], [3.0, 0.0]) and np.allclose(prior.offset_std[0], [1.0, 0.1])
