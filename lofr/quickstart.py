"""``lofr quickstart``: the main job on the embedded default.

1. generate SynthPose into ``data/synthpose`` unless it is already there (cached);
2. print its statistics and the per-keypoint presence table (the image-level labels' balance);
3. run the real evaluator (pycocotools' COCOeval + PCK + pixel error) on two reference
   predictors over the validation crops: the ground truth sent through the top-down crop and
   back (a check of the whole pipeline: it must score AP 1.0, PCK 1.0, 0 px) and the mean-pose
   prior (every joint at its mean crop position over the training set: the floor any model must
   beat before its AP means anything);
4. train the ``synth-cpu`` testbed twice — LOFR and the paper's baseline, image-level labels only,
   on the ImageNet EfficientNet-Lite0 whose frozen part's maps are cached first (2 augmented views of
   every training crop, ~2-3 min the first time, reused afterwards: ``lofr.engine.feature_cache``),
   with progress bars — into ``runs/quickstart/{lofr,baseline}`` and print ONE table: OKS AP / AR,
   PCK@0.1 / PCK@0.2 and mean pixel error of LOFR, the baseline and LOFR's own CAM arg-max, then the
   mean-pose prior and the ground-truth check (ground-truth boxes, flip test), plus the training
   images/s and wall time.

``lofr quickstart --best`` also trains ``synth-cpu-best`` (the best location-free recipe: 3 LOFR teachers, then a
heatmap student on their most confident keypoints, ``lofr.selftrain``; ~40 more minutes: 39 on one core) into
``runs/quickstart/best`` and adds its row. ``lofr quickstart --no-train`` stops after step 3; ``--set key=value`` overrides the training config
(e.g. ``optim.epochs=2`` for a shorter run).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from lofr.data import synth
from lofr.data.topdown import TopDownDataset, mean_pose_prior
from lofr.data.transforms import affine_points, crop_to_image, get_affine_transform
from lofr.eval import evaluate_keypoints, format_per_joint, format_report, mean_pose_records

def _datasets(root, input_size):
    ann, img = root / "annotations", root
    train = TopDownDataset(ann / "person_keypoints_train2017.json", img / "train2017", "coco", input_size)
    val = TopDownDataset(ann / "person_keypoints_val2017.json", img / "val2017", "coco", input_size)
    return train, val


def ground_truth_records(dataset: TopDownDataset) -> list[dict]:
    """Ground-truth keypoints taken from each eval crop (crop coordinates) and mapped back to the
    image with the inverse affine: what a perfect model's ``predict()`` would give."""
    records = []
    for i in range(len(dataset)):
        p = dataset.crop_params(i)
        rec = dataset.records[i]
        crop_kp = affine_points(rec.keypoints[:, :2], get_affine_transform(p.center, p.scale, p.rotation,
                                                                            dataset.input_size))
        img_kp = crop_to_image(crop_kp, p.center, p.scale, p.rotation, dataset.input_size)
        records.append({"image_id": rec.image_id, "ann_id": rec.ann_id, "keypoints": img_kp,
                        "scores": np.ones(dataset.schema.num_keypoints)})
    return records


TRAINED = (("lofr", "LOFR"), ("baseline", "Baseline"))
BEST = "synth-cpu-best (self-trained)"  # the best location-free recipe's row (--best)
# the rows of the main job's table: trained models first, then the prior and the ground-truth check
TABLE_ORDER = ("LOFR", BEST, "Baseline", "LOFR CAM arg-max", "mean-pose prior", "ground truth (crop and back)")
BEST_HINT = ("  not in this table: synth-cpu-best, the best location-free recipe (3 LOFR teachers, then a heatmap "
             "student on their confident keypoints), the one above the mean-pose prior; ~40 more minutes: "
             "`lofr quickstart --best`")


