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
