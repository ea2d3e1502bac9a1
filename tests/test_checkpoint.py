import os
import pickle

import pytest
import torch

from lofr.engine.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def test_roundtrip_and_no_temp_files_left(tmp_path):
    state = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3, "config": {"lr": 4e-3, "name": "x"}}
    p = save_checkpoint(state, tmp_path / "runs" / "last.pt")
    back = load_checkpoint(p)
    assert torch.equal(back["model"]["w"], state["model"]["w"]) and back["epoch"] == 3
    assert back["config"] == state["config"]
    assert sorted(os.listdir(p.parent)) == ["last.pt"]


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    bad = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _RunsCode()}, bad, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="refusing to load checkpoint .*evil.pt"):
        load_checkpoint(bad)


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    target = tmp_path / "best.pt"
    save_checkpoint({"v": torch.tensor(1)}, target)
    with pytest.raises(Exception):
        save_checkpoint({"v": _Unpicklable()}, target)
    assert load_checkpoint(target)["v"].item() == 1
    assert sorted(os.listdir(tmp_path)) == ["best.pt"]


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle")


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
