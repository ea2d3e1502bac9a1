"""Prediction and evaluation of a trained model on eval-mode crops: ``predict_records`` (flip test,
maps -> keypoints in image coordinates), ``records_to_results`` (COCO results) and ``evaluate``
(an ``EvalReport``: OKS AP, PCK, pixel error, optionally the mean-pose prior on the same crops) on
ground-truth boxes, and ``evaluate_with_detections`` on detected ones."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from lofr.data.detections import DetectionTopDown
from lofr.data.schemas import KeypointSchema, get_schema
from lofr.data.topdown import TopDownDataset, collate
from lofr.data.transforms import crop_to_image
from lofr.engine.models import SupOnly
from lofr.engine.runtime import autocast
from lofr.eval import evaluate_keypoints, mean_pose_records, predictions_to_coco_results, write_results
from lofr.eval.coco import coco_keypoint_eval, crowdpose_eval
from lofr.eval.detections import detection_results
from lofr.eval.report import EvalReport
from lofr.models.lofr import decode_response_maps, normalise_cams

__all__ = ["predict_records", "records_to_results", "evaluate", "evaluate_with_detections", "pose_prior_for",
           "fit_pose_prior"]


def fit_pose_prior(train_ds: TopDownDataset):
    """A ``lofr.eval.pose_prior.PosePrior`` fitted on ``train_ds``'s locations (its eval-mode crops, no image
    read) along the schema's kinematic edges."""
    from lofr.data.topdown import crop_poses
    from lofr.eval.pose_prior import PosePrior

    return PosePrior.fit(crop_poses(train_ds), train_ds.schema.edges, train_ds.input_size)


def pose_prior_for(cfg, train_ds: TopDownDataset):
    """The pose model ``cfg.decode`` asks for: :func:`fit_pose_prior` of ``train_ds`` for
    ``decode="pose_prior"``, None for "argmax"."""
    return fit_pose_prior(train_ds) if cfg.decode == "pose_prior" else None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _maps_and_probs(model: nn.Module, images: torch.Tensor, source: str = "response"):
    """-> (maps (B, C, h, w), presence probabilities (B, C) or None, stride of the maps).
    ``source="cam"``: LOFR's CNN branch alone, the normalised CAMs (Eq. 1) and the CNN logits."""
    m = _unwrap(model)
    out = model(images)
    if isinstance(m, SupOnly):
        return out["heatmaps"].float(), None, m.strides[0]
    if source == "cam":
        if out["cams"] is None:
            raise ValueError("source='cam' needs a model with a CAM head (LOFR, not the Baseline)")
        return normalise_cams(out["cams"].float()), out["logits_cnn"].float().sigmoid(), m.cam_stride
    return out["response_fused"].float(), out["logits"].float().sigmoid(), m.strides[0]


@torch.no_grad()
def predict_records(model: nn.Module, loader: DataLoader, flip_test: bool = True, device=None, amp: str = "off",
                    schema: str | KeypointSchema | None = None, progress: bool = False,
                    source: str = "response", pose_prior=None) -> list[dict]:
    """Predictions for every crop of ``loader`` (eval-mode TopDownDataset batches), as records in
    ORIGINAL image coordinates: ``{"image_id", "ann_id", "keypoints" (C, 2), "scores" (C,)}``.

    Flip test (``flip_test``): the model also sees the mirrored crop; its maps are mirrored back
    (x -> W - x is an exact column reversal of a stride-s grid when s divides W, so no HRNet-style
    one-pixel shift), their channels swapped with ``schema.flip_index``, and averaged with the
    original maps BEFORE decoding (LOFR: the fused response maps, each summing to 1, so the average
    does too; Sup-only: the heatmaps). LOFR's presence probabilities are averaged the same way. The
    keypoint = arg-max of the averaged map + quarter-cell refinement, score = p * concentration
    (LOFR, as ``LOFR.predict``) or the heatmap peak (Sup-only).

    source: "response" (the model's output) or "cam" (LOFR's CAM head alone, the plain-CAM
    reference, as ``LOFR.predict_cam``; stride 16).
    pose_prior: a ``lofr.eval.pose_prior.PosePrior``: the keypoints are decoded jointly with it (the
    flip-averaged maps' local maxima and the pose model) instead of by each map's refined arg-max; the
    scores are unchanged.
    """
    if source not in ("response", "cam"):
        raise ValueError(f"source must be 'response' or 'cam', got {source!r}")
    model.eval()
    device = device or next(model.parameters()).device
    schema = get_schema(schema or loader.dataset.schema)
    flip_index = torch.as_tensor(schema.flip_index, device=device)
    records = []
    from tqdm.auto import tqdm

    for batch in tqdm(loader, desc="eval", disable=not progress, leave=False):
        if "feats" in batch:  # cached backbone maps of the crop and of its mirror image (lofr.engine.feature_cache)
            inputs = [f.to(device) for f in batch["feats"]]  # [(B, c_s, H/s, W/s)]
            mirrored = [f.to(device) for f in batch["feats_flip"]] if flip_test else None
            in_hw = tuple(loader.dataset.input_size)
        else:
            inputs = batch["image"].to(device)  # (B, 3, H, W)
            mirrored = inputs.flip(-1) if flip_test else None
            in_hw = tuple(inputs.shape[-2:])
        with autocast(device, amp):
            maps, probs, stride = _maps_and_probs(model, inputs, source)
            if flip_test:
                maps_f, probs_f, _ = _maps_and_probs(model, mirrored, source)
                maps = 0.5 * (maps + maps_f.flip(-1)[:, flip_index])
                probs = None if probs is None else 0.5 * (probs + probs_f[:, flip_index])
        keypoints, concentration = decode_response_maps(maps, stride)  # (B, C, 2), (B, C)
        if pose_prior is not None:
            keypoints = torch.from_numpy(pose_prior.decode(maps.cpu().double().numpy(), stride)).float()
        scores = maps.amax(dim=(-2, -1)).clamp(0, 1) if probs is None else probs * concentration
        keypoints, scores = keypoints.cpu().numpy(), scores.cpu().numpy()
        meta = batch["meta"]
        for i in range(len(keypoints)):
            kp = keypoints[i]
            if int(meta["flipped"][i]):  # a flipped crop (training-mode data): undo the mirror
                kp = np.stack([in_hw[1] - kp[:, 0], kp[:, 1]], -1)[schema.flip_index]
                scores[i] = scores[i][schema.flip_index]
            kp_img = crop_to_image(kp, meta["center"][i].numpy(), meta["scale"][i].numpy(),
                                   float(meta["rotation"][i]), in_hw)
            records.append({"image_id": int(meta["image_id"][i]), "ann_id": int(meta["ann_id"][i]),
                            "keypoints": kp_img, "scores": scores[i].astype(np.float64)})
    return records


