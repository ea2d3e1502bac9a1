import random

import numpy as np
import torch

from lofr.engine.checkpoint import load_checkpoint, save_checkpoint
from lofr.engine.runtime import init_distributed, pick_device, rng_state, seed_everything, set_rng_state


def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    seed_everything(7)
    _draw()
    save_checkpoint({"rng": rng_state()}, tmp_path / "c.pt")
    expected = _draw()
    seed_everything(123)  # scramble
    set_rng_state(load_checkpoint(tmp_path / "c.pt")["rng"])
    assert _draw() == expected


def test_single_process_without_torchrun(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    info = init_distributed()
    assert info.world_size == 1 and info.is_main and not info.enabled
    assert pick_device("cpu").type == "cpu"
