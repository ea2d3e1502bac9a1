import math

import pytest
import torch

from lofr.models.losses import (LOFRCriterion, LossWeights, classification_loss, heatmap_mse_loss,
                                part_diversity_loss)


# ---- Eq. 12 -------------------------------------------------------------------------------------

def test_classification_loss_hand_computed():
    # sigmoid(0) = 1/2 with label 1 -> ln 2;  sigmoid(ln 3) = 3/4 with label 0 -> -ln(1/4) = ln 4
    logits = torch.tensor([[0.0, math.log(3.0)]])
    labels = torch.tensor([[1.0, 0.0]])
    assert classification_loss(logits, labels).item() == pytest.approx((math.log(2) + math.log(4)) / 2)
    # 1/C sum over classes, then the batch mean: a second, perfectly-predicted sample halves the loss
    logits2 = torch.cat([logits, torch.tensor([[30.0, -30.0]])])
    labels2 = torch.cat([labels, torch.tensor([[1.0, 0.0]])])
    assert classification_loss(logits2, labels2).item() == pytest.approx(1.5 * math.log(2) / 2, rel=1e-5)


@pytest.mark.parametrize("labels, match", [
    (torch.ones(2, 16), "differ in shape"),
    (torch.full((2, 17), 2.0), r"in \[0, 1\]"),
    (torch.full((2, 17), -1.0), r"in \[0, 1\]"),
    (torch.full((2, 17), float("nan")), r"in \[0, 1\]"),
])
def test_classification_loss_rejects_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        classification_loss(torch.zeros(2, 17), labels, name="cls_cnn")


# ---- Eq. 11 -------------------------------------------------------------------------------------

def test_part_diversity_hand_computed():
    # f1 = (1, 0), f2 = (0, 1), f3 = (1, 1): cos12 = 0, cos13 = cos23 = 1/sqrt(2)
    # off-diagonal sum = 2 * (0 + 2/sqrt(2)) = 2 sqrt(2); divided by C(C-1) = 6 -> sqrt(2)/3
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])
    assert part_diversity_loss(f).item() == pytest.approx(math.sqrt(2) / 3, rel=1e-6)
    # scale-invariant per feature, averaged over the batch
    f2 = torch.cat([f * torch.tensor([[[3.0], [0.5], [7.0]]]), torch.ones(1, 3, 2)])  # 2nd: collapsed
    assert part_diversity_loss(f2).item() == pytest.approx((math.sqrt(2) / 3 + 1.0) / 2, rel=1e-6)


def test_part_diversity_extremes_and_naive_reference():
    assert part_diversity_loss(torch.ones(2, 17, 8)).item() == pytest.approx(1.0)  # collapsed parts
    assert part_diversity_loss(torch.eye(16)[None]).item() == pytest.approx(0.0)  # orthogonal parts
    torch.manual_seed(0)
    f = torch.randn(3, 14, 6)
    ref = 0.0
    for b in range(3):
        s = sum(torch.cosine_similarity(f[b, i], f[b, j], dim=0) for i in range(14) for j in range(14) if i != j)
        ref += s / (14 * 13) / 3
    assert part_diversity_loss(f).item() == pytest.approx(ref.item(), abs=1e-6)


def test_part_diversity_zero_vector_and_bad_input():
    f = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]], requires_grad=True)
    loss = part_diversity_loss(f)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(f.grad).all()
    with pytest.raises(ValueError, match="at least 2"):
        part_diversity_loss(torch.randn(2, 1, 4))


# ---- Eq. 14 -------------------------------------------------------------------------------------

def test_heatmap_mse_hand_computed_only_location_samples_count():
    pred = torch.zeros(2, 2, 1, 2)
    target = torch.zeros(2, 2, 1, 2)
    pred[0, 0] = torch.tensor([[1.0, 0.0]])  # joint 0: mean sq. error 0.5
    target[0, 1] = torch.tensor([[0.0, 2.0]])  # joint 1: mean sq. error 2
    pred[1] = 100.0  # sample 1 has image-level labels only: ignored
    weight = torch.tensor([[1.0, 0.5], [1.0, 1.0]])
    has_loc = torch.tensor([1, 0])
    # (1 * 0.5 + 0.5 * 2) / C = 0.75, averaged over the one labeled sample
    assert heatmap_mse_loss(pred, target, weight, has_loc).item() == pytest.approx(0.75)
    assert heatmap_mse_loss(pred, target, weight[..., None], has_loc.bool()).item() == pytest.approx(0.75)
    # without has_location every sample counts: (0.75 + 100^2) / 2
    assert heatmap_mse_loss(pred, target, weight).item() == pytest.approx((0.75 + 1e4) / 2)


