"""What the trainer feeds the model, reproducibly: ``build_datasets`` (train / val ``TopDownDataset``
from ``cfg.data``), ``SeededSamples`` (a sample's augmentation is a function of (seed, epoch, index)
only) and ``EpochBatches`` (the order of the samples is a function of (seed, epoch) only, split over
DDP ranks). See ``lofr.engine.trainer``'s docstring for why resume needs both."""

from __future__ import annotations

import copy

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler

from lofr.config_utils import ConfigError
from lofr.data.schemas import get_schema
from lofr.data.topdown import TopDownDataset
from lofr.engine.config import TrainConfig, lofr_config

__all__ = ["sample_seed", "SeededSamples", "EpochBatches", "build_datasets", "pseudo_source", "prior_dataset", "output_stride"]


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
            # the CPU generator only: torch.manual_seed would also reseed every CUDA generator (which
            # fork_rng(devices=[]) does not restore) and costs ~5 ms a call in torch 2.14 (a stack trace)
            torch.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
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
    common = dict(schema=d.schema, input_size=tuple(d.input_size), fill=d.fill, on_bad=d.on_bad,
                  heatmap_stride=output_stride(cfg))
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


def pseudo_source(dataset) -> str | None:
    """The annotation file a pseudo-label file was made from (``lofr_pseudo_label.source``, written by
    ``lofr.selftrain.pseudo_label``), or None when ``dataset``'s annotations are not pseudo-labels."""
    return dataset.coco.dataset.get("lofr_pseudo_label", {}).get("source")


def prior_dataset(cfg: TrainConfig, train_ds):
    """The training set whose poses the mean-pose prior (and ``decode="pose_prior"``) are fitted on: ``train_ds``
    itself, unless its annotations are a self-training student's pseudo-labels (``lofr.selftrain``), whose
    locations are a teacher's predictions: then the annotation file they were made from (its ``source``)."""
    source = pseudo_source(train_ds)
    if not source:
        return train_ds
    src = copy.deepcopy(cfg)
    src.data.train_ann = str(source)
    return build_datasets(src, val=False)[0]


def output_stride(cfg: TrainConfig) -> int:
    """The stride of the maps ``cfg.model`` predicts keypoints from, where the heatmap targets must
    live: Sup-only's heatmaps 4; LOFR's fused response = its finest encoder map (``ms_strides[0]``,
    or ``single_scale_stride``); the baseline's ``single_scale_stride``; the plain CAM's ``cam_stride``."""
    if cfg.model == "sup-only":
        return 4
    arch = lofr_config(cfg)
    if cfg.model == "cam":
        return arch.cam_stride
    if cfg.model == "baseline" or not arch.multi_scale:
        return arch.single_scale_stride
    return min(arch.ms_strides)


def _train_indices(cfg: TrainConfig, dataset: TopDownDataset) -> list[int]:
    """Every instance, or for Sup-only those with locations (``has_location`` = 1)."""
    if cfg.model != "sup-only":
        return list(range(len(dataset)))
    idx = [i for i, r in enumerate(dataset.records) if r.has_location == 1.0]
    if not idx:
        raise ConfigError(f"sup-only: no training instance has locations (data.labelled_fraction = "
                          f"{cfg.data.labelled_fraction} of {len(dataset)} instances)")
    return idx
