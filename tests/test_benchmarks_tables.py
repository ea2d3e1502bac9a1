"""benchmarks/table{4,5,6,7}_*.py and time_to_accuracy.py (issue 6's accuracy tables) with --quick on a
tiny generated SynthPose: each trains its rows, prints one table with the expected rows / columns and
writes its json / md (command, commit, machine, wall time); plus the helpers on hand cases."""

from __future__ import annotations

import json
import math

import pytest
from conftest import load_benchmark

TINY = ["arch.d_model=32", "arch.nhead=2", "arch.dim_ff=32"]  # + the script's own rows' switches


def quick_args(tiny_root, tmp_path, *extra) -> list[str]:
    return ["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--threads", "1", *extra, "--set", *TINY]


def check_written(tmp_path, name: str, labels) -> tuple[dict, str]:
    """The json has the provenance fields and the md every label; returns both."""
    written = json.loads((tmp_path / "results" / f"{name}.json").read_text())
    assert written["command"].startswith(f"python benchmarks/{name}.py --quick")
    assert {"commit", "machine", "wall_s", "table", "seeds"} <= set(written)
    assert written["machine"]["cpu_count"] >= 1 and written["machine"]["torch"]
    md = (tmp_path / "results" / f"{name}.md").read_text()
    assert "One training seed (0)" in md
    for label in labels:
        assert label in md, label
    return written, md


def header(md: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith("| "))
    return [c.strip() for c in line.strip("|").split("|")]


def check_row(row: dict) -> None:
    m = row["mean"]
    assert 0.0 <= m["PCK@0.1"] <= m["PCK@0.2"] <= 1.0 and m["px err"] >= 0
    assert set(row["per_seed"]) == {0} and math.isnan(row["std"]["PCK@0.1"])  # one seed: no spread


# ------------------------------------------------------------------------------------------- helpers
def test_mean_std_and_cells():
    common = load_benchmark("common")
    assert common.mean_std([1.0, 2.0, 3.0]) == pytest.approx((2.0, 1.0))  # sample std
    m, s = common.mean_std([0.5])
    assert m == 0.5 and math.isnan(s)
    assert common.format_cell(0.1234) == "0.123" and common.format_cell(0.1234, 0.01) == "0.123 ± 0.010"
    assert common.format_cell(0.02, sign=True) == "+0.020" and common.format_cell(math.nan) == "—"
    row = {"per_seed": {0: {"AP": 0.5}, 1: {"AP": 0.7}, 2: {"AP": 0.9}}}
    base = {"per_seed": {0: {"AP": 0.4}, 1: {"AP": 0.4}}}  # seed 2 missing: paired over seeds 0, 1
    assert common.paired_gain(row, base, "AP") == pytest.approx((0.2, math.sqrt(0.02)))



def test_state_note_names_what_a_kept_table_lacks():
    common = load_benchmark("common")
    assert common.state_note({"a": [0, 1], "b": ["0", "1"]}, [0, 1], ["a", "b"]) == ""  # keys may be JSON strings
    assert "State: complete" in common.state_note({"a": [1, 0]}, [0, 1], ["a"], table_only=True)
    note = common.state_note({"a": [0], "b": [0, 1]}, [0, 1], ["a", "b", "c"])
    assert note.startswith("**State: partial**") and note.endswith("a: seeds [0]; c: none.")

