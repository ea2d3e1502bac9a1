import copy
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conftest import IMG_H, IMG_W, PERSON, base_coco, draw_dots, write_coco
from lofr.data.errors import DataError
from lofr.data.topdown import AugConfig, CropParams, TopDownDataset, load_rgb, mean_pose_prior
from lofr.data.transforms import IMAGENET_MEAN, IMAGENET_STD, affine_points, crop_affine

SMALL = (64, 48)
LW, RW, LA = 9, 10, 15  # left wrist, right wrist, left ankle (COCO-17)


def unnormalize(img):
    return img * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]


def ds(ann_img, **kw):
    kw.setdefault("input_size", SMALL)
    kw.setdefault("fill", "edge")
    return TopDownDataset(*ann_img, **kw)


def by_ann(d, ann_id):
    return next(r.index for r in d.records if r.ann_id == ann_id)


# ------------------------------------------------------------------------------------ basics
def test_standard_filter_is_counted_and_announced(tiny_coco, caplog):
    with caplog.at_level(logging.INFO, logger="lofr.data"):
        d = ds(tiny_coco)
    assert len(d) == 3 and [r.ann_id for r in d.records] == [10, 11, 14]
    assert d.report["annotations"] == 5 and d.report["kept"] == 3
    assert d.report["excluded_iscrowd"] == 1 and d.report["excluded_no_keypoints"] == 1
    assert d.report["skipped_bad"] == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "lofr.data"]
    assert len(lines) == 1 and "kept 3 of 5" in lines[0] and "iscrowd=1: 1" in lines[0]
    assert d.coco.imgs[1]["file_name"] == "a.png" and d.schema.name == "coco" and d.input_size == SMALL


def test_sample_fields_shapes_and_collate(tiny_coco):
    d = ds(tiny_coco, input_size=(64, 48), heatmap_stride=4)
    s = d[0]
    assert s["image"].shape == (3, 64, 48) and s["image"].dtype == torch.float32
    for k in ("labels", "visible", "visibility", "target_weight"):
        assert s[k].shape == (17,) and s[k].dtype == torch.float32
    assert s["keypoints"].shape == (17, 2) and s["heatmaps"].shape == (17, 16, 12)
    assert float(s["has_location"]) == 1.0
    batch = next(iter(DataLoader(d, batch_size=3)))
    assert batch["image"].shape == (3, 3, 64, 48) and batch["meta"]["center"].shape == (3, 2)
    assert batch["meta"]["ann_id"].tolist() == [10, 11, 14] and batch["meta"]["bbox"].shape == (3, 4)


def test_eval_is_deterministic_and_labels_follow_annotation(tiny_coco):
    d = ds(tiny_coco)
    a, b = d[1], d[1]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
    # annotation 11 labels only the upper body (first 11 COCO joints)
    assert a["labels"].tolist() == [1.0] * 11 + [0.0] * 6
    assert a["visibility"].tolist() == [2.0] * 11 + [0.0] * 6
    assert torch.equal(a["visible"], a["labels"]) and torch.equal(a["target_weight"], a["labels"])


def test_keypoints_hand_case(tiny_coco):
    d = ds(tiny_coco, input_size=(256, 192))
    s = d[0]  # annotation 10: box (60, 12, 40, 92) -> centre (80, 58), region 86.25 x 115
    nose = PERSON[0]
    assert np.allclose(s["keypoints"][0].numpy(), [96 + (nose[0] - 80) * 192 / 86.25,
                                                   128 + (nose[1] - 58) * 256 / 115], atol=1e-3)
    assert np.allclose(s["meta"]["center"].numpy(), [80, 58]) and np.allclose(s["meta"]["scale"].numpy(),
                                                                              [86.25, 115])