def train_and_compare(root, overrides=(), runs_dir="runs/quickstart", progress: bool = True,
                      config: str = "synth-cpu", best: bool = False) -> dict:
    """Train ``config`` as LOFR and as the baseline on the dataset at ``root`` and evaluate both (and
    LOFR's CAM arg-max) next to the mean-pose prior; ``best``: also ``synth-cpu-best`` (teacher and
    self-trained student, into ``runs_dir/best``; the overrides apply to its teacher).
    -> {row label: EvalReport}, plus "timing"."""
    from lofr.engine.config import load_config
    from lofr.engine.feature_cache import eval_crops
    from lofr.engine.trainer import build_datasets, evaluate, load_model, train

    reports, timing, val_ds, prior_pose = {}, {}, None, None
    for model, label in TRAINED:
        # evaluated once, at the end (the config's per-epoch curve cost 2-3 of the main job's minutes);
        # --set eval_every=1 brings the curve back
        cfg = load_config(config, [f"data.root={root}", "eval_every=0", *overrides, f"model={model}"])
        if val_ds is None:
            train_ds, val_ds = build_datasets(cfg)
            prior_pose = mean_pose_prior(train_ds)
        if progress:  # progress, like the bars: stderr (stdout holds the results)
            print(f"Training {label} ({config}: {cfg.optim.epochs} epochs of batch {cfg.optim.batch_size}, "
                  f"{cfg.data.input_size[0]}x{cfg.data.input_size[1]} crops) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = train(cfg, Path(runs_dir) / model, overwrite=True, progress=progress)
        wall = time.perf_counter() - t0
        net, _ = load_model(result["last"])
        crops = eval_crops(cfg, net, train_ds, val_ds)  # the cached eval crops when the config caches
        report = evaluate(net, crops, cfg.data.eval_batch_size, cfg.data.flip_test, prior_pose=prior_pose)
        reports[label] = report
        timing[label] = {"wall_s": wall, "steps": result["step"],
                         "images_per_s": result["step"] * cfg.optim.batch_size / max(wall, 1e-9)}
        if model == "lofr":
            reports["LOFR CAM arg-max"] = evaluate(net, crops, cfg.data.eval_batch_size, cfg.data.flip_test,
                                                   source="cam")
            reports["mean-pose prior"] = report.prior
    if best:
        cfg = load_config("synth-cpu-best", [f"data.root={root}", *overrides])
        if progress:
            print(f"Training {BEST} (synth-cpu-best: a LOFR teacher for {cfg.optim.epochs} epochs, its pseudo-labels, "
                  f"a {cfg.self_train.student} student) ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        result = train(cfg, Path(runs_dir) / "best", overwrite=True, progress=progress)
        wall = time.perf_counter() - t0
        net, scfg = load_model(result["last"])  # the student
        s_train, s_val = build_datasets(scfg)
        reports[BEST] = evaluate(net, eval_crops(scfg, net, s_train, s_val), scfg.data.eval_batch_size,
                                 scfg.data.flip_test, prior_pose=prior_pose)
        steps = sum(stage["step"] for stage in result["stages"])
        timing[BEST] = {"wall_s": wall, "steps": steps,
                        "images_per_s": steps * cfg.optim.batch_size / max(wall, 1e-9)}
    return {"reports": reports, "timing": timing}


def _has_dataset(root) -> bool:
    return root is not None and all((Path(root) / "annotations" / f"person_keypoints_{s}2017.json").is_file()
                                    for s in synth.SPLITS)


def quickstart(root=None, n_train: int = synth.DEFAULT_TRAIN, n_val: int = synth.DEFAULT_VAL,
               progress: bool = True, train: bool = True, overrides=(), runs_dir="runs/quickstart",
               best: bool = False) -> dict:
    """The main job (module docstring); ``train=False`` stops after the reference predictors; ``best`` also
    trains ``synth-cpu-best`` and adds its row.

    root: None = the embedded default in ``data/synthpose`` (generated, or regenerated when it was made
    with other parameters); a folder that already holds a dataset in the COCO layout (e.g. from
    ``lofr synth``) is used as it is; any other folder gets SynthPose with ``n_train`` / ``n_val``."""
    from lofr.engine.config import load_config

    # a bad --set fails now, not after the reference tables; the crops are the training config's
    testbed = load_config("synth-cpu", list(overrides) if train else [])
    input_size = tuple(testbed.data.input_size)
    if train:
        for model, _ in TRAINED:
            load_config("synth-cpu", [*overrides, f"model={model}"])
        if best:
            load_config("synth-cpu-best", list(overrides))
    if not _has_dataset(root):
        root = synth.ensure_synthpose(root, n_train=n_train, n_val=n_val, progress=progress)
    root = Path(root)
    print(f"SynthPose at {root}")
    train_ds, val = _datasets(root, input_size)  # not ``train``: that is the flag
    for name, ds in (("train", train_ds), ("val", val)):
        excluded = {k: v for k, v in ds.report.items() if k not in ("annotations", "kept") and v}
        print(f"  {name}: {len(ds.coco.getImgIds())} images, {ds.report['annotations']} person annotations, "
              f"{len(ds)} crops kept" + (f"; excluded / changed: {excluded}" if excluded else ""))
    print()
    print(synth.format_presence_table(train_ds.ann_file, title="Image-level labels of the training instances"))
    print()

    gt = ground_truth_records(val)
    prior_pose = mean_pose_prior(train_ds)
    crops = [val.crop_params(i) for i in range(len(val))]
    prior = mean_pose_records(prior_pose, [r.image_id for r in val.records], [r.ann_id for r in val.records],
                              [c.center for c in crops], [c.scale for c in crops], val.input_size)
    reports = {
        "ground truth (crop and back)": evaluate_keypoints(val.coco.dataset, gt, val.schema),
        "mean-pose prior": evaluate_keypoints(val.coco.dataset, prior, val.schema),
    }
    print(f"Validation, {len(val)} persons, {input_size[0]}x{input_size[1]} crops "
          "(OKS AP from pycocotools' COCOeval; PCK of the box diagonal):")
    print(format_report(reports))
    print()
    print("Mean-pose prior per joint:")
    print(format_per_joint(reports["mean-pose prior"], val.schema))
    if not train:
        return reports

    print()
    threads = torch.get_num_threads()
    # from images: 1 torch thread + 1 loader process doing the augmentation was fastest on 2 cores; from the
    # feature cache the loader only reads memory maps, so the heads (and the cache build) get both cores
    torch.set_num_threads(min(2, os.cpu_count() or 1) if testbed.data.cache_views > 0 else 1)
    try:
        t0 = time.perf_counter()
        trained = train_and_compare(root, overrides, runs_dir, progress, best=best)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    # one fixed order: the trained models, then the references (the prior, the pipeline check)
    rows = {**trained["reports"], "ground truth (crop and back)": reports["ground truth (crop and back)"]}
    rows = {label: rows[label] for label in TABLE_ORDER if label in rows}
    print()
    print(f"SynthPose val, {len(val)} persons, ground-truth boxes, flip test; trained on image-level labels only:")
    print(format_report(rows))
    for label, t in trained["timing"].items():
        print(f"  {label}: {t['steps']} steps in {t['wall_s']:.0f} s ({t['images_per_s']:.0f} training images/s)")
    folders = "lofr,baseline,best" if best else "lofr,baseline"
    print(f"  total {wall / 60:.1f} min; checkpoints in {runs_dir}/{{{folders}}}/last.pt "
          f"(`lofr eval --checkpoint ...`, `lofr predict IMAGE --checkpoint ...`)")
    if not best:
        print(BEST_HINT)
    return {**reports, **rows, "timing": trained["timing"]}
