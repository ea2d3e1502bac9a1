"""The central claim on SynthPose: does LOFR localise from image-level labels?

Trains (or, with ``--checkpoint-dir``, loads) four models with the same config, backbone and budget,
evaluates them on SynthPose val (ground-truth boxes, flip test; from the cached eval crops when the
config caches its backbone) and prints ONE table:

    mean-pose prior  the training set's mean crop-space pose pasted into every crop (no model)
    CAM argmax       LOFR's own CNN branch: the arg-max of each keypoint's CAM (Eq. 1, stride 16)
    plain CAM        the CNN branch trained alone (``model=cam``): backbone + CAM head, image labels only
    Baseline         CNN + DETR encoder/decoder, final BCE only (``model=baseline``), image labels only
    LOFR             the full model (``model=lofr``), image labels only
    supervised       the same backbone + a heatmap head trained with the heatmap MSE on every
                     instance (``model=sup-only data.labelled_fraction=1.0 loss.mse=1.0``)

plus PCK@0.1 per joint group and the recovered-gain ratio (PCK_LOFR - PCK_prior) / (PCK_sup -
PCK_prior) at 0.1 and 0.2 (the analogue of the paper's LOFR / Sup-only AP ratio). Writes
``benchmarks/results/synth_claim.{json,md}`` with the command, git commit, machine and wall times.

    python benchmarks/synth_claim.py                       # the synth-cpu testbed, every row, one seed
    python benchmarks/synth_claim.py --set optim.epochs=6  # any config override, for every model
    python benchmarks/synth_claim.py --checkpoint-dir runs/synth_claim   # evaluate trained runs
    python benchmarks/synth_claim.py --models lofr --seeds 0 1 2     # mean ± std over 3 training seeds
    python benchmarks/synth_claim.py --quick               # a smoke run: a few steps each

Runs go to ``--runs-dir/{lofr,baseline,sup}`` (``lofr train``'s layout: last.pt, metrics.jsonl, ...;
``.../<model>/seed<k>`` with several ``--seeds``); ``--checkpoint-dir`` reads the same layout.

Stopped and started again, it resumes (as the table scripts do): each finished (model, seed) is kept in
``<results-dir>/runs/<results-name>/<model>-seed<k>.json`` (its overrides, row, the prior's row, LOFR's CAM
row, timing, commit) and skipped next time when its config and overrides are the same; an unfinished run
continues from its ``last.pt``. ``--fresh`` retrains everything; ``--table-only`` trains nothing and builds
the table from the kept runs (the md then says which seeds each row has).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import format_cell, git_commit, mean_std, state_note, train_or_resume, write_json  # noqa: E402
MODELS = {  # row key -> (model overrides, label)
    "baseline": (["model=baseline"], "Baseline"),
    "lofr": (["model=lofr"], "LOFR"),
    "sup": (["model=sup-only", "data.labelled_fraction=1.0", "loss.mse=1.0"], "supervised"),
    "plain_cam": (["model=cam"], "plain CAM"),
}
ORDER = [("prior", "mean-pose prior"), ("cam", "CAM argmax"), ("plain_cam", "plain CAM"), ("baseline", "Baseline"),
         ("lofr", "LOFR"), ("sup", "supervised")]
QUICK = ["optim.epochs=1", "max_steps=2", "optim.batch_size=8", "optim.warmup_steps=1", "data.workers=0",
         "data.eval_batch_size=16"]
GROUPS = ("face", "arms", "legs")


def seed_dir(base: Path, key: str, seed: int, n_seeds: int, loading: bool = False) -> Path:
    """Where one run lives: ``<base>/<key>`` for a single seed (``lofr train``'s layout), else
    ``<base>/<key>/seed<k>``; when loading a single seed, ``<base>/<key>/seed<k>`` if only that exists."""
    flat, nested = base / key, base / key / f"seed{seed}"
    if n_seeds > 1:
        return nested
    if loading and not (flat / "last.pt").exists() and (nested / "last.pt").exists():
        return nested
    return flat


def trained_timing(run: Path, batch: int) -> dict:
    """What a loaded run's metrics.jsonl says of its training: train_s (the time of its last evaluation,
    evaluations included), steps, batch and the images/s that gives; {} without the file."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    last = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][-1]
    return {"train_s": last["time_s"], "steps": last["step"], "batch": batch,
            "images_per_s": round(last["step"] * batch / max(last["time_s"], 1e-9), 1), "from": "metrics.jsonl"}


def mean_timing(runs: list[dict]) -> dict:
    """The timing dicts of one row's seeds -> one: train_s / images_per_s / eval_s averaged, the rest
    from the first run."""
    out = dict(runs[0])
    out.pop("seed", None)
    for k in ("train_s", "images_per_s", "eval_s"):
        if all(k in r for r in runs):
            out[k] = round(sum(r[k] for r in runs) / len(runs), 1)
    return out


