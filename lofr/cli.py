"""``lofr`` command line: the scripts users run outside Jupyter.

    lofr synth OUT --train N --val M --seed S        write a SynthPose dataset in COCO layout
    lofr quickstart [--data ROOT]                     the main job on the embedded default
    lofr train --config NAME|YAML [key=value ...]     train (torchrun -m lofr.cli train ... for DDP)
    lofr eval --checkpoint CKPT [--flip-test] [--decode pose_prior]   metrics table + COCO results JSON
    lofr predict IMAGE --checkpoint CKPT [--box ...]  draw the skeleton on your own image
    lofr pseudo-label --checkpoint CKPT.. --out JSON  a weak model's confident keypoints as training annotations
    lofr data check ROOT --schema coco|mpii|crowdpose verify a dataset download

Results (tables, summaries) go to stdout; progress bars and log lines to stderr. Exit status: 0 ok;
2 a user error (``lofr.errors.LofrUserError``: a bad or missing file, annotation, config key or
value, checkpoint, ...), printed as one line ``lofr <command>: error: <what> (<file / id>)`` on
stderr (``--debug`` or ``LOFR_DEBUG=1`` adds the traceback), or a usage error from argparse; 1 an
unexpected error, with its traceback; ``lofr data check`` also exits 1 when its report lists
problems.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from lofr.errors import LofrUserError, UsageError


def _cmd_synth(args: argparse.Namespace) -> int:
    from lofr.data import synth

    kwargs = {}
    if args.image_size:
        kwargs["image_size"] = tuple(args.image_size)
    stats = synth.generate(args.out, n_train=args.train, n_val=args.val, seed=args.seed, workers=args.workers,
                           progress=not args.quiet, overwrite=args.overwrite, **kwargs)
    print(f"SynthPose written to {Path(args.out).resolve()} in {stats['wall_time_s']:.1f} s")
    for split in ("train", "val"):
        s = stats[split]
        print(f"\n{split}: {s['images']} images, {s['annotations']} person instances, "
              f"median box height {s['box_height_median']:.0f} px")
        print(synth.format_presence_table(s["presence"]))
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from lofr.quickstart import quickstart

    quickstart(root=args.data, progress=not args.quiet, train=not args.no_train, overrides=args.set,
               runs_dir=args.out, best=args.best)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from lofr.engine.config import load_config
    from lofr.engine.trainer import train

    cfg = load_config(args.config, _overrides(args))
    out = args.out or str(Path("runs") / cfg.name)
    result = train(cfg, out, resume=args.resume, progress=not args.quiet, overwrite=args.overwrite)
    if result.get("best"):
        print(f"best: {result['best']}")
    print(f"run folder: {result['out_dir']}")
    return 0


def _overrides(args: argparse.Namespace) -> list[str]:
    extra = list(args.overrides)
    if getattr(args, "data", None):
        extra.append(f"data.root={args.data}")
    return extra


def _cmd_eval(args: argparse.Namespace) -> int:
    from lofr.data.topdown import mean_pose_prior
    from lofr.engine.trainer import build_datasets, evaluate, load_model, pose_prior_for, prior_dataset
    from lofr.eval import format_per_joint, format_report

    model, cfg = load_model(args.checkpoint, device=args.device)
    if args.data:
        cfg.data.root = args.data
    if args.split == "train":  # evaluate on the training annotations, un-augmented
        cfg.data.val_ann, cfg.data.val_img = cfg.data.train_ann, cfg.data.train_img
    if args.decode:
        cfg.decode = args.decode
    _, val = build_datasets(cfg, train=False)
    train = build_datasets(cfg, val=False)[0] if args.prior or cfg.decode == "pose_prior" else None
    train = prior_dataset(cfg, train) if train is not None else None  # a student's: its teacher's training poses
    prior = mean_pose_prior(train) if args.prior else None
    pose_model = pose_prior_for(cfg, train) if train is not None else None  # cfg.decode = "pose_prior"
    flip = cfg.data.flip_test if args.flip_test is None else args.flip_test
    report = evaluate(model, val, cfg.data.eval_batch_size, flip, device=args.device, prior_pose=prior,
                      results_file=args.out, progress=not args.quiet, pose_prior=pose_model)
    rows = {cfg.name + (" (pose-prior decoding)" if pose_model is not None else ""): report}
    if report.prior is not None:
        rows["mean-pose prior"] = report.prior
    print(format_report(rows))
    print()
    print(format_per_joint(report, val.schema))
    if args.out:
        print(f"COCO results JSON (image coordinates): {args.out}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from lofr.engine.trainer import load_model
    from lofr.viz import plot_prediction, predict_image

    model, cfg = load_model(args.checkpoint, device=args.device)
    box = None
    if args.box:
        try:
            box = [float(v) for v in args.box.split(",")]
        except ValueError:
            raise UsageError(f"--box must be x,y,w,h (numbers), got {args.box!r}") from None
    pred = predict_image(model, args.image, tuple(cfg.data.input_size), cfg.data.schema, box, args.device)
    out = args.out or str(Path(args.image).with_suffix("")) + "_pose.png"
    plot_prediction(pred, out, thr=args.thr, responses=args.responses)
    for name, (x, y), s in zip(pred["schema"].keypoints, pred["keypoints"], pred["scores"]):
        print(f"{name:<16} x {x:8.1f}  y {y:8.1f}  score {s:.3f}")
    print(f"wrote {out}")
    return 0


def _cmd_pseudo_label(args: argparse.Namespace) -> int:
    from lofr.engine.trainer import load_model
    from lofr.eval.coco import write_results
    from lofr.selftrain import pseudo_label, training_crops

    if not 0.0 < args.top <= 1.0:
        raise UsageError(f"--top must be in (0, 1], got {args.top}")
    if args.gate < 0:
        raise UsageError(f"--gate must be >= 0 (0 = off), got {args.gate}")
    loaded = [load_model(c, device=args.device) for c in args.checkpoint]
    models, cfg = [m for m, _ in loaded], loaded[0][1]
    for c, (_, other) in zip(args.checkpoint[1:], loaded[1:]):  # as trained (before --data moves the root)
        if (other.data.root, other.data.train_ann, other.data.schema) != (cfg.data.root, cfg.data.train_ann, cfg.data.schema):
            raise UsageError(f"{c} was trained on {other.data.root}/{other.data.train_ann} ({other.data.schema}), "
                             f"{args.checkpoint[0]} on {cfg.data.root}/{cfg.data.train_ann} ({cfg.data.schema}): "
                             "an ensemble labels one dataset")
    if args.data:
        cfg.data.root = args.data
    crops = training_crops(cfg)  # un-augmented; a student's: the annotations its pseudo-labels came from
    ann, stats = pseudo_label(models, crops, args.top, cfg.data.eval_batch_size, cfg.data.flip_test,
                              device=args.device, progress=not args.quiet, gate=args.gate)
    write_results(args.out, ann)  # atomically, as any JSON
    who = "teacher's" if len(models) == 1 else f"{len(models)} teachers' mean"
    print(f"{stats['kept']} of {stats['present']} present joints kept (the top {args.top:g} per joint by the "
          f"{who} score) in {stats['instances']} instances of {crops.ann_file}")
    print(f"pseudo-labelled annotations: {args.out}  (train a student on them: data.train_ann={Path(args.out).resolve()})")
    return 0


DEBUG_HELP = "on a user error, also print the traceback (or set LOFR_DEBUG=1)"


def build_parser() -> argparse.ArgumentParser:
    from lofr import __version__

    p = argparse.ArgumentParser(prog="lofr", description="Location-Free Human Pose Estimation (Xu et al., CVPR 2022)")
    p.add_argument("--version", action="version", version=f"lofr {__version__}")
    p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = p.add_subparsers(dest="command", required=True)
    # also after the command (lofr eval ... --debug); SUPPRESS keeps a top-level --debug
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)

    s = sub.add_parser("synth", parents=[common], help="generate a SynthPose dataset in MS-COCO keypoint layout")
    s.add_argument("out", help="output folder (annotations/, train2017/, val2017/ are written inside)")
    s.add_argument("--train", type=int, default=None, help="training images (default: the embedded default size)")
    s.add_argument("--val", type=int, default=None, help="validation images")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=2, help="processes (the result does not depend on it)")
    s.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="scene size in pixels")
    s.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=_cmd_synth)

    q = sub.add_parser("quickstart", parents=[common], help="the main job on the embedded SynthPose default")
    q.add_argument("--data", default=None, help="a dataset in COCO layout, e.g. from `lofr synth` (default: SynthPose, "
                                                "generated into data/synthpose); an empty folder gets SynthPose")
    q.add_argument("--quiet", action="store_true")
    q.add_argument("--no-train", action="store_true", help="stop after the reference predictors")
    q.add_argument("--best", action="store_true",
                   help="also train synth-cpu-best (3 teachers + a self-trained student, ~40 more min) and add its row")
    q.add_argument("--out", default="runs/quickstart", help="where the two runs go (default runs/quickstart)")
    q.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the synth-cpu config")
    q.set_defaults(func=_cmd_quickstart)

    t = sub.add_parser("train", parents=[common],
                       help="train LOFR / the baseline / Sup-only (torchrun for several GPUs)",
                       description="Train from a shipped config (synth-cpu, coco-r50-256x192, ...) or a YAML file. "
                                   "Several GPUs: torchrun --nproc_per_node N -m lofr.cli train ...")
    t.add_argument("--config", default="synth-cpu", help="config name or YAML path (default: synth-cpu)")
    t.add_argument("--data", default=None, help="dataset root (overrides data.root)")
    t.add_argument("--out", default=None, help="run folder (default: runs/<config name>)")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    t.add_argument("--overwrite", action="store_true", help="replace a finished run in RUN_DIR")
    t.add_argument("--quiet", action="store_true")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.epochs=3 model=baseline")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", parents=[common],
                       help="evaluate a checkpoint: COCO / PCK(h) / CrowdPose metrics + results JSON")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="dataset root (default: the one in the checkpoint's config)")
    e.add_argument("--split", choices=("val", "train"), default="val")
    flip = e.add_mutually_exclusive_group()
    flip.add_argument("--flip-test", dest="flip_test", action="store_true", default=None)
    flip.add_argument("--no-flip-test", dest="flip_test", action="store_false")
    e.add_argument("--prior", action="store_true", help="also report the mean-pose prior (reads the training set)")
    e.add_argument("--decode", choices=["argmax", "pose_prior"], default=None,
                   help="keypoints from each map's arg-max, or jointly with a pose model of the training set's "
                        "locations (lofr.eval.pose_prior); default: the checkpoint's config")
    e.add_argument("--out", default=None, help="write the COCO results JSON here")
    e.add_argument("--device", default="cpu")
    e.add_argument("--quiet", action="store_true")
    e.set_defaults(func=_cmd_eval)

    pr = sub.add_parser("predict", parents=[common],
                        help="draw the predicted skeleton for one person in your own image")
    pr.add_argument("image")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--box", default=None, help="person box x,y,w,h in pixels (default: the whole image)")
    pr.add_argument("--out", default=None, help="PNG to write (default: IMAGE_pose.png)")
    pr.add_argument("--responses", action="store_true", help="also draw each joint's response map")
    pr.add_argument("--thr", type=float, default=0.0, help="hide joints scoring below this")
    pr.add_argument("--device", default="cpu")
    pr.set_defaults(func=_cmd_predict)

    pl = sub.add_parser("pseudo-label", parents=[common],
                        help="a weak model's most confident keypoints on the training crops, as a COCO annotation file")
    pl.add_argument("--checkpoint", required=True, nargs="+",
                    help="the teacher (any lofr checkpoint); several: an ensemble, their keypoints and scores averaged")
    pl.add_argument("--out", required=True, help="the annotation JSON to write")
    pl.add_argument("--top", type=float, default=0.25,
                    help="per joint, the fraction of present instances kept, by score (default 0.25)")
    pl.add_argument("--gate", type=float, default=0.0,
                    help="only keypoints within GATE standard deviations of their joint's mean training position "
                         "are candidates (a pose-plausibility gate; default 0 = off)")
    pl.add_argument("--data", default=None, help="dataset root (default: the one in the checkpoint's config)")
    pl.add_argument("--device", default="cpu")
    pl.add_argument("--quiet", action="store_true")
    pl.set_defaults(func=_cmd_pseudo_label)

    from lofr.data.check import add_data_check_arguments, cmd_data_check

    d = sub.add_parser("data", parents=[common], help="dataset tools")
    dsub = d.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", parents=[common],
                        help="verify a COCO / MPII / CrowdPose download (files, counts, a drawn sample)")
    add_data_check_arguments(c)
    c.set_defaults(func=cmd_data_check)
    return p


def _debug(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("LOFR_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """The ``lofr`` command (module docstring): returns the exit status."""
    args = build_parser().parse_args(argv)
    command = "lofr " + args.command + (f" {args.data_command}" if args.command == "data" else "")
    if args.command == "synth" and (args.train is None or args.val is None):
        from lofr.data import synth

        args.train = synth.DEFAULT_TRAIN if args.train is None else args.train
        args.val = synth.DEFAULT_VAL if args.val is None else args.val
    try:
        return args.func(args)
    except LofrUserError as e:
        if _debug(args):
            traceback.print_exc()
        print(f"{command}: error: {e.user_message()}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
