"""lofr.ablations: the rows of Table 5 / Table 6 load, build and switch on what they claim; the
baseline-like LOFR is exactly the Baseline (parameters and loss weights)."""

from __future__ import annotations

import pytest
import torch

from lofr.ablations import BASE, CPU_GRID, FULL_GRID, MODULES, TABLE5_ROWS, grid_rows, with_modules
from lofr.engine.config import load_config
from lofr.engine.trainer import build_model, loss_weights

SWITCH = {"SPE": "use_spe", "MS": "multi_scale", "RePPG": "use_reppg", "PDC": "use_pdc"}


def built(overrides: list[str]):
    """(config, model) of synth-cpu + ``overrides``, initialised with seed 0."""
    cfg = load_config("synth-cpu", overrides)
    torch.manual_seed(0)
    return cfg, build_model(cfg)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_baseline_like_lofr_is_the_baseline():
    (cb, base), (cl, like) = built(["model=baseline"]), built(BASE)
    assert type(like).__name__ == "LOFR" and type(base).__name__ == "Baseline"
    a, b = base.state_dict(), like.state_dict()
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert n_params(base) == n_params(like)
    assert loss_weights(cb, base) == loss_weights(cl, like)
    w = loss_weights(cl, like)
    assert w.cls_cnn == w.cls_enc == w.div == 0.0 and w.cls_final > 0


@pytest.mark.parametrize("key", list(TABLE5_ROWS))
def test_every_table5_row_loads_builds_and_runs(key):
    label, overrides = TABLE5_ROWS[key]
    cfg, model = built(overrides)
    assert label and n_params(model) > 0
    out = model.eval()(torch.zeros(2, 3, *cfg.data.input_size))
    assert out["logits"].shape == (2, 17)
    if key.startswith("+") or key == "all":
        on = {m for m in MODULES if m in key} if key != "all" else set(MODULES)
        arch = cfg.arch
        for m, flag in SWITCH.items():
            assert bool(arch[flag]) == (m in on), (key, flag)
        assert arch["dec_value"] == "memory"  # the paper's decoder values in every module row
        assert bool(arch["cam_head"]) == bool(on & {"SPE", "RePPG"})
        assert bool(arch["enc_head"]) == ("MS" in on)
        w = loss_weights(cfg, model)
        assert (w.cls_cnn > 0) == bool(on & {"SPE", "RePPG"}) and (w.div > 0) == ("PDC" in on)


def test_module_rows_add_parameters_except_pdc():
    """PDC is a loss only: "+PDC" has the baseline's parameters; every other module adds some."""
    base = n_params(built(BASE)[1])
    assert n_params(built(with_modules("PDC"))[1]) == base
    for m in ("SPE", "MS", "RePPG"):
        assert n_params(built(with_modules(m))[1]) > base, m


def test_with_modules_later_keys_win():
    ov = with_modules("SPE")
    assert ov[: len(BASE)] == BASE and ov[len(BASE):] == MODULES["SPE"]
    assert load_config("synth-cpu", ov).arch["cam_head"] is True  # BASE said false, SPE says true


def test_depth_grid_rows():
    rows = grid_rows(*CPU_GRID)
    assert list(rows) == [f"en{a}-de{b}" for a in (1, 2) for b in (1, 2, 3)]
    assert len(grid_rows(*FULL_GRID)) == 16 and list(grid_rows(*FULL_GRID))[-1] == "en6-de6"
    label, ov = rows["en2-de3"]
    assert label == "D_En 2, D_De 3"
    cfg, model = built(ov)
    assert cfg.arch["enc_layers"] == 2 and cfg.arch["dec_layers"] == 3 and type(model).__name__ == "LOFR"
    assert n_params(model) > n_params(built(rows["en1-de1"][1])[1])
