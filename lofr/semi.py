"""The weakly semi-supervised setting (paper Sec. 4.3.2, Table 4, Eq. 14-15) for notebook 07.

A fraction f of the training instances keeps its keypoint locations (``data.labelled_fraction``,
drawn with the run's seed: ``TopDownDataset._assign_locations``); the others have only the
image-level labels. Two ways to use them, as in the paper's Table 4 and
``benchmarks/table4_semi_weak.py``:

    Sup-only  ``model=sup-only``: backbone + heatmap head, the heatmap MSE (Eq. 14) on the
              labelled instances only
    LOFR-WS   ``model=lofr loss.mse=1000``: LOFR on every instance, L_semi-weak = w L_mse^sup + L_weak
              (Eq. 15), the MSE only where ``has_location`` = 1

The weight w = :data:`LOFR_WS_MSE_WEIGHT` (1000) is ours, not the paper's 1. LOFR's H (Eq. 14) is its
fused response map, an attention map summing to 1 over its N cells, scaled by the target's mass
(``losses.mass_matched_heatmaps``): per-pixel errors are ~1/N, and with w = 1 the MSE's gradient was
5e-5 of the weak losses' at initialisation (notebook 07 measures it), so Eq. 15 was Eq. 13 in all but
name. Measured on SynthPose (synth-cpu with the paper's Adam + L2, before it moved to AdamW; 612 steps,
25 % labelled; PCK@0.1 / PCK@0.2): w = 100
0.347 / 0.677, 1000 0.425 / 0.712, 10000 0.423 / 0.706 (5 % labelled: 1000 0.322 / 0.662, 10000
0.363 / 0.688). Sup-only's loss is the MSE alone, so its weight only rescales what Adam normalises.

Budget (the benchmark's default): Sup-only sees round(f N) instances per epoch, LOFR-WS all N; Sup-only
gets as many optimiser steps as LOFR-WS and a schedule of the same length (:func:`sup_only_budget`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from einops import rearrange

__all__ = ["METHODS", "LOFR_WS_MSE_WEIGHT", "labelled_indices", "sup_only_budget", "row_overrides", "format_fraction_table",
           "plot_fractions", "peak_stats"]

LOFR_WS_MSE_WEIGHT = 1000.0  # Eq. 15's weight of L_mse for LOFR-WS (module docstring: why not 1)
# key -> (label, overrides); the labelled fraction and the budget are added per row
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sup": ("Sup-only", ("model=sup-only", "loss.mse=1.0")),
    "lofr": ("LOFR-WS (Eq. 15)", ("model=lofr", f"loss.mse={LOFR_WS_MSE_WEIGHT:g}")),
}


def labelled_indices(dataset) -> np.ndarray:
    """Indices of the training instances that keep their locations (``has_location`` = 1), sorted."""
    return np.array([i for i, r in enumerate(dataset.records) if r.has_location == 1.0], dtype=np.int64)


def sup_only_budget(n_train: int, fraction: float, batch_size: int, epochs: int, max_steps: int = 0) -> list[str]:
    """Overrides that give Sup-only at ``fraction`` as many optimiser steps as LOFR-WS, on the same
    lr schedule.

    LOFR-WS's schedule spans S = epochs * (n_train // batch_size) steps; Sup-only has only
    (round(fraction * n_train) // batch_size) steps per epoch, so it gets ``optim.epochs = ceil(S /
    that)`` (a schedule as long as LOFR-WS's, up to a partial epoch) and ``max_steps`` = S, or
    ``max_steps`` when that is > 0 and smaller: a capped run stops both methods at the same step of the
    same schedule (``benchmarks/table4_semi_weak.py`` instead shortens Sup-only's schedule to the cap;
    the two agree without a cap). [] when not even one batch is labelled (the trainer then says why)."""
    full = epochs * (n_train // batch_size)
    steps = min(full, max_steps) if max_steps else full
    per_epoch = int(round(fraction * n_train)) // batch_size
    if per_epoch == 0:
        return []
    return [f"optim.epochs={max(1, math.ceil(full / per_epoch))}", f"max_steps={steps}"]


def row_overrides(method: str, fraction: float, n_train: int, batch_size: int, epochs: int,
                  max_steps: int = 0) -> list[str]:
    """The overrides of one Table-4 row: the method's, ``data.labelled_fraction`` and, for Sup-only,
    the equal-step budget (:func:`sup_only_budget`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    out = [*METHODS[method][1], f"data.labelled_fraction={fraction}"]
    if method == "sup":
        out += sup_only_budget(n_train, fraction, batch_size, epochs, max_steps)
    return out


def format_fraction_table(summaries: dict[str, dict[float, dict]], prior: dict | None = None,
                          metrics=("PCK@0.1", "PCK@0.2", "px err")) -> str:
    """One text table, rows = method x metric, columns = labelled fractions (as in Table 4).

    summaries: {method key or label: {fraction: EvalReport.summary()}}; prior: the mean-pose prior's
    summary (one row per metric, the same value in every column)."""
    fractions = sorted({f for per in summaries.values() for f in per})
    head = f"{'method':24s}{'metric':>9s}" + "".join(f"{f'{100 * f:g} %':>9s}" for f in fractions)
    lines = [head, "-" * len(head)]
    rows = [(METHODS[k][0] if k in METHODS else k, per) for k, per in summaries.items()]
    if prior is not None:
        rows.append(("mean-pose prior", {f: prior for f in fractions}))
    for label, per in rows:
        for m in metrics:
            digits = 1 if m == "px err" else 3
            cells = "".join(f"{per[f][m]:9.{digits}f}" if f in per else f"{'':9s}" for f in fractions)
            lines.append(f"{label:24s}{m:>9s}{cells}")
    return "\n".join(lines)


def plot_fractions(summaries: dict[str, dict[float, dict]], prior: dict | None = None,
                   metrics=("PCK@0.1", "PCK@0.2"), title: str = ""):
    """One panel per metric: the metric vs the labelled fraction (%) for every method, the mean-pose
    prior as a dashed horizontal line. Returns the figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for k, per in summaries.items():
            fs = sorted(per)
            ax.plot([100 * f for f in fs], [per[f][m] for f in fs], marker="o",
                    label=METHODS[k][0] if k in METHODS else k)
        if prior is not None:
            ax.axhline(prior[m], color="grey", linestyle="--", label="mean-pose prior")
        ax.set_xlabel("labelled instances (%)")
        ax.set_ylabel(m)
        ax.set_ylim(0, 1)
        ax.set_title(f"{m} vs labelled fraction", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def peak_stats(heatmaps: torch.Tensor, present: torch.Tensor | None = None) -> dict[str, float]:
    """Where a model's heatmaps peak, to tell localising from collapsing.

    heatmaps (B, C, h, w); present (B, C) bool (default: all). Over the present joints:
    ``distinct`` = mean number of different arg-max cells per crop (C when every joint peaks on its
    own cell, 1 when all share one), ``joints`` = mean number of present joints per crop, ``border`` =
    fraction of peaks on the map's outermost ring of cells."""
    b, c, h, w = heatmaps.shape
    idx = rearrange(heatmaps, "b c h w -> b c (h w)").argmax(-1)  # (B, C)
    keep = torch.ones(b, c, dtype=torch.bool) if present is None else present.bool().cpu()
    idx = idx.cpu()
    i, j = idx // w, idx % w
    on_border = (i == 0) | (i == h - 1) | (j == 0) | (j == w - 1)  # (B, C)
    distinct = [len(set(idx[k][keep[k]].tolist())) for k in range(b) if keep[k].any()]
    return {"distinct": float(np.mean(distinct)) if distinct else float("nan"),
            "joints": float(keep.sum(1)[keep.any(1)].float().mean()) if keep.any() else float("nan"),
            "border": float(on_border[keep].float().mean()) if keep.any() else float("nan")}
