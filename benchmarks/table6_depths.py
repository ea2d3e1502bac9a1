"""Table 6 on SynthPose: LOFR's encoder / decoder depths (D_En, D_De).

Every row is ``model=lofr`` with the config untouched (``synth-cpu``: the project's LOFR, as
synth_claim.py trains it) but ``arch.enc_layers=D_En arch.dec_layers=D_De``; same backbone, input
and budget. Evaluated on SynthPose val (ground-truth boxes, flip test): OKS AP / AR (the paper's
mAP / mAR), PCK@0.1 / 0.2 of the box diagonal, pixel error, and the training time of each row.

    python benchmarks/table6_depths.py              # CPU grid D_En {1, 2} x D_De {1, 2, 3}: 6 rows (~75 min)
    python benchmarks/table6_depths.py --full       # the GPU grid {2, 3, 4, 6} x {2, 3, 4, 6}: 16 rows
    python benchmarks/table6_depths.py --enc 1 --dec 2 4
    python benchmarks/table6_depths.py --quick      # smoke run: 2 steps per row

The rows are defined in ``lofr/ablations.py`` (``grid_rows``, ``CPU_GRID``, ``FULL_GRID``).
(synth-cpu's own depths are D_En 1, D_De 2; the paper's COCO choice is 4 / 6.) Runs go to
``--runs-dir/en<a>-de<b>/seed<k>``; writes ``benchmarks/results/table6_depths.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (begin, claim, claims_markdown, finish, format_cell, markdown_table, mean_std,  # noqa: E402
                    regime_note, run_rows, train_seconds, training_parser)

from lofr.ablations import CPU_GRID, FULL_GRID, grid_rows  # noqa: E402  (the rows)

COLUMNS = ("AP", "AR", "PCK@0.1", "PCK@0.2", "px err")


def format_table(rows: dict) -> str:
    headers = ["D_En", "D_De", *COLUMNS, "train s", "img/s"]
    lines = []
    for key, row in rows.items():
        a, b = key[2:].split("-de")
        rate = [t["images_per_s"] for t in row["timing"].values() if "images_per_s" in t]
        lines.append([a, b, *[format_cell(row["mean"][c], row["std"][c], 1 if c == "px err" else 3) for c in COLUMNS],
                      train_seconds(row), f"{sum(rate) / len(rate):.0f}" if rate else ""])
    return markdown_table(headers, lines)


def depths(key: str) -> tuple[int, int]:
    """"en<a>-de<b>" -> (a, b)."""
    a, b = key[2:].split("-de")
    return int(a), int(b)


def orderings(rows: dict, metric: str = "PCK@0.1") -> list[dict]:
    """The paper's Table-6 claim, "accuracy grows with depth, then saturates", as two checks on these rows
    (``metric``, paired by seed):

    * grows: the best row (highest mean) above the shallowest row (smallest D_En + D_De) by more than twice the
      seed std of their difference (``claim``'s "clear");
    * saturates: the deepest row not above the best shallower row (deepest - best other <= 0).
    Both None when fewer than two rows ran."""
    if len(rows) < 2:
        nan = (float("nan"), float("nan"))
        return [claim("accuracy grows with depth", nan, ">"), claim("and then saturates", nan, "<=")]

    def diff(a: str, b: str):
        seeds = [s for s in rows[a]["per_seed"] if s in rows[b]["per_seed"]]
        return mean_std([rows[a]["per_seed"][s][metric] - rows[b]["per_seed"][s][metric] for s in seeds]), len(seeds)

    shallow = min(rows, key=lambda k: (sum(depths(k)), depths(k)))
    deep = max(rows, key=lambda k: (sum(depths(k)), depths(k)))
    best = max(rows, key=lambda k: rows[k]["mean"][metric])
    best_other = max((k for k in rows if k != deep), key=lambda k: rows[k]["mean"][metric])
    name = "D_En {}, D_De {}".format
    d, n = diff(best, shallow)
    grow = claim(f"accuracy grows with depth: best row ({name(*depths(best))}) - shallowest "
                 f"({name(*depths(shallow))}), {metric}", d, ">", 0.0, n)
    grow["holds"] = grow["holds"] and grow["clear"]  # "grows" only when clear of the seed spread
    d, n = diff(deep, best_other)
    sat = claim(f"and then saturates: deepest row ({name(*depths(deep))}) - best shallower "
                f"({name(*depths(best_other))}), {metric}", d, "<=", 0.0, n)
    return [grow, sat]


NOTES = """\
Every row: `model=lofr`, the config's other settings unchanged, `arch.enc_layers` = D_En (layers per
scale of the multi-scale encoder), `arch.dec_layers` = D_De. SynthPose val, ground-truth boxes, flip test;
PCK of the box diagonal. img/s = training images per second, evaluations left out."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "table6_depths")
    p.add_argument("--full", action="store_true", help="the GPU grid {2,3,4,6} x {2,3,4,6}")
    p.add_argument("--enc", nargs="+", type=int, help="D_En values (default: CPU grid 1 2)")
    p.add_argument("--dec", nargs="+", type=int, help="D_De values (default: CPU grid 1 2 3)")
    args = p.parse_args(argv)
    enc, dec = FULL_GRID if args.full else CPU_GRID
    enc, dec = args.enc or enc, args.dec or dec
    t_start, common = begin(args)
    rows = run_rows(grid_rows(enc, dec), args, common)
    claims = orderings(rows)
    table = format_table(rows) + "\n\n**The paper's ordering on these rows: grows with depth, then saturates**\n\n" + \
        claims_markdown(claims)
    return finish("table6_depths", "Table 6 on SynthPose: encoder / decoder depths", "benchmarks/table6_depths.py",
                  argv, args, t_start, table, NOTES + "\n" + regime_note(common), overrides=common,
                  grid={"enc": list(enc), "dec": list(dec)}, rows=rows, orderings=claims)


if __name__ == "__main__":
    main()
