"""Self-training (lofr.selftrain, ``lofr pseudo-label``): the per-joint confident selection on a hand case,
and pseudo-labels that come from the teacher alone — moving every annotated keypoint changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lofr.cli import main
from lofr.selftrain import select_confident

TINY = ["data.workers=0", "arch.d_model=32", "arch.nhead=2", "arch.enc_layers=1", "arch.dec_layers=1",
        "arch.dim_ff=64", "optim.batch_size=8", "optim.epochs=1", "optim.warmup_steps=1", "max_steps=2",
        "data.eval_batch_size=8", "eval_every=0"]


def test_select_confident_hand_case():
    scores = np.array([[0.9, 0.1], [0.5, 0.8], [0.2, 0.7], [0.7, 0.3]])
    present = np.array([[1, 1], [1, 0], [1, 1], [0, 1]], dtype=bool)
    # joint 0: present scores 0.9, 0.5, 0.2 -> median 0.5 -> rows 0, 1 (row 3's 0.7 is absent: never kept)
    # joint 1: present scores 0.1, 0.7, 0.3 -> median 0.3 -> rows 2, 3 (row 1's 0.8 is absent)
    keep = select_confident(scores, present, 0.5)
    assert keep.tolist() == [[True, False], [True, False], [False, True], [False, True]]
    assert (select_confident(scores, present, 1.0) == present).all()
    assert not select_confident(scores, present, 0.0).any()
    with pytest.raises(ValueError, match="top_fraction"):
        select_confident(scores, present, 1.5)
    with pytest.raises(ValueError, match="both be"):
        select_confident(scores, present[:, :1], 0.5)


@pytest.fixture(scope="module")
def teacher(tiny_root, tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher")
    assert main(["train", "--config", "synth-cpu", "--data", str(tiny_root), "--out", str(run), "--quiet", *TINY]) == 0
    return run / "last.pt"


def test_pseudo_labels_come_from_the_teacher_not_the_annotations(teacher, tiny_root, tmp_path):
    from lofr.data.topdown import TopDownDataset
    from lofr.engine.trainer import load_model
    from lofr.selftrain import pseudo_label

    model, cfg = load_model(teacher)
    ann_file = tiny_root / "annotations" / "person_keypoints_train2017.json"
    crops = TopDownDataset(ann_file, tiny_root / "train2017", input_size=tuple(cfg.data.input_size))
    ann, stats = pseudo_label(model, crops, top_fraction=0.5, batch_size=8)
    original = {a["id"]: np.asarray(a["keypoints"]).reshape(-1, 3) for a in json.loads(ann_file.read_text())["annotations"]}
    assert stats["instances"] == len(crops) and 0 < stats["kept"] < stats["present"]
    for a in ann["annotations"]:
        kp = np.asarray(a["keypoints"]).reshape(-1, 3)
        assert set(np.unique(kp[:, 2])) <= {0, 2} and a["num_keypoints"] == int((kp[:, 2] > 0).sum())
        assert not (kp[:, 2] > 0)[original[a["id"]][:, 2] == 0].any()  # never a joint the labels call absent
    # the same crops with every annotated keypoint moved (visibility kept): the same pseudo-labels
    moved = json.loads(ann_file.read_text())
    rng = np.random.default_rng(0)
    for a in moved["annotations"]:
        kp = np.asarray(a["keypoints"], dtype=float).reshape(-1, 3)
        kp[kp[:, 2] > 0, :2] += rng.uniform(-20, 20, size=(int((kp[:, 2] > 0).sum()), 2))
        a["keypoints"] = kp.reshape(-1).tolist()
    moved_file = tmp_path / "moved.json"
    moved_file.write_text(json.dumps(moved))
    crops_moved = TopDownDataset(moved_file, tiny_root / "train2017", input_size=tuple(cfg.data.input_size))
    ann_moved, _ = pseudo_label(model, crops_moved, top_fraction=0.5, batch_size=8)
    assert ann_moved["annotations"] == ann["annotations"]
    # a student can train on them: the file loads as a TopDownDataset with the kept joints located
    out = tmp_path / "pseudo.json"
    out.write_text(json.dumps(ann))
    student = TopDownDataset(out, tiny_root / "train2017", input_size=tuple(cfg.data.input_size))
    assert 0 < len(student) <= len(crops)
    with pytest.raises(ValueError, match="eval-mode"):
        pseudo_label(model, TopDownDataset(ann_file, tiny_root / "train2017", train=True), 0.5)


def test_pseudo_label_command_writes_annotations_and_rejects_a_bad_fraction(teacher, tiny_root, tmp_path, capsys):
    out = tmp_path / "pseudo" / "train.json"
    assert main(["pseudo-label", "--checkpoint", str(teacher), "--out", str(out), "--top", "0.5", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "present joints kept" in text and f"data.train_ann={out.resolve()}" in text
    ann = json.loads(out.read_text())
    assert ann["images"] and all(len(a["keypoints"]) == 51 for a in ann["annotations"])
    assert main(["pseudo-label", "--checkpoint", str(teacher), "--out", str(out), "--top", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lofr pseudo-label: error: --top must be in (0, 1]") and len(err.strip().splitlines()) == 1
