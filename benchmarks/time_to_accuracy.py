"""Time to accuracy on SynthPose: OKS AP and PCK@0.1 against wall-clock minutes of training.

Reads the ``metrics.jsonl`` of finished runs (``lofr.engine.trainer.train`` writes one record per
evaluation, every ``eval_every`` epochs: epoch, step, ``time_s`` = seconds since that ``train()`` call
started, evaluations included, the val metrics and the mean-pose prior's) and plots both metrics
against ``time_s`` / 60, one line per run, the prior as a dashed line. By default the runs of
synth_claim.py (``runs/synth_claim/{lofr,baseline,sup}``, those that exist); ``--train`` trains LOFR and
the Baseline first (the config as it is, ``eval_every`` from the config: synth-cpu evaluates every epoch).

The trainer's ``time_s`` counts on across a resume (from the last evaluation before the interruption;
the minutes between that evaluation and the interruption are not counted). Runs written by older
trainers restarted it at 0: a record whose time is below its predecessor's is shifted by the
predecessor's time.

    python benchmarks/time_to_accuracy.py                                  # plot runs/synth_claim/*
    python benchmarks/time_to_accuracy.py --runs runs/a/lofr runs/b/lofr --labels A B
    python benchmarks/time_to_accuracy.py --train                          # train LOFR + Baseline (~15 min)
    python benchmarks/time_to_accuracy.py --train --quick                  # smoke run

Writes ``benchmarks/results/time_to_accuracy.{png,json,md}``: the figure, the curves, and a table of the
best / final values of each run and the minutes it took to reach them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, begin, finish, format_cell, markdown_table, run_rows, training_parser  # noqa: E402

DEFAULT_RUNS = ("lofr", "baseline", "sup")  # under runs/synth_claim
LABELS = {"lofr": "LOFR", "baseline": "Baseline", "sup": "supervised"}
TRAIN = {"lofr": ("LOFR", ["model=lofr"]), "baseline": ("Baseline", ["model=baseline"])}
METRICS = ("AP", "PCK@0.1")


def read_curve(run_dir) -> dict:
    """``run_dir/metrics.jsonl`` -> {"minutes", "step", "epoch", "AP", "PCK@0.1", "prior PCK@0.1",
    "prior AP"} lists, in file order (``time_s`` made monotonic across resumes). FileNotFoundError
    when the file is missing, ValueError when a record has no ``time_s``."""
    path = Path(run_dir) / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    curve = {k: [] for k in ("minutes", "step", "epoch", *METRICS, *[f"prior {m}" for m in METRICS])}
    offset, last = 0.0, 0.0
    for i, r in enumerate(records):
        if "time_s" not in r:
            raise ValueError(f"{path}: record {i} has no time_s (written by an older trainer?)")
        t = float(r["time_s"])
        if t + offset < last:  # a resumed run: its clock started again
            offset = last
        last = t + offset
        curve["minutes"].append(last / 60)
        curve["step"].append(r["step"])
        curve["epoch"].append(r["epoch"])
        for m in METRICS:
            curve[m].append(float(r["val"].get(m, math.nan)))
            curve[f"prior {m}"].append(float((r.get("prior") or {}).get(m, math.nan)))
    return curve


def run_label(run_dir: Path) -> str:
    """"LOFR" for .../lofr, "LOFR seed1" for .../lofr/seed1, else the folder's name."""
    if run_dir.name.startswith("seed") and run_dir.name[4:].isdigit():
        return f"{LABELS.get(run_dir.parent.name, run_dir.parent.name)} {run_dir.name}"
    return LABELS.get(run_dir.name, run_dir.name)


def best_and_final(curve: dict, metric: str) -> dict:
    """{"best", "best_min" (first minute it was reached), "final", "final_min"} of one metric."""
    values = [v if not math.isnan(v) else -math.inf for v in curve[metric]]
    if not values:
        return {"best": math.nan, "best_min": math.nan, "final": math.nan, "final_min": math.nan}
    i = max(range(len(values)), key=lambda k: (values[k], -k))
    return {"best": curve[metric][i], "best_min": curve["minutes"][i], "final": curve[metric][-1],
            "final_min": curve["minutes"][-1]}


