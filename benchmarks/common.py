"""Helpers every benchmark script shares: where the run came from and how its result is written.

A benchmark writes ``benchmarks/results/<name>.json`` (everything, machine-readable) and
``<name>.md`` (a title, the command, commit, machine and wall time, then the table)::

    from common import command_line, git_commit, machine_info, markdown_table, write_results

    out = {"command": command_line("benchmarks/cost.py", argv), "commit": git_commit(),
           "machine": machine_info(device), "wall_s": 12.3, "table": table, ...}
    write_results(out, "cost", "Cost benchmark", results_dir)

Scripts in ``benchmarks/`` import this module by its bare name (``python benchmarks/x.py`` puts
``benchmarks/`` on ``sys.path``); tests load it with importlib.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

__all__ = ["ROOT", "RESULTS", "git_commit", "cpu_model", "machine_info", "command_line", "markdown_table",
           "write_results"]


def git_commit() -> str:
    """The checkout's HEAD commit, with ``+dirty`` when tracked files differ from it; "unknown"
    outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; else ``platform.processor()``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str | torch.device = "cpu") -> dict:
    """CPU count and model, torch threads, torch / Python / OS versions, the 1-minute load average
    (other work on the machine skews CPU timings) and, on CUDA, the GPU's name and memory."""
    info = {"cpu_count": os.cpu_count(), "cpu_model": cpu_model(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    try:
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(cuda_device=props.name, cuda_memory_gib=round(props.total_memory / 2**30, 1),
                    cuda_version=torch.version.cuda)
    return info


def command_line(script: str, argv: list[str] | None = None) -> str:
    """``python <script> <args>`` as it could be pasted into a shell (``argv`` None = sys.argv[1:])."""
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(a) for a in [script, *args])


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; cells are written with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: a row has {len(row)} cells for {len(headers)} headers: {row}")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def write_results(out: dict, name: str, title: str, results_dir: str | Path = RESULTS,
                  notes: str = "") -> tuple[Path, Path]:
    """Write ``out`` to ``<results_dir>/<name>.json`` and a markdown page ``<name>.md``: the title,
    the command, commit, machine and wall time (all read from ``out``), ``out["table"]`` and
    ``notes``. ``out`` needs "command", "commit", "machine", "wall_s" and "table" (KeyError naming
    the missing ones otherwise). Returns the two paths."""
    missing = [k for k in ("command", "commit", "machine", "wall_s", "table") if k not in out]
    if missing:
        raise KeyError(f"write_results({name!r}): the result lacks {missing}")
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    m = out["machine"]
    where = (f"{m.get('cpu_count')} CPUs ({m.get('cpu_model')}), torch {m.get('torch')} "
             f"({m.get('torch_threads')} threads)")
    if "cuda_device" in m:
        where += f", GPU {m['cuda_device']}"
    if "load_avg_1m" in m:
        where += f", load average {m['load_avg_1m']}"
    md = (f"# {title}\n\n`{out['command']}`\n\ncommit `{out['commit']}`; {where}; wall {out['wall_s']} s\n\n"
          f"{out['table']}\n" + (f"\n{notes.strip()}\n" if notes.strip() else ""))
    json_path, md_path = results_dir / f"{name}.json", results_dir / f"{name}.md"
    json_path.write_text(json.dumps(out, indent=1, default=float) + "\n")
    md_path.write_text(md)
    return json_path, md_path


# ============================================================================== training tables
# Shared by the accuracy tables (table4_semi_weak.py, table5_modules.py, table6_depths.py,
# table7_response.py, time_to_accuracy.py): every row is a ``lofr.engine.trainer.train`` run of the
# same config (+ the row's overrides), trained once per seed and evaluated on SynthPose val (ground-truth
# boxes, the config's flip test), with synth_claim.py's command-line conventions.

QUICK = ["optim.epochs=1", "max_steps=2", "optim.batch_size=8", "optim.warmup_steps=1", "data.workers=0",
         "data.eval_batch_size=16"]  # synth_claim.py's smoke run: 2 steps per row, tiny batches
