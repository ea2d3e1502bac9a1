"""Learning curves of the location-free models in the cheapest regime: budget-limited or mechanism-limited?

Every model trained from image-level labels on the synth-cpu testbed stopped at ~1-2 k steps below the
mean-pose prior. This benchmark trains each one much longer and asks whether it is still rising when it
stops (budget-limited) or flat below the prior (mechanism-limited at this budget).

The regime: ``arch.freeze_to=16`` — the whole ImageNet EfficientNet-Lite0 is frozen and its maps at strides
4 / 8 / 16 are cached for ``data.cache_views`` augmented views of every training instance
(``lofr.engine.feature_cache``), so a training step runs only the heads (synth-cpu freezes up to stride 8
and trains the stride-16 blocks). One constant learning rate after the warm-up (``optim.schedule=constant``,
the config's lr), so that one run evaluated at log-spaced steps is the curve: each point is the same run
stopped there (``max_steps``), resumed from its ``last.pt`` for the next point (a resumed run gives the
weights of an uninterrupted one, ``lofr.engine.trainer``). The synth-cpu budget is 1224 steps (6 epochs x 204).

Rows (``--rows``):
    cam-gap-s16   plain CAM (``model=cam``), the paper's GAP on the stride-16 map
    cam-lse-s8    plain CAM, log-sum-exp pooling (r = 5) on the stride-8 map
    cam-peak-s8   plain CAM, peak stimulation (PRM: the mean of the local maxima) on the stride-8 map
    baseline      the paper's DETR baseline (``model=baseline``)
    lofr          LOFR as synth-cpu configures it (presence from the decoder's queries, the paper's reading)
    lofr-part     LOFR with the decoder's presence read from the attention-pooled part features (``arch.dec_logits=part``)
    lofr-part-prior  lofr-part + the training poses' Gaussians on the cross-attention logits
                  (``arch.dec_prior_bias``: the maps start at the mean pose, fitted on locations without images)

Each point records PCK@0.1 / @0.2 / px error / AP on SynthPose val (the trainer's own evaluation: cached eval
crops, flip test), PCK@0.1 per joint group, the mean-pose prior's on the same crops, and for LOFR rows also
LOFR's own CAM arg-max. Every run's points are kept in their own file,
``<results-dir>/<results-name>/<row>-seed<k>.json`` (default name ``learning_curves``), written after each point: a stopped benchmark started
again skips the points it has and resumes the run from ``<runs-dir>/<row>/seed<k>/last.pt`` (or retrains it
from step 0 to the next missing point when the run folder is gone). The table, its state (complete or which
points are missing) and the plot are rebuilt from those files every time.

    python benchmarks/learning_curves.py                              # every row, seed 0, out to 16x synth-cpu
    python benchmarks/learning_curves.py --rows lofr lofr-part --seeds 0 1 2
    python benchmarks/learning_curves.py --table-only                 # table + plot from the point files
    python benchmarks/learning_curves.py --quick                      # smoke run: 2 points of 1-2 steps
    python benchmarks/learning_curves.py --rows lofr-part --data-root data/synthpose-seed1-224x176 \\
        --results-name learning_curves_seed1 --runs-dir runs/learning_curves_seed1   # another SynthPose

Two processes may run disjoint ``--rows`` at once (one core each: ``--threads 1``, ``data.workers=0``).
Writes ``benchmarks/results/learning_curves.{json,md,png}``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (begin, finish, format_cell, git_commit, markdown_table, mean_std, training_parser,  # noqa: E402
                    write_json)

ROWS = {
    "cam-gap-s16": ("plain CAM, stride 16, GAP (paper)", ["model=cam", "arch.cam_stride=16", "arch.cam_pool=gap"]),
    "cam-lse-s8": ("plain CAM, stride 8, LSE r=5", ["model=cam", "arch.cam_stride=8", "arch.cam_pool=lse",
                                                    "arch.cam_lse_r=5"]),
    "cam-peak-s8": ("plain CAM, stride 8, peak stimulation", ["model=cam", "arch.cam_stride=8", "arch.cam_pool=peak"]),
    "baseline": ("baseline (DETR)", ["model=baseline"]),
    "lofr": ("LOFR (query logits, paper)", []),
    "lofr-part": ("LOFR, part logits", ["arch.dec_logits=part"]),
    "lofr-part-prior": ("LOFR, part logits + pose-prior attention", ["arch.dec_logits=part", "arch.dec_prior_bias=true"]),
}
SYNTH_CPU_STEPS = 1224  # synth-cpu: 6 epochs x 204 steps
STEPS = [153, 306, 612, 1224, 2448, 4896, 9792, 19584]  # log-spaced, x2: 1/8 .. 16x the synth-cpu budget
REGIME = ["arch.freeze_to=16", "data.cache_views=4", "optim.schedule=constant", "optim.epochs=1000",
          "eval_every=0", "data.workers=0"]
QUICK_STEPS = [1, 2]
GROUPS = ("face", "arms", "legs")
RISING = 0.01  # PCK@0.1 gained over the last doubling of steps that counts as "still rising"


_EVAL: dict = {}


def point_metrics(report) -> dict:
    s = report.summary()
    return {"PCK@0.1": report.pck[0.1], "PCK@0.2": report.pck[0.2], "px err": report.px_error,
            "AP": s.get("AP", float("nan")), **{f"{g} PCK@0.1": report.pck_per_group[0.1][g] for g in GROUPS}}


def run_curve(key: str, seed: int, steps: list[int], args, common: list[str], log=print) -> dict:
    """Train row ``key`` with ``seed`` to every step in ``steps`` that its point file lacks; -> the file's dict."""
    from lofr.data.topdown import mean_pose_prior
    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.evaluation import fit_pose_prior
    from lofr.engine.trainer import build_datasets, evaluate, load_model, train

    label, extra = ROWS[key]
    points_dir = Path(args.results_dir) / (args.results_name or "learning_curves")  # another dataset: another name
    points_dir.mkdir(parents=True, exist_ok=True)
    pfile = points_dir / f"{key}-seed{seed}.json"
    state = json.loads(pfile.read_text()) if pfile.is_file() else {}
    state.update(row=key, label=label, seed=seed, config=args.config, overrides=common + extra)
    state.setdefault("points", {})
    run = Path(args.runs_dir) / key / f"seed{seed}"
    todo = [m for m in steps if str(m) not in state["points"]]
    for m in todo:
        cfg = load_config(args.config, common + extra + [f"seed={seed}", f"max_steps={m}"])
        resume = (run / "last.pt").is_file()
        if resume:
            from lofr.engine.checkpoint import load_checkpoint

            done = int(load_checkpoint(run / "last.pt", map_location="cpu")["step"])
            if done > m:  # a run past this point (another row order): cannot go back; start afresh
                resume = False
        t0 = time.perf_counter()
        res = train(cfg, run, resume=resume, overwrite=not resume, progress=args.progress)
        train_s = time.perf_counter() - t0
        model, cfg = load_model(res["last"], "cpu")
        if "eval" not in _EVAL:  # every row shares the eval crops (the cache), the prior and the pose model
            train_ds, val_ds = build_datasets(cfg)
            pose_model = fit_pose_prior(train_ds)
            _EVAL["eval"] = (eval_crops(cfg, model, train_ds, val_ds), mean_pose_prior(train_ds), pose_model)
        crops, prior_pose, pose_model = _EVAL["eval"]
        t0 = time.perf_counter()
        report = evaluate(model, crops, cfg.data.eval_batch_size, cfg.data.flip_test, prior_pose=prior_pose)
        point = {"step": res["step"], "train_s": round(train_s, 1), **point_metrics(report)}
        bs, flip = cfg.data.eval_batch_size, cfg.data.flip_test
        point["pp"] = point_metrics(evaluate(model, crops, bs, flip, pose_prior=pose_model))
        if getattr(model, "cam_head", None) is not None and cfg.model == "lofr":
            point["cam"] = point_metrics(evaluate(model, crops, bs, flip, source="cam"))
            point["cam_pp"] = point_metrics(evaluate(model, crops, bs, flip, source="cam", pose_prior=pose_model))
        point["eval_s"] = round(time.perf_counter() - t0, 1)
        state["prior"] = point_metrics(report.prior)
        state["points"][str(m)] = point
        state["commit"] = git_commit()
        shutil.copyfile(res["last"], run / f"step{m}.pt")  # for later diagnostics (prior decoding)
        write_json(pfile, state)
        log(f"{label} seed {seed} step {m}: PCK@0.1 {point['PCK@0.1']:.3f} PCK@0.2 {point['PCK@0.2']:.3f} "
            f"px {point['px err']:.1f} | +pose prior {point['pp']['PCK@0.1']:.3f} / {point['pp']['PCK@0.2']:.3f}" + (f" | CAM {point['cam']['PCK@0.1']:.3f} / {point['cam']['PCK@0.2']:.3f}"
                                           if "cam" in point else "") + f"  ({train_s:.0f} s)", flush=True)
    return state