# -------------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("rotation,flip", [(0.0, False), (30.0, False), (-20.0, True)])
def test_bright_dots_land_at_the_keypoints(tiny_coco, rotation, flip):
    d = ds(tiny_coco, input_size=(128, 96))
    i = by_ann(d, 14)  # image b holds only this person's dots
    r = d.records[i]
    s = d.get(i, CropParams(r.center, r.scale * 0.9, rotation, flip))
    img = unnormalize(s["image"]).mean(0)  # (H, W)
    for c in np.flatnonzero(s["labels"].numpy()):
        x, y = s["keypoints"][c].tolist()
        # the 3x3 dot is bright within 1 image px of the keypoint: the crop pixel holding it is too
        assert img[int(y), int(x)] > 0.95, f"no dot at keypoint {c} ({x:.1f}, {y:.1f})"
    assert img.median() < 0.3  # and the background stays dark


def test_flip_keeps_a_left_wrist_a_left_wrist(tmp_path, coco_data):
    ann = coco_data["annotations"][4]  # annotation 14: label the left wrist only on the arms
    k = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
    k[RW] = 0
    ann["keypoints"], ann["num_keypoints"] = k.ravel().tolist(), 16
    d = ds(write_coco(tmp_path, coco_data))
    i = by_ann(d, 14)
    r = d.records[i]
    plain, flipped = d.get(i, CropParams(r.center, r.scale)), d.get(i, CropParams(r.center, r.scale, flip=True))
    assert plain["labels"][LW] == 1 and plain["labels"][RW] == 0
    # in the mirrored crop the subject's left wrist is on the other side and is now a *right* wrist
    assert flipped["labels"][RW] == 1 and flipped["labels"][LW] == 0
    W = SMALL[1]
    assert np.allclose(flipped["keypoints"][RW].numpy(), [W - plain["keypoints"][LW, 0], plain["keypoints"][LW, 1]],
                       atol=1e-4)
    assert flipped["visibility"][LW] == 0 and flipped["meta"]["flipped"] == 1
    # the mirrored image is the plain crop read right to left
    assert torch.allclose(flipped["image"], plain["image"].flip(-1), atol=1e-4)


def test_label_is_zero_when_augmentation_moves_keypoint_out_of_the_crop(tiny_coco):
    d = ds(tiny_coco)
    i = by_ann(d, 10)
    r = d.records[i]
    full = d.get(i, CropParams(r.center, r.scale))
    assert full["labels"].sum() == 17
    # zoom into the head: ankles (annotated, v=2) leave the crop -> label 0, location kept
    head = d.get(i, CropParams(np.array([80.0, 25.0]), r.scale * 0.35))
    assert head["labels"][0] == 1 and head["labels"][LA] == 0 and head["visibility"][LA] == 2
    assert head["keypoints"][LA, 1] >= SMALL[0]
    assert head["target_weight"][LA] == 0 and head["heatmaps"][LA].sum() == 0


def test_annotation_label_rule_ignores_the_crop_but_keeps_location_targets_honest(tiny_coco):
    """labels='annotation' (strictly location-free): a joint cut out of the crop by augmentation stays
    labelled present (deciding otherwise needs its coordinates); the heatmap target weight still says
    there is nothing to regress inside the crop. Half-body augmentation (picks its crop from the
    coordinates) is refused with that rule, in the dataset and in the config."""
    d = ds(tiny_coco, labels="annotation")
    i = by_ann(d, 10)
    r = d.records[i]
    head = d.get(i, CropParams(np.array([80.0, 25.0]), r.scale * 0.35))
    assert head["labels"][LA] == 1 and head["labels"].sum() == 17
    assert head["target_weight"][LA] == 0 and head["visible"][LA] == 0 and head["heatmaps"][LA].sum() == 0
    crop_rule = ds(tiny_coco).get(i, CropParams(np.array([80.0, 25.0]), r.scale * 0.35))
    assert crop_rule["labels"][LA] == 0 and torch.equal(crop_rule["image"], head["image"])
    with pytest.raises(ValueError, match="half-body"):
        ds(tiny_coco, labels="annotation", train=True, aug=AugConfig(half_body_prob=0.3))
    ds(tiny_coco, labels="annotation", train=True, aug=AugConfig(half_body_prob=0.0))
    with pytest.raises(ValueError, match="labels must be one of"):
        ds(tiny_coco, labels="visible")

    from lofr.config_utils import ConfigError
    from lofr.engine.config import load_config

    with pytest.raises(ConfigError, match="half_body_prob=0"):
        load_config("synth-cpu", ["data.labels=annotation"])
    assert load_config("synth-cpu", ["data.labels=annotation", "data.aug.half_body_prob=0"]).data.labels == "annotation"


