"""Losses of LOFR (paper Sec. 3.4-3.5, Eq. 11-15).

* Eq. 12  :func:`classification_loss`   image-level BCE over the C keypoint classes
* Eq. 11  :func:`part_diversity_loss`   mean pairwise cosine similarity of the part features
* Eq. 13  weak loss = α L_cls_cnn + α1 L_cls_en + α2 L_cls_tran + β L_div   (0.2, 0.2, 0.5, 0.1)
* Eq. 14  :func:`heatmap_mse_loss`      heatmap MSE on the few samples that have locations; LOFR's
          heatmap is its fused response scaled by the target's mass (:func:`mass_matched_heatmaps`)
* Eq. 15  semi-weak loss = L_mse + L_weak

:class:`LOFRCriterion` combines them from the model's output dict and the batch's targets and
returns every named term plus ``total``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LossWeights", "classification_loss", "part_diversity_loss", "heatmap_mse_loss", "mass_matched_heatmaps",
           "LOFRCriterion"]


@dataclass
class LossWeights:
    """Weights of Eq. 13 / 15. Defaults are the paper's location-free recipe (Sec. 4.2):
    α, α1, α2, β = 0.2, 0.2, 0.5, 0.1 and no heatmap loss.

    cls_cnn   α   BCE on the CAM head's logits
    cls_enc   α1  BCE on the encoder branch's logits
    cls_final α2  BCE on the decoder's final logits (L_cls_tran)
    div       β   part diversity constraint (Eq. 11); 0 turns PDC off (Table 5 ablations)
    mse           weight of the heatmap MSE in Eq. 15. 0 by default: the location-free setting
                  must not see locations even when the data loader provides heatmaps for every
                  sample (``has_location`` = 1 is the loader's default). Use
                  :meth:`semi_weak` (mse = 1, as Eq. 15) for the weakly semi-supervised setting.
    aux_dec       BCE on the intermediate decoder layers' logits, averaged over those layers
                  (DETR-style auxiliary loss; not in the paper, hence 0 by default)
    """

    cls_cnn: float = 0.2
    cls_enc: float = 0.2
    cls_final: float = 0.5
    div: float = 0.1
    mse: float = 0.0
    aux_dec: float = 0.0

    @classmethod
    def location_free(cls, **overrides) -> "LossWeights":
        """Eq. 13 only (the paper's main setting); same as ``LossWeights()``."""
        return cls(**overrides)

    @classmethod
    def semi_weak(cls, mse: float = 1.0, **overrides) -> "LossWeights":
        """Eq. 15: Eq. 13 + the heatmap MSE on the samples with ``has_location`` = 1 (Sec. 4.3.2)."""
        return cls(mse=mse, **overrides)


def _check_labels(logits: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if logits.shape != labels.shape:
        raise ValueError(f"{name}: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} differ in shape")
    if not torch.isfinite(labels).all() or (labels < 0).any() or (labels > 1).any():
        raise ValueError(f"{name}: labels must be in [0, 1] (1 = keypoint present in the crop, 0 = absent)")


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, name: str = "cls") -> torch.Tensor:
    """Eq. 12: L_cls = 1/C sum_c BCE(O_c, O*_c), averaged over the batch.

    logits (B, C) raw scores (the sigmoid is inside, numerically stable); labels (B, C) in [0, 1].
    One independent binary problem per keypoint: a crop can contain any subset of the keypoints,
    so this is multi-label BCE — not the softmax that Sec. 3.2's text mentions.
    """
    _check_labels(logits, labels, name)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))  # mean over B and C