def load_points(results_dir: Path, name: str = "learning_curves") -> dict:
    """{row: {seed: state}} from every point file of ``<results_dir>/<name>/``."""
    out = {}
    for f in sorted((Path(results_dir) / name).glob("*-seed*.json")):
        s = json.loads(f.read_text())
        out.setdefault(s["row"], {})[int(s["seed"])] = s
    return out


def per_seed(states: dict, metric: str, source: str | None = None) -> dict:
    """{step: {seed: value}} of ``metric`` (``source``: "pp", "cam", "cam_pp" or None for the maps' arg-max)."""
    out = {}
    for seed, st in states.items():
        for m, p in st["points"].items():
            if source is None or source in p:
                out.setdefault(int(m), {})[seed] = (p[source] if source else p)[metric]
    return out


def curve(states: dict, metric: str, source: str | None = None) -> dict:
    """{step: (mean, std, n)} over the seeds that reached each step."""
    return {m: (*mean_std(list(v.values())), len(v)) for m, v in sorted(per_seed(states, metric, source).items())}


def verdict(c: dict, prior: float, c2: dict | None = None, prior2: float | None = None) -> str:
    """budget-limited / mechanism-limited from a PCK@0.1 curve {step: {seed: value}} and the prior's PCK@0.1
    (with the PCK@0.2 curve and its prior, "above the prior" needs both thresholds).

    Constant-lr curves are noisy, so the trend is smoothed over the last two doublings: gain = mean of the
    last two points minus mean of the two before, per seed (only the seeds that reached all four), averaged;
    the level is the last point's mean over the same seeds."""
    steps = sorted(c)
    if len(steps) < 4:
        return "too few points"
    last4 = steps[-4:]
    seeds = sorted(set.intersection(*(set(c[m]) for m in last4)))
    if not seeds:
        return "too few points (no seed reached the last four)"
    gain = sum((c[last4[2]][k] + c[last4[3]][k] - c[last4[0]][k] - c[last4[1]][k]) / 2 for k in seeds) / len(seeds)
    level = sum(c[last4[3]][k] for k in seeds) / len(seeds)
    level2 = sum(c2[last4[3]][k] for k in seeds) / len(seeds) if c2 is not None else None
    if level > prior and (c2 is None or level2 > prior2):
        return f"above the prior ({level:.3f} > {prior:.3f}" + (
            f"; {level2:.3f} > {prior2:.3f} at PCK@0.2)" if c2 is not None else ")")
    where = (f"{prior - level:.3f} below the prior" if level <= prior else
             f"above the prior at PCK@0.1, {prior2 - level2:.3f} below it at PCK@0.2")
    n = f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}"
    kind = "budget-limited" if gain >= RISING else "mechanism-limited"
    return f"{kind}: {gain:+.3f} over the last two doublings ({n}), {where}"


