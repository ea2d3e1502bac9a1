import dataclasses

import pytest
import torch

from lofr.config_utils import from_dict, to_dict
from lofr.data.schemas import COCO17
from lofr.models import LOFR, Baseline, LOFRConfig, LOFRCriterion, LossWeights, decode_response_maps


def small(**kw) -> LOFRConfig:
    return LOFRConfig.cpu_small(**kw)


def images(b=2, seed=0):
    return torch.randn(b, 3, 64, 48, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- outputs and shapes


@pytest.mark.parametrize("c", [17, 16, 14])
def test_lofr_output_shapes_for_every_schema(c):
    torch.manual_seed(0)
    model = LOFR(c, small())
    out = model(images(), query_point=(20.0, 30.0))
    assert model.schema.num_keypoints == c
    for key in ("logits_cnn", "logits_enc", "logits"):
        assert out[key].shape == (2, c)
    assert out["logits_per_layer"].shape == (2, 2, c)  # (D_De, B, C)
    assert out["cams"].shape == (2, c, 4, 3)
    assert [tuple(m.shape) for m in out["key_maps"]] == [(2, c, 16, 12), (2, c, 8, 6), (2, c, 4, 3)]
    assert [tuple(m.shape) for m in out["response_maps"]] == [(2, c, 16, 12), (2, c, 8, 6), (2, c, 4, 3)]
    assert out["response_fused"].shape == out["heatmaps"].shape == (2, c, 16, 12)
    assert out["part_feats"].shape == out["protos"].shape == out["prototypes"].shape == (2, c, 64)
    assert out["dec_attn"].shape == (2, 2, c, 192 + 48 + 12)
    assert [tuple(a.shape) for a in out["enc_attn"]] == [(2, 1, 16, 12), (2, 1, 8, 6), (2, 1, 4, 3)]
    assert out["strides"] == [4, 8, 16]
    # the fused response map is a distribution per keypoint; the heatmap peaks at 1
    assert torch.allclose(out["response_fused"].sum(dim=(-2, -1)), torch.ones(2, c), atol=1e-5)
    assert torch.allclose(out["heatmaps"].amax(dim=(-2, -1)), torch.ones(2, c))


def test_baseline_outputs_and_config():
    model = Baseline(17, small())
    cfg = model.config
    assert not (cfg.cam_head or cfg.enc_head or cfg.use_spe or cfg.multi_scale or cfg.use_reppg or cfg.use_pdc)
    assert model.cam_head is None and model.reppg is None and model.spe is None
    assert model.backbone.strides == (4,)  # the CNN stops at the map the encoder reads
    out = model(images())
    assert out["logits_cnn"] is None and out["logits_enc"] is None and out["cams"] is None
    assert out["logits"].shape == (2, 17) and out["response_fused"].shape == (2, 17, 16, 12)
    assert out["dec_attn"].shape[-1] == 192
    w = cfg.loss_weights()
    assert (w.cls_cnn, w.cls_enc, w.cls_final, w.div) == (0.0, 0.0, 0.5, 0.0)
    # DETR's values (the memory), even when the LOFR config it is built from reads local values
    assert Baseline(17, small(dec_value="local")).config.dec_value == "memory"


# ---------------------------------------------------------------- gradients


def _zero_grad_params(model, out, c=17):
    crit = LOFRCriterion(model.config.loss_weights())
    labels = (torch.rand(2, c, generator=torch.Generator().manual_seed(3)) < 0.5).float()
    crit(out, {"labels": labels})["total"].backward()
    return [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]


def test_gradients_reach_every_lofr_parameter():
    torch.manual_seed(0)
    model = LOFR(17, small())
    assert _zero_grad_params(model, model(images())) == []


def test_gradients_baseline():
    torch.manual_seed(0)
    model = Baseline(17, small())
    # DETR's first decoder self-attention sees all-zero queries: its value weight gets no gradient
    assert _zero_grad_params(model, model(images())) == ["decoder.layers.0.self_attn.v_proj.weight"]


def test_spe_prior_has_no_gradient_path_but_shapes_the_encoder():
    torch.manual_seed(0)
    model = LOFR(17, small()).eval()
    out = model(images())
    assert all(not m.requires_grad for m in out["key_maps"])
    # zeroing the SPE embedding (so φ = 0) changes the memory, i.e. SPE is used
    with torch.no_grad():
        for spe in model.spe:
            spe.embed.weight.zero_()
    out0 = model(images())
    assert not torch.allclose(out0["logits"], out["logits"])


# ---------------------------------------------------------------- ablation switches (Tables 5-6)


@pytest.mark.parametrize("overrides", [
    dict(use_spe=False),
    dict(multi_scale=False),
    dict(multi_scale=False, single_scale_stride=16),
    dict(use_reppg=False),
    dict(use_pdc=False),
    dict(position="learned"),
    dict(spe_mode="embed", proto_weighting="mean"),
    dict(dec_self_attn=False, enc_layers=2, dec_layers=3),
])
def test_ablation_configurations_run(overrides):
    torch.manual_seed(0)
    model = LOFR(14, small(**overrides))
    out = model(images())
    n = 1 if overrides.get("multi_scale") is False else 3
    assert len(out["response_maps"]) == n
    assert out["logits"].shape == (2, 14)
    assert out["logits_per_layer"].shape[0] == model.config.dec_layers
    if overrides.get("single_scale_stride") == 16:
        assert out["response_fused"].shape[-2:] == (4, 3)
    w = model.config.loss_weights()
    assert (w.div == 0.0) == (overrides.get("use_pdc") is False)
    _zero_grad_params(model, out, 14)  # the loss is computable for every switch setting


def test_config_errors():
    with pytest.raises(ValueError, match="CAM head"):
        LOFR(17, small(cam_head=False))
    with pytest.raises(ValueError, match="single_scale_stride"):
        LOFR(17, small(multi_scale=False, single_scale_stride=32))
    with pytest.raises(ValueError, match="multiples of 16"):
        LOFR(17, small(input_size=(60, 48)))
    with pytest.raises(ValueError, match="divisible"):
        LOFR(17, small(nhead=3))
    with pytest.raises(ValueError, match="mpii"):
        LOFR(17, small(), schema="mpii")
    with pytest.raises(ValueError, match="schema"):
        LOFR(15, small())  # no schema has 15 keypoints: RePPG has no graph
    assert LOFR(15, small(use_reppg=False))(images())["logits"].shape == (2, 15)


def test_config_presets_and_yaml_round_trip():
    paper = LOFRConfig.coco_r50()
    assert (paper.backbone, paper.input_size, paper.d_model, paper.nhead, paper.enc_layers,
            paper.dec_layers) == ("resnet50", (256, 192), 256, 8, 4, 6)
    assert (paper.loss.cls_cnn, paper.loss.cls_enc, paper.loss.cls_final, paper.loss.div) == (0.2, 0.2, 0.5, 0.1)
    assert LOFRConfig.mpii_r50().num_keypoints == 16 and LOFRConfig.crowdpose_r50().num_keypoints == 14
    assert LOFRConfig.coco_hrnet_w32().backbone == "hrnet_w32"
    cfg = small(spe_sigma=4.0)
    assert from_dict(LOFRConfig, to_dict(cfg)) == cfg
    model = LOFR(config=LOFRConfig.mpii_r50(backbone="small", input_size=(64, 64)))
    assert model.num_keypoints == 16 and model.schema.name == "mpii"


def test_param_groups_split_cnn_and_transformer():
    model = LOFR(17, small())
    groups = model.param_groups(lr=4e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert groups[0]["lr"] == 4e-3 and groups[1]["lr"] == pytest.approx(4e-4)
    assert {id(p) for p in model.backbone.parameters()} <= {id(p) for p in groups[0]["params"]}


# ---------------------------------------------------------------- predict


def test_decode_response_maps_hand_computed():
    maps = torch.zeros(1, 3, 3, 4)
    maps[0, 0, 1, 2] = 0.6  # peak at row 1, column 2; right neighbour > left, upper > lower
    maps[0, 0, 1, 3], maps[0, 0, 1, 1] = 0.2, 0.1
    maps[0, 0, 0, 2], maps[0, 0, 2, 2] = 0.07, 0.03
    maps[0, 1, 0, 0] = 1.0  # peak in a corner: no refinement (a neighbour is missing)
    maps[0, 2] = 1.0 / 12  # uniform map
    kp, conc = decode_response_maps(maps, stride=4, refine="quarter")
    assert kp[0, 0].tolist() == [(2.5 + 0.25) * 4, (1.5 - 0.25) * 4]
    assert kp[0, 1].tolist() == [0.5 * 4, 0.5 * 4]
    kp_raw, _ = decode_response_maps(maps, stride=4, refine=False)
    assert kp_raw[0, 0].tolist() == [2.5 * 4, 1.5 * 4]
    assert conc[0, 0].item() == pytest.approx(1 - 1 / (12 * 0.6))
    assert conc[0, 1].item() == pytest.approx(1 - 1 / 12)
    assert conc[0, 2].item() == pytest.approx(0.0, abs=1e-6)
    # the default (Taylor): the corner peak and the flat map have no concave neighbourhood -> as "quarter"
    kp_t, _ = decode_response_maps(maps, stride=4)
    assert kp_t[0, 1].tolist() == kp[0, 1].tolist()


def test_decode_taylor_recovers_a_sampled_gaussian_exactly():
    """log of a sampled Gaussian is a quadratic: its Taylor step lands on the centre. Centre at
    (x, y) = (2.8, 1.35) cells, sigma 1 cell, on a 4x6 grid: cell (i, j) centred at (j + 0.5, i + 0.5)."""
    h, w, sigma = 4, 6, 1.0
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    x0, y0 = 2.8, 1.35
    g = torch.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma ** 2))
    kp, _ = decode_response_maps(g[None, None], stride=4)
    assert kp[0, 0].tolist() == pytest.approx([x0 * 4, y0 * 4], abs=1e-4)
    # by hand for x: the peak cell is j = 2 (centre 2.5); d/dx log g = (x0 - 2.5) / sigma^2 = 0.3,
    # d2/dx2 = -1 / sigma^2 -> offset 0.3 cell. A narrow, skewed peak: log m = -(x - 2.5)^2 / 0.18 + 3 (x - 2.5)
    # peaks at 2.5 + 3 * 0.09 = 2.77, still in cell 2
    far = torch.exp(-((xx - 2.5) ** 2) / (2 * 0.3 ** 2) - ((yy - 1.5) ** 2) / 2) * torch.exp(3.0 * (xx - 2.5))
    kp_far, _ = decode_response_maps(far[None, None], stride=1)
    assert kp_far[0, 0, 0].item() == pytest.approx(2.77, abs=1e-4)
    # the quarter-cell rule would have said 2.75 for both; no refinement 2.5
    assert decode_response_maps(far[None, None], 1, refine="quarter")[0][0, 0, 0].item() == 2.75
    with pytest.raises(ValueError, match="refine"):
        decode_response_maps(g[None, None], 4, refine="dark")


