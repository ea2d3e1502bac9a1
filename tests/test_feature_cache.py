"""The feature cache of a frozen backbone part (lofr.engine.feature_cache) and the trainer's cached path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lofr.config_utils import ConfigError
from lofr.engine.config import load_config
from lofr.engine.feature_cache import (CachedEvalCrops, CachedTrainSamples, FeatureCache, build_feature_cache,
                                       cache_key)
from lofr.engine.sampling import SeededSamples, build_datasets
from lofr.models.backbone import Backbone

# Lite0 frozen up to stride 8 at 64x48: small enough for a test, the same code path as synth-cpu
CACHED = ["data.workers=0", "data.input_size=[64,48]", "arch.backbone=efficientnet_lite0", "arch.pretrained=true",
          "arch.freeze_to=8", "arch.d_model=32", "arch.nhead=2", "arch.enc_layers=1", "arch.dec_layers=1",
          "arch.dim_ff=64", "optim.batch_size=8", "optim.epochs=2", "optim.warmup_steps=2",
          "data.eval_batch_size=16", "log_every=1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from lofr.data import synth

    root = tmp_path_factory.mktemp("cache_synth")
    synth.generate(root, n_train=12, n_val=4, seed=0, image_size=(96, 80), workers=1, progress=False)
    return root


def cfg_for(root, cache_dir, *extra):
    return load_config("synth-cpu", [f"data.root={root}", f"data.cache_dir={cache_dir}", *CACHED, *extra])


def frozen_part():
    return Backbone("efficientnet_lite0", pretrained=True, strides=(4, 8), freeze_to=8)


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory):
    """(cache, train_ds, val_ds, backbone) for 2 views drawn with seed 5."""
    cache_dir = tmp_path_factory.mktemp("fcache")
    train_ds, val_ds = build_datasets(cfg_for(tiny, cache_dir))
    bb = frozen_part()
    lines = []
    cache = build_feature_cache(bb, train_ds, val_ds, views=2, seed=5, root=cache_dir, progress=False,
                                log=lines.append)
    assert len(lines) == 1 and "feature cache: built 5 eval crops (+ mirrors) and view(s) [0, 1]" in lines[0]
    return cache, train_ds, val_ds, bb


def test_views_are_the_seeded_samples_through_the_frozen_part(built):
    """View k of instance i = the sample SeededSamples(seed) draws in epoch k, sent through the frozen
    backbone part, in float16; labels and heatmap targets are the sample's."""
    cache, train_ds, _, bb = built
    n = len(train_ds)
    assert cache.views == 2 and cache.strides == (4, 8)
    assert [[m.shape for m in view] for view in cache.train] == [[(n, 24, 16, 12), (n, 40, 8, 6)]] * 2
    assert all(m.dtype == np.float16 for view in cache.train for m in view)
    samples = CachedTrainSamples(cache, train_ds)
    for view, index in ((0, 0), (1, 3), (2, n - 1)):  # epoch 2 reads view 0 again
        ref = SeededSamples(train_ds, 5)[(view % 2, index)]
        with torch.no_grad():
            maps = bb(ref["image"][None])
        got = samples[(view, index)]
        for a, b in zip(got["feats"], maps):
            torch.testing.assert_close(a, b[0], atol=2e-2, rtol=2e-3)  # float16
        for key in ("labels", "heatmaps", "target_weight", "has_location"):
            torch.testing.assert_close(got[key], ref[key])
    # the two views of an instance differ (another crop)
    assert not np.array_equal(cache.train[0][1][0], cache.train[1][1][0])


def test_eval_crops_hold_the_crop_and_its_mirror(built):
    cache, _, val_ds, bb = built
    crops = CachedEvalCrops(cache, val_ds)
    item = crops[1]
    image = val_ds[1]["image"][None]
    with torch.no_grad():
        plain, mirrored = bb(image), bb(image.flip(-1))
    for got, ref in ((item["feats"], plain), (item["feats_flip"], mirrored)):
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b[0], atol=2e-2, rtol=2e-3)
    assert item["meta"]["ann_id"] == val_ds.records[1].ann_id
    assert crops.train is False and crops.records is val_ds.records


