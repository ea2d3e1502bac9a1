"""Self-training (lofr.selftrain, ``lofr pseudo-label``): the per-joint confident selection on a hand case,
and pseudo-labels that come from the teacher alone — moving every annotated keypoint changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lofr.cli import main
from lofr.selftrain import plausible, select_confident

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


def test_plausible_hand_case():
    mean, std = np.array([[10.0, 20.0], [np.nan, np.nan]]), np.array([[2.0, 4.0], [np.nan, np.nan]])
    # joint 0: (12, 20) is 1 std off in x -> z 1; (13, 24) -> sqrt(1.5^2 + 1^2) = 1.80; joint 1: no statistics
    xy = np.array([[[12.0, 20.0], [0.0, 0.0]], [[13.0, 24.0], [99.0, 99.0]]])
    assert plausible(xy, mean, std, 1.0).tolist() == [[True, True], [False, True]]
    assert plausible(xy, mean, std, 1.9).all() and plausible(xy, mean, std, 0.0).all()  # 0 = off


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
    # the plausibility gate: candidates only near their joint's mean training position, so fewer are kept
    gated = tmp_path / "gated.json"
    assert main(["pseudo-label", "--checkpoint", str(teacher), "--out", str(gated), "--top", "1", "--gate", "0.5",
                 "--quiet"]) == 0
    meta = json.loads(gated.read_text())["lofr_pseudo_label"]
    assert meta["gate"] == 0.5 and meta["kept"] == meta["plausible"] < meta["present"]
    assert main(["pseudo-label", "--checkpoint", str(teacher), "--out", str(gated), "--gate", "-1"]) == 2


def test_synth_cpu_best_is_the_self_training_benchmarks_prior_row(tmp_path):
    """``lofr train --config synth-cpu-best`` trains exactly what benchmarks/self_training.py's ``prior`` row
    measures: its teacher is that row's teacher, its student that row's student (names aside)."""
    from conftest import load_benchmark

    from lofr.engine.config import config_dict, load_config
    from lofr.selftrain import student_config, teacher_config

    bench = load_benchmark("self_training")
    best = load_config("synth-cpu-best")
    assert best.self_train.rounds == 1 and best.self_train.top == 0.25 and best.loss.mse == 0.0
    assert best.self_train.gate == 1.0  # benchmarks/self_training.py --gate 1 (results/self_training_gate.md)
    assert best.self_train.teachers == bench.TEACHERS["prior-ens3"]  # results/self_training_ens*.md

    def same(a, b):
        a, b = config_dict(a), config_dict(b)
        return {k: v for k, v in a.items() if k != "name"} == {k: v for k, v in b.items() if k != "name"}

    assert same(teacher_config(best), load_config("synth-cpu-part", bench.ROWS["prior"][1] + ["seed=0"]))
    pseudo = tmp_path / "pseudo_train.json"
    assert same(student_config(best, pseudo),
                load_config("synth-cpu", bench.STUDENT + [f"data.train_ann={pseudo.resolve()}", "seed=0"]))
    # what carries over from the teacher: seed, device and the dataset
    other = load_config("synth-cpu-best", ["seed=3", "data.root=/somewhere/else"])
    s = student_config(other, pseudo)
    assert (s.seed, s.data.root, s.data.train_ann, s.model) == (3, "/somewhere/else", str(pseudo.resolve()), "sup-only")


def test_lofr_train_self_trains_in_rounds_and_resumes(tiny_root, tmp_path, capsys):
    """A config with ``self_train.rounds`` = 2: teacher, two pseudo-label files made from the same annotations,
    two students; ``last.pt`` is the last student, whose mean-pose prior is fitted on the real training poses;
    the folder refuses a second run unless resumed, and a resumed finished run changes nothing."""
    from lofr.engine.trainer import load_model

    student = ["model=sup-only", "data.labelled_fraction=1.0", "loss.mse=1.0", *TINY]
    args = ["train", "--config", "synth-cpu", "--data", str(tiny_root), "--out", str(tmp_path / "run"), "--quiet",
            *TINY, "self_train.rounds=2", "self_train.top=0.5", f"self_train.student_set=[{', '.join(student)}]"]
    assert main(args) == 0
    run = tmp_path / "run"
    train_ann = (tiny_root / "annotations" / "person_keypoints_train2017.json").resolve()
    for k in (1, 2):
        meta = json.loads((run / f"round{k}" / "pseudo_train.json").read_text())["lofr_pseudo_label"]
        assert meta["source"] == str(train_ann) and 0 < meta["kept"] < meta["present"]
    model, cfg = load_model(run / "last.pt")
    assert cfg.model == "sup-only" and cfg.data.train_ann == str((run / "round2" / "pseudo_train.json").resolve())
    summary = json.loads((run / "self_train.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["teacher", "student 1", "student 2"]
    assert summary["stages"][2]["step"] == 2 and summary["stages"][1]["pseudo"]["top_fraction"] == 0.5
    capsys.readouterr()
    # the student's prior row is the teacher's: both fitted on the annotated training poses
    rows = {}
    for name, ckpt in (("teacher", run / "teacher" / "last.pt"), ("student", run / "last.pt")):
        assert main(["eval", "--checkpoint", str(ckpt), "--prior", "--quiet"]) == 0
        rows[name] = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("mean-pose prior")]
    assert rows["teacher"] and rows["student"] == rows["teacher"]
    # a second run into the same folder: one line, exit 2; resumed: nothing retrained, nothing relabelled
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    before = {p: p.stat().st_mtime_ns for p in (run / "round1" / "pseudo_train.json", run / "round2" / "student" / "last.pt")}
    assert main(args + ["--resume"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_an_ensemble_labels_with_its_teachers_mean(teacher, tiny_root, tmp_path, capsys):
    """``pseudo_label`` with several teachers: each joint's keypoint and score are the teachers' means
    (checked against each teacher alone, every present joint kept), and ``lofr pseudo-label`` takes several
    checkpoints."""
    from lofr.data.topdown import TopDownDataset
    from lofr.engine.trainer import load_model
    from lofr.selftrain import pseudo_label

    second = tmp_path / "second"
    assert main(["train", "--config", "synth-cpu", "--data", str(tiny_root), "--out", str(second), "--quiet",
                 *TINY, "seed=1000"]) == 0
    (a, cfg), (b, _) = load_model(teacher), load_model(second / "last.pt")
    crops = TopDownDataset(tiny_root / "annotations" / "person_keypoints_train2017.json", tiny_root / "train2017",
                           input_size=tuple(cfg.data.input_size))

    def keypoints(ann):
        return {x["id"]: np.asarray(x["keypoints"]).reshape(-1, 3) for x in ann["annotations"]}

    alone = [keypoints(pseudo_label(m, crops, top_fraction=1.0, batch_size=8)[0]) for m in (a, b)]
    ens, stats = pseudo_label([a, b], crops, top_fraction=1.0, batch_size=8)
    assert stats["teachers"] == 2 and stats["kept"] == stats["present"]
    moved = 0
    for i, kp in keypoints(ens).items():
        kept = kp[:, 2] > 0
        mean = (alone[0][i][kept, :2] + alone[1][i][kept, :2]) / 2
        assert np.allclose(kp[kept, :2], mean, atol=0.011)  # 2 decimals each
        moved += int(np.abs(alone[0][i][kept, :2] - alone[1][i][kept, :2]).max(initial=0) > 0.1)
    assert moved > 0  # the two teachers differ, so the mean is neither
    out = tmp_path / "ens.json"
    assert main(["pseudo-label", "--checkpoint", str(teacher), str(second / "last.pt"), "--out", str(out),
                 "--quiet"]) == 0
    assert "2 teachers' mean score" in capsys.readouterr().out
    assert json.loads(out.read_text())["lofr_pseudo_label"]["teachers"] == 2


def test_self_train_with_two_teachers(tiny_root, tmp_path):
    """``self_train.teachers`` = 2: teacher (the run's seed) and teacher2 (seed + 1000) train, both label round 1."""
    from lofr.engine.config import load_config
    from lofr.engine.trainer import load_model
    from lofr.selftrain import teacher_config

    cfg = load_config("synth-cpu-best", ["seed=4"])
    assert [teacher_config(cfg, k).seed for k in range(3)] == [4, 1004, 2004]
    assert teacher_config(cfg, 1).self_train.rounds == 0 and teacher_config(cfg, 1).name.endswith("-teacher2")
    student = ["model=sup-only", "data.labelled_fraction=1.0", "loss.mse=1.0", *TINY]
    run = tmp_path / "run"
    assert main(["train", "--config", "synth-cpu", "--data", str(tiny_root), "--out", str(run), "--quiet", *TINY,
                 "self_train.rounds=1", "self_train.teachers=2", "self_train.top=0.5",
                 f"self_train.student_set=[{', '.join(student)}]"]) == 0
    assert load_model(run / "teacher" / "last.pt")[1].seed == 0 and load_model(run / "teacher2" / "last.pt")[1].seed == 1000
    summary = json.loads((run / "self_train.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == ["teacher 1 of 2", "teacher 2 of 2", "student 1"]
    assert summary["stages"][2]["pseudo"]["teachers"] == 2
    assert main(["train", "--config", "synth-cpu", "--data", str(tiny_root), "--out", str(tmp_path / "bad"),
                 "self_train.rounds=1", "self_train.teachers=0"]) == 2
