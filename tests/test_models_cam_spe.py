import math

import pytest
import torch

from lofr.models.cam import CAMHead, class_activation_maps, keypoint_vectors, leaky_max_pool, lse_pool, peak_pool
from lofr.models.position import LearnedPositionEncoding, SinePositionEncoding
from lofr.models.spe import SPE, cam_peaks, keypoint_location_maps, render_location_maps

# ---------------------------------------------------------------- Eq. 1: CAMs


def test_eq1_cams_hand_computed():
    # X' has K = 2 channels on a 1x2 map: x'_0 = [1, 2], x'_1 = [3, -1]
    x_prime = torch.tensor([[[[1.0, 2.0]], [[3.0, -1.0]]]])  # (1, 2, 1, 2)
    w = torch.tensor([[1.0, 1.0], [2.0, -1.0]])  # FC weight (C=2, K=2)
    # m_0 = ReLU(x'_0 + x'_1) = [4, 1];  m_1 = ReLU(2 x'_0 - x'_1) = ReLU([-1, 5]) = [0, 5]
    cams = class_activation_maps(x_prime, w)
    assert torch.equal(cams, torch.tensor([[[[4.0, 1.0]], [[0.0, 5.0]]]]))


def test_cam_is_the_logit_map():
    # logits = GAP(FC(X')) = mean of the pre-ReLU CAM + bias; where the CAM is positive they agree
    torch.manual_seed(0)
    head = CAMHead(8, 5, 4)
    out = head(torch.randn(2, 8, 4, 3))
    pre = torch.einsum("ck,bkhw->bchw", head.fc.weight, out["x_prime"])
    assert torch.allclose(pre.mean(dim=(2, 3)) + head.fc.bias, out["logits"], atol=1e-6)
    assert torch.allclose(out["cams"], pre.relu())


# ---------------------------------------------------------------- Eq. 2: keypoint vectors


def test_lse_pool_hand_computed_and_limits():
    # one map [0, ln 3] (N = 2), r = 1: log((e^0 + e^ln3) / 2) = log 2
    m = torch.tensor([[[[0.0, math.log(3.0)]]]])
    assert torch.allclose(lse_pool(m, 1.0), torch.tensor([[math.log(2.0)]]))
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.allclose(lse_pool(x, 1e-4), x.mean(dim=(2, 3)), atol=1e-3)  # r -> 0: GAP
    assert torch.allclose(lse_pool(x, 1e4), x.amax(dim=(2, 3)), atol=1e-3)  # r -> inf: max


def test_leaky_max_pool_hand_computed_and_its_gradient():
    # map [1, 3, 2, -1], eps 0.1: 3 - 0.1 (1 + 2 - 1) = 2.8; the non-maximum cells get gradient -0.1
    m = torch.tensor([[[[1.0, 3.0], [2.0, -1.0]]]], requires_grad=True)
    y = leaky_max_pool(m, 0.1)
    assert torch.allclose(y, torch.tensor([[2.8]]))
    y.sum().backward()
    assert torch.allclose(m.grad, torch.tensor([[[[-0.1, 1.0], [-0.1, -0.1]]]]))
    # a dense map scores below a sparse one with the same maximum (LMPNet's point); eps 0 = max pooling
    dense, sparse = torch.full((1, 1, 2, 2), 3.0), torch.tensor([[[[3.0, 0.0], [0.0, 0.0]]]])
    assert leaky_max_pool(dense, 0.1) < leaky_max_pool(sparse, 0.1)
    assert torch.allclose(leaky_max_pool(dense, 0.0), torch.tensor([[3.0]]))
    torch.manual_seed(0)
    head = CAMHead(8, 3, 4, pool="lmp", lmp_eps=0.05)
    out = head(torch.randn(2, 8, 4, 3))
    scores = torch.einsum("ck,bkhw->bchw", head.fc.weight, out["x_prime"])
    flat = scores.flatten(2)
    expected = flat.amax(-1) - 0.05 * (flat.sum(-1) - flat.amax(-1)) + head.fc.bias
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    with pytest.raises(ValueError, match="lmp_eps"):
        CAMHead(8, 3, 4, pool="lmp", lmp_eps=-1.0)


