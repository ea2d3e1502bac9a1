"""Self-training on a weak teacher's confident peaks (``lofr.selftrain``) against the mean-pose prior.

Per row and seed, three stages, each resumable (the row ``prior`` is ``lofr train --config synth-cpu-best``:
its ``self_train`` section chains the same three, ``tests/test_selftrain.py`` checks the configs are these):

    teacher   ``lofr train --config synth-cpu-part`` + the row's teacher overrides (image-level labels only)
    pseudo    ``lofr pseudo-label``: the teacher's keypoints on the un-augmented training crops, per joint the
              top ``--top`` fraction by score among the instances labelled present (the rest: no location)
    student   ``lofr train --config synth-cpu model=sup-only data.labelled_fraction=1.0 loss.mse=1.0
              data.train_ann=<pseudo>``: the testbed's Sup-only trained on the pseudo-locations

Rows (``--rows``): ``prior`` (teacher = synth-cpu-part + pose-prior attention, ``arch.dec_prior_bias``),
``prior-strict`` (the same teacher under the strict label rule, ``data.labels=annotation``), ``prior-2x`` (``prior``
with twice the epochs for teacher and student: on a set with half the images, the same number of steps),
``prior-ens3`` (``prior`` with 3 teachers of seeds s, s + 1000, s + 2000 whose keypoints and scores are averaged:
``self_train.teachers: 3``; the teacher column is their mean), ``prior-strict-ens3`` (the same under the
strict label rule). Nothing in the
three stages reads an annotated keypoint's position; the table's "pseudo PCK" column does (the kept
pseudo-locations against the hidden truth, a diagnostic). Each cell is the project's evaluation (SynthPose val
or ``--data-root``'s val, flip test), with the mean-pose prior on the same crops and the share of the supervised
gain (Sup-only of ``synth_claim.json``, SynthPose val only).

Stopped and started again it resumes: a finished (row, seed) is kept in ``results/runs/<results-name>/``;
otherwise each stage continues from what its folder holds (``--runs-dir/<row>/seed<k>/{teacher,teacher2,..,student}``:
``last.pt``, ``pseudo_train.json``).

    python benchmarks/self_training.py --seeds 0 1 2                 # ~15 min per seed on one core
    python benchmarks/self_training.py --rows prior --seeds 0 1 2 --data-root data/synthpose-seed1-224x176 \\
        --results-name self_training_synth2 --runs-dir runs/self_training_synth2

Writes ``benchmarks/results/self_training.{json,md}``.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from best_recipe import supervised  # noqa: E402
from common import (METRICS, begin, finish, format_cell, git_commit, kept_dir, markdown_table, mean_std,  # noqa: E402
                    metrics_of, state_note, train_or_resume, training_parser, write_json)

ROWS = {
    "prior": ("synth-cpu-best: teacher synth-cpu-part + pose-prior attention -> Sup-only student",
              ["arch.dec_prior_bias=true"]),
    "prior-strict": ("the same, teacher under the strict label rule", ["arch.dec_prior_bias=true",
                                                                       "data.labels=annotation",
                                                                       "data.aug.half_body_prob=0"]),
    "prior-2x": ("the same, twice the epochs for teacher and student", ["arch.dec_prior_bias=true", "optim.epochs=12"]),
    "prior-ens3": ("the same, 3 teachers (seeds s, s + 1000, s + 2000) label together", ["arch.dec_prior_bias=true"]),
    "prior-strict-ens3": ("3 teachers under the strict label rule", ["arch.dec_prior_bias=true", "data.labels=annotation",
                                                                     "data.aug.half_body_prob=0"]),
}
# rows with an ensemble of teachers (lofr.selftrain: self_train.teachers): their number
TEACHERS = {"prior-ens3": 3, "prior-strict-ens3": 3}
STUDENT = ["model=sup-only", "data.labelled_fraction=1.0", "loss.mse=1.0"]
# rows whose student differs from STUDENT: their extra overrides
STUDENT_EXTRA = {"prior-2x": ["optim.epochs=12"]}


def pseudo_accuracy(pseudo: dict, truth_file: Path) -> dict:
    """PCK@0.1 / @0.2 (box diagonal) of the kept pseudo-locations against the annotated ones: a diagnostic
    (the only place the benchmark reads a true location)."""
    truth = {a["id"]: a for a in json.loads(Path(truth_file).read_text())["annotations"]}
    d = []
    for a in pseudo["annotations"]:
        p = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
        t = truth[a["id"]]
        g = np.asarray(t["keypoints"], dtype=float).reshape(-1, 3)
        k = p[:, 2] > 0
        d += list(np.linalg.norm(p[k, :2] - g[k, :2], axis=1) / np.hypot(t["bbox"][2], t["bbox"][3]))
    d = np.asarray(d)
    return {"PCK@0.1": float((d < 0.1).mean()) if len(d) else float("nan"),
            "PCK@0.2": float((d < 0.2).mean()) if len(d) else float("nan")}


def run_seed(key: str, seed: int, args, common: list[str], log=print) -> dict:
    """The three stages of one (row, seed) and their evaluation -> the kept record's body."""
    from lofr.data.topdown import mean_pose_prior
    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.trainer import build_datasets, evaluate, load_model
    from lofr.eval.coco import write_results
    from lofr.selftrain import TEACHER_SEED_STEP, pseudo_label, teacher_folder, training_crops

    folder = Path(args.runs_dir) / key / f"seed{seed}"
    timing = {}
    t0 = time.perf_counter()
    teachers = []
    for k in range(TEACHERS.get(key, 1)):  # teacher k: seed + 1000 k (as teacher_config), in folder/teacher, teacher2, ...
        tcfg = load_config("synth-cpu-part", common + ROWS[key][1] + [f"seed={seed + TEACHER_SEED_STEP * k}"])
        res = train_or_resume(tcfg, teacher_folder(folder, k), args.fresh)
        teachers.append(load_model(res["last"]))
    teacher, tcfg = teachers[0]
    timing["teacher_s"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    pseudo_file = folder / "pseudo_train.json"
    train_ds, val_ds = build_datasets(tcfg)
    truth_file = train_ds.ann_file
    if args.fresh or not pseudo_file.is_file():
        ann, _ = pseudo_label([m for m, _ in teachers], training_crops(tcfg), args.top, tcfg.data.eval_batch_size,
                              tcfg.data.flip_test, gate=args.gate)
        write_results(pseudo_file, ann)  # its "lofr_pseudo_label": the counts, gate and source
    pseudo = json.loads(pseudo_file.read_text())
    stats = pseudo.get("lofr_pseudo_label", {})
    timing["pseudo_s"] = round(time.perf_counter() - t0, 1)

    prior_pose = mean_pose_prior(train_ds)
    reports = [evaluate(m, eval_crops(c, m, train_ds, val_ds), c.data.eval_batch_size, c.data.flip_test,
                        prior_pose=prior_pose) for m, c in teachers]
    teacher_report = reports[0]

    t0 = time.perf_counter()
    scfg = load_config("synth-cpu", common + STUDENT + STUDENT_EXTRA.get(key, []) +
                       [f"data.train_ann={pseudo_file.resolve()}", f"seed={seed}"])
    res = train_or_resume(scfg, folder / "student", args.fresh)
    student, scfg = load_model(res["last"])
    timing.update(student_s=round(time.perf_counter() - t0, 1), student_steps=res["step"])
    s_train, s_val = build_datasets(scfg)
    s_crops = eval_crops(scfg, student, s_train, s_val)
    student_report = evaluate(student, s_crops, scfg.data.eval_batch_size, scfg.data.flip_test)
    each = [metrics_of(r) for r in reports]  # an ensemble's teacher column: the mean of its teachers
    out = {"teacher": {m: float(np.mean([e[m] for e in each])) for m in each[0]}, "student": metrics_of(student_report),
           "prior": metrics_of(teacher_report.prior), "pseudo": {**stats, **pseudo_accuracy(pseudo, truth_file)},
           "timing": timing, "student_pose_prior": decode_with_pose_prior(student, scfg, s_crops, train_ds)}
    s = out["student"]
    log(f"{ROWS[key][0]} (seed {seed}): student PCK@0.1 {s['PCK@0.1']:.3f}  PCK@0.2 {s['PCK@0.2']:.3f}  "
        f"px err {s['px err']:.1f}; teacher {out['teacher']['PCK@0.1']:.3f} / {out['teacher']['PCK@0.2']:.3f}; "
        f"prior {out['prior']['PCK@0.1']:.3f} / {out['prior']['PCK@0.2']:.3f}  {timing}", flush=True)
    return out


def decode_with_pose_prior(student, scfg, crops, poses) -> dict:
    """``student`` on its val ``crops`` decoded jointly with a pose model of the training set ``poses``
    (``decode=pose_prior``, ``lofr.eval.pose_prior``: the locations of the ORIGINAL training annotations, without
    their images — the information the mean-pose prior uses; not the student's pseudo-labels)."""
    from lofr.engine.trainer import evaluate, pose_prior_for

    scfg = copy.deepcopy(scfg)
    scfg.decode = "pose_prior"
    return metrics_of(evaluate(student, crops, scfg.data.eval_batch_size, scfg.data.flip_test,
                               pose_prior=pose_prior_for(scfg, poses)))


def student_pose_prior(key: str, seed: int, args, common: list[str]) -> dict:
    """:func:`decode_with_pose_prior` for a kept (row, seed) from before that column: its student's ``last.pt``
    in --runs-dir, the teacher config's training set as the poses."""
    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.trainer import build_datasets, load_model

    student, scfg = load_model(Path(args.runs_dir) / key / f"seed{seed}" / "student" / "last.pt")
    poses = build_datasets(load_config("synth-cpu-part", common + ROWS[key][1] + [f"seed={seed}"]), val=False)[0]
    s_train, s_val = build_datasets(scfg)
    return decode_with_pose_prior(student, scfg, eval_crops(scfg, student, s_train, s_val), poses)


def decoded(runs: list[dict]) -> list[str]:
    """The pose-prior decoding columns: mean ± std over the runs that have it (``(n of m)`` when not all)."""
    have = [r["student_pose_prior"] for r in runs if r.get("student_pose_prior")]
    if not have:
        return ["", ""]
    note = "" if len(have) == len(runs) else f" ({len(have)} of {len(runs)})"
    return [format_cell(*mean_std([h[t] for h in have])) + note for t in ("PCK@0.1", "PCK@0.2")]


def format_table(rows: dict, sup: dict | None) -> str:
    headers = ["row", "seeds", "teacher PCK@0.1 / @0.2", "pseudo kept", "pseudo PCK@0.1 / @0.2 (vs truth)",
               "student PCK@0.1", "student PCK@0.2", "px err", "- prior @0.1", "- prior @0.2",
               "share of sup. gain @0.1", "share @0.2", "pose-prior decoding PCK@0.1", "PCK@0.2"]
    lines, prior = [], None
    for key, per_seed in rows.items():
        seeds = sorted(per_seed)
        runs = [per_seed[s] for s in seeds]
        prior = runs[0]["prior"]

        def ms(part, metric):
            return mean_std([r[part][metric] for r in runs])

        gap = {t: mean_std([r["student"][t] - r["prior"][t] for r in runs]) for t in ("PCK@0.1", "PCK@0.2")}
        share = {t: ((ms("student", t)[0] - prior[t]) / (sup[t] - prior[t]) if sup and sup[t] > prior[t] else float("nan"))
                 for t in ("PCK@0.1", "PCK@0.2")}
        teacher = f"{ms('teacher', 'PCK@0.1')[0]:.3f} / {ms('teacher', 'PCK@0.2')[0]:.3f}"
        kept = f"{np.mean([r['pseudo'].get('kept', float('nan')) for r in runs]):.0f} of " \
               f"{np.mean([r['pseudo'].get('present', float('nan')) for r in runs]):.0f}"
        pseudo = f"{ms('pseudo', 'PCK@0.1')[0]:.3f} / {ms('pseudo', 'PCK@0.2')[0]:.3f}"
        lines.append([ROWS[key][0], ",".join(map(str, seeds)), teacher, kept, pseudo,
                      format_cell(*ms("student", "PCK@0.1")), format_cell(*ms("student", "PCK@0.2")),
                      format_cell(*ms("student", "px err"), digits=1), format_cell(*gap["PCK@0.1"], sign=True),
                      format_cell(*gap["PCK@0.2"], sign=True), format_cell(share["PCK@0.1"], sign=True),
                      format_cell(share["PCK@0.2"], sign=True), *decoded(runs)])
    if prior is not None:
        lines.append(["mean-pose prior (no model)", "", "", "", "", f"{prior['PCK@0.1']:.3f}", f"{prior['PCK@0.2']:.3f}",
                      f"{prior['px err']:.1f}", "", "", "", "", "", ""])
    return markdown_table(headers, lines)


def main(argv=None) -> dict:
    p = training_parser(__doc__, "self_training")
    p.add_argument("--rows", nargs="+", default=["prior"], choices=list(ROWS))
    p.add_argument("--top", type=float, default=0.25, help="per joint, the fraction of present instances kept (0.25)")
    p.add_argument("--gate", type=float, default=0.0,
                   help="pose-plausibility gate of the pseudo-labels in standard deviations (lofr.selftrain.plausible; "
                        "0 = off)")
    args = p.parse_args(argv)
    if args.checkpoint_dir or args.config != "synth-cpu":
        p.error("self_training.py trains its own teacher (synth-cpu-part) and student (synth-cpu): "
                "no --checkpoint-dir / --config")
    args.results_name = args.results_name or "self_training"
    t_start, common = begin(args)
    kept = kept_dir(args)
    rows: dict[str, dict] = {}
    for key in args.rows:
        for seed in args.seeds:
            record_key = {"teacher": common + ROWS[key][1], "student": common + STUDENT + STUDENT_EXTRA.get(key, []),
                          "top": args.top, **({"gate": args.gate} if args.gate else {}),
                          **({"teachers": TEACHERS[key]} if key in TEACHERS else {})}
            kept_file = kept / f"{key}-seed{seed}.json"
            if not args.fresh and kept_file.is_file():
                done = json.loads(kept_file.read_text())
                if done.get("settings") == record_key:
                    if "student_pose_prior" not in done and not args.table_only:  # kept before that column
                        done["student_pose_prior"] = student_pose_prior(key, seed, args, common)
                        write_json(kept_file, done)
                    rows.setdefault(key, {})[seed] = done
                    print(f"{ROWS[key][0]} (seed {seed}): kept from {kept_file.name}", flush=True)
                    continue
            if args.table_only:
                print(f"{ROWS[key][0]} (seed {seed}): not run yet, left out (--table-only)", flush=True)
                continue
            out = run_seed(key, seed, args, common)
            kept.mkdir(parents=True, exist_ok=True)
            write_json(kept_file, {"row": key, "seed": seed, "settings": record_key, **out, "commit": git_commit()})
            rows.setdefault(key, {})[seed] = out
    if not rows:
        raise SystemExit(f"self_training: nothing run or kept in {kept}")
    sup = supervised(args.results_dir) if not args.data_root else None
    table = format_table(rows, sup)
    notes = ("Teacher: `lofr train --config synth-cpu-part` + the row's overrides (image-level labels only). Pseudo: "
             f"`lofr pseudo-label --top {args.top:g}{f' --gate {args.gate:g}' if args.gate else ''}` (lofr/selftrain.py). Student: `lofr train --config synth-cpu "
             "model=sup-only data.labelled_fraction=1.0 loss.mse=1.0 data.train_ann=<pseudo>`, instances with no kept "
             "joint left out by the dataset (so fewer steps than synth-cpu's 1224). \"pseudo PCK\": the kept "
             "pseudo-locations against the annotated ones (a diagnostic; nothing trains on it). \"- prior\": the "
             "student's PCK minus the mean-pose prior's on the same crops, mean ± std over seeds; share of the "
             "supervised gain: (PCK - PCK_prior) / (PCK_sup - PCK_prior), Sup-only from synth_claim.json (SynthPose val "
             "only).")
    state = state_note(rows, args.seeds, args.rows, args.table_only)
    notes += f"\n\n{state}" if state else ""
    metrics = {k: {str(s): v for s, v in r.items()} for k, r in rows.items()}
    return finish("self_training", "Self-training a heatmap student on a weak teacher's confident peaks",
                  "benchmarks/self_training.py", argv, args, t_start, table, notes=notes,
                  rows_per_seed=metrics, top=args.top, gate=args.gate, metrics=list(METRICS))


if __name__ == "__main__":
    main()