def build_table(data: dict, steps: list[int]) -> tuple[str, str, dict]:
    prior = next((s["prior"] for states in data.values() for s in states.values() if "prior" in s), None)
    headers = ["model", "seeds", *[f"{m}" for m in steps], "verdict (PCK@0.1)"]
    lines, verdicts, missing = [], {}, []
    order = [k for k in ROWS if k in data]
    for key in order:
        states = data[key]
        for metric in ("PCK@0.1", "PCK@0.2"):
            c = curve(states, metric)
            cells = [format_cell(*c[m][:2]) if m in c else "" for m in steps]
            v = verdict(per_seed(states, "PCK@0.1"), prior["PCK@0.1"], per_seed(states, "PCK@0.2"),
                        prior["PCK@0.2"]) if prior and metric == "PCK@0.1" else ""
            verdicts.setdefault(key, v) if v else None
            lines.append([f"{ROWS[key][0]} — {metric}", ",".join(map(str, sorted(states))), *cells, v])
        for source, what in (("pp", "+ pose-prior decoding"), ("cam", "its CAM arg-max"),
                             ("cam_pp", "its CAM + pose-prior decoding")):
            c1, c2 = curve(states, "PCK@0.1", source), curve(states, "PCK@0.2", source)
            if c1:
                lines.append([f"{ROWS[key][0]} {what} — PCK@0.1 / @0.2", "",
                              *[f"{c1[m][0]:.3f} / {c2[m][0]:.3f}" if m in c1 else "" for m in steps],
                              verdict(per_seed(states, "PCK@0.1", source), prior["PCK@0.1"],
                                      per_seed(states, "PCK@0.2", source), prior["PCK@0.2"]) if prior else ""])
        for seed, s in sorted(states.items()):
            lacking = [m for m in steps if str(m) not in s["points"]]
            if lacking:
                missing.append(f"{key} seed {seed}: steps {lacking}")
    if prior:
        lines.append(["mean-pose prior — PCK@0.1 / @0.2", "", *[f"{prior['PCK@0.1']:.3f} / {prior['PCK@0.2']:.3f}"]
                      * len(steps), ""])
    state = "complete" if not missing else "PARTIAL — missing: " + "; ".join(missing)
    return markdown_table(headers, lines), state, verdicts


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prior = next((s["prior"] for states in data.values() for s in states.values() if "prior" in s), None)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8), dpi=100, sharex=True)
    panels = [(metric, dec) for metric in ("PCK@0.1", "PCK@0.2") for dec in ("argmax", "pp")]
    for ax, (metric, dec) in zip(axes.flat, panels):
        for key in [k for k in ROWS if k in data]:
            c = curve(data[key], metric, None if dec == "argmax" else "pp")
            xs = sorted(c)
            ys = [c[m][0] for m in xs]
            sd = [0.0 if math.isnan(c[m][1]) else c[m][1] for m in xs]
            line, = ax.plot(xs, ys, "o-", ms=3, label=ROWS[key][0])
            ax.fill_between(xs, [y - s for y, s in zip(ys, sd)], [y + s for y, s in zip(ys, sd)],
                            color=line.get_color(), alpha=0.15)
            cam = curve(data[key], metric, "cam" if dec == "argmax" else "cam_pp")
            if cam:
                xs = sorted(cam)
                ax.plot(xs, [cam[m][0] for m in xs], "x:", ms=4, color=line.get_color(),
                        label=f"{ROWS[key][0]}: its CAM")
        if prior:
            ax.axhline(prior[metric], color="k", ls="--", lw=1, label="mean-pose prior")
        ax.axvline(SYNTH_CPU_STEPS, color="grey", ls=":", lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{metric}, " + ("each map's arg-max" if dec == "argmax" else "decoded with the pose prior"),
                     fontsize=10)
        ax.set_ylabel(f"{metric} on SynthPose val")
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("training steps (batch 32; dotted line: the synth-cpu budget)")
    axes[0, 0].legend(fontsize=7, loc="best")
    fig.suptitle("Image-level labels only, frozen Lite0 (cheapest regime), constant lr")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