def test_peak_pool_hand_computed_and_its_gradient():
    # 3x3 local maxima of the map below: 5, 4 and 2 (every other cell has a larger neighbour); the lower
    # median of its 12 cells is 0, so all three count: (5 + 4 + 2) / 3, gradient 1/3 at each, 0 elsewhere
    m = torch.tensor([[[[5.0, 1.0, 0.0, 4.0], [1.0, 0.0, 0.0, 1.0], [0.0, 2.0, 0.0, 0.0]]]], requires_grad=True)
    y = peak_pool(m)
    assert torch.allclose(y, torch.tensor([[11.0 / 3.0]]))
    y.sum().backward()
    expected = torch.zeros(3, 4)
    expected[0, 0] = expected[0, 3] = expected[2, 1] = 1.0 / 3.0
    assert torch.allclose(m.grad[0, 0], expected)
    # the median threshold: local maxima 3, -1.5 and -2.5; the lower median is -2, so -2.5 is not a peak
    row = torch.tensor([[[[3.0, -1.0, -2.0, -1.5, -3.0, -2.5]]]])
    assert torch.allclose(peak_pool(row), torch.tensor([[0.75]]))
    # a single peak pools to the maximum; a flat map to its value
    assert torch.allclose(peak_pool(torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])), torch.tensor([[1.0]]))
    assert torch.allclose(peak_pool(torch.full((1, 1, 3, 3), 2.0)), torch.tensor([[2.0]]))
    torch.manual_seed(0)
    head = CAMHead(8, 3, 4, pool="peak")
    out = head(torch.randn(2, 8, 4, 3))
    scores = torch.einsum("ck,bkhw->bchw", head.fc.weight, out["x_prime"])
    assert torch.allclose(out["logits"], peak_pool(scores) + head.fc.bias, atol=1e-6)


def test_cam_head_lse_logits_are_the_smooth_max_of_the_cam_scores():
    torch.manual_seed(0)
    head = CAMHead(8, 3, 4, pool="lse", lse_r=2.0)
    x = torch.randn(2, 8, 4, 3)
    out = head(x)
    scores = torch.einsum("ck,bkhw->bchw", head.fc.weight, out["x_prime"])  # Eq. 1 before its ReLU
    expected = torch.log(torch.exp(2.0 * scores).mean(dim=(2, 3))) / 2.0 + head.fc.bias
    assert torch.allclose(out["logits"], expected, atol=1e-5)
    assert torch.allclose(out["cams"], scores.relu())
    gap = CAMHead(8, 3, 4)  # the paper's GAP + FC
    gap.load_state_dict(head.state_dict())
    assert torch.allclose(gap(x)["logits"], gap.fc(out["x_prime"].mean(dim=(2, 3))))
    with pytest.raises(ValueError, match="pool"):
        CAMHead(8, 3, 4, pool="max")
    with pytest.raises(ValueError, match="lse_r"):
        CAMHead(8, 3, 4, pool="lse", lse_r=0.0)


def test_eq2_softmax_weighting_hand_computed():
    # two cells; x'_0 = [0, ln 3] -> softmax weights [1/4, 3/4]; x'_1 = [0, 0] -> [1/2, 1/2]
    x_prime = torch.tensor([[[[0.0, math.log(3.0)]], [[0.0, 0.0]]]])  # (1, 2, 1, 2)
    x_c = torch.tensor([[[[4.0, 8.0]], [[1.0, -1.0]]]])  # (1, D'=2, 1, 2): cell0 = (4, 1), cell1 = (8, -1)
    f = keypoint_vectors(x_prime, x_c, "softmax")
    expected = torch.tensor([[[1 / 4 * 4 + 3 / 4 * 8, 1 / 4 * 1 - 3 / 4 * 1], [6.0, 0.0]]])
    assert torch.allclose(f, expected)


