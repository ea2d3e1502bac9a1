"""Where lofr keeps generated data and runs.

In a source checkout (the usual case: notebooks, tests) that is ``<repo>/data``; for an installed
package it is ``~/.cache/lofr``. ``LOFR_DATA`` overrides both.
"""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    env = os.environ.get("LOFR_DATA")
    if env:
        return Path(env).expanduser()
    if (_REPO / "pyproject.toml").exists():
        return _REPO / "data"
    return Path.home() / ".cache" / "lofr"


def synthpose_dir() -> Path:
    """Default location of the embedded SynthPose dataset."""
    return data_dir() / "synthpose"


def feature_cache_dir() -> Path:
    """Default root of the backbone feature caches (``lofr.engine.feature_cache``):
    ``$LOFR_FEATURE_CACHE`` if set, else ``data_dir() / "feature_cache"``."""
    env = os.environ.get("LOFR_FEATURE_CACHE")
    return Path(env).expanduser() if env else data_dir() / "feature_cache"
