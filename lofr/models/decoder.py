"""RGP-De: the relation-guided pose decoder (paper Sec. 3.4, Fig. 3b).

C queries — one per keypoint, the relation-encoded pose prototypes P'_C from RePPG (or, for the
DETR baseline, zeros + learned query embeddings) — cross-attend the multi-scale context memory
F_m (B, L, d), L = sum_s h_s * w_s, through ``num_layers`` post-norm DETR decoder layers:

    [optional] q = LN(q + SelfAttn(q + q_pos, q + q_pos, q))      (relations among the queries)
               q = LN(q + CrossAttn(q + q_pos, F_m + pos, F_m))   (Eq. 5-8 with Q from prototypes)
               q = LN(q + FFN(q))                                  (Eq. 9; FFN = Linear-ReLU-Linear)

Outputs, all returned (no global state):

* part-aware response maps R_i (Sec. 3.4): the last layer's cross-attention weights averaged over
  heads, (B, C, L), split per scale back into maps (B, C, h_s, w_s). The softmax runs over all L
  positions of all scales together, so the maps of one query sum to 1 across scales.
* a fused map on the finest grid (see :func:`fuse_response_maps` for the choice made).
* part features F^p (B, C, d): response-weighted pooling of the memory, f^p_i = sum_l R_i[l] F_m[l]
  (the attention weights are the pooling weights; these feed the part diversity constraint Eq. 11).
* per-layer keypoint-presence logits (num_layers, B, C) from a classifier on each layer's output
  (see :class:`KeypointClassifier`), for the final BCE (Eq. 12, L_cls_tran in Eq. 13) and optional
  auxiliary losses on the intermediate layers (DETR-style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["Attention", "DecoderLayer", "PoseDecoder", "KeypointClassifier",
           "split_scales", "fuse_response_maps"]


class Attention(nn.Module):
    """Multi-head attention (Eq. 5-8) with separate q/k/v/out projections.

    forward(q (B, Nq, d), k (B, Nk, d), v (B, Nk, d), need_weights) ->
        (out (B, Nq, d), weights (B, h, Nq, Nk) or None).
    With ``need_weights=False`` it uses ``F.scaled_dot_product_attention``; otherwise the softmax is
    written out so that the weights (Eq. 6) can be returned.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        if d_model % nhead:
            raise ValueError(f"d_model={d_model} is not divisible by nhead={nhead}")
        self.nhead, self.dropout = nhead, dropout
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(3))
        self.out_proj = nn.Linear(d_model, d_model)  # W_O (Eq. 8)

    def forward(self, q, k, v, need_weights: bool = False, bias=None):
        q, k, v = (rearrange(proj(x), "b n (h e) -> b h n e", h=self.nhead)
                   for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))  # (B, h, N, e)
        p = self.dropout if self.training else 0.0
        bias = None if bias is None else bias[:, None]  # (B, 1, Nq, Nk): the same for every head
        if need_weights:
            scores = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # (B, h, Nq, Nk)
            if bias is not None:
                scores = scores + bias
            weights = scores.softmax(dim=-1)  # (B, h, Nq, Nk), Eq. 6
            out = F.dropout(weights, p, self.training) @ v  # (B, h, Nq, e)
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)  # (B, h, Nq, e)
        out = rearrange(out, "b h n e -> b n (h e)")  # (B, Nq, d), Concat of Eq. 8
        return self.out_proj(out), weights


class DecoderLayer(nn.Module):
    """Post-norm DETR decoder layer: [self-attn], cross-attn, FFN, each + residual + LayerNorm.

    forward(tgt (B, C, d), memory (B, L, d), memory_pos (B, L, d) | None, query_pos (B, C, d) | None,
            value (B, L, d) | None) -> (tgt (B, C, d), cross-attention weights averaged over heads (B, C, L))
    Position encodings are added to queries and keys only, never to values (as in DETR).
    ``value``: what the cross-attention reads (default: the memory itself, as DETR).
    """

    def __init__(self, d_model: int, nhead: int, dim_ff: int, dropout: float = 0.0, self_attn: bool = True):
        super().__init__()
        self.self_attn = Attention(d_model, nhead, dropout) if self_attn else None
        self.norm_sa = nn.LayerNorm(d_model) if self_attn else None
        self.cross_attn = Attention(d_model, nhead, dropout)
        self.norm_ca = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_ff), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(dim_ff, d_model))
        self.norm_ffn = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    @staticmethod
    def _with_pos(x, pos):
        return x if pos is None else x + pos

    def forward(self, tgt, memory, memory_pos=None, query_pos=None, value=None, attn_bias=None):
        value = memory if value is None else value  # (B, L, d)
        if self.self_attn is not None:
            q = self._with_pos(tgt, query_pos)  # (B, C, d)
            sa, _ = self.self_attn(q, q, tgt)
            tgt = self.norm_sa(tgt + self.drop(sa))  # (B, C, d)
        ca, weights = self.cross_attn(self._with_pos(tgt, query_pos), self._with_pos(memory, memory_pos),
                                      value, need_weights=True, bias=attn_bias)  # (B, C, d), (B, h, C, L)
        tgt = self.norm_ca(tgt + self.drop(ca))  # (B, C, d)
        tgt = self.norm_ffn(tgt + self.drop(self.ffn(tgt)))  # (B, C, d)
        return tgt, weights.mean(dim=1)  # (B, C, d), (B, C, L)