def test_an_existing_cache_is_opened_not_rebuilt_and_grows_by_views(built, tmp_path):
    cache, train_ds, val_ds, bb = built
    lines = []
    again = build_feature_cache(bb, train_ds, val_ds, views=2, seed=5, root=cache.folder.parent, progress=False,
                                log=lines.append)
    assert again.folder == cache.folder and lines == []
    assert build_feature_cache(bb, train_ds, val_ds, views=1, seed=5, root=cache.folder.parent, progress=False,
                               log=lines.append).views == 1 and lines == []  # fewer views: a subset, nothing built
    assert json.loads((cache.folder / "meta.json").read_text())["n_train"] == len(train_ds)
    # one view first, then three: views 1 and 2 are added to the same folder, view 0 is not redone
    one = build_feature_cache(bb, train_ds, val_ds, views=1, seed=5, root=tmp_path, progress=False, log=lines.append)
    stamp = (one.folder / "view0" / "done.json").stat().st_mtime_ns
    three = build_feature_cache(bb, train_ds, val_ds, views=3, seed=5, root=tmp_path, progress=False, log=lines.append)
    assert three.folder == one.folder and (one.folder / "view0" / "done.json").stat().st_mtime_ns == stamp
    assert "view(s) [1, 2]" in lines[-1] and "eval crops" not in lines[-1]
    # the same bytes as the cache built with two views at once
    np.testing.assert_array_equal(three.train[1][1], cache.train[1][1])
    assert three.build_seconds() > 0


def test_the_key_follows_everything_the_numbers_depend_on(built, tiny, tmp_path):
    _, train_ds, val_ds, bb = built
    key, _ = cache_key(bb, train_ds, val_ds, 5)
    assert cache_key(bb, train_ds, val_ds, 6)[0] != key  # augmentation seed
    other = frozen_part()
    with torch.no_grad():
        other.body.conv_stem.weight.mul_(1.01)
    assert cache_key(other, train_ds, val_ds, 5)[0] != key  # backbone weights
    tr64, va64 = build_datasets(cfg_for(tiny, tmp_path, "data.aug.rot_factor=10"))
    assert cache_key(bb, tr64, va64, 5)[0] != key  # augmentation settings
    # the annotation file's content (same folder, one coordinate changed)
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny, copy)
    before = cache_key(bb, *build_datasets(cfg_for(copy, tmp_path)), 5)[0]
    assert before == cache_key(bb, *build_datasets(cfg_for(copy, tmp_path)), 5)[0]
    ann = copy / "annotations" / "person_keypoints_train2017.json"
    data = json.loads(ann.read_text())
    data["annotations"][0]["keypoints"][0] += 1.0
    ann.write_text(json.dumps(data))
    assert cache_key(bb, *build_datasets(cfg_for(copy, tmp_path)), 5)[0] != before


