"""The explorer (lofr/explorer.py) on a tiny untrained LOFR and the small SynthPose val set."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from lofr.data.schemas import COCO17  # noqa: E402
from lofr.data.topdown import TopDownDataset  # noqa: E402
from lofr.explorer import VIEWS, available_views, compute_views, explore, explorer_figure, \
    record_cross_attention  # noqa: E402
from lofr.models import LOFR, Baseline, LOFRConfig  # noqa: E402


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LOFR(config=LOFRConfig.cpu_small()).eval()


@pytest.fixture(scope="module")
def val_ds(synthpose_small):
    return TopDownDataset(synthpose_small / "annotations" / "person_keypoints_val2017.json",
                          synthpose_small / "val2017", input_size=(64, 48), train=False)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _present_joint(ds, index):
    return int(np.flatnonzero(ds[index]["labels"].numpy() > 0)[0])


def test_per_head_hook_averages_to_dec_attn_and_is_removed(model):
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), record_cross_attention(model) as per_head:
        out = model(x)
    assert len(per_head) == 2 and per_head[0].shape == (2, 4, 17, 192 + 48 + 12)  # (B, h, C, L)
    assert torch.allclose(torch.stack(per_head).mean(dim=2), out["dec_attn"], atol=1e-6)
    assert torch.allclose(per_head[1].sum(-1), torch.ones(2, 4, 17), atol=1e-5)  # softmax over L (Eq. 6)
    with torch.no_grad():
        model(x)
    assert len(per_head) == 2  # hooks gone


@pytest.mark.parametrize("scale, hw", [(4, (16, 12)), (8, (8, 6)), (16, (4, 3))])
def test_map_shapes_per_scale(model, val_ds, scale, hw):
    v = compute_views(model, val_ds, 0, "left_wrist", 1, "mean", scale)
    assert v.maps["attention"].shape == v.maps["key_map"].shape == hw
    assert v.maps["cam"].shape == (4, 3) and v.strides["cam"] == 16
    assert v.maps["fused"].shape == (16, 12) and v.strides["fused"] == 4
    assert v.strides["attention"] == v.strides["key_map"] == scale
    assert v.rgb.shape == (64, 48, 3) and v.pred.shape == (2,)
    assert v.joint == COCO17.keypoints.index("left_wrist") and v.joint_name == "left_wrist"


@pytest.mark.parametrize("head", ["mean", 0, 3])
@pytest.mark.parametrize("layer", [0, 1])
def test_attention_sums_to_one_over_the_scales_and_fused_sums_to_one(model, val_ds, layer, head):
    views = [compute_views(model, val_ds, 2, 5, layer, head, s) for s in model.strides]
    total = sum(v.maps["attention"].sum() for v in views)
    assert total == pytest.approx(1.0, abs=1e-5)
    assert [v.attention_share for v in views] == pytest.approx([v.maps["attention"].sum() for v in views])
    assert views[0].maps["fused"].sum() == pytest.approx(1.0, abs=1e-5)
    assert (views[0].maps["cam"] >= 0).all()  # ReLU in Eq. 1
    assert 0 <= views[0].maps["key_map"].max() <= 1  # presence-scaled Gaussians


def test_the_chosen_joint_layer_head_and_scale_are_the_ones_read(model, val_ds):
    x = val_ds[3]["image"][None]
    with torch.no_grad(), record_cross_attention(model) as per_head:
        out = model(x)
    c = 7  # left_elbow
    v = compute_views(model, val_ds, 3, "left_elbow", 0, 2, 8)
    want = per_head[0][0, 2, c, 192:192 + 48].reshape(8, 6)  # layer 0, head 2, the stride-8 cells
    np.testing.assert_allclose(v.maps["attention"], want.numpy(), atol=1e-6)
    np.testing.assert_allclose(v.maps["key_map"], out["key_maps"][1][0, c].numpy(), atol=1e-6)
    np.testing.assert_allclose(v.maps["cam"], out["cams"][0, c].numpy(), atol=1e-6)
    np.testing.assert_allclose(v.maps["fused"], out["response_fused"][0, c].numpy(), atol=1e-6)
    assert v.prob == pytest.approx(float(out["logits"][0, c].sigmoid()))
    pred = model.predict(x)["keypoints"][0, c].numpy()
    np.testing.assert_allclose(v.pred, pred, atol=1e-5)
    other = compute_views(model, val_ds, 3, "right_elbow", 0, 2, 8)
    assert not np.allclose(other.maps["attention"], v.maps["attention"])


@pytest.mark.parametrize("view", list(VIEWS))
def test_figure_draws_the_chosen_map_with_title_marks_and_colour_bar(model, val_ds, view):
    c = _present_joint(val_ds, 1)
    name = COCO17.keypoints[c]
    fig = explorer_figure(model, val_ds, 1, name, 0, 1, 16, view)
    v = compute_views(model, val_ds, 1, name, 0, 1, 16)
    ax = fig.axes[0]
    drawn = ax.images[1].get_array()  # [0] is the crop, [1] the map over it
    np.testing.assert_allclose(np.asarray(drawn), v.maps[view])
    title = ax.get_title()
    assert name in title and VIEWS[view] in title and f"stride {v.strides[view]}" in title
    if view == "attention":
        assert "layer 0, head 1" in title
    assert len(fig.axes) == 2  # the map and its colour bar
    truth, pred = ax.collections  # o then x
    np.testing.assert_allclose(truth.get_offsets()[0], v.truth)
    np.testing.assert_allclose(pred.get_offsets()[0], v.pred)


def test_figure_into_a_given_axis_and_absent_joint(model, val_ds):
    absent = [(i, c) for i in range(len(val_ds)) for c in np.flatnonzero(val_ds[i]["labels"].numpy() == 0)]
    i, c = absent[0]
    fig, axes = plt.subplots(1, 2)
    assert explorer_figure(model, val_ds, i, int(c), 1, "mean", 4, "fused", ax=axes[1]) is fig
    assert "absent" in axes[1].get_title() and len(axes[1].collections) == 1  # only the prediction


def test_bad_arguments_raise_clear_errors(model, val_ds):
    ok = dict(index=0, joint="nose", layer=0, head="mean", scale=4)
    for bad, match in [(dict(index=len(val_ds)), "index"), (dict(index=-1), "index"),
                       (dict(joint="left_hand"), "unknown joint 'left_hand'"), (dict(joint=17), "joint"),
                       (dict(layer=2), r"layer .*\[0, 2\)"), (dict(head=4), "head"), (dict(head="max"), "head"),
                       (dict(scale=32), r"strides \[4, 8, 16\]")]:
        with pytest.raises(ValueError, match=match):
            compute_views(model, val_ds, **{**ok, **bad})
    with pytest.raises(ValueError, match="unknown view 'heatmap'"):
        explorer_figure(model, val_ds, **ok, view="heatmap")


def test_baseline_offers_attention_and_fused_only(val_ds):
    torch.manual_seed(0)
    base = Baseline(config=LOFRConfig.cpu_small()).eval()
    assert available_views(base) == ["attention", "fused"]
    v = compute_views(base, val_ds, 0, "nose", 1, 0, 4)
    assert set(v.maps) == {"attention", "fused"}
    assert v.maps["attention"].sum() == pytest.approx(1.0, abs=1e-5)  # one scale: all the attention
    with pytest.raises(ValueError, match="does not have"):
        explorer_figure(base, val_ds, 0, "nose", 1, 0, 4, "cam")
    with pytest.raises(ValueError, match="strides"):
        compute_views(base, val_ds, 0, "nose", 1, 0, 8)


def test_compute_views_restores_training_mode(val_ds):
    m = LOFR(config=LOFRConfig.cpu_small()).train()
    compute_views(m, val_ds, 0, 0, 0, "mean", 4)
    assert m.training


def test_explore_wires_the_widgets(model, val_ds, monkeypatch):
    calls = []
    monkeypatch.setattr("lofr.explorer.explorer_figure", lambda *a, **k: calls.append(k) or plt.figure())
    w = explore(model, val_ds, index=2, joint="left_knee", view="attention")
    ctl = {c.description: c for c in w.children[:-1]}
    assert ctl["crop"].max == len(val_ds) - 1 and ctl["crop"].value == 2
    assert list(ctl["joint"].options) == list(COCO17.keypoints) and ctl["joint"].value == "left_knee"
    assert ctl["decoder layer"].max == 1 and list(ctl["stride"].options) == [4, 8, 16]
    assert list(ctl["head"].options) == ["mean", 0, 1, 2, 3]
    assert [k for _, k in ctl["view"].options] == list(VIEWS)
    ctl["head"].value = 3  # a change redraws with the new choice
    assert calls[-1] == dict(index=2, joint="left_knee", layer=1, head=3, scale=4, view="attention")


def test_colour_bar_labels_carry_their_exponent_and_no_offset_text(model, val_ds):
    """Attention values are ~1e-5..1e-2: the default formatter drew a common "1e-5" above the bar at the
    full font size, over the neighbouring panel's title; each label now carries its own exponent."""
    fig = explorer_figure(model, val_ds, 1, 0, 0, "mean", 4, "attention")
    fig.canvas.draw()
    bar = fig.axes[1]
    assert bar.yaxis.get_offset_text().get_text() == ""
    labels = [t.get_text() for t in bar.get_yticklabels()]
    ticks = bar.yaxis.get_majorticklocs()
    assert len(labels) == len(ticks) >= 2
    assert all(float(t) == pytest.approx(x, rel=1e-2, abs=1e-9) for t, x in zip(labels, ticks)), (labels, ticks)


def test_explorer_controls_show_their_whole_label(model, val_ds):
    w = explore(model, val_ds)
    ctl = {c.description: c for c in w.children[:-1]}
    assert ctl["decoder layer"].style.description_width == "initial"  # the default 90 px cut it
