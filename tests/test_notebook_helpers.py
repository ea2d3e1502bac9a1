"""lofr.notebook (the notebooks' opening cell and cache) and the plotting helpers of lofr.viz."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest
from pathlib import Path  # noqa: E402
import torch  # noqa: E402

from lofr.data.transforms import normalize_image  # noqa: E402
from lofr.engine.config import load_config  # noqa: E402
from lofr.notebook import (PROFILES, cached_result, cached_train, config_key, setup, short_path,  # noqa: E402
                           subset_annotations)
from lofr.viz import crop_to_rgb, plot_matrix, show_maps  # noqa: E402


@pytest.fixture
def nb_setup(synthpose_small, tmp_path, capsys):
    """setup() on the small SynthPose of conftest (never generates the default one)."""
    import lofr.data.synth as synth

    params = {"version": synth.VERSION, "n_train": synth.DEFAULT_TRAIN, "n_val": synth.DEFAULT_VAL, "seed": 0,
              "image_size": list(synth.DEFAULT_IMAGE_SIZE)}
    stamp = synthpose_small / synth.STAMP
    old = stamp.read_text() if stamp.is_file() else None
    stamp.write_text(json.dumps({"params": params}))  # make ensure_synthpose accept the small set as is
    yield setup(seed=3, profile="cpu-small", data_root=synthpose_small, cache_dir=tmp_path / "cache")
    if old is None:
        stamp.unlink()
    else:
        stamp.write_text(old)


def test_setup_seeds_names_paths_and_prints_relative(nb_setup, capsys):
    s = nb_setup
    assert s.profile is PROFILES["cpu-small"] and s.seed == 3 and s.device.type == "cpu"
    assert s.cache_dir.is_dir() and s.ann_file("val").is_file() and s.img_dir("train").is_dir()
    a = torch.rand(3)
    setup(seed=3, profile="cpu-small", data_root=s.data_root, cache_dir=s.cache_dir, quiet=True)
    assert torch.equal(a, torch.rand(3))  # seeded
    out = capsys.readouterr().out
    assert out.startswith("PROFILE cpu-small: device cpu, seed 3, 128x96 crops, 200 training steps")
    assert plt.rcParams["figure.dpi"] == 72
    assert torch.get_num_threads() == 1  # cpu-small pins one torch thread


def test_setup_rejects_unknown_profile_and_reads_env(monkeypatch, synthpose_small):
    with pytest.raises(ValueError, match="unknown PROFILE 'laptop'.*cpu-small"):
        setup(profile="laptop")
    monkeypatch.setenv("LOFR_PROFILE", "nope")
    with pytest.raises(ValueError, match="'nope'"):
        setup()


def test_short_path_is_relative_to_the_repo():
    from lofr.paths import data_dir

    assert short_path(data_dir() / "notebook_cache") in ("data/notebook_cache", str(data_dir() / "notebook_cache"))
    assert short_path("/definitely/elsewhere") == "/definitely/elsewhere"


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_profiles_resolve_to_valid_configs(name):
    p = PROFILES[name]
    cfg = load_config(p.config, p.all_overrides())
    assert tuple(cfg.data.input_size) == p.input_size and cfg.max_steps == p.train_steps
    if name == "gpu-full":  # the model of the GPU profile builds and runs at its input size
        from lofr.engine.trainer import build_model

        model = build_model(cfg, 17).eval()
        with torch.no_grad():
            out = model(torch.zeros(1, 3, *p.input_size))
        s = min(cfg.arch.get("ms_strides", (4,)))
        assert out["response_fused"].shape == (1, 17, p.input_size[0] // s, p.input_size[1] // s)


def test_setup_config_applies_seed_and_overrides(nb_setup):
    cfg = nb_setup.config("optim.lr=0.5", name="x")
    assert cfg.seed == 3 and cfg.optim.lr == 0.5 and cfg.name == "x" and cfg.max_steps == 200
    assert config_key(cfg) != config_key(nb_setup.config("optim.lr=0.25", name="x"))
    assert config_key(cfg) == config_key(nb_setup.config("optim.lr=0.5", name="x"))


def test_config_key_changes_with_the_training_code(nb_setup, tmp_path, monkeypatch):
    """A cached model trained by older model / loss / data / trainer code is not reused: the code's
    fingerprint is part of the key (it covers the files that decide a run, e.g. losses.py)."""
    import lofr.notebook as nb

    cfg = nb_setup.config(name="x")
    before, fp = config_key(cfg), nb.code_fingerprint()
    assert len(fp) == 10 and fp == nb.code_fingerprint()  # deterministic
    pkg = tmp_path / "lofr"
    for pattern in nb.CODE_FILES:  # a copy of the package's training code, then one edit to it
        for f in Path(nb.__file__).resolve().parent.glob(pattern):
            dst = pkg / f.relative_to(Path(nb.__file__).resolve().parent)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(f.read_bytes())
    (pkg / "notebook.py").write_text("")
    monkeypatch.setattr(nb, "__file__", str(pkg / "notebook.py"))
    nb.code_fingerprint.cache_clear()
    try:
        assert nb.code_fingerprint() == fp and config_key(cfg) == before  # same code, same key
        losses = pkg / "models" / "losses.py"
        losses.write_text(losses.read_text() + "\n# edited\n")
        nb.code_fingerprint.cache_clear()
        assert nb.code_fingerprint() != fp and config_key(cfg) != before
    finally:
        nb.code_fingerprint.cache_clear()


def test_cached_result_computes_once_per_params(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": np.arange(3)}

    a = cached_result("thing", {"n": 1}, compute, tmp_path)
    b = cached_result("thing", {"n": 1}, compute, tmp_path)
    c = cached_result("thing", {"n": 2}, compute, tmp_path)
    assert len(calls) == 2 and np.array_equal(a["value"], b["value"]) and np.array_equal(c["value"], [0, 1, 2])
    assert len(list(tmp_path.glob("thing-*.pkl"))) == 2 and not list(tmp_path.glob("*.tmp-*"))


def test_subset_annotations(synthpose_small, tmp_path):
    src = synthpose_small / "annotations" / "person_keypoints_val2017.json"
    out = subset_annotations(src, 5, tmp_path / "sub.json")
    full, sub = json.loads(src.read_text()), json.loads(out.read_text())
    ids = sorted(im["id"] for im in full["images"])[:5]
    assert [im["id"] for im in sub["images"]] == ids
    assert sub["annotations"] == [a for a in full["annotations"] if a["image_id"] in ids]
    assert sub["categories"] == full["categories"]
    with pytest.raises(ValueError, match="n_images"):
        subset_annotations(src, 0, tmp_path / "none.json")


def test_cached_train_trains_once_then_loads(nb_setup, monkeypatch):
    import lofr.engine.trainer as trainer

    cfg = nb_setup.config("max_steps=2", "data.workers=0", "data.flip_test=false", "optim.batch_size=4",
                          f"data.root={nb_setup.data_root}",
                          name="tiny")
    first = cached_train("tiny", cfg, nb_setup.cache_dir)
    assert first.trained and first.history[-1]["step"] == 2 and "PCK@0.2" in first.final
    assert not first.model.training and (first.out_dir / "done.json").is_file()
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("retrained a cached run"))
    again = cached_train("tiny", cfg, nb_setup.cache_dir)
    assert not again.trained and again.out_dir == first.out_dir and again.final == first.final
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])


def test_cached_train_resumes_an_interrupted_run(nb_setup, monkeypatch):
    import lofr.engine.trainer as trainer

    cfg = nb_setup.config("max_steps=2", "data.workers=0", "data.flip_test=false", "optim.batch_size=4",
                          f"data.root={nb_setup.data_root}", name="tiny")
    run = cached_train("tiny", cfg, nb_setup.cache_dir)
    (run.out_dir / "done.json").unlink()  # as if the process had died after writing last.pt
    seen = {}
    real = trainer.train

    def spy(*a, **k):
        seen.update(k)
        return real(*a, **k)

    monkeypatch.setattr(trainer, "train", spy)
    again = cached_train("tiny", cfg, nb_setup.cache_dir)
    assert seen["resume"] is True and again.trained and (run.out_dir / "done.json").is_file()


# ------------------------------------------------------------------------------------------ viz
def test_crop_to_rgb_inverts_normalize_image():
    rgb = torch.rand(3, 8, 6)
    back = crop_to_rgb(normalize_image(rgb))
    assert back.shape == (8, 6, 3)
    np.testing.assert_allclose(back, rgb.permute(1, 2, 0).numpy(), atol=1e-6)
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        crop_to_rgb(torch.zeros(1, 3, 8, 6))


def test_show_maps_titles_overlay_extent_and_markers():
    maps = torch.zeros(3, 4, 3)
    maps[1, 2, 1] = 1.0
    names = ["nose", "left_eye", "right_eye"]
    truth = np.array([[1.0, 1.0], [np.nan, np.nan], [20.0, 30.0]])
    fig = show_maps(maps, names, image=np.zeros((64, 48, 3)), truth=truth, points=truth, cols=2,
                    subtitles=["a", "b", "c"], title="T")
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["nose\na", "left_eye\nb", "right_eye\nc"]
    overlay = panels[1].images[1]
    assert overlay.get_extent() == [0, 48, 64, 0]  # stride-16 cells stretched over the 64x48 crop
    assert len(panels[1].collections) == 0 and len(panels[2].collections) == 2  # NaN truth skipped
    assert len(fig.axes) == 4 + 3  # 2x2 grid + 3 colour bars
    assert fig._suptitle.get_text() == "T"
    plt.close(fig)
    with pytest.raises(ValueError, match="K = len\\(names\\) = 2"):
        show_maps(maps, names[:2])


def test_plot_matrix_labels_and_values():
    fig, ax = plt.subplots()
    m = np.array([[1.0, 0.25], [0.5, 0.0]])
    plot_matrix(ax, m, ["a", "b"], "rel", fmt=".2f")
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.00", "0.25", "0.50", "1.00"]
    assert ax.get_title() == "rel" and len(fig.axes) == 2
    np.testing.assert_array_equal(ax.images[0].get_array(), m)
    plt.close(fig)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        plot_matrix(plt.subplots()[1], m, ["a", "b", "c"])
