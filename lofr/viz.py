"""Drawing: skeletons, response maps and one-image prediction (used by ``lofr predict`` and the notebooks)."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from lofr.data.schemas import KeypointSchema, get_schema
from lofr.data.topdown import load_rgb
from lofr.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, box_to_center_scale, crop_to_image,
                                  get_affine_transform, normalize_image, warp_image)
from lofr.errors import UsageError

__all__ = ["side_colour", "draw_skeleton", "predict_image", "plot_prediction", "crop_to_rgb", "show_maps",
           "plot_matrix", "show_scale_maps", "skeleton_grid"]


def side_colour(name: str) -> str:
    """Left joints blue, right joints orange, the midline green (the usual pose-figure colours)."""
    return "tab:blue" if "left" in name else "tab:orange" if "right" in name else "tab:green"


def draw_skeleton(ax, keypoints, scores=None, schema: str | KeypointSchema = "coco", thr: float = 0.0,
                  labels: bool = False, size: float = 18.0) -> None:
    """Draw (C, 2) keypoints and the schema's kinematic edges on a matplotlib axis; joints whose
    score is below ``thr`` (and the edges touching them) are left out."""
    schema = get_schema(schema)
    kp = np.asarray(keypoints, dtype=float)
    ok = np.ones(len(kp), bool) if scores is None else np.asarray(scores) >= thr
    for i, j in schema.edges:
        if ok[i] and ok[j]:
            ax.plot(kp[[i, j], 0], kp[[i, j], 1], "-", color=side_colour(schema.keypoints[i]), lw=1.5, alpha=0.8)
    for c, name in enumerate(schema.keypoints):
        if ok[c]:
            ax.scatter(kp[c, 0], kp[c, 1], s=size, color=side_colour(name), edgecolors="white", linewidths=0.6, zorder=3)
            if labels:
                ax.annotate(name, kp[c], fontsize=6, color="white", xytext=(3, -3), textcoords="offset points")


@torch.no_grad()
def predict_image(model, image_path, input_size, schema, box=None, device="cpu") -> dict:
    """Run a top-down model on one person of one image.

    box: (x, y, w, h) person box in image pixels; None = the whole image. Returns
    dict(image (h, w, 3) uint8, keypoints (C, 2) in image pixels, scores (C,), crop (3, H, W) normalised,
    response (C, H/4, W/4) or None, center, scale).
    """
    rgb = load_rgb(image_path)  # (h, w, 3)
    h, w = rgb.shape[:2]
    box = (0.0, 0.0, float(w), float(h)) if box is None else tuple(float(v) for v in box)
    if len(box) != 4 or box[2] <= 0 or box[3] <= 0:
        raise UsageError(f"--box must be x,y,w,h with positive w and h, got {box}")
    center, scale = box_to_center_scale(box, input_size[1] / input_size[0])
    mat = get_affine_transform(center, scale, 0.0, input_size)
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0  # (3, h, w)
    crop = normalize_image(warp_image(image, mat, input_size, fill="edge"))  # (3, H, W)
    model.eval()
    out = model.predict(crop[None].to(device))
    kp_crop = out["keypoints"][0].cpu().numpy()  # (C, 2)
    fused = out.get("outputs", {}).get("response_fused") if isinstance(out.get("outputs"), dict) else None
    return {"image": rgb, "keypoints": crop_to_image(kp_crop, center, scale, 0.0, input_size),
            "scores": out["scores"][0].cpu().numpy(), "crop": crop,
            "response": None if fused is None else fused[0].cpu().numpy(), "center": center, "scale": scale,
            "schema": get_schema(schema)}


def plot_prediction(pred: dict, out_png=None, thr: float = 0.0, responses: bool = False):
    """The image with the predicted skeleton; with ``responses`` also each joint's response map."""
    schema = pred["schema"]
    show_maps = responses and pred["response"] is not None
    if show_maps:
        cols = 6
        rows = 1 + int(np.ceil(schema.num_keypoints / cols))
        fig = plt.figure(figsize=(2.2 * cols, 2.6 * rows))
        ax = fig.add_subplot(rows, 1, 1)
    else:
        fig, ax = plt.subplots(figsize=(5, 5))
    ax.imshow(pred["image"])
    draw_skeleton(ax, pred["keypoints"], pred["scores"], schema, thr)
    ax.set_title("prediction (blue: left, orange: right)")
    ax.axis("off")
    if show_maps:
        for c, name in enumerate(schema.keypoints):
            a = fig.add_subplot(rows, cols, cols + c + 1)
            im = a.imshow(pred["response"][c], cmap="magma")
            a.set_title(f"{name}\nscore {pred['scores'][c]:.2f}", fontsize=7)
            a.axis("off")
            fig.colorbar(im, ax=a, fraction=0.046)
    fig.tight_layout()
    if out_png is not None:
        Path(out_png).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_png, dpi=120)
        plt.close(fig)
    return fig


