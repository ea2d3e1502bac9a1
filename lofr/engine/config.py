"""Training configuration: plain dataclasses, read from YAML, overridden with ``key=value``.

A run is described by one :class:`TrainConfig`::

    TrainConfig
      name, model ("lofr" | "baseline" | "sup-only"), arch (LOFRConfig fields), loss (LossWeights)
      data:  DataConfig   (where the COCO-format files are, schema, input size, augmentation, ...)
      optim: OptimConfig  (Adam, lr, transformer lr factor, epochs, global batch, schedule, ...)
      seed, device, amp, bn, eval_every, max_steps, log_every, decode
      self_train: SelfTrainConfig (rounds = 0: off; else teacher -> pseudo-labels -> student)

``load_config("synth-cpu", ["optim.lr=1e-3"])`` reads the YAML shipped in ``lofr/configs/`` (or any
path), applies the overrides and checks every key and type (unknown keys are errors, never ignored).
The YAML files only list what differs from the defaults below.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from lofr.config_utils import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from lofr.data.synth import DEFAULT_TRAIN, DEFAULT_VAL
from lofr.data.topdown import FILLS, LABEL_RULES, AugConfig
from lofr.models.lofr import LOFRConfig
from lofr.models.losses import LossWeights

__all__ = ["DataConfig", "OptimConfig", "SelfTrainConfig", "TrainConfig", "load_config", "config_path", "available_configs",
           "lofr_config", "config_dict", "ARCH_FROM_ELSEWHERE"]

# LOFRConfig fields the trainer fills in itself (from ``data`` and ``loss``); setting them in ``arch``
# would give two sources of truth, so it is an error.
ARCH_FROM_ELSEWHERE = ("num_keypoints", "schema", "input_size", "loss")


@dataclass
class DataConfig:
    """Where the data is and how crops are made.

    root: dataset folder (a relative path is relative to the working directory); "" = SynthPose,
        generated on first use into ``lofr.paths.synthpose_dir()`` with ``synth_train`` /
        ``synth_val`` images (``lofr.data.synth.ensure_synthpose``).
    train_ann / train_img / val_ann / val_img: paths relative to ``root`` (absolute paths also work):
        the COCO layout by default.
    input_size: (H, W) of the network input, e.g. (256, 192).
    fill: what the crop shows outside the image, "zeros" | "edge" | "leakfree" (training only;
        evaluation crops use "edge": nothing is replaced there). See ``lofr.data.topdown``.
    labels: the image-level label rule, "crop" (annotated AND inside the augmented crop: needs the
        coordinates) | "annotation" (annotated; strictly location-free, needs aug.half_body_prob 0).
        See ``lofr.data.topdown``.
    labelled_fraction: None = fully supervised locations available; f = only round(f N) training
        instances keep their locations (paper Sec. 4.3.2; ``has_location``), drawn with the run's seed.
    workers: DataLoader worker processes (0 = load in the training process).
    flip_test: evaluate on the crop and its mirror image, averaged (see ``trainer.predict_records``).
    mpii_gt_mat: MPII only: ``gt_valid.mat`` (relative to ``root``), whose head boxes give the val
        annotations the ``head_box`` PCKh needs; "" = none. MPII's JSON conversion files
        (``train_ann`` / ``val_ann``) are converted to COCO format on first use and cached
        (``lofr.data.mpii.ensure_coco``).
    cache_views / cache_seed / cache_dir: with a pretrained backbone frozen in whole or in part
        (``arch.pretrained``, ``arch.freeze_to``), ``cache_views`` = K > 0 trains on the frozen part's maps of K
        augmented views of every training instance, computed once (drawn with ``cache_seed``, not the
        run's seed, so that seeds share the cache) and stored in float16 under ``cache_dir`` ("" =
        ``lofr.paths.feature_cache_dir()``); epoch e reads view e mod K; evaluation reads the
        cached eval crops and their mirrors. 0 = no cache (the backbone runs on every crop). See
        ``lofr.engine.feature_cache``.
    det_file / det_score_thr / oks_nms_thr: person detection results (relative to ``root``, "" =
        none) for evaluating on detected boxes (``lofr.data.detections``): boxes with score >=
        ``det_score_thr`` are kept, duplicates removed by OKS-NMS at ``oks_nms_thr``.
    """

    root: str = ""
    train_ann: str = "annotations/person_keypoints_train2017.json"
    train_img: str = "train2017"
    val_ann: str = "annotations/person_keypoints_val2017.json"
    val_img: str = "val2017"
    schema: str = "coco"
    input_size: tuple[int, int] = (256, 192)
    fill: Literal["zeros", "edge", "leakfree"] = "leakfree"
    labels: Literal["crop", "annotation"] = "crop"
    on_bad: Literal["raise", "skip"] = "raise"
    labelled_fraction: float | None = None
    aug: AugConfig = field(default_factory=AugConfig)
    workers: int = 2
    flip_test: bool = True
    eval_batch_size: int = 64
    mpii_gt_mat: str = ""
    det_file: str = ""
    det_score_thr: float = 0.0
    oks_nms_thr: float = 0.9
    cache_views: int = 0
    cache_seed: int = 0
    cache_dir: str = ""
    synth_train: int = DEFAULT_TRAIN  # only used when root == "" (SynthPose)
    synth_val: int = DEFAULT_VAL


@dataclass
class OptimConfig:
    """Optimiser and schedule. Defaults = the paper's Sec. 4.2 (Adam, lr 4e-3, weight decay 1e-4,
    the transformer's lr divided by 10).

    optimizer: "adam" (the paper's: weight decay as an L2 term inside Adam) or "adamw" (decoupled
        decay). Beware "adam" when training attention from scratch: Adam normalises the L2 term too,
        so weights whose loss gradient is weaker than the decay shrink by ~lr per step; on synth-cpu it
        zeroed the decoder's query / key projections (``trainer.attention_qk_scales``, which the
        trainer records as ``attn_qk_min`` and warns about).
    batch_size is the GLOBAL batch: under DDP each of the W processes gets batch_size / W.
    transformer_lr_mult: lr factor for everything but the CNN (see ``trainer.param_groups``).
    warmup_steps: linear warm-up from ``warmup_factor`` * lr to lr over the first steps.
    schedule: "cosine" (to ``min_lr_ratio`` * lr at the end of the last epoch), "multistep" (times
        ``gamma`` at each epoch in ``milestones``) or "constant".
    grad_clip: max global gradient norm; 0 = no clipping.
    """

    optimizer: Literal["adam", "adamw"] = "adam"
    lr: float = 4e-3
    weight_decay: float = 1e-4
    transformer_lr_mult: float = 0.1
    epochs: int = 210
    batch_size: int = 64
    warmup_steps: int = 500
    warmup_factor: float = 0.001
    schedule: Literal["cosine", "multistep", "constant"] = "multistep"
    milestones: list[int] = field(default_factory=lambda: [170, 200])
    gamma: float = 0.1
    min_lr_ratio: float = 0.0
    grad_clip: float = 0.0


@dataclass
class SelfTrainConfig:
    """Self-training (``lofr.selftrain``; not in the paper). ``rounds`` = 0: off (one model, as usual).
    ``rounds`` = r >= 1: the run's model is a *teacher* trained as configured; it labels the training crops
    (per joint, the ``top`` fraction of the instances labelled present keep its keypoint; with ``gate`` > 0 only
    among those within ``gate`` standard deviations of the joint's mean training position) and a *student* is
    trained on those pseudo-locations with the config ``student`` (a shipped name or a YAML path) plus the
    ``student_set`` overrides; with r >= 2 each student teaches the next. The teacher's seed, device, amp
    and dataset (data.root, image folders, val annotations, schema, SynthPose sizes) carry over to the
    students; the run's ``last.pt`` is the last student's. ``teachers`` = n > 1: n teachers of the same config
    with seeds seed, seed + 1000, ..., seed + 1000 (n - 1) label the crops together (their keypoints and scores
    averaged: ``lofr.selftrain.pseudo_label``); later rounds have one teacher, the previous student."""

    rounds: int = 0
    teachers: int = 1
    top: float = 0.25
    gate: float = 0.0
    student: str = "synth-cpu"
    student_set: list[str] = field(default_factory=lambda: ["model=sup-only", "data.labelled_fraction=1.0",
                                                            "loss.mse=1.0"])


@dataclass
class TrainConfig:
    """One training run.

    model: "lofr" (the paper's model), "baseline" (CNN + DETR encoder/decoder, final BCE only:
        ``lofr.models.Baseline``), "cam" (LOFR's CNN branch alone, backbone + CAM head, image-level
        BCE only, keypoints = CAM arg-max: ``lofr.models.PlainCAM``) or "sup-only" (the backbone + a
        heatmap head trained with the heatmap MSE on the labelled instances only: Table 4's
        "Sup-only", ``trainer.SupOnly``).
    arch: fields of ``lofr.models.LOFRConfig`` (backbone, d_model, enc_layers, ...; not
        num_keypoints / schema / input_size / loss, which come from ``data`` and ``loss``).
        "sup-only" reads only ``backbone`` and ``pretrained``.
    loss: the weights of Eq. 13 / 15; ``loss.mse`` > 0 with ``data.labelled_fraction`` gives the
        weakly semi-supervised setting (Sec. 4.3.2). "baseline" zeroes the CAM / encoder / PDC terms,
        "sup-only" uses the MSE only (weight ``loss.mse``, 1 when it is 0).
    self_train: :class:`SelfTrainConfig` (off unless ``self_train.rounds`` > 0).
    device: "auto" | "cpu" | "cuda" | "cuda:1" ...; amp: "auto" (bf16 where supported, else fp16;
        CUDA only) | "bf16" | "fp16" | "off".
    bn: BatchNorm handling. "batch" = ordinary per-process BatchNorm; "sync" = SyncBatchNorm under
        DDP (CUDA only: torch's SyncBatchNorm refuses CPU tensors); "frozen" = BatchNorm layers kept
        in eval mode (running statistics, not the batch's; their affine weights still train),
        which makes the result independent of how the batch is split over processes; "auto" =
        "sync" under DDP on CUDA, else "batch".
    eval_every: evaluate on val every N epochs (and after the last one); 0 = only at the end.
    max_steps: stop after this many optimiser steps in total (0 = run all epochs); the schedule
        still follows ``optim.epochs``, so a short run is the beginning of the long one.
    log_every: write the loss terms to ``steps.jsonl`` every N steps.
    decode: how evaluation turns a model's maps into keypoints: "argmax" (each map's refined arg-max) or
        "pose_prior" (jointly with a pose model fitted on the training set's locations WITHOUT their images,
        the information the mean-pose prior uses: ``lofr.eval.pose_prior``). Training is the same.
    """

    name: str = "run"
    model: Literal["lofr", "baseline", "cam", "sup-only"] = "lofr"
    arch: dict[str, Any] = field(default_factory=dict)
    loss: LossWeights = field(default_factory=LossWeights)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"
    bn: Literal["auto", "batch", "sync", "frozen"] = "auto"
    eval_every: int = 1
    max_steps: int = 0
    log_every: int = 20
    decode: Literal["argmax", "pose_prior"] = "argmax"
    self_train: SelfTrainConfig = field(default_factory=SelfTrainConfig)

    def check(self) -> "TrainConfig":
        """Raise ConfigError for values that are well-typed but unusable; returns self."""
        d, o = self.data, self.optim
        if len(d.input_size) != 2 or min(d.input_size) <= 0 or d.input_size[0] % 16 or d.input_size[1] % 16:
            raise ConfigError(f"data.input_size must be (H, W), multiples of 16, got {list(d.input_size)}")
        if d.fill not in FILLS:
            raise ConfigError(f"data.fill must be one of {list(FILLS)}, got {d.fill!r}")
        if d.labels not in LABEL_RULES:
            raise ConfigError(f"data.labels must be one of {list(LABEL_RULES)}, got {d.labels!r}")
        if d.labels == "annotation" and d.aug.half_body_prob > 0:
            raise ConfigError("data.labels=annotation (strictly location-free) needs data.aug.half_body_prob=0: "
                              "half-body augmentation picks its crop from the keypoint coordinates")
        if d.labelled_fraction is not None and not 0.0 <= d.labelled_fraction <= 1.0:
            raise ConfigError(f"data.labelled_fraction must be in [0, 1], got {d.labelled_fraction}")
        if not 0.0 <= d.oks_nms_thr <= 1.0:
            raise ConfigError(f"data.oks_nms_thr must be in [0, 1], got {d.oks_nms_thr}")
        if d.cache_views < 0:
            raise ConfigError(f"data.cache_views must be >= 0, got {d.cache_views}")
        if d.cache_views and not (self.arch.get("freeze_to") and self.arch.get("pretrained")):
            raise ConfigError("data.cache_views > 0 caches the frozen part of the backbone once: it needs fixed "
                              "weights, arch.freeze_to > 0 and arch.pretrained=true")
        if d.workers < 0 or d.eval_batch_size < 1:
            raise ConfigError("data.workers must be >= 0 and data.eval_batch_size >= 1")
        if o.lr <= 0 or o.batch_size < 1 or o.epochs < 1:
            raise ConfigError(f"optim: lr > 0, batch_size >= 1 and epochs >= 1 needed "
                              f"(got {o.lr}, {o.batch_size}, {o.epochs})")
        if o.schedule == "multistep" and list(o.milestones) != sorted(o.milestones):
            raise ConfigError(f"optim.milestones must be increasing epochs, got {o.milestones}")
        if self.max_steps < 0 or self.eval_every < 0 or self.log_every < 1:
            raise ConfigError("max_steps >= 0, eval_every >= 0 and log_every >= 1 needed")
        if self.decode not in ("argmax", "pose_prior"):
            raise ConfigError(f"decode must be 'argmax' or 'pose_prior', got {self.decode!r}")
        if self.amp not in ("auto", "bf16", "fp16", "off"):
            raise ConfigError(f"amp must be 'auto', 'bf16', 'fp16' or 'off', got {self.amp!r}")
        st = self.self_train
        if st.rounds < 0 or st.teachers < 1 or not 0.0 < st.top <= 1.0 or st.gate < 0:
            raise ConfigError(f"self_train: rounds >= 0, teachers >= 1, 0 < top <= 1 and gate >= 0 needed "
                              f"(got {st.rounds}, {st.teachers}, {st.top}, {st.gate})")
        lofr_config(self)  # arch keys and values
        return self


def lofr_config(cfg: TrainConfig, num_keypoints: int | None = None) -> LOFRConfig:
    """``cfg.arch`` + the data's schema / input size + ``cfg.loss`` -> a checked LOFRConfig."""
    clash = sorted(set(cfg.arch) & set(ARCH_FROM_ELSEWHERE))
    if clash:
        raise ConfigError(f"arch: {clash} are set from data.schema / data.input_size / loss, not in arch")
    from lofr.data.schemas import get_schema

    try:
        schema = get_schema(cfg.data.schema)
    except ValueError as e:
        raise ConfigError(f"data.schema: {e}") from e
    arch = from_dict(LOFRConfig, dict(cfg.arch), "arch")
    out = dataclasses.replace(arch, num_keypoints=num_keypoints or schema.num_keypoints, schema=schema.name,
                              input_size=tuple(cfg.data.input_size), loss=cfg.loss)
    try:
        out.check()
    except ValueError as e:
        raise ConfigError(str(e)) from e
    return out


def config_path(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a config shipped with lofr (``"synth-cpu"`` ->
    ``lofr/configs/synth-cpu.yaml``)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    shipped = Path(str(resources.files("lofr") / "configs" / f"{name_or_path}.yaml"))
    if not shipped.is_file():
        raise ConfigError(f"no config named {name_or_path!r}: not a file, and not one of the shipped "
                          f"configs {available_configs()}")
    return shipped


def available_configs() -> list[str]:
    """Names of the configs shipped in ``lofr/configs``."""
    folder = Path(str(resources.files("lofr") / "configs"))
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def load_config(path_or_name: str | Path | dict | None = None, overrides: list[str] | tuple = ()) -> TrainConfig:
    """Read a TrainConfig: a shipped config name, a YAML path, a dict (or None = the defaults), then
    the ``key=value`` overrides (``optim.lr=1e-3``, ``data.input_size=[64,48]``). Every key and type
    is checked; the ``name`` defaults to the config file's stem."""
    if path_or_name is None:
        data, where = {}, "defaults"
    elif isinstance(path_or_name, dict):
        data, where = dict(path_or_name), "config"
    else:
        path = config_path(path_or_name)
        data, where = load_yaml(path), str(path)
        data.setdefault("name", path.stem)
    data = apply_overrides(data, list(overrides))
    try:
        cfg = from_dict(TrainConfig, data, "config")
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    try:
        return cfg.check()
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def config_dict(cfg: TrainConfig) -> dict:
    """The resolved config as plain YAML-able data (what checkpoints and run folders store)."""
    return to_dict(cfg)