def test_predict_keypoints_in_crop_pixels():
    torch.manual_seed(0)
    model = LOFR(17, small()).eval()
    pred = model.predict(images())
    kp, scores = pred["keypoints"], pred["scores"]
    assert kp.shape == (2, 17, 2) and scores.shape == (2, 17)
    assert (kp[..., 0] > 0).all() and (kp[..., 0] < 48).all() and (kp[..., 1] > 0).all() and (kp[..., 1] < 64).all()
    assert ((scores >= 0) & (scores <= pred["probs"])).all()
    # the same as decoding the forward pass's fused map by hand
    kp2, conc = decode_response_maps(pred["outputs"]["response_fused"], 4)
    assert torch.equal(kp, kp2) and torch.allclose(scores, pred["probs"] * conc)
    assert not kp.requires_grad


# ---------------------------------------------------------------- learning happens


def structured_batch(n=8, c=17, seed=0):
    """Images whose content decides the labels: keypoint k present <=> a coloured 5x5 square at a
    fixed place for k (on noise)."""
    g = torch.Generator().manual_seed(seed)
    labels = (torch.rand(n, c, generator=g) < 0.5).float()
    x = 0.1 * torch.randn(n, 3, 64, 48, generator=g)
    colors = torch.rand(c, 3, generator=g) * 2 - 1
    for k in range(c):
        i, j = 4 + (k * 7) % 52, 4 + (k * 11) % 40
        x[:, :, i:i + 5, j:j + 5] += labels[:, k, None, None, None] * colors[k, :, None, None] * 2
    return x, labels