def test_table5_baseline_like_lofr_is_the_baseline():
    """model=lofr with table5's BASE switches builds the Baseline's network and loss weights."""
    import torch

    from lofr.engine.config import load_config
    from lofr.engine.trainer import build_model, loss_weights

    t5 = load_benchmark("table5_modules")
    cfgs = [load_config("synth-cpu", ["model=baseline"]), load_config("synth-cpu", t5.BASE)]
    models = []
    for cfg in cfgs:
        torch.manual_seed(0)
        models.append(build_model(cfg))
    a, b = (m.state_dict() for m in models)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert loss_weights(cfgs[0], models[0]) == loss_weights(cfgs[1], models[1])
    # every module row switches on what it claims
    spe = load_config("synth-cpu", t5.ROWS["+SPE"][1]).arch
    assert spe["use_spe"] and spe["cam_head"] and not spe["multi_scale"] and not spe["enc_head"]
    pdc = load_config("synth-cpu", t5.ROWS["+PDC"][1]).arch
    assert pdc["use_pdc"] and not pdc["cam_head"] and pdc["dec_value"] == "memory"
    full = load_config("synth-cpu", t5.ROWS["all"][1]).arch
    assert all(full[k] for k in ("use_spe", "multi_scale", "use_reppg", "use_pdc", "cam_head", "enc_head"))


def test_time_curve_from_hand_made_records(tmp_path):
    tta = load_benchmark("time_to_accuracy")
    recs = [{"epoch": 0, "step": 10, "time_s": 60.0, "val": {"AP": 0.0, "PCK@0.1": 0.2}, "prior": {"PCK@0.1": 0.3}},
            {"epoch": 1, "step": 20, "time_s": 120.0, "val": {"AP": 0.1, "PCK@0.1": 0.4}, "prior": None},
            {"epoch": 2, "step": 30, "time_s": 30.0, "val": {"AP": 0.1, "PCK@0.1": 0.35}}]  # resumed: clock at 0
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    c = tta.read_curve(tmp_path)
    assert c["minutes"] == pytest.approx([1.0, 2.0, 2.5]) and c["step"] == [10, 20, 30]
    assert c["PCK@0.1"] == [0.2, 0.4, 0.35] and c["prior PCK@0.1"][0] == 0.3 and math.isnan(c["prior AP"][1])
    s = tta.best_and_final(c, "AP")
    assert s == {"best": 0.1, "best_min": 2.0, "final": 0.1, "final_min": 2.5}  # first time the best was reached
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "step": 1, "val": {}}) + "\n")
    with pytest.raises(ValueError, match="time_s"):
        tta.read_curve(tmp_path)


# ------------------------------------------------------------------------------------ quick runs
def test_table5_quick(tiny_root, tmp_path, capsys):
    t5 = load_benchmark("table5_modules")
    out = t5.main(quick_args(tiny_root, tmp_path))
    assert list(out["rows"]) == list(t5.ROWS)
    for row in out["rows"].values():
        check_row(row)
    assert out["rows"]["+SPE"]["timing"][0]["steps"] == 2
    _, md = check_written(tmp_path, "table5_modules", [r[0] for r in t5.ROWS.values()])
    assert header(md) == ["model", "SPE", "MS", "RePPG", "PDC", "PCK@0.1", "PCK@0.2", "px err", "AP", "AR",
                          "Δ PCK@0.1", "Δ AP", "train s"]
    assert "| all (LOFR, paper) | ✓ | ✓ | ✓ | ✓ |" in md and "| +PDC |  |  |  | ✓ |" in md
    assert "| Baseline |" in capsys.readouterr().out
    # --checkpoint-dir evaluates the runs just written, without training
    again = t5.main(["--checkpoint-dir", str(tmp_path / "runs"), *quick_args(tiny_root, tmp_path / "again"),
                     "--rows", "baseline", "+PDC"])
    assert list(again["rows"]) == ["baseline", "+PDC"]
    assert again["rows"]["+PDC"]["mean"] == pytest.approx(out["rows"]["+PDC"]["mean"], nan_ok=True)
    assert "train_s" not in again["rows"]["+PDC"]["timing"][0]


