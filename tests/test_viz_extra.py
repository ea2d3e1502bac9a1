"""lofr.viz helpers of notebook 05: per-scale response maps of one joint, and the skeleton grid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lofr.data.schemas import COCO17  # noqa: E402
from lofr.viz import show_scale_maps, skeleton_grid  # noqa: E402


def test_show_scale_maps_panels_titles_masses_and_markers():
    maps = [torch.full((16, 12), 0.6 / 192), torch.full((8, 6), 0.3 / 48), torch.full((4, 3), 0.1 / 12)]
    fused = torch.full((16, 12), 1 / 192)
    fig = show_scale_maps(maps, fused, [4, 8, 16], image=np.zeros((64, 48, 3)), truth=(10.0, 20.0),
                          point=(30.0, 40.0), title="one joint")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["stride 4: 16x12\nmass 0.600", "stride 8: 8x6\nmass 0.300",
                                                 "stride 16: 4x3\nmass 0.100", "fused 16x12\nmass 1.000"]
    assert len(fig.axes) == 8  # 4 panels + 4 colour bars
    for ax in panels:
        assert ax.images[-1].get_extent() == [0, 48, 64, 0]  # every map stretched over the crop
        assert len(ax.collections) == 2  # truth and point
    assert fig._suptitle.get_text() == "one joint"
    plt.close(fig)


def test_show_scale_maps_skips_nan_markers_and_checks_shapes():
    fig = show_scale_maps([np.ones((2, 2))], np.ones((2, 2)), [4], truth=(np.nan, np.nan))
    assert all(len(ax.collections) == 0 for ax in fig.axes if ax.get_title())
    plt.close(fig)
    with pytest.raises(ValueError, match="one 2-D map per stride"):
        show_scale_maps([np.ones((2, 2))], np.ones((2, 2)), [4, 8])
    with pytest.raises(ValueError, match="one 2-D map per stride"):
        show_scale_maps([np.ones((1, 2, 2))], np.ones((2, 2)), [4])


def test_skeleton_grid_rows_columns_and_visible_joints():
    n, c = 3, COCO17.num_keypoints
    rng = np.random.default_rng(0)
    poses = {"ground truth": rng.uniform(0, 40, (n, c, 2)), "Baseline": rng.uniform(0, 40, (n, c, 2)),
             "LOFR": torch.as_tensor(rng.uniform(0, 40, (n, c, 2)))}
    visible = np.zeros((n, c), bool)
    visible[:, [5, 7, 9]] = True  # left shoulder - elbow - wrist: 3 joints, 2 edges
    fig = skeleton_grid(np.zeros((n, 64, 48, 3)), poses, visible, col_titles=["a", "b", "c"], title="t")
    axes = np.array(fig.axes).reshape(3, n)
    assert [ax.get_ylabel() for ax in axes[:, 0]] == list(poses)
    assert [ax.get_title() for ax in axes[0]] == ["a", "b", "c"]
    for ax in axes.flat:
        assert len(ax.lines) == 2 and len(ax.collections) == 3
        assert ax.get_xlim() == (0, 48) and ax.get_ylim() == (64, 0)
    plt.close(fig)


def test_skeleton_grid_checks_shapes():
    with pytest.raises(ValueError, match="poses\\['x'\\]"):
        skeleton_grid(np.zeros((2, 8, 8, 3)), {"x": np.zeros((2, 5, 2))})
    with pytest.raises(ValueError, match="visible"):
        skeleton_grid(np.zeros((2, 8, 8, 3)), {"x": np.zeros((2, 17, 2))}, visible=np.ones((2, 5)))