def test_heatmap_mse_without_location_samples_is_zero_and_differentiable():
    pred = torch.randn(3, 4, 2, 2, requires_grad=True)
    loss = heatmap_mse_loss(pred, torch.zeros(3, 4, 2, 2), None, torch.zeros(3))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(pred.grad, torch.zeros_like(pred))


def test_heatmap_mse_bad_inputs():
    p = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="must both be"):
        heatmap_mse_loss(p, torch.zeros(2, 3, 4, 5))
    with pytest.raises(ValueError, match="target_weight"):
        heatmap_mse_loss(p, p, torch.ones(2, 4))
    with pytest.raises(ValueError, match="has_location"):
        heatmap_mse_loss(p, p, None, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="has_location"):
        heatmap_mse_loss(p, p, None, torch.tensor([1, 0, 1]))


# ---- Eq. 13 / 15 --------------------------------------------------------------------------------

def _outputs(b=2, c=17, d=8, layers=3, hw=(4, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).requires_grad_(True)  # noqa: E731
    return {"logits_cnn": r(b, c), "logits_enc": r(b, c), "logits": r(b, c), "part_feats": r(b, c, d),
            "logits_per_layer": r(layers, b, c), "heatmaps": r(b, c, *hw)}


def test_loss_weights_are_the_papers():
    w = LossWeights()
    assert (w.cls_cnn, w.cls_enc, w.cls_final, w.div) == (0.2, 0.2, 0.5, 0.1)
    assert w.mse == 0.0 and w.aux_dec == 0.0  # location-free: no heatmap loss unless asked
    assert LossWeights.location_free() == w
    assert LossWeights.semi_weak().mse == 1.0 and LossWeights.semi_weak(div=0.0).div == 0.0


def test_weak_loss_is_eq13():
    out = _outputs()
    labels = (torch.rand(2, 17, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    # the loader ships heatmaps for every sample; the location-free loss must not use them
    targets = {"labels": labels, "heatmaps": torch.zeros(2, 17, 4, 3), "has_location": torch.ones(2)}
    terms = LOFRCriterion()(out, targets)
    parts = {"cls_cnn": classification_loss(out["logits_cnn"], labels),
             "cls_enc": classification_loss(out["logits_enc"], labels),
             "cls_final": classification_loss(out["logits"], labels),
             "div": part_diversity_loss(out["part_feats"])}
    for k, v in parts.items():
        assert terms[k].item() == pytest.approx(v.item())
    weak = 0.2 * parts["cls_cnn"] + 0.2 * parts["cls_enc"] + 0.5 * parts["cls_final"] + 0.1 * parts["div"]
    assert terms["weak"].item() == pytest.approx(weak.item())
    assert terms["total"].item() == pytest.approx(weak.item())
    assert "mse" not in terms and "aux_dec" not in terms
    terms["total"].backward()
    for k in ("logits_cnn", "logits_enc", "logits", "part_feats"):
        assert out[k].grad.abs().sum() > 0, k
    assert out["heatmaps"].grad is None


def test_semi_weak_loss_is_eq15_and_aux():
    out = _outputs()
    labels = torch.ones(2, 17)
    targets = {"labels": labels, "heatmaps": torch.zeros(2, 17, 4, 3), "target_weight": torch.ones(2, 17),
               "has_location": torch.tensor([1.0, 0.0])}
    crit = LOFRCriterion(LossWeights.semi_weak(mse=2.0, aux_dec=0.3))
    terms = crit(out, targets)
    mse = heatmap_mse_loss(out["heatmaps"], targets["heatmaps"], targets["target_weight"], targets["has_location"])
    aux = (classification_loss(out["logits_per_layer"][0], labels)
           + classification_loss(out["logits_per_layer"][1], labels)) / 2
    assert terms["mse"].item() == pytest.approx(mse.item())
    assert terms["aux_dec"].item() == pytest.approx(aux.item())
    assert terms["total"].item() == pytest.approx((terms["weak"] + 2.0 * mse).item())
    # Sup-only (Table 4): every weak weight 0, only the heatmap MSE
    sup = LOFRCriterion(LossWeights(0, 0, 0, 0, mse=1.0))(out, targets)
    assert sup["total"].item() == pytest.approx(mse.item()) and sup["weak"].item() == 0.0


def test_criterion_missing_terms_raise_and_zero_weights_skip():
    out = _outputs()
    del out["logits_enc"]
    labels = torch.ones(2, 17)
    with pytest.raises(KeyError, match="logits_enc"):
        LOFRCriterion()(out, {"labels": labels})
    terms = LOFRCriterion(LossWeights(cls_enc=0.0, div=0.0))(out, {"labels": labels})
    assert set(terms) == {"cls_cnn", "cls_final", "weak", "total"}
    with pytest.raises(KeyError, match="labels"):
        LOFRCriterion()(_outputs(), {})
    with pytest.raises(ValueError, match="every weight is zero"):
        LOFRCriterion(LossWeights(0, 0, 0, 0))(out, {"labels": labels})
    with pytest.raises(KeyError, match=r"targets\['heatmaps'\]"):  # semi-weak without heatmap targets
        LOFRCriterion(LossWeights.semi_weak())(_outputs(), {"labels": labels})


def test_mass_matched_heatmaps_hand_case():
    """Eq. 14's H for LOFR: H_c = R_c * sum(H*_c). A 1x3 map: R = [0.5, 0.25, 0.25], H* = [1, 0.5, 0.5]
    (mass 2) -> H = [1, 0.5, 0.5] = H*: a response shaped like the target reproduces it."""
    from lofr.models.losses import mass_matched_heatmaps

    r = torch.tensor([0.5, 0.25, 0.25]).reshape(1, 1, 1, 3)
    t = torch.tensor([1.0, 0.5, 0.5]).reshape(1, 1, 1, 3)
    assert torch.allclose(mass_matched_heatmaps(r, t), t)
    assert heatmap_mse_loss(mass_matched_heatmaps(r, t), t).item() == 0.0
    with pytest.raises(ValueError, match="must both be"):
        mass_matched_heatmaps(r, t[..., :2])


def test_eq14_spike_in_the_wrong_cell_costs_more_than_a_flat_map():
    """The shortcut the peak-normalised reading had: a one-cell spike anywhere scored a low MSE. With the
    mass-matched reading a wrong spike is worse than a flat map, and the right Gaussian is best."""
    from lofr.models.losses import mass_matched_heatmaps

    h, w = 16, 12
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    target = torch.exp(-((yy - 5) ** 2 + (xx - 4) ** 2) / (2 * 1.0 ** 2))[None, None]  # peak 1 at (5, 4)
    flat = torch.full((1, 1, h, w), 1.0 / (h * w))
    spike = torch.zeros(1, 1, h, w)
    spike[..., 12, 9] = 1.0
    good = target / target.sum()

    def mse(r):
        return heatmap_mse_loss(mass_matched_heatmaps(r, target), target).item()

    assert mse(good) < 1e-12 < mse(flat) < mse(spike)
    # the old reading (R / max R) ranked the wrong spike far better than the flat map
    old = lambda r: heatmap_mse_loss(r / r.amax(dim=(-2, -1), keepdim=True), target).item()  # noqa: E731
    assert old(spike) < old(flat)


def test_criterion_reads_lofr_response_mass_matched_and_sup_only_heatmaps_as_they_are():
    out = _outputs(hw=(4, 3))
    g = torch.Generator().manual_seed(3)
    out["response_fused"] = torch.softmax(torch.randn(2, 17, 12, generator=g), -1).reshape(2, 17, 4, 3)
    target = torch.rand(2, 17, 4, 3, generator=g)
    targets = {"labels": torch.ones(2, 17), "heatmaps": target, "has_location": torch.ones(2)}
    from lofr.models.losses import mass_matched_heatmaps

    terms = LOFRCriterion(LossWeights(0, 0, 0, 0, mse=1.0))(out, targets)
    want = heatmap_mse_loss(mass_matched_heatmaps(out["response_fused"], target), target)
    assert terms["mse"].item() == pytest.approx(want.item())
    del out["response_fused"]  # Sup-only has no response maps: its heatmaps are compared directly
    terms = LOFRCriterion(LossWeights(0, 0, 0, 0, mse=1.0))(out, targets)
    assert terms["mse"].item() == pytest.approx(heatmap_mse_loss(out["heatmaps"], target).item())