def test_table6_quick(tiny_root, tmp_path):
    t6 = load_benchmark("table6_depths")
    out = t6.main(quick_args(tiny_root, tmp_path))
    assert list(out["rows"]) == [f"en{a}-de{b}" for a in (1, 2) for b in (1, 2, 3)]
    assert out["grid"] == {"enc": [1, 2], "dec": [1, 2, 3]}
    for row in out["rows"].values():
        check_row(row)
    _, md = check_written(tmp_path, "table6_depths", ["| 2 | 3 |"])
    assert header(md) == ["D_En", "D_De", "AP", "AR", "PCK@0.1", "PCK@0.2", "px err", "train s", "img/s"]
    assert list(t6.grid_rows(*t6.FULL_GRID))[-1] == "en6-de6" and len(t6.grid_rows(*t6.FULL_GRID)) == 16


def test_table4_quick(tiny_root, tmp_path):
    t4 = load_benchmark("table4_semi_weak")
    # the tiny set has 21 training instances: 50 % = 10 labelled, enough for one batch of 8
    out = t4.main(quick_args(tiny_root, tmp_path, "--fractions", "0.5", "1.0"))
    assert list(out["rows"]) == ["sup-50", "sup-100", "lofr-50", "lofr-100"]
    for row in out["rows"].values():
        check_row(row)
    sup = out["rows"]["sup-50"]
    assert "data.labelled_fraction=0.5" in sup["overrides"] and "loss.mse=1.0" in sup["overrides"]
    assert "loss.mse=1000" in out["rows"]["lofr-50"]["overrides"]  # lofr.semi.LOFR_WS_MSE_WEIGHT
    assert sup["timing"][0]["steps"] == out["rows"]["lofr-50"]["timing"][0]["steps"] == 2  # equal steps
    _, md = check_written(tmp_path, "table4_semi_weak", ["Sup-only", "LOFR-WS (Eq. 15)", "**PCK@0.1**", "**AP**"])
    assert header(md) == ["method", "50 %", "100 % (ALL)"]
    assert t4.pct(0.05) == "5" and t4.pct(1.0) == "100"
    # the equal-steps budget by hand: 21 instances, batch 4 -> LOFR 10 epochs x 5 = 50 steps; Sup-only at 50 %
    # has round(10.5) = 10 instances, 2 steps per epoch -> 25 epochs, stopped at step 50
    assert t4.equal_steps("synth-cpu", [f"data.root={tiny_root}", "optim.batch_size=4", "optim.epochs=10"], 0.5) == \
        ["optim.epochs=25", "max_steps=50"]


def test_table7_quick(tiny_root, tmp_path):
    t7 = load_benchmark("table7_response")
    out = t7.main(quick_args(tiny_root, tmp_path))
    assert list(out["rows"]) == ["baseline", "lofr"]
    for row in out["rows"].values():
        check_row(row)
        r = row["extra"][0]
        assert len(r["per_joint"]) == 17 and 0.0 <= r["mean"] <= 1.0 and 0.0 < r["map_mean_all"] <= 1.0
    _, md = check_written(tmp_path, "table7_response", ["left_wrist", "mean (all present joints)"])
    assert header(md) == ["joint", "Baseline at joint", "Baseline map mean", "LOFR at joint", "LOFR map mean",
                          "crops"]
    assert sum(1 for ln in md.splitlines() if ln.startswith("| ")) == 1 + 17 + 1
    # synth_claim.py's layout (<dir>/<model>/last.pt) is read by --checkpoint-dir as well
    import shutil

    for key in ("baseline", "lofr"):
        (tmp_path / "claim" / key).mkdir(parents=True)
        shutil.copy(tmp_path / "runs" / key / "seed0" / "last.pt", tmp_path / "claim" / key / "last.pt")
    again = t7.main(["--checkpoint-dir", str(tmp_path / "claim"), *quick_args(tiny_root, tmp_path / "again")])
    for field in ("per_joint", "map_mean", "count"):
        assert again["rows"]["lofr"]["extra"][0][field] == pytest.approx(out["rows"]["lofr"]["extra"][0][field],
                                                                          nan_ok=True)


