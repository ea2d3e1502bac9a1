import json
import subprocess
import sys

import pytest

from lofr.cli import main
from lofr.quickstart import quickstart


def test_lofr_synth_writes_coco_layout_and_prints_presence(tmp_path, capsys):
    out = tmp_path / "sp"
    assert main(["synth", str(out), "--train", "6", "--val", "2", "--seed", "3", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "left_wrist" in text and "train: 6 images" in text
    data = json.loads((out / "annotations" / "person_keypoints_train2017.json").read_text())
    assert len(data["images"]) == 6 and data["categories"][0]["keypoints"][9] == "left_wrist"
    assert main(["synth", str(out), "--train", "6", "--val", "2", "--quiet"]) == 2  # no silent overwrite
    assert "exists; pass overwrite=True (--overwrite)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sp"]  # no partial folder left beside it


def test_lofr_synth_leaves_nothing_when_it_fails_midway(tmp_path, monkeypatch, capsys):
    from lofr.data import synth

    out = tmp_path / "sp"
    assert main(["synth", str(out), "--train", "4", "--val", "2", "--seed", "1", "--quiet", "--workers", "1"]) == 0
    before = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    real = synth.presence_table
    calls = []

    def fails_on_val(data):
        calls.append(1)
        if len(calls) == 2:  # the val split: train is complete by then
            raise KeyboardInterrupt
        return real(data)

    monkeypatch.setattr(synth, "presence_table", fails_on_val)
    with pytest.raises(KeyboardInterrupt):
        main(["synth", str(out), "--train", "3", "--val", "1", "--overwrite", "--quiet", "--workers", "1"])
    after = {p.relative_to(tmp_path): p.stat().st_mtime_ns for p in tmp_path.rglob("*")}
    assert after == before  # the old dataset untouched, no partial folder


def test_quickstart_evaluates_ground_truth_and_prior_through_the_real_evaluator(tmp_path, capsys):
    reports = quickstart(tmp_path / "sp", n_train=30, n_val=10, progress=False, train=False)
    gt, prior = reports["ground truth (crop and back)"], reports["mean-pose prior"]
    g, p = gt.summary(), prior.summary()
    assert g["AP"] == pytest.approx(1.0) and g["PCK@0.1"] == 1.0 and g["px err"] < 1e-3
    assert p["PCK@0.2"] < 0.9 and p["px err"] > 3.0
    out = capsys.readouterr().out
    assert "mean-pose prior" in out and "Image-level labels" in out


def test_quickstart_trains_lofr_and_the_baseline_and_prints_one_table(tmp_path, capsys):
    tiny = ["optim.epochs=1", "max_steps=2", "optim.batch_size=4", "optim.warmup_steps=1", "data.workers=0",
            "data.eval_batch_size=8", "eval_every=0"]
    out = quickstart(tmp_path / "sp", n_train=12, n_val=4, progress=False, overrides=tiny,
                     runs_dir=tmp_path / "runs")
    for label in ("LOFR", "Baseline", "LOFR CAM arg-max", "mean-pose prior"):
        assert 0.0 <= out[label].summary()["PCK@0.2"] <= 1.0
    assert out["timing"]["LOFR"]["steps"] == 2 and out["timing"]["Baseline"]["steps"] == 2
    assert (tmp_path / "runs" / "lofr" / "last.pt").is_file() and (tmp_path / "runs" / "baseline" / "last.pt").is_file()
    table = capsys.readouterr().out.split("trained on image-level labels only:")[1]
    for label in ("PCK@0.2", "px err", "AP"):
        assert label in table
    # trained models first, then the prior and the ground-truth check, one row each
    rows = [line.split("  ")[0].strip() for line in table.strip().splitlines()[2:7]]
    assert rows == ["LOFR", "Baseline", "LOFR CAM arg-max", "mean-pose prior", "ground truth (crop and back)"]
    assert "`lofr quickstart --best`" in table  # where the recipe above the prior is


def test_quickstart_best_adds_the_self_trained_recipes_row_next_to_lofr(tiny_root, tmp_path, capsys):
    from lofr.quickstart import BEST

    tiny = ["optim.epochs=1", "max_steps=2", "optim.batch_size=4", "optim.warmup_steps=1", "data.workers=0",
            "data.eval_batch_size=8", "eval_every=0"]
    student = ["model=sup-only", "data.labelled_fraction=1.0", "loss.mse=1.0", *tiny]
    runs = tmp_path / "runs"
    assert main(["quickstart", "--best", "--quiet", "--data", str(tiny_root), "--out", str(runs), "--set", *tiny,
                 f"self_train.student_set=[{', '.join(student)}]"]) == 0
    table = capsys.readouterr().out.split("trained on image-level labels only:")[1]
    rows = [line.split("  ")[0].strip() for line in table.strip().splitlines()[2:8]]
    assert rows == ["LOFR", BEST, "Baseline", "LOFR CAM arg-max", "mean-pose prior", "ground truth (crop and back)"]
    assert f"{BEST}: 8 steps" in table and "--best`" not in table  # 3 teachers x 2 + student 2; no hint
    assert (runs / "best" / "teacher" / "last.pt").is_file() and (runs / "best" / "last.pt").is_file()


def test_quickstart_no_train_stops_after_the_reference_predictors(tiny_root, tmp_path, capsys, monkeypatch):
    import lofr.quickstart

    # the guard turns a regression into a failure instead of a 17-minute training run
    monkeypatch.setattr(lofr.quickstart, "train_and_compare", lambda *a, **k: pytest.fail("--no-train trained"))
    runs = tmp_path / "runs"
    assert main(["quickstart", "--no-train", "--data", str(tiny_root), "--out", str(runs)]) == 0
    assert not runs.exists()  # no run folder
    out = capsys.readouterr().out
    assert "mean-pose prior" in out and "ground truth (crop and back)" in out


def test_quickstart_stdout_holds_the_results_and_stderr_the_progress(tiny_root, tmp_path, capsys):
    runs = tmp_path / "runs"
    tiny = ["optim.epochs=1", "max_steps=2", "optim.batch_size=4", "optim.warmup_steps=1", "data.workers=0",
            "data.eval_batch_size=8", "eval_every=0"]
    assert main(["quickstart", "--data", str(tiny_root), "--out", str(runs), "--set", *tiny]) == 0
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert "trained on image-level labels only:" in out and "Baseline" in out.split("labels only:")[1]
    assert "Training LOFR" in err and "epoch 1/1" in err and "epoch 1 step 2: loss" in err  # bars and chatter
    for progress in ("\r", "it/s", "epoch 1/1", "Training LOFR", "step 2: loss", "effective batch"):
        assert progress not in out, progress
    assert (runs / "lofr" / "last.pt").is_file() and (runs / "baseline" / "last.pt").is_file()


def test_cli_entry_point_is_installed():
    r = subprocess.run([sys.executable, "-m", "lofr.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "synth" in r.stdout and "quickstart" in r.stdout


def test_train_eval_predict_end_to_end(tmp_path, capsys):
    from lofr.data import synth

    root = tmp_path / "sp"
    synth.generate(root, n_train=16, n_val=6, seed=0, image_size=(96, 80), workers=1, progress=False)
    run = tmp_path / "run"
    tiny = ["data.workers=0", "arch.d_model=32", "arch.nhead=2", "arch.enc_layers=1", "arch.dec_layers=1",
            "arch.dim_ff=64", "optim.batch_size=8", "optim.epochs=1", "optim.warmup_steps=1", "data.eval_batch_size=8"]
    assert main(["train", "--config", "synth-cpu", "--data", str(root), "--out", str(run), "--quiet", *tiny]) == 0
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()

    results = tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--out", str(results), "--prior", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "mean-pose prior" in text and "left_wrist" in text
    assert main(["eval", "--checkpoint", str(run / "best.pt"), "--decode", "pose_prior", "--quiet"]) == 0
    assert "(pose-prior decoding)" in capsys.readouterr().out
    from pycocotools.coco import COCO

    gt = COCO(str(root / "annotations" / "person_keypoints_val2017.json"))
    dets = gt.loadRes(str(results))
    assert len(dets.getAnnIds()) == len(gt.getAnnIds(iscrowd=False))

    image = root / "val2017" / sorted(p.name for p in (root / "val2017").iterdir())[0]
    png = tmp_path / "pose.png"
    assert main(["predict", str(image), "--checkpoint", str(run / "last.pt"), "--box", "10,10,50,70",
                 "--out", str(png), "--responses"]) == 0
    assert png.stat().st_size > 1000 and "right_ankle" in capsys.readouterr().out
    assert main(["predict", str(image), "--checkpoint", str(run / "last.pt"), "--box", "a,b"]) == 2
    assert "lofr predict: error: --box must be x,y,w,h" in capsys.readouterr().err
