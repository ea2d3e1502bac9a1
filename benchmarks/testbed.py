"""The testbed table: can the `synth-cpu` testbed tell methods apart, and what does it cost?

    python benchmarks/testbed.py            # cost per step of every model + the cache; the table
    python benchmarks/testbed.py --long     # Sup-only's long run (up to 60 min on 2 cores), then the table
    python benchmarks/testbed.py --quick    # smoke run on a tiny SynthPose (--data-root), 2 steps each

Writes ``benchmarks/results/testbed.{json,md}`` with four parts:

1. **Supervised reference**: Sup-only with every location (``model=sup-only data.labelled_fraction=1.0
   loss.mse=1``), from ``synth_claim.json`` (the synth-cpu budget, mean ± std over its seeds) and, with
   ``--long``, a long run (``--long-set``: more epochs and cached views) with its OKS AP after every
   epoch and the wall time it took (``testbed_long.json``).
2. **Sup-only vs label fraction** (from ``table4_semi_weak.json``): PCK@0.1 / AP at 5 / 10 / 25 / 100 %
   of the locations, mean ± std over seeds, and whether each step up exceeds the seed spread (the sum
   of the two stds): a testbed that resolves methods must resolve how much supervision a model had.
3. **Cost per training step** of every model (LOFR, the baseline, the plain CAM, Sup-only) at one
   torch thread, batch ``optim.batch_size``, measured here: from the cached maps (what synth-cpu
   trains on) and from images through the whole backbone (what the cache saves).
4. **The cache**: views, crops, size on disk and build time (its ``meta.json``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import begin, finish, format_cell, markdown_table, training_parser  # noqa: E402

MODELS = {"lofr": ("LOFR", ["model=lofr"]), "baseline": ("Baseline", ["model=baseline"]),
          "cam": ("plain CAM", ["model=cam"]),
          "sup": ("Sup-only", ["model=sup-only", "loss.mse=1.0", "data.labelled_fraction=1.0"])}
LONG_SET = ["optim.epochs=24", "data.cache_views=4"]  # measured to fit 60 min on 2 busy cores (README)


def time_steps(cfg, cached: bool, steps: int, warmup: int = 3) -> dict:
    """Milliseconds per optimiser step (forward, backward, AdamW) of ``cfg``'s model on one batch,
    repeated: from the cache's maps (``cached``) or from images through the whole backbone."""
    from lofr.engine.feature_cache import training_cache
    from lofr.engine.models import build_model, loss_weights, param_groups
    from lofr.engine.sampling import SeededSamples, build_datasets
    from lofr.engine.trainer import train_step
    from lofr.data.topdown import collate
    from lofr.models.losses import LOFRCriterion

    train_ds, val_ds = build_datasets(cfg)
    model = build_model(cfg, train_ds.schema.num_keypoints)
    b = cfg.optim.batch_size
    if cached:
        samples, _ = training_cache(cfg, model, train_ds, val_ds, "cpu", "off", True, False, False)
    else:
        samples = SeededSamples(train_ds, cfg.seed)
    batch = collate([samples[(0, i)] for i in range(b)])
    opt = torch.optim.AdamW(param_groups(model, cfg.optim), lr=cfg.optim.lr)
    crit = LOFRCriterion(loss_weights(cfg, model))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    model.train()
    for _ in range(warmup):
        train_step(model, crit, opt, scaler, batch, torch.device("cpu"), "off", cfg.optim.grad_clip)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, crit, opt, scaler, batch, torch.device("cpu"), "off", cfg.optim.grad_clip)
    ms = (time.perf_counter() - t0) / steps * 1000
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"ms_per_step": round(ms, 1), "images_per_s": round(b * 1000 / ms, 1), "batch": b,
            "trainable_params_m": round(trainable / 1e6, 3)}


