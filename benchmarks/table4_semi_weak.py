"""Table 4 on SynthPose: few location labels — Sup-only vs LOFR weakly semi-supervised.

For each labelled fraction f (default 5 / 10 / 25 / 100 %: round(f N) training instances keep their
keypoint locations, drawn with the run's seed; the others only have image-level labels):

    Sup-only  ``model=sup-only data.labelled_fraction=f loss.mse=1``: the backbone + a heatmap head,
              trained with the heatmap MSE (Eq. 14) on the labelled instances only
    LOFR-WS   ``model=lofr data.labelled_fraction=f loss.mse=1000``: LOFR on every instance with Eq. 15,
              L_semi-weak = w L_mse^sup + L_weak, the weak terms keeping the config's weights (Eq. 13);
              w = 1000, not the paper's 1 (``lofr.semi``: with our attention-map H, w = 1 made the
              MSE's gradient 5e-5 of the weak losses')

f = 100 % is the fully supervised reference ("ALL"). Same config (``synth-cpu``), backbone and input for
every row. Budget: LOFR-WS trains the config's epochs over all N instances; Sup-only sees only
round(f N) of them, so by default (``--sup-budget steps``) it gets as many optimiser steps as LOFR-WS
(its ``optim.epochs`` scaled up, ``max_steps`` = LOFR-WS's), the fair comparison for a small model;
``--sup-budget epochs`` keeps the config's epochs (the paper's protocol, far fewer steps at 5 %).

    python benchmarks/table4_semi_weak.py                        # 8 rows x 1 seed (~65 min, 2 cores)
    python benchmarks/table4_semi_weak.py --seeds 0 1 2          # mean ± std over 3 seeds / labelled subsets
    python benchmarks/table4_semi_weak.py --fractions 0.1 1.0
    python benchmarks/table4_semi_weak.py --quick                # smoke run: 2 steps per row

Runs go to ``--runs-dir/<sup|lofr>-<pct>/seed<k>``; writes ``benchmarks/results/table4_semi_weak.{json,md}``:
one table per metric, methods x fractions, as the paper's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (begin, claim, claims_markdown, finish, format_cell, markdown_table, mean_std,  # noqa: E402
                    regime_note, run_rows, training_parser)

from lofr.semi import METHODS, sup_only_budget  # noqa: E402

FRACTIONS = (0.05, 0.10, 0.25, 1.0)
COLUMNS = ("PCK@0.1", "PCK@0.2", "px err", "AP")


def pct(f: float) -> str:
    return f"{100 * f:g}"


def equal_steps(config: str, common: list[str], fraction: float) -> list[str]:
    """Overrides that give Sup-only at ``fraction`` as many optimiser steps as LOFR-WS, on a schedule as
    long as LOFR-WS's (``lofr.semi.sup_only_budget``, which notebook 07 uses too)."""
    from lofr.engine.config import load_config
    from lofr.engine.trainer import build_datasets

    cfg = load_config(config, list(common) + ["model=lofr"])
    train_ds, _ = build_datasets(cfg, val=False)
    return sup_only_budget(len(train_ds), fraction, cfg.optim.batch_size, cfg.optim.epochs, cfg.max_steps)


def build_rows(fractions, config: str, common: list[str], sup_budget: str, methods=tuple(METHODS)) -> dict:
    """{"<method>-<pct>": (label, overrides)} for every method (``lofr.semi.METHODS``) and fraction."""
    rows = {}
    for method, (label, extra) in METHODS.items():
        if method not in methods:
            continue
        for f in fractions:
            budget = equal_steps(config, common, f) if method == "sup" and sup_budget == "steps" else []
            rows[f"{method}-{pct(f)}"] = (f"{label} {pct(f)} %", [*extra, f"data.labelled_fraction={f}", *budget])
    return rows


def format_table(rows: dict, fractions, free: dict | None = None) -> str:
    """One markdown table per metric: methods x fractions (100 % = "ALL"); ``free`` (location_free_row):
    a "0 %" column with the location-free recipe's row."""
    heads = (["0 %"] if free else []) + [f"{pct(f)} %" if f < 1 else "100 % (ALL)" for f in fractions]
    parts = []
    for c in COLUMNS:
        digits = 1 if c == "px err" else 3
        lines = []
        for method, (label, _) in METHODS.items():
            cells = [""] if free else []
            for f in fractions:
                row = rows.get(f"{method}-{pct(f)}")
                cells.append(format_cell(row["mean"][c], row["std"][c], digits) if row else "")
            lines.append([label, *cells])
        if free:
            lines.append(["location-free (`synth-cpu-part`)", format_cell(free["mean"][c], free["std"][c], digits),
                          *[""] * len(fractions)])
        parts.append(f"**{c}**\n\n" + markdown_table(["method", *heads], lines))
    return "\n\n".join(parts)


def paired(a: dict | None, b: dict | None, metric: str = "PCK@0.1") -> tuple[tuple[float, float], int]:
    """(mean, std) over the seeds both rows have of a - b, and how many seeds that is ((nan, nan), 0 when a
    row is missing). The same seed draws the same labelled subset, so the pair shares its labels."""
    if not a or not b:
        return (float("nan"), float("nan")), 0
    seeds = [s for s in a["per_seed"] if s in b["per_seed"]]
    return mean_std([a["per_seed"][s][metric] - b["per_seed"][s][metric] for s in seeds]), len(seeds)