METRICS = ("PCK@0.1", "PCK@0.2", "px err", "AP", "AR")  # what every table row records

__all__ += ["QUICK", "METRICS", "training_parser", "base_overrides", "run_rows", "metrics_of", "mean_std",
            "format_cell", "paired_gain", "train_seconds", "finish", "kept_dir", "write_json", "claim",
            "claims_markdown", "regime_note", "train_or_resume"]


def training_parser(doc: str, runs_name: str) -> argparse.ArgumentParser:
    """synth_claim.py's options for a script whose docstring is ``doc``: --config, --set, --seeds,
    --checkpoint-dir, --runs-dir (default runs/<runs_name>), --results-dir, --data-root, --threads,
    --quick."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config", default="synth-cpu", help="config name or YAML path (default synth-cpu)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every row")
    p.add_argument("--seeds", nargs="+", type=int, default=[0],
                   help="training seeds; each cell = mean and std over them (default: one seed, 0)")
    p.add_argument("--checkpoint-dir", help="load <dir>/<row>/seed<k>/last.pt (or <dir>/<row>/last.pt, "
                                            "synth_claim.py's layout) instead of training")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / runs_name), help="where training writes "
                                                                             "(<dir>/<row>/seed<k>)")
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--data-root", help="dataset root (default: the config's; SynthPose)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; see synth_claim.py)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 steps per row, tiny batches")
    p.add_argument("--fresh", action="store_true", help="retrain every run: ignore the kept results of finished runs "
                                                         "and the last.pt of unfinished ones")
    p.add_argument("--table-only", action="store_true",
                   help="train nothing: the table from what was kept (finished runs in results/runs/<table>/, a curve's point files); the rest left out")
    p.add_argument("--results-name", default=None,
                   help="results file stem (default: the script's, e.g. table4_semi_weak; another dataset: another name)")
    return p


def base_overrides(args) -> list[str]:
    """The overrides of every row: QUICK (with --quick), then --set (so --set wins), then --data-root."""
    return (QUICK if args.quick else []) + list(args.set) \
        + ([f"data.root={args.data_root}"] if args.data_root else [])


def begin(args) -> tuple[float, list[str]]:
    """What every training benchmark does first: torch's CPU threads from ``--threads``, the wall clock
    (-> ``finish``'s ``t_start``) and the overrides of every row (:func:`base_overrides`)."""
    torch.set_num_threads(args.threads)
    return time.perf_counter(), base_overrides(args)


def metrics_of(report) -> dict:
    """An EvalReport -> {PCK@0.1, PCK@0.2, px err, AP, AR} (AP / AR: COCOeval's mAP / mAR)."""
    s = report.summary()
    return {"PCK@0.1": report.pck[0.1], "PCK@0.2": report.pck[0.2], "px err": report.px_error,
            "AP": s.get("AP", float("nan")), "AR": s.get("AR", float("nan"))}


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; nan for a single value) of finite-or-nan floats."""
    v = [float(x) for x in values]
    if not v:
        return float("nan"), float("nan")
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def format_cell(mean: float, std: float = float("nan"), digits: int = 3, sign: bool = False) -> str:
    """"0.123" or "0.123 ± 0.004" (std nan = one seed); "—" for nan; ``sign``: "+0.012"."""
    if mean is None or math.isnan(mean):
        return "—"
    s = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return s if std is None or math.isnan(std) else f"{s} ± {std:.{digits}f}"


def run_dir(base: Path, key: str, seed: int, loading: bool) -> Path:
    """<base>/<key>/seed<seed>; when loading, synth_claim.py's <base>/<key> if only that exists."""
    d = Path(base) / key / f"seed{seed}"
    if loading and not (d / "last.pt").exists() and (Path(base) / key / "last.pt").exists():
        return Path(base) / key
    return d


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file renamed into place): a run stopped while
    writing leaves the old file or the new one, never half of one."""
    tmp = Path(path).with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float) + "\n")
    os.replace(tmp, path)


def kept_dir(args) -> Path:
    """Where run_rows keeps one file per finished (row, seed): ``<results-dir>/runs/<results-name or the
    runs folder's name>/`` (committed with the results, so a later session skips those runs)."""
    return Path(args.results_dir) / "runs" / (getattr(args, "results_name", None) or Path(args.runs_dir).name)


