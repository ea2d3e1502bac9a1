"""RePPG: Relation-encoded Pose Prototype Generation (paper Sec. 3.4, Eq. 10).

The category-specific keypoint vectors F_c (B, C, d) of the CAM head (Eq. 2) become the node
features of a graph whose nodes are the C keypoints and whose edges are the schema's kinematic
edges plus self loops (a_ij = 1 for adjacent joints or i = j). A few SemGCN layers (Zhao et al.,
CVPR 2019, the paper's ref. [49]) propagate features along the skeleton; their output is the set
of relation-encoded pose prototypes P'_C (B, C, d) that the decoder uses as queries.

Eq. 10 (written row-wise, one node per row):

    F^(l+1) = (diag(Â) ⊙ I) F^(l) W0  +  (Â ⊙ (1 - I)) F^(l) W1  + b,
    Â = φ(M_r ⊙ A),   φ = softmax over each node's neighbours (row-wise, -inf off the graph).

* M_r (C, C) is one learnable scalar per non-zero of A ("local semantic relations", learned with
  the node features); it may become asymmetric (M_r[i, j] != M_r[j, i]).
* As in SemGCN, the self term and the neighbour term have separate weight matrices W0 and W1
  (the paper writes a single W; we follow its reference [49]).
* Convention: Â[i, j] is the weight of the message *from* joint j *into* joint i, so each row of
  Â sums to 1. :meth:`SemGraphConv.relation_matrix` returns this Â for notebooks.

The message passing is a torch-geometric ``MessagePassing`` layer; a batch of B pose graphs is
handled as one big graph of B disjoint copies (edge_index offset by b * C).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

with warnings.catch_warnings():
    # torch-geometric 2.8 calls torch.jit.script at import time, which torch >= 2.10 flags as
    # deprecated; the warning is about PyG's internals (pooling ops we do not use), not lofr.
    warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=FutureWarning)
    from torch_geometric.nn import MessagePassing
    from torch_geometric.utils import softmax as segment_softmax

from lofr.data.schemas import KeypointSchema, get_schema

__all__ = ["SemGraphConv", "RePPG", "batch_edge_index"]


def _as_edge_index(graph) -> torch.Tensor:
    """KeypointSchema / schema name / (2, E) array -> (2, E) long tensor (self loops included
    when built from a schema)."""
    if isinstance(graph, (KeypointSchema, str)):
        graph = get_schema(graph).edge_index(self_loops=True)
    ei = torch.as_tensor(np.asarray(graph), dtype=torch.long)
    if ei.ndim != 2 or ei.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(ei.shape)}")
    return ei


def batch_edge_index(edge_index: torch.Tensor, batch_size: int, num_nodes: int) -> torch.Tensor:
    """(2, E) edges of one graph -> (2, B*E) edges of B disjoint copies (copy b uses nodes
    b*C .. b*C + C-1), matching ``rearrange(x, 'b c d -> (b c) d')``."""
    offsets = torch.arange(batch_size, device=edge_index.device) * num_nodes  # (B,)
    ei = edge_index[:, None, :] + offsets[None, :, None]  # (2, B, E)
    return rearrange(ei, "two b e -> two (b e)")


class SemGraphConv(MessagePassing):
    """One SemGCN layer (Eq. 10) over a fixed C-node graph.

    Args:
        in_dim, out_dim: node feature sizes.
        graph: a KeypointSchema (or its name) — its kinematic edges + self loops are used — or an
            explicit (2, E) edge_index (source row 0, target row 1, torch-geometric convention).
        num_nodes: C; defaults to the schema's number of keypoints / ``edge_index.max() + 1``.

    forward(x (B, C, in_dim)) -> (B, C, out_dim)
    """

    def __init__(self, in_dim: int, out_dim: int, graph, num_nodes: int | None = None, bias: bool = True):
        super().__init__(aggr="add", node_dim=0)
        edge_index = _as_edge_index(graph)
        if num_nodes is None:
            num_nodes = get_schema(graph).num_keypoints if isinstance(graph, (KeypointSchema, str)) \
                else int(edge_index.max()) + 1
        if edge_index.numel() and (edge_index.min() < 0 or edge_index.max() >= num_nodes):
            raise ValueError(f"edge_index refers to nodes outside 0..{num_nodes - 1}")
        if len({tuple(e) for e in edge_index.t().tolist()}) != edge_index.shape[1]:
            raise ValueError("edge_index has duplicate edges")
        self.num_nodes = num_nodes
        self.register_buffer("edge_index", edge_index, persistent=False)  # (2, E)
        self.register_buffer("is_self", edge_index[0] == edge_index[1], persistent=False)  # (E,)
        self.lin_self = nn.Linear(in_dim, out_dim, bias=False)  # W0
        self.lin_neigh = nn.Linear(in_dim, out_dim, bias=False)  # W1
        # M_r: one learnable relation per non-zero of A; all equal at init (SemGCN initialises
        # them to 1), i.e. Â starts as the row-normalised adjacency.
        self.edge_logit = nn.Parameter(torch.ones(edge_index.shape[1]))  # (E,)
        self.bias = nn.Parameter(torch.zeros(out_dim)) if bias else None

    def edge_weights(self) -> torch.Tensor:
        """Â's non-zeros (E,): softmax of M_r over the incoming edges of each target node."""
        return segment_softmax(self.edge_logit, self.edge_index[1], num_nodes=self.num_nodes)

    def relation_matrix(self) -> torch.Tensor:
        """Dense (C, C) Â = φ(M_r ⊙ A): entry [i, j] weighs joint j's message into joint i (rows sum
        to 1; zero off the graph). Detach it for plotting."""
        a = self.edge_logit.new_zeros(self.num_nodes, self.num_nodes)
        return a.index_put((self.edge_index[1], self.edge_index[0]), self.edge_weights())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _ = x.shape  # (B, C, in_dim)
        if c != self.num_nodes:
            raise ValueError(f"SemGraphConv built for {self.num_nodes} keypoints got {c}")
        flat = rearrange(x, "b c d -> (b c) d")  # (B*C, in_dim)
        edge_index = batch_edge_index(self.edge_index, b, c)  # (2, B*E)
        alpha = self.edge_weights().repeat(b)  # (B*E,)
        is_self = self.is_self.repeat(b)  # (B*E,)
        out = self.propagate(edge_index, h0=self.lin_self(flat), h1=self.lin_neigh(flat),
                             alpha=alpha, is_self=is_self, size=(b * c, b * c))  # (B*C, out_dim)
        if self.bias is not None:
            out = out + self.bias
        return rearrange(out, "(b c) d -> b c d", b=b)

    def message(self, h0_j: torch.Tensor, h1_j: torch.Tensor, alpha: torch.Tensor,
                is_self: torch.Tensor) -> torch.Tensor:
        # self loop: W0 x_i; neighbour j -> i: W1 x_j; both weighted by Â[i, j]
        h = torch.where(is_self[:, None], h0_j, h1_j)  # (B*E, out_dim)
        return alpha[:, None] * h