def test_heatmap_peaks_at_the_keypoint(tiny_coco):
    d = ds(tiny_coco, input_size=(64, 48), heatmap_stride=4)
    s = d[0]
    for c in range(17):
        x, y = s["keypoints"][c].tolist()
        peak = np.unravel_index(int(s["heatmaps"][c].argmax()), (16, 12))
        assert peak == (int(y // 4), int(x // 4))
    assert s["heatmaps"].max() <= 1.0


def test_train_augmentation_is_seeded_and_in_range(tiny_coco):
    d = ds(tiny_coco, train=True, aug=AugConfig(half_body_prob=0.0))
    torch.manual_seed(0)
    a = [d[0]["meta"] for _ in range(40)]
    torch.manual_seed(0)
    b = [d[0]["meta"] for _ in range(40)]
    assert [m["rotation"] for m in a] == [m["rotation"] for m in b]
    rot = np.array([m["rotation"] for m in a])
    ratio = np.array([float(m["scale"][0] / d.records[0].scale[0]) for m in a])
    flips = np.array([m["flipped"] for m in a])
    assert np.all(np.abs(rot) <= 40) and 0 < (rot == 0).sum() < 40
    assert np.all((ratio >= 0.65) & (ratio <= 1.35)) and ratio.std() > 0.05
    assert 0 < flips.sum() < 40


def test_half_body_crop_covers_one_half(tiny_coco):
    aug = AugConfig(half_body_prob=1.0, scale_range=(1.0, 1.0), rot_prob=0.0, flip_prob=0.0)
    d = ds(tiny_coco, train=True, aug=aug)
    i = by_ann(d, 10)
    centres = {tuple(np.round(d.crop_params(i, np.random.default_rng(s)).center, 2)) for s in range(20)}
    # upper body (joints 0-10): x 64.5..96.5, y 17.5..60.5; lower body (11-16): y 62.5..98.5
    assert centres == {(80.5, 39.0), (80.5, 80.5)}


# ----------------------------------------------------------------------------------- fills
def test_zeros_fill_pads_black_and_edge_does_not(tmp_path, coco_data):
    # annotation 11 moved to the left border: its padded crop (60 px wide) reaches to x = -4
    coco_data["annotations"][1]["bbox"] = [2.0, 12.0, 48.0, 52.0]
    ann_img = write_coco(tmp_path, coco_data, images={"a.png": Image.new("RGB", (IMG_W, IMG_H), (90, 90, 90)),
                                                       "b.png": Image.new("RGB", (IMG_W, IMG_H), (90, 90, 90))})
    zeros, edge = ds(ann_img, fill="zeros"), ds(ann_img, fill="edge")
    i = by_ann(zeros, 11)
    z, e = unnormalize(zeros[i]["image"]), unnormalize(edge[i]["image"])
    assert torch.allclose(z[:, :, 0], torch.zeros(3, SMALL[0]), atol=1e-5)  # black left column
    assert torch.allclose(e, torch.full_like(e, 90 / 255), atol=1e-5)


def test_leakfree_replaces_only_the_surroundings_in_training(tmp_path, coco_data):
    ann_img = write_coco(tmp_path, coco_data, images={"a.png": Image.new("RGB", (IMG_W, IMG_H), (90, 90, 90)),
                                                       "b.png": Image.new("RGB", (IMG_W, IMG_H), (200, 0, 0))})
    d = ds(ann_img, fill="leakfree", train=True)
    i, other = by_ann(d, 10), by_ann(d, 14)
    r = d.records[i]
    s = d.get(i, CropParams(r.center, r.scale, background=(other, 0.5, 0.2, 0.7)))
    img = unnormalize(s["image"])  # (3, H, W)
    inside = affine_points([[60.5, 12.5], [99.5, 103.5]], crop_affine(r.center, r.scale, 0, SMALL))
    (x0, y0), (x1, y1) = np.ceil(inside[0]).astype(int), np.floor(inside[1]).astype(int)
    assert torch.allclose(img[:, y0:y1, x0:x1], torch.tensor([90 / 255] * 3)[:, None, None], atol=1e-4)
    assert torch.allclose(img[:, :, 0], torch.tensor([200 / 255, 0, 0])[:, None], atol=1e-4)  # left strip
    # drawn in about background_prob of the training samples, never at eval
    drawn = [d.crop_params(i, np.random.default_rng(s)).background is not None for s in range(200)]
    assert 0.4 < np.mean(drawn) < 0.6
    ev = ds(ann_img, fill="leakfree", train=False)
    assert ev.crop_params(i).background is None
    assert torch.equal(ev[i]["image"], ds(ann_img, fill="edge")[i]["image"])


# ---------------------------------------------------------------------------------- images
@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "LA"])
def test_image_modes_are_converted_to_rgb8(tmp_path, mode):
    rgb = np.zeros((6, 5, 3), dtype=np.uint8)
    rgb[2, 3] = (255, 255, 255)
    rgb[4, 1] = (128, 128, 128)
    if mode == "I;16":
        im = Image.fromarray(rgb[:, :, 0].astype(np.uint16) * 257)
        assert im.mode == "I;16"
    elif mode == "P":
        im = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        im = Image.fromarray(rgb).convert(mode)
    im.save(tmp_path / "x.png")
    out = load_rgb(tmp_path / "x.png")
    assert out.shape == (6, 5, 3) and out.dtype == np.uint8
    assert tuple(out[2, 3]) == (255, 255, 255) and tuple(out[4, 1]) == (128, 128, 128) and out[0, 0].max() == 0