def train_or_resume(cfg, folder: Path, fresh: bool = False) -> dict:
    """``train`` ``cfg`` into ``folder``, continuing its ``last.pt`` when that is a run of the same config
    (training resumes bit for bit; a finished one returns at once); from scratch otherwise or with ``fresh``."""
    from lofr.config_utils import ConfigError
    from lofr.engine.checkpoint import CheckpointError
    from lofr.engine.trainer import train

    try:
        if fresh or not (Path(folder) / "last.pt").is_file():
            raise CheckpointError("nothing to resume")
        return train(cfg, folder, resume=True, progress=False)
    except (CheckpointError, ConfigError):
        return train(cfg, folder, overwrite=True, progress=False)


def run_rows(rows: dict, args, common: list[str], per_model=None, log=print) -> dict:
    """Train (or load, with ``args.checkpoint_dir``) and evaluate every row for every seed.

    rows: {key: (label, overrides)}; the config is ``load_config(args.config, common + overrides +
    ["seed=<k>"])``. per_model(key, seed, model, cfg, val_ds) -> dict: optional extra measurement
    on each trained model (stored under "extra"). Returns {key: {"label", "overrides",
    "per_seed": {seed: metrics}, "mean": {metric: mean}, "std": {metric: std}, "timing": {seed:
    {train_s, steps, batch, images_per_s, eval_s}}, "extra": {seed: ...}}}.

    Stopped and started again, it resumes: each finished (row, seed) is kept in ``kept_dir(args)/<key>-seed<k>.json``
    (its overrides, metrics, timing, extra, commit) and skipped next time when its overrides are the same; an
    unfinished run continues from its ``last.pt`` in ``--runs-dir`` (training resumes bit for bit). ``args.fresh``
    (``--fresh``) retrains everything.
    """
    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.runtime import pick_device
    from lofr.engine.trainer import build_datasets, evaluate, load_model

    kept = kept_dir(args)
    fresh = getattr(args, "fresh", False)
    out, val_ds = {}, None
    for key, (label, extra) in rows.items():
        row = {"label": label, "overrides": list(extra), "per_seed": {}, "timing": {}, "extra": {}}
        for seed in args.seeds:
            overrides = list(common) + list(extra) + [f"seed={seed}"]
            kept_file = kept / f"{key}-seed{seed}.json"
            if not args.checkpoint_dir and not fresh and kept_file.is_file():
                done = json.loads(kept_file.read_text())
                if done.get("overrides") == overrides and done.get("config") == args.config:
                    row["per_seed"][seed], row["timing"][seed] = done["metrics"], done["timing"]
                    if "extra" in done:
                        row["extra"][seed] = done["extra"]
                    log(f"{label} (seed {seed}): kept from {kept_file.name}", flush=True)
                    continue
                log(f"{label} (seed {seed}): {kept_file.name} was run with other overrides; training again", flush=True)
            if getattr(args, "table_only", False) and not args.checkpoint_dir:
                log(f"{label} (seed {seed}): not run yet, left out (--table-only)", flush=True)
                continue
            cfg = load_config(args.config, overrides)
            timing = {}
            if args.checkpoint_dir:
                path = run_dir(Path(args.checkpoint_dir), key, seed, loading=True) / "last.pt"
                if not path.is_file():  # a row scored with fewer seeds than asked for: the table says which
                    log(f"{label} (seed {seed}): no {path}, left out", flush=True)
                    continue
                model, cfg = load_model(path, pick_device(cfg.device))
            else:
                t0 = time.perf_counter()
                res = train_or_resume(cfg, run_dir(Path(args.runs_dir), key, seed, loading=False), fresh)
                timing = {"train_s": round(time.perf_counter() - t0, 1), "steps": res["step"],
                          "batch": cfg.optim.batch_size, "evals_in_training": len(res["history"])}
                model, _ = load_model(res["last"], pick_device(cfg.device))  # evaluated where it trained
            if val_ds is None:
                train_ds, val_ds = build_datasets(cfg)
            t0 = time.perf_counter()  # on the cached eval crops when the config caches (same numbers, no backbone)
            report = evaluate(model, eval_crops(cfg, model, train_ds, val_ds), cfg.data.eval_batch_size,
                              cfg.data.flip_test)
            timing["eval_s"] = round(time.perf_counter() - t0, 1)
            if "train_s" in timing:  # leave the evaluations inside train() out of the rate, as synth_claim
                busy = timing["train_s"] - timing["evals_in_training"] * timing["eval_s"]
                # ... unless they were most of it (Sup-only at 5 %: 41 short epochs, each evaluated, under
                # load): then the difference is noise, and no rate beats 1e13 img/s (seen); eval_every=0 avoids it
                if busy > 0.2 * timing["train_s"]:
                    timing["images_per_s"] = round(timing["steps"] * timing["batch"] / busy, 1)
            row["per_seed"][seed], row["timing"][seed] = metrics_of(report), timing
            if per_model is not None:
                row["extra"][seed] = per_model(key, seed, model, cfg, val_ds)
            if not args.checkpoint_dir:
                kept.mkdir(parents=True, exist_ok=True)
                record = {"row": key, "label": label, "seed": seed, "config": args.config, "overrides": overrides,
                          "metrics": row["per_seed"][seed], "timing": timing, "commit": git_commit()}
                if seed in row["extra"]:
                    record["extra"] = row["extra"][seed]
                write_json(kept_file, record)
            m = row["per_seed"][seed]
            log(f"{label} (seed {seed}): PCK@0.1 {m['PCK@0.1']:.3f}  PCK@0.2 {m['PCK@0.2']:.3f}  "
                f"px err {m['px err']:.1f}  AP {m['AP']:.3f}  {timing}", flush=True)
        if not row["per_seed"]:  # --table-only / --checkpoint-dir and no seed of this row: not in the table
            continue
        stats = {k: mean_std([m[k] for m in row["per_seed"].values()]) for k in METRICS}
        row["mean"] = {k: v[0] for k, v in stats.items()}
        row["std"] = {k: v[1] for k, v in stats.items()}
        out[key] = row
    return out


