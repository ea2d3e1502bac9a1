"""The interactive explorer (notebooks/09_explorer.ipynb): one LOFR map of one crop at a time.

Pick a validation crop, a joint, a decoder layer, a head (or "mean"), a scale and one of four views:

=========== ====================================================================== ==================
view        what it is                                                             grid
=========== ====================================================================== ==================
"cam"       the CAM M_c of the CNN branch (Eq. 1), >= 0                            the CAM stride
"key_map"   SPE's coarse keypoint location map F^key_c (the input of Eq. 3)        the chosen scale
"attention" the decoder cross-attention of joint c's query at the chosen layer /   the chosen scale
            head over the chosen scale's cells (Eq. 6); one softmax runs over the
            cells of all scales together, so the scales' maps of one query sum to 1
"fused"     the fused response map (last layer, head mean, all scales; sums to 1)  the finest stride
=========== ====================================================================== ==================

Everything is read from ``LOFR.forward``'s outputs (``cams``, ``key_maps``, ``dec_attn``,
``response_fused``, ``shapes``, ``strides``), except the per-head attention: ``dec_attn`` holds the
head mean, so :func:`record_cross_attention` hooks each decoder layer's cross-attention module for
one forward pass and keeps its per-head weights (B, h, C, L) (no change to the model).

:func:`compute_views` returns the numpy maps, :func:`explorer_figure` draws one of them over the
crop with the model's prediction (x) and the ground truth (o); :func:`explore` wires both to
ipywidgets. The Baseline (no CAM head, no SPE) offers only "attention" and "fused".
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.ticker import FuncFormatter

from lofr.models.decoder import split_scales
from lofr.models.lofr import decode_response_maps
from lofr.viz import crop_to_rgb

__all__ = ["VIEWS", "Views", "record_cross_attention", "available_views", "compute_views", "explorer_figure",
           "explore"]

VIEWS: dict[str, str] = {
    "cam": "CAM M_c (Eq. 1)",
    "key_map": "SPE key map F^key_c (Eq. 3 input)",
    "attention": "decoder cross-attention (Eq. 6)",
    "fused": "fused response map",
}

# colour-bar tick labels, each with its own exponent: no offset / multiplier text ("1e-5") above the bar
_TICKS = FuncFormatter(lambda x, _pos: f"{x:.3g}")


@dataclass
class Views:
    """One crop, one joint: the maps of every view the model has, and what goes on the figure.

    rgb (H, W, 3) the crop in [0, 1]; maps: view -> (h, w) array; strides: view -> its grid's
    stride (input pixels per cell); pred (2,) the model's keypoint (x, y) in crop pixels (arg-max
    of the fused response map, as ``LOFR.predict``); truth (2,) or None when the joint is not in the
    crop; prob: the final presence probability; attention_share: the share of the query's attention
    (chosen layer / head) on the chosen scale; joint, joint_name, layer, head, scale: the choice."""

    rgb: np.ndarray
    maps: dict[str, np.ndarray]
    strides: dict[str, int]
    pred: np.ndarray
    truth: np.ndarray | None
    prob: float
    attention_share: float
    joint: int
    joint_name: str
    layer: int
    head: int | str
    scale: int


@contextmanager
def record_cross_attention(model):
    """Within the block, every forward pass of ``model`` appends each decoder layer's per-head
    cross-attention weights (B, h, C, L) to the yielded list (layer order, detached); the hooks
    are removed on exit. ``Attention.forward`` returns (out, weights): the hook keeps ``weights``."""
    records: list[torch.Tensor] = []
    hooks = [layer.cross_attn.register_forward_hook(lambda _m, _inp, out: records.append(out[1].detach()))
             for layer in model.decoder.layers]
    try:
        yield records
    finally:
        for h in hooks:
            h.remove()


def available_views(model) -> list[str]:
    """The views ``model`` has: all four for LOFR; without SPE no "key_map", without the CAM head
    (the Baseline) no "cam"."""
    views = ["cam"] if model.cam_head is not None else []
    views += ["key_map"] if model.spe is not None else []
    return views + ["attention", "fused"]


def _joint_index(model, joint) -> tuple[int, str]:
    names = list(model.schema.keypoints) if model.schema is not None else \
        [f"joint {c}" for c in range(model.num_keypoints)]
    if isinstance(joint, str):
        if joint not in names:
            raise ValueError(f"unknown joint {joint!r}: choose one of {names}")
        return names.index(joint), joint
    if isinstance(joint, (bool, np.bool_)) or not isinstance(joint, (int, np.integer)) or \
            not 0 <= joint < len(names):
        raise ValueError(f"joint must be a name or an index in [0, {len(names)}), got {joint!r}")
    return int(joint), names[joint]


def _check_choice(model, dataset, index, layer, head, scale) -> None:
    n, depth, nhead = len(dataset), len(model.decoder.layers), model.config.nhead
    if not isinstance(index, (int, np.integer)) or not 0 <= index < n:
        raise ValueError(f"index must be in [0, {n}), got {index!r}")
    if not isinstance(layer, (int, np.integer)) or not 0 <= layer < depth:
        raise ValueError(f"layer must be a decoder layer in [0, {depth}), got {layer!r}")
    if head != "mean" and (not isinstance(head, (int, np.integer)) or not 0 <= head < nhead):
        raise ValueError(f"head must be 'mean' or in [0, {nhead}), got {head!r}")
    if scale not in model.strides:
        raise ValueError(f"scale must be one of the encoder's strides {model.strides}, got {scale!r}")


@torch.no_grad()
def compute_views(model, dataset, index: int, joint, layer: int, head, scale: int) -> Views:
    """One forward pass of crop ``dataset[index]`` -> the maps of joint ``joint`` (name or index).

    layer: decoder layer in [0, D_De); head: "mean" or in [0, nhead) (both for "attention" only);
    scale: an encoder stride (``model.strides``) for "key_map" and "attention". The model runs in
    eval mode (restored afterwards). Bad choices raise ValueError."""
    c, name = _joint_index(model, joint)
    _check_choice(model, dataset, index, layer, head, scale)
    sample = dataset[int(index)]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with record_cross_attention(model) as per_head:
            out = model(sample["image"][None].to(device))
    finally:
        model.train(was_training)

    attn = per_head[layer][0].mean(dim=0) if head == "mean" else per_head[layer][0, head]  # (C, L)
    attn_maps = split_scales(attn[None], out["shapes"])  # [(1, C, h_s, w_s)], summing to 1 over s
    s = model.strides.index(scale)
    maps = {"attention": attn_maps[s][0, c], "fused": out["response_fused"][0, c]}  # (h, w) each
    strides = {"attention": scale, "fused": model.strides[0]}
    if out["cams"] is not None:
        maps["cam"], strides["cam"] = out["cams"][0, c], model.cam_stride  # Eq. 1
    if out["key_maps"] is not None:
        maps["key_map"], strides["key_map"] = out["key_maps"][s][0, c], scale  # F^key, Eq. 3

    pred, _ = decode_response_maps(out["response_fused"], model.strides[0])  # (1, C, 2)
    present = bool(sample["labels"][c] > 0)
    return Views(rgb=crop_to_rgb(sample["image"]), maps={k: v.float().cpu().numpy() for k, v in maps.items()},
                 strides=strides, pred=pred[0, c].cpu().numpy(),
                 truth=sample["keypoints"][c].numpy().astype(float) if present else None,
                 prob=float(out["logits"][0, c].sigmoid()), attention_share=float(attn_maps[s][0, c].sum()),
                 joint=c, joint_name=name, layer=int(layer), head=head if head == "mean" else int(head),
                 scale=int(scale))


def _what(views: Views, view: str) -> str:
    """The figure title's last two lines: which choices the map depends on, and its values."""
    m, st = views.maps[view], views.strides[view]
    grid = f"stride {st} ({m.shape[0]}x{m.shape[1]})"
    if view == "attention":
        return (f"layer {views.layer}, head {views.head}, {grid}\n"
                f"{views.attention_share:.0%} of the attention, peak {m.max():.3g}")
    if view == "fused":
        return f"last layer, head mean, all scales -> {grid}\nsum {m.sum():.2f}, peak {m.max():.3g}"
    return f"{grid}\nmax {m.max():.3g}"