def test_dataset_reads_a_16bit_grayscale_image(tmp_path, coco_data):
    dots = draw_dots((IMG_W, IMG_H), [tuple(p) for p in PERSON]).convert("L")
    im16 = Image.fromarray(np.asarray(dots, dtype=np.uint16) * 257)
    ann_img = write_coco(tmp_path, coco_data, images={"a.png": im16, "b.png": dots.convert("RGBA")})
    d = ds(ann_img)
    for i in range(len(d)):
        assert d[i]["image"].shape == (3, *SMALL)


# ------------------------------------------------------------------------------ bad input
def test_missing_annotation_file(tmp_path):
    with pytest.raises(DataError, match="nope.json.*not found"):
        TopDownDataset(tmp_path / "nope.json", tmp_path)


def test_malformed_json_names_file_and_position(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('{"images": [],\n "annotations": [}')
    with pytest.raises(DataError, match=r"bad\.json: malformed JSON at line 2 column"):
        TopDownDataset(f, tmp_path)


def test_not_a_coco_file(tmp_path):
    f = tmp_path / "list.json"
    f.write_text("[1, 2]")
    with pytest.raises(DataError, match=r"list\.json.*'images' and 'annotations'"):
        TopDownDataset(f, tmp_path)


def test_unknown_schema(tiny_coco):
    with pytest.raises(DataError, match=r"ann\.json.*unknown keypoint schema 'body25'"):
        ds(tiny_coco, schema="body25")


def test_missing_image_file(tmp_path, coco_data):
    ann_img = write_coco(tmp_path, coco_data)
    (ann_img[1] / "b.png").unlink()
    with pytest.raises(DataError, match=r"ann\.json: annotation id 14 \(image id 2\): image file not found.*b\.png"):
        ds(ann_img)


def _bad(tmp_path, coco_data, ann_index, **changes):
    coco_data["annotations"][ann_index].update(changes)
    return write_coco(tmp_path, coco_data)


@pytest.mark.parametrize("ann_index,changes,message", [
    (0, {"keypoints": [1.0, 2.0, 2] * 16}, r"annotation id 10 .*'keypoints' has 48 values.*needs 51"),
    (0, {"num_keypoints": 12}, r"annotation id 10 .*num_keypoints is 12 but 17 keypoints have v>0"),
    (0, {"keypoints": [1.0, 2.0, 3] + [1.0, 2.0, 2] * 16}, r"annotation id 10 .*visibility flags.*\[2\.0, 3\.0\]"),
    (1, {"bbox": [10.0, 12.0, 0.0, 52.0]}, r"annotation id 11 .*zero area"),
    (1, {"bbox": [200.0, 12.0, 40.0, 52.0]}, r"annotation id 11 .*outside the 160x120 image"),
    (3, {"num_keypoints": 5}, r"annotation id 13 .*num_keypoints is 5 but every keypoint has v=0"),
    (0, {"image_id": 99}, r"annotation id 10 \(image id 99\).*not in 'images'"),
], ids=["kp_length", "num_keypoints", "visibility", "zero_area", "box_outside", "all_unlabelled", "image_id"])
def test_bad_annotations_raise_naming_file_and_id(tmp_path, coco_data, ann_index, changes, message):
    ann_img = _bad(tmp_path, coco_data, ann_index, **changes)
    with pytest.raises(DataError, match=r"ann\.json: " + message) as e:
        ds(ann_img)
    assert isinstance(e.value, ValueError)


def test_on_bad_skip_counts_reasons(tmp_path, coco_data, caplog):
    coco_data["annotations"][0]["num_keypoints"] = 3
    coco_data["annotations"][1]["bbox"] = [1.0, 1.0, 0.0, 0.0]
    with caplog.at_level(logging.INFO, logger="lofr.data"):
        d = ds(write_coco(tmp_path, coco_data), on_bad="skip")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "SKIPPED as bad" in warned[0].getMessage()
    assert len(d) == 1 and d.records[0].ann_id == 14
    assert d.report["skipped_bad"] == 2
    assert d.report["skipped_bad_reasons"] == {"num_keypoints_mismatch": 1, "zero_area_box": 1}
    assert any("annotation id 10" in m for m in d.skipped)


def test_box_partly_outside_is_clipped_and_counted(tmp_path, coco_data):
    coco_data["annotations"][1]["bbox"] = [-5.0, 12.0, 55.0, 52.0]
    d = ds(write_coco(tmp_path, coco_data))
    assert d.report["clipped_box"] == 1
    assert np.allclose(d.records[by_ann(d, 11)].bbox, [0, 12, 50, 52])


def test_truncated_image_fails_at_load_time_naming_the_file(tmp_path, coco_data):
    ann_img = write_coco(tmp_path, coco_data)
    Image.new("RGB", (IMG_W, IMG_H), (9, 9, 9)).save(ann_img[1] / "full.jpg")
    data = (ann_img[1] / "full.jpg").read_bytes()
    (ann_img[1] / "b.png").write_bytes(data[: len(data) // 2])  # truncated (and misnamed) file
    d = ds(ann_img)  # annotations are fine: construction does not open images
    i = by_ann(d, 14)
    with pytest.raises(DataError, match=r"b\.png: image id 2: unreadable or truncated image"):
        d[i]
    d_skip = ds(ann_img, on_bad="skip")
    s = d_skip[i]  # replaced by the next sample, counted
    assert s["meta"]["ann_id"] != 14 and d_skip.report["replaced_unreadable"] == 1


def test_image_size_mismatch_is_reported(tmp_path, coco_data):
    ann_img = write_coco(tmp_path, coco_data, images={"a.png": Image.new("RGB", (100, 100)),
                                                       "b.png": Image.new("RGB", (IMG_W, IMG_H))})
    d = ds(ann_img)
    with pytest.raises(DataError, match=r"a\.png: image id 1: image is 100x100 but the annotation file says 160x120"):
        d[0]


# --------------------------------------------------------------------------- semi-weak subset
def _many(tmp_path, n):
    data = base_coco()
    template = data["annotations"][0]
    data["annotations"] = [dict(copy.deepcopy(template), id=100 + k) for k in range(n)]
    return write_coco(tmp_path, data)


def test_labelled_fraction_subset_is_seeded_and_sized(tmp_path):
    ann_img = _many(tmp_path, 40)

    def subset(f, seed):
        d = ds(ann_img, labelled_fraction=f, seed=seed)
        return {r.ann_id for r in d.records if r.has_location == 1.0}

    assert len(subset(0.25, 0)) == 10 and len(subset(0.1, 0)) == 4 and len(subset(0.0, 0)) == 0
    assert subset(0.25, 0) == subset(0.25, 0)
    assert subset(0.25, 0) != subset(0.25, 1)
    assert len(subset(None, 0)) == 40
    d = ds(ann_img, labelled_fraction=0.25)
    flags = [float(d[i]["has_location"]) for i in range(len(d))]
    assert sum(flags) == 10
    with pytest.raises(ValueError, match="labelled_fraction"):
        ds(ann_img, labelled_fraction=1.5)


# ------------------------------------------------------------------------------- pose prior
def test_mean_pose_prior_hand_case(tiny_coco):
    d = ds(tiny_coco, input_size=(256, 192))
    prior = mean_pose_prior(d)
    assert prior.shape == (17, 2)
    # left ankle is labelled only in annotations 10 and 14 (same box, same place)
    ankle = PERSON[LA]
    assert np.allclose(prior[LA], [96 + (ankle[0] - 80) * 192 / 86.25, 128 + (ankle[1] - 58) * 256 / 115], atol=1e-3)
    # nose: mean over the three instances
    noses = [d.get(i)["keypoints"][0].numpy() for i in range(3)]
    assert np.allclose(prior[0], np.mean(noses, axis=0), atol=1e-3)


def test_location_prior_hand_case(tiny_coco):
    """location_prior: the mean and sample std (ddof 1) of each joint's crop position; NaN below two sightings."""
    from lofr.data.topdown import crop_poses, location_prior

    d = ds(tiny_coco, input_size=(256, 192))
    mean, std = location_prior(d)
    assert np.allclose(mean[0], mean_pose_prior(d)[0])
    noses = np.array([d.get(i)["keypoints"][0].numpy() for i in range(3)])  # the three instances' noses
    assert np.allclose(std[0], noses.std(axis=0, ddof=1), atol=1e-3)
    # the left ankle is seen twice at the same place: std 0 (set_location_prior floors it)
    assert np.allclose(std[LA], 0.0, atol=1e-4)
    seen = np.isfinite(crop_poses(d)[..., 0]).sum(axis=0)
    assert np.isnan(mean[seen < 2]).all() and np.isfinite(mean[seen >= 2]).all()


def test_person_mask_is_warped_segmentation(tiny_coco):
    d = ds(tiny_coco, with_person_mask=True)
    s = d.get(by_ann(d, 10))  # polygon = the box (60..100) x (12..104), crop region 86.25 wide
    m = s["person_mask"][0]
    assert m.shape == SMALL and m[32, 24] == 1 and m[32, 0] == 0 and m[32, 47] == 0
    frac = m[32].mean().item()  # 40 / 86.25 of the width (plus one edge pixel either side)
    assert abs(frac - 40 / 86.25) < 3 / 48
    json.dumps(d.report)  # the report is plain data


def test_bad_arguments(tiny_coco):
    with pytest.raises(ValueError, match="not divisible by heatmap_stride"):
        ds(tiny_coco, input_size=(66, 48))
    with pytest.raises(ValueError, match="fill"):
        ds(tiny_coco, fill="black")
    with pytest.raises(ValueError, match="on_bad"):
        ds(tiny_coco, on_bad="ignore")


def test_eval_sampling_leaves_the_torch_rng_alone(tiny_coco):
    d = ds(tiny_coco)
    torch.manual_seed(0)
    d[0]
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(0).get_state())
