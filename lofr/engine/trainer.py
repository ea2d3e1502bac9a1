"""The training loop (paper Sec. 4.2): ``train(cfg, out_dir)``, ``train_step``, the lr schedule, DDP.

The rest of the training API lives beside it, one job per module, and is re-exported here so that
``from lofr.engine.trainer import ...`` keeps working: ``lofr.engine.models`` (``build_model``,
``SupOnly``, ``loss_weights``, ``param_groups``, ``load_model``), ``lofr.engine.sampling``
(``build_datasets``, ``SeededSamples``, ``EpochBatches``, ``sample_seed``),
``lofr.engine.evaluation`` (``evaluate``, ``predict_records``, ``records_to_results``),
``lofr.engine.resume`` (loading and checking ``last.pt``) and ``lofr.engine.diagnostics``
(``attention_qk_scales``, the dead-attention warning).

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
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader

from lofr.config_utils import ConfigError
from lofr.data.topdown import collate, location_prior, mean_pose_prior
from lofr.engine.checkpoint import save_checkpoint
from lofr.engine.config import TrainConfig, config_dict
# what is imported here and not used is re-exported (see the module docstring)
from lofr.engine.diagnostics import attention_qk_scales, dead_attention_warning
from lofr.engine.evaluation import (_maps_and_probs, evaluate, pose_prior_for, predict_records,  # noqa: F401
                                    records_to_results)
from lofr.engine.models import SupOnly, build_model, load_model, loss_weights, param_groups  # noqa: F401
from lofr.engine.resume import check_resumable, resume_state
from lofr.engine.runtime import autocast, init_distributed, pick_device, rng_state, seed_everything
from lofr.engine.sampling import (EpochBatches, SeededSamples, _data_root, _train_indices,  # noqa: F401
                                  build_datasets, prior_dataset, sample_seed)
from lofr.errors import OutputExistsError
from lofr.models.lofr import LOFR
from lofr.models.losses import LOFRCriterion, LossWeights

__all__ = ["train", "evaluate", "predict_records", "records_to_results", "build_model", "build_datasets",
           "loss_weights", "param_groups", "lr_factor", "SupOnly", "SeededSamples", "EpochBatches",
           "sample_seed", "load_model", "train_step", "attention_qk_scales"]

log = logging.getLogger("lofr.train")
_dead_attention_warning = dead_attention_warning  # its name before the split (tests use it)


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


def _amp_mode(device: torch.device, amp: str) -> str:
    """Resolve "auto" as runtime.autocast does: bf16 / fp16 on CUDA, "off" elsewhere."""
    if device.type != "cuda" or amp in ("off", "none", "fp32"):
        return "off"
    if amp == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


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


_TARGETS = ("labels", "heatmaps", "target_weight", "has_location")


def train_step(model: nn.Module, criterion: LOFRCriterion, optimizer: torch.optim.Optimizer, scaler,
               batch: dict, device: torch.device, amp: str = "off", grad_clip: float = 0.0,
               where: str = "") -> dict[str, float]:
    """One optimiser step on ``batch``: forward (under autocast; losses in float32), backward through
    the AMP ``scaler`` (a no-op unless fp16), optional gradient clipping, step. Returns the loss
    terms as floats; a non-finite loss raises FloatingPointError naming ``where`` and every term."""
    if "feats" in batch:  # a frozen backbone's cached maps [(B, c_s, H/s, W/s)] (lofr.engine.feature_cache)
        inputs = [f.to(device, non_blocking=True) for f in batch["feats"]]
    else:
        inputs = batch["image"].to(device, non_blocking=True)  # (B, 3, H, W)
    targets = {k: batch[k].to(device, non_blocking=True) for k in _TARGETS}
    with autocast(device, amp):
        outputs = model(inputs)
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


def _summary_line(epoch: int, record: dict) -> str:
    keys = ("AP", "PCK@0.2", "PCKh", "px err")
    line = f"epoch {epoch + 1} step {record['step']}: loss {record['train'].get('total', float('nan')):.4f}  "
    line += "  ".join(f"{k} {v:.3f}" for k, v in record["val"].items() if k in keys)
    if record["prior"]:
        line += f"  (mean-pose prior PCK@0.2 {record['prior'].get('PCK@0.2', float('nan')):.3f})"
    return line


class _Run:
    """Appends JSON lines to the run folder (rank 0 only) and prints through tqdm, on stderr with the
    progress bars (stdout is for results: ``lofr quickstart > log.txt`` holds the tables only)."""

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

            tqdm.write(msg, file=sys.stderr)


def _set_bn_eval(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def train(cfg: TrainConfig, out_dir, resume: bool = False, progress: bool = True, overwrite: bool = False) -> dict:
    """Train ``cfg`` into ``out_dir`` (see the module docstring for what is written there).

    resume: continue from ``out_dir/last.pt`` (CheckpointError when it is missing or unreadable;
        ConfigError when the model / data / seed / batch differ from the checkpoint's).
    overwrite: start afresh in an ``out_dir`` that already holds a run (its files are replaced);
        without it (and without ``resume``) such a folder raises FileExistsError.
    progress: tqdm bars and one summary line per evaluation (rank 0 only).
    ``cfg.self_train.rounds`` > 0: a teacher and its students (``lofr.selftrain.self_train``, one process only),
    each trained here into a subfolder; ``out_dir/last.pt`` is the last student's.
    Under ``torchrun`` (RANK / WORLD_SIZE set) this is one process of a DDP run.

    Returns ``{"out_dir", "step", "epoch", "history" (the metrics.jsonl records), "best"
    ({"metric", "value", "step"} or None), "world_size", "batch_per_process", "effective_batch",
    "lr" ({group: base lr}), "steps_per_epoch", "last", "best_checkpoint"}``.
    """
    cfg.check()
    if cfg.self_train.rounds:  # teacher -> pseudo-labels -> student(s): lofr.selftrain, which calls back here
        from lofr.selftrain import self_train

        return self_train(cfg, out_dir, resume=resume, progress=progress, overwrite=overwrite)
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
        raise OutputExistsError(f"{out_dir} already holds a run (last.pt): pass resume=True (--resume) to continue "
                                "it, overwrite=True (--overwrite) to start it again, or choose another folder")
    # a last.pt this config cannot continue fails now, not after minutes of feature caching
    saved = check_resumable(out_dir / "last.pt", cfg) if resume else None
    if di.enabled:  # rank 0 alone generates SynthPose when it is missing; the others wait for it
        if di.is_main:
            _data_root(cfg)
        dist.barrier()
    seed_everything(cfg.seed)  # the same initial weights on every rank
    train_ds, val_ds = build_datasets(cfg, train=True, val=di.is_main or cfg.data.cache_views > 0)
    if cfg.model == "lofr" and cfg.data.labelled_fraction is not None and not cfg.loss.mse:
        log.warning("data.labelled_fraction is set but loss.mse = 0: the locations are never used")
    batches = EpochBatches(_train_indices(cfg, train_ds), per_rank, cfg.seed, di.rank, di.world_size)
    spe = batches.steps_per_epoch
    if spe == 0:
        raise ConfigError(f"optim.batch_size {o.batch_size} is larger than the {len(batches.indices)} training "
                          f"instances: not a single step per epoch")
    model = build_model(cfg, train_ds.schema.num_keypoints).to(device)
    if getattr(model, "prior_bias_scale", None) is not None:  # arch.dec_prior_bias: the training poses' spread
        model.set_location_prior(*location_prior(train_ds))  # (a resumed run reloads the same buffers)
    samples, eval_ds = SeededSamples(train_ds, cfg.seed), val_ds
    if cfg.data.cache_views:  # the heads train on a frozen backbone's cached maps (lofr.engine.feature_cache)
        from lofr.engine.feature_cache import training_cache

        samples, eval_ds = training_cache(cfg, model, train_ds, val_ds, device, amp, di.is_main, di.enabled,
                                          progress, run.say)
    loader = DataLoader(samples, batch_sampler=batches, collate_fn=collate,
                        num_workers=cfg.data.workers, persistent_workers=cfg.data.workers > 0,
                        pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed))  # never draws from the global RNG
    if bn == "sync" and di.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    criterion = LOFRCriterion(loss_weights(cfg, model))
    groups = param_groups(model, o)
    opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(groups, lr=o.lr, weight_decay=o.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    poses_ds = prior_dataset(cfg, train_ds) if di.is_main else None  # a student's: its teacher's training poses
    prior_pose = mean_pose_prior(poses_ds) if di.is_main else None
    pose_model = pose_prior_for(cfg, poses_ds) if di.is_main else None  # decode="pose_prior"

    step, history, best = 0, [], None
    if resume:
        step, history, best = resume_state(saved, model, optimizer, scaler)
        run.say(f"resumed from {out_dir / 'last.pt'} at step {step} (epoch {step // spe})")
    # the run folder is touched only now: bad data, a bad config or an unreadable / mismatched last.pt
    # (all raised above) leave no folder behind, nor a config.yaml that is not the checkpoint's
    if di.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            for name in ("steps.jsonl", "metrics.jsonl", "results.json", "best.pt", "last.pt"):
                (out_dir / name).unlink(missing_ok=True)
        (out_dir / "config.yaml").write_text(yaml.safe_dump(config_dict(cfg), sort_keys=False))
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
            report = evaluate(core, eval_ds, cfg.data.eval_batch_size, cfg.data.flip_test, device, amp,
                              prior_pose=prior_pose, results_file=out_dir / "results.json", pose_prior=pose_model)
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
            warning = None if warned_dead else dead_attention_warning(scales, o.optimizer)
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
