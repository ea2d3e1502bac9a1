"""MPII evaluation the official way (HRNet's ``MPIIDataset.evaluate``, the MPII toolkit), from
``gt_valid.mat`` (``lofr.data.mpii.load_gt_mat``): ``records_to_preds`` (prediction records ->
(N, 16, 2) in the JSON / mat order), ``pckh_from_mat`` (PCKh@0.5 and the paper's Table 2 columns),
``write_pred_mat`` (HRNet's ``pred.mat``) and ``format_pckh_table``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lofr.data.mpii import MATLAB_OFFSET, load_gt_mat
from lofr.data.schemas import MPII16

from .pck import pckh

__all__ = ["records_to_preds", "pckh_from_mat", "write_pred_mat", "format_pckh_table"]


def records_to_preds(records, n: int) -> np.ndarray:
    """Prediction records on a converted MPII file (``ann_id`` = entry index + 1) -> (n, 16, 2) in the
    JSON / mat order. Every person needs exactly one record."""
    preds = np.full((n, MPII16.num_keypoints, 2), np.nan)
    for r in records:
        i = int(r["ann_id"]) - 1
        if not 0 <= i < n:
            raise ValueError(f"record ann_id {r['ann_id']} is not one of the {n} MPII persons (ids 1..{n})")
        if not np.isnan(preds[i]).all():
            raise ValueError(f"two records for MPII person {i} (ann_id {r['ann_id']})")
        preds[i] = np.asarray(r["keypoints"], dtype=np.float64)
    absent = np.flatnonzero(np.isnan(preds).all(axis=(1, 2)))
    if absent.size:
        raise ValueError(f"{absent.size} MPII persons have no prediction, e.g. entry {int(absent[0])} "
                         f"(ann_id {int(absent[0]) + 1})")
    return preds


def pckh_from_mat(preds, gt_mat, thr: float = 0.5) -> dict:
    """PCKh@thr of (N, 16, 2) predictions (lofr coordinates, ``records_to_preds``) against
    ``gt_valid.mat``, the official way (HRNet's ``MPIIDataset.evaluate``): joints marked missing are
    ignored, head size = 0.6 x head-box diagonal, Total pools every joint but pelvis and thorax,
    Table 2's columns average left and right. Returns ``lofr.eval.pckh``'s dict."""
    preds = np.asarray(preds, dtype=np.float64)
    gt = load_gt_mat(gt_mat, preds.shape[0])
    return pckh(preds, gt["joints"], ~gt["missing"], gt["head_boxes"], thr=thr, schema=MPII16)


def write_pred_mat(preds, path) -> Path:
    """Save (N, 16, 2) predictions (lofr coordinates) as HRNet's ``pred.mat`` (``preds``, 1-based
    MATLAB coordinates, in the JSON order): the file the MPII evaluation scripts / test server read."""
    from scipy.io import savemat

    preds = np.asarray(preds, dtype=np.float64)
    if preds.ndim != 3 or preds.shape[1:] != (16, 2):
        raise ValueError(f"preds must be (N, 16, 2), got {preds.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"preds": preds + MATLAB_OFFSET})
    return path


def format_pckh_table(result: dict, name: str = "LOFR") -> str:
    """One row of the paper's Table 2 (Head, Sho, Elb, Wri, Hip, Kne, Ank, Total), in %."""
    cols = ["Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Total"]
    head = f"{'method':<12}" + "".join(f"{c[:5]:>8}" for c in cols)
    row = f"{name:<12}" + "".join(f"{100 * result['table'][c]:>8.1f}" for c in cols)
    return head + "\n" + row
