"""lofr.semi: the Table-4 rows of notebook 07 (labelled subset, Sup-only's equal-step budget, table, plot)."""

from __future__ import annotations

from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lofr.engine.config import load_config  # noqa: E402
from lofr.engine.trainer import lr_factor  # noqa: E402
import torch  # noqa: E402

from lofr.semi import (format_fraction_table, labelled_indices, peak_stats, plot_fractions,  # noqa: E402
                       row_overrides, sup_only_budget)


def test_labelled_indices_are_the_records_with_locations():
    ds = SimpleNamespace(records=[SimpleNamespace(has_location=h) for h in (0.0, 1.0, 0.0, 1.0, 1.0)])
    assert labelled_indices(ds).tolist() == [1, 3, 4]
    assert labelled_indices(SimpleNamespace(records=[])).tolist() == []


def test_sup_only_budget_matches_lofr_steps_and_schedule_length():
    # 6541 instances, batch 32: LOFR-WS 204 steps/epoch x 10 epochs = 2040 steps
    ep, ms = sup_only_budget(6541, 0.10, 32, 10)
    assert ms == "max_steps=2040"
    per_epoch = round(0.10 * 6541) // 32  # 20
    epochs = int(ep.split("=")[1])
    assert epochs == 102 and (epochs - 1) * per_epoch < 2040 <= epochs * per_epoch
    # with a max_steps cap both stop there; the cosine schedule keeps the full run's length
    assert sup_only_budget(6541, 0.05, 32, 10, max_steps=300) == ["optim.epochs=204", "max_steps=300"]
    optim = load_config("synth-cpu", ["optim.epochs=204"]).optim
    lofr_optim = load_config("synth-cpu", ["optim.epochs=10"]).optim
    for step in (150, 299, 1500):  # the same lr at every step, within a partial epoch's stretch
        assert lr_factor(step, 10, optim) == pytest.approx(lr_factor(step, 204, lofr_optim), abs=0.01)
    assert sup_only_budget(100, 0.1, 32, 10) == []  # not one labelled batch: left to the trainer


def test_row_overrides_load_as_configs():
    sup = row_overrides("sup", 0.25, 6541, 32, 10, max_steps=200)
    assert sup == ["model=sup-only", "loss.mse=1.0", "data.labelled_fraction=0.25", "optim.epochs=40",
                   "max_steps=200"]
    ws = row_overrides("lofr", 0.25, 6541, 32, 10, max_steps=200)
    assert ws == ["model=lofr", "loss.mse=1000", "data.labelled_fraction=0.25"]
    for o, weight in ((sup, 1.0), (ws, 1000.0)):
        cfg = load_config("synth-cpu", o)
        assert cfg.data.labelled_fraction == 0.25 and cfg.loss.mse == weight
    with pytest.raises(ValueError, match="method"):
        row_overrides("all", 0.1, 100, 32, 1)


def _summ(a, b, px):
    return {"PCK@0.1": a, "PCK@0.2": b, "px err": px}


def test_format_fraction_table_and_plot():
    s = {"sup": {0.1: _summ(0.2, 0.5, 30.0), 0.25: _summ(0.3, 0.6, 25.0)},
         "lofr": {0.25: _summ(0.35, 0.65, 22.25)}}
    text = format_fraction_table(s, prior=_summ(0.327, 0.72, 21.9))
    lines = text.splitlines()
    assert "10 %" in lines[0] and "25 %" in lines[0]
    assert len(lines) == 2 + 3 * 3  # header, rule, 3 rows x 3 metrics
    lofr_pck = next(line for line in lines if line.startswith("LOFR-WS") and "PCK@0.1" in line)
    assert lofr_pck.split()[-1] == "0.350" and len(lofr_pck.split()) == 5  # no 10 % value: blank cell
    assert any(line.startswith("mean-pose prior") and line.endswith("21.9     21.9") for line in lines)
    fig = plot_fractions(s, prior=_summ(0.327, 0.72, 21.9), title="t")
    axes = fig.axes
    assert len(axes) == 2 and axes[0].get_title() == "PCK@0.1 vs labelled fraction"
    assert [ln.get_label() for ln in axes[1].get_lines()] == ["Sup-only", "LOFR-WS (Eq. 15)", "mean-pose prior"]
    np.testing.assert_allclose(axes[0].get_lines()[0].get_xydata(), [[10, 0.2], [25, 0.3]])
    plt.close(fig)


def test_peak_stats_counts_distinct_and_border_peaks():
    maps = torch.zeros(2, 3, 4, 5)
    maps[0, 0, 1, 1] = maps[0, 1, 2, 3] = maps[0, 2, 1, 2] = 1  # crop 0: three inner cells
    maps[1, :, 0, 4] = 1  # crop 1: every joint on one corner cell
    s = peak_stats(maps)
    assert s == {"distinct": 2.0, "joints": 3.0, "border": 0.5}
    present = torch.tensor([[True, True, False], [True, False, False]])
    s = peak_stats(maps, present)
    assert s["distinct"] == 1.5 and s["joints"] == 1.5 and s["border"] == pytest.approx(1 / 3)
    assert np.isnan(peak_stats(maps, torch.zeros(2, 3, dtype=torch.bool))["distinct"])
