"""benchmarks/cam_pooling.py --quick on a tiny generated SynthPose: every row trains the plain CAM
(model=cam) and the table has the rows, the group columns and the prior."""

from __future__ import annotations

import json

from conftest import load_benchmark


def test_cam_pooling_quick(tiny_root, tmp_path):
    root = tiny_root
    mod = load_benchmark("cam_pooling")
    out = mod.main(["--quick", "--data-root", str(root), "--runs-dir", str(tmp_path / "runs"),
                    "--results-dir", str(tmp_path / "results"), "--threads", "1", "--rows", "gap-s16", "lse-s8",
                    "lse-s8-strict"])
    assert list(out["rows"]) == ["gap-s16", "lse-s8", "lse-s8-strict"]
    for row in out["rows"].values():
        assert 0.0 <= row["mean"]["PCK@0.2"] <= 1.0
        extra = next(iter(row["extra"].values()))
        assert set(extra["groups"]) == {"face", "arms", "legs"} and "PCK@0.1" in extra["prior"]
    md = (tmp_path / "results" / "cam_pooling.md").read_text()
    for text in ("CAM, stride 16, GAP (paper)", "CAM, stride 8, LSE r=5", "strict labels", "mean-pose prior",
                 "face PCK@0.1"):
        assert text in md
    again = mod.main(["--checkpoint-dir", str(tmp_path / "runs"), "--data-root", str(root), "--results-dir",
                      str(tmp_path / "results"), "--rows", "lse-s8", "--results-name", "leak", "--quick"])
    assert list(again["rows"]) == ["lse-s8"] and (tmp_path / "results" / "leak.md").is_file()
    written = json.loads((tmp_path / "results" / "cam_pooling.json").read_text())
    assert written["command"].startswith("python benchmarks/cam_pooling.py --quick") and "commit" in written


def test_presence_scale_quick(tiny_root, tmp_path):
    """Both rows train on their own training set and are scored on the same val crops; the big set is
    the small one grown (its first images are the small set's), and the BCE columns are filled."""
    mod = load_benchmark("presence_scale")
    big = tmp_path / "big"
    out = mod.main(["--quick", "--data-root", str(tiny_root), "--big-train", "24", "--big-root", str(big),
                    "--runs-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")])
    assert list(out["rows"]) == ["5k", "big"]
    small_ann = json.loads((tiny_root / "annotations" / "person_keypoints_train2017.json").read_text())
    big_ann = json.loads((big / "annotations" / "person_keypoints_train2017.json").read_text())
    assert len(big_ann["images"]) == 24 and big_ann["annotations"][:3] == small_ann["annotations"][:3]
    extras = [next(iter(r["extra"].values())) for r in out["rows"].values()]
    assert [e["images"] for e in extras] == [16, 24]
    for e in extras:
        assert 0 < e["val_bce"] < 5 and 0 < e["marginal_bce"] < 1 and e["train_bce"] > 0
    for row in out["rows"].values():  # the same val set: the small root's, whatever the row's data.root
        assert f"data.val_ann={tiny_root}" in " ".join(row["overrides"])
    md = (tmp_path / "results" / "presence_scale.md").read_text()
    assert "SynthPose, 24 training images" in md and "marginal BCE" in md


def test_presence_scale_budget_and_refusal(tmp_path):
    mod = load_benchmark("presence_scale")
    assert mod.steps_overrides(6541, 32, 8000) == ["optim.epochs=40", "max_steps=8000"]  # 204 steps / epoch
    assert mod.steps_overrides(51969, 32, 8000) == ["optim.epochs=5", "max_steps=8000"]  # 1624 steps / epoch
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "person_keypoints_train2017.json").write_text('{"info": {"version": "coco"}}')
    import pytest

    with pytest.raises(ValueError, match="grows SynthPose only"):
        mod.big_root(tmp_path, 10, tmp_path / "big")