def test_eq2_literal_sum_and_mean():
    x_prime = torch.tensor([[[[1.0, 2.0]]]])  # (1, 1, 1, 2)
    x_c = torch.tensor([[[[3.0, 5.0]]]])  # (1, 1, 1, 2)
    assert keypoint_vectors(x_prime, x_c, "sum").item() == pytest.approx(1 * 3 + 2 * 5)
    assert keypoint_vectors(x_prime, x_c, "mean").item() == pytest.approx((1 * 3 + 2 * 5) / 2)
    with pytest.raises(ValueError, match="weighting"):
        keypoint_vectors(x_prime, x_c, "max")
    with pytest.raises(ValueError, match="weighting"):
        CAMHead(4, 3, 2, weighting="max")


@pytest.mark.parametrize("c", [17, 16, 14])
def test_cam_head_shapes_and_gradients(c):
    torch.manual_seed(0)
    head = CAMHead(32, c, 24)
    out = head(torch.randn(2, 32, 4, 3))
    assert out["logits"].shape == (2, c)
    assert out["cams"].shape == (2, c, 4, 3) and (out["cams"] >= 0).all()
    assert out["protos"].shape == (2, c, 24)
    (out["logits"].sum() + out["protos"].square().sum() + out["cams"].sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


# ---------------------------------------------------------------- SPE step 1: F^key


def test_cam_peaks_are_cell_centres_in_input_pixels():
    cams = torch.zeros(1, 2, 4, 3)
    cams[0, 0, 2, 1] = 5.0  # row 2, column 1
    cams[0, 1, 0, 2] = 1.0
    peaks = cam_peaks(cams, stride=16)
    assert peaks.tolist() == [[[1.5 * 16, 2.5 * 16], [2.5 * 16, 0.5 * 16]]]


def test_render_location_maps_hand_computed():
    # point (6, 2) on a 2x2 map of stride 4: cell centres x in {2, 6}, y in {2, 6}
    maps = render_location_maps(torch.tensor([[[6.0, 2.0]]]), (2, 2), stride=4, sigma=2.0)
    g = math.exp(-16 / 8)  # one cell (4 px) away
    expected = torch.tensor([[g, 1.0], [g * g, g]])
    assert torch.allclose(maps[0, 0], expected)


def test_keypoint_location_maps_peak_at_every_scale_and_presence():
    cams = torch.zeros(2, 3, 4, 3)  # stride-16 CAMs of a 64x48 input
    cams[:, 0, 3, 2] = 1.0  # bottom-right cell: centre (40, 56)
    cams[:, 1, 0, 0] = 1.0  # top-left: centre (8, 8)
    cams[:, 2, 1, 1] = 1.0  # centre (24, 24)
    presence = torch.tensor([[1.0, 0.5, 0.0], [1.0, 1.0, 1.0]])
    sizes, strides = [(16, 12), (8, 6), (4, 3)], [4, 8, 16]
    maps = keypoint_location_maps(cams, 16, sizes, strides, presence)
    for m, (h, w), s in zip(maps, sizes, strides):
        assert m.shape == (2, 3, h, w) and not m.requires_grad
        # the cell containing the CAM peak holds the map's maximum (at finer strides the peak
        # lies on a cell corner, so 2x2 cells tie)
        for k, (x, y) in enumerate([(40, 56), (8, 8), (24, 24)]):
            assert m[1, k, y // s, x // s] == m[1, k].max()
            assert m[1, k].max() >= math.exp(-2 * (s / 2) ** 2 / (2 * 8.0 ** 2)) - 1e-6
    assert torch.allclose(maps[2][0, 1], 0.5 * maps[2][1, 1])  # scaled by the presence
    assert maps[2][0, 2].abs().sum() == 0
    # default sigma = half a CAM cell: one CAM cell away the map is exp(-2)
    assert maps[2][1, 0, 3, 1].item() == pytest.approx(math.exp(-2.0))


# ---------------------------------------------------------------- SPE: Eq. 3-4


def _spe_with_known_weights(mode):
    spe = SPE(dim=2, num_keypoints=2, mode=mode)
    with torch.no_grad():
        spe.embed.weight.copy_(torch.tensor([[1.0, 0.0], [2.0, 3.0]])[:, :, None, None])  # E^T (d=2, C=2)
        spe.psi.weight.copy_(torch.eye(2)[:, :, None, None])  # ψ = identity
        spe.psi.bias.zero_()
    return spe


def test_eq3_eq4_product_hand_computed():
    spe = _spe_with_known_weights("product")
    feat = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # (1, d=2, 1, 2): F(cell0) = (1, 3), F(cell1) = (2, 4)
    key = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.5]]]])  # (1, C=2, 1, 2): kp0 at cell0, kp1 (half) at cell1
    out, phi = spe(feat, key)
    # E^T F^key: cell0 -> (1*1, 2*1) = (1, 2); cell1 -> (0, 3*0.5) = (0, 1.5)
    # φ = F ⊙ E^T F^key: cell0 -> (1*1, 3*2) = (1, 6); cell1 -> (2*0, 4*1.5) = (0, 6)
    expected_phi = torch.tensor([[[[1.0, 0.0]], [[6.0, 6.0]]]])
    assert torch.allclose(phi, expected_phi)
    assert torch.allclose(out, feat + expected_phi)  # Eq. 4 with ψ = identity