def test_time_to_accuracy_quick(tiny_root, tmp_path):
    tta = load_benchmark("time_to_accuracy")
    # 3 epochs of 2 steps (21 instances, batch 8), one evaluation per epoch
    out = tta.main(quick_args(tiny_root, tmp_path, "--train") + ["max_steps=0", "optim.epochs=3"])
    assert set(out["curves"]) == {"LOFR", "Baseline"}
    for c in out["curves"].values():
        assert c["epoch"] == [0, 1, 2] and c["minutes"] == sorted(c["minutes"]) and len(c["AP"]) == 3
    assert (tmp_path / "results" / "time_to_accuracy.png").stat().st_size > 1000
    _, md = check_written(tmp_path, "time_to_accuracy", ["| LOFR | 3 |", "time_to_accuracy.png"])
    # --runs reads the same folders without training
    again = tta.main(["--runs", str(tmp_path / "runs" / "lofr" / "seed0"), "--results-dir", str(tmp_path / "r2")])
    assert list(again["curves"]) == ["LOFR seed0"] and again["curves"]["LOFR seed0"] == out["curves"]["LOFR"]
    assert "training seed" not in (tmp_path / "r2" / "time_to_accuracy.md").read_text()  # nothing trained here


def test_table4_methods_picks_the_rows(tiny_root, tmp_path):
    out = load_benchmark("table4_semi_weak").main(quick_args(tiny_root, tmp_path, "--fractions", "1.0",
                                                             "--methods", "sup"))
    assert list(out["rows"]) == ["sup-100"]


def test_testbed_quick_and_its_guard_against_another_testbeds_table4(tiny_root, tmp_path):
    tb = load_benchmark("testbed")
    out = tb.main(["--quick", "--data-root", str(tiny_root), "--results-dir", str(tmp_path), "--quiet"])
    assert set(out["cost"]) == {"lofr", "baseline", "cam", "sup"}
    for c in out["cost"].values():
        assert c["cached"]["ms_per_step"] > 0 and c["images"]["ms_per_step"] > 0
    md = (tmp_path / "testbed.md").read_text()
    assert "no table4_semi_weak.json yet" in md
    # a Table 4 from before the Lite0 testbed is named and not used; one from after it is read
    (tmp_path / "table4_semi_weak.json").write_text(json.dumps({"commit": "fc853083720687499d6a6b6eefae02bef02d4181",
                                                                "command": "old", "fractions": [], "rows": {}}))
    rows, note = tb.fraction_rows(tmp_path)
    assert rows == [] and "not used" in note and "fc85308372" in note
    assert tb._on_this_testbed(tb.TESTBED_COMMIT) and not tb._on_this_testbed("fc85308372")


def test_tables_skip_finished_runs_and_resume_unfinished_ones(tiny_root, tmp_path, capsys):
    """A table stopped and started again: finished (row, seed) runs are read from their kept files, an unfinished
    run continues from its last.pt, and --fresh trains everything again."""
    t5 = load_benchmark("table5_modules")
    first = t5.main(quick_args(tiny_root, tmp_path, "--rows", "baseline") + ["max_steps=1"])  # stopped at step 1
    run = tmp_path / "runs" / "baseline" / "seed0"
    kept = tmp_path / "results" / "runs" / "runs" / "baseline-seed0.json"
    assert kept.is_file() and json.loads(kept.read_text())["metrics"] == first["rows"]["baseline"]["per_seed"][0]
    second = t5.main(quick_args(tiny_root, tmp_path, "--rows", "baseline"))  # QUICK's max_steps=2: more to do
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # resumed from step 1, not trained again from 0
    assert "other overrides; training again" in capsys.readouterr().out
    third = t5.main(quick_args(tiny_root, tmp_path, "--rows", "baseline"))
    assert "kept from baseline-seed0.json" in capsys.readouterr().out
    assert third["rows"]["baseline"]["per_seed"] == second["rows"]["baseline"]["per_seed"]
    t5.main(quick_args(tiny_root, tmp_path, "--rows", "baseline", "--fresh"))
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2] and "kept from" not in capsys.readouterr().out