def records_to_results(records: list[dict]) -> list[dict]:
    """Records -> COCO keypoint results (``lofr.eval.predictions_to_coco_results``)."""
    return predictions_to_coco_results([r["image_id"] for r in records], [r["ann_id"] for r in records],
                                       np.stack([r["keypoints"] for r in records]),
                                       np.stack([r["scores"] for r in records]))


def evaluate(model: nn.Module, dataset: TopDownDataset, batch_size: int = 64, flip_test: bool = True,
             device=None, amp: str = "off", workers: int = 0, prior_pose: np.ndarray | None = None,
             results_file=None, progress: bool = False, source: str = "response", pose_prior=None) -> EvalReport:
    """Evaluate ``model`` on an eval-mode ``dataset`` (ground-truth boxes) -> ``EvalReport`` (OKS AP via
    COCOeval / xtcocotools, PCK@0.1 / 0.2, mean pixel error; see ``lofr.eval.evaluate_keypoints``).

    prior_pose: optional (C, 2) mean crop-space pose (e.g. ``mean_pose_prior(train_dataset)``); its
        records on the same crops become ``report.prior`` (a joint never seen: the crop centre).
    results_file: also write the COCO results JSON there.
    source: "response" or "cam" (LOFR's CAM arg-max; see :func:`predict_records`).
    pose_prior: decode jointly with this pose model (``lofr.eval.pose_prior``; see :func:`predict_records`).
    Runs under ``torch.random.fork_rng``: the caller's RNG state is unchanged afterwards.
    """
    if dataset.train:
        raise ValueError("evaluate() needs an eval-mode dataset (TopDownDataset(..., train=False))")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        records = predict_records(model, loader, flip_test, device, amp, dataset.schema, progress, source,
                                  pose_prior)
    model.train(was_training)
    prior = None
    if prior_pose is not None:
        h, w = dataset.input_size
        pose = np.where(np.isfinite(prior_pose), prior_pose, [[w / 2, h / 2]])
        recs = dataset.records
        prior = mean_pose_records(pose, [r.image_id for r in recs], [r.ann_id for r in recs],
                                  [r.center for r in recs], [r.scale for r in recs], dataset.input_size)
    if results_file is not None:
        write_results(results_file, records_to_results(records))
    return evaluate_keypoints(dataset.coco.dataset, records, dataset.schema, prior=prior)


def evaluate_with_detections(model, dataset: DetectionTopDown, gt=None, batch_size: int = 64,
                             flip_test: bool = True, device=None, amp: str = "off", workers: int = 0,
                             nms_thr: float | None = 0.9, results_file=None,
                             progress: bool = False) -> tuple[list[dict], dict | None]:
    """Evaluate on detected person boxes (``lofr.data.detections``): predict every detection crop
    (``workers`` DataLoader processes, ``amp`` as the trainer's), rescore + OKS-NMS, optionally write
    the results JSON, and (when ``gt`` is given: a COCO / CrowdPose keypoint file) compute AP ->
    (results, AP dict or None)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    records = predict_records(model, loader, flip_test, device, amp, schema=dataset.schema, progress=progress)
    results = detection_results(dataset, records, nms_thr)
    if results_file is not None:
        write_results(results_file, results)
    if gt is None:
        return results, None
    if dataset.schema.name == "crowdpose":
        return results, crowdpose_eval(gt, results, dataset.schema)
    return results, coco_keypoint_eval(gt, results, dataset.schema)
