"""Decoding response maps jointly with an unpaired pose prior (not in the paper).

The mean-pose prior — every joint at its mean crop position — already scores PCK@0.1 0.33 on SynthPose
without looking at the image. A weak model's map is only useful if it adds to that. This decoder asks the
question fairly: it combines each joint's map with a pose model fitted on training poses WITHOUT their
images (the information the mean-pose prior uses, plus how joints sit relative to their kinematic
neighbours) and picks, per crop, the pose that maximises

    sum_c  alpha * log m_c(x_c)  +  log N(x_c; mu_c, sigma_c^2)  +  sum_{(p, c) in T} log N(x_c - x_p; mu_pc, sigma_pc^2)

over a few candidates per joint: the ``top_k`` highest local maxima (3x3) of its map, at cell centres, and
the joint's mean position (so a map that says nothing leaves the joint at the prior). m_c is the map
normalised to sum to 1; N are axis-aligned Gaussians; T is a spanning tree of the schema's kinematic graph
(breadth-first from joint 0), so the maximum is exact by max-product dynamic programming over T.
A pictorial-structures model (Felzenszwalb & Huttenlocher 2005) with the map as the appearance term.

Choices: alpha = 1 (both terms are log-densities: the map read as p(x | image), the pose model as the prior);
no sub-cell refinement of the chosen candidates; joints never located in training get the crop centre.

numpy in, numpy out (as the rest of ``lofr.eval``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["PosePrior", "spanning_tree", "local_maxima"]


def spanning_tree(num_keypoints: int, edges) -> list[tuple[int, int]]:
    """(parent, child) pairs of a breadth-first spanning tree of ``edges`` from joint 0, parents first;
    joints the edges do not reach are roots of their own (no pair)."""
    nbrs = {c: [] for c in range(num_keypoints)}
    for a, b in edges:
        nbrs[a].append(b)
        nbrs[b].append(a)
    seen, order = set(), []
    for root in range(num_keypoints):
        if root in seen:
            continue
        seen.add(root)
        queue = [root]
        while queue:
            p = queue.pop(0)
            for c in sorted(nbrs[p]):
                if c not in seen:
                    seen.add(c)
                    order.append((p, c))
                    queue.append(c)
    return order


def local_maxima(maps: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """maps (B, C, h, w) -> (cells (B, C, K, 2) as (i, j), values (B, C, K)): the ``top_k`` highest cells
    that are the maximum of their 3x3 neighbourhood, best first; fewer than K maxima are padded with the
    best one."""
    b, c, h, w = maps.shape
    padded = np.pad(maps, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    neigh = np.stack([padded[:, :, 1 + di:1 + di + h, 1 + dj:1 + dj + w]
                      for di in (-1, 0, 1) for dj in (-1, 0, 1)]).max(axis=0)  # (B, C, h, w)
    is_max = maps >= neigh
    score = np.where(is_max, maps, -np.inf).reshape(b, c, h * w)
    idx = np.argsort(-score, axis=-1, kind="stable")[..., :top_k]  # (B, C, K)
    vals = np.take_along_axis(score, idx, -1)
    best = idx[..., :1]
    idx = np.where(np.isfinite(vals), idx, best)
    vals = np.take_along_axis(maps.reshape(b, c, h * w), idx, -1)
    return np.stack([idx // w, idx % w], -1), vals


@dataclass
class PosePrior:
    """A pose model of crop-space joint positions: per joint mean / std, and the offset mean / std along
    each edge of ``tree``. Fit with :meth:`fit` on (N, C, 2) poses (NaN = unlabelled)."""

    mean: np.ndarray  # (C, 2)
    std: np.ndarray  # (C, 2)
    tree: list  # [(parent, child)]
    offset_mean: np.ndarray  # (E, 2)
    offset_std: np.ndarray  # (E, 2)
    input_size: tuple[int, int]  # (H, W)
    alpha: float = 1.0  # the map term's weight (1: map and pose model as two log-densities)

    @classmethod
    def fit(cls, poses: np.ndarray, edges, input_size, min_std: float = 1.0) -> "PosePrior":
        """poses (N, C, 2) in crop pixels, NaN where unlabelled; edges: the schema's kinematic edges.
        Standard deviations are floored at ``min_std`` pixels; a joint (or edge) never seen gets the crop
        centre (offset 0) and the crop's size as its spread."""
        n, c, _ = poses.shape
        h, w = input_size
        with np.errstate(invalid="ignore"), _quiet():
            mean = np.nanmean(poses, axis=0)
            std = np.nanstd(poses, axis=0)
        unseen = ~np.isfinite(mean).all(-1)
        mean[unseen] = (w / 2, h / 2)
        std[unseen] = (w, h)
        tree = spanning_tree(c, edges)
        off = np.stack([poses[:, ch] - poses[:, p] for p, ch in tree], 1) if tree else np.zeros((n, 0, 2))
        with np.errstate(invalid="ignore"), _quiet():
            om, osd = np.nanmean(off, axis=0), np.nanstd(off, axis=0)
        bad = ~np.isfinite(om).all(-1)
        om[bad], osd[bad] = 0.0, (w, h)
        return cls(mean, np.maximum(std, min_std), tree, om, np.maximum(osd, min_std), (h, w))

    def candidates(self, maps: np.ndarray, stride: int, top_k: int = 4) -> tuple[np.ndarray, np.ndarray]:
        """maps (B, C, h, w) >= 0 -> (xy (B, C, K+1, 2) crop pixels, log m (B, C, K+1)): the top-k local maxima
        at cell centres and the joint's mean position (its cell's value)."""
        b, c, h, w = maps.shape
        m = maps / np.maximum(maps.reshape(b, c, -1).sum(-1), 1e-12)[..., None, None]
        cells, vals = local_maxima(m, top_k)  # (B, C, K, 2), (B, C, K)
        xy = np.stack([(cells[..., 1] + 0.5) * stride, (cells[..., 0] + 0.5) * stride], -1).astype(np.float64)
        mi = np.clip((self.mean[:, 1] // stride).astype(int), 0, h - 1)
        mj = np.clip((self.mean[:, 0] // stride).astype(int), 0, w - 1)
        mval = m[:, np.arange(c), mi, mj]  # (B, C)
        xy = np.concatenate([xy, np.broadcast_to(self.mean, (b, c, 2))[:, :, None]], 2)
        vals = np.concatenate([vals, mval[..., None]], 2)
        return xy, np.log(np.maximum(vals, 1e-12))

    def decode(self, maps: np.ndarray, stride: int, alpha: float | None = None, top_k: int = 4) -> np.ndarray:
        """maps (B, C, h, w) -> keypoints (B, C, 2) (x, y) in crop pixels: the exact maximiser of the
        module docstring's objective over the candidates (max-product over the tree); ``alpha``: the map
        term's weight (default ``self.alpha``)."""
        alpha = self.alpha if alpha is None else alpha
        xy, logm = self.candidates(maps, stride, top_k)  # (B, C, K, 2), (B, C, K)
        unary = alpha * logm + _log_gauss(xy - self.mean[None, :, None], self.std[None, :, None])  # (B, C, K)
        b, c, k = unary.shape
        children = {p: [] for p in range(c)}
        edge_of = {}
        for e, (p, ch) in enumerate(self.tree):
            children[p].append(ch)
            edge_of[ch] = e
        best_child = {}  # child -> (B, K_parent) index of the child's best candidate given the parent's
        total = unary.copy()  # (B, C, K): unary + the children's messages
        for p, ch in reversed(self.tree):  # children before their parents
            e = edge_of[ch]
            d = xy[:, ch, None, :, :] - xy[:, p, :, None, :]  # (B, Kp, Kc, 2): child minus parent
            pair = _log_gauss(d - self.offset_mean[e], self.offset_std[e])  # (B, Kp, Kc)
            score = pair + total[:, ch, None, :]  # (B, Kp, Kc)
            best_child[ch] = score.argmax(-1)  # (B, Kp)
            total[:, p] += score.max(-1)
        choice = np.zeros((b, c), dtype=int)
        roots = [j for j in range(c) if j not in edge_of]
        for r in roots:
            choice[:, r] = total[:, r].argmax(-1)
        for p, ch in self.tree:  # parents before their children
            choice[:, ch] = best_child[ch][np.arange(b), choice[:, p]]
        return np.take_along_axis(xy, choice[:, :, None, None].repeat(2, -1), 2)[:, :, 0]


def _log_gauss(d: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Sum over the last axis (x, y) of log N(d; 0, std^2) without the constant."""
    return (-0.5 * (d / std) ** 2 - np.log(std)).sum(-1)


class _quiet:
    """Silence numpy's 'Mean of empty slice' RuntimeWarning (a joint never labelled: handled after)."""

    def __enter__(self):
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)
