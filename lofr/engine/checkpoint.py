"""Checkpoints: written atomically, read without executing code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (model / optimiser /
scheduler state, epoch and step, RNG states, the resolved config as a dict). It is written to a temp
file in the same folder and renamed over the target, so a crash never leaves a half-written file, and
read with ``torch.load(..., weights_only=True)``, so a file whose pickle would run code is refused.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from lofr.errors import LofrUserError

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError"]


class CheckpointError(LofrUserError, RuntimeError):
    """A checkpoint that is missing, unreadable, or not a plain weights file written by lofr (a user
    error: the command line prints it on one line and exits 2)."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; refuses pickles that would run code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError for corrupt zips)
        raise CheckpointError(
            f"refusing to load checkpoint {path}: it is not a plain weights file that can be read with "
            f"weights_only=True ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state
