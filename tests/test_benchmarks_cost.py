"""benchmarks/cost.py (issue 6 item 6), benchmarks/gpu.sh (item 8) and benchmarks/common.py: the
FLOP-counting convention on hand cases, the cost ratio, the --quick table and JSON, and the GPU
script's CPU dry run."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cost():
    return load("cost")


@pytest.fixture(scope="module")
def common():
    return load("common")


# ------------------------------------------------------------------------------------ FLOP convention
def test_macs_of_a_linear_layer(cost):
    # (2, 3) @ (3, 5): 2 * 3 * 5 = 30 multiply-adds; torch's counter says 60 FLOPs; the bias is not counted
    assert cost.count_macs(nn.Linear(3, 5), torch.randn(2, 3)) == 30


def test_macs_of_a_convolution(cost):
    # 4 output channels x 5 x 5 output pixels x (2 input channels x 3 x 3 kernel) = 1800
    conv = nn.Conv2d(2, 4, kernel_size=3, padding=1, bias=False)
    assert cost.count_macs(conv, torch.randn(1, 2, 5, 5)) == 1800


def test_macs_of_cpu_attention(cost):
    # torch's counter has no formula for CPU SDPA; ours: per head Q K^T (10 x 8 x 10) + A V (10 x 10 x 8)
    # = 1600 MACs, 2 heads -> 3200
    class Attn(nn.Module):
        def forward(self, q):
            return F.scaled_dot_product_attention(q, q, q)

    assert cost.count_macs(Attn(), torch.randn(1, 2, 10, 8)) == 3200


def test_macs_per_image_is_one_image(cost):
    model = nn.Sequential(nn.Conv2d(3, 2, 1, bias=False), nn.Flatten())
    # 2 output channels x (4 x 4) pixels x 3 input channels = 96 per image
    assert cost.macs_per_image(model, (4, 4), torch.device("cpu")) == 96


# ------------------------------------------------------------------------------------ ratio / table
def test_ratio_is_cost_over_cost(cost):
    base = {c: 1.0 for c in cost.COLUMNS} | {"params_m": 2.0, "train_ips": 100.0, "infer_ips_b1": 50.0,
                                             "infer_ips_bN": 400.0}
    lofr = {c: 1.0 for c in cost.COLUMNS} | {"params_m": 3.0, "train_ips": 50.0, "infer_ips_b1": 50.0,
                                             "infer_ips_bN": 800.0}
    r = cost.ratio(lofr, base)
    assert r["params_m"] == pytest.approx(1.5)  # LOFR / baseline
    assert r["train_ips"] == pytest.approx(2.0)  # half the img/s = twice the time per image
    assert r["infer_ips_b1"] == pytest.approx(1.0) and r["infer_ips_bN"] == pytest.approx(0.5)
    base["gmacs"] = 0.0
    assert math.isnan(cost.ratio(lofr, base)["gmacs"])


def test_timed_repeats_until_min_time(cost):
    calls = []

    def run(k):
        calls.append(k)
        return 0.3  # seconds per chunk of k steps

    assert cost.timed(run, 2, 1.0) == (8, pytest.approx(1.2))  # 4 chunks: 0.9 s < 1 s after 3
    assert calls == [2, 2, 2, 2]
    assert cost.timed(run, 5, 0.0) == (5, pytest.approx(0.3))  # at least one chunk


def test_markdown_table_and_write_results(common, tmp_path):
    table = common.markdown_table(["a", "b"], [[1, "x"]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |"]
    with pytest.raises(ValueError, match="1 cells for 2 headers"):
        common.markdown_table(["a", "b"], [[1]])
    with pytest.raises(KeyError, match="commit"):
        common.write_results({"command": "c", "machine": {}, "wall_s": 1, "table": table}, "t", "T", tmp_path)
    out = {"command": "python x.py", "commit": "abc", "machine": common.machine_info("cpu"), "wall_s": 1.5,
           "table": table}
    j, md = common.write_results(out, "t", "Title", tmp_path, notes="a note")
    assert json.loads(j.read_text())["commit"] == "abc"
    text = md.read_text()
    assert text.startswith("# Title") and "`python x.py`" in text and table in text and "a note" in text
    assert out["machine"]["cpu_count"] >= 1 and out["machine"]["torch"] == torch.__version__


# ------------------------------------------------------------------------------------ the script
@pytest.mark.slow
def test_quick_run_table_and_json(cost, tmp_path, capsys):
    out = cost.main(["--quick", "--configs", "synth-cpu", "--threads", "1", "--results-dir", str(tmp_path),
                     "--set", "arch.d_model=32", "arch.nhead=2", "arch.dim_ff=32"])
    res = out["results"]["synth-cpu"]
    assert set(res) == {"baseline", "lofr", "ratio"}
    for key in ("baseline", "lofr"):
        row = res[key]
        assert row["input_size"] == [64, 48] and row["train_batch"] == 4 and row["infer_batch"] == 4
        for c in cost.COLUMNS:
            assert math.isfinite(row[c]) and row[c] > 0, (key, c, row[c])
        assert row["gflops"] == pytest.approx(2 * row["gmacs"])
    # LOFR adds the CAM head, SPE, the multi-scale encoder and RePPG to the same CNN + transformer
    assert res["lofr"]["params_m"] > res["baseline"]["params_m"] and res["ratio"]["params_m"] > 1
    assert res["ratio"]["train_ips"] == pytest.approx(res["baseline"]["train_ips"] / res["lofr"]["train_ips"])

    written = json.loads((tmp_path / "cost.json").read_text())
    assert written["command"].startswith("python benchmarks/cost.py --quick")
    assert {"commit", "machine", "wall_s", "device", "amp", "steps", "conventions", "results", "table"} <= set(written)
    assert written["device"] == "cpu" and written["amp"] == "off" and written["steps"] == 2
    assert written["machine"]["cpu_count"] >= 1 and written["machine"]["cpu_model"]
    md = (tmp_path / "cost.md").read_text()
    for text in ("| config | model |", "params (M)", "GMACs/img", "train img/s (batch)", "infer img/s b1",
                 "infer img/s b4", "train mem (MiB)", "| synth-cpu | Baseline |", "| synth-cpu | LOFR |",
                 "| synth-cpu | **LOFR / Baseline** |"):
        assert text in md, text
    assert "| synth-cpu | LOFR |" in capsys.readouterr().out


@pytest.mark.slow
def test_child_memory_grows_with_the_batch_and_ignores_the_parent(cost):
    # a parent far bigger than the child: its peak RSS must not leak into the child's reading
    # (getrusage's ru_maxrss survives exec, hence VmHWM reset through /proc/self/clear_refs)
    ballast = torch.ones(100 * 2**20)  # 400 MiB, touched
    small = cost.cpu_memory("synth-cpu", "baseline", ["data.input_size=[32,32]"], "infer", 1, 1)
    big = cost.cpu_memory("synth-cpu", "baseline", ["data.input_size=[32,32]"], "train", 64, 1)
    assert ballast.sum() > 0
    assert big["mem_mib"] > small["mem_mib"] >= 0 and big["peak_rss_mib"] > 0
    if small["method"].startswith("VmHWM"):
        assert small["mem_mib"] < 100, small


def test_bad_config_names_it(cost, tmp_path):
    with pytest.raises(Exception, match="no-such-config"):
        cost.main(["--quick", "--configs", "no-such-config", "--results-dir", str(tmp_path)])


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "RESULTS": str(tmp_path / "results"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for text in ("1/3 cost", "2/3 SynthPose", "3/3 the COCO R50 256x192 recipe", "mean-pose prior", "done in"):
        assert text in proc.stdout, text
    cost = json.loads((tmp_path / "results" / "cost_gpu.json").read_text())
    assert set(cost["results"]) == {"coco-r50-256x192"} and cost["device"] == "cpu"
    recipe = json.loads((tmp_path / "results" / "gpu_recipe.json").read_text())
    assert recipe["steps"] == 2 and recipe["batch"] == 4 and "PCK@0.1" in recipe["val"]
    assert recipe["command"] == "QUICK=1 bash benchmarks/gpu.sh"
