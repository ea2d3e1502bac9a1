"""Transformer encoders: LOFR's multi-scale context encoder MSC-En (paper Sec. 3.3, Eq. 5-9) and
the single-scale DETR encoder of the baseline.

One encoder layer (Fig. 3a, post-norm as in DETR and the original Transformer):

    Q = (F + pos) W_Q,  K = (F + pos) W_K,  V = F W_V                          Eq. 5
    s_qk = softmax(Q K^T / sqrt(d_k))                                          Eq. 6
    SA = s_qk V  per head;  MSA = Concat(SA_1..SA_h) W_O                       Eq. 7-8
    F  = LN(F + MSA)                      (Eq. 7's residual, then LN)
    F' = LN(F + FFN(F)),  FFN = Linear -> ReLU -> Linear                       Eq. 9

Eq. 5 has no position term; like DETR we add the position encoding to the queries and keys (not
the values) in every layer, so the prior is not washed out with depth. With SPE the input F'
already contains φ (Eq. 4) and ``pos`` is the base encoding + φ (see ``lofr/models/lofr.py``).

MSC-En runs one stack of such layers per scale (stride 4, 8, 16; parameters not shared —
the paper gives every scale its own SA modules), each attending within its own scale, and
concatenates the outputs into the context memory F_m (B, L1 + L2 + L3, d).

Attention uses ``F.scaled_dot_product_attention`` (never builds the (L, L) matrix on the fast
path). For visualisation, the encoders can also return, for one chosen query pixel, each layer's
head-averaged attention weights over the keys — computed separately for that one row.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["MultiHeadAttention", "EncoderLayer", "TransformerEncoder", "MultiScaleEncoder"]


class MultiHeadAttention(nn.Module):
    """Eq. 5-8: h heads of scaled dot-product attention, d_k = dim / h, output projection W_O.

    forward(query (B, Lq, d), key (B, Lk, d), value (B, Lk, d), need_weights=False)
      -> (out (B, Lq, d), weights (B, Lq, Lk) averaged over heads, or None)
    """

    def __init__(self, dim: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        if dim % nhead:
            raise ValueError(f"d_model {dim} is not divisible by nhead {nhead}")
        self.nhead, self.dropout = nhead, dropout
        self.w_q, self.w_k, self.w_v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.w_o = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(x, "b l (h dk) -> b h l dk", h=self.nhead)  # (B, h, L, d_k)

    def attention_weights(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Eq. 6 averaged over heads: (B, Lq, d), (B, Lk, d) -> (B, Lq, Lk), rows sum to 1."""
        q, k = self._heads(self.w_q(query)), self._heads(self.w_k(key))  # (B, h, L, d_k)
        s = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5  # (B, h, Lq, Lk)
        return s.softmax(dim=-1).mean(dim=1)

    def forward(self, query, key, value, need_weights: bool = False):
        q, k, v = self._heads(self.w_q(query)), self._heads(self.w_k(key)), self._heads(self.w_v(value))
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:  # explicit softmax so the (head-averaged) weights can be returned
            s = (torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, h, Lq, Lk)
            weights = s.mean(dim=1)  # (B, Lq, Lk)
            out = torch.einsum("bhqk,bhkd->bhqd", F.dropout(s, p, self.training), v)
        else:
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, h, Lq, d_k)
        return self.w_o(rearrange(out, "b h l dk -> b l (h dk)")), weights  # (B, Lq, d)