def explorer_figure(model, dataset, index: int, joint, layer: int, head, scale: int, view: str, ax=None):
    """The ``view`` map (see :data:`VIEWS`) of joint ``joint`` on crop ``dataset[index]``, stretched over
    the crop (cell (i, j) of a stride-s map covers pixels [j s, (j+1) s) x [i s, (i+1) s)), with the
    model's prediction (cyan x), the ground truth (white o, when the joint is in the crop), the joint's
    name and values in the title and a colour bar. Arguments as :func:`compute_views`.
    ax: draw into this axis (e.g. a panel of a grid) instead of a new figure. Returns the figure."""
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}: choose one of {list(VIEWS)}")
    if view not in available_views(model):
        raise ValueError(f"view {view!r} needs a module this model does not have; it offers "
                         f"{available_views(model)}")
    v = compute_views(model, dataset, index, joint, layer, head, scale)
    if ax is None:
        _, ax = plt.subplots(figsize=(3.2, 4.4))
    fig = ax.figure
    h, w = v.rgb.shape[:2]
    ax.imshow(v.rgb)
    im = ax.imshow(v.maps[view], cmap="magma", alpha=0.65, extent=(0, w, h, 0), interpolation="nearest")
    if v.truth is not None:
        ax.scatter(*v.truth, marker="o", s=40, facecolors="none", edgecolors="white", linewidths=1.4,
                   label="truth")
    ax.scatter(*v.pred, marker="x", s=40, c="cyan", linewidths=1.6, label="prediction")
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.axis("off")
    truth = "o absent" if v.truth is None else f"o ({v.truth[0]:.0f}, {v.truth[1]:.0f})"
    ax.set_title(f"crop {index}: {v.joint_name}, p={v.prob:.2f}\nx ({v.pred[0]:.0f}, {v.pred[1]:.0f}), {truth}\n"
                 f"{VIEWS[view]}\n{_what(v, view)}", fontsize=7)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    # every tick label carries its own exponent ("2e-05"): the default formatter's common factor ("1e-5")
    # is drawn above the bar at the full font size, over the title of the next panel
    bar.ax.yaxis.set_major_formatter(_TICKS)
    bar.ax.tick_params(labelsize=6)
    return fig