def paired_gain(row: dict, base: dict, metric: str) -> tuple[float, float]:
    """Mean and std over the seeds both rows have of (row - base) for ``metric``."""
    seeds = [s for s in row["per_seed"] if s in base["per_seed"]]
    return mean_std([row["per_seed"][s][metric] - base["per_seed"][s][metric] for s in seeds])


def claim(text: str, diff: tuple[float, float], holds_if: str, threshold: float = 0.0, n: int = 0) -> dict:
    """One of the paper's orderings checked on a table: ``diff`` = (mean, std over seeds) of a paired
    difference, ``holds_if`` ">" (mean > threshold) or "<=" (mean <= threshold). ``n`` = how many seeds the
    difference pairs. {"claim", "holds" (True / False; None when nothing was measured), "mean", "std",
    "threshold", "seeds", "clear"}; "clear": the mean is more than two stds away from the threshold (False with
    one seed: no spread to judge it by)."""
    mean, std = diff
    if math.isnan(mean):
        return {"claim": text, "holds": None, "mean": mean, "std": std, "threshold": threshold, "seeds": n,
                "clear": False}
    holds = mean > threshold if holds_if == ">" else mean <= threshold
    clear = not math.isnan(std) and abs(mean - threshold) > 2 * std
    return {"claim": text, "holds": bool(holds), "mean": mean, "std": std, "threshold": threshold, "seeds": n,
            "clear": bool(clear)}


