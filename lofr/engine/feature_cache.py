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

    meta.json                 what was cached (key fields, shapes, build time); written last
    train_s{4,8,..}.npy       (K, N, c_s, H/s, W/s) float16, memory-mapped
    train_targets.npz         labels (K, N, C), keypoints (K, N, C, 2), located (K, N, C): the
                              heatmap targets are rebuilt from them
    val_s{4,8,16}.npy         (2, M, c_s, H/s, W/s) float16: [crop, mirrored crop]

The key is a hash of everything the stored numbers depend on: the backbone (name, strides and a
hash of its weights), the annotation files (content hash) and image folders (names, sizes,
mtimes), the crop settings (input size, fill, label rule, augmentation, the seed) and ``K``. What
differs between the runs that share a cache is not stored: which instances have locations (the
semi-weak subset: read from the run's own dataset) and the heatmap targets' stride and sigma
(rebuilt from the stored keypoints by the run's dataset). Change any of them and a new cache is built; an old one is never read by mistake. A
cache is built into a temporary folder and renamed into place when complete, so an interrupted
build leaves nothing half-written behind (a stale temporary folder is removed next time).
float16 keeps 3 significant digits; the heads see the maps through a 1x1 conv and GroupNorm /
BatchNorm, and the fp16 rounding (relative 5e-4) is far below what they resolve.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
from lofr.engine.runtime import autocast
from lofr.engine.sampling import SeededSamples

__all__ = ["FeatureCache", "CachedTrainSamples", "CachedEvalCrops", "cache_key", "build_feature_cache", "training_cache", "eval_crops",
           "CACHE_VERSION"]

CACHE_VERSION = 1  # bump when the layout or what a view holds changes


def _file_digest(path: Path, h) -> None:
    h.update(str(Path(path).resolve()).encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def _folder_digest(folder: Path, h) -> None:
    """Names, sizes and modification times of the images (reading 5000 JPEGs would cost seconds)."""
    h.update(str(Path(folder).resolve()).encode())
    with os.scandir(folder) as it:
        for e in sorted(it, key=lambda e: e.name):
            st = e.stat()
            h.update(f"{e.name}:{st.st_size}:{st.st_mtime_ns};".encode())


def _weights_digest(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def cache_key(backbone, train_ds: TopDownDataset, val_ds: TopDownDataset, views: int, seed: int) -> tuple[str, dict]:
    """(hex key, the dict it hashes) for caching ``backbone``'s maps of ``views`` augmented views of
    ``train_ds`` (drawn with ``seed``) and of ``val_ds``'s eval crops."""
    fields = {
        "version": CACHE_VERSION,
        "backbone": {"name": backbone.name, "strides": list(backbone.strides), "channels": list(backbone.channels),
                     "weights": _weights_digest(backbone)},
        "views": int(views), "seed": int(seed),
    }
    h = hashlib.sha1()
    for split, ds in (("train", train_ds), ("val", val_ds)):
        dh = hashlib.sha1()
        _file_digest(ds.ann_file, dh)
        _folder_digest(ds.img_dir, dh)
        fields[split] = {
            "data": dh.hexdigest(), "n": len(ds), "input_size": list(ds.input_size), "fill": ds.fill,
            "labels": ds.label_rule, "train": ds.train, "aug": dataclasses.asdict(ds.aug) if ds.train else None,
        }
    h.update(json.dumps(fields, sort_keys=True).encode())
    return h.hexdigest()[:16], fields


class FeatureCache:
    """An opened (complete) cache folder: memory-mapped arrays, read-only.

    train_maps[s] (K, N, c, h, w) float16; val_maps[s] (2, M, c, h, w); targets: dict of arrays;
    views K; strides; meta (meta.json)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta_file = self.folder / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{self.folder} is not a complete feature cache (no meta.json)")
        self.meta = json.loads(meta_file.read_text())
        self.strides = tuple(self.meta["fields"]["backbone"]["strides"])
        self.views = int(self.meta["fields"]["views"])
        self.train_maps = [np.load(self.folder / f"train_s{s}.npy", mmap_mode="r") for s in self.strides]
        self.val_maps = [np.load(self.folder / f"val_s{s}.npy", mmap_mode="r") for s in self.strides]
        with np.load(self.folder / "train_targets.npz") as z:
            self.targets = {k: z[k] for k in z.files}

    def nbytes(self) -> int:
        return sum(m.nbytes for m in self.train_maps + self.val_maps)


class _TrainViews(Dataset):
    """Key (view, index) -> the augmented training sample (for the build)."""

    def __init__(self, dataset: TopDownDataset, seed: int, views: int):
        self.samples, self.views, self.n = SeededSamples(dataset, seed), views, len(dataset)

    def __len__(self) -> int:
        return self.views * self.n

    def __getitem__(self, j: int) -> dict:
        s = self.samples[divmod(j, self.n)]
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


def build_feature_cache(backbone, train_ds: TopDownDataset, val_ds: TopDownDataset, views: int, seed: int = 0,
                        root=None, device="cpu", amp: str = "off", workers: int = 1, batch_size: int = 64,
                        progress: bool = True, log=print) -> FeatureCache:
    """The cache for these inputs (see the module docstring): opened when it exists, built first
    when it does not. ``backbone`` is the frozen part alone (``Backbone(..., strides=(4, .., s), freeze_to=s)``,
    its maps = what is stored). ``log`` gets one
    line when a cache is built (where, how big, how long)."""
    from lofr.paths import feature_cache_dir

    if not backbone.freeze_to or tuple(backbone.strides) != backbone.cached_strides:
        raise ValueError("build_feature_cache: the backbone must be frozen (arch.freeze_to > 0; the maps of a backbone "
                         "that trains change every step) and return exactly the maps of its frozen part")
    if views < 1:
        raise ValueError(f"build_feature_cache: views must be >= 1, got {views}")
    if not train_ds.train or val_ds.train:
        raise ValueError("build_feature_cache: needs a training-mode train set and an eval-mode val set")
    key, fields = cache_key(backbone, train_ds, val_ds, views, seed)
    root = Path(root) if root else feature_cache_dir()
    folder = root / key
    if (folder / "meta.json").is_file():
        return FeatureCache(folder)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(f".{key}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and _pid_alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = root / f".{key}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    t0 = time.perf_counter()
    try:
        backbone = backbone.to(device).eval()
        h, w = train_ds.input_size
        n, m, c = len(train_ds), len(val_ds), train_ds.schema.num_keypoints
        shapes = {s: (ch, h // s, w // s) for s, ch in zip(backbone.strides, backbone.channels)}
        train_files = [np.lib.format.open_memmap(tmp / f"train_s{s}.npy", "w+", np.float16, (views, n, *shapes[s]))
                       for s in backbone.strides]
        val_files = [np.lib.format.open_memmap(tmp / f"val_s{s}.npy", "w+", np.float16, (2, m, *shapes[s]))
                     for s in backbone.strides]
        train_out = [a.reshape(views * n, *a.shape[2:]) for a in train_files]  # views of the same bytes
        val_out = [a.reshape(2 * m, *a.shape[2:]) for a in val_files]
        labels = np.zeros((views * n, c), np.float32)
        keypoints = np.zeros((views * n, c, 2), np.float32)
        located = np.zeros((views * n, c), np.float32)

        loader = DataLoader(_TrainViews(train_ds, seed, views), batch_size=batch_size, shuffle=False,
                            num_workers=workers, collate_fn=collate)
        rows = _forward_into(backbone, loader, train_out, lambda r, k, v: (r, r + k), device, amp,
                             f"caching {views} view(s) x {n} training crops", progress)
        for batch, row, k in rows:
            labels[row:row + k] = batch["labels"].numpy()
            keypoints[row:row + k] = batch["keypoints"].numpy()
            located[row:row + k] = batch["visible"].numpy()
        loader = DataLoader(val_ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate)
        # mirrored crops go to rows M.. 2M - 1
        for _ in _forward_into(backbone, loader, val_out, lambda r, k, v: (v * m + r, v * m + r + k), device, amp,
                               f"caching {m} eval crops + mirrors", progress, flip=True):
            pass
        for a in train_files + val_files:
            a.flush()
        del train_out, val_out, train_files, val_files
        np.savez(tmp / "train_targets.npz", labels=labels.reshape(views, n, c),
                 keypoints=keypoints.reshape(views, n, c, 2), located=located.reshape(views, n, c))
        meta = {"fields": fields, "key": key, "build_s": round(time.perf_counter() - t0, 1),
                "shapes": {str(s): list(shapes[s]) for s in backbone.strides}, "n_train": n, "n_val": m}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, folder)
        except OSError:  # another process built the same cache meanwhile: use that one
            if not (folder / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return FeatureCache(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    cache = FeatureCache(folder)
    log(f"feature cache built in {meta['build_s']:.0f} s: {views} view(s) x {n} training crops + {m} eval crops "
        f"(and their mirrors), {cache.nbytes() / 2**30:.2f} GiB float16 in {folder}")
    return cache


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
        self.maps = cache.train_maps
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
        t = self.cache.targets
        kp, located = t["keypoints"][v, index], t["located"][v, index]
        return {
            "feats": [torch.from_numpy(np.asarray(m[v, index], dtype=np.float32)) for m in self.maps],
            "labels": torch.from_numpy(t["labels"][v, index].copy()),
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
