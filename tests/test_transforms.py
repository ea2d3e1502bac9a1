import numpy as np
import pytest
import torch

from lofr.data.transforms import (
    affine_points, box_to_center_scale, crop_affine, crop_to_image, gaussian_heatmaps,
    get_affine_transform, half_body_center_scale, heatmap_sigma, normalize_image, warp_image,
)


def test_box_to_center_scale_hand_case():
    # 40 x 92 box at aspect 0.75: too narrow -> widened to 69, then padded by 1.25
    c, s = box_to_center_scale([60, 12, 40, 92], aspect_ratio=0.75)
    assert np.allclose(c, [80, 58]) and np.allclose(s, [86.25, 115])


def test_affine_hand_case_centre_and_rotation_direction():
    m = get_affine_transform((100, 50), (96, 128), 0.0, (256, 192))
    assert np.allclose(affine_points([100, 50], m), [96, 128])  # centre -> input centre
    assert np.allclose(affine_points([148, 114], m), [192, 256])  # region corner -> input corner
    # +90 degrees turns the content counter-clockwise: a point right of the centre goes up
    m90 = get_affine_transform((100, 50), (96, 128), 90.0, (256, 192))
    assert np.allclose(affine_points([110, 50], m90), [96, 128 - 10 * 2])


@pytest.mark.parametrize("rotation", [0.0, 33.0, -40.0, 90.0])
@pytest.mark.parametrize("flip", [False, True])
def test_affine_round_trip_crop_to_image(rotation, flip):
    rng = np.random.default_rng(0)
    center, scale, out_hw = (123.4, 77.7), (61.0, 81.3), (64, 48)
    pts = rng.uniform(0, 200, size=(50, 2))
    m = crop_affine(center, scale, rotation, out_hw, flip=flip)
    crop = affine_points(pts, m)
    if flip:  # the documented way back: un-mirror, then the inverse affine
        crop = np.stack([out_hw[1] - crop[:, 0], crop[:, 1]], axis=1)
    back = crop_to_image(crop, center, scale, rotation, out_hw)
    assert np.abs(back - pts).max() < 0.5
    assert np.abs(back - pts).max() < 1e-6  # in fact exact


def test_flip_mirrors_x_around_the_crop_width():
    m0 = crop_affine((50, 50), (40, 40), 0.0, (32, 32))
    m1 = crop_affine((50, 50), (40, 40), 0.0, (32, 32), flip=True)
    p0, p1 = affine_points([[40.0, 45.0]], m0)[0], affine_points([[40.0, 45.0]], m1)[0]
    assert np.allclose(p1, [32 - p0[0], p0[1]])


@pytest.mark.parametrize("rotation", [0.0, 25.0, -60.0])
def test_bright_dot_lands_at_the_transformed_coordinate(rotation):
    img = torch.zeros(3, 90, 120)
    i, j = 41, 67  # the dot pixel; its centre is (67.5, 41.5)
    img[:, i, j] = 1.0
    center, scale, out_hw = (60.0, 45.0), (40.0, 30.0), (96, 128)  # 3.2x zoom
    m = crop_affine(center, scale, rotation, out_hw)
    crop = warp_image(img, m, out_hw)[0]
    expected = affine_points([j + 0.5, i + 0.5], m)  # (x, y) in the crop
    # the intensity-weighted centre of the warped dot is the transformed pixel centre
    ys, xs = torch.meshgrid(torch.arange(96) + 0.5, torch.arange(128) + 0.5, indexing="ij")
    w = crop / crop.sum()
    got = np.array([(w * xs).sum().item(), (w * ys).sum().item()])
    assert np.abs(got - expected).max() < 0.5
    iy, ix = np.unravel_index(int(crop.argmax()), crop.shape)
    assert abs(ix + 0.5 - expected[0]) <= 1.5 and abs(iy + 0.5 - expected[1]) <= 1.5


def test_identity_warp_reproduces_the_image():
    img = torch.rand(3, 20, 30)
    m = crop_affine((15.0, 10.0), (30.0, 20.0), 0.0, (20, 30))
    assert torch.allclose(warp_image(img, m, (20, 30)), img, atol=1e-5)


def test_fill_zeros_vs_edge_outside_the_image():
    img = torch.full((3, 10, 10), 0.7)
    m = crop_affine((5.0, 5.0), (30.0, 30.0), 0.0, (30, 30))  # region 3x the image
    z, e = warp_image(img, m, (30, 30), fill="zeros"), warp_image(img, m, (30, 30), fill="edge")
    assert torch.all(z[:, 0, 0] == 0) and torch.allclose(z[:, 15, 15], torch.tensor(0.7))
    assert torch.allclose(e, torch.full_like(e, 0.7))
    with pytest.raises(ValueError, match="fill"):
        warp_image(img, m, (30, 30), fill="reflect")


def test_gaussian_heatmap_hand_case_and_peak():
    # stride 4: the keypoint (10, 6) is the centre of cell (row 1, col 2)
    hm = gaussian_heatmaps([[10.0, 6.0], [37.3, 21.9]], [1, 1], (32, 48), stride=4, sigma=1.0)
    assert hm.shape == (2, 8, 12) and hm.dtype == np.float32
    assert hm[0, 1, 2] == pytest.approx(1.0)
    assert hm[0, 1, 3] == pytest.approx(np.exp(-0.5))  # one cell right: exp(-1 / (2 sigma^2))
    assert hm[0, 2, 3] == pytest.approx(np.exp(-1.0))
    assert np.unravel_index(hm[1].argmax(), hm[1].shape) == (int(21.9 // 4), int(37.3 // 4))
    zero = gaussian_heatmaps([[10.0, 6.0]], [0], (32, 48), stride=4)
    assert not zero.any()
    with pytest.raises(ValueError, match="divisible"):
        gaussian_heatmaps([[1.0, 1.0]], [1], (30, 48), stride=4)


def test_heatmap_sigma_scales_with_width():
    assert heatmap_sigma(48) == 2.0 and heatmap_sigma(72) == 3.0 and heatmap_sigma(12) == 0.5


def test_half_body_box_hand_case():
    kp = np.array([[10, 10], [30, 10], [20, 40], [0, 90], [40, 90]], dtype=float)
    labelled = np.array([1, 1, 1, 1, 1], dtype=bool)
    rng = np.random.default_rng(0)
    c, s = half_body_center_scale(kp, labelled, upper_body=(0, 1, 2), aspect_ratio=0.75, rng=rng,
                                  padding=1.5, min_joints=3)
    # only the upper half has 3 joints: box (10..30) x (10..40) = 20 x 30, already at aspect 0.75? no:
    # 20 < 0.75 * 30 = 22.5 -> widened to 22.5; padded by 1.5
    assert np.allclose(c, [20, 25]) and np.allclose(s, [33.75, 45])
    assert half_body_center_scale(kp, [1, 1, 0, 1, 0], (0, 1, 2), 0.75, rng, min_joints=3) is None


def test_normalize_image_imagenet():
    x = torch.tensor([0.485, 0.456, 0.406])[:, None, None].expand(3, 2, 2)
    assert torch.allclose(normalize_image(x), torch.zeros(3, 2, 2), atol=1e-6)
