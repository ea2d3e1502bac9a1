"""A cache of the FROZEN part of a backbone's feature maps, so that the rest trains many epochs in minutes.

With a backbone frozen up to stride s (``arch.freeze_to``; ``synth-cpu``: the ImageNet
EfficientNet-Lite0 frozen up to stride 8, its stride-16 blocks training) the maps at strides
4 .. s are a fixed function of the crop. Computing them costs more than everything after them on
a CPU (all of Lite0 at 128x96: ~50 crops/s on one thread), so they are computed once and stored,
and training runs only the trainable blocks and the heads on them:

* **training views**: ``K = data.cache_views`` augmented views of every training instance. View
  ``k`` of instance ``i`` is exactly the sample the uncached trainer draws for it in epoch ``k``
  (``SeededSamples`` with seed ``data.cache_seed``: the same crop, flip, rotation, fill and labels),
  and epoch ``e`` of a cached run reads view ``e mod K``. So the first K epochs see what an uncached
  run with seed ``cache_seed`` sees; after that the views repeat. The run's own ``seed`` still draws
  the initial weights and the order of the samples; the augmentation draw is the cache's, shared by
  every run (and every seed) that uses it — that is what makes several seeds cheap.
* **evaluation crops**: each eval crop and its mirror image (the flip test), deterministic.

Layout (``<cache root>/<key>/``; root ``data.cache_dir``, else ``$LOFR_FEATURE_CACHE``, else
``lofr.paths.data_dir() / "feature_cache"``)::

    meta.json                 what was cached (key fields, shapes, sizes); written with the eval part
    val_s{4,8,..}.npy         (2, M, c_s, H/s, W/s) float16: [crop, mirrored crop], memory-mapped
    view{k}/s{4,8,..}.npy     (N, c_s, H/s, W/s) float16: training view k, memory-mapped
    view{k}/targets.npz       labels (N, C), keypoints (N, C, 2), located (N, C): the heatmap targets
                              are rebuilt from them
    view{k}/done.json         how long the view took

Views are added when a run asks for more than the cache holds (``data.cache_views`` = 1 for the
notebooks, 2 for ``synth-cpu``, 4 for the long benchmark: all one cache); view k is the same
whoever builds it.

The key (``lofr.engine.cache_key``) is a hash of everything the stored numbers depend on: the backbone
(name, strides and a hash of its weights), the annotation files (content hash) and image folders (names,
sizes, mtimes), the crop settings (input size, fill, label rule, augmentation) and the augmentation seed. What
differs between the runs that share a cache is not stored: which instances have locations (the
semi-weak subset: read from the run's own dataset) and the heatmap targets' stride and sigma
(rebuilt from the stored keypoints by the run's dataset). Change any of them and a new cache is built; an old one is never read by mistake. A
cache's eval part, and each view, is built into a temporary folder and renamed into place when
complete, so an interrupted build leaves nothing half-written behind (a stale temporary folder is
removed next time).
float16 keeps 3 significant digits; the heads see the maps through a 1x1 conv and GroupNorm /
BatchNorm, and the fp16 rounding (relative 5e-4) is far below what they resolve.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from lofr.data.topdown import TopDownDataset, collate
from lofr.data.transforms import gaussian_heatmaps
from lofr.engine.cache_key import CACHE_VERSION, cache_key
from lofr.engine.runtime import autocast
from lofr.engine.sampling import SeededSamples

__all__ = ["FeatureCache", "CachedTrainSamples", "CachedEvalCrops", "cache_key", "build_feature_cache", "training_cache", "eval_crops",
           "CACHE_VERSION"]

class FeatureCache:
    """An opened cache folder with (at least) ``views`` complete training views: memory-mapped, read-only.

    train[k][j] (N, c, h, w) float16: view k at ``strides[j]``; targets[k]: dict of view k's arrays;
    val_maps[j] (2, M, c, h, w); views; strides; meta (meta.json)."""

    def __init__(self, folder: Path, views: int):
        self.folder = Path(folder)
        meta_file = self.folder / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.folder} is not a feature cache (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        self.strides = tuple(self.meta["fields"]["backbone"]["strides"])
        missing = [k for k in range(views) if not (self.folder / f"view{k}" / "done.json").is_file()]
        if missing:
            raise FileNotFoundError(f"feature cache {self.folder} lacks training view(s) {missing}")
        self.views = views
        self.val_maps = [np.load(self.folder / f"val_s{s}.npy", mmap_mode="r") for s in self.strides]
        self.train, self.targets = [], []
        for k in range(views):
            view = self.folder / f"view{k}"
            self.train.append([np.load(view / f"s{s}.npy", mmap_mode="r") for s in self.strides])
            with np.load(view / "targets.npz") as z:
                self.targets.append({name: z[name] for name in z.files})

    def nbytes(self) -> int:
        return sum(m.nbytes for maps in self.train for m in maps) + sum(m.nbytes for m in self.val_maps)

    def build_seconds(self) -> float:
        """How long the eval crops and the views in use took to build (as recorded when they were)."""
        views = [json.loads((self.folder / f"view{k}" / "done.json").read_text())["build_s"] for k in range(self.views)]
        return float(self.meta.get("val_build_s", 0.0)) + sum(views)


class _TrainViews(Dataset):
    """Index j -> the augmented training sample of view ``views[j // N]``, instance ``j % N`` (for the build)."""

    def __init__(self, dataset: TopDownDataset, seed: int, views: list[int]):
        self.samples, self.views, self.n = SeededSamples(dataset, seed), list(views), len(dataset)

    def __len__(self) -> int:
        return len(self.views) * self.n

    def __getitem__(self, j: int) -> dict:
        k, i = divmod(j, self.n)
        s = self.samples[(self.views[k], i)]
        keep = ("image", "labels", "keypoints", "visible")
        return {k: s[k] for k in keep}


def _forward_into(backbone, loader, outs, offset_of, device, amp, desc, progress, flip: bool = False):
    from tqdm.auto import tqdm

    row = 0
    with torch.inference_mode():
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            images = batch["image"].to(device)  # (B, 3, H, W)
            n = images.shape[0]
            with autocast(device, amp):
                variants = [images, images.flip(-1)] if flip else [images]
                for v, x in enumerate(variants):
                    for out, m in zip(outs, backbone(x)):  # (B, c_s, H/s, W/s)
                        a, b = offset_of(row, n, v)
                        out[a:b] = m.float().cpu().numpy().astype(np.float16)
            yield batch, row, n
            row += n


def _fresh_tmp(parent: Path, name: str) -> Path:
    """``parent/.<name>.tmp-<pid>``, empty; stale ones of dead processes removed first."""
    for stale in parent.glob(f".{name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished ``tmp`` folder to ``final``; if another process got there first, keep theirs."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def build_feature_cache(backbone, train_ds: TopDownDataset, val_ds: TopDownDataset, views: int, seed: int = 0,
                        root=None, device="cpu", amp: str = "off", workers: int = 1, batch_size: int = 64,
                        progress: bool = True, log=print) -> FeatureCache:
    """The cache for these inputs with ``views`` training views (see the module docstring): opened
    when it has them, completed first when it does not (the eval crops, then the missing views).
    ``backbone`` is the frozen part alone (``Backbone(..., strides=(4, .., s), freeze_to=s)``, its maps
    = what is stored). ``log`` gets one line when something was built (what, how big, how long)."""
    from lofr.paths import feature_cache_dir

    if not backbone.freeze_to or tuple(backbone.strides) != backbone.cached_strides:
        raise ValueError("build_feature_cache: the backbone must be frozen (arch.freeze_to > 0; the maps of a backbone "
                         "that trains change every step) and return exactly the maps of its frozen part")
    if views < 1:
        raise ValueError(f"build_feature_cache: views must be >= 1, got {views}")
    if not train_ds.train or val_ds.train:
        raise ValueError("build_feature_cache: needs a training-mode train set and an eval-mode val set")
    key, fields = cache_key(backbone, train_ds, val_ds, seed)
    root = Path(root) if root else feature_cache_dir()
    folder = root / key
    missing = [k for k in range(views) if not (folder / f"view{k}" / "done.json").is_file()]
    if (folder / "meta.json").is_file() and not missing:
        return FeatureCache(folder, views)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    backbone = backbone.to(device).eval()
    h, w = train_ds.input_size
    n, m, c = len(train_ds), len(val_ds), train_ds.schema.num_keypoints
    shapes = {s: (ch, h // s, w // s) for s, ch in zip(backbone.strides, backbone.channels)}
    built = []
    if not (folder / "meta.json").is_file():  # the eval crops and their mirrors, and the folder itself
        tmp = _fresh_tmp(root, key)
        try:
            val_files = [np.lib.format.open_memmap(tmp / f"val_s{s}.npy", "w+", np.float16, (2, m, *shapes[s]))
                         for s in backbone.strides]
            val_out = [a.reshape(2 * m, *a.shape[2:]) for a in val_files]  # the same bytes; mirrors at rows M..
            loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
            for _ in _forward_into(backbone, loader, val_out, lambda r, k, v: (v * m + r, v * m + r + k), device, amp,
                                   f"caching {m} eval crops + mirrors", progress, flip=True):
                pass
            for a in val_files:
                a.flush()
            del val_out, val_files
            meta = {"fields": fields, "key": key, "shapes": {str(s): list(shapes[s]) for s in backbone.strides},
                    "n_train": n, "n_val": m, "val_build_s": round(time.perf_counter() - t0, 1)}
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
            _move_into_place(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        built.append(f"{m} eval crops (+ mirrors)")
    missing = [k for k in range(views) if not (folder / f"view{k}" / "done.json").is_file()]
    if missing:  # the missing training views, in one pass, each renamed into place when complete
        t_views = time.perf_counter()
        tmps = {k: _fresh_tmp(folder, f"view{k}") for k in missing}
        try:
            files = {k: [np.lib.format.open_memmap(tmps[k] / f"s{s}.npy", "w+", np.float16, (n, *shapes[s]))
                         for s in backbone.strides] for k in missing}
            labels = np.zeros((len(missing) * n, c), np.float32)
            keypoints = np.zeros((len(missing) * n, c, 2), np.float32)
            located = np.zeros((len(missing) * n, c), np.float32)
            outs = [_Rows([files[k][j] for k in missing], n) for j in range(len(backbone.strides))]
            loader = DataLoader(_TrainViews(train_ds, seed, missing), batch_size=batch_size, shuffle=False,
                                num_workers=workers, collate_fn=collate)
            for batch, row, k in _forward_into(backbone, loader, outs, lambda r, k, v: (r, r + k), device, amp,
                                               f"caching view(s) {missing} x {n} training crops", progress):
                labels[row:row + k] = batch["labels"].numpy()
                keypoints[row:row + k] = batch["keypoints"].numpy()
                located[row:row + k] = batch["visible"].numpy()
            per_view = (time.perf_counter() - t_views) / len(missing)
            for j, k in enumerate(missing):
                for a in files[k]:
                    a.flush()
                rows = slice(j * n, (j + 1) * n)
                np.savez(tmps[k] / "targets.npz", labels=labels[rows], keypoints=keypoints[rows], located=located[rows])
                (tmps[k] / "done.json").write_text(json.dumps({"build_s": round(per_view, 1), "seed": seed}))
            del files, outs
            for k in missing:
                _move_into_place(tmps[k], folder / f"view{k}")
        except BaseException:
            for t in tmps.values():
                shutil.rmtree(t, ignore_errors=True)
            raise
        built.append(f"view(s) {missing} x {n} training crops")
    cache = FeatureCache(folder, views)
    log(f"feature cache: built {' and '.join(built)} in {time.perf_counter() - t0:.0f} s; {views} view(s) in use, "
        f"{cache.nbytes() / 2**30:.2f} GiB float16 in {folder}")
    return cache


class _Rows:
    """Rows [a, b) of several (N, ...) arrays laid end to end, as one (len * N, ...) array to write into."""

    def __init__(self, arrays: list, n: int):
        self.arrays, self.n = arrays, n

    def __setitem__(self, rows: slice, value: np.ndarray) -> None:
        a, b = rows.start, rows.stop
        done = 0
        while a < b:
            k, i = divmod(a, self.n)
            take = min(b - a, self.n - i)
            self.arrays[k][i:i + take] = value[done:done + take]
            a, done = a + take, done + take


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class CachedTrainSamples(Dataset):
    """``samples[(epoch, index)]`` -> a training sample from the cache: view ``epoch mod K`` of
    instance ``index``. The same keys as :class:`~lofr.engine.sampling.SeededSamples` (so
    ``EpochBatches`` drives both), and the fields the criterion reads: ``feats`` (the backbone's maps,
    float32), ``labels``, ``heatmaps`` (rebuilt from the cached keypoints at the dataset's heatmap
    stride and sigma), ``target_weight``,
    ``has_location`` (the dataset's: its semi-weak subset). ``feats`` are the frozen part's maps; the
    model's backbone runs the rest."""

    def __init__(self, cache: FeatureCache, dataset: TopDownDataset):
        self.cache, self.n = cache, len(dataset)
        self.input_size, self.stride, self.sigma = dataset.input_size, dataset.heatmap_stride, dataset.sigma
        self.has_location = np.array([r.has_location for r in dataset.records], np.float32)
        if cache.meta["n_train"] != self.n:
            raise ValueError(f"feature cache {cache.folder} holds {cache.meta['n_train']} training crops, "
                             f"the dataset {self.n}")

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        v = epoch % self.cache.views
        t = self.cache.targets[v]
        kp, located = t["keypoints"][index], t["located"][index]
        return {
            "feats": [torch.from_numpy(np.asarray(m[index], dtype=np.float32)) for m in self.cache.train[v]],
            "labels": torch.from_numpy(t["labels"][index].copy()),
            "heatmaps": torch.from_numpy(gaussian_heatmaps(kp, located, self.input_size, self.stride, self.sigma)),
            "target_weight": torch.from_numpy(located.copy()),
            "has_location": torch.tensor(float(self.has_location[index])),
        }


class CachedEvalCrops(Dataset):
    """An eval-mode dataset's crops from the cache: ``feats`` / ``feats_flip`` (the maps of the crop
    and of its mirror image) and the ``meta`` that maps predictions back to the image (no image is
    read). Has ``schema``, ``input_size``, ``records`` of the dataset it stands for."""

    def __init__(self, cache: FeatureCache, dataset: TopDownDataset):
        if dataset.train:
            raise ValueError("CachedEvalCrops needs an eval-mode dataset")
        if cache.meta["n_val"] != len(dataset):
            raise ValueError(f"feature cache {cache.folder} holds {cache.meta['n_val']} eval crops, "
                             f"the dataset {len(dataset)}")
        self.cache, self.dataset = cache, dataset
        self.maps = cache.val_maps
        # what evaluate() reads of an eval dataset
        self.train, self.schema, self.input_size = False, dataset.schema, dataset.input_size
        self.coco, self.records = dataset.coco, dataset.records

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        p = self.dataset.crop_params(index)
        rec = self.dataset.records[index]
        return {
            "feats": [torch.from_numpy(np.asarray(m[0, index], dtype=np.float32)) for m in self.maps],
            "feats_flip": [torch.from_numpy(np.asarray(m[1, index], dtype=np.float32)) for m in self.maps],
            "meta": {"center": torch.as_tensor(p.center, dtype=torch.float32),
                     "scale": torch.as_tensor(p.scale, dtype=torch.float32),
                     "rotation": float(p.rotation), "flipped": int(p.flip),
                     "image_id": rec.image_id, "ann_id": rec.ann_id, "index": index},
        }


def training_cache(cfg, model, train_ds: TopDownDataset, val_ds: TopDownDataset, device, amp: str, is_main: bool,
                   distributed: bool, progress: bool, say=print) -> tuple[CachedTrainSamples, CachedEvalCrops]:
    """The trainer's side (``data.cache_views`` > 0): build or open the cache for ``cfg`` and hand
    out (training samples, eval crops) holding the maps of ``model``'s frozen backbone part.

    The cache is computed by the pretrained backbone's frozen part alone (strides 4 .. freeze_to),
    so LOFR, the baseline, the plain CAM and Sup-only share it whatever maps each reads; the model's
    own frozen weights must be those (they are when both are the pretrained ones; checked). Under
    DDP rank 0 builds, the others wait and open it."""
    import torch.distributed as dist

    from lofr.models.backbone import Backbone

    core = model.module if hasattr(model, "module") else model
    own = core.backbone
    frozen_part = Backbone(own.name, pretrained=True, strides=own.cached_strides, freeze_to=own.freeze_to)
    ref = frozen_part.state_dict()
    frozen_ids = {id(t) for m in own.frozen_modules() for t in [*m.parameters(), *m.buffers()]}
    for k, t in own.state_dict(keep_vars=True).items():
        if id(t) in frozen_ids and k in ref and not torch.equal(t.detach().cpu(), ref[k]):
            raise ValueError(f"the model's frozen backbone weight {k} is not the pretrained one: a feature cache "
                             "stands for the pretrained weights only")
    d = cfg.data
    # building is mostly JPEG decoding and warping: one loader process at least, whatever training uses
    kwargs = dict(views=d.cache_views, seed=d.cache_seed, root=d.cache_dir or None, device=device, amp=amp,
                  workers=max(1, d.workers), batch_size=d.eval_batch_size, progress=progress, log=say)
    if is_main:
        cache = build_feature_cache(frozen_part, train_ds, val_ds, **kwargs)
    if distributed:
        dist.barrier()
    if not is_main:
        cache = build_feature_cache(frozen_part, train_ds, val_ds, **kwargs)  # built by rank 0: opened
    return CachedTrainSamples(cache, train_ds), CachedEvalCrops(cache, val_ds)


def eval_crops(cfg, model, train_ds: TopDownDataset, val_ds: TopDownDataset):
    """What to evaluate a trained ``model`` of ``cfg`` on: the cached eval crops when ``cfg`` caches
    (``data.cache_views`` > 0; built when missing), else ``val_ds`` itself (its images)."""
    if not cfg.data.cache_views:
        return val_ds
    device = next(model.parameters()).device
    return training_cache(cfg, model, train_ds, val_ds, device, "off", True, False, False)[1]