def explore(model, dataset, index: int = 0, joint=0, view: str = "fused"):
    """The ipywidgets explorer: sliders / drop-downs for crop, joint, decoder layer, head, scale and
    view, redrawing :func:`explorer_figure` on every change. Returns the ``ipywidgets.interactive``
    (display it, or make it a notebook cell's last expression)."""
    import ipywidgets as widgets

    _, name = _joint_index(model, joint)
    names = list(model.schema.keypoints) if model.schema is not None else \
        [f"joint {c}" for c in range(model.num_keypoints)]
    depth = len(model.decoder.layers)
    wide = {"description_width": "initial"}  # the label's own width: the default 90 px cut "decoder layer"
    controls = dict(
        index=widgets.IntSlider(value=index, min=0, max=len(dataset) - 1, description="crop"),
        joint=widgets.Dropdown(options=names, value=name, description="joint"),
        layer=widgets.IntSlider(value=depth - 1, min=0, max=depth - 1, description="decoder layer", style=wide),
        head=widgets.Dropdown(options=["mean", *range(model.config.nhead)], value="mean", description="head"),
        scale=widgets.Dropdown(options=list(model.strides), value=model.strides[0], description="stride"),
        view=widgets.Dropdown(options=[(VIEWS[k], k) for k in available_views(model)], value=view,
                              description="view"),
    )

    def draw(**choice):
        explorer_figure(model, dataset, **choice)
        plt.show()

    return widgets.interactive(draw, **controls)
