import numpy as np
import pytest

from lofr.data.schemas import COCO17, CROWDPOSE14, MPII16, SCHEMAS, KeypointSchema, get_schema

ALL = [COCO17, MPII16, CROWDPOSE14]


@pytest.mark.parametrize("schema", ALL, ids=lambda s: s.name)
def test_flip_index_is_an_involution_that_swaps_left_and_right(schema):
    perm = schema.flip_index
    assert np.array_equal(perm[perm], np.arange(schema.num_keypoints))
    for i, name in enumerate(schema.keypoints):
        mirrored = schema.keypoints[perm[i]]
        if "left" in name:
            assert mirrored == name.replace("left", "right")
        elif "right" in name:
            assert mirrored == name.replace("right", "left")
        else:
            assert perm[i] == i, f"{name} has no side and must map to itself"


@pytest.mark.parametrize("schema", ALL, ids=lambda s: s.name)
def test_kinematic_graph_is_valid_and_connected(schema):
    c = schema.num_keypoints
    assert len(schema.sigmas) == c
    assert len(set(map(frozenset, schema.edges))) == len(schema.edges), "duplicate edge"
    a = schema.adjacency()
    assert np.array_equal(a, a.T) and np.all(np.diag(a) == 1)
    # connected: repeated multiplication reaches every joint from joint 0
    reach = a[0] > 0
    for _ in range(c):
        reach = (a[reach].sum(0) > 0) | reach
    assert reach.all(), f"{schema.name}: kinematic graph is not connected"
    ei = schema.edge_index()
    assert ei.shape == (2, 2 * len(schema.edges) + c)


@pytest.mark.parametrize("schema", ALL, ids=lambda s: s.name)
def test_flip_keeps_the_graph(schema):
    perm = schema.flip_index
    a = schema.adjacency()
    assert np.array_equal(a[np.ix_(perm, perm)], a), "mirroring the skeleton must give the same skeleton"


def test_coco_constants_match_the_published_ones():
    assert COCO17.num_keypoints == 17 and MPII16.num_keypoints == 16 and CROWDPOSE14.num_keypoints == 14
    assert COCO17.keypoints[9] == "left_wrist" and COCO17.flip_index[9] == 10
    # cocoapi: sigmas = [.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89] / 10
    assert COCO17.sigmas[0] == pytest.approx(0.026) and COCO17.sigmas[11] == pytest.approx(0.107)
    assert COCO17.skeleton_coco[0] == [16, 14]


def test_get_schema_aliases_and_unknown_name():
    assert get_schema("COCO") is COCO17 and get_schema("crowd_pose") is CROWDPOSE14
    assert get_schema(MPII16) is MPII16 and set(SCHEMAS) == {"coco", "mpii", "crowdpose"}
    with pytest.raises(ValueError, match="unknown keypoint schema 'h36m'"):
        get_schema("h36m")


def test_bad_schema_is_refused():
    with pytest.raises(ValueError, match="bad pair"):
        KeypointSchema("x", ("a", "b"), edges=((0, 2),), flip_pairs=(), sigmas=(.1, .1), upper_body=(0,))