def part_diversity_loss(part_feats: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 11, Part Diversity Constraint: mean cosine similarity between *different* part features,

        L_div = 1/(C(C-1)) sum_{i != j} <f_i, f_j> / (|f_i| |f_j|),   averaged over the batch.

    part_feats (B, C, d). The paper's double sum runs over all (i, j), which adds the constant
    C/(C(C-1)) = 1/(C-1) from the diagonal (cos(f_i, f_i) = 1) without changing the gradient; we
    exclude the diagonal so that L_div is exactly the mean off-diagonal similarity, in [-1, 1]
    (0 for orthogonal parts, 1 when all parts collapse onto one feature). A zero vector counts as
    similarity 0 with everything (its norm is clamped by ``eps``).
    """
    b, c, _ = part_feats.shape  # (B, C, d)
    if c < 2:
        raise ValueError(f"part diversity needs at least 2 part features, got C={c}")
    f = F.normalize(part_feats, dim=-1, eps=eps)  # (B, C, d)
    sim = f @ f.transpose(1, 2)  # (B, C, C) cosine similarities
    off_diag = sim.sum(dim=(1, 2)) - sim.diagonal(dim1=1, dim2=2).sum(-1)  # (B,)
    return (off_diag / (c * (c - 1))).mean()


def heatmap_mse_loss(heatmaps: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor | None = None,
                     has_location: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 14: L_mse = 1/C sum_c w_c * mean_pixels (H_c - H*_c)^2, averaged over the samples that
    have location labels.

    heatmaps, target (B, C, H, W); target_weight (B, C) or (B, C, 1) (0 for unlabeled / invisible
    joints; multiplies the squared error); has_location (B,) 0/1 — samples with 0 (image-level
    labels only) contribute nothing. Returns 0 (still attached to the graph) when no sample in the
    batch has locations. Unlike mmpose's JointsMSELoss there is no factor 0.5 (Eq. 14 has none).
    """
    if heatmaps.shape != target.shape or heatmaps.ndim != 4:
        raise ValueError(f"heatmap loss: predicted {tuple(heatmaps.shape)} and target {tuple(target.shape)} "
                         "must both be (B, C, H, W)")
    b, c = heatmaps.shape[:2]
    w = heatmaps.new_ones(b, c) if target_weight is None else target_weight.reshape(b, -1).to(heatmaps.dtype)
    if w.shape != (b, c):
        raise ValueError(f"heatmap loss: target_weight must be (B, C) = ({b}, {c}), got {tuple(target_weight.shape)}")
    keep = heatmaps.new_ones(b) if has_location is None else has_location.reshape(-1).to(heatmaps.dtype)
    if keep.shape != (b,) or ((keep != 0) & (keep != 1)).any():
        raise ValueError(f"heatmap loss: has_location must be (B,) = ({b},) of 0/1")
    per_joint = (heatmaps - target).pow(2).mean(dim=(-2, -1))  # (B, C)
    per_sample = (per_joint * w).mean(dim=1)  # (B,), the 1/C sum of Eq. 14
    return (per_sample * keep).sum() / keep.sum().clamp_min(1.0)


def mass_matched_heatmaps(response: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """LOFR's predicted heatmap H for Eq. 14: the fused response map R_c (an attention map, summing to
    1 over its cells) scaled by the mass of the Gaussian target, H_c = R_c * sum(H*_c).

    The paper does not say how H is read off the attention maps (our choice). A response shaped like
    the target then reproduces it exactly (H = H*), and the scale is FIXED by the target, not by the
    prediction: the earlier choice, H_c = R_c / max(R_c), gave every response a peak of 1, so a
    collapsed one-cell spike anywhere near the joint already scored a low MSE (notebook 07 measured
    LOFR-WS's queries collapsing onto one cell). Here a spike costs more than a flat map unless it
    sits where the target is. The price of a fixed scale: an attention map's per-pixel values are
    ~1/N, so the MSE and its gradient are small, and Eq. 15 needs a weight well above the paper's 1 for
    this term to matter (``lofr.semi.LOFR_WS_MSE_WEIGHT`` = 1000, measured there).
    response, target (B, C, H, W) -> (B, C, H, W)."""
    if response.shape != target.shape or response.ndim != 4:
        raise ValueError(f"heatmap loss: response {tuple(response.shape)} and target {tuple(target.shape)} "
                         "must both be (B, C, H, W)")
    return response * target.sum(dim=(-2, -1), keepdim=True).to(response.dtype)


class LOFRCriterion(nn.Module):
    """Eq. 13 (weak) and Eq. 15 (semi-weak) from the model's outputs and the batch's targets.

    outputs (the model's forward dict): ``logits_cnn``, ``logits_enc``, ``logits`` (B, C);
        ``part_feats`` (B, C, d); optional ``logits_per_layer`` (D_De, B, C) for ``aux_dec``;
        for Eq. 14 either ``response_fused`` (B, C, H, W; LOFR's attention maps, each summing to 1:
        compared through :func:`mass_matched_heatmaps`) or, without it, ``heatmaps`` (B, C, H, W;
        Sup-only's regression head, compared as it is).
    targets: ``labels`` (B, C) in [0, 1]; for Eq. 14 ``heatmaps`` (B, C, H, W),
        optional ``target_weight`` (B, C) and ``has_location`` (B,).

    A term is computed iff its weight is non-zero, and then its inputs must be present (a missing
    key raises KeyError naming it); with ``mse`` = 0 any heatmap targets are ignored. All weak
    weights 0 + mse > 0 gives the "Sup-only" baseline of Table 4. Returns a dict with each computed term (``cls_cnn``, ``cls_enc``, ``cls_final``,
    ``aux_dec``, ``div``, ``mse``; unweighted values), ``weak`` (Eq. 13) and ``total`` (Eq. 15, or
    Eq. 13 when ``mse`` = 0).
    """

    _CLS_TERMS = (("cls_cnn", "logits_cnn"), ("cls_enc", "logits_enc"), ("cls_final", "logits"))

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.weights = LossWeights() if weights is None else weights

    @staticmethod
    def _get(d: dict, key: str, what: str, term: str):
        if key not in d or d[key] is None:
            raise KeyError(f"loss term {term!r} needs {what}[{key!r}] (set its weight to 0 to disable it)")
        return d[key]

    def forward(self, outputs: dict, targets: dict) -> dict:
        w = self.weights
        labels = self._get(targets, "labels", "targets", "classification")
        terms: dict[str, torch.Tensor] = {}
        weak = 0.0
        for term, key in self._CLS_TERMS:
            if getattr(w, term):
                terms[term] = classification_loss(self._get(outputs, key, "outputs", term), labels, term)
                weak = weak + getattr(w, term) * terms[term]
        if w.aux_dec:
            per_layer = self._get(outputs, "logits_per_layer", "outputs", "aux_dec")  # (D_De, B, C)
            if per_layer.shape[0] < 2:
                raise ValueError("aux_dec needs a decoder with at least 2 layers")
            terms["aux_dec"] = torch.stack([classification_loss(lg, labels, "aux_dec")
                                            for lg in per_layer[:-1]]).mean()
            weak = weak + w.aux_dec * terms["aux_dec"]
        if w.div:
            terms["div"] = part_diversity_loss(self._get(outputs, "part_feats", "outputs", "div"))
            weak = weak + w.div * terms["div"]
        total = weak
        if w.mse:
            target = self._get(targets, "heatmaps", "targets", "mse")
            if outputs.get("response_fused") is not None:  # LOFR: attention maps -> Eq. 14 heatmaps
                pred = mass_matched_heatmaps(outputs["response_fused"], target)
            else:  # Sup-only: a heatmap regression head
                pred = self._get(outputs, "heatmaps", "outputs", "mse")
            terms["mse"] = heatmap_mse_loss(pred, target, targets.get("target_weight"), targets.get("has_location"))
            total = total + w.mse * terms["mse"]
        if not torch.is_tensor(total):
            raise ValueError("no loss term to compute: every weight is zero")
        terms["weak"] = weak if torch.is_tensor(weak) else total.new_zeros(())
        terms["total"] = total
        return terms
