"""The plain-CAM reference on SynthPose: which receptive field and pooling let a CNN localise from
image-level labels (the "pooling / receptive field" levers, measured with LOFR's own CNN branch).

Every row trains ``model=cam`` (``lofr.models.PlainCAM``: the ``synth-cpu`` backbone up to
``arch.cam_stride`` + the CAM head of Eq. 1, image-level BCE only, no transformer) with the same
budget, and reads keypoint c off the arg-max of its CAM M_c (SynthPose val, ground-truth boxes, flip
test; PCK of the box diagonal). The small CNN's receptive field is 79 px at stride 16 and 31 px at
stride 8 (64x48 crops).

    gap-s16   the paper's CAM head: the deepest map (stride 16), GAP + FC
    gap-s8    the stride-8 map, GAP
    lse-s8    the stride-8 map, log-sum-exp pooling r = 5 (``arch.cam_pool=lse``)
    lse20-s8  the stride-8 map, r = 20 (close to global max pooling)
    lse-s8-nohb     lse-s8 without half-body augmentation (``data.aug.half_body_prob=0``)
    lse-s8-strict   lse-s8-nohb with the strictly location-free label rule (``data.labels=annotation``:
                    a joint is "present" when annotated, even if augmentation cut it out of the crop)

The last two rows measure how much of a weak model's localisation comes from locations leaking into the
labels: with the default rule (``data.labels=crop``, as mmpose's target weights) a joint that
augmentation moved out of the crop is labelled absent — which needs its coordinates — and half-body
augmentation picks its crop from the coordinates (``lofr.data.topdown``).

    python benchmarks/cam_pooling.py                 # 6 rows x 1 seed, the synth-cpu budget (~15-20 min, 2 cores)
    python benchmarks/cam_pooling.py --seeds 0 1 2
    python benchmarks/cam_pooling.py --rows lse-s8 lse-s8-nohb lse-s8-strict --seeds 0 1 2 \
        --results-name cam_pooling_label_leak --runs-dir runs/cam_pooling_label_leak
    python benchmarks/cam_pooling.py --quick         # smoke run: 2 steps per row

Runs go to ``--runs-dir/<row>/seed<k>``; writes ``benchmarks/results/cam_pooling.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (begin, finish, format_cell, markdown_table, mean_std, metrics_of, run_rows,  # noqa: E402
                    train_seconds, training_parser)

ROWS = {
    "gap-s16": ("CAM, stride 16, GAP (paper)", ["model=cam", "arch.cam_stride=16", "arch.cam_pool=gap"]),
    "gap-s8": ("CAM, stride 8, GAP", ["model=cam", "arch.cam_stride=8", "arch.cam_pool=gap"]),
    "lse-s8": ("CAM, stride 8, LSE r=5", ["model=cam", "arch.cam_stride=8", "arch.cam_pool=lse",
                                          "arch.cam_lse_r=5"]),
    "lse20-s8": ("CAM, stride 8, LSE r=20", ["model=cam", "arch.cam_stride=8", "arch.cam_pool=lse",
                                             "arch.cam_lse_r=20"]),
    "lse-s8-nohb": ("CAM, stride 8, LSE r=5, no half-body", ["model=cam", "arch.cam_stride=8", "arch.cam_pool=lse",
                                                             "arch.cam_lse_r=5", "data.aug.half_body_prob=0"]),
    "lse-s8-strict": ("CAM, stride 8, LSE r=5, no half-body, strict labels",
                      ["model=cam", "arch.cam_stride=8", "arch.cam_pool=lse", "arch.cam_lse_r=5",
                       "data.aug.half_body_prob=0", "data.labels=annotation"]),
}
COLUMNS = ("PCK@0.1", "PCK@0.2", "px err", "AP")
GROUPS = ("face", "arms", "legs")


def per_model(key, seed, model, cfg, val_ds) -> dict:
    """PCK@0.1 per joint group, and the mean-pose prior's metrics on the same crops."""
    from lofr.engine.trainer import build_datasets, evaluate
    from lofr.data.topdown import mean_pose_prior

    train_ds, _ = build_datasets(cfg, val=False)
    report = evaluate(model, val_ds, cfg.data.eval_batch_size, cfg.data.flip_test,
                      prior_pose=mean_pose_prior(train_ds))
    return {"groups": {g: report.pck_per_group[0.1][g] for g in GROUPS}, "prior": metrics_of(report.prior)}


def format_table(rows: dict) -> str:
    headers = ["row", *COLUMNS, *[f"{g} PCK@0.1" for g in GROUPS], "train s"]
    lines = []
    for row in rows.values():
        per_seed = [e.get("groups", {}) for e in row["extra"].values()]
        groups = [mean_std([gr[g] for gr in per_seed if g in gr]) for g in GROUPS]  # over seeds, like the rest
        lines.append([row["label"], *[format_cell(row["mean"][c], row["std"][c], 1 if c == "px err" else 3)
                                      for c in COLUMNS],
                      *[format_cell(m, sd) for m, sd in groups], train_seconds(row)])
    prior = next((e["prior"] for r in rows.values() for e in r["extra"].values() if "prior" in e), None)
    if prior:
        lines.append(["mean-pose prior (no model)", *[format_cell(prior[c], digits=1 if c == "px err" else 3)
                                                      for c in COLUMNS], "", "", "", ""])
    return markdown_table(headers, lines)


NOTES = """\
`model=cam`: LOFR's CNN branch alone (`lofr.models.PlainCAM`), trained with the image-level BCE only; keypoint =
CAM arg-max. Same config, budget and crops for every row; group columns = PCK@0.1 of face / arms / legs.
"no half-body" / "strict labels": see the script's docstring — with the default label rule, augmentation turns
the image-level labels into a weak location signal (`lofr.data.topdown`)."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "cam_pooling")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    args = p.parse_args(argv)
    t_start, common = begin(args)
    rows = run_rows({k: ROWS[k] for k in args.rows}, args, common, per_model=per_model)
    return finish("cam_pooling", "Plain CAM on SynthPose: receptive field and pooling", "benchmarks/cam_pooling.py",
                  argv, args, t_start, format_table(rows), NOTES, overrides=common, rows=rows)


if __name__ == "__main__":
    main()