def row_metrics(report) -> dict:
    """An EvalReport -> the numbers of one table row."""
    s = report.summary()
    return {"PCK@0.1": report.pck[0.1], "PCK@0.2": report.pck[0.2], "px err": report.px_error,
            "AP": s.get("AP", float("nan")), "AP50": s.get("AP50", float("nan")), "AR": s.get("AR", float("nan")),
            **{f"{g} PCK@0.1": report.pck_per_group[0.1][g] for g in GROUPS},
            **{f"{g} PCK@0.2": report.pck_per_group[0.2][g] for g in GROUPS},
            **{f"{g} px err": report.px_error_per_group[g] for g in GROUPS}}


def recovered_gain(rows: dict, key: str = "lofr") -> dict:
    """(PCK_key - PCK_prior) / (PCK_sup - PCK_prior) at 0.1 and 0.2 (nan when sup does not beat the prior)."""
    out = {}
    for t in ("PCK@0.1", "PCK@0.2"):
        gain = rows["sup"][t] - rows["prior"][t]
        out[t] = (rows[key][t] - rows["prior"][t]) / gain if gain > 0 else float("nan")
    return out


def format_table(rows: dict, timing: dict, stds: dict | None = None) -> str:
    """The markdown table of every row (``mean ± std`` over seeds where ``stds`` has the row), then the
    recovered-gain ratios (of the means)."""
    stds = stds or {}
    cols = ["PCK@0.1", "PCK@0.2", "px err", "AP", "AP50", "AR"] + [f"{g} PCK@0.1" for g in GROUPS] \
        + [f"{g} PCK@0.2" for g in GROUPS]
    lines = ["| model | " + " | ".join(cols) + " | train s | img/s |", "|---" * (len(cols) + 3) + "|"]
    for key, label in ORDER:
        if key not in rows:
            continue
        r, t = rows[key], timing.get(key, {})
        sd = stds.get(key, {})
        cells = [format_cell(r[c], sd.get(c, float("nan")), 1 if c == "px err" else 3) for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {t.get('train_s', '')} | {t.get('images_per_s', '')} |")
    if all(k in rows for k in ("prior", "sup")):
        for key in ("lofr", "baseline", "cam", "plain_cam"):
            if key in rows:
                g = recovered_gain(rows, key)
                lines.append(f"\nrecovered gain {dict(ORDER)[key]}: (PCK - PCK_prior) / (PCK_sup - PCK_prior) = "
                             f"{g['PCK@0.1']:.2f} at 0.1, {g['PCK@0.2']:.2f} at 0.2")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="synth-cpu", help="config name or YAML path (default synth-cpu)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every model")
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS), help="which to train/load")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds (default 0); several give mean ± std (sample std) per cell.\n"
                        "Runs: <runs-dir>/<model> for one seed, <runs-dir>/<model>/seed<k> for several")
    p.add_argument("--checkpoint-dir", help="load <dir>/<model>/last.pt (or <dir>/<model>/seed<k>/last.pt) "
                                            "instead of training")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "synth_claim"), help="where training writes")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--data-root", help="dataset root (default: the config's; SynthPose)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: with data.workers=1 that fills 2 cores;\n2 threads + a loader on a loaded 2-core machine ran 7 s/step instead of 0.1)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps per model, tiny batches")
    p.add_argument("--results-name", default="synth_claim", help="results file stem (default synth_claim)")
    p.add_argument("--fresh", action="store_true", help="retrain every run: ignore the kept results of finished runs "
                                                         "and the last.pt of unfinished ones")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table from the runs kept in <results-dir>/runs/<results-name>/")
    args = p.parse_args(argv)

    from lofr.data.topdown import mean_pose_prior
    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.trainer import build_datasets, evaluate, load_model

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    common = list(args.set) + (QUICK if args.quick else []) + ([f"data.root={args.data_root}"] if args.data_root else [])
    per_seed: dict[str, list[dict]] = {}  # row key -> one row_metrics per seed
    timing, val_ds, prior = {}, None, None
    kept = Path(args.results_dir) / "runs" / args.results_name
    seeds_of: dict[str, list[int]] = {}  # row key -> the seeds it has (a partial table says so)
    for key in args.models:
        extra, label = MODELS[key]
        for seed in args.seeds:
            overrides = common + extra + [f"seed={seed}"]
            kept_file = kept / f"{key}-seed{seed}.json"
            if not args.checkpoint_dir and not args.fresh and kept_file.is_file():
                done = json.loads(kept_file.read_text())
                if done.get("overrides") == overrides and done.get("config") == args.config:
                    timing.setdefault(key, []).append(done["timing"])
                    per_seed.setdefault(key, []).append(done["row"])
                    if "cam" in done:
                        per_seed.setdefault("cam", []).append(done["cam"])
                    prior = prior or done["prior"]
                    seeds_of.setdefault(key, []).append(seed)
                    print(f"{label} (seed {seed}): kept from {kept_file.name}", flush=True)
                    continue
                print(f"{label} (seed {seed}): {kept_file.name} was run with other overrides; training again", flush=True)
            if args.table_only and not args.checkpoint_dir:
                print(f"{label} (seed {seed}): not run yet, left out (--table-only)", flush=True)
                continue
            cfg = load_config(args.config, overrides)
            run_dir = seed_dir(Path(args.checkpoint_dir or args.runs_dir), key, seed, len(args.seeds),
                               loading=bool(args.checkpoint_dir))
            t = {"seed": seed}
            if args.checkpoint_dir:
                model, cfg = load_model(run_dir / "last.pt")
                t.update(trained_timing(run_dir, cfg.optim.batch_size))
            else:
                t0 = time.perf_counter()
                res = train_or_resume(cfg, run_dir, args.fresh)  # an unfinished run continues from its last.pt
                t.update(train_s=round(time.perf_counter() - t0, 1), steps=res["step"], batch=cfg.optim.batch_size,
                         evals_in_training=len(res["history"]))
                model, _ = load_model(res["last"])
            if val_ds is None:
                train_ds, val_ds = build_datasets(cfg)
                prior_pose = mean_pose_prior(train_ds)
            crops = eval_crops(cfg, model, train_ds, val_ds)  # cached eval crops when the config caches
            t0 = time.perf_counter()
            report = evaluate(model, crops, cfg.data.eval_batch_size, cfg.data.flip_test, prior_pose=prior_pose)
            eval_s = time.perf_counter() - t0
            if "train_s" in t and "from" not in t:  # train() evaluated every eval_every epochs: leave that out
                t["images_per_s"] = round(t["steps"] * t["batch"] / max(t["train_s"] - t["evals_in_training"] * eval_s,
                                                                       1e-9), 1)
            t["eval_s"] = round(eval_s, 1)
            timing.setdefault(key, []).append(t)
            per_seed.setdefault(key, []).append(row_metrics(report))
            if prior is None:
                prior = row_metrics(report.prior)
            if key == "lofr":
                per_seed.setdefault("cam", []).append(row_metrics(
                    evaluate(model, crops, cfg.data.eval_batch_size, cfg.data.flip_test, source="cam")))
            seeds_of.setdefault(key, []).append(seed)
            if not args.checkpoint_dir:
                kept.mkdir(parents=True, exist_ok=True)
                record = {"model": key, "seed": seed, "config": args.config, "overrides": overrides,
                          "row": per_seed[key][-1], "prior": row_metrics(report.prior), "timing": t,
                          "commit": git_commit()}
                if key == "lofr":
                    record["cam"] = per_seed["cam"][-1]
                write_json(kept_file, record)
            r = per_seed[key][-1]
            print(f"{label} (seed {seed}): PCK@0.1 {r['PCK@0.1']:.3f}  PCK@0.2 {r['PCK@0.2']:.3f}  "
                  f"px err {r['px err']:.1f}  {t}", flush=True)
    rows, stds = {}, {}
    for key, runs in per_seed.items():
        stats = {c: mean_std([r[c] for r in runs]) for c in runs[0]}
        rows[key] = {c: m for c, (m, _) in stats.items()}
        stds[key] = {c: sd for c, (_, sd) in stats.items()}
    if prior is None:
        raise SystemExit(f"synth_claim: no run kept in {kept} for these overrides, nothing to tabulate")
    rows["prior"] = prior
    timing = {key: mean_timing(ts) for key, ts in timing.items()}
    wall = time.perf_counter() - t_start

    table = format_table(rows, timing, stds)
    if len(args.seeds) > 1:
        table += f"\n\nmean ± sample std over seeds {args.seeds} (the prior has no seed)"
    state = state_note(seeds_of, args.seeds, args.models, args.table_only)
    table += f"\n\n{state}" if state else ""
    gains = {k: recovered_gain(rows, k) for k in ("lofr", "baseline", "cam", "plain_cam") if k in rows} \
        if "sup" in rows else {}
    machine = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "python": platform.python_version(), "platform": platform.platform()}
    try:
        machine["load_avg"] = os.getloadavg()
    except OSError:
        pass
    command = "python " + " ".join(shlex.quote(a) for a in [
        "benchmarks/synth_claim.py", *(sys.argv[1:] if argv is None else argv)])
    out = {"command": command, "commit": git_commit(), "machine": machine, "wall_s": round(wall, 1),
           "config": args.config, "overrides": common, "seeds": args.seeds, "rows": rows, "std": stds,
           "per_seed": per_seed, "seeds_of": seeds_of, "timing": timing, "recovered_gain": gains,
           "table": table}
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{args.results_name}.json").write_text(json.dumps(out, indent=1, default=float))
    md = (f"# SynthPose claim benchmark ({args.config})\n\n`{command}`\n\ncommit `{out['commit']}`, {machine['cpu_count']} CPUs, "
          f"torch {machine['torch']} ({machine['torch_threads']} threads), wall {out['wall_s']} s\n\n{table}\n")
    (results / f"{args.results_name}.md").write_text(md)
    print(table)
    print(f"wall time {wall:.0f} s; written to {results}/{args.results_name}.{{json,md}}")
    return out


if __name__ == "__main__":
    main()
