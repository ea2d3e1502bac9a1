"""The feature cache's key: a hash of everything a cached backbone map depends on.

The backbone (name, strides, channels and a hash of its weights), each split's annotation file (content
hash) and image folder (names, sizes, mtimes: reading 5000 JPEGs would cost seconds), the crop
settings (input size, fill, label rule, augmentation) and the augmentation seed. Change any of them and
``lofr.engine.feature_cache`` builds a new cache; an old one is never read by mistake.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import torch

from lofr.data.topdown import TopDownDataset

__all__ = ["CACHE_VERSION", "cache_key"]

CACHE_VERSION = 2  # bump when the layout or what a view holds changes (2: one folder per view)


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


def cache_key(backbone, train_ds: TopDownDataset, val_ds: TopDownDataset, seed: int) -> tuple[str, dict]:
    """(hex key, the dict it hashes) for caching ``backbone``'s maps of augmented views of ``train_ds``
    (drawn with ``seed``; any number of them) and of ``val_ds``'s eval crops."""
    fields = {
        "version": CACHE_VERSION,
        "backbone": {"name": backbone.name, "strides": list(backbone.strides), "channels": list(backbone.channels),
                     "weights": _weights_digest(backbone)},
        "seed": int(seed),
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