NOTES = """\
Regime: `{regime}` on top of `{config}` — the whole Lite0 frozen and cached (4 augmented views; epoch e reads
view e mod 4), only the heads train, one constant lr ({lr}) after a 200-step warm-up. Columns = training steps at
batch 32; 1224 = the synth-cpu budget, 19584 = 16x. Each cell: mean ± std over the seeds that reached it.
Verdict (PCK@0.1): "budget-limited" = the mean of its last two points exceeds the mean of the two before by >= {rising}
(per seed, over the seeds that reached all four: constant-lr curves are noisy); "mechanism-limited" = it gained less
(flat) while below the prior; "above the prior" = above it at PCK@0.1 and PCK@0.2. A partial row's verdict is
provisional.

State: {state}
"""


def write_table(args, argv, t_start: float, steps: list[int]) -> dict:
    data = load_points(args.results_dir, args.results_name or "learning_curves")
    table, state, verdicts = build_table(data, steps)
    from lofr.engine.config import load_config

    lr = load_config(args.config, base_regime(args)).optim.lr
    notes = NOTES.format(regime=" ".join(REGIME), config=args.config, lr=lr, rising=RISING, state=state)
    if data:
        plot(data, Path(args.results_dir) / f"{args.results_name or 'learning_curves'}.png")
    seeds = sorted({s for states in data.values() for s in states})
    args.seeds = seeds or args.seeds
    return finish("learning_curves", "Learning curves from image-level labels (cheapest regime)",
                  "benchmarks/learning_curves.py", argv, args, t_start, table, notes, state=state,
                  verdicts=verdicts, steps=steps, regime=REGIME,
                  runs={k: {str(s): v for s, v in st.items()} for k, st in data.items()})


def base_regime(args) -> list[str]:
    return REGIME + (["optim.batch_size=8", "optim.warmup_steps=1", "data.eval_batch_size=16"]
                     if args.quick else []) + list(args.set) + ([f"data.root={args.data_root}"] if args.data_root else [])


def main(argv=None) -> dict:
    p = training_parser(__doc__, "learning_curves")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    p.add_argument("--steps", nargs="+", type=int, default=None, help=f"curve points (default {STEPS})")
    p.add_argument("--progress", action="store_true", help="progress bars of each training segment")
    args = p.parse_args(argv)
    steps = args.steps or (QUICK_STEPS if args.quick else STEPS)
    t_start, _ = begin(args)
    common = base_regime(args)
    if not args.table_only:  # breadth first: every row reaches a point before any goes on to the next
        for m in steps:
            for key in args.rows:
                for seed in args.seeds:
                    run_curve(key, seed, [s for s in steps if s <= m], args, common)
    return write_table(args, argv, t_start, steps)


if __name__ == "__main__":
    main()