# ------------------------------------------------------------------------- the paper's orderings
def hand_row(*pck01: float) -> dict:
    """A table row with PCK@0.1 = pck01[k] for seed k (mean / std as run_rows computes them)."""
    common = load_benchmark("common")
    m, s = common.mean_std(pck01)
    return {"per_seed": {k: {"PCK@0.1": v} for k, v in enumerate(pck01)}, "mean": {"PCK@0.1": m},
            "std": {"PCK@0.1": s}}


def test_claim_and_its_markdown():
    common = load_benchmark("common")
    c = common.claim("a > b", (0.05, 0.01), ">", 0.0, 3)
    assert c["holds"] and c["clear"]  # 0.05 > 2 x 0.01 away from 0
    c2 = common.claim("a > b", (0.01, 0.01), ">", 0.0, 3)
    assert c2["holds"] and not c2["clear"]
    c3 = common.claim("a - b <= 0.02", (0.03, math.nan), "<=", 0.02, 1)
    assert c3["holds"] is False and not c3["clear"]  # one seed: no spread
    c4 = common.claim("missing", (math.nan, math.nan), ">")
    assert c4["holds"] is None
    md = common.claims_markdown([c, c2, c3, c4]).splitlines()
    assert md[0] == "- **holds**: a > b — Δ +0.050 ± 0.010 over 3 seeds; clear of the seed spread (> 2 std)"
    assert md[1].endswith("within 2 std of the seed spread")
    assert md[2] == "- **does not hold**: a - b <= 0.02 — Δ +0.030 over 1 seed; one seed: no spread"
    assert md[3] == "- **not measured**: missing"


def test_table4_orderings_by_hand():
    t4 = load_benchmark("table4_semi_weak")
    rows = {"sup-5": hand_row(0.60, 0.61, 0.62), "lofr-5": hand_row(0.50, 0.52, 0.51),
            "sup-25": hand_row(0.65, 0.66, 0.64), "lofr-25": hand_row(0.705, 0.715, 0.725),
            "sup-100": hand_row(0.72, 0.73, 0.74)}
    c = t4.orderings(rows, [0.05, 0.25, 1.0])
    assert [x["holds"] for x in c] == [False, True, True, True]
    assert c[0]["mean"] == pytest.approx(-0.10)  # LOFR-WS 5 % - Sup-only 5 %, paired by seed
    assert c[1]["mean"] == pytest.approx(0.065)
    assert c[2]["mean"] == pytest.approx(0.015) and c[2]["threshold"] == 0.02  # Sup-only 100 % - LOFR-WS 25 %
    # resolution: Sup-only 100 % - 5 % = 0.12 against 2 x max(std) = 2 x 0.01
    assert c[3]["threshold"] == pytest.approx(0.02) and c[3]["mean"] == pytest.approx(0.12) and c[3]["clear"]
    # a missing LOFR row: that claim is not measured, the others are
    c = t4.orderings({k: v for k, v in rows.items() if k != "lofr-5"}, [0.05, 0.25, 1.0])
    assert c[0]["holds"] is None and c[1]["holds"]


def test_table5_orderings_by_hand():
    t5 = load_benchmark("table5_modules")
    rows = {"baseline": hand_row(0.20, 0.22), "+SPE": hand_row(0.25, 0.27), "+PDC": hand_row(0.19, 0.20)}
    c = {x["claim"].split(" >")[0]: x for x in t5.orderings(rows)}
    assert c["+SPE"]["holds"] and c["+SPE"]["mean"] == pytest.approx(0.05)
    assert c["+PDC"]["holds"] is False and c["+PDC"]["mean"] == pytest.approx(-0.015)
    assert c["+MS"]["holds"] is None and c["all (LOFR, paper)"]["holds"] is None  # not run