def cache_info(cfg) -> dict:
    """The synth-cpu cache (built when missing): views, crops, GiB, build seconds."""
    from lofr.engine.feature_cache import training_cache
    from lofr.engine.models import build_model
    from lofr.engine.sampling import build_datasets

    train_ds, val_ds = build_datasets(cfg)
    samples, _ = training_cache(cfg, build_model(cfg, 17), train_ds, val_ds, "cpu", "off", True, False, True)
    c = samples.cache
    return {"folder": str(c.folder), "views": c.views, "train_crops": c.meta["n_train"], "eval_crops": c.meta["n_val"],
            "gib": round(c.nbytes() / 2**30, 3), "build_s": round(c.build_seconds(), 1), "strides": list(c.strides)}


def long_run(args, common: list[str]) -> dict:
    """Sup-only with ``--long-set`` (default: 24 epochs over 4 cached views): AP after each epoch."""
    from lofr.engine.config import load_config
    from lofr.engine.trainer import train

    cfg = load_config(args.config, [*common, *MODELS["sup"][1], *args.long_set, "seed=0"])
    t0 = time.perf_counter()
    res = train(cfg, Path(args.runs_dir) / "long", overwrite=True, progress=not args.quiet)
    wall = time.perf_counter() - t0
    curve = [{"epoch": r["epoch"] + 1, "time_s": r["time_s"], **{k: r["val"][k] for k in ("AP", "PCK@0.1", "PCK@0.2")}}
             for r in res["history"]]
    return {"overrides": list(args.long_set), "wall_s": round(wall, 1), "curve": curve,
            "final": curve[-1], "best_AP": max(c["AP"] for c in curve)}


def supervised_rows(results: Path) -> list[list]:
    rows = []
    claim = results / "synth_claim.json"
    if claim.is_file():
        c = json.loads(claim.read_text())
        if "sup" in c["rows"]:
            m, s = c["rows"]["sup"], c["std"].get("sup", {})
            t = c["timing"].get("sup", {})
            rows.append([f"synth-cpu budget (seeds {c['seeds']})", *(format_cell(m[k], s.get(k, float('nan')),
                         1 if k == "px err" else 3) for k in ("AP", "PCK@0.1", "PCK@0.2", "px err")),
                         f"{t.get('train_s', '')}"])
    long = results / "testbed_long.json"
    if long.is_file():
        lg = json.loads(long.read_text())
        f = lg["final"]
        rows.append([f"long: {' '.join(lg['overrides'])} (seed 0)", f"{f['AP']:.3f}", f"{f['PCK@0.1']:.3f}",
                     f"{f['PCK@0.2']:.3f}", "", f"{lg['wall_s']:.0f}"])
    return rows


TESTBED_COMMIT = "c952c39"  # synth-cpu became the Lite0 testbed here: tables from before measured another one


def _on_this_testbed(commit: str) -> bool:
    """Whether a results file's commit descends from TESTBED_COMMIT (True when git cannot tell: no repo)."""
    commit = commit.split("+")[0]
    try:
        r = subprocess.run(["git", "merge-base", "--is-ancestor", TESTBED_COMMIT, commit], cwd=Path(__file__).parent,
                           capture_output=True)
    except OSError:
        return True
    return r.returncode != 1  # 0: descends; 1: does not; other: unknown commit / no repo -> trust it


def fraction_rows(results: Path) -> tuple[list[list], str]:
    t4 = results / "table4_semi_weak.json"
    if not t4.is_file():
        return [], "(no table4_semi_weak.json yet: run benchmarks/table4_semi_weak.py --seeds 0 1 2)"
    t = json.loads(t4.read_text())
    if not _on_this_testbed(t.get("commit", "")):
        return [], (f"table4_semi_weak.json is from commit {t.get('commit', '?')[:10]} ({t.get('command')}), before "
                    f"synth-cpu became the Lite0 testbed (commit {TESTBED_COMMIT}): not used; rerun "
                    "benchmarks/table4_semi_weak.py --methods sup --seeds 0 1 2 --fractions 0.05 0.25 1.0")
    sup = [(f, t["rows"][f"sup-{100 * f:g}"]) for f in t["fractions"] if f"sup-{100 * f:g}" in t["rows"]]
    rows = [[f"{100 * f:g} %", format_cell(r["mean"]["PCK@0.1"], r["std"]["PCK@0.1"]),
             format_cell(r["mean"]["PCK@0.2"], r["std"]["PCK@0.2"]), format_cell(r["mean"]["AP"], r["std"]["AP"])]
            for f, r in sup]
    verdicts = []
    for (f0, a), (f1, b) in zip(sup, sup[1:]):
        gain = b["mean"]["PCK@0.1"] - a["mean"]["PCK@0.1"]
        spread = (a["std"]["PCK@0.1"] or 0) + (b["std"]["PCK@0.1"] or 0)
        verdicts.append(f"{100 * f0:g} -> {100 * f1:g} %: PCK@0.1 {gain:+.3f} vs spread {spread:.3f} "
                        f"({'resolved' if gain > spread else 'NOT resolved'})")
    return rows, "; ".join(verdicts)


