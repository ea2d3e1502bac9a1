"""Training and evaluation loops (paper Sec. 4.2): ``train(cfg, out_dir)``, ``evaluate``, ``predict_records``.

One run = one folder::

    out_dir/config.yaml     the resolved TrainConfig
    out_dir/steps.jsonl     loss terms and lr every ``log_every`` steps (rank 0's batch)
    out_dir/metrics.jsonl   one line per evaluation: epoch, step, mean training losses, val metrics
                            (AP / PCK / px error) and the mean-pose prior's on the same crops
    out_dir/results.json    COCO keypoint results of the latest evaluation
    out_dir/last.pt         the latest state (model, optimiser, AMP scaler, step, epoch, RNG, config,
    out_dir/best.pt         metrics), written atomically; best.pt = the best val metric so far

Reproducibility. ``resume=True`` continues from ``last.pt`` and, on CPU, gives the very weights an
uninterrupted run gives (tests/test_trainer.py). Three things make that work:

* the order of the samples is a function of (seed, epoch) only (``EpochBatches``: torch's
  ``DistributedSampler`` order, rank r taking every W-th sample), and a resumed run skips the
  batches of the current epoch it had already done;
* a sample's augmentation is a function of (seed, epoch, index) only (``SeededSamples``):
  ``TopDownDataset.__getitem__`` draws its crop from torch's global RNG, so we fork that RNG per
  sample and seed it — the training process's RNG (dropout) is never touched by data loading nor
  by evaluation, and worker processes do not matter;
* the lr schedule is a function of the step only (``lr_factor``, set on the optimiser's groups
  before every step, as nanoGPT does: there is no scheduler object to save; the checkpoint's
  ``schedule`` entry records step, steps per epoch and the factor), and the checkpoint carries the
  optimiser's moments, BatchNorm statistics and the global RNG states.

Distributed (``torchrun --nproc_per_node W``): ``optim.batch_size`` is the global batch, each
process gets batch_size / W samples per step, and the union of the W per-process batches of a
step is exactly the single-process batch of that step. DDP averages the gradients, so with a
batch-independent model (no BatchNorm in training mode: ``bn="frozen"``, or ``"sync"`` on CUDA)
W processes reproduce the single-process run (tests/test_ddp.py). Only rank 0 evaluates, logs and
writes files.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from lofr.config_utils import ConfigError
from lofr.data.schemas import KeypointSchema, get_schema
from lofr.data.topdown import TopDownDataset, collate, mean_pose_prior
from lofr.data.transforms import crop_to_image
from lofr.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from lofr.engine.config import TrainConfig, config_dict, lofr_config
from lofr.engine.runtime import autocast, init_distributed, pick_device, rng_state, seed_everything, set_rng_state
from lofr.eval import (evaluate_keypoints, mean_pose_records, predictions_to_coco_results, write_results)
from lofr.eval.report import EvalReport
from lofr.models.backbone import Backbone
from lofr.models.lofr import LOFR, Baseline, PlainCAM, decode_response_maps, normalise_cams
from lofr.models.losses import LOFRCriterion, LossWeights

__all__ = ["train", "evaluate", "predict_records", "records_to_results", "build_model", "build_datasets",
           "loss_weights", "param_groups", "lr_factor", "SupOnly", "SeededSamples", "EpochBatches",
           "sample_seed", "load_model", "train_step"]

log = logging.getLogger("lofr.train")


# ============================================================================== models
class SupOnly(nn.Module):
    """Table 4's "Sup-only": the backbone + a heatmap head, trained with the heatmap MSE (Eq. 14) on
    the instances that have locations only.

    The paper re-implements SimpleBaseline / HRNet here. Our head (a choice): the backbone's
    stride-4, 8 and 16 maps, each 1x1-projected to ``hidden`` channels, upsampled (bilinear) to the
    stride-4 grid and summed, then conv3x3-BN-ReLU and a 1x1 conv to C heatmaps. So it sees the same
    backbone depth as LOFR (for ResNet-50: up to layer3) and predicts on LOFR's stride-4 grid.

    forward(images (B, 3, H, W)) -> {"heatmaps": (B, C, H/4, W/4)}
    predict(images) -> {"keypoints" (B, C, 2) input pixels, "scores" (B, C) = heatmap peak in [0, 1]}
    """

    def __init__(self, num_keypoints: int, backbone: str = "resnet50", pretrained: bool = False,
                 hidden: int = 128, schema: str | KeypointSchema | None = None):
        super().__init__()
        self.num_keypoints = num_keypoints
        self.schema = get_schema(schema) if schema is not None else None
        self.backbone = Backbone(backbone, pretrained)  # strides 4, 8, 16
        self.strides = [4]
        self.lateral = nn.ModuleList(nn.Conv2d(c, hidden, 1) for c in self.backbone.channels)
        self.head = nn.Sequential(
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, num_keypoints, 1))
        nn.init.normal_(self.head[-1].weight, std=0.001)  # SimpleBaseline's init of the final layer
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, images: torch.Tensor) -> dict:
        maps = self.backbone(images)  # [(B, c_s, H/s, W/s)] for s = 4, 8, 16
        size = maps[0].shape[-2:]
        x = sum(F.interpolate(lat(m), size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size
                else lat(m) for lat, m in zip(self.lateral, maps))  # (B, hidden, H/4, W/4)
        return {"heatmaps": self.head(x)}  # (B, C, H/4, W/4)

    @torch.no_grad()
    def predict(self, images: torch.Tensor, refine: bool = True) -> dict:
        heatmaps = self(images)["heatmaps"]
        keypoints, _ = decode_response_maps(heatmaps, self.strides[0], refine)
        return {"keypoints": keypoints, "scores": heatmaps.amax(dim=(-2, -1)).clamp(0.0, 1.0)}


def build_model(cfg: TrainConfig, num_keypoints: int | None = None) -> nn.Module:
    """The model ``cfg.model`` names, configured by ``cfg.arch`` / ``cfg.data`` / ``cfg.loss``."""
    lcfg = lofr_config(cfg, num_keypoints)
    if cfg.model == "lofr":
        return LOFR(config=lcfg)
    if cfg.model == "baseline":
        return Baseline(config=lcfg)
    if cfg.model == "cam":
        return PlainCAM(config=lcfg)
    if cfg.model == "sup-only":
        return SupOnly(lcfg.num_keypoints, lcfg.backbone, lcfg.pretrained, schema=lcfg.schema)
    raise ConfigError(f"model must be 'lofr', 'baseline', 'cam' or 'sup-only', got {cfg.model!r}")


def loss_weights(cfg: TrainConfig, model: nn.Module) -> LossWeights:
    """The criterion's weights: ``cfg.loss`` with the terms of switched-off modules zeroed (Baseline:
    final BCE only); Sup-only: the heatmap MSE alone (weight ``cfg.loss.mse``, 1 when that is 0)."""
    if isinstance(model, SupOnly):
        return LossWeights(cls_cnn=0.0, cls_enc=0.0, cls_final=0.0, div=0.0, aux_dec=0.0, mse=cfg.loss.mse or 1.0)
    return model.config.loss_weights()


def param_groups(model: nn.Module, optim) -> list[dict]:
    """Optimiser groups (paper Sec. 4.2: "the learning rate of transformer is decreased by a factor
    of 10"). "cnn" at ``optim.lr``: the backbone and the CAM head. "transformer" at
    ``optim.lr * optim.transformer_lr_mult``: everything else — the input projections, position /
    level / query embeddings, SPE, the encoder and its classifier, RePPG and the decoder.
    Sup-only is all CNN. Weight decay ``optim.weight_decay`` everywhere: an L2 term inside Adam (the
    paper's, ``optim.optimizer=adam``) or decoupled (``adamw``, ``synth-cpu``'s)."""
    if isinstance(model, SupOnly):
        groups = [{"name": "cnn", "params": list(model.parameters()), "lr": optim.lr}]
    else:
        cnn, rest = model.param_groups(optim.lr, optim.transformer_lr_mult, optim.weight_decay)
        groups = [{"name": "cnn", **cnn}, {"name": "transformer", **rest}]
    for g in groups:
        g["weight_decay"] = optim.weight_decay
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def load_model(path, device: str | torch.device = "cpu") -> tuple[nn.Module, TrainConfig]:
    """A model and its TrainConfig from a checkpoint written by :func:`train` (``last.pt`` /
    ``best.pt``), in eval mode. Raises CheckpointError for files that are not such checkpoints."""
    from lofr.engine.config import load_config

    state = load_checkpoint(path, map_location="cpu")
    for key in ("model", "config"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r}: not written by lofr.engine.train")
    cfg = load_config(state["config"])
    cfg.arch = {**cfg.arch, "pretrained": False}  # the weights come from the checkpoint
    model = build_model(cfg, state.get("num_keypoints"))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg


# ============================================================================== data
def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index`` in ``epoch``: a hash of the three (numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


class SeededSamples(Dataset):
    """``dataset[(epoch, index)]`` = ``dataset[index]`` drawn with torch's RNG seeded by
    ``sample_seed(seed, epoch, index)`` inside ``torch.random.fork_rng`` (so the caller's RNG state is
    left as it was). Makes each augmented sample reproducible whatever process or worker loads it.

    (TopDownDataset draws its crop parameters from torch's global RNG in ``__getitem__``; a
    ``seed=`` argument there would make this wrapper unnecessary.)"""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


class EpochBatches(Sampler):
    """Batch sampler over ``indices`` (the dataset indices to train on) for one process of W.

    Epoch e's order is ``DistributedSampler(shuffle=True, seed=seed, drop_last=True)`` at epoch e:
    one permutation from ``torch.Generator().manual_seed(seed + e)``, rank r taking every W-th
    entry; then ``batch_size`` (per process) consecutive entries per step, incomplete batches
    dropped. So step s of rank r holds permutation entries r + W k, k in [s b, (s + 1) b): the union
    over ranks is the global batch perm[s G : (s + 1) G], G = W b, the same as with W = 1.
    Yields lists of ``(epoch, index)`` keys for :class:`SeededSamples`. ``set_epoch(e, skip)``
    chooses the epoch and how many of its first steps to leave out (resume)."""

    def __init__(self, indices, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.indices = list(indices)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.epoch, self.skip = 0, 0
        self.steps_per_epoch = (len(self.indices) // world_size) // batch_size

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.steps_per_epoch - self.skip)

    def __iter__(self):
        order = DistributedSampler(self.indices, num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                   seed=self.seed, drop_last=True)
        order.set_epoch(self.epoch)
        mine = [self.indices[k] for k in order]  # this rank's share, in order
        b = self.batch_size
        for s in range(self.skip, self.steps_per_epoch):
            yield [(self.epoch, i) for i in mine[s * b:(s + 1) * b]]


def _data_root(cfg: TrainConfig) -> Path:
    d = cfg.data
    if d.root:
        return Path(d.root).expanduser()
    from lofr.data.synth import ensure_synthpose

    return ensure_synthpose(n_train=d.synth_train, n_val=d.synth_val)


def build_datasets(cfg: TrainConfig, train: bool = True, val: bool = True):
    """(train dataset or None, val dataset or None) from ``cfg.data``. The labelled subset of the
    semi-weak setting is drawn with ``cfg.seed``."""
    d = cfg.data
    root = _data_root(cfg)
    common = dict(schema=d.schema, input_size=tuple(d.input_size), fill=d.fill, on_bad=d.on_bad)
    train_ann, val_ann = root / d.train_ann, root / d.val_ann
    if get_schema(d.schema).name == "mpii":  # MPII's JSON conversion -> a cached COCO-format file
        from lofr.data.mpii import ensure_coco

        train_ann = ensure_coco(train_ann, root / d.train_img) if train else train_ann
        val_ann = ensure_coco(val_ann, root / d.val_img, root / d.mpii_gt_mat if d.mpii_gt_mat else None) \
            if val else val_ann
    train_ds = TopDownDataset(train_ann, root / d.train_img, train=True, aug=d.aug, labels=d.labels,
                              labelled_fraction=d.labelled_fraction, seed=cfg.seed, **common) if train else None
    val_ds = TopDownDataset(val_ann, root / d.val_img, train=False, **common) if val else None
    return train_ds, val_ds


def _train_indices(cfg: TrainConfig, dataset: TopDownDataset) -> list[int]:
    """Every instance, or for Sup-only those with locations (``has_location`` = 1)."""
    if cfg.model != "sup-only":
        return list(range(len(dataset)))
    idx = [i for i, r in enumerate(dataset.records) if r.has_location == 1.0]
    if not idx:
        raise ConfigError(f"sup-only: no training instance has locations (data.labelled_fraction = "
                          f"{cfg.data.labelled_fraction} of {len(dataset)} instances)")
    return idx


# ============================================================================== schedule
def lr_factor(step: int, steps_per_epoch: int, optim) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (0-based): linear warm-up over
    ``warmup_steps`` from ``warmup_factor``, times the schedule of ``optim.schedule`` — cosine from 1
    to ``min_lr_ratio`` over all ``epochs``, multistep ``gamma`` ** (milestones passed; epoch =
    step // steps_per_epoch), or constant."""
    total = optim.epochs * steps_per_epoch
    if optim.schedule == "cosine":
        t = min(step / max(total, 1), 1.0)
        f = optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    elif optim.schedule == "multistep":
        epoch = step // max(steps_per_epoch, 1)
        f = optim.gamma ** sum(epoch >= m for m in optim.milestones)
    else:
        f = 1.0
    if step < optim.warmup_steps:
        f *= optim.warmup_factor + (1 - optim.warmup_factor) * step / optim.warmup_steps
    return f


# ============================================================================== prediction / evaluation
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


def _amp_mode(device: torch.device, amp: str) -> str:
    """Resolve "auto" as runtime.autocast does: bf16 / fp16 on CUDA, "off" elsewhere."""
    if device.type != "cuda" or amp in ("off", "none", "fp32"):
        return "off"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


@torch.no_grad()
def predict_records(model: nn.Module, loader: DataLoader, flip_test: bool = True, device=None, amp: str = "off",
                    schema: str | KeypointSchema | None = None, progress: bool = False,
                    source: str = "response") -> list[dict]:
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
        images = batch["image"].to(device)  # (B, 3, H, W)
        in_hw = tuple(images.shape[-2:])
        with autocast(device, amp):
            maps, probs, stride = _maps_and_probs(model, images, source)
            if flip_test:
                maps_f, probs_f, _ = _maps_and_probs(model, images.flip(-1), source)
                maps = 0.5 * (maps + maps_f.flip(-1)[:, flip_index])
                probs = None if probs is None else 0.5 * (probs + probs_f[:, flip_index])
        keypoints, concentration = decode_response_maps(maps, stride)  # (B, C, 2), (B, C)
        scores = maps.amax(dim=(-2, -1)).clamp(0, 1) if probs is None else probs * concentration
        keypoints, scores = keypoints.cpu().numpy(), scores.cpu().numpy()
        meta = batch["meta"]
        for i in range(len(images)):
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
             results_file=None, progress: bool = False, source: str = "response") -> EvalReport:
    """Evaluate ``model`` on an eval-mode ``dataset`` (ground-truth boxes) -> ``EvalReport`` (OKS AP via
    COCOeval / xtcocotools, PCK@0.1 / 0.2, mean pixel error; see ``lofr.eval.evaluate_keypoints``).

    prior_pose: optional (C, 2) mean crop-space pose (e.g. ``mean_pose_prior(train_dataset)``); its
        records on the same crops become ``report.prior`` (a joint never seen: the crop centre).
    results_file: also write the COCO results JSON there.
    source: "response" or "cam" (LOFR's CAM arg-max; see :func:`predict_records`).
    Runs under ``torch.random.fork_rng``: the caller's RNG state is unchanged afterwards.
    """
    if dataset.train:
        raise ValueError("evaluate() needs an eval-mode dataset (TopDownDataset(..., train=False))")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
    was_training = model.training
    with torch.random.fork_rng(devices=[]):
        records = predict_records(model, loader, flip_test, device, amp, dataset.schema, progress, source)
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


