"""The training engine: configs, schedule, parameter groups, sampling, flip test, train / resume / eval.

Runs on a tiny SynthPose split (24 train / 8 val images at 96x80) with a tiny LOFR (small CNN,
d_model 32, one encoder and one decoder layer), generated once per session.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from lofr.config_utils import ConfigError
from lofr.data.schemas import COCO17
from lofr.data.topdown import collate
from lofr.engine.checkpoint import CheckpointError, load_checkpoint
from lofr.engine.config import TrainConfig, available_configs, load_config
from lofr.engine.trainer import (EpochBatches, SeededSamples, SupOnly, build_datasets, build_model, evaluate,
                                 load_model, loss_weights, lr_factor, param_groups, predict_records, train,
                                 _train_indices)
from lofr.models.lofr import LOFR
from lofr.models.losses import LOFRCriterion

TINY = ["data.workers=0", "arch.d_model=32", "arch.nhead=2", "arch.enc_layers=1", "arch.dec_layers=1",
        "arch.dim_ff=64", "optim.batch_size=8", "optim.epochs=3", "optim.warmup_steps=2",
        "data.eval_batch_size=16", "log_every=1"]


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory):
    from lofr.data import synth

    root = tmp_path_factory.mktemp("synth_tiny")
    synth.generate(root, n_train=24, n_val=8, seed=0, image_size=(96, 80), workers=1, progress=False)
    return root


def tiny_cfg(root, *overrides) -> TrainConfig:
    """The trainer's mechanics (resume, DDP, sampling, ...) on the small from-scratch config: fast and no
    feature cache; the cached synth-cpu path has its own tests (test_feature_cache.py, below)."""
    return load_config("synth-cpu-scratch", [f"data.root={root}", *TINY, *overrides])


def weights(path) -> dict:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), atol=atol, rtol=0, msg=lambda m: f"{k}: {m}")


# ------------------------------------------------------------------------------------ configs
PAPER = [n for n in ("coco-r50-256x192", "coco-r50-384x288", "coco-hrnet32-256x192", "coco-hrnet32-384x288",
                     "coco-hrnet48-256x192", "coco-hrnet48-384x288", "mpii-r50-256x256", "crowdpose-r50-256x192")]


def test_every_shipped_config_loads_and_the_paper_ones_carry_sec_4_2():
    assert set(available_configs()) == set(PAPER) | {"synth-cpu", "synth-cpu-guided", "synth-cpu-scratch",
                                                     "synth-cpu-part", "synth-cpu-best"}
    epochs = {"mpii": 160, "crowdpose": 210, "coco": 210}
    for name in PAPER:
        cfg = load_config(name)
        assert cfg.name == name and cfg.model == "lofr"
        o, loss = cfg.optim, cfg.loss
        assert (o.optimizer, o.lr, o.weight_decay, o.transformer_lr_mult) == ("adam", 4e-3, 1e-4, 0.1), name
        assert (loss.cls_cnn, loss.cls_enc, loss.cls_final, loss.div, loss.mse) == (0.2, 0.2, 0.5, 0.1, 0.0), name
        assert (cfg.arch["enc_layers"], cfg.arch["dec_layers"]) == (4, 6), name
        assert tuple(cfg.data.aug.scale_range) == (0.65, 1.35) and cfg.data.aug.flip_prob == 0.5, name
        assert o.epochs == epochs[cfg.data.schema], name
        h, w = (int(v) for v in name.rsplit("-", 1)[1].split("x"))
        assert cfg.data.input_size == (h, w), name
        assert cfg.arch["backbone"] == {"r50": "resnet50", "hrnet32": "hrnet_w32",
                                        "hrnet48": "hrnet_w48"}[name.split("-")[1]], name
    assert load_config("mpii-r50-256x256").data.aug.half_body_prob > 0  # "half-body ... adopted" for MPII
    # the testbed: ImageNet Lite0 from the wheel, 128x96, frozen to stride 8 and cached, LOFR on strides 8 / 16
    bed = load_config("synth-cpu")
    assert bed.data.root == "" and bed.data.input_size == (128, 96) and bed.data.cache_views > 0
    assert (bed.arch["backbone"], bed.arch["pretrained"], bed.arch["freeze_to"]) == ("efficientnet_lite0", True, 8)
    assert list(bed.arch["ms_strides"]) == [8, 16] and bed.arch["single_scale_stride"] == 8
    # decoupled decay: the paper's Adam + L2 decayed the attention's q / k to 0 (2 of 3 seeds, synth-cpu-scratch)
    assert bed.optim.optimizer == "adamw" and bed.optim.weight_decay == 1e-4
    small = load_config("synth-cpu-scratch")  # the from-scratch testbed of sessions 1-5, as it was
    assert small.data.input_size == (64, 48) and small.arch["backbone"] == "small" and small.data.cache_views == 0
    guided = load_config("synth-cpu-guided")  # synth-cpu + the CAM-guided changes (its header says why)
    assert guided.data == bed.data
    assert guided.arch["dec_key_bias"] is True
    part = load_config("synth-cpu-part")  # location-free: no heatmap term, its label rule written down
    assert part.loss.mse == 0.0 and part.data.labelled_fraction is None and part.data.labels == "crop"
    assert part.arch["dec_logits"] == "part" and part.arch["freeze_to"] == 16 and part.self_train.rounds == 0
    best = load_config("synth-cpu-best")  # synth-cpu-part + pose-prior attention as a teacher, then a student
    assert best.loss.mse == 0.0 and best.data.labels == "crop" and best.arch["dec_prior_bias"] is True
    assert best.self_train.rounds == 1 and best.self_train.student == "synth-cpu"


def test_synth_cpu_part_is_the_learning_curves_lofr_part_run():
    """Its learning curve's points are this recipe stopped early: same model, data, optimiser and constant lr;
    only the name and how the run is stopped (epochs vs max_steps) differ."""
    import sys

    from lofr.engine.config import config_dict

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import learning_curves as lc

    best = config_dict(load_config("synth-cpu-part"))
    steps = best["optim"]["epochs"] * 204  # 204 steps per epoch on SynthPose
    curve = config_dict(load_config("synth-cpu", lc.REGIME + lc.ROWS["lofr-part"][1] + [f"max_steps={steps}"]))
    assert best["optim"]["schedule"] == "constant" and steps in lc.STEPS
    for key in best:
        if key == "optim":
            assert {k: v for k, v in best[key].items() if k != "epochs"} == \
                {k: v for k, v in curve[key].items() if k != "epochs"}
        elif key not in ("name", "max_steps"):
            assert best[key] == curve[key], key


def test_load_config_overrides_and_clear_errors(tmp_path):
    cfg = load_config("synth-cpu", ["optim.lr=1e-3", "data.input_size=[128, 96]", "data.labelled_fraction=0.1"])
    assert cfg.optim.lr == 1e-3 and cfg.data.input_size == (128, 96) and cfg.data.labelled_fraction == 0.1
    with pytest.raises(ConfigError, match=r"optim: unknown key.*lrr"):
        load_config("synth-cpu", ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="input_size"):
        load_config("synth-cpu", ["arch.input_size=[64, 48]"])  # comes from data.input_size
    with pytest.raises(ConfigError, match=r"arch: unknown key.*d_modle"):
        load_config("synth-cpu", ["arch.d_modle=3"])
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_config("synth-cpu", ["data.input_size=[60, 48]"])
    with pytest.raises(ConfigError, match="synth-cpu"):  # the message lists the shipped names
        load_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: lofr\noptim: {epochs: zero}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*optim\.epochs"):
        load_config(bad)


# ------------------------------------------------------------------------------------ schedule
def test_lr_factor_warmup_cosine_multistep():
    cfg = TrainConfig()
    o = cfg.optim
    o.epochs, o.warmup_steps, o.warmup_factor = 4, 2, 0.5
    o.schedule, o.min_lr_ratio = "cosine", 0.0
    # 10 steps / epoch, 40 in all: cosine 0.5 (1 + cos(pi t)); warm-up 0.5 -> 1 over steps 0, 1
    assert lr_factor(0, 10, o) == pytest.approx(0.5)
    assert lr_factor(1, 10, o) == pytest.approx(0.75 * 0.5 * (1 + math.cos(math.pi / 40)))
    assert lr_factor(20, 10, o) == pytest.approx(0.5)
    assert lr_factor(40, 10, o) == pytest.approx(0.0)
    o.schedule, o.milestones, o.gamma, o.warmup_steps = "multistep", [1, 3], 0.1, 0
    assert [lr_factor(s, 10, o) for s in (0, 9, 10, 29, 30, 39)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    o.schedule = "constant"
    assert lr_factor(39, 10, o) == 1.0


def test_param_groups_split_cnn_from_transformer():
    cfg = load_config("synth-cpu-scratch", TINY + ["optim.transformer_lr_mult=0.1"])  # the paper's x0.1
    model = build_model(cfg)
    groups = param_groups(model, cfg.optim)
    by_name = {g["name"]: g for g in groups}
    assert by_name["cnn"]["lr"] == pytest.approx(4e-3) and by_name["transformer"]["lr"] == pytest.approx(4e-4)
    ids = {name: {id(p) for p in g["params"]} for name, g in by_name.items()}
    assert not ids["cnn"] & ids["transformer"]
    assert ids["cnn"] | ids["transformer"] == {id(p) for p in model.parameters()}  # every parameter once
    for module, group in ((model.backbone, "cnn"), (model.cam_head, "cnn"), (model.encoder, "transformer"),
                          (model.decoder, "transformer"), (model.reppg, "transformer"), (model.spe, "transformer")):
        assert {id(p) for p in module.parameters()} <= ids[group], type(module).__name__
    sup = build_model(load_config("synth-cpu-scratch", TINY + ["model=sup-only"]))
    assert [g["name"] for g in param_groups(sup, cfg.optim)] == ["cnn"]
    # a partly frozen backbone (synth-cpu): its frozen weights are in no group, the rest in "cnn"
    bed = load_config("synth-cpu", TINY)
    model = build_model(bed)
    grouped = {id(p) for g in param_groups(model, bed.optim) for p in g["params"]}
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen and not frozen & grouped and grouped | frozen == {id(p) for p in model.parameters()}
    assert all(n.startswith("backbone.body.") for n, p in model.named_parameters() if not p.requires_grad)


# ------------------------------------------------------------------------------------ sampling
def test_epoch_batches_split_the_global_batch_over_ranks_and_skip_on_resume():
    indices = list(range(100, 123))  # 23 instances, global batch 6 -> 3 steps per epoch
    one = EpochBatches(indices, 6, seed=3)
    two = [EpochBatches(indices, 3, seed=3, rank=r, world_size=2) for r in range(2)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 3
    for epoch in (0, 1):
        for s in [one, *two]:
            s.set_epoch(epoch)
        single = list(one)
        per_rank = [list(s) for s in two]
        for step in range(3):
            assert sorted(per_rank[0][step] + per_rank[1][step]) == sorted(single[step])
        assert all(e == epoch and i in indices for batch in single for e, i in batch)
        assert len({i for batch in single for _, i in batch}) == 18  # no repeats within an epoch
    one.set_epoch(0)
    e0 = list(one)
    one.set_epoch(1)
    assert list(one) != [[(1, i) for _, i in b] for b in e0]  # a new order each epoch
    one.set_epoch(0, skip=2)
    assert len(one) == 1 and list(one) == e0[2:]


def test_seeded_samples_are_reproducible_and_leave_the_global_rng_alone(tiny_synth):
    train_ds, _ = build_datasets(tiny_cfg(tiny_synth), val=False)
    samples = SeededSamples(train_ds, seed=0)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = samples[(0, 5)], samples[(0, 5)], samples[(1, 5)]
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["keypoints"], b["keypoints"])
    assert not torch.equal(a["image"], c["image"])  # another epoch, another augmentation


def test_batches_do_not_depend_on_the_number_of_workers(tiny_synth):
    train_ds, _ = build_datasets(tiny_cfg(tiny_synth), val=False)
    batches = EpochBatches(range(len(train_ds)), 4, seed=0)
    batches.set_epoch(1, skip=1)

    def first_two(workers):
        loader = torch.utils.data.DataLoader(SeededSamples(train_ds, 0), batch_sampler=batches,
                                             num_workers=workers, collate_fn=collate)
        return [b for b, _ in zip(loader, range(2))]

    for a, b in zip(first_two(0), first_two(2)):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["meta"]["ann_id"], b["meta"]["ann_id"])


# ------------------------------------------------------------------------------------ flip test
class _PoolModel(SupOnly):
    """Heatmap c = (c + 1) / C times the 4x4 average of the image's first channel: maps follow the
    image (flip-equivariant geometry) and each channel has its own peak height (shows the swap)."""

    def __init__(self, c: int = 17):
        nn.Module.__init__(self)
        self.num_keypoints, self.strides, self.schema = c, [4], None
        self.gain = nn.Parameter(torch.arange(1, c + 1, dtype=torch.float32) / c)

    def forward(self, images):
        pooled = nn.functional.avg_pool2d(images[:, :1], 4)  # (B, 1, H/4, W/4)
        return {"heatmaps": pooled * self.gain[None, :, None, None]}


def _blob_batch():
    image = torch.zeros(1, 3, 16, 12)
    image[:, :, 4:8, 8:12] = 1.0  # heatmap cell (row 1, col 2), the last column
    meta = {"center": torch.tensor([[6.0, 8.0]]), "scale": torch.tensor([[12.0, 16.0]]),  # crop = image
            "rotation": torch.tensor([0.0]), "flipped": torch.tensor([0]),
            "image_id": torch.tensor([7]), "ann_id": torch.tensor([70])}
    return [{"image": image, "meta": meta}]


def test_flip_test_maps_are_mirrored_back_and_channels_swapped():
    model = _PoolModel()
    plain = predict_records(model, _blob_batch(), flip_test=False, schema="coco")[0]
    flipped = predict_records(model, _blob_batch(), flip_test=True, schema="coco")[0]
    assert (plain["image_id"], plain["ann_id"]) == (7, 70)
    # cell (1, 2) -> centre ((2 + 0.5) * 4, (1 + 0.5) * 4); no neighbour differs -> no refinement
    np.testing.assert_allclose(plain["keypoints"], np.tile([10.0, 6.0], (17, 1)), atol=1e-5)
    np.testing.assert_allclose(flipped["keypoints"], plain["keypoints"], atol=1e-5)  # not at x = 2
    gain = np.arange(1, 18) / 17
    np.testing.assert_allclose(plain["scores"], gain, atol=1e-6)
    np.testing.assert_allclose(flipped["scores"], 0.5 * (gain + gain[list(COCO17.flip_index)]), atol=1e-6)
    # a crop that was itself mirrored (training-mode data): x -> W - x, left / right swapped back
    batch = _blob_batch()
    batch[0]["meta"]["flipped"] = torch.tensor([1])
    mirrored = predict_records(model, batch, flip_test=False, schema="coco")[0]
    np.testing.assert_allclose(mirrored["keypoints"], np.tile([2.0, 6.0], (17, 1)), atol=1e-5)
    np.testing.assert_allclose(mirrored["scores"], gain[list(COCO17.flip_index)], atol=1e-6)


# ------------------------------------------------------------------------------------ semi-weak
def test_labelled_subset_size_seed_and_sup_only_indices(tiny_synth):
    cfg = tiny_cfg(tiny_synth, "data.labelled_fraction=0.25", "model=sup-only")
    ds, _ = build_datasets(cfg, val=False)
    n = len(ds)
    has = np.array([r.has_location for r in ds.records])
    assert has.sum() == round(0.25 * n)
    again, _ = build_datasets(cfg, val=False)
    assert np.array_equal(has, [r.has_location for r in again.records])  # deterministic for a seed
    other, _ = build_datasets(tiny_cfg(tiny_synth, "data.labelled_fraction=0.25", "seed=1"), val=False)
    assert not np.array_equal(has, [r.has_location for r in other.records])
    assert _train_indices(cfg, ds) == list(np.flatnonzero(has == 1))  # Sup-only trains on those alone
    assert _train_indices(tiny_cfg(tiny_synth), ds) == list(range(n))


@pytest.mark.parametrize("kind", ["lofr", "sup-only"])
def test_heatmap_loss_only_sees_samples_with_locations(tiny_synth, kind):
    cfg = tiny_cfg(tiny_synth, f"model={kind}", "loss.mse=1.0", "data.labelled_fraction=0.5")
    ds, _ = build_datasets(cfg, val=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    crit = LOFRCriterion(loss_weights(cfg, model))
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    out = model(batch["image"])
    for has, positive in ((torch.zeros(4), False), (torch.ones(4), True)):
        terms = crit(out, {**batch, "has_location": has})
        assert (terms["mse"].item() > 0) == positive
    if kind == "sup-only":  # MSE alone: nothing to learn from a batch without locations
        assert set(crit(out, batch)) == {"mse", "weak", "total"}
        model.zero_grad()
        crit(out, {**batch, "has_location": torch.zeros(4)})["total"].backward()
        assert all(p.grad is None or not p.grad.any() for p in model.parameters())


# ------------------------------------------------------------------------------------ train / eval
@pytest.fixture(scope="module")
def smoke_run(tiny_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    spe = len(build_datasets(tiny_cfg(tiny_synth), val=False)[0]) // 8
    cfg = tiny_cfg(tiny_synth, f"max_steps={spe + 1}")  # one full epoch, then one step
    return cfg, out, train(cfg, out, progress=False)


def test_smoke_train_writes_metrics_results_and_checkpoints(smoke_run, tiny_synth):
    from pycocotools.coco import COCO

    cfg, out, result = smoke_run
    spe = result["steps_per_epoch"]
    assert spe >= 2 and result["step"] == spe + 1 and result["effective_batch"] == 8
    assert result["lr"] == pytest.approx({"cnn": cfg.optim.lr, "transformer": cfg.optim.lr * cfg.optim.transformer_lr_mult})
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch_done"]) for r in lines] == [(spe, True), (spe + 1, False)]  # epoch 1 + final
    for r in lines:
        assert {"AP", "PCK@0.1", "PCK@0.2", "px err"} <= set(r["val"]) and "PCK@0.2" in r["prior"]
        assert math.isfinite(r["train"]["total"])
    steps = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, spe + 2)) and steps[0]["lr"] == pytest.approx(4e-3 * 0.001)
    gt = COCO(str(tiny_synth / "annotations" / "person_keypoints_val2017.json"))
    dets = gt.loadRes(str(out / "results.json"))
    assert len(dets.getAnnIds()) == len(build_datasets(cfg, train=False)[1]) > 0
    for name in ("last.pt", "best.pt"):
        state = load_checkpoint(out / name)
        assert {"model", "optimizer", "scaler", "schedule", "epoch", "step", "rng", "config", "metrics"} <= set(state)
        assert load_config(state["config"]) == cfg
    assert load_checkpoint(out / "last.pt")["step"] == spe + 1
    assert load_config(out / "config.yaml") == cfg


def test_load_model_and_evaluate_reproduce_the_runs_numbers(smoke_run, tiny_synth):
    cfg, out, result = smoke_run
    model, cfg2 = load_model(out / "last.pt")
    assert isinstance(model, LOFR) and not model.training
    _, val = build_datasets(cfg2, train=False)
    report = evaluate(model, val, batch_size=16, flip_test=True)
    assert report.summary() == pytest.approx(result["history"][-1]["val"])


def test_resume_is_bit_for_bit(tiny_synth, tmp_path):
    # dropout > 0: the global RNG must come back too; stop mid-epoch 1, end mid-epoch 2
    spe = len(build_datasets(tiny_cfg(tiny_synth), val=False)[0]) // 8
    k, total = spe - 1, spe + 2
    cfg = lambda steps: tiny_cfg(tiny_synth, "arch.dropout=0.1", f"max_steps={steps}")  # noqa: E731
    train(cfg(total), tmp_path / "straight", progress=False)
    train(cfg(k), tmp_path / "split", progress=False)
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == k
    train(cfg(total), tmp_path / "split", resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "split" / "last.pt"), 1e-6)
    times = [json.loads(line)["time_s"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert len(times) >= 2 and times == sorted(times)  # the clock counts on across the resume
    straight = load_checkpoint(tmp_path / "straight" / "last.pt")["optimizer"]["state"]
    split = load_checkpoint(tmp_path / "split" / "last.pt")["optimizer"]["state"]
    for k in straight:
        torch.testing.assert_close(straight[k]["exp_avg"], split[k]["exp_avg"], atol=1e-6, rtol=0)
    # and the short run alone is NOT the long one (the test can fail)
    train(cfg(total - 1), tmp_path / "short", progress=False)
    with pytest.raises(AssertionError):
        assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(tmp_path / "short" / "last.pt"), 1e-6)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this pickle runs code",))


def test_resume_refuses_missing_bad_and_mismatched_checkpoints(tiny_synth, tmp_path, smoke_run):
    cfg = tiny_cfg(tiny_synth, "max_steps=1")
    with pytest.raises(CheckpointError, match="does not exist"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)
    assert not (tmp_path / "empty").exists()  # a failed start leaves no run folder
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(bad / "last.pt", "wb") as f:
        pickle.dump({"model": _RunsCode()}, f, protocol=2)
    with pytest.raises(CheckpointError, match="weights_only"):
        train(cfg, bad, resume=True, progress=False)
    _, out, _ = smoke_run
    with pytest.raises(FileExistsError, match="resume=True"):  # never silently over a finished run
        train(cfg, out, progress=False)
    saved = (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="arch"):
        train(tiny_cfg(tiny_synth, "arch.d_model=64", "max_steps=5"), out, resume=True, progress=False)
    assert (out / "config.yaml").read_text() == saved  # the refused resume did not rewrite the run's config


def test_sup_only_and_baseline_train(tiny_synth, tmp_path):
    r = train(tiny_cfg(tiny_synth, "model=sup-only", "data.labelled_fraction=0.5", "max_steps=1"),
              tmp_path / "sup", progress=False)
    n = len(build_datasets(tiny_cfg(tiny_synth), val=False)[0])
    assert r["steps_per_epoch"] == (round(0.5 * n)) // 8  # only the labelled instances are iterated
    assert "mse" in r["history"][-1]["train"] and "cls_final" not in r["history"][-1]["train"]
    r = train(tiny_cfg(tiny_synth, "model=baseline", "max_steps=1"), tmp_path / "base", progress=False)
    assert set(r["history"][-1]["train"]) == {"cls_final", "weak", "total"}  # the final BCE only


def test_frozen_bn_keeps_running_statistics(tiny_synth, tmp_path):
    train(tiny_cfg(tiny_synth, "bn=frozen", "max_steps=1", "eval_every=0"), tmp_path / "f", progress=False)
    state = weights(tmp_path / "f" / "last.pt")
    means = [v for k, v in state.items() if k.endswith("running_mean")]
    assert means and all(not m.any() for m in means)
    assert all(v.item() == 0 for k, v in state.items() if k.endswith("num_batches_tracked"))


def test_plain_cam_model_trains_evaluates_and_reloads(tiny_synth, tmp_path):
    """model=cam: LOFR's CNN branch alone (backbone to cam_stride + CAM head, LSE pooling here)."""
    from lofr.models.lofr import PlainCAM

    cfg = tiny_cfg(tiny_synth, "model=cam", "arch.cam_stride=8", "arch.cam_pool=lse", "max_steps=2")
    result = train(cfg, tmp_path / "cam", progress=False)
    model, _ = load_model(result["last"])
    assert isinstance(model, PlainCAM) and model.backbone.strides == (8,)
    assert not any("decoder" in n or "encoder" in n for n, _ in model.named_parameters())
    w = loss_weights(cfg, model)
    assert (w.cls_cnn, w.cls_enc, w.cls_final, w.div, w.mse) == (1.0, 0.0, 0.0, 0.0, 0.0)
    _, val = build_datasets(cfg, train=False)
    out = model(torch.utils.data.default_collate([val[0]])["image"])
    assert out["cams"].shape[-2:] == (cfg.data.input_size[0] // 8, cfg.data.input_size[1] // 8)
    assert torch.allclose(out["response_fused"].sum(dim=(-2, -1)), torch.ones(1, 17), atol=1e-5)
    # the response path and the CAM path are the same maps for this model
    a = evaluate(model, val, batch_size=16, flip_test=True).summary()
    b = evaluate(model, val, batch_size=16, flip_test=True, source="cam").summary()
    assert a["PCK@0.2"] == b["PCK@0.2"] and a["px err"] == pytest.approx(b["px err"])


def test_decode_pose_prior_is_what_the_trainer_and_eval_score(tiny_synth, tmp_path):
    """decode=pose_prior: the run's own evaluation decodes with the pose model fitted on the training
    locations (lofr.eval.pose_prior), as evaluate(..., pose_prior=pose_prior_for(cfg, train)) does."""
    from lofr.engine.trainer import pose_prior_for

    cfg = tiny_cfg(tiny_synth, "decode=pose_prior", "max_steps=2", "model=cam", "arch.cam_stride=8")
    result = train(cfg, tmp_path / "pp", progress=False)
    model, cfg2 = load_model(result["last"])
    assert cfg2.decode == "pose_prior" and pose_prior_for(load_config("synth-cpu-scratch", TINY), None) is None
    train_ds, val = build_datasets(cfg2)
    pose_model = pose_prior_for(cfg2, train_ds)
    assert pose_model is not None and len(pose_model.tree) == train_ds.schema.num_keypoints - 1
    with_prior = evaluate(model, val, batch_size=16, flip_test=True, pose_prior=pose_model).summary()
    assert with_prior == pytest.approx(result["history"][-1]["val"])
    argmax = evaluate(model, val, batch_size=16, flip_test=True).summary()
    assert argmax["px err"] != pytest.approx(with_prior["px err"])  # a different decoding, not a relabelled one
    with pytest.raises(ConfigError, match="decode"):
        tiny_cfg(tiny_synth, "decode=viterbi")


def test_prior_bias_is_fitted_on_the_training_locations(tiny_synth, tmp_path):
    """arch.dec_prior_bias: the trainer sets the model's Gaussians from location_prior(train), and the
    checkpoint carries them (load_model gives them back without the dataset)."""
    from lofr.data.topdown import location_prior

    cfg = tiny_cfg(tiny_synth, "arch.dec_prior_bias=true", "max_steps=1", "eval_every=0")
    result = train(cfg, tmp_path / "pb", progress=False)
    model, _ = load_model(result["last"])
    mean, std = location_prior(build_datasets(cfg, val=False)[0])
    seen = np.isfinite(mean).all(-1)
    assert seen.sum() >= 10
    assert np.allclose(model.prior_mean.numpy()[seen], mean[seen], atol=1e-4)
    assert np.allclose(model.prior_std.numpy()[seen], np.maximum(std[seen], 4.0), atol=1e-4)


def test_best_checkpoint_breaks_ap_ties_on_pck():
    """A CPU run's AP is often 0 at every evaluation: best.pt must then follow PCK@0.2 (then PCK@0.1),
    not stay the first epoch's model."""
    from lofr.engine.trainer import _best_keys, _improves

    first = {"AP": 0.0, "PCK@0.1": 0.05, "PCK@0.2": 0.20, "px err": 40.0}
    assert _best_keys(first) == ("AP", "PCK@0.2", "PCK@0.1")
    best = {"metric": "AP", "value": 0.0, "tiebreak": [0.20, 0.05], "step": 204}
    assert _improves({**first, "PCK@0.2": 0.30}, best)  # same AP, better PCK@0.2
    assert _improves({**first, "PCK@0.1": 0.06}, best)  # same AP and PCK@0.2, better PCK@0.1
    assert not _improves(first, best)  # a tie on everything keeps the earlier checkpoint
    assert not _improves({**first, "PCK@0.2": 0.9}, {**best, "value": 0.01})  # AP still decides first
    assert _improves({**first, "AP": 0.02, "PCK@0.2": 0.0}, best)
    assert _improves(first, None)
    # a best written before the tie-breakers existed compares on its value alone
    assert _improves({**first, "AP": 0.01}, {"metric": "AP", "value": 0.0, "step": 1})
    assert _best_keys({"PCKh": 0.5, "PCK@0.1": 0.1, "PCK@0.2": 0.2}) == ("PCKh", "PCK@0.2", "PCK@0.1")
    assert _best_keys({"PCK@0.1": 0.1, "PCK@0.2": 0.2, "px err": 9.0}) == ("PCK@0.2", "PCK@0.1")


def test_dead_attention_is_measured_and_named():
    """attention_qk_scales finds every encoder / decoder attention layer; a layer whose query / key
    projections decayed to ~0 (what Adam's L2 weight decay did on synth-cpu) is named in a warning."""
    from lofr.engine.trainer import _dead_attention_warning, attention_qk_scales
    from lofr.models.lofr import LOFR, LOFRConfig

    torch.manual_seed(0)
    model = LOFR(17, LOFRConfig.cpu_small())
    scales = attention_qk_scales(model)
    assert any(n.startswith("encoder") for n in scales) and any(n.startswith("decoder") for n in scales)
    assert all(v > 1.0 for v in scales.values())  # alive at initialisation
    assert _dead_attention_warning(scales, "adam") is None
    name = next(n for n in scales if n.startswith("decoder") and "cross" in n)
    with torch.no_grad():
        model.get_submodule(name).q_proj.weight.mul_(1e-4)
    scales = attention_qk_scales(model)
    assert scales[name] < 1e-2
    msg = _dead_attention_warning(scales, "adam")
    assert name in msg and "adamw" in msg
    assert "adamw" not in _dead_attention_warning(scales, "adamw")  # no advice to switch to what is in use


def test_metrics_record_the_smallest_attention_scale(tiny_synth, tmp_path):
    train(tiny_cfg(tiny_synth, "max_steps=2"), tmp_path / "r", progress=False)
    rec = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["attn_qk_min"] > 0
