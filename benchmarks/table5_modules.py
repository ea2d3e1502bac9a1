"""Table 5 on SynthPose: what each LOFR module adds to the baseline.

Every row trains the same config (``synth-cpu``: backbone, input, budget) with the switches below, and
is evaluated on SynthPose val (ground-truth boxes, flip test): PCK@0.1 / 0.2 of the box diagonal, pixel
error, OKS AP / AR, and the gain over the baseline row (paired by seed).

    baseline       model=baseline: CNN + DETR encoder/decoder on the stride-4 map, final BCE only
    +SPE, +MS, ... model=lofr with the baseline's settings and only the named modules switched on
    all            every module on: the paper's LOFR (decoder values = the encoder's memory)
    lofr-config    model=lofr with the config untouched (synth-cpu: ``arch.dec_value=local``, not the
                   paper's) = synth_claim.py's "LOFR" row; not in the paper, it shows what that change does

What a module row switches on (the baseline-like rows are ``model=lofr`` with ``arch.cam_head=false
arch.enc_head=false arch.use_spe=false arch.multi_scale=false arch.use_reppg=false arch.use_pdc=false
arch.dec_value=memory``, which builds exactly the Baseline's network and loss):

    SPE    arch.use_spe + the CAM head it reads (arch.cam_head, trained with L_cls_cnn, Eq. 13's α)
    MS     arch.multi_scale (strides 4 / 8 / 16, Eq. 5-9) + the encoder's classifier (arch.enc_head,
           L_cls_en, α1): the MSC-En's own output branch
    RePPG  arch.use_reppg + the CAM head whose prototypes F_c it reads (Eq. 2, 10; + L_cls_cnn)
    PDC    arch.use_pdc: β L_div (Eq. 11) on the decoder's part features. It needs no other module,
           so "+PDC alone" is the baseline's network trained with the final BCE + β L_div.

The rows are defined in ``lofr/ablations.py`` (``TABLE5_ROWS``; notebook 06 trains them too).

    python benchmarks/table5_modules.py                     # 9 rows x 1 seed on synth-cpu (~80-95 min, 2 cores)
    python benchmarks/table5_modules.py --seeds 0 1 2       # mean ± std over 3 seeds (3x)
    python benchmarks/table5_modules.py --rows baseline +SPE all
    python benchmarks/table5_modules.py --quick             # smoke run: 2 steps per row

Runs go to ``--runs-dir/<row>/seed<k>``; writes ``benchmarks/results/table5_modules.{json,md}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (begin, claim, claims_markdown, finish, format_cell, markdown_table, paired_gain,  # noqa: E402
                    regime_note, run_rows, train_seconds, training_parser)

from lofr.ablations import BASE, MODULES, TABLE5_ROWS as ROWS, with_modules  # noqa: E402,F401  (the rows)

COLUMNS = ("PCK@0.1", "PCK@0.2", "px err", "AP", "AR")
GAINS = ("PCK@0.1", "AP")


def format_table(rows: dict) -> str:
    """Markdown: one line per row, the metrics, the gains over the baseline row and the training time."""
    headers = ["model", "SPE", "MS", "RePPG", "PDC", *COLUMNS, *[f"Δ {g}" for g in GAINS], "train s"]
    base = rows.get("baseline")
    lines = []
    for key, row in rows.items():
        on = [("✓" if key in ("all", "lofr-config") or f"+{m}" in key else "") for m in MODULES]
        cells = [format_cell(row["mean"][c], row["std"][c], 1 if c == "px err" else 3) for c in COLUMNS]
        gains = [format_cell(*paired_gain(row, base, g), sign=True) if base is not None and key != "baseline"
                 else "" for g in GAINS]
        lines.append([row["label"], *on, *cells, *gains, train_seconds(row)])
    return markdown_table(headers, lines)


def orderings(rows: dict, metric: str = "PCK@0.1") -> list[dict]:
    """The paper's Table-5 claim, "each module adds", checked on these rows: every single-module row, each
    pair and every module together against the Baseline (``metric``, paired by seed). Rows not run come back
    with ``holds`` None."""
    base = rows.get("baseline")
    out = []
    for key in ("+SPE", "+MS", "+RePPG", "+PDC", "+SPE+MS", "+RePPG+PDC", "all"):
        row = rows.get(key)
        if base is None or row is None:
            out.append(claim(f"{ROWS[key][0]} > Baseline ({metric})", (float("nan"), float("nan")), ">"))
            continue
        n = sum(1 for s in row["per_seed"] if s in base["per_seed"])
        out.append(claim(f"{ROWS[key][0]} > Baseline ({metric})", paired_gain(row, base, metric), ">", 0.0, n))
    return out


NOTES = """\
Rows: `baseline` = `model=baseline`; the module rows are `model=lofr` with the baseline's settings
(`arch.cam_head=false arch.enc_head=false`, every switch off, `arch.dec_value=memory`) and only the named
modules on; SPE and RePPG bring the CAM head they read (and its L_cls_cnn), MS brings the encoder's
classifier (L_cls_en); "+PDC alone" = the baseline's network + β L_div (Eq. 11). `all` = every module
(the paper's LOFR); `LOFR as configured` = `model=lofr` with the config untouched (synth-cpu:
`arch.dec_value=local`, not the paper's). Δ = row − baseline, paired by seed. SynthPose val,
ground-truth boxes, flip test; PCK of the box diagonal."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "table5_modules")
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS), help="which rows (default all)")
    args = p.parse_args(argv)
    t_start, common = begin(args)
    rows = run_rows({k: ROWS[k] for k in ROWS if k in args.rows}, args, common)
    claims = orderings(rows)
    table = format_table(rows) + "\n\n**The paper's ordering on these rows: each module adds**\n\n" + \
        claims_markdown(claims)
    return finish("table5_modules", "Table 5 on SynthPose: the modules", "benchmarks/table5_modules.py", argv, args,
                  t_start, table, NOTES + "\n" + regime_note(common), overrides=common, rows=rows, orderings=claims)


if __name__ == "__main__":
    main()