def crop_to_rgb(image) -> np.ndarray:
    """A normalised (3, H, W) network input (``normalize_image``) -> (H, W, 3) float RGB in [0, 1]."""
    x = torch.as_tensor(image).detach().float().cpu()
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"crop_to_rgb expects a (3, H, W) image, got shape {tuple(x.shape)}")
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (x * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def show_maps(maps, names, image=None, points=None, truth=None, title: str | None = None, cols: int = 6,
              cmap: str = "magma", alpha: float = 0.65, size: float = 1.9, colorbar: bool = True,
              subtitles=None):
    """One panel per map: maps (K, h, w) (tensor or array), each titled with ``names[k]``.

    image: optional (H, W, 3) RGB under every map; the map is stretched over it with
    ``extent=(0, W, H, 0)``, so cell (i, j) of a stride-s map covers the input pixels
    [j s, (j + 1) s) x [i s, (i + 1) s) (lofr/data/transforms.py's convention).
    points / truth: optional (K, 2) (x, y) in the image's pixels, drawn as a cyan cross (e.g. a
    prediction) / a white circle (the ground truth); NaN rows are skipped.
    subtitles: optional K strings appended under the names. Returns the figure."""
    m = np.asarray(torch.as_tensor(maps).detach().float().cpu())
    if m.ndim != 3 or len(m) != len(names):
        raise ValueError(f"show_maps: maps must be (K, h, w) with K = len(names) = {len(names)}, got {m.shape}")
    k = len(m)
    cols = min(cols, k)
    rows = int(np.ceil(k / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * 1.25 * rows + (0.4 if title else 0)),
                             squeeze=False)
    for idx, ax in enumerate(axes.flat):
        ax.axis("off")
        if idx >= k:
            continue
        extent = None
        if image is not None:
            img = np.asarray(image)
            ax.imshow(img)
            extent = (0, img.shape[1], img.shape[0], 0)
        im = ax.imshow(m[idx], cmap=cmap, alpha=alpha if image is not None else 1.0, extent=extent,
                       interpolation="nearest")
        for pts, style in ((truth, dict(marker="o", s=28, facecolors="none", edgecolors="white", linewidths=1.2)),
                           (points, dict(marker="x", s=28, c="cyan", linewidths=1.5))):
            if pts is not None and np.all(np.isfinite(np.asarray(pts)[idx])):
                ax.scatter(*np.asarray(pts)[idx], **style)
        label = names[idx] if subtitles is None else f"{names[idx]}\n{subtitles[idx]}"
        ax.set_title(label, fontsize=7)
        if colorbar:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_matrix(ax, matrix, labels, title: str = "", cmap: str = "viridis", vmin=None, vmax=None,
                colorbar: bool = True, fmt: str | None = None):
    """A labelled (C, C) heatmap (relation weights, prototype inner products) on ``ax``: rows and
    columns named by ``labels``; ``fmt`` (e.g. ".2f") also writes each value in its cell."""
    m = np.asarray(torch.as_tensor(matrix).detach().float().cpu())
    if m.ndim != 2 or m.shape[0] != len(labels) or m.shape[1] != len(labels):
        raise ValueError(f"plot_matrix: matrix must be ({len(labels)}, {len(labels)}), got {m.shape}")
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
    ax.set_yticks(range(len(labels)), labels, fontsize=6)
    ax.set_title(title, fontsize=9)
    if fmt:
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=4, color="white")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return im