def test_eq3_embed_mode_and_errors():
    spe = _spe_with_known_weights("embed")
    feat = torch.zeros(1, 2, 1, 2)
    key = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.5]]]])
    _, phi = spe(feat, key)
    assert torch.allclose(phi, torch.tensor([[[[1.0, 0.0]], [[2.0, 1.5]]]]))
    with pytest.raises(ValueError, match="mode"):
        SPE(4, 3, mode="cross")
    with pytest.raises(ValueError, match="differ in size"):
        spe(torch.zeros(1, 2, 2, 2), key)


def test_spe_gradients_and_zero_prior():
    torch.manual_seed(0)
    spe = SPE(8, 3)
    feat = torch.randn(2, 8, 4, 3)
    out, phi = spe(feat, torch.rand(2, 3, 4, 3))
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in spe.parameters())
    _, phi0 = spe(feat, torch.zeros(2, 3, 4, 3))  # no keypoint anywhere -> no positional term
    assert phi0.abs().sum() == 0


# ---------------------------------------------------------------- position encodings


def test_sine_encoding_hand_computed():
    pe = SinePositionEncoding(8, temperature=100.0)(2, 3)  # (8, 2, 3)
    assert pe.shape == (8, 2, 3)
    y = 1.5 / 2 * 2 * math.pi  # row 1 centre
    x = 0.5 / 3 * 2 * math.pi  # column 0 centre
    # channels 0..3 encode y with frequencies 1, 1, 100^(2/4)=10, 10; 4..7 encode x
    expected = [math.sin(y), math.cos(y), math.sin(y / 10), math.cos(y / 10),
                math.sin(x), math.cos(x), math.sin(x / 10), math.cos(x / 10)]
    assert torch.allclose(pe[:, 1, 0], torch.tensor(expected), atol=1e-6)
    assert torch.allclose(pe[:4, 1, 0], pe[:4, 1, 2])  # y channels constant along a row
    with pytest.raises(ValueError, match="divisible by 4"):
        SinePositionEncoding(6)


def test_learned_encoding_shapes_grad_and_limit():
    torch.manual_seed(0)
    pe = LearnedPositionEncoding(6, max_size=(4, 5))
    out = pe(3, 5)
    assert out.shape == (6, 3, 5)
    assert torch.equal(out[:3, 2, 0], pe.row.weight[2]) and torch.equal(out[3:, 0, 4], pe.col.weight[4])
    out.sum().backward()
    assert pe.row.weight.grad[:3].abs().sum() > 0 and pe.row.weight.grad[3].abs().sum() == 0
    with pytest.raises(ValueError, match="at most 4x5"):
        pe(5, 5)
