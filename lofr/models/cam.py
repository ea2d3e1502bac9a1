"""CNN classification head, class activation maps and keypoint vectors (paper Sec. 3.2, Eq. 1-2).

From the backbone's feature map X (B, D, h, w):

* X' = conv1x1(X) has one channel per keypoint class: (B, C, h, w);
* GAP + FC (C -> C) give the multi-label logits (B, C) of the CNN branch (L_cls_cnn in Eq. 13).
  The paper draws "FC and a softmax"; the labels are multi-label (several keypoints per crop) and
  Eq. 12 is a per-class BCE, so the logits go through a sigmoid, not a softmax;
* Eq. 1, the CAMs: m_c(x, y) = ReLU(sum_k w^c_k x'_k(x, y)), w = the FC weight (C, C). Since GAP
  and FC are linear, logits_c = mean_{x,y} sum_k w^c_k x'_k(x, y) + b_c: the CAM before its ReLU
  is the logit map whose average is the logit;
* Eq. 2, the category-specific keypoint vectors F_c (B, C, D'):
  f_c = sum_{i,j} x'_{i,j}[c] x^c_{i,j}, X^c = conv1x1(X) (B, D', h, w) — a pooling of X^c with
  the c-th channel of X' as the spatial weight.

Choice (pooling; the paper: GAP): ``pool="lse"`` pools the class maps by a smooth maximum instead,
logits_c = (1/r) log( (1/N) sum_{x,y} exp(r s_c(x, y)) ) + b_c, s_c = sum_k w^c_k x'_k(x, y) (Eq. 1 before
its ReLU), N = h w (log-sum-exp pooling, Pinheiro & Collobert, CVPR 2015). r -> 0 gives back GAP,
r -> inf the maximum. With GAP a class is "present" when its map is high on average, so it may rise
over the whole person (the box's extent already predicts which joints are in the crop); with the
smooth maximum a few cells must carry the evidence, and the CAM peaks there (measured on SynthPose:
CAM arg-max PCK@0.1 0.04 with GAP, 0.24 with LSE r=5, stride-8 map, 1500 steps).

Choice (not in the paper; from the weakly-supervised keypoint-discovery literature): ``pool="lmp"``,
leaky max pooling (LMPNet, Guo & Farrell 2025): logits_c = max_{x,y} s_c - eps sum_{(x,y) != argmax} s_c
+ b_c. Like max pooling one cell carries the evidence, and every other cell's score is pushed DOWN
(its gradient is -eps): a class map that is high everywhere lowers its own logit, so the map must
be sparse — a keypoint detector rather than a "person is here" detector.

Choice (not in the paper): ``pool="peak"``, peak stimulation (Peak Response Maps, Zhou et al., CVPR
2018): logits_c = mean of s_c over its local maxima (3x3 window) that reach the map's median, + b_c.
The peaks are found without gradient, so the whole gradient of the BCE reaches the peak cells and
none reaches the rest of the map: a class is called present by what its peaks say, not by its average.
The global maximum is always one of the peaks; a map with a single peak pools to its maximum.

Choice (Eq. 2's weighting is left open by the paper): the literal sum grows with h*w and mixes
signs, so by default the weights are a spatial softmax of x'_c (positive, summing to 1 over the
map, independent of the resolution): f_c = sum_{i,j} softmax_{ij}(x'_c) x^c_{i,j}.
``weighting="mean"`` gives the literal sum divided by h*w and ``"sum"`` the literal sum.
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn

__all__ = ["CAMHead", "cam_scores", "class_activation_maps", "keypoint_vectors", "lse_pool", "leaky_max_pool", "peak_pool"]

WEIGHTINGS = ("softmax", "mean", "sum")
POOLS = ("gap", "lse", "lmp", "peak")


def lse_pool(maps: torch.Tensor, r: float) -> torch.Tensor:
    """Log-sum-exp pooling: (B, C, h, w) -> (B, C), (1/r) log mean_{x,y} exp(r maps) (between the mean
    and the max of each map)."""
    flat = rearrange(maps, "b c h w -> b c (h w)")
    return (torch.logsumexp(r * flat, dim=-1) - math.log(flat.shape[-1])) / r


def leaky_max_pool(maps: torch.Tensor, eps: float) -> torch.Tensor:
    """Leaky max pooling (LMPNet): (B, C, h, w) -> (B, C), max - eps * (sum of every other cell)."""
    flat = rearrange(maps, "b c h w -> b c (h w)")
    top = flat.max(dim=-1).values  # (B, C)
    return top - eps * (flat.sum(dim=-1) - top)


def peak_pool(maps: torch.Tensor, window: int = 3) -> torch.Tensor:
    """Peak stimulation (PRM): (B, C, h, w) -> (B, C), the mean of each map over its peaks = the cells
    that are the maximum of their ``window`` x ``window`` neighbourhood and >= the map's median. The
    peak mask carries no gradient: d logits / d maps is 1 / (number of peaks) at a peak, 0 elsewhere."""
    with torch.no_grad():
        local_max = nn.functional.max_pool2d(maps, window, stride=1, padding=window // 2)  # (B, C, h, w)
        median = rearrange(maps, "b c h w -> b c (h w)").median(dim=-1).values  # (B, C)
        peaks = ((maps == local_max) & (maps >= median[..., None, None])).to(maps.dtype)  # (B, C, h, w)
    return (maps * peaks).sum(dim=(-2, -1)) / peaks.sum(dim=(-2, -1))  # >= 1 peak: the global maximum


def cam_scores(x_prime: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """Eq. 1 before its ReLU: s_c(x, y) = sum_k w^c_k x'_k(x, y).

    x_prime (B, K, h, w), fc_weight (C, K) -> scores (B, C, h, w).
    """
    return torch.einsum("ck,bkhw->bchw", fc_weight, x_prime)


def class_activation_maps(x_prime: torch.Tensor, fc_weight: torch.Tensor) -> torch.Tensor:
    """Eq. 1: m_c(x, y) = ReLU(sum_k w^c_k x'_k(x, y)).

    x_prime (B, K, h, w), fc_weight (C, K) -> cams (B, C, h, w), >= 0.
    """
    return cam_scores(x_prime, fc_weight).relu()


def keypoint_vectors(x_prime: torch.Tensor, x_c: torch.Tensor, weighting: str = "softmax") -> torch.Tensor:
    """Eq. 2: f_c = sum_{i,j} a_c(i, j) x^c_{i,j}, with a_c from x'_c as chosen by ``weighting``
    (``"softmax"``: spatial softmax of x'_c; ``"mean"``: x'_c / (h w); ``"sum"``: x'_c).

    x_prime (B, C, h, w), x_c (B, D', h, w) -> F_c (B, C, D').
    """
    a = rearrange(x_prime, "b c h w -> b c (h w)")  # (B, C, N)
    if weighting == "softmax":
        a = a.softmax(dim=-1)
    elif weighting == "mean":
        a = a / a.shape[-1]
    elif weighting != "sum":
        raise ValueError(f"keypoint_vectors: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    v = rearrange(x_c, "b d h w -> b (h w) d")  # (B, N, D')
    return torch.bmm(a, v)  # (B, C, D')


class CAMHead(nn.Module):
    """X (B, in_channels, h, w) -> dict(logits (B, C), cams (B, C, h, w), protos (B, C, proto_dim),
    x_prime (B, C, h, w)). See the module docstring for Eq. 1-2 and the ``weighting`` choice."""

    def __init__(self, in_channels: int, num_keypoints: int, proto_dim: int, weighting: str = "softmax",
                 pool: str = "gap", lse_r: float = 5.0, lmp_eps: float = 0.01):
        super().__init__()
        if weighting not in WEIGHTINGS:
            raise ValueError(f"CAMHead: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if pool not in POOLS:
            raise ValueError(f"CAMHead: pool must be one of {POOLS}, got {pool!r}")
        if pool == "lse" and not lse_r > 0:
            raise ValueError(f"CAMHead: lse_r must be > 0, got {lse_r}")
        if pool == "lmp" and not lmp_eps >= 0:
            raise ValueError(f"CAMHead: lmp_eps must be >= 0, got {lmp_eps}")
        self.pool, self.lse_r, self.lmp_eps = pool, lse_r, lmp_eps
        self.to_classes = nn.Conv2d(in_channels, num_keypoints, 1)  # X -> X'
        self.fc = nn.Linear(num_keypoints, num_keypoints)  # GAP(X') -> logits
        self.to_proto = nn.Conv2d(in_channels, proto_dim, 1)  # X -> X^c
        self.weighting = weighting

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x_prime = self.to_classes(x)  # (B, C, h, w)
        scores = cam_scores(x_prime, self.fc.weight)  # (B, C, h, w)  Eq. 1 before the ReLU
        if self.pool == "gap":
            logits = self.fc(x_prime.mean(dim=(2, 3)))  # (B, C)
        elif self.pool == "lse":  # smooth max of the class maps s_c
            logits = lse_pool(scores, self.lse_r) + self.fc.bias  # (B, C)
        elif self.pool == "lmp":  # leaky max of the class maps s_c
            logits = leaky_max_pool(scores, self.lmp_eps) + self.fc.bias  # (B, C)
        else:  # peak stimulation: the mean of s_c over its local maxima
            logits = peak_pool(scores) + self.fc.bias  # (B, C)
        cams = scores.relu()  # (B, C, h, w)  Eq. 1
        protos = keypoint_vectors(x_prime, self.to_proto(x), self.weighting)  # (B, C, D')  Eq. 2
        return {"logits": logits, "cams": cams, "protos": protos, "x_prime": x_prime}
