"""Table 7 on SynthPose: the average normalised response at the true joints, Baseline vs LOFR.

For every val crop (ground-truth box, no flip test: the model's own single pass) and every joint that
is present (labelled and inside the crop), the model's fused stride-4 response map of that joint is
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
joints), columns = at joint / map mean for each model; the PCK / AP of both models in the json.
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
cell centres, stride 4), averaged over the val crops where the joint is labelled and inside the crop;
no flip test. "map mean" = the same normalised map averaged over all its cells (a flat map: 1): the
response localises a joint only where "at joint" exceeds it. SynthPose val, ground-truth boxes.
Baseline = `model=baseline`, LOFR = `model=lofr` (the config as it is)."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "table7_response")
    p.add_argument("--sample", choices=("bilinear", "nearest"), default="bilinear",
                   help="how the map is read at the keypoint (default bilinear)")
    args = p.parse_args(argv)
    t_start, common = begin(args)

    def measure(key, seed, model, cfg, val_ds):
        r = joint_response(model, val_ds, cfg.data.eval_batch_size, args.sample)
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()}

    rows = run_rows(MODELS, args, common, per_model=measure)
    from lofr.data.schemas import get_schema
    from lofr.engine.config import load_config

    joints = list(get_schema(load_config(args.config, common).data.schema).keypoints)
    return finish("table7_response", "Table 7 on SynthPose: normalised response at the true joints",
                  "benchmarks/table7_response.py", argv, args, t_start, format_table(rows, joints),
                  NOTES + f"\nSampling: {args.sample}.", overrides=common, joints=joints, rows=rows)


if __name__ == "__main__":
    main()