def _best_keys(summary: dict) -> tuple[str, ...]:
    """The metrics that pick best.pt, compared in order: AP (else MPII's PCKh, else PCK@0.2), then
    PCK@0.2 and PCK@0.1 to break ties. The tie-breakers matter at small budgets: a CPU run's AP is
    often exactly 0 at every evaluation, and with AP alone best.pt stayed the first epoch's model."""
    primary = "AP" if "AP" in summary else "PCKh" if "PCKh" in summary else "PCK@0.2"
    return tuple(dict.fromkeys(k for k in (primary, "PCK@0.2", "PCK@0.1") if k in summary))


def _improves(summary: dict, best: dict | None) -> bool:
    """Whether ``summary`` beats ``best`` (``{"metric", "value", "tiebreak", ...}`` or None) on the
    :func:`_best_keys` order. A best recorded before the tie-breakers existed compares on its value."""
    if best is None:
        return True
    keys = _best_keys(summary)
    mine = tuple(float(summary[k]) for k in keys)
    theirs = (float(best["value"]), *best.get("tiebreak", [-math.inf] * (len(keys) - 1)))
    return mine > theirs


# ============================================================================== training
_TARGETS = ("labels", "heatmaps", "target_weight", "has_location")


def train_step(model: nn.Module, criterion: LOFRCriterion, optimizer: torch.optim.Optimizer, scaler,
               batch: dict, device: torch.device, amp: str = "off", grad_clip: float = 0.0,
               where: str = "") -> dict[str, float]:
    """One optimiser step on ``batch``: forward (under autocast; losses in float32), backward through
    the AMP ``scaler`` (a no-op unless fp16), optional gradient clipping, step. Returns the loss
    terms as floats; a non-finite loss raises FloatingPointError naming ``where`` and every term."""
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W)
    targets = {k: batch[k].to(device, non_blocking=True) for k in _TARGETS}
    with autocast(device, amp):
        outputs = model(images)
    outputs = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in outputs.items()}
    terms = criterion(outputs, targets)
    loss = terms["total"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{where}: loss is {loss.item()}; "
                                 + ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items()))
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return {k: float(v.detach()) for k, v in terms.items()}