def orderings(rows: dict, fractions) -> list[dict]:
    """The paper's Table-4 claims checked on these rows (PCK@0.1, paired by seed), in order:

    * LOFR-WS > Sup-only at every fraction below 100 %;
    * LOFR-WS at 25 % within 0.02 of Sup-only at 100 % (Sup-only 100 % - LOFR-WS 25 % <= 0.02);
    * the testbed resolves label fractions: Sup-only at 100 % above Sup-only at the smallest fraction by more
      than twice the larger of their seed stds (``common.claim``'s threshold = that bound).
    Claims whose rows are missing come back with ``holds`` None."""
    out = []
    for f in fractions:
        if f < 1:
            d, n = paired(rows.get(f"lofr-{pct(f)}"), rows.get(f"sup-{pct(f)}"))
            out.append(claim(f"LOFR-WS > Sup-only at {pct(f)} % (PCK@0.1)", d, ">", 0.0, n))
    d, n = paired(rows.get("sup-100"), rows.get("lofr-25"))
    out.append(claim("LOFR-WS at 25 % within 0.02 PCK@0.1 of Sup-only at 100 % (Sup-only 100 % - LOFR-WS 25 %)",
                     d, "<=", 0.02, n))
    low = min(fractions)
    a, b = rows.get("sup-100"), rows.get(f"sup-{pct(low)}")
    if a and b and low < 1:
        bound = 2 * max(a["std"]["PCK@0.1"], b["std"]["PCK@0.1"])
        d, n = paired(a, b)
        out.append(claim(f"the testbed resolves label fractions: Sup-only 100 % - Sup-only {pct(low)} % (PCK@0.1) "
                         f"> twice the larger seed std ({bound:.3f})", d, ">", bound, n))
    return out


def location_free_row(results_dir, results_name: str = "table4_semi_weak") -> dict | None:
    """The location-free recipe (``synth-cpu-part``) as the 0 % column, from ``best_recipe<suffix>.json`` (its
    "default" row; the suffix is this table's, e.g. ``_synth2``, so a second dataset's table reads that
    dataset's runs) when that file is there: measured by ``benchmarks/best_recipe.py``, not trained here."""
    suffix = results_name[len("table4_semi_weak"):] if results_name.startswith("table4_semi_weak") else ""
    path = Path(results_dir) / f"best_recipe{suffix}.json"
    if not path.is_file():
        return None
    res = json.loads(path.read_text())
    row = res.get("rows", {}).get("default")
    if not row:
        return None
    return {"mean": row["mean"], "std": row["std"], "seeds": sorted(row["per_seed"]), "config": res.get("config"),
            "command": res.get("command"), "file": path.name}


NOTES = """\
Sup-only = `model=sup-only data.labelled_fraction=f loss.mse=1` (heatmap MSE on the labelled instances
only); LOFR-WS = `model=lofr data.labelled_fraction=f loss.mse=1000` (Eq. 15: L_mse^sup, LOFR's fused
response scaled by the target's mass, with weight 1000 — see `lofr.semi` — + the weak loss of Eq. 13 on
every instance). The labelled subset is drawn with the run's seed.
SynthPose val, ground-truth boxes, flip test; PCK of the box diagonal."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "table4_semi_weak")
    p.add_argument("--fractions", nargs="+", type=float, default=list(FRACTIONS),
                   help="labelled fractions (default 0.05 0.10 0.25 1.0)")
    p.add_argument("--sup-budget", choices=("steps", "epochs"), default="steps",
                   help="Sup-only: as many optimiser steps as LOFR-WS (default) or the config's epochs")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="which rows (default all; e.g. --methods sup for the testbed's resolution check)")
    args = p.parse_args(argv)
    t_start, common = begin(args)
    budget = "epochs" if args.checkpoint_dir else args.sup_budget  # loading: nothing to size
    rows = run_rows(build_rows(args.fractions, args.config, common, budget, args.methods), args, common)
    budget_note = ("Sup-only budget: as many optimiser steps as LOFR-WS (its epochs scaled by 1/f)."
                   if args.sup_budget == "steps" else "Sup-only budget: the config's epochs over its labelled "
                                                      "instances (fewer steps than LOFR-WS).")
    free = None if args.quick else location_free_row(args.results_dir, args.results_name or "table4_semi_weak")
    free_note = (f"0 % = the location-free recipe, `lofr train --config {free['config']}` (no location term; seeds "
                 f"{', '.join(free['seeds'])}), read from {free['file']}, not trained here: its own regime (whole "
                 "backbone frozen, 1224 steps at a constant lr)." if free else "")
    claims = orderings(rows, args.fractions)
    table = format_table(rows, args.fractions, free) + "\n\n**The paper's orderings on these rows**\n\n" + \
        claims_markdown(claims)
    return finish("table4_semi_weak", "Table 4 on SynthPose: few location labels", "benchmarks/table4_semi_weak.py",
                  argv, args, t_start, table, "\n".join([NOTES, budget_note, free_note, regime_note(common)]),
                  overrides=common, fractions=list(args.fractions), sup_budget=args.sup_budget, rows=rows,
                  orderings=claims, location_free=free)


if __name__ == "__main__":
    main()