def show_scale_maps(maps, fused, strides, image=None, truth=None, point=None, title: str | None = None,
                    cmap: str = "magma", alpha: float = 0.65, size: float = 2.0):
    """One keypoint's response map at every scale, then the fused map, in one row (notebook 05).

    maps: list of (h_s, w_s) maps (tensors or arrays), one per stride in ``strides``; fused (H, W)
    (``lofr.models.decoder.fuse_response_maps``). image: optional (H_in, W_in, 3) RGB under every
    panel (each map stretched over it, as :func:`show_maps`); truth / point: optional (x, y) input
    pixels drawn as a white circle / a cyan cross. Each panel's title gives the stride, the grid and
    the map's total mass (the share of the query's attention on that scale). Returns the figure."""
    ms = [np.asarray(torch.as_tensor(m).detach().float().cpu()) for m in maps]
    f = np.asarray(torch.as_tensor(fused).detach().float().cpu())
    if len(ms) != len(strides) or any(m.ndim != 2 for m in ms) or f.ndim != 2:
        raise ValueError(f"show_scale_maps: need one 2-D map per stride ({len(strides)}) and a 2-D fused map, "
                         f"got {[m.shape for m in ms]} and {f.shape}")
    panels = [(m, f"stride {s}: {m.shape[0]}x{m.shape[1]}\nmass {m.sum():.3f}") for m, s in zip(ms, strides)]
    panels.append((f, f"fused {f.shape[0]}x{f.shape[1]}\nmass {f.sum():.3f}"))
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size * 1.4 + (0.3 if title else 0)),
                             squeeze=False)
    for ax, (m, label) in zip(axes[0], panels):
        extent = None
        if image is not None:
            img = np.asarray(image)
            ax.imshow(img)
            extent = (0, img.shape[1], img.shape[0], 0)
        im = ax.imshow(m, cmap=cmap, alpha=alpha if image is not None else 1.0, extent=extent,
                       interpolation="nearest")
        for pt, style in ((truth, dict(marker="o", s=30, facecolors="none", edgecolors="white", linewidths=1.2)),
                          (point, dict(marker="x", s=30, c="cyan", linewidths=1.5))):
            if pt is not None and np.all(np.isfinite(np.asarray(pt, dtype=float))):
                ax.scatter(*np.asarray(pt, dtype=float), **style)
        ax.set_title(label, fontsize=7)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def skeleton_grid(images, poses: dict, visible=None, schema: str | KeypointSchema = "coco", title: str | None = None,
                  col_titles=None, size: float = 1.5):
    """Qualitative comparison (paper Fig. 7-8): one row per pose source, one column per crop.

    images: (N, H, W, 3) RGB in [0, 1] (e.g. :func:`crop_to_rgb` of each crop); poses: ordered
    {row name: (N, C, 2) keypoints (x, y) in the crops' pixels}, e.g. ground truth / Baseline / LOFR;
    visible: optional (N, C) bool, the joints drawn in every row (e.g. the present ones, so that each
    row draws the same joints); col_titles: optional N strings. Left joints blue, right orange.
    Returns the figure."""
    imgs = [np.asarray(im) for im in images]
    n = len(imgs)
    schema = get_schema(schema)
    arrays = {name: np.asarray(torch.as_tensor(p).detach().float().cpu()) for name, p in poses.items()}
    for name, p in arrays.items():
        if p.shape != (n, schema.num_keypoints, 2):
            raise ValueError(f"skeleton_grid: poses[{name!r}] must be (N={n}, C={schema.num_keypoints}, 2), "
                             f"got {p.shape}")
    vis = np.ones((n, schema.num_keypoints), bool) if visible is None else np.asarray(visible).astype(bool)
    if vis.shape != (n, schema.num_keypoints):
        raise ValueError(f"skeleton_grid: visible must be (N, C) = ({n}, {schema.num_keypoints}), got {vis.shape}")
    rows = len(arrays)
    h, w = imgs[0].shape[:2]
    fig, axes = plt.subplots(rows, n, figsize=(size * n * w / h + 0.4, size * rows + (0.4 if title else 0)),
                             squeeze=False)
    for r, (name, pts) in enumerate(arrays.items()):
        for j in range(n):
            ax = axes[r, j]
            ax.imshow(imgs[j])
            draw_skeleton(ax, pts[j], vis[j].astype(float), schema, thr=0.5, size=10.0)
            ax.set_xlim(0, w)
            ax.set_ylim(h, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, fontsize=8)
            if r == 0 and col_titles is not None:
                ax.set_title(col_titles[j], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
