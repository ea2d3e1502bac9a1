"""lofr.fullscale: recipe rows, paper deviations, the paper's numbers, the CrowdPose fixture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lofr.data.check import check_dataset
from lofr.data.schemas import COCO17
from lofr.engine.config import load_config
from lofr.fullscale import (PAPER_RESULTS, RECIPES, coco17_to_crowdpose14, crowd_index, crowdpose_fixture,
                            format_table, paper_deviations, paper_row, recipe_row, shrink_overrides)

PAPER = Path(__file__).resolve().parents[2] / "shared" / "paper" / "location-free-hpe.txt"


def test_every_shipped_recipe_follows_sec42():
    for name in RECIPES:
        assert paper_deviations(load_config(name)) == [], name


def test_deviations_are_reported():
    cfg = load_config("coco-r50-256x192", ["optim.lr=1e-3", "arch.dec_layers=4", "data.input_size=[128,96]"])
    msgs = " | ".join(paper_deviations(cfg))
    assert "optim.lr" in msgs and "D_En/D_De 4/4" in msgs and "input_size" in msgs
    mpii = load_config("mpii-r50-256x256", ["data.aug.half_body_prob=0.0", "optim.epochs=100"])
    msgs = " | ".join(paper_deviations(mpii))
    assert "half_body" in msgs and "optim.epochs 100" in msgs


def test_recipe_row_and_table():
    row = recipe_row(load_config("mpii-r50-256x256"))
    assert row["backbone"] == "R50" and row["input"] == "256x256" and row["D_En/D_De"] == "4/6"
    assert row["epochs"] == "160" and row["a/a1/a2/b"] == "0.2/0.2/0.5/0.1" and row["tr. lr x"] == "0.1"
    text = format_table([row, paper_row("mpii")])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[0].startswith("config") and set(lines[1]) == {"-"}
    assert "paper, mpii" in lines[3] and "256x256 or 384x384" in lines[3]


def test_shrink_overrides_keep_the_architecture():
    cfg = load_config("coco-r50-256x192", shrink_overrides((128, 96), batch=4, steps=3))
    assert cfg.arch["pretrained"] is False and tuple(cfg.data.input_size) == (128, 96)
    assert cfg.optim.batch_size == 4 and cfg.max_steps == 3 and cfg.amp == "off" and cfg.device == "cpu"
    ref = load_config("coco-r50-256x192")
    assert {k: v for k, v in cfg.arch.items() if k != "pretrained"} == \
        {k: v for k, v in ref.arch.items() if k != "pretrained"}
    assert cfg.optim.lr == ref.optim.lr and cfg.loss == ref.loss


@pytest.mark.skipif(not PAPER.is_file(), reason="paper text not available")
def test_paper_numbers_are_quoted_exactly():
    lines = PAPER.read_text().splitlines()
    label = {"LOFR": "Ours-LOFR", "Baseline": "Baseline"}
    for table, _, method, back, size, values in PAPER_RESULTS:
        needle = "\t".join(f"{v:.1f}" for v in values.values())
        hits = [ln for ln in lines if needle in ln]
        assert hits, f"{table} {method} {back} {size}: {needle!r} not in the paper"
        if table != "Table 5":  # Table 5's rows are numbered, not named
            assert any(ln.startswith(label[method]) for ln in hits), (table, method, hits)
        if table == "Table 1":
            assert any(f"\t{back}\t{size.replace('x', '×')}\t" in ln for ln in hits), (table, method, back, size)


def test_coco17_to_crowdpose14_hand_case():
    k = np.zeros((17, 3))
    names = {n: i for i, n in enumerate(COCO17.keypoints)}
    k[names["nose"]] = [50, 20, 2]
    k[names["left_shoulder"]] = [60, 40, 2]
    k[names["right_shoulder"]] = [40, 40, 1]
    k[names["left_ankle"]] = [58, 150, 2]
    out = coco17_to_crowdpose14(k, 100, 200)
    assert out.shape == (14, 3)
    np.testing.assert_allclose(out[0], [60, 40, 2])  # left_shoulder
    np.testing.assert_allclose(out[10], [58, 150, 2])  # left_ankle
    np.testing.assert_allclose(out[13], [50, 40, 1])  # neck = shoulders' midpoint, v = min
    np.testing.assert_allclose(out[12], [50, 10, 1])  # head top = nose + (nose - neck) / 2
    assert (out[[2, 3, 4, 5, 6, 7, 8, 9, 11]] == 0).all()
    k[names["nose"]] = [50, 5, 2]  # head top would be at y = -12.5: outside the image -> unlabelled
    assert (coco17_to_crowdpose14(k, 100, 200)[12] == 0).all()


def test_crowd_index_hand_case():
    a = {"keypoints": [10, 10, 2, 20, 20, 2, 0, 0, 0], "bbox": [0, 0, 30, 30]}
    b = {"keypoints": [25, 25, 2, 100, 100, 2, 0, 0, 0], "bbox": [20, 20, 90, 90]}
    # a's box holds 1 of b's 2 joints (1/2); b's box holds 1 of a's joints (20, 20) (1/2)
    assert crowd_index([a, b]) == pytest.approx(0.5)
    assert crowd_index([a]) == 0.0 and crowd_index([]) == 0.0


def test_crowdpose_fixture_passes_the_data_check(synthpose_small, tmp_path):
    root = crowdpose_fixture(synthpose_small, tmp_path / "cp", n_trainval=6, n_test=3)
    test = json.loads((root / "annotations" / "crowdpose_test.json").read_text())
    assert len(test["images"]) == 3 and all(im["id"] > 100000 and im["file_name"].startswith("test_")
                                            for im in test["images"])
    assert all(0.0 <= im["crowdIndex"] <= 1.0 for im in test["images"])
    assert all(len(a["keypoints"]) == 42 for a in test["annotations"])
    rep = check_dataset(root, "crowdpose", draw=False)
    assert rep.ok, rep.format()
    assert rep.counts["val_ann"]["images"] == 3