def test_table6_orderings_by_hand():
    t6 = load_benchmark("table6_depths")
    # grows from (1, 1) to (1, 2) clearly, and the deepest (2, 3) is no better than (1, 2): saturates
    rows = {"en1-de1": hand_row(0.10, 0.11, 0.12), "en1-de2": hand_row(0.20, 0.22, 0.21),
            "en2-de3": hand_row(0.19, 0.21, 0.20)}
    grow, sat = t6.orderings(rows)
    assert grow["holds"] and grow["mean"] == pytest.approx(0.10) and "D_En 1, D_De 2" in grow["claim"]
    assert sat["holds"] and sat["mean"] == pytest.approx(-0.01) and "D_En 2, D_De 3" in sat["claim"]
    # no growth beyond the seed spread: "grows" does not hold
    flat = {"en1-de1": hand_row(0.10, 0.20), "en1-de2": hand_row(0.16, 0.15)}
    grow, sat = t6.orderings(flat)
    assert grow["holds"] is False and not grow["clear"]
    assert sat["holds"] is False  # the deepest is the best
    assert [c["holds"] for c in t6.orderings({"en1-de1": hand_row(0.1)})] == [None, None]


def test_table_only_builds_a_partial_table_from_the_kept_runs(tiny_root, tmp_path, capsys):
    """--table-only trains nothing: rows / seeds without a kept run are left out and the md says which."""
    t5 = load_benchmark("table5_modules")
    t5.main(quick_args(tiny_root, tmp_path, "--rows", "baseline"))
    out = t5.main(quick_args(tiny_root, tmp_path, "--rows", "baseline", "+PDC", "--seeds", "0", "1", "--table-only"))
    printed = capsys.readouterr().out
    assert "kept from baseline-seed0.json" in printed and "+PDC (seed 0): not run yet, left out" in printed
    assert list(out["rows"]) == ["baseline"] and list(out["rows"]["baseline"]["per_seed"]) == [0]
    assert not (tmp_path / "runs" / "+PDC").exists()  # nothing trained
    md = (tmp_path / "results" / "table5_modules.md").read_text()
    assert "**State: partial**" in md and "baseline: seeds [0]" in md


def test_self_training_quick_run_keeps_each_seed(tiny_root, tmp_path, capsys):
    """benchmarks/self_training.py --quick: teacher, pseudo-labels and student per seed, one kept file each,
    skipped when run again; --table-only with a seed not run says the table is partial."""
    bench = load_benchmark("self_training")
    tiny = ["arch.d_model=32", "arch.nhead=2", "arch.dec_layers=1", "arch.dim_ff=32"]
    args = ["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--top", "0.5", "--set", *tiny]
    out = bench.main(args)
    kept = tmp_path / "results" / "runs" / "self_training" / "prior-seed0.json"
    record = json.loads(kept.read_text())
    assert {"teacher", "student", "prior", "pseudo", "timing", "settings", "student_pose_prior"} <= set(record)
    assert 0 < record["pseudo"]["kept"] < record["pseudo"]["present"]
    assert 0.0 <= record["student_pose_prior"]["PCK@0.2"] <= 1.0
    assert (tmp_path / "runs" / "prior" / "seed0" / "pseudo_train.json").is_file()
    assert "| synth-cpu-best: teacher synth-cpu-part + pose-prior attention -> Sup-only student | 0 |" in out["table"]
    assert "mean-pose prior (no model)" in out["table"]
    capsys.readouterr()
    bench.main(args[:-len(tiny) - 1] + ["--seeds", "0", "1", "--table-only", "--set", *tiny])
    assert "(seed 0): kept from prior-seed0.json" in capsys.readouterr().out
    md = (tmp_path / "results" / "self_training.md").read_text()
    assert "**State: partial**" in md and "prior: seeds [0]" in md