def _wrap_ddp(model: nn.Module, weights: LossWeights, device: torch.device) -> nn.Module:
    """DistributedDataParallel; a head whose loss weight is 0 gets no gradient, and DDP must then be
    told to look for unused parameters (slower, so only then)."""
    unused = isinstance(model, LOFR) and ((model.enc_classifier is not None and not weights.cls_enc)
                                          or (model.cam_head is not None and not weights.cls_cnn))
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=unused)


def _resume(path: Path, cfg: TrainConfig, model, optimizer, scaler) -> tuple[int, list, dict | None]:
    """Load ``path`` into model / optimiser / scaler and the global RNGs -> (step, history, best)."""
    state = load_checkpoint(path, map_location="cpu")
    for key in ("model", "optimizer", "step", "rng", "config"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r}: not written by lofr.engine.train")
    _check_resume(state["config"], cfg, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["step"]), list(state.get("metrics", [])), state.get("best")


DEAD_ATTENTION = 1e-2  # ||W_q|| ||W_k|| below this: the layer's attention is (nearly) uniform


def attention_qk_scales(model: nn.Module) -> dict[str, float]:
    """{module name: ||W_q||_F * ||W_k||_F} for every attention layer of ``model`` (the encoder's
    ``MultiHeadAttention``: w_q / w_k; the decoder's ``Attention``: q_proj / k_proj).

    The product bounds how far a layer's attention logits can move from uniform. At initialisation it
    is about 20 (d_model 64); a value near 0 means the layer attends uniformly to everything. Adam's L2
    weight decay (``optim.optimizer=adam``, the paper's optimiser) drives exactly these weights to 0
    when their loss gradient is weaker than the decay term — Adam normalises the sum, so the decay
    then shrinks them by about lr per step: measured on synth-cpu (from scratch), the decoder's query /
    key projections reached norms of 1e-5 to 0 within 2040 steps and 2 of 3 seeds ended with exactly
    uniform response maps; ``optim.optimizer=adamw`` (decoupled decay) keeps them at ~6."""
    out = {}
    for name, m in model.named_modules():
        q = getattr(m, "w_q", None) or getattr(m, "q_proj", None)  # encoder / decoder attention
        k = getattr(m, "w_k", None) or getattr(m, "k_proj", None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
            out[name] = float(q.weight.detach().norm() * k.weight.detach().norm())
    return out


def _dead_attention_warning(scales: dict[str, float], optimizer: str) -> str | None:
    dead = sorted(n for n, v in scales.items() if v < DEAD_ATTENTION)
    if not dead:
        return None
    hint = (" Adam's L2 weight decay shrinks weights whose loss gradient is weaker than the decay by ~lr per "
            "step; optim.optimizer=adamw (decoupled decay) keeps them." if optimizer == "adam" else "")
    return (f"WARNING: {len(dead)} attention layer(s) have lost their query/key projections "
            f"(||W_q|| ||W_k|| < {DEAD_ATTENTION:g}: {', '.join(dead)}): they now attend uniformly.{hint}")


def _summary_line(epoch: int, record: dict) -> str:
    keys = ("AP", "PCK@0.2", "PCKh", "px err")
    line = f"epoch {epoch + 1} step {record['step']}: loss {record['train'].get('total', float('nan')):.4f}  "
    line += "  ".join(f"{k} {v:.3f}" for k, v in record["val"].items() if k in keys)
    if record["prior"]:
        line += f"  (mean-pose prior PCK@0.2 {record['prior'].get('PCK@0.2', float('nan')):.3f})"
    return line


class _Run:
    """Appends JSON lines to the run folder (rank 0 only) and prints through tqdm."""

    def __init__(self, out_dir: Path, is_main: bool, progress: bool):
        self.out_dir, self.is_main, self.progress = out_dir, is_main, progress

    def append(self, name: str, record: dict) -> None:
        if self.is_main:
            with open(self.out_dir / name, "a") as f:
                f.write(json.dumps(record) + "\n")

    def say(self, msg: str) -> None:
        if not self.is_main:
            return
        log.info(msg)
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg)


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def _check_resume(saved: dict, cfg: TrainConfig, path: Path) -> None:
    """A resumed run must train the same model on the same data with the same seed."""
    now = config_dict(cfg)
    for key in ("model", "arch", "loss", "seed"):
        if saved.get(key) != now[key]:
            raise ConfigError(f"cannot resume from {path}: its {key} is {saved.get(key)!r}, "
                              f"the config says {now[key]!r}")
    for key in ("schema", "input_size", "labelled_fraction", "root", "train_ann"):
        if saved.get("data", {}).get(key) != now["data"][key]:
            raise ConfigError(f"cannot resume from {path}: its data.{key} is {saved['data'].get(key)!r}, "
                              f"the config says {now['data'][key]!r}")
    if saved.get("optim", {}).get("batch_size") != now["optim"]["batch_size"]:
        raise ConfigError(f"cannot resume from {path}: optim.batch_size changed "
                          f"({saved['optim'].get('batch_size')} -> {now['optim']['batch_size']})")


