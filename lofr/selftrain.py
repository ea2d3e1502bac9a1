"""Self-training on a weak model's confident peaks (not in the paper; a lever of this project).

A model trained from image-level labels only (the *teacher*) predicts every training crop. For each joint
c, among the instances whose image-level label says c is present, the ``top_fraction`` with the highest
scores keep the teacher's keypoint as a pseudo-location (v = 2); every other joint gets v = 0 (no location:
ignored by the heatmap loss). A heatmap model (the *student*, ``model=sup-only``) is then trained on these
pseudo-locations like Sup-only on real ones. ``lofr train --config synth-cpu-best`` does all of it (its
``self_train`` section, :func:`self_train`); by hand, the same three stages are::

    lofr train --config synth-cpu-part arch.dec_prior_bias=true --out runs/teacher
    lofr pseudo-label --checkpoint runs/teacher/last.pt --out runs/teacher/pseudo_train.json
    lofr train --config synth-cpu model=sup-only data.labelled_fraction=1.0 loss.mse=1.0 \\
        data.train_ann=$PWD/runs/teacher/pseudo_train.json --out runs/student

Nothing here reads a ground-truth location: the crops come from the boxes (eval mode, no augmentation),
the presence of a joint from the image-level label (v > 0), the coordinates from the teacher
(``tests/test_selftrain.py`` checks that moving every annotated keypoint changes nothing). The
selection is per joint, so a joint the teacher finds less reliably (wrists) is not crowded out by the
face joints it is sure of. The score is the teacher's: presence probability x map concentration
(``lofr.engine.evaluation.predict_records``; a Sup-only teacher's: its heatmap peak).

A pseudo-label file records the annotation file it was made from (``lofr_pseudo_label.source``): the
mean-pose prior of a student's run is fitted on those poses (``lofr.engine.sampling.prior_dataset``), and a
student that teaches again labels the same crops with the same image-level labels.

Choices: ``top_fraction`` 0.25 (on SynthPose the kept quarter of the teacher's train predictions is
more accurate than the whole: see benchmarks/README.md); one round in ``synth-cpu-best``
(``self_train.rounds``: a student can teach again); the student's recipe is the synth-cpu testbed's Sup-only.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = ["select_confident", "plausible", "pseudo_label", "training_crops", "teacher_config", "teacher_folder",
           "student_config", "self_train"]


def select_confident(scores: np.ndarray, present: np.ndarray, top_fraction: float) -> np.ndarray:
    """scores, present (N, C) -> keep (N, C) bool: per joint c, the present instances whose score is at
    least the (1 - top_fraction) quantile of the present instances' scores (ties kept); never an absent
    one. top_fraction 1 keeps every present joint, 0 none."""
    if not 0.0 <= top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in [0, 1], got {top_fraction}")
    scores, present = np.asarray(scores, dtype=np.float64), np.asarray(present, dtype=bool)
    if scores.shape != present.shape or scores.ndim != 2:
        raise ValueError(f"scores and present must both be (N, C), got {scores.shape} and {present.shape}")
    keep = np.zeros_like(present)
    if top_fraction == 0.0:
        return keep
    for c in range(scores.shape[1]):
        p = present[:, c]
        if p.any():
            thr = np.quantile(scores[p, c], 1.0 - top_fraction)
            keep[:, c] = p & (scores[:, c] >= thr)
    return keep


def plausible(xy: np.ndarray, mean: np.ndarray, std: np.ndarray, max_z: float) -> np.ndarray:
    """xy (N, C, 2) keypoints in crop pixels, mean / std (C, 2) of each joint's position over the training
    poses (``lofr.data.topdown.location_prior``) -> (N, C) bool: the (diagonal) Mahalanobis distance
    sqrt(sum_axes ((xy - mean) / std)^2) is at most ``max_z``. A joint without statistics (NaN) is plausible
    anywhere; ``max_z`` <= 0 switches the gate off (all True)."""
    xy, mean, std = np.asarray(xy, dtype=np.float64), np.asarray(mean, dtype=np.float64), np.asarray(std, np.float64)
    if max_z <= 0:
        return np.ones(xy.shape[:2], dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.sqrt((((xy - mean) / std) ** 2).sum(-1))  # (N, C)
    return ~(z > max_z)  # NaN (no statistics) -> True


@torch.no_grad()
def pseudo_label(model, dataset, top_fraction: float = 0.25, batch_size: int = 128,
                 flip_test: bool = True, device=None, progress: bool = False, gate: float = 0.0) -> tuple[dict, dict]:
    """The teacher ``model``'s pseudo-locations for the eval-mode TopDownDataset ``dataset`` (the
    training annotations, un-augmented crops) -> (a copy of its COCO annotation dict with every
    annotation's ``keypoints`` / ``num_keypoints`` replaced, stats).

    model: one teacher, or a list of teachers (an ensemble): each predicts every crop and their keypoints
    (image coordinates) and scores are averaged per joint before the gate and the selection. Choice: the
    mean, not the median (3 SynthPose teachers: the kept mean keypoints 0.481 / 0.854 PCK@0.1 / @0.2 against
    the truth, the medians 0.471 / 0.854), and not the average of the maps (teachers' maps need not agree in
    scale).

    gate > 0: a pose-plausibility gate before the selection — a keypoint whose crop position is more than
    ``gate`` standard deviations (:func:`plausible`) from its joint's mean over the training poses
    (``location_prior`` of ``dataset``: locations without their images, what the mean-pose prior uses) is
    not a candidate; the top fraction is then taken among the plausible ones.

    Kept joints (:func:`select_confident` over the image-level labels) hold the teacher's keypoint in
    image coordinates with v = 2; the rest are 0, 0, 0. Annotations the dataset excluded (crowd, no
    labelled keypoint) or with no joint kept end with num_keypoints 0, which TopDownDataset excludes.
    stats: instances, teachers, present (joints labelled present), plausible, kept, top_fraction, gate, source (the annotation file
    read, absolute); the returned dict holds them under ``lofr_pseudo_label``."""
    from lofr.data.topdown import collate
    from lofr.engine.evaluation import predict_records

    if dataset.train:
        raise ValueError("pseudo_label needs an eval-mode dataset (train=False): the crops must not be augmented")
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    if not models:
        raise ValueError("pseudo_label needs at least one teacher")
    each = [predict_records(m, loader, flip_test=flip_test, device=device, progress=progress) for m in models]
    records = [{**rs[0], "keypoints": np.mean([r["keypoints"] for r in rs], axis=0),  # (C, 2) image coordinates
                "scores": np.mean([r["scores"] for r in rs], axis=0)}                 # (C,)
               for rs in zip(*each)]  # the same crops in the same order for every teacher
    ann = copy.deepcopy(json.loads(dataset.ann_file.read_text()))
    by_id = {a["id"]: a for a in ann["annotations"]}
    k = dataset.schema.num_keypoints
    scores = np.stack([r["scores"] for r in records]) if records else np.zeros((0, k))
    present = np.stack([np.asarray(by_id[r["ann_id"]]["keypoints"]).reshape(-1, 3)[:, 2] > 0 for r in records]) \
        if records else np.zeros((0, k), dtype=bool)
    candidates = present
    if gate > 0 and records:
        from lofr.data.topdown import location_prior
        from lofr.data.transforms import affine_points, crop_affine

        mean, std = location_prior(dataset)
        xy = np.stack([affine_points(r["keypoints"], crop_affine(rec.center, rec.scale, 0.0, dataset.input_size))
                       for r, rec in zip(records, dataset.records)])  # (N, C, 2) crop pixels, eval-mode crops
        candidates = present & plausible(xy, mean, std, gate)
    keep = select_confident(scores, candidates, top_fraction)
    predicted = {r["ann_id"]: (r["keypoints"], keep[i]) for i, r in enumerate(records)}
    for a in ann["annotations"]:
        new = np.zeros((k, 3))
        if a["id"] in predicted:
            xy, kp = predicted[a["id"]]
            new[kp, :2], new[kp, 2] = xy[kp], 2
        a["keypoints"] = [round(float(v), 2) for v in new.reshape(-1)]
        a["num_keypoints"] = int((new[:, 2] > 0).sum())
    stats = {"instances": len(records), "teachers": len(models), "present": int(present.sum()),
             "plausible": int(candidates.sum()),
             "kept": int(keep.sum()), "top_fraction": top_fraction, "gate": gate,
             "source": str(Path(dataset.ann_file).resolve())}
    ann["lofr_pseudo_label"] = stats
    return ann, stats


def training_crops(cfg):
    """The eval-mode (un-augmented) crops of ``cfg``'s training annotations, which a teacher labels: when
    those annotations are themselves pseudo-labels (a student teaching again), the file they were made from,
    so every round sees the same instances and image-level labels."""
    from lofr.engine.sampling import build_datasets, pseudo_source

    c = copy.deepcopy(cfg)
    c.data.val_ann, c.data.val_img = c.data.train_ann, c.data.train_img
    crops = build_datasets(c, train=False)[1]
    source = pseudo_source(crops)
    if source:
        c.data.val_ann = str(source)
        crops = build_datasets(c, train=False)[1]
    return crops


TEACHER_SEED_STEP = 1000  # teacher k of an ensemble trains with seed + 1000 k: apart from the next runs' seeds

# what a student takes from its teacher's config: the dataset and where the run executes (its loader
# workers, evaluation cadence and everything else are the student config's own)
CARRIED = ("seed", "device", "amp")
CARRIED_DATA = ("root", "train_img", "val_ann", "val_img", "schema", "synth_train", "synth_val")


def teacher_config(cfg, k: int = 0):
    """The config teacher ``k`` (0-based, of ``self_train.teachers``) trains with: ``cfg`` without its
    ``self_train`` section, seed ``cfg.seed + 1000 k`` (teacher 0 has the run's seed)."""
    from lofr.engine.config import SelfTrainConfig

    t = copy.deepcopy(cfg)
    t.self_train = SelfTrainConfig()
    t.seed = cfg.seed + TEACHER_SEED_STEP * k
    t.name = f"{cfg.name}-teacher" + (f"{k + 1}" if k else "")
    return t.check()


def teacher_folder(out_dir, k: int = 0) -> Path:
    """Where ``self_train`` keeps teacher ``k``: ``out_dir/teacher``, ``out_dir/teacher2``, ..."""
    return Path(out_dir) / ("teacher" + (f"{k + 1}" if k else ""))


def student_config(cfg, pseudo_file):
    """The config of a student of ``cfg``'s self-training: ``cfg.self_train.student`` with its ``student_set``
    overrides, the CARRIED / CARRIED_DATA fields of ``cfg`` and ``data.train_ann`` = ``pseudo_file`` (absolute)."""
    from lofr.config_utils import ConfigError
    from lofr.engine.config import load_config

    st = cfg.self_train
    s = load_config(st.student, list(st.student_set))
    if s.self_train.rounds:
        raise ConfigError(f"self_train.student {st.student!r} has a self_train section of its own (rounds "
                          f"{s.self_train.rounds}): use self_train.rounds for more rounds")
    for key in CARRIED:
        setattr(s, key, getattr(cfg, key))
    for key in CARRIED_DATA:
        setattr(s.data, key, copy.deepcopy(getattr(cfg.data, key)))
    s.data.train_ann = str(Path(pseudo_file).resolve())
    s.name = f"{cfg.name}-student"
    return s.check()


def _copy_atomic(src: Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def self_train(cfg, out_dir, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """``lofr train`` for a config with ``self_train.rounds`` = r > 0 (``trainer.train`` sends it here).

    Writes ``out_dir/teacher/`` (the teacher: ``teacher_config(cfg)``, a run folder like any; with
    ``self_train.teachers`` = n > 1 also ``out_dir/teacher2/`` ... ``teacher<n>/``, :func:`teacher_folder`), per round k
    ``out_dir/round<k>/pseudo_train.json`` (the previous model's pseudo-labels, :func:`pseudo_label`) and
    ``out_dir/round<k>/student/`` (``student_config``), then ``out_dir/last.pt`` = the last student's (what
    ``lofr eval`` / ``lofr predict`` read) and ``out_dir/self_train.json`` (steps, pseudo-label counts and
    final metrics of every stage). resume: each stage continues from its own ``last.pt`` (a finished one
    returns at once) and a written pseudo-label file is kept; overwrite: every stage starts afresh.
    Returns the last student's ``train`` result with ``out_dir`` / ``last`` of the whole run and ``stages``."""
    import yaml

    from lofr.engine.checkpoint import load_checkpoint
    from lofr.engine.config import config_dict
    from lofr.engine.trainer import load_model, train
    from lofr.errors import OutputExistsError
    from lofr.eval.coco import write_results
    from lofr.config_utils import ConfigError

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("self_train runs in one process (its pseudo-labelling is not distributed): train the "
                          "teacher with torchrun and self_train.rounds=0, then `lofr pseudo-label` and the student")
    out_dir = Path(out_dir)
    if not resume and not overwrite and (out_dir / "last.pt").exists():
        raise OutputExistsError(f"{out_dir} already holds a run (last.pt): pass resume=True (--resume) to continue "
                                "it or overwrite=True (--overwrite) to start again")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))

    def stage(c, folder: Path, label: str) -> dict:
        if progress:
            print(f"self-training: {label} -> {folder}", file=sys.stderr, flush=True)
        again = resume and (folder / "last.pt").is_file()
        res = train(c, folder, resume=again, progress=progress, overwrite=overwrite)
        final = res["history"][-1] if res["history"] else {}
        stages.append({"stage": label, "folder": str(folder), "step": res["step"],
                       "metrics": final.get("val"), "prior": final.get("prior")})
        return res

    stages: list[dict] = []
    n = cfg.self_train.teachers
    tcfg = teacher_config(cfg)
    teachers = [stage(teacher_config(cfg, t), teacher_folder(out_dir, t), "teacher" + (f" {t + 1} of {n}" if n > 1 else ""))
                for t in range(n)]
    result = teachers[-1]
    crops = None
    for k in range(1, cfg.self_train.rounds + 1):
        folder = out_dir / f"round{k}"
        pseudo_file = folder / "pseudo_train.json"
        if overwrite or not resume or not pseudo_file.is_file():
            labellers = [r["last"] for r in teachers] if k == 1 else [result["last"]]
            models = [load_model(f)[0] for f in labellers]
            crops = crops or training_crops(tcfg)
            ann, _ = pseudo_label(models, crops, cfg.self_train.top, tcfg.data.eval_batch_size, tcfg.data.flip_test,
                                  progress=progress, gate=cfg.self_train.gate)
            folder.mkdir(parents=True, exist_ok=True)
            write_results(pseudo_file, ann)  # atomically
        stats = json.loads(pseudo_file.read_text()).get("lofr_pseudo_label", {})
        if progress:
            print(f"self-training: round {k}: {stats.get('kept')} of {stats.get('present')} present joints kept "
                  f"(top {cfg.self_train.top:g} per joint)", file=sys.stderr, flush=True)
        result = stage(student_config(cfg, pseudo_file), folder / "student", f"student {k}")
        stages[-1]["pseudo"] = {key: stats.get(key) for key in ("instances", "teachers", "present", "plausible", "kept",
                                                                "top_fraction", "gate")}
    load_checkpoint(result["last"])  # a readable checkpoint before it becomes the run's
    _copy_atomic(Path(result["last"]), out_dir / "last.pt")
    write_results(out_dir / "self_train.json", {"rounds": cfg.self_train.rounds, "stages": stages})
    return {**result, "out_dir": str(out_dir), "last": str(out_dir / "last.pt"), "stages": stages}
