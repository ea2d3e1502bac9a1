"""What a training step costs in the cheapest regime against synth-cpu's, per model.

synth-cpu freezes Lite0 up to stride 8 and caches those maps; the stride-16 blocks still train, so a step runs
them forward and backward. The cheapest regime (``arch.freeze_to=16``, learning_curves.py's) freezes and caches
everything: a step runs only the heads. Both are timed here on the same real cached batch (batch 32, 1 torch
thread), alternating regime and model in rounds so that other load on the machine hits both alike; each cell
is the median over ``--rounds`` rounds of ``--steps`` timed steps (testbed.py's ``time_steps``).

    python benchmarks/regime_cost.py             # ~5 min on 2 cores
    python benchmarks/regime_cost.py --quick     # 1 round of 2 steps on a tiny SynthPose (--data-root)

Writes ``benchmarks/results/regime_cost.{json,md}``.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import begin, finish, markdown_table, training_parser  # noqa: E402
from learning_curves import ROWS  # noqa: E402
from testbed import time_steps  # noqa: E402

MODELS = ("cam-gap-s16", "cam-lse-s8", "baseline", "lofr", "lofr-part")
REGIMES = {"synth-cpu (frozen to stride 8)": [], "cheapest (all frozen)": ["arch.freeze_to=16"]}


def main(argv=None) -> dict:
    p = training_parser(__doc__, "regime_cost")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    args = p.parse_args(argv)
    t_start, common = begin(args)
    from lofr.engine.config import load_config

    rounds, steps = (1, 2) if args.quick else (args.rounds, args.steps)
    ms = {(m, r): [] for m in MODELS for r in REGIMES}
    trainable = {}
    for _ in range(rounds):
        for m in MODELS:
            for r, extra in REGIMES.items():
                cfg = load_config(args.config, [*common, *ROWS[m][1], *extra, "data.workers=0"])
                t = time_steps(cfg, True, steps, warmup=1 if args.quick else 2)
                ms[(m, r)].append(t["ms_per_step"])
                trainable[(m, r)] = t["trainable_params_m"]
                print(f"{m} {r}: {t['ms_per_step']:.0f} ms", file=sys.stderr, flush=True)
    a, b = REGIMES
    rows, cost = [], {}
    for m in MODELS:
        x, y = statistics.median(ms[(m, a)]), statistics.median(ms[(m, b)])
        cost[m] = {a: ms[(m, a)], b: ms[(m, b)], "trainable_m": {a: trainable[(m, a)], b: trainable[(m, b)]}}
        rows.append([ROWS[m][0], f"{x:.0f}", f"{trainable[(m, a)]:.2f}", f"{y:.0f}", f"{trainable[(m, b)]:.2f}",
                     f"{x / y:.1f}x"])
    table = markdown_table(["model", f"ms/step, {a}", "trainable M", f"ms/step, {b}", "trainable M", "cheaper by"], rows)
    notes = (f"Median of {rounds} rounds x {steps} steps, batch 32, 1 torch thread, on one real cached batch "
             "(the data loading of both regimes is a memory-mapped read). The rounds alternate models and regimes, "
             "so the ratio holds under load even where the milliseconds do not.")
    return finish("regime_cost", "Step cost: the cheapest regime against synth-cpu", "benchmarks/regime_cost.py",
                  argv, args, t_start, table, notes, trained=False, cost=cost)


if __name__ == "__main__":
    main()