def train(cfg: TrainConfig, out_dir, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train ``cfg`` into ``out_dir`` (see the module docstring for what is written there).

    resume: continue from ``out_dir/last.pt`` (CheckpointError when it is missing or unreadable;
        ConfigError when the model / data / seed / batch differ from the checkpoint's).
    overwrite: start afresh in an ``out_dir`` that already holds a run (its files are replaced);
        without it (and without ``resume``) such a folder raises FileExistsError.
    progress: tqdm bars and one summary line per evaluation (rank 0 only).
    Under ``torchrun`` (RANK / WORLD_SIZE set) this is one process of a DDP run.

    Returns ``{"out_dir", "step", "epoch", "history" (the metrics.jsonl records), "best"
    ({"metric", "value", "step"} or None), "world_size", "batch_per_process", "effective_batch",
    "lr" ({group: base lr}), "steps_per_epoch", "last", "best_checkpoint"}``.
    """
    cfg.check()
    out_dir = Path(out_dir)
    di = init_distributed()
    device = pick_device(cfg.device)
    if di.enabled and device.type == "cuda":
        device = torch.device("cuda", di.local_rank)
    run = _Run(out_dir, di.is_main, progress)
    o = cfg.optim
    if o.batch_size % di.world_size:
        raise ConfigError(f"optim.batch_size {o.batch_size} (global) is not divisible by the {di.world_size} processes")
    per_rank = o.batch_size // di.world_size
    amp = _amp_mode(device, cfg.amp)
    bn = cfg.bn if cfg.bn != "auto" else ("sync" if di.enabled and device.type == "cuda" else "batch")
    if bn == "sync" and di.enabled and device.type != "cuda":
        raise ConfigError("bn='sync': torch's SyncBatchNorm only runs on CUDA; on CPU use bn='batch' (per-process "
                          "statistics) or bn='frozen'")

    if not resume and not overwrite and (out_dir / "last.pt").exists():
        raise FileExistsError(f"{out_dir} already holds a run (last.pt): pass resume=True to continue it, "
                              "overwrite=True to start it again, or choose another folder")
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in ("steps.jsonl", "metrics.jsonl", "results.json", "best.pt", "last.pt"):
                (out_dir / name).unlink(missing_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
    if di.enabled:  # rank 0 alone generates SynthPose when it is missing; the others wait for it
        if di.is_main:
            _data_root(cfg)
        dist.barrier()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    train_ds, val_ds = build_datasets(cfg, train=True, val=di.is_main)
    if cfg.model == "lofr" and cfg.data.labelled_fraction is not None and not cfg.loss.mse:
        log.warning("data.labelled_fraction is set but loss.mse = 0: the locations are never used")
    batches = EpochBatches(_train_indices(cfg, train_ds), per_rank, cfg.seed, di.rank, di.world_size)
    spe = batches.steps_per_epoch
    if spe == 0:
        raise ConfigError(f"optim.batch_size {o.batch_size} is larger than the {len(batches.indices)} training "
                          f"instances: not a single step per epoch")
    loader = DataLoader(SeededSamples(train_ds, cfg.seed), batch_sampler=batches, collate_fn=collate,
                        num_workers=cfg.data.workers, persistent_workers=cfg.data.workers > 0,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))  # never draws from the global RNG

    model = build_model(cfg, train_ds.schema.num_keypoints).to(device)
    if bn == "sync" and di.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    criterion = LOFRCriterion(loss_weights(cfg, model))
    groups = param_groups(model, o)
    opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=o.lr, weight_decay=o.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    prior_pose = mean_pose_prior(train_ds) if di.is_main else None

    step, history, best = 0, [], None
    if resume:
        step, history, best = _resume(out_dir / "last.pt", cfg, model, optimizer, scaler)
        run.say(f"resumed from {out_dir / 'last.pt'} at step {step} (epoch {step // spe})")
    core = model
    if di.enabled:
        model = _wrap_ddp(model, criterion.weights, device)

    lrs = {g["name"]: g["initial_lr"] for g in optimizer.param_groups}
    run.say(f"{cfg.name}: {cfg.model} on {device} (amp {amp}, bn {bn}), {di.world_size} process(es) x batch "
            f"{per_rank} = effective batch {o.batch_size}; lr " + ", ".join(f"{k} {v:g}" for k, v in lrs.items())
            + f"; {spe} steps/epoch x {o.epochs} epochs"
            + (f", stopping at step {cfg.max_steps}" if cfg.max_steps else ""))

    last_step = o.epochs * spe if not cfg.max_steps else min(cfg.max_steps, o.epochs * spe)
    from tqdm.auto import tqdm

    def checkpoint_state(epoch: int) -> dict:
        return {"model": core.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "schedule": {"step": step, "steps_per_epoch": spe, "factor": lr_factor(step, spe, o)},
                "epoch": epoch, "step": step, "rng": rng_state(), "config": config_dict(cfg),
                "metrics": history, "best": best, "num_keypoints": core.num_keypoints, "model_kind": cfg.model}

    warned_dead = False  # the dead-attention warning is said once per train() call
    # time_s in metrics.jsonl counts on across a resume, from the last evaluation the run recorded
    t0 = time.perf_counter() - float(history[-1].get("time_s", 0.0) if history else 0.0)
    while step < last_step:
        epoch, skip = divmod(step, spe)
        batches.set_epoch(epoch, skip)
        model.train()
        if bn == "frozen":
            _set_bn_eval(model)
        sums: dict[str, float] = {}
        n = 0
        bar = tqdm(total=spe, initial=skip, desc=f"epoch {epoch + 1}/{o.epochs}",
                   disable=not (progress and di.is_main), leave=False)
        for batch in loader:
            factor = lr_factor(step, spe, o)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * factor
            values = train_step(model, criterion, optimizer, scaler, batch, device, amp, o.grad_clip,
                                where=f"{cfg.name}, step {step} (epoch {epoch})")
            step += 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            n += 1
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.4f}")
            if step % cfg.log_every == 0:
                run.append("steps.jsonl", {"step": step, "epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                                           **values})
            if step >= last_step:
                break
        bar.close()

        epoch_done = step % spe == 0
        finished = step >= last_step
        due = epoch_done and cfg.eval_every and (epoch + 1) % cfg.eval_every == 0
        state_epoch = epoch + 1 if epoch_done else epoch
        if di.is_main and (due or finished):
            report = evaluate(core, val_ds, cfg.data.eval_batch_size, cfg.data.flip_test, device, amp,
                              prior_pose=prior_pose, results_file=out_dir / "results.json")
            summary = report.summary()
            record = {"epoch": epoch, "step": step, "epoch_done": epoch_done,
                      "train": {k: v / max(n, 1) for k, v in sums.items()}, "val": summary,
                      "prior": report.prior.summary() if report.prior is not None else None,
                      "time_s": round(time.perf_counter() - t0, 2)}
            scales = attention_qk_scales(core)
            if scales:
                record["attn_qk_min"] = min(scales.values())
            history.append(record)
            run.append("metrics.jsonl", record)
            run.say(_summary_line(epoch, record))
            warning = None if warned_dead else _dead_attention_warning(scales, o.optimizer)
            if warning:  # shown with the progress bars (lofr train), logged at INFO
                run.say(warning)
                warned_dead = True
            if _improves(summary, best):
                key, *ties = _best_keys(summary)
                best = {"metric": key, "value": float(summary[key]), "tiebreak": [float(summary[k]) for k in ties],
                        "step": step}
                save_checkpoint(checkpoint_state(state_epoch), out_dir / "best.pt")
        if di.is_main:
            save_checkpoint(checkpoint_state(state_epoch), out_dir / "last.pt")
        if di.enabled:
            dist.barrier()
    return {"out_dir": str(out_dir), "step": step, "epoch": step / spe, "history": history, "best": best,
            "world_size": di.world_size, "batch_per_process": per_rank, "effective_batch": o.batch_size,
            "lr": lrs, "steps_per_epoch": spe, "last": str(out_dir / "last.pt"),
            "best_checkpoint": str(out_dir / "best.pt") if best is not None else None}
