"""benchmarks/cam_pooling.py --quick on a tiny generated SynthPose: every row trains the plain CAM
(model=cam) and the table has the rows, the group columns and the prior."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_cam_pooling_quick(synth_tiny, tmp_path):
    root = synth_tiny
    sys.path.insert(0, str(ROOT / "benchmarks"))
    spec = importlib.util.spec_from_file_location("bench_cam_pooling", ROOT / "benchmarks" / "cam_pooling.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = mod.main(["--quick", "--data-root", str(root), "--runs-dir", str(tmp_path / "runs"),
                    "--results-dir", str(tmp_path / "results"), "--threads", "1", "--rows", "gap-s16", "lse-s8"])
    assert list(out["rows"]) == ["gap-s16", "lse-s8"]
    for row in out["rows"].values():
        assert 0.0 <= row["mean"]["PCK@0.2"] <= 1.0
        extra = next(iter(row["extra"].values()))
        assert set(extra["groups"]) == {"face", "arms", "legs"} and "PCK@0.1" in extra["prior"]
    md = (tmp_path / "results" / "cam_pooling.md").read_text()
    for text in ("CAM, stride 16, GAP (paper)", "CAM, stride 8, LSE r=5", "mean-pose prior", "face PCK@0.1"):
        assert text in md
    written = json.loads((tmp_path / "results" / "cam_pooling.json").read_text())
    assert written["command"].startswith("python benchmarks/cam_pooling.py --quick") and "commit" in written