def test_an_interrupted_build_leaves_nothing_half_written(built, tmp_path, monkeypatch):
    """Interrupted while writing a view: the complete eval part stays, no view folder and no temporary
    folder is left, and the next call completes the cache."""
    _, train_ds, val_ds, bb = built
    import lofr.engine.feature_cache as fc

    def boom(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(fc.np, "savez", boom)
        with pytest.raises(KeyboardInterrupt):
            build_feature_cache(bb, train_ds, val_ds, views=1, seed=0, root=tmp_path, progress=False)
    (folder,) = list(tmp_path.iterdir())
    assert sorted(p.name for p in folder.iterdir()) == ["meta.json", "val_s4.npy", "val_s8.npy"]
    assert build_feature_cache(bb, train_ds, val_ds, views=1, seed=0, root=tmp_path, progress=False).views == 1


def test_a_backbone_that_trains_is_refused(built, tmp_path):
    _, train_ds, val_ds, _ = built
    with pytest.raises(ValueError, match="must be frozen"):
        build_feature_cache(Backbone("efficientnet_lite0", strides=(4, 8)), train_ds, val_ds, 1, root=tmp_path)
    with pytest.raises(ValueError, match="must be frozen"):  # returns maps beyond its frozen part
        build_feature_cache(Backbone("efficientnet_lite0", freeze_to=8), train_ds, val_ds, 1, root=tmp_path)


def test_config_refuses_a_cache_without_fixed_weights(tiny, tmp_path):
    with pytest.raises(ConfigError, match="freeze_to"):
        load_config("synth-cpu", [f"data.root={tiny}", "data.cache_views=2", "arch.backbone=efficientnet_lite0",
                                  "arch.pretrained=true", "arch.freeze_to=0"])
    with pytest.raises(ConfigError, match="pretrained"):
        load_config("synth-cpu", [f"data.root={tiny}", "data.cache_views=2", "arch.backbone=efficientnet_lite0",
                                  "arch.freeze_to=16", "arch.pretrained=false"])


@pytest.mark.parametrize("model", ["lofr", "sup-only"])
def test_training_on_the_cache_matches_training_on_images(tiny, tmp_path, model):
    """A cached run (2 views, drawn with cache_seed = the run's seed) and an uncached run see the same
    samples in epochs 0 and 1, so their losses agree up to the cache's float16 rounding; the
    cached run evaluates from the cached eval crops and gives the same metrics as evaluating its
    checkpoint on the images."""
    from lofr.engine.trainer import build_datasets as bd, evaluate, load_model, train

    extra = [f"model={model}", "max_steps=3", "seed=4", "data.cache_seed=4"]
    if model == "sup-only":
        extra.append("data.labelled_fraction=1.0")
    cached = train(cfg_for(tiny, tmp_path / "c", "data.cache_views=2", *extra), tmp_path / "cached", progress=False)
    plain = train(cfg_for(tiny, tmp_path / "c", *extra), tmp_path / "plain", progress=False)
    steps = [[json.loads(line) for line in open(tmp_path / r / "steps.jsonl")] for r in ("cached", "plain")]
    assert len(steps[0]) == len(steps[1]) == 3
    for a, b in zip(*steps):
        assert a["total"] == pytest.approx(b["total"], rel=5e-3, abs=1e-5)
    # the cached run's own evaluation (cached eval crops) = its checkpoint evaluated on the images
    net, cfg = load_model(cached["last"])
    _, val = bd(cfg, train=False)
    report = evaluate(net, val, 16, True)
    recorded = cached["history"][-1]["val"]
    for k in ("PCK@0.1", "PCK@0.2"):
        assert report.summary()[k] == pytest.approx(recorded[k], abs=0.05)
    assert (tmp_path / "c").is_dir() and len([p for p in (tmp_path / "c").iterdir() if not p.name.startswith(".")]) == 1


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("shared_cache")


@pytest.mark.parametrize("model", ["lofr", "baseline", "cam", "sup-only", "lofr-semi"])
def test_synth_cpu_as_shipped_trains_each_model_from_one_shared_cache(tiny, tmp_path, shared_cache, model):
    """The testbed config itself (only the data root and the budget overridden): every model trains
    from the same cache (one folder), and the heatmap targets live on the grid of the maps the model
    predicts from (LOFR / baseline stride 8, plain CAM 16, Sup-only 4), so Eq. 14 can compare them."""
    from lofr.engine.sampling import output_stride
    from lofr.engine.trainer import build_model, train

    extra = {"lofr-semi": ["model=lofr", "loss.mse=1.0", "data.labelled_fraction=0.5"],
             "sup-only": ["model=sup-only", "loss.mse=1.0", "data.labelled_fraction=0.5"]}.get(model, [f"model={model}"])
    cfg = load_config("synth-cpu", [f"data.root={tiny}", f"data.cache_dir={shared_cache}", "data.workers=0",
                                    "optim.batch_size=8", "max_steps=2",
                                    "optim.warmup_steps=1", "data.eval_batch_size=16", *extra])
    stride = {"lofr": 8, "baseline": 8, "cam": 16, "sup-only": 4, "lofr-semi": 8}[model]
    assert output_stride(cfg) == stride
    train_ds, _ = build_datasets(cfg, val=False)
    assert train_ds[0]["heatmaps"].shape[-2:] == (128 // stride, 96 // stride)
    net = build_model(cfg, 17)
    with torch.no_grad():
        out = net.eval()(train_ds[0]["image"][None])
    assert (out["heatmaps"] if model == "sup-only" else out["response_fused"]).shape[-2:] == (128 // stride, 96 // stride)
    result = train(cfg, tmp_path / "run", progress=False)
    assert result["step"] == 2 and result["history"][-1]["val"]["PCK@0.2"] >= 0
    assert len([p for p in shared_cache.iterdir() if not p.name.startswith(".")]) == 1  # one cache for every model
