"""benchmarks/learning_curves.py, label_stats.py, occlusion.py and decode_weight.py on a tiny generated SynthPose: the curve's
points are kept per run and a second start skips them and resumes the run; the verdict rule on hand curves;
the label statistics and the occlusion sweep write their tables."""

from __future__ import annotations

import json

import pytest
from conftest import load_benchmark

pytestmark = pytest.mark.slow
TINY = ["arch.d_model=32", "arch.nhead=2", "arch.dim_ff=32"]


@pytest.fixture()
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LOFR_FEATURE_CACHE", str(tmp_path / "fcache"))


def curve_args(tiny_root, tmp_path, *extra) -> list[str]:
    return ["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "results"), "--threads", "1", *extra, "--set", *TINY]


def test_verdict_rule_on_hand_curves():
    lc = load_benchmark("learning_curves")

    def c(*values, seeds=(0,)):  # {step: {seed: value}}, the same values for every seed
        return {100 * 2 ** i: {k: v for k in seeds} for i, v in enumerate(values)}

    assert lc.verdict(c(0.10, 0.15, 0.20, 0.25), 0.33).startswith("budget-limited: +0.100 over the last two")
    # a noisy plateau: the last doubling alone gains +0.07, the smoothed trend +0.005
    assert lc.verdict(c(0.21, 0.27, 0.21, 0.28), 0.33).startswith("mechanism-limited: +0.005")
    assert lc.verdict(c(0.30, 0.35, 0.36, 0.36), 0.33).startswith("above the prior")
    assert lc.verdict(c(0.1, 0.2, 0.3), 0.33) == "too few points"
    # PCK@0.1 above its prior, PCK@0.2 below: not "above the prior"
    v = lc.verdict(c(0.30, 0.35, 0.352, 0.352), 0.33, c(0.60, 0.65, 0.70, 0.70), 0.72)
    assert v.startswith("budget-limited: +0.027") and "above the prior at PCK@0.1, 0.020 below it at PCK@0.2" in v
    assert lc.verdict(c(0.3, 0.35, 0.36, 0.36), 0.33, c(0.3, 0.35, 0.36, 0.36), 0.30).startswith(
        "above the prior (0.360 > 0.330; 0.360 > 0.300")
    # only the seeds that reached all four points count: seed 1 stopped early and is left out
    mixed = {100: {0: 0.1, 1: 0.5}, 200: {0: 0.1, 1: 0.5}, 400: {0: 0.1, 1: 0.5}, 800: {0: 0.1}}
    assert lc.verdict(mixed, 0.33).startswith("mechanism-limited: +0.000 over the last two doublings (1 seed)")


def test_learning_curve_points_are_kept_and_a_restart_resumes(tiny_root, tmp_path, own_cache, capsys):
    lc = load_benchmark("learning_curves")
    lc._EVAL.clear()
    lc.main(curve_args(tiny_root, tmp_path, "--rows", "cam-peak-s8", "lofr", "--steps", "1"))  # stopped after 1 point
    pfile = tmp_path / "results" / "learning_curves" / "lofr-seed0.json"
    first = json.loads(pfile.read_text())
    assert list(first["points"]) == ["1"] and {"PCK@0.1", "pp", "cam", "cam_pp"} <= set(first["points"]["1"])
    md = (tmp_path / "results" / "learning_curves.md").read_text()
    assert "cheapest regime" in md and "mean-pose prior" in md
    lc._EVAL.clear()
    out = lc.main(curve_args(tiny_root, tmp_path, "--rows", "cam-peak-s8", "lofr", "--steps", "1", "2"))
    second = json.loads(pfile.read_text())
    assert list(second["points"]) == ["1", "2"] and second["points"]["1"] == first["points"]["1"]  # skipped
    metrics = [json.loads(x) for x in (tmp_path / "runs" / "lofr" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [1, 2]  # resumed from last.pt at step 1, not trained again from 0
    assert (tmp_path / "runs" / "lofr" / "seed0" / "step2.pt").is_file()
    assert out["state"] == "complete" and (tmp_path / "results" / "learning_curves.png").is_file()
    # the table from the files alone; a point asked for and missing makes the state partial
    table = lc.main(curve_args(tiny_root, tmp_path, "--table-only", "--steps", "1", "2", "4"))
    assert table["state"].startswith("PARTIAL") and "lofr seed 0: steps [4]" in table["state"]


def test_occlusion_score_hand_computed():
    import numpy as np

    oc = load_benchmark("occlusion")
    # one crop, one joint at pixel (20, 5) -> patch (row 0, col 1) of a 2x4 grid of 16 px patches
    drops = np.zeros((1, 1, 2, 4))
    drops[0, 0, 0, 1] = 0.4  # masking the joint's patch costs most
    drops[0, 0, 1, 3] = 0.2  # the only patch more than one patch away that matters
    s = oc.score(drops, np.array([[[20.0, 5.0]]]), np.array([[True]]), np.array([[56.0, 24.0]]), 16)
    assert s["joints"] == 1 and s["drop_at_joint"] == pytest.approx(0.4) and s["hit"] == 1.0
    assert s["drop_elsewhere"] == pytest.approx(0.2 / 2)  # cells (0, 3) and (1, 3) are > 1 patch away
    assert s["prior_hit"] == 0.0  # the prior's patch (1, 3) is two columns away
    assert s["chance_hit"] == pytest.approx(6 / 8)


def test_label_stats_occlusion_and_decode_weight_write_their_tables(tiny_root, tmp_path, own_cache):
    ls = load_benchmark("label_stats")
    out = ls.main(["--data-root", str(tiny_root), "--results-dir", str(tmp_path / "res"), "--set", *TINY,
                   "data.workers=0"])
    assert 0.0 <= out["means"]["mirror"]["crop"] <= 1.0 and "left_wrist / right_wrist" in out["table"]
    assert (tmp_path / "res" / "label_stats.md").is_file()
    # occlusion on a 2-step plain CAM
    from lofr.engine.config import load_config
    from lofr.engine.trainer import train

    cfg = load_config("synth-cpu", [f"data.root={tiny_root}", "model=cam", "arch.cam_stride=8", "max_steps=2",
                                    "optim.batch_size=8", "data.workers=0", "data.cache_views=0",
                                    "arch.freeze_to=16", "eval_every=0", "data.eval_batch_size=8"])
    res = train(cfg, tmp_path / "cam" / "seed0", progress=False)
    oc = load_benchmark("occlusion")
    occ = oc.main([res["last"], "--crops", "3", "--results-dir", str(tmp_path / "res")])
    row = next(iter(occ["results"].values()))
    assert row["joints"] > 0 and 0.0 <= row["hit"] <= 1.0 and 0.0 < row["chance_hit"] < 1.0
    import shutil  # --append keeps the rows of other checkpoints, replaces those of the same one

    other = shutil.copy(res["last"], tmp_path / "cam" / "seed0" / "other.pt")
    both = oc.main([str(other), res["last"], "--crops", "3", "--results-dir", str(tmp_path / "res"), "--append"])
    assert len(both["results"]) == 2 and both["results"]["cam seed0 last"] == row
    again = oc.main([str(other), "--crops", "3", "--results-dir", str(tmp_path / "res"), "--append"])
    assert len(again["results"]) == 2 and "cam seed0 other" in again["table"] and "cam seed0 last" in again["table"]
    dw = load_benchmark("decode_weight")
    sweep = dw.main([res["last"], "--alphas", "0", "1", "--results-dir", str(tmp_path / "res")])
    r = next(iter(sweep["results"].values()))
    assert set(r["sweep"]) == {"0.0", "1.0"} and r["best_alpha"] in (0.0, 1.0)
    assert "alpha 0 " in (tmp_path / "res" / "decode_weight.md").read_text()


def test_best_recipe_quick_and_scoring_fewer_seeds(tiny_root, tmp_path, own_cache, capsys):
    br = load_benchmark("best_recipe")
    args = ["--quick", "--data-root", str(tiny_root), "--runs-dir", str(tmp_path / "runs"), "--results-dir",
            str(tmp_path / "res"), "--threads", "1", "--rows", "default", "--set", *TINY]
    out = br.main(args)
    row = out["rows"]["default"]
    assert "prior" in row["extra"][0] and 0.0 <= row["mean"]["PCK@0.1"] <= 1.0
    md = (tmp_path / "res" / "best_recipe.md").read_text()
    assert "mean-pose prior (no model)" in md and "- prior @0.1" in md
    # scoring stored runs: a seed without a checkpoint is left out, and said so
    scored = br.main(args + ["--checkpoint-dir", str(tmp_path / "runs"), "--seeds", "0", "1", "--note", "where from"])
    assert list(scored["rows"]["default"]["per_seed"]) == [0] and "seed 1): no " in capsys.readouterr().out
    assert "where from" in (tmp_path / "res" / "best_recipe.md").read_text()
