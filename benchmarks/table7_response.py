"""Table 7 on SynthPose: the average normalised response at the true joints, Baseline vs LOFR.

For every val crop (ground-truth box, no flip test: the model's own single pass) and every joint that
is present (labelled and inside the crop), the model's fused response map of that joint (on its finest
encoder grid: stride 8 on synth-cpu) is
divided by its maximum (so it lies in [0, 1]) and read at the true keypoint by bilinear interpolation
between cell centres (``--sample nearest``: the cell holding the point); averaged per joint
(``lofr.eval.response``). Next to it, per model, the mean of the same normalised map over all its
cells — what a point drawn at random would read (1 for a flat map): a response only localises a joint
where "at joint" is above "map mean". The paper reports the first number (Table 7, per joint group).

    Baseline  ``model=baseline``;   LOFR  ``model=lofr`` (the config as it is: synth_claim.py's two models)

    python benchmarks/table7_response.py --checkpoint-dir runs/synth_claim   # synth_claim.py's runs: ~1 min
    python benchmarks/table7_response.py                   # train both first (~15 min, 2 cores)
    python benchmarks/table7_response.py --seeds 0 1 2     # mean ± std over 3 seeds
    python benchmarks/table7_response.py --quick           # smoke run: 2 steps per model

Writes ``benchmarks/results/table7_response.{json,md}``: rows = joints (+ the mean over all present
joints), columns = at joint / map mean for each model; the PCK / AP of both models in the json; and
``table7_response.png``: for three val crops, each model's map of six joints over the crop (the
first seed's models; LOFR's CAM too), the true joint (white o) and the map's arg-max (red x).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (begin, finish, format_cell, markdown_table, mean_std, run_rows,  # noqa: E402
                    training_parser)

MODELS = {"baseline": ("Baseline", ["model=baseline"]), "lofr": ("LOFR", ["model=lofr"])}


@torch.no_grad()
def joint_response(model, dataset, batch_size: int = 64, mode: str = "bilinear") -> dict:
    """Run ``model`` (LOFR / Baseline, eval mode) over an eval-mode TopDownDataset and pool
    ``average_joint_response`` of its fused response maps over every crop -> that dict (numpy)."""
    from lofr.data.topdown import collate
    from lofr.eval.response import average_joint_response, pool_response

    model.eval()
    device = next(model.parameters()).device
    c = dataset.schema.num_keypoints
    total, map_total, count = np.zeros(c), np.zeros(c), np.zeros(c)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate):
        out = model(batch["image"].to(device))
        maps = out["response_fused"].float().clamp_min(0).cpu().numpy()  # (B, C, H/s, W/s), each sums to 1
        r = average_joint_response(maps, batch["keypoints"].numpy(), batch["labels"].numpy() > 0,
                                   model.strides[0], mode)  # keypoints (B, C, 2) input pixels
        total, map_total, count = total + r["sum"], map_total + r["map_sum"], count + r["count"]
    return pool_response(total, map_total, count)


FIG_JOINTS = ("nose", "left_shoulder", "left_wrist", "right_wrist", "left_knee", "right_ankle")


@torch.no_grad()
def response_figure(models: dict, dataset, path, crops=(3, 40, 77), joints=FIG_JOINTS) -> None:
    """What the maps show: for each crop, the image and, per joint, each model's normalised map over
    the crop with the true keypoint (white o) and the map's arg-max (red x). ``models``: {row label:
    (model, source)} with source "response" (the fused response map) or "cam" (the CAM, Eq. 1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lofr.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from lofr.models.lofr import normalise_cams

    names = list(dataset.schema.keypoints)
    cols = [names.index(j) for j in joints]
    rows = [(i, label) for i in crops for label in models]
    fig, axes = plt.subplots(len(rows), len(cols) + 1, figsize=(1.6 * (len(cols) + 1), 2.1 * len(rows)), squeeze=False)
    for r, (i, label) in enumerate(rows):
        s = dataset[i]
        model, source = models[label]
        model.eval()
        out = model(s["image"][None])
        maps = normalise_cams(out["cams"]) if source == "cam" else out["response_fused"]  # (1, C, h, w)
        img = (s["image"] * torch.tensor(IMAGENET_STD)[:, None, None]
               + torch.tensor(IMAGENET_MEAN)[:, None, None]).permute(1, 2, 0).clamp(0, 1).numpy()
        h, w = img.shape[:2]
        axes[r, 0].imshow(img)
        axes[r, 0].set_title(f"crop {i}\n{label}", fontsize=7)
        for a, c in zip(axes[r, 1:], cols):
            m = maps[0, c].float().numpy()
            a.imshow(img, alpha=0.45)
            a.imshow(m / max(m.max(), 1e-12), extent=(0, w, h, 0), cmap="magma", alpha=0.6, vmin=0, vmax=1)
            kk = np.unravel_index(m.argmax(), m.shape)
            sx, sy = w / m.shape[1], h / m.shape[0]
            a.plot((kk[1] + 0.5) * sx, (kk[0] + 0.5) * sy, "rx", ms=6, mew=1.5)
            if s["labels"][c] > 0:
                a.plot(*s["keypoints"][c].tolist(), "o", mfc="none", mec="w", ms=6, mew=1.5)
            if r == 0:
                a.set_title(names[c].replace("_", " "), fontsize=7)
        for a in axes[r]:
            a.set_xticks([]), a.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def per_joint_stats(row: dict, field: str, all_field: str) -> tuple[list, list]:
    """Mean and std over seeds of ``extra[seed][field]`` (C,) and of the pooled ``all_field``."""
    seeds = list(row["extra"].values())
    per = [mean_std([s[field][j] for s in seeds]) for j in range(len(seeds[0][field]))]
    return per, [mean_std([s[all_field] for s in seeds])]


def format_table(rows: dict, joints: list[str]) -> str:
    headers = ["joint"] + [f"{rows[k]['label']} {col}" for k in rows for col in ("at joint", "map mean")] + ["crops"]
    stats = {k: (per_joint_stats(r, "per_joint", "mean"), per_joint_stats(r, "map_mean", "map_mean_all"))
             for k, r in rows.items()}
    first = next(iter(rows.values()))["extra"]
    counts = next(iter(first.values()))["count"]
    lines = []
    for j, name in enumerate([*joints, "mean (all present joints)"]):
        cells = []
        for k in rows:
            (at, at_all), (mm, mm_all) = stats[k]
            cells += [format_cell(*(at + at_all)[j], digits=2), format_cell(*(mm + mm_all)[j], digits=2)]
        lines.append([name, *cells, int(counts[j]) if j < len(joints) else int(sum(counts))])
    return markdown_table(headers, lines)


NOTES = """\
Value = the response map divided by its maximum (in [0, 1]), read at the true keypoint (bilinear between
cell centres, on the model's finest encoder grid), averaged over the val crops where the joint is labelled and inside the crop;
no flip test. "map mean" = the same normalised map averaged over all its cells (a flat map: 1): the
response localises a joint only where "at joint" exceeds it. SynthPose val, ground-truth boxes.
Baseline = `model=baseline`, LOFR = `model=lofr` (the config as it is)."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "table7_response")
    p.add_argument("--sample", choices=("bilinear", "nearest"), default="bilinear",
                   help="how the map is read at the keypoint (default bilinear)")
    args = p.parse_args(argv)
    t_start, common = begin(args)

    shown = {}  # the first seed's models, for the figure

    def measure(key, seed, model, cfg, val_ds):
        if seed == args.seeds[0]:
            label = MODELS[key][0]
            shown[f"{label} response"] = (model, "response")
            if getattr(model, "cam_head", None) is not None:
                shown[f"{label} CAM"] = (model, "cam")
            shown["_val"] = val_ds
        r = joint_response(model, val_ds, cfg.data.eval_batch_size, args.sample)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}

    rows = run_rows(MODELS, args, common, per_model=measure)
    val_ds = shown.pop("_val")
    figure = Path(args.results_dir) / f"{args.results_name or 'table7_response'}.png"
    Path(args.results_dir).mkdir(parents=True, exist_ok=True)
    response_figure(shown, val_ds, figure, crops=[i for i in (3, 40, 77) if i < len(val_ds)] or [0])
    from lofr.data.schemas import get_schema
    from lofr.engine.config import load_config

    joints = list(get_schema(load_config(args.config, common).data.schema).keypoints)
    return finish("table7_response", "Table 7 on SynthPose: normalised response at the true joints",
                  "benchmarks/table7_response.py", argv, args, t_start, format_table(rows, joints),
                  NOTES + f"\nSampling: {args.sample}.", overrides=common, joints=joints, rows=rows)


if __name__ == "__main__":
    main()
