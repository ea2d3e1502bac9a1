"""The best single location-free model (``synth-cpu-part``; with ``prior``'s override it is ``synth-cpu-best``'s
teacher) against the mean-pose prior, over seeds, label rules and datasets.

Rows (``--rows``), each ``lofr train --config synth-cpu-part`` with the row's overrides:

    default   the recipe as shipped (image-level labels by the crop rule)
    strict    the strict, location-free label rule: ``data.labels=annotation`` (labels no augmentation recomputes
              from locations; it refuses half-body augmentation, so ``data.aug.half_body_prob=0``)
    cosine    a cosine decay of the lr to 0 instead of the constant lr
    prior     + the training poses' Gaussians on the decoder's cross-attention (``arch.dec_prior_bias``: fitted on
              the training locations without their images, the information the mean-pose prior uses)
    prior-cosine  prior with the cosine decay
    prior-strict  prior with the strict label rule (as ``strict``)

Each cell is the project's evaluation (SynthPose val or ``--data-root``'s val, cached eval crops, flip test);
the table adds the mean-pose prior on the same crops, the gap to it, and the share of the supervised gain
(PCK - PCK_prior) / (PCK_sup - PCK_prior) with the supervised reference of ``synth_claim.json`` (SynthPose val
only). Stopped and started again it resumes (``common.run_rows``: finished runs kept in
``results/runs/<name>/``, unfinished ones continued from their ``last.pt``).

    python benchmarks/best_recipe.py --seeds 0 1 2                       # ~10 min per run on one core
    python benchmarks/best_recipe.py --rows default --seeds 0 1 2 --data-root data/synthpose-seed1-224x176 \\
        --results-name best_recipe_synth2 --runs-dir runs/best_recipe_synth2
    python benchmarks/best_recipe.py --checkpoint-dir runs/best_recipe   # score <dir>/<row>/seed<k>/last.pt

Writes ``benchmarks/results/best_recipe.{json,md}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (RESULTS, begin, finish, format_cell, markdown_table, mean_std, metrics_of, run_rows,  # noqa: E402
                    train_seconds, training_parser)

ROWS = {
    "default": ("synth-cpu-part (crop label rule)", []),
    "strict": ("synth-cpu-part, strict labels (data.labels=annotation)", ["data.labels=annotation",
                                                                          "data.aug.half_body_prob=0"]),
    "cosine": ("synth-cpu-part, cosine lr decay", ["optim.schedule=cosine"]),
    "prior": ("synth-cpu-part + pose-prior attention (arch.dec_prior_bias)", ["arch.dec_prior_bias=true"]),
    "prior-cosine": ("synth-cpu-part + pose-prior attention, cosine lr decay", ["arch.dec_prior_bias=true",
                                                                               "optim.schedule=cosine"]),
    "prior-strict": ("synth-cpu-part + pose-prior attention, strict labels", ["arch.dec_prior_bias=true",
                                                                             "data.labels=annotation",
                                                                             "data.aug.half_body_prob=0"]),
}


def per_model(key, seed, model, cfg, val_ds) -> dict:
    """The mean-pose prior's metrics on the same crops."""
    from lofr.data.topdown import mean_pose_prior
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.trainer import build_datasets, evaluate

    train_ds, _ = build_datasets(cfg, val=False)
    report = evaluate(model, eval_crops(cfg, model, train_ds, val_ds), cfg.data.eval_batch_size,
                      cfg.data.flip_test, prior_pose=mean_pose_prior(train_ds))
    return {"prior": metrics_of(report.prior)}


def supervised(results_dir: Path) -> dict | None:
    """Sup-only's mean PCK@0.1 / @0.2 from synth_claim.json (SynthPose val), or None."""
    f = Path(results_dir) / "synth_claim.json"
    if not f.is_file():
        return None
    rows = json.loads(f.read_text()).get("rows", {})
    sup = rows.get("sup")  # {metric: mean over its seeds}
    return None if sup is None else sup.get("mean", sup)


def format_table(rows: dict, sup: dict | None) -> str:
    lines = []
    prior = None
    for row in rows.values():
        priors = [e["prior"] for e in row["extra"].values() if "prior" in e]
        prior = priors[0] if priors else prior
        cells = [format_cell(row["mean"][c], row["std"][c], 1 if c == "px err" else 3)
                 for c in ("PCK@0.1", "PCK@0.2", "px err")]
        gaps, shares = [], []
        for c in ("PCK@0.1", "PCK@0.2"):
            gaps.append(format_cell(*mean_std([m[c] - prior[c] for m in row["per_seed"].values()]), sign=True)
                        if prior else "")
            shares.append(format_cell((row["mean"][c] - prior[c]) / (sup[c] - prior[c]), sign=True)
                          if prior and sup else "")
        lines.append([row["label"], ",".join(map(str, sorted(row["per_seed"]))), *cells, *gaps, *shares,
                      train_seconds(row)])
    if prior:
        lines.append(["mean-pose prior (no model)", "", f"{prior['PCK@0.1']:.3f}", f"{prior['PCK@0.2']:.3f}",
                      f"{prior['px err']:.1f}", "", "", "", "", ""])
    return markdown_table(["row", "seeds", "PCK@0.1", "PCK@0.2", "px err", "- prior @0.1", "- prior @0.2",
                           "share of sup. gain @0.1", "share @0.2", "train s"], lines)


NOTES = """\
"- prior": the row's PCK minus the mean-pose prior's on the same crops (mean ± std over seeds): the recipe beats
the prior where both are positive. Share of the supervised gain: (PCK - PCK_prior) / (PCK_sup - PCK_prior), Sup-only
from synth_claim.json (SynthPose val only; empty on another dataset)."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "best_recipe")
    p.set_defaults(config="synth-cpu-part")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=["default", "strict"])
    p.add_argument("--note", default="", help="a line for the results page (e.g. where --checkpoint-dir's runs came from)")
    args = p.parse_args(argv)
    t_start, common = begin(args)
    rows = run_rows({k: ROWS[k] for k in args.rows}, args, common, per_model=per_model)
    sup = None if args.data_root else supervised(Path(args.results_dir) if args.results_dir else RESULTS)
    return finish("best_recipe", "The best location-free recipe against the mean-pose prior",
                  "benchmarks/best_recipe.py", argv, args, t_start, format_table(rows, sup), NOTES + ("\n" + args.note if args.note else ""),
                  trained=not args.checkpoint_dir, overrides=common, rows=rows)


if __name__ == "__main__":
    main()
