"""Evaluation: crop-space predictions -> the standard metrics (paper Sec. 4.1).

* ``coco``: COCO results files and OKS AP / AR via pycocotools (COCO) and xtcocotools (CrowdPose).
* ``pck``: PCK of the box diagonal, MPII PCKh and mean pixel error, in original image coordinates.
* ``report``: ``evaluate_keypoints`` (all of the above at once), the mean-pose prior, and tables.

numpy in, numpy out: nothing here imports torch.
"""

from .coco import (COCO_KEYS, CROWDPOSE_KEYS, coco_keypoint_eval, crowdpose_eval, instance_score, oks,
                   predictions_to_coco_results, write_results)
from .pck import box_diagonal, head_sizes, mean_pixel_error, pck, pckh
from .report import (EvalReport, crops_from_gt, evaluate_keypoints, format_per_joint, format_report, gt_records,
                     mean_crop_pose, mean_pose_records)

__all__ = [
    "COCO_KEYS", "CROWDPOSE_KEYS", "coco_keypoint_eval", "crowdpose_eval", "instance_score", "oks",
    "predictions_to_coco_results", "write_results",
    "box_diagonal", "head_sizes", "mean_pixel_error", "pck", "pckh",
    "EvalReport", "crops_from_gt", "evaluate_keypoints", "format_per_joint", "format_report", "gt_records",
    "mean_crop_pose", "mean_pose_records",
]