def claims_markdown(claims: list[dict], what: str = "Δ") -> str:
    """A markdown list: "holds" / "does not hold" / "not measured" per claim, with its paired difference
    (mean ± std over seeds) and whether it is clear of the seed spread."""
    lines = []
    for c in claims:
        if c["holds"] is None:
            lines.append(f"- **not measured**: {c['claim']}")
            continue
        verdict = "holds" if c["holds"] else "does not hold"
        spread = ("clear of the seed spread (> 2 std)" if c["clear"] else
                  "one seed: no spread" if c["seeds"] < 2 else "within 2 std of the seed spread")
        lines.append(f"- **{verdict}**: {c['claim']} — {what} {format_cell(c['mean'], c['std'], sign=True)} "
                     f"over {c['seeds']} seed{'s' if c['seeds'] != 1 else ''}; {spread}")
    return "\n".join(lines)


def regime_note(overrides: list[str]) -> str:
    """One sentence saying which training regime a table's rows ran in (from the overrides of every row)."""
    cheap = "arch.freeze_to=16" in overrides
    said = " ".join(f"`{o}`" for o in overrides) or "none"
    if cheap:
        return ("Regime: the cheapest one — the whole backbone frozen and its maps at every stride the heads read "
                "cached (`arch.freeze_to=16`), so a step runs only the heads. "
                f"Overrides of every row: {said}.")
    return ("Regime: the testbed as configured (the stem and blocks 0-2 frozen and cached, blocks 3-4 and the heads "
            f"train). Overrides of every row: {said}.")


def train_seconds(row: dict) -> str:
    """The mean training time of a row's seeds, "" when it was loaded."""
    t = [v["train_s"] for v in row["timing"].values() if "train_s" in v]
    return f"{sum(t) / len(t):.0f}" if t else ""



def state_note(seeds_of: dict, seeds, rows, table_only: bool = False) -> str:
    """What a table built from kept runs lacks: seeds_of {row: the seeds it has}, against ``seeds`` for every
    row of ``rows`` -> "**State: partial** ... — row: seeds [..]; row: none.", "**State: complete** ..." for a
    complete table rebuilt with --table-only, else ""."""
    want = {int(x) for x in seeds}
    short = {k: sorted(int(x) for x in v) for k, v in seeds_of.items() if {int(x) for x in v} != want}
    missing = [k for k in rows if k not in seeds_of]
    if short or missing:
        state = "; ".join([f"{k}: seeds {v}" for k, v in short.items()] + [f"{k}: none" for k in missing])
        return f"**State: partial** (built from the kept runs) — {state}."
    if table_only:
        return "**State: complete** (built from the kept runs: every row has every seed)."
    return ""


def finish(name: str, title: str, script: str, argv, args, t_start: float, table: str, notes: str = "",
           trained: bool = True, **extra) -> dict:
    """Assemble the result (command, commit, machine, wall time, config, seeds, table + ``extra``),
    write ``<results_dir>/<name>.{json,md}`` and print the table; ``trained``: the md says how many
    seeds the cells average. Returns the result."""
    seeds = list(args.seeds)
    seed_note = (f"One training seed ({seeds[0]}): no spread is shown; `--seeds 0 1 2` gives mean ± std "
                 "(sample std over seeds)." if len(seeds) == 1 else
                 f"Seeds {seeds}: every cell is the mean ± sample std over them.") if trained else ""
    rows = extra.get("rows")
    if trained and isinstance(rows, dict):  # a partial table (--table-only, or a run stopped) says what it lacks
        seed_note = (seed_note + " " + state_note({k: r["per_seed"] for k, r in rows.items()}, seeds, rows,
                                                  getattr(args, "table_only", False))).strip()
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU's name too, where there is one
    out = {"command": command_line(script, argv), "commit": git_commit(), "machine": machine_info(device),
           "wall_s": round(time.perf_counter() - t_start, 1), "config": args.config, "seeds": seeds,
           "quick": bool(args.quick), **extra, "table": table}
    name = getattr(args, "results_name", None) or name
    write_results(out, name, title, args.results_dir, notes=(notes.strip() + "\n\n" + seed_note).strip())
    print(table)
    print(f"wall time {out['wall_s']:.0f} s; written to {args.results_dir}/{name}.{{json,md}}")
    return out
