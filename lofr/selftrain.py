"""Self-training on a weak model's confident peaks (not in the paper; a lever of this project).

A model trained from image-level labels only (the *teacher*, e.g. ``synth-cpu-best`` with
``arch.dec_prior_bias=true``) predicts every training crop. For each joint c, among the instances whose
image-level label says c is present, the ``top_fraction`` with the highest scores keep the teacher's
keypoint as a pseudo-location (v = 2); every other joint gets v = 0 (no location: ignored by the heatmap
loss). A heatmap model (the *student*, ``model=sup-only``) is then trained on these pseudo-locations
like Sup-only on real ones:

    lofr train --config synth-cpu-best arch.dec_prior_bias=true --out runs/teacher
    lofr pseudo-label --checkpoint runs/teacher/last.pt --out runs/teacher/pseudo_train.json
    lofr train --config synth-cpu model=sup-only data.labelled_fraction=1.0 loss.mse=1.0 \\
        data.train_ann=$PWD/runs/teacher/pseudo_train.json --out runs/student

Nothing here reads a ground-truth location: the crops come from the boxes (eval mode, no augmentation),
the presence of a joint from the image-level label (v > 0), the coordinates from the teacher
(``tests/test_selftrain.py`` checks that moving every annotated keypoint changes nothing). The
selection is per joint, so a joint the teacher finds less reliably (wrists) is not crowded out by the
face joints it is sure of. The score is the teacher's: presence probability x map concentration
(``lofr.engine.evaluation.predict_records``).

Choices: ``top_fraction`` 0.25 (on SynthPose the kept quarter of the teacher's train predictions is
more accurate than the whole: see benchmarks/README.md); one round (a student could teach again);
the student's recipe is the synth-cpu testbed's Sup-only.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from torch.utils.data import DataLoader

__all__ = ["select_confident", "pseudo_label"]


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


@torch.no_grad()
def pseudo_label(model: torch.nn.Module, dataset, top_fraction: float = 0.25, batch_size: int = 128,
                 flip_test: bool = True, device=None, progress: bool = False) -> tuple[dict, dict]:
    """The teacher ``model``'s pseudo-locations for the eval-mode TopDownDataset ``dataset`` (the
    training annotations, un-augmented crops) -> (a copy of its COCO annotation dict with every
    annotation's ``keypoints`` / ``num_keypoints`` replaced, stats).

    Kept joints (:func:`select_confident` over the image-level labels) hold the teacher's keypoint in
    image coordinates with v = 2; the rest are 0, 0, 0. Annotations the dataset excluded (crowd, no
    labelled keypoint) or with no joint kept end with num_keypoints 0, which TopDownDataset excludes.
    stats: instances, present (joints labelled present), kept, top_fraction."""
    from lofr.data.topdown import collate
    from lofr.engine.evaluation import predict_records

    if dataset.train:
        raise ValueError("pseudo_label needs an eval-mode dataset (train=False): the crops must not be augmented")
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    records = predict_records(model, loader, flip_test=flip_test, device=device, progress=progress)
    ann = copy.deepcopy(json.loads(dataset.ann_file.read_text()))
    by_id = {a["id"]: a for a in ann["annotations"]}
    k = dataset.schema.num_keypoints
    scores = np.stack([r["scores"] for r in records]) if records else np.zeros((0, k))
    present = np.stack([np.asarray(by_id[r["ann_id"]]["keypoints"]).reshape(-1, 3)[:, 2] > 0 for r in records]) \
        if records else np.zeros((0, k), dtype=bool)
    keep = select_confident(scores, present, top_fraction)
    predicted = {r["ann_id"]: (r["keypoints"], keep[i]) for i, r in enumerate(records)}
    for a in ann["annotations"]:
        new = np.zeros((k, 3))
        if a["id"] in predicted:
            xy, kp = predicted[a["id"]]
            new[kp, :2], new[kp, 2] = xy[kp], 2
        a["keypoints"] = [round(float(v), 2) for v in new.reshape(-1)]
        a["num_keypoints"] = int((new[:, 2] > 0).sum())
    stats = {"instances": len(records), "present": int(present.sum()), "kept": int(keep.sum()),
             "top_fraction": top_fraction}
    return ann, stats