class EncoderLayer(nn.Module):
    """Post-norm self-attention layer (Fig. 3a). forward(src (B, L, d), pos (B|1, L, d) or None,
    query_index) -> (out (B, L, d), weights (B, L) of query ``query_index`` or None)."""

    def __init__(self, dim: int, nhead: int, dim_ff: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MultiHeadAttention(dim, nhead, dropout)
        self.ffn = nn.Sequential(nn.Linear(dim, dim_ff), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim_ff, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None, query_index: int | None = None):
        qk = src if pos is None else src + pos  # (B, L, d)
        weights = None
        if query_index is not None:
            weights = self.self_attn.attention_weights(qk[:, query_index:query_index + 1], qk)[:, 0]  # (B, L)
        attn, _ = self.self_attn(qk, qk, src)  # (B, L, d)
        src = self.norm1(src + self.drop1(attn))  # MSA + residual + LN
        src = self.norm2(src + self.drop2(self.ffn(src)))  # FFN + residual + LN
        return src, weights


class TransformerEncoder(nn.Module):
    """A stack of ``num_layers`` post-norm encoder layers (DETR's encoder, the baseline's; one
    scale of MSC-En).

    forward(src (B, L, d), pos (B|1, L, d) or None, query_index=None)
      -> (memory (B, L, d), weights (B, num_layers, L) for token ``query_index``, or None)
    """

    def __init__(self, dim: int, nhead: int, num_layers: int, dim_ff: int, dropout: float = 0.0):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(dim, nhead, dim_ff, dropout) for _ in range(num_layers))

    def forward(self, src: torch.Tensor, pos: torch.Tensor | None = None, query_index: int | None = None):
        if query_index is not None and not -src.shape[1] <= query_index < src.shape[1]:
            raise IndexError(f"query_index {query_index} outside the {src.shape[1]} tokens")
        if query_index is not None and query_index < 0:
            query_index += src.shape[1]
        all_weights = []
        for layer in self.layers:
            src, w = layer(src, pos, query_index)  # (B, L, d)
            all_weights.append(w)
        weights = torch.stack(all_weights, dim=1) if query_index is not None else None  # (B, n, L)
        return src, weights


class MultiScaleEncoder(nn.Module):
    """MSC-En: one :class:`TransformerEncoder` per scale, outputs concatenated into F_m.

    forward(srcs [(B, d, h_s, w_s)], pos [(B|1, d, h_s, w_s)] or None, query_point=None, strides=None)
      -> dict(
           memory (B, L1+..+Ls, d)  the context memory F_m, scales in order, each row-major,
           pos    (B|1, L, d) or None  the matching position encodings (for the decoder),
           shapes [(h_s, w_s)],
           attn   None, or [(B, num_layers, h_s, w_s)]: for the input pixel ``query_point`` = (x, y),
                  each scale's self-attention weights of the cell containing it (needs ``strides``).
         )
    """

    def __init__(self, dim: int, nhead: int, num_layers: int, dim_ff: int, dropout: float = 0.0,
                 num_scales: int = 3):
        super().__init__()
        self.scales = nn.ModuleList(TransformerEncoder(dim, nhead, num_layers, dim_ff, dropout)
                                    for _ in range(num_scales))

    def forward(self, srcs: list[torch.Tensor], pos: list[torch.Tensor] | None = None,
                query_point: tuple[float, float] | None = None, strides=None) -> dict:
        if len(srcs) != len(self.scales):
            raise ValueError(f"MultiScaleEncoder built for {len(self.scales)} scales got {len(srcs)} maps")
        if query_point is not None and strides is None:
            raise ValueError("MultiScaleEncoder: query_point needs the maps' strides")
        memory, memory_pos, shapes, attn = [], [], [], []
        for s, (encoder, src) in enumerate(zip(self.scales, srcs)):
            h, w = src.shape[-2:]
            tokens = rearrange(src, "b d h w -> b (h w) d")  # (B, h*w, d)
            p = None if pos is None else rearrange(pos[s], "b d h w -> b (h w) d")
            q = None
            if query_point is not None:  # the cell of stride s containing the pixel (x, y)
                i = min(max(int(query_point[1] // strides[s]), 0), h - 1)
                j = min(max(int(query_point[0] // strides[s]), 0), w - 1)
                q = i * w + j
            out, weights = encoder(tokens, p, q)  # (B, h*w, d), (B, n, h*w) or None
            memory.append(out)
            memory_pos.append(p)
            shapes.append((h, w))
            if weights is not None:
                attn.append(rearrange(weights, "b n (h w) -> b n h w", h=h))
        return {
            "memory": torch.cat(memory, dim=1),  # (B, L, d)
            "pos": None if pos is None else torch.cat(memory_pos, dim=1),  # (B|1, L, d)
            "shapes": shapes,
            "attn": attn if query_point is not None else None,
        }