def plot(curves: dict, path: Path) -> None:
    """Two panels (OKS AP, PCK@0.1) vs wall-clock minutes; one line per run, the prior dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m in zip(axes, METRICS):
        prior = None
        for label, c in curves.items():
            ax.plot(c["minutes"], c[m], marker="o", ms=3, label=label)
            prior = prior if prior is not None else next((v for v in c[f"prior {m}"] if not math.isnan(v)), None)
        if prior is not None:
            ax.axhline(prior, color="grey", ls="--", lw=1, label="mean-pose prior")
        ax.set_xlabel("wall-clock training time (min, evaluations included)")
        ax.set_ylabel(m if m != "AP" else "OKS AP")
        ax.set_title(f"{'OKS AP' if m == 'AP' else m} on SynthPose val vs time")
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_table(curves: dict) -> str:
    headers = ["run", "evals", "minutes"] + [f"{k} {m}" for m in METRICS for k in ("best", "at min", "final")]
    lines = []
    for label, c in curves.items():
        cells = []
        for m in METRICS:
            s = best_and_final(c, m)
            cells += [format_cell(s["best"]), format_cell(s["best_min"], digits=1), format_cell(s["final"])]
        lines.append([label, len(c["minutes"]), format_cell(c["minutes"][-1] if c["minutes"] else math.nan, digits=1),
                      *cells])
    return markdown_table(headers, lines)


NOTES = """\
Time = the trainer's `time_s` (wall-clock seconds since `train()` started, the evaluations inside
training included; `metrics.jsonl` has no separate training-only clock). One record per evaluation
(`eval_every`). The runs are those named in the command; with `--train`, trained by this script with the
config as it is."""


def main(argv=None) -> dict:
    p = training_parser(__doc__, "time_to_accuracy")
    p.add_argument("--runs", nargs="+", help="run folders holding metrics.jsonl (default: runs/synth_claim/"
                                             "{lofr,baseline,sup}, those that exist; with --train: the trained ones)")
    p.add_argument("--labels", nargs="+", help="one label per --runs folder (default: LOFR / Baseline / ... or "
                                               "the folder name)")
    p.add_argument("--train", action="store_true", help="train LOFR and the Baseline first (into --runs-dir)")
    args = p.parse_args(argv)
    if args.checkpoint_dir:
        p.error("--checkpoint-dir: this script reads metrics.jsonl, not checkpoints; pass the run folders to --runs")
    t_start, common = begin(args)
    trained = {}
    if args.train:
        trained = run_rows(TRAIN, args, common)
        runs = [Path(args.runs_dir) / k / f"seed{s}" for k in TRAIN for s in args.seeds]
        labels = [f"{TRAIN[k][0]} (seed {s})" if len(args.seeds) > 1 else TRAIN[k][0]
                  for k in TRAIN for s in args.seeds]
    elif args.runs:
        runs = [Path(r) for r in args.runs]
        labels = args.labels or [run_label(r) for r in runs]
    else:
        runs = [ROOT / "runs" / "synth_claim" / k for k in DEFAULT_RUNS
                if (ROOT / "runs" / "synth_claim" / k / "metrics.jsonl").exists()]
        labels = [run_label(r) for r in runs]
        if not runs:
            p.error("no runs/synth_claim/*/metrics.jsonl: run benchmarks/synth_claim.py first, or pass --runs or "
                    "--train")
    if len(labels) != len(runs):
        p.error(f"--labels: {len(labels)} labels for {len(runs)} runs")
    curves = {label: read_curve(r) for label, r in zip(labels, runs)}
    png = Path(args.results_dir) / "time_to_accuracy.png"
    plot(curves, png)
    return finish("time_to_accuracy", "Time to accuracy on SynthPose", "benchmarks/time_to_accuracy.py", argv, args,
                  t_start, format_table(curves) + f"\n\n![time to accuracy]({png.name})", NOTES,
                  trained=args.train, runs={label: str(r) for label, r in zip(labels, runs)}, curves=curves,
                  png=str(png), trained_rows=trained, overrides=common)


if __name__ == "__main__":
    main()
