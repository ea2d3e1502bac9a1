"""Resuming a run from its ``last.pt``: the checkpoint must hold the full training state and have
been written for the same model, data, seed and batch (``check_resume``); ``resume_state`` loads
it into the model, optimiser, AMP scaler and the global RNGs."""

from __future__ import annotations

from pathlib import Path

from lofr.config_utils import ConfigError
from lofr.engine.checkpoint import CheckpointError, load_checkpoint
from lofr.engine.config import TrainConfig, config_dict
from lofr.engine.runtime import set_rng_state

__all__ = ["resume_state", "check_resume", "check_resumable"]


def check_resumable(path: Path, cfg: TrainConfig) -> dict:
    """The training state in ``path`` -> the loaded dict, or a CheckpointError / ConfigError when it is not
    one ``cfg`` can continue. ``train`` calls it before anything slow (datasets, the feature cache)."""
    state = load_checkpoint(path, map_location="cpu")
    for key in ("model", "optimizer", "step", "rng", "config"):
        if key not in state:
            raise CheckpointError(f"checkpoint {path} has no {key!r}: not written by lofr.engine.train")
    check_resume(state["config"], cfg, path)
    return state


def resume_state(state: dict, model, optimizer, scaler) -> tuple[int, list, dict | None]:
    """Load a checked training state (``check_resumable``) into model / optimiser / scaler and the global
    RNGs -> (step, history, best)."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    return int(state["step"]), list(state.get("metrics", [])), state.get("best")


def check_resume(saved: dict, cfg: TrainConfig, path: Path) -> None:
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