class KeypointClassifier(nn.Module):
    """Keypoint-presence logit per query: (B, C, d) -> (B, C).

    With ``num_keypoints`` given, every keypoint has its own linear classifier (w_c, b_c) applied to
    its own query, logit_c = <w_c, q_c> + b_c (like one FC row per class in the CAM head). With
    ``num_keypoints=None`` a single Linear(d, 1) is shared by all queries (works for any C; this is
    what DETR's class head does — the query's identity is then carried by the query itself).
    """

    def __init__(self, d_model: int, num_keypoints: int | None = None):
        super().__init__()
        self.num_keypoints = num_keypoints
        c = 1 if num_keypoints is None else num_keypoints
        self.weight = nn.Parameter(torch.empty(c, d_model))
        self.bias = nn.Parameter(torch.zeros(c))
        nn.init.trunc_normal_(self.weight, std=d_model ** -0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_keypoints is not None and x.shape[-2] != self.num_keypoints:
            raise ValueError(f"KeypointClassifier built for {self.num_keypoints} keypoints got {x.shape[-2]}")
        return (x * self.weight).sum(-1) + self.bias  # (..., C)


def split_scales(attn: torch.Tensor, spatial_shapes) -> list[torch.Tensor]:
    """(B, C, L) attention over the concatenated memory -> list of (B, C, h_s, w_s) maps.

    The memory is assumed to be the concatenation of row-major flattened maps,
    ``rearrange(f_s, 'b d h w -> b (h w) d')`` for each scale s, in ``spatial_shapes`` order.
    """
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    if sum(sizes) != attn.shape[-1]:
        raise ValueError(f"spatial_shapes {list(spatial_shapes)} cover {sum(sizes)} positions but the "
                         f"memory has L={attn.shape[-1]}")
    return [rearrange(a, "b c (h w) -> b c h w", h=int(h), w=int(w))
            for a, (h, w) in zip(attn.split(sizes, dim=-1), spatial_shapes)]


def fuse_response_maps(maps: list[torch.Tensor], size: tuple[int, int] | None = None) -> torch.Tensor:
    """Fuse per-scale response maps into one (B, C, H, W) map on the finest grid.

    Our choice (the paper does not say how the scales are combined): each scale's map is resized
    bilinearly to ``size`` (default: the largest map's (h, w), stride 4 in LOFR), renormalised to sum
    to 1 over the grid, and the scales are averaged. Renormalising turns each scale's share of the
    attention into a distribution over the same grid, so a coarse scale (fewer, larger cells) and a
    fine scale weigh equally, and the fused map of each keypoint sums to 1. (A plain mean of the
    resized attention values would let the stride-16 map dominate, since each of its cells holds
    the mass of 16 stride-4 cells.) Maps whose mass is zero stay zero.
    """
    if size is None:
        size = max((m.shape[-2:] for m in maps), key=lambda hw: hw[0] * hw[1])
    fused = []
    for m in maps:  # (B, C, h_s, w_s)
        m = m if tuple(m.shape[-2:]) == tuple(size) else \
            F.interpolate(m, size=tuple(size), mode="bilinear", align_corners=False)  # (B, C, H, W)
        mass = m.sum(dim=(-2, -1), keepdim=True)  # (B, C, 1, 1)
        fused.append(m / mass.clamp_min(torch.finfo(m.dtype).tiny))
    return torch.stack(fused).mean(dim=0)  # (B, C, H, W)


LOGITS_FROM = ("query", "part")


class PoseDecoder(nn.Module):
    """The relation-guided pose decoder (RGP-De) — also the DETR decoder of the baseline.

    Args:
        d_model, nhead, num_layers (D_De; paper: 6), dim_ff, dropout (default 0: it is slow on CPU).
        self_attn: add query self-attention before the cross-attention in each layer (DETR does).
        num_keypoints: per-keypoint classifier weights if given, else one shared linear head
            (see :class:`KeypointClassifier`).
        logits_from: what the presence classifier reads. "query" (DETR, the paper's Fig. 3): each
            layer's output query. "part" (our option): each layer's part feature, the attention-
            weighted average of the values, so logit_c = sum_l a_cl <w_c, v_l> + b_c — attention
            pooling of per-position scores (multiple-instance learning): a joint can only be called
            present where the query attends. With "query" the query state may carry the presence
            (its prototype F_c already does) and the attention is free to stay flat.

    forward(queries (B, C, d), memory (B, L, d), memory_pos (B, L, d) | None,
            spatial_shapes [(h_s, w_s), ...] with sum h_s*w_s = L, query_pos (B, C, d) | None,
            value (B, L, d) | None: the cross-attention values, default the memory) -> dict:
        hs               (num_layers, B, C, d)   each layer's output queries
        attn             (num_layers, B, C, L)   each layer's cross-attention, averaged over heads
        response_maps    list of (B, C, h_s, w_s), the last layer's attn split per scale
        response_fused   (B, C, H, W) on the largest scale's grid (:func:`fuse_response_maps`)
        part_feats       (B, C, d)   F^p = attn_last @ value (response-weighted pooling)
        logits_per_layer (num_layers, B, C)   keypoint-presence logits of every layer
        logits           (B, C)      the last layer's logits (L_cls_tran in Eq. 13)
    """

    def __init__(self, d_model: int, nhead: int, num_layers: int, dim_ff: int, dropout: float = 0.0,
                 self_attn: bool = True, num_keypoints: int | None = None, logits_from: str = "query"):
        super().__init__()
        if logits_from not in LOGITS_FROM:
            raise ValueError(f"PoseDecoder: logits_from must be one of {LOGITS_FROM}, got {logits_from!r}")
        self.logits_from = logits_from
        if num_layers < 1:
            raise ValueError(f"PoseDecoder needs num_layers >= 1, got {num_layers}")
        self.layers = nn.ModuleList(DecoderLayer(d_model, nhead, dim_ff, dropout, self_attn)
                                    for _ in range(num_layers))
        self.classifier = KeypointClassifier(d_model, num_keypoints)
        self.d_model = d_model

    def forward(self, queries, memory, memory_pos=None, spatial_shapes=None, query_pos=None, value=None,
                attn_bias=None) -> dict:
        b, c, d = queries.shape  # (B, C, d)
        if memory.ndim != 3 or memory.shape[0] != b or memory.shape[2] != d:
            raise ValueError(f"memory must be (B={b}, L, d={d}), got {tuple(memory.shape)}")
        if spatial_shapes is None:
            raise ValueError("spatial_shapes [(h, w), ...] of the memory's scales is required")
        value = memory if value is None else value  # (B, L, d)
        if value.shape != memory.shape:
            raise ValueError(f"value must have the memory's shape {tuple(memory.shape)}, got {tuple(value.shape)}")
        tgt, hs, attn = queries, [], []
        for layer in self.layers:
            tgt, a = layer(tgt, memory, memory_pos, query_pos, value, attn_bias)  # (B, C, d), (B, C, L)
            hs.append(tgt)
            attn.append(a)
        hs, attn = torch.stack(hs), torch.stack(attn)  # (D_De, B, C, d), (D_De, B, C, L)
        maps = split_scales(attn[-1], spatial_shapes)  # [(B, C, h_s, w_s)]
        if self.logits_from == "query":
            logits_per_layer = self.classifier(hs)  # (D_De, B, C)
        else:  # each layer's attention-weighted average of the values: sum_l a_cl <w_c, v_l> + b_c
            logits_per_layer = self.classifier(attn @ value[None])  # (D_De, B, C, L) @ (1, B, L, d) -> (D_De, B, C)
        return {
            "hs": hs,
            "attn": attn,
            "response_maps": maps,
            "response_fused": fuse_response_maps(maps),
            "part_feats": attn[-1] @ value,  # (B, C, L) @ (B, L, d) -> (B, C, d)
            "logits_per_layer": logits_per_layer,
            "logits": logits_per_layer[-1],
        }
