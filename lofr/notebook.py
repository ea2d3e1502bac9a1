"""The notebooks' fixed opening cell and their cache (``notebooks/*.ipynb``).

Every notebook starts with::

    PROFILE = "cpu-small"          # <- the one switch: "cpu-small" (laptop, minutes) or "gpu-full"
    from lofr.notebook import setup
    S = setup(seed=0, profile=PROFILE)

``setup`` seeds python / numpy / torch, picks the device, makes sure SynthPose is there (generated
once into ``data/synthpose``) and names the cache folder ``data/notebook_cache`` (git-ignored).
Nothing else differs between a laptop and a GPU run: the profile carries the input size, the
training config and its overrides, and how many steps the notebooks train.

Artefacts a later notebook needs are cached there and recomputed when missing, so every notebook
also runs on its own:

* :func:`cached_train` trains a config once (``lofr.engine.trainer.train``) into
  ``cache/<name>-<hash of the resolved config and of the training code>/`` and reloads its
  checkpoint on reruns; a changed config (e.g. someone retuned ``synth-cpu.yaml``) or changed model /
  loss / data / trainer code gets a new hash and is trained afresh;
* :func:`cached_result` does the same for any picklable result of a function (e.g. the label-leak
  probe), keyed by a dict of its parameters.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from lofr.engine.checkpoint import load_checkpoint
from lofr.engine.config import TrainConfig, config_dict, load_config
from lofr.engine.runtime import pick_device, seed_everything
from lofr.paths import data_dir

try:  # POSIX: cached_train's lock; elsewhere runs are not locked (one kernel at a time)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = ["Profile", "PROFILES", "Setup", "setup", "CachedRun", "cached_train", "cached_result", "config_key",
           "subset_annotations", "short_path"]

_REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Profile:
    """What changes between a laptop and a GPU run of the notebooks.

    config: a shipped training config (``lofr/configs/<config>.yaml``); overrides: ``key=value``
    strings applied on top (``lofr.engine.config.load_config``); train_steps: optimiser steps of the
    notebooks' training runs (0 = the config's full schedule); input_size: (H, W) crops;
    probe_steps: training steps of the label-leak probe's classifiers; threads: torch's CPU threads
    (None: torch's default).
    """

    name: str
    config: str
    input_size: tuple[int, int]
    train_steps: int
    overrides: tuple[str, ...] = ()
    device: str = "auto"
    probe_steps: int = 300
    threads: int | None = None  # torch CPU threads; None = torch's default

    def all_overrides(self) -> list[str]:
        h, w = self.input_size
        return [f"device={self.device}", f"data.input_size=[{h},{w}]", f"max_steps={self.train_steps}",
                *self.overrides]


PROFILES: dict[str, Profile] = {
    # The synth-cpu testbed (ImageNet Lite0 frozen to stride 8, its maps cached) for 200 steps, less
    # than one epoch, so one cached view (synth-cpu's first: the same cache) is all it reads: the first
    # notebook that trains builds it (~2 min) and every later one reuses it. Minutes on 2 cores; the
    # full synth-cpu budget is `lofr quickstart` / benchmarks/synth_claim.py (README).
    # One torch thread: on a 2-core machine as fast as two when it is idle and 10-50x faster when
    # anything else runs (thread oversubscription), and the same numbers on every machine.
    "cpu-small": Profile("cpu-small", "synth-cpu", (128, 96), train_steps=200, device="cpu",
                         overrides=("data.workers=0", "eval_every=0", "data.cache_views=1"), threads=1),
    # One GPU: the paper's layout on the same backbone — 256x192 crops, the encoder on strides 4 / 8 / 16,
    # the whole backbone fine-tuned (no cache), 40 epochs. (The COCO / MPII / CrowdPose recipes are
    # notebook 08's.)
    "gpu-full": Profile("gpu-full", "synth-cpu", (256, 192), train_steps=0, device="auto",
                        overrides=("data.workers=8", "amp=auto", "arch.freeze_to=0", "data.cache_views=0",
                                   "arch.ms_strides=[4,8,16]", "arch.single_scale_stride=4", "optim.epochs=40"),
                        probe_steps=1000),
}


def short_path(path) -> str:
    """``path`` relative to the repository (or the home folder) when inside it, for printing:
    notebook outputs must not depend on where the checkout lives."""
    p = Path(path).resolve()
    for base, prefix in ((_REPO, ""), (Path.home().resolve(), "~/")):
        try:
            return prefix + str(p.relative_to(base))
        except ValueError:
            continue
    return str(p)


@dataclass
class Setup:
    """What the opening cell gives every notebook."""

    profile: Profile
    device: torch.device
    seed: int
    data_root: Path  # SynthPose (COCO layout)
    cache_dir: Path  # data/notebook_cache

    def config(self, *overrides: str, name: str | None = None) -> TrainConfig:
        """The profile's TrainConfig (its config file + overrides), then ``overrides``, with
        ``seed`` = this setup's seed."""
        cfg = load_config(self.profile.config, [*self.profile.all_overrides(), f"seed={self.seed}", *overrides])
        if name is not None:
            cfg.name = name
        return cfg

    def ann_file(self, split: str = "val") -> Path:
        return self.data_root / "annotations" / f"person_keypoints_{split}2017.json"

    def img_dir(self, split: str = "val") -> Path:
        return self.data_root / f"{split}2017"


def setup(seed: int = 0, profile: str | None = None, data_root=None, cache_dir=None, quiet: bool = False) -> Setup:
    """Seed, device, paths. ``profile`` None = ``$LOFR_PROFILE``, else "cpu-small".

    data_root: a SynthPose folder (default ``lofr.paths.synthpose_dir()``, generated when missing);
    cache_dir: default ``<data>/notebook_cache``. Prints one line (paths relative to the repo)."""
    name = profile or os.environ.get("LOFR_PROFILE", "cpu-small")
    if name not in PROFILES:
        raise ValueError(f"unknown PROFILE {name!r}: choose one of {sorted(PROFILES)}")
    prof = PROFILES[name]
    from lofr.data.synth import ensure_synthpose

    seed_everything(seed)
    if prof.threads is not None:
        torch.set_num_threads(prof.threads)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 72, "savefig.dpi": 72})  # keeps the stored notebooks small
    device = pick_device(prof.device)
    root = ensure_synthpose(data_root, progress=False)
    cache = Path(cache_dir) if cache_dir is not None else data_dir() / "notebook_cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not quiet:
        h, w = prof.input_size
        print(f"PROFILE {name}: device {device.type}, seed {seed}, {h}x{w} crops, "
              f"{prof.train_steps or 'all'} training steps; SynthPose in {short_path(root)}, cache in {short_path(cache)}")
    return Setup(prof, device, seed, root, cache)