class RePPG(nn.Module):
    """Relation-encoded pose prototypes: F_c (B, C, in_dim) -> P'_C (B, C, dim).

    Architecture (our choice; the paper gives only Eq. 10): an optional linear projection
    in_dim -> dim, then ``num_layers`` SemGraphConv layers with LayerNorm + ReLU between them,
    and a residual connection around the whole stack followed by a LayerNorm:

        x0 = proj(F_c);   x = x0
        for l < L-1:  x = ReLU(LN_l(gconv_l(x)))
        P' = LN(x0 + gconv_{L-1}(x))

    The residual keeps each prototype's own category semantics (Eq. 2) and lets the graph add
    the structural relations on top (SemGCN also uses residual blocks); the final LN puts the
    prototypes on the scale of the post-norm decoder's states. ``residual=False`` gives a
    plain stack P' = LN(gconv_{L-1}(...)).
    """

    def __init__(self, graph, dim: int, num_layers: int = 2, in_dim: int | None = None,
                 residual: bool = True, num_nodes: int | None = None):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"RePPG needs num_layers >= 1, got {num_layers}")
        in_dim = dim if in_dim is None else in_dim
        self.proj = nn.Identity() if in_dim == dim else nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(SemGraphConv(dim, dim, graph, num_nodes) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(num_layers - 1))
        self.out_norm = nn.LayerNorm(dim)
        self.residual = residual

    @property
    def num_nodes(self) -> int:
        return self.layers[0].num_nodes

    def forward(self, protos: torch.Tensor) -> torch.Tensor:
        x0 = self.proj(protos)  # (B, C, dim)
        x = x0
        for gconv, norm in zip(self.layers[:-1], self.norms):
            x = F.relu(norm(gconv(x)))  # (B, C, dim)
        x = self.layers[-1](x)  # (B, C, dim)
        return self.out_norm(x0 + x if self.residual else x)  # (B, C, dim)

    def relation_matrices(self) -> torch.Tensor:
        """(num_layers, C, C): each layer's learned Â (rows sum to 1), for notebooks."""
        return torch.stack([layer.relation_matrix() for layer in self.layers])
