"""User errors at the command line: one line on stderr, ``lofr <command>: error: <what> (<where>)``, exit
status 2, and nothing written. Each row of the table is a distinct bad input run through
``lofr.cli.main`` (the function the ``lofr`` console script calls); the subprocess tests check the
installed entry point itself, ``--debug`` / ``LOFR_DEBUG=1`` and that unexpected errors keep their
traceback."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lofr.cli import main

TINY = ["data.workers=0", "arch.d_model=32", "arch.nhead=2", "arch.enc_layers=1", "arch.dec_layers=1",
        "arch.dim_ff=64", "optim.batch_size=4", "optim.epochs=1", "max_steps=1", "optim.warmup_steps=1",
        "data.eval_batch_size=8", "eval_every=0"]
VAL_ANN = Path("annotations") / "person_keypoints_val2017.json"


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def _dataset_copy(src: Path, dst: Path, edit=None) -> Path:
    shutil.copytree(src, dst)
    if edit is not None:
        f = dst / VAL_ANN
        f.write_text(edit(f.read_text()))
    return dst


def _edit_json(change):
    def edit(text):
        data = json.loads(text)
        change(data)
        return json.dumps(data)
    return edit


@pytest.fixture(scope="module")
def ws(tiny_root, tmp_path_factory):
    """The inputs of the table: a trained tiny run, bad checkpoints, bad images, bad datasets."""
    d = tmp_path_factory.mktemp("cli_errors")
    run = d / "run"
    assert main(["train", "--config", "synth-cpu", "--data", str(tiny_root), "--out", str(run), "--quiet",
                 *TINY]) == 0
    (d / "notimg.jpg").write_text("this is not an image\n")
    raw = (run / "last.pt").read_bytes()
    (d / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    with open(d / "runs_code.pt", "wb") as f:
        pickle.dump({"model": _RunsCode()}, f, protocol=2)
    torch.save({"epoch": 3}, d / "nomodel.pt")
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["optim"]["momentum"] = 0.9  # a key this lofr does not know
    torch.save(state, d / "oldconfig.pt")

    def drop_keypoint(data):
        data["annotations"][1]["keypoints"] = data["annotations"][1]["keypoints"][:-3]

    def no_annotations(data):
        data["annotations"] = []

    roots = SimpleNamespace(
        truncated=_dataset_copy(tiny_root, d / "truncated", lambda t: t[: len(t) // 2]),
        badkp=_dataset_copy(tiny_root, d / "badkp", _edit_json(drop_keypoint)),
        empty=_dataset_copy(tiny_root, d / "empty", _edit_json(no_annotations)),
        badimg=_dataset_copy(tiny_root, d / "badimg"),
        layout=d / "layout",
    )
    roots.layout.mkdir()
    (roots.layout / "val2017").mkdir()  # images, but no annotations/
    last = sorted((roots.badimg / "val2017").iterdir())[-1]
    last.write_bytes(last.read_bytes()[:200])
    image = sorted((tiny_root / "val2017").iterdir())[0]
    return SimpleNamespace(dir=d, run=run, ckpt=run / "last.pt", image=image, data=tiny_root, bad_image=last.name,
                           **vars(roots))


# (id, command, argv(ws, out) -> list, fragments the one line must hold)
# ``out``: a path in the case's own folder that the command would write on success.
CASES = [
    ("predict-not-an-image", "predict",
     lambda w, o: ["predict", str(w.dir / "notimg.jpg"), "--checkpoint", str(w.ckpt), "--out", str(o)],
     ["unreadable or truncated image", "notimg.jpg"]),
    ("predict-missing-image", "predict",
     lambda w, o: ["predict", str(w.dir / "nope.jpg"), "--checkpoint", str(w.ckpt), "--out", str(o)],
     ["image file not found", "nope.jpg"]),
    ("predict-box-not-numbers", "predict",
     lambda w, o: ["predict", str(w.image), "--checkpoint", str(w.ckpt), "--box", "a,b", "--out", str(o)],
     ["--box must be x,y,w,h", "'a,b'"]),
    ("predict-box-negative-width", "predict",
     lambda w, o: ["predict", str(w.image), "--checkpoint", str(w.ckpt), "--box", "0,0,-1,5", "--out", str(o)],
     ["positive w and h"]),
    ("eval-missing-checkpoint", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.dir / "missing.pt"), "--out", str(o)],
     ["does not exist", "missing.pt"]),
    ("eval-truncated-checkpoint", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.dir / "trunc.pt"), "--out", str(o)],
     ["not a plain weights file", "trunc.pt"]),
    ("eval-checkpoint-runs-code", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.dir / "runs_code.pt"), "--out", str(o)],
     ["refusing to load", "runs_code.pt", "weights_only"]),
    ("eval-checkpoint-without-model", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.dir / "nomodel.pt"), "--out", str(o)],
     ["has no 'model'", "nomodel.pt"]),
    ("eval-checkpoint-config-key", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.dir / "oldconfig.pt"), "--out", str(o)],
     ["oldconfig.pt", "cannot use", "unknown key(s) ['momentum']"]),
    ("eval-truncated-annotations", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.ckpt), "--data", str(w.truncated), "--out", str(o)],
     ["malformed JSON", str(VAL_ANN)]),
    ("eval-bad-keypoint-count", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.ckpt), "--data", str(w.badkp), "--out", str(o)],
     ["'keypoints' has 48 values, schema 'coco' needs 51", "annotation id 2", str(VAL_ANN)]),
    ("eval-empty-split", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.ckpt), "--data", str(w.empty), "--out", str(o)],
     ["no usable person instance", str(VAL_ANN)]),
    ("eval-unreadable-image", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.ckpt), "--data", str(w.badimg), "--out", str(o)],
     ["unreadable or truncated image", "image id"]),
    ("eval-wrong-layout", "eval",
     lambda w, o: ["eval", "--checkpoint", str(w.ckpt), "--data", str(w.layout), "--out", str(o)],
     ["annotation file not found", str(VAL_ANN)]),
    ("train-unknown-config", "train",
     lambda w, o: ["train", "--config", "no-such-config", "--out", str(o)],
     ["no config named 'no-such-config'", "synth-cpu"]),
    ("train-unknown-key", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(o), *TINY, "optim.lrr=1"],
     ["synth-cpu.yaml", "unknown key(s) ['lrr']"]),
    ("train-bad-value", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(o), *TINY, "optim.epochs=abc"],
     ["optim.epochs: expected int, got 'abc'"]),
    ("train-override-without-value", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(o), "optim.epochs"],
     ["'optim.epochs' is not of the form key=value"]),
    ("train-schema-mismatch", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(o), *TINY, "data.schema=crowdpose"],
     ["'keypoints' has 51 values, schema 'crowdpose' needs 42", "person_keypoints_train2017.json", "annotation id"]),
    ("train-batch-larger-than-data", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(o), *TINY, "optim.batch_size=512"],
     ["optim.batch_size 512 is larger than the"]),
    ("train-over-an-existing-run", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(w.run), *TINY],
     ["already holds a run", "--overwrite"]),
    ("train-resume-other-arch", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(w.run), "--resume", *TINY, "arch.d_model=64"],
     ["cannot resume from", "last.pt", "its arch is"]),
    ("train-resume-nothing", "train",
     lambda w, o: ["train", "--data", str(w.data), "--out", str(o), "--resume", *TINY],
     ["does not exist", "last.pt"]),
    ("synth-over-a-dataset", "synth",
     lambda w, o: ["synth", str(w.data), "--train", "2", "--val", "1", "--quiet"],
     ["person_keypoints_train2017.json exists", "--overwrite"]),
    ("synth-negative-count", "synth",
     lambda w, o: ["synth", str(o), "--train", "-1", "--val", "1", "--quiet"],
     ["n_train must be a non-negative integer"]),
    ("quickstart-unknown-key", "quickstart",
     lambda w, o: ["quickstart", "--data", str(w.data), "--out", str(o), "--set", "optim.lrr=1"],
     ["unknown key(s) ['lrr']"]),
]


def _screen_lines(stream: str) -> list[str]:
    """The lines a terminal shows: a progress bar redrawn with carriage returns and erased at the end
    (tqdm's ``leave=False``) leaves nothing."""
    lines = [line.rsplit("\r", 1)[-1] for line in stream.split("\n")]
    return [line for line in lines if line.strip()]


def _snapshot(*roots: Path) -> dict:
    """Every file under ``roots`` with its size and modification time."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            st = p.stat()
            out[str(p)] = (p.is_dir(), st.st_size if p.is_file() else 0, st.st_mtime_ns)
    return out


def test_the_table_has_distinct_cases():
    assert len(CASES) >= 12 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, command, argv, fragments", CASES, ids=[c[0] for c in CASES])
def test_user_error_is_one_line_status_2_and_writes_nothing(name, command, argv, fragments, ws, tmp_path, capsys,
                                                            monkeypatch):
    monkeypatch.delenv("LOFR_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)  # anything written to a default place would land here
    out = tmp_path / "out"
    args = argv(ws, out)
    before = _snapshot(ws.dir, ws.data, tmp_path)
    capsys.readouterr()
    status = main(args)
    captured = capsys.readouterr()
    assert status == 2, captured.err
    lines = _screen_lines(captured.err)
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"lofr {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert captured.out == ""
    assert not out.exists()
    assert _snapshot(ws.dir, ws.data, tmp_path) == before  # nothing written, nothing replaced


def test_predict_and_eval_still_work_on_the_fixture(ws, tmp_path, capsys):
    """The table's inputs are bad only where they mean to be: the same commands succeed on good ones."""
    png = tmp_path / "pose.png"
    assert main(["predict", str(ws.image), "--checkpoint", str(ws.ckpt), "--out", str(png)]) == 0
    assert png.is_file()
    results = tmp_path / "r.json"
    assert main(["eval", "--checkpoint", str(ws.ckpt), "--data", str(ws.data), "--out", str(results), "--quiet"]) == 0
    assert json.loads(results.read_text())


def _cli(*args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "LOFR_DEBUG"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "lofr.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd)


def test_installed_entry_point_exits_2_with_one_line_and_debug_shows_the_traceback(tmp_path):
    missing = str(tmp_path / "missing.pt")
    r = _cli("eval", "--checkpoint", missing)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"lofr eval: error: checkpoint {missing} does not exist\n"
    for debug in (_cli("eval", "--checkpoint", missing, "--debug"), _cli("--debug", "eval", "--checkpoint", missing),
                  _cli("eval", "--checkpoint", missing, env_extra={"LOFR_DEBUG": "1"})):
        assert debug.returncode == 2
        assert "Traceback (most recent call last)" in debug.stderr and "CheckpointError" in debug.stderr
        assert debug.stderr.splitlines()[-1] == f"lofr eval: error: checkpoint {missing} does not exist"
    usage = _cli("eval")  # argparse: a missing required option
    assert usage.returncode == 2 and "the following arguments are required: --checkpoint" in usage.stderr


def test_unexpected_errors_keep_their_traceback(ws, monkeypatch):
    import lofr.engine.trainer as trainer

    def broken(*a, **k):
        raise ZeroDivisionError("a bug, not the user's fault")

    monkeypatch.setattr(trainer, "load_model", broken)
    with pytest.raises(ZeroDivisionError):  # not turned into a one-line user error
        main(["eval", "--checkpoint", str(ws.ckpt)])


def test_the_lofr_user_errors_share_one_base():
    from lofr.config_utils import ConfigError
    from lofr.data.errors import DataError
    from lofr.engine.checkpoint import CheckpointError
    from lofr.errors import LofrUserError, OutputExistsError, UsageError

    for cls, builtin in ((DataError, ValueError), (ConfigError, ValueError), (CheckpointError, RuntimeError),
                         (UsageError, ValueError), (OutputExistsError, FileExistsError)):
        assert issubclass(cls, LofrUserError) and issubclass(cls, builtin)
    e = DataError("'bbox' must be [x, y, w, h]", file="ann.json", ann_id=7, image_id=3)
    assert str(e) == "ann.json: annotation id 7 (image id 3): 'bbox' must be [x, y, w, h]"
    assert e.user_message() == "'bbox' must be [x, y, w, h] (ann.json, annotation id 7 (image id 3))"
    assert ConfigError("a\n  b").user_message() == "a b"