# ------------------------------------------------------------------------------------ caching
# the modules whose code decides what a training run produces (model, losses, data, trainer)
CODE_FILES = ("models/*.py", "engine/*.py", "data/topdown.py", "data/transforms.py", "data/schemas.py")


@functools.lru_cache(maxsize=None)
def code_fingerprint() -> str:
    """10 hex digits of the source of the modules that decide what a run trains (``CODE_FILES``):
    a cached model trained by older code must not be reloaded as if the current code had made it."""
    pkg = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for pattern in CODE_FILES:
        for f in sorted(pkg.glob(pattern)):
            h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:10]


def config_key(cfg: TrainConfig) -> str:
    """10 hex digits identifying a resolved config (its YAML-able dict, keys sorted) AND the code that
    trains it (:func:`code_fingerprint`): editing the model, the losses, the data pipeline or the
    trainer retrains the notebooks' cached models instead of silently reusing stale ones."""
    blob = json.dumps(config_dict(cfg), sort_keys=True, default=str) + code_fingerprint()
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


@dataclass
class CachedRun:
    """A trained model from the notebook cache.

    history: the run's metrics.jsonl records (``record["val"]`` = AP / PCK / px err of the
    evaluation, ``record["prior"]`` = the mean-pose prior's on the same crops);
    trained: True when this call trained it, False when it came from the cache."""

    model: nn.Module
    config: TrainConfig
    out_dir: Path
    history: list[dict] = field(default_factory=list)
    trained: bool = False

    @property
    def final(self) -> dict[str, float]:
        """The last evaluation's metrics ({} when the run never evaluated)."""
        return dict(self.history[-1]["val"]) if self.history else {}


_DONE = "done.json"


def cached_train(name: str, cfg: TrainConfig, cache_dir, device=None, progress: bool = False) -> CachedRun:
    """Train ``cfg`` once into ``cache_dir/<name>-<config_key(cfg)>/`` and return the model (eval mode).

    A folder with a finished run (``done.json`` next to ``last.pt``) is reloaded, not retrained; an
    interrupted one (``last.pt`` without ``done.json``) is resumed; otherwise training starts from
    scratch. ``device``: where the returned model lives (default: the config's device)."""
    from lofr.engine.trainer import load_model, train

    out_dir = Path(cache_dir) / f"{name}-{config_key(cfg)}"
    last, done = out_dir / "last.pt", out_dir / _DONE
    trained = False
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # one trainer per run: two kernels asking for the same model at once (pytest -n 2 runs notebooks on two
    # workers) take turns, and the second one loads what the first trained
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        if fcntl is not None:
            fcntl.flock(lock, fcntl.LOCK_EX)
        if not (last.is_file() and done.is_file()):
            done.unlink(missing_ok=True)
            result = train(cfg, out_dir, resume=last.is_file(), overwrite=not last.is_file(), progress=progress)
            done.write_text(json.dumps({"step": result["step"], "best": result["best"]}))
            trained = True
    dev = device if device is not None else pick_device(cfg.device)
    model, _ = load_model(last, dev)
    history = list(load_checkpoint(last, map_location="cpu").get("metrics", []))
    return CachedRun(model, cfg, out_dir, history, trained)


def cached_result(name: str, params: dict, compute: Callable[[], Any], cache_dir) -> Any:
    """``compute()`` once per (name, params); the result is pickled to ``cache_dir/<name>-<hash>.pkl``
    (written atomically) and read back on later calls. ``params`` must be JSON-able (str() is used
    for anything else, e.g. paths) and should hold everything the result depends on."""
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"{name}-{key}.pkl"
    if path.is_file():
        with open(path, "rb") as f:
            return pickle.load(f)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        pickle.dump(value, f)
    os.replace(tmp, path)
    return value


def subset_annotations(ann_file, n_images: int, out_file) -> Path:
    """Write a COCO keypoint file holding the first ``n_images`` images (by id) of ``ann_file`` and
    their annotations, e.g. for a quick probe on a few hundred instances. Images stay where they are."""
    data = json.loads(Path(ann_file).read_text())
    if n_images < 1:
        raise ValueError(f"subset_annotations: n_images must be >= 1, got {n_images}")
    images = sorted(data["images"], key=lambda im: im["id"])[:n_images]
    ids = {im["id"] for im in images}
    out = {**data, "images": images, "annotations": [a for a in data["annotations"] if a["image_id"] in ids]}
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, out_file)
    return out_file
