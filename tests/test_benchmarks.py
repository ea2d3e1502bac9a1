"""benchmarks/synth_claim.py --quick on a tiny generated SynthPose: it trains the three models, prints
one table and writes its json / md with the command, commit and machine."""

from __future__ import annotations

import json
import math

import pytest
from conftest import load_benchmark


def test_recovered_gain_hand_case():
    bench = load_benchmark("synth_claim")
    rows = {"prior": {"PCK@0.1": 0.2, "PCK@0.2": 0.6}, "sup": {"PCK@0.1": 0.6, "PCK@0.2": 0.9},
            "lofr": {"PCK@0.1": 0.5, "PCK@0.2": 0.6}}
    gain = bench.recovered_gain(rows)
    assert gain["PCK@0.1"] == pytest.approx(0.75) and gain["PCK@0.2"] == pytest.approx(0.0)
    rows["sup"]["PCK@0.2"] = 0.5  # the supervised model below the prior: no gain to recover
    assert math.isnan(bench.recovered_gain(rows)["PCK@0.2"])


def test_quick_run_writes_one_table(tiny_root, tmp_path, capsys):
    bench = load_benchmark("synth_claim")
    tiny = ["arch.d_model=32", "arch.nhead=2", "arch.dec_layers=1", "arch.dim_ff=32"]
    out = bench.main(["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"),
                      "--results-dir", str(tmp_path / "results"), "--threads", "1", "--set", *tiny])
    assert set(out["rows"]) == {"prior", "cam", "plain_cam", "baseline", "lofr", "sup"}
    for row in out["rows"].values():
        assert 0.0 <= row["PCK@0.1"] <= row["PCK@0.2"] <= 1.0 and row["px err"] >= 0
        assert {"AP", "AP50", "AR", "face PCK@0.1", "arms PCK@0.1", "legs PCK@0.1"} <= set(row)
    assert out["timing"]["lofr"]["steps"] == 2 and out["timing"]["lofr"]["images_per_s"] > 0
    written = json.loads((tmp_path / "results" / "synth_claim.json").read_text())
    assert written["command"].startswith("python benchmarks/synth_claim.py --quick")
    assert {"commit", "machine", "wall_s", "recovered_gain"} <= set(written)
    assert written["machine"]["cpu_count"] >= 1 and written["machine"]["torch"]
    md = (tmp_path / "results" / "synth_claim.md").read_text()
    for label in ("mean-pose prior", "CAM argmax", "plain CAM", "Baseline", "LOFR", "supervised", "recovered gain"):
        assert label in md
    assert "| LOFR |" in capsys.readouterr().out
    # --checkpoint-dir evaluates the runs just written, without training
    again = bench.main(["--checkpoint-dir", str(tmp_path / "runs"), "--data-root", str(tiny_root), "--quick",
                        "--results-dir", str(tmp_path / "again"), "--threads", "1", "--set", *tiny])
    assert again["rows"]["lofr"] == pytest.approx(out["rows"]["lofr"], nan_ok=True)
    # the training time of a loaded run comes from its metrics.jsonl (evaluations included)
    assert again["timing"]["lofr"]["from"] == "metrics.jsonl" and again["timing"]["lofr"]["steps"] == 2


def test_seed_dirs_and_timing_mean():
    from pathlib import Path

    bench = load_benchmark("synth_claim")
    assert bench.seed_dir(Path("r"), "lofr", 0, 1) == Path("r/lofr")  # lofr train's layout for one seed
    assert bench.seed_dir(Path("r"), "lofr", 2, 3) == Path("r/lofr/seed2")
    t = bench.mean_timing([{"seed": 0, "train_s": 10.0, "images_per_s": 100.0, "eval_s": 1.0, "steps": 5},
                           {"seed": 1, "train_s": 20.0, "images_per_s": 50.0, "eval_s": 2.0, "steps": 5}])
    assert t == {"train_s": 15.0, "images_per_s": 75.0, "eval_s": 1.5, "steps": 5}


def test_quick_run_over_two_seeds_reports_mean_and_std(tiny_root, tmp_path):
    bench = load_benchmark("synth_claim")
    tiny = ["arch.d_model=32", "arch.nhead=2", "arch.dec_layers=1", "arch.dim_ff=32"]
    out = bench.main(["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"),
                      "--results-dir", str(tmp_path / "results"), "--threads", "1", "--models", "lofr",
                      "--seeds", "0", "1", "--set", *tiny])
    assert (tmp_path / "runs" / "lofr" / "seed0" / "last.pt").is_file()
    assert (tmp_path / "runs" / "lofr" / "seed1" / "last.pt").is_file()
    assert set(out["rows"]) == {"prior", "lofr", "cam"} and len(out["per_seed"]["lofr"]) == 2
    for key in ("lofr", "cam"):
        vals = [r["PCK@0.2"] for r in out["per_seed"][key]]
        assert out["rows"][key]["PCK@0.2"] == pytest.approx(sum(vals) / 2)
        assert not math.isnan(out["std"][key]["PCK@0.2"])
    assert "±" in out["table"] and "seeds [0, 1]" in out["table"]
    # the same layout loads back
    again = bench.main(["--checkpoint-dir", str(tmp_path / "runs"), "--data-root", str(tiny_root), "--results-dir",
                        str(tmp_path / "results2"), "--models", "lofr", "--seeds", "0", "1", "--quick"])
    assert again["rows"]["lofr"]["PCK@0.2"] == pytest.approx(out["rows"]["lofr"]["PCK@0.2"])


def test_stopped_claim_resumes_from_kept_runs(tiny_root, tmp_path, capsys):
    """Each finished (model, seed) is kept beside the results; a second call skips it, a call whose kept
    file is gone resumes from last.pt, and --table-only says which seeds the table lacks."""
    bench = load_benchmark("synth_claim")
    tiny = ["arch.d_model=32", "arch.nhead=2", "arch.dec_layers=1", "arch.dim_ff=32"]
    args = ["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--models", "lofr", "--set", *tiny]
    first = bench.main(args)
    kept = tmp_path / "results" / "runs" / "synth_claim" / "lofr-seed0.json"
    record = json.loads(kept.read_text())
    assert record["overrides"][-1] == "seed=0" and {"row", "prior", "cam", "timing", "commit"} <= set(record)
    capsys.readouterr()
    again = bench.main(args)
    assert "LOFR (seed 0): kept from lofr-seed0.json" in capsys.readouterr().out
    assert again["rows"]["lofr"] == pytest.approx(first["rows"]["lofr"], nan_ok=True)
    assert again["rows"]["prior"] == pytest.approx(first["rows"]["prior"], nan_ok=True)
    kept.unlink()  # as if stopped after training: the run continues from its last.pt (already at max_steps)
    resumed = bench.main(args)
    assert resumed["rows"]["lofr"] == pytest.approx(first["rows"]["lofr"], nan_ok=True)
    assert kept.is_file()
    partial = bench.main(args[:-len(tiny) - 1] + ["--seeds", "0", "1", "--table-only", "--set", *tiny])
    assert len(partial["per_seed"]["lofr"]) == 1
    md = (tmp_path / "results" / "synth_claim.md").read_text()
    assert "**State: partial**" in md and "lofr: seeds [0]" in md
    with pytest.raises(SystemExit, match="no run kept"):
        bench.main(args[:-len(tiny) - 1] + ["--seeds", "5", "--table-only", "--set", *tiny])