@pytest.mark.parametrize("cls", [LOFR, Baseline])
def test_weak_loss_falls_when_overfitting_a_few_images(cls):
    torch.manual_seed(0)
    model = cls(17, small())
    crit = LOFRCriterion(model.config.loss_weights())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = structured_batch()
    losses = []
    for _ in range(30):
        loss = crit(model(x), {"labels": y})
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        losses.append(loss["weak"].item())
    assert losses[-1] < 0.6 * losses[0], losses


# ---------------------------------------------------------------- the paper's models


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["resnet50", "hrnet_w32"])
def test_paper_models_build_and_run_at_256x192(backbone):
    torch.manual_seed(0)
    model = LOFR(17, LOFRConfig.coco_r50(backbone=backbone)).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 256, 192))
    assert [tuple(m.shape[-2:]) for m in out["response_maps"]] == [(64, 48), (32, 24), (16, 12)]
    assert out["logits"].shape == (1, 17) and out["dec_attn"].shape == (6, 1, 17, 3072 + 768 + 192)
    assert Baseline(17, LOFRConfig.coco_r50(backbone=backbone)).config.multi_scale is False


@pytest.fixture(scope="module")
def synthpose_crops(tmp_path_factory):
    """8 SynthPose person crops at 64x48 as one batch (image, labels, heatmaps, target_weight,
    has_location), from the project's own generator and top-down dataset."""
    synth = pytest.importorskip("lofr.data.synth")
    topdown = pytest.importorskip("lofr.data.topdown")
    root = tmp_path_factory.mktemp("synth8")
    synth.generate(root, n_train=8, n_val=0, seed=0, workers=1, progress=False)
    ds = topdown.TopDownDataset(root / "annotations" / "person_keypoints_train2017.json", root / "train2017",
                                input_size=(64, 48))
    torch.manual_seed(0)
    samples = [ds[i] for i in range(8)]
    keys = ("image", "labels", "heatmaps", "target_weight", "has_location")
    return {k: torch.stack([s[k] for s in samples]) for k in keys}


def test_semi_weak_loss_falls_on_synthpose_crops(synthpose_crops):
    batch = synthpose_crops
    torch.manual_seed(0)
    model = LOFR(17, small(loss=LossWeights.semi_weak()))  # Eq. 15 with the dataset's heatmaps
    assert model(batch["image"][:1])["heatmaps"].shape[1:] == batch["heatmaps"].shape[1:]  # Eq. 14 targets fit
    crit = LOFRCriterion(model.config.loss_weights())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    hist = []
    for _ in range(30):
        loss = crit(model(batch["image"]), batch)
        opt.zero_grad()
        loss["total"].backward()
        opt.step()
        hist.append({k: v.item() for k, v in loss.items()})
    assert "mse" in hist[0]
    assert hist[-1]["weak"] < 0.6 * hist[0]["weak"], hist
    assert hist[-1]["total"] < 0.6 * hist[0]["total"], hist