def main(argv=None) -> dict:
    p = training_parser(__doc__, "testbed")
    p.add_argument("--long", action="store_true", help="also run Sup-only's long schedule (--long-set)")
    p.add_argument("--long-set", nargs="*", default=LONG_SET, help=f"the long run's overrides (default {LONG_SET})")
    p.add_argument("--steps", type=int, default=20, help="timed steps per model (default 20)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    t_start, common = begin(args)
    from lofr.engine.config import load_config

    results = Path(args.results_dir)
    steps = 2 if args.quick else args.steps
    cost = {}
    for key, (label, extra) in MODELS.items():
        cfg = load_config(args.config, [*common, *extra])
        cost[key] = {"cached": time_steps(cfg, True, steps), "images": time_steps(cfg, False, max(2, steps // 4))}
        print(f"{label}: {cost[key]}", file=sys.stderr, flush=True)
    cache = cache_info(load_config(args.config, common))
    long = None
    if args.long:
        long = long_run(args, common)
        (results / "testbed_long.json").write_text(json.dumps(long, indent=1))

    sup_rows = supervised_rows(results)
    frac_rows, verdict = fraction_rows(results)
    cost_rows = [[MODELS[k][0], f"{c['cached']['ms_per_step']:.0f}", f"{c['cached']['images_per_s']:.0f}",
                  f"{c['images']['ms_per_step']:.0f}", f"{c['images']['images_per_s']:.0f}",
                  f"{c['cached']['trainable_params_m']:.2f}"] for k, c in cost.items()]
    parts = [
        "**Supervised reference** (Sup-only, every location; SynthPose val, flip test)\n\n"
        + (markdown_table(["run", "OKS AP", "PCK@0.1", "PCK@0.2", "px err", "train s"], sup_rows) if sup_rows
           else "(no synth_claim.json / testbed_long.json yet)"),
        "**Sup-only vs label fraction** (equal optimiser steps; table4_semi_weak.json)\n\n"
        + (markdown_table(["labels", "PCK@0.1", "PCK@0.2", "OKS AP"], frac_rows) if frac_rows else "") + f"\n\n{verdict}",
        f"**Cost per training step** (batch {cfg.optim.batch_size}, 1 torch thread, this machine)\n\n"
        + markdown_table(["model", "ms/step cached", "img/s cached", "ms/step images", "img/s images",
                          "trainable M"], cost_rows),
        f"**Cache**: {cache['views']} views x {cache['train_crops']} training crops + {cache['eval_crops']} eval crops "
        f"(and mirrors), strides {cache['strides']}, {cache['gib']} GiB float16, built in {cache['build_s']:.0f} s.",
    ]
    if long:
        curve = " ".join(f"{c['AP']:.3f}" for c in long["curve"])
        parts.append(f"**Long run** ({' '.join(long['overrides'])}): OKS AP per epoch {curve}; {long['wall_s']:.0f} s.")
    return finish("testbed", "The synth-cpu testbed", "benchmarks/testbed.py", argv, args, t_start, "\n\n".join(parts),
                  trained=False, cost=cost, cache=cache, long=long, overrides=common)


if __name__ == "__main__":
    main()
