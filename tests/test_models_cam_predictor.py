"""The plain-CAM predictor (``LOFR.predict_cam``, ``evaluate(source="cam")``) and the decoder's
``dec_value="local"`` option."""

from __future__ import annotations

import pytest
import torch

from lofr.engine.trainer import _maps_and_probs, predict_records
from lofr.models.decoder import PoseDecoder
from lofr.models.lofr import LOFR, Baseline, LOFRConfig, normalise_cams


def small(**kw) -> LOFRConfig:
    return LOFRConfig.cpu_small(d_model=32, nhead=2, dim_ff=32, dec_layers=1, **kw)


def test_normalise_cams_hand_case_and_all_zero_map_is_uniform():
    cams = torch.tensor([[[[0.0, 1.0], [3.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    out = normalise_cams(cams)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.25], [0.75, 0.0]]))
    torch.testing.assert_close(out[0, 1], torch.full((2, 2), 0.25))


def test_predict_cam_decodes_the_cam_peak_at_stride_16(monkeypatch):
    torch.manual_seed(0)
    model = LOFR(config=small()).eval()
    cams = torch.zeros(2, 17, 4, 3)  # 64x48 input -> a 4x3 stride-16 grid
    cams[:, :, 2, 1] = 5.0  # every keypoint peaks at cell (row 2, col 1); neighbours equal -> no refinement
    logits = torch.zeros(2, 17)
    real = model.cam_head.forward

    def fake(x):
        out = real(x)
        return {**out, "cams": cams, "logits": logits}

    monkeypatch.setattr(model.cam_head, "forward", fake)
    pred = model.predict_cam(torch.randn(2, 3, 64, 48))
    torch.testing.assert_close(pred["keypoints"], torch.tensor([1.5 * 16, 2.5 * 16]).expand(2, 17, 2))
    torch.testing.assert_close(pred["probs"], torch.full((2, 17), 0.5))
    # one cell holds all the mass of a 12-cell map: concentration 1 - 1 / (12 * 1), times p = 0.5
    torch.testing.assert_close(pred["scores"], torch.full((2, 17), 0.5 * 11 / 12))
    # the trainer's "cam" source reads the same maps and stride
    monkeypatch.setattr(model, "forward", lambda images: {"cams": cams, "logits_cnn": logits})
    maps, probs, stride = _maps_and_probs(model, torch.zeros(2, 3, 64, 48), "cam")
    assert stride == 16 and maps.shape == (2, 17, 4, 3)
    torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, 17))


def test_predict_cam_scores_follow_concentration():
    torch.manual_seed(0)
    model = LOFR(config=small()).eval()
    pred = model.predict_cam(torch.randn(2, 3, 64, 48))
    assert pred["keypoints"].shape == (2, 17, 2) and pred["scores"].shape == (2, 17)
    assert (pred["scores"] <= pred["probs"] + 1e-6).all()
    assert (pred["keypoints"][..., 0] <= 48).all() and (pred["keypoints"][..., 1] <= 64).all()


def test_cam_source_needs_a_cam_head_and_a_known_name():
    model = Baseline(config=small()).eval()
    with pytest.raises(ValueError, match="CAM head"):
        model.predict_cam(torch.zeros(1, 3, 64, 48))
    with pytest.raises(ValueError, match="CAM head"):
        _maps_and_probs(model, torch.zeros(1, 3, 64, 48), "cam")
    with pytest.raises(ValueError, match="source"):
        predict_records(model, [], source="heatmap")


def test_decoder_value_changes_what_is_pooled_not_where_it_looks():
    torch.manual_seed(0)
    dec = PoseDecoder(16, 2, num_layers=2, dim_ff=16, num_keypoints=3).eval()
    q, memory = torch.randn(2, 3, 16), torch.randn(2, 12, 16)
    plain = dec(q, memory, None, [(3, 4)])
    zero = dec(q, memory, None, [(3, 4)], value=torch.zeros_like(memory))
    # first layer: same keys -> same attention; the pooled part features follow the values
    torch.testing.assert_close(zero["attn"][0], plain["attn"][0])
    torch.testing.assert_close(zero["part_feats"], torch.zeros(2, 3, 16))
    assert not torch.allclose(plain["part_feats"], zero["part_feats"])
    with pytest.raises(ValueError, match="value"):
        dec(q, memory, None, [(3, 4)], value=torch.zeros(2, 11, 16))


@pytest.mark.parametrize("dec_value", ["memory", "local"])
def test_lofr_dec_value_local_pools_the_encoder_input(dec_value):
    torch.manual_seed(0)
    model = LOFR(config=small(dec_value=dec_value)).eval()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda m, args: seen.update(srcs=args[0]))
    out = model(torch.randn(2, 3, 64, 48))
    local = torch.cat([s.flatten(2).transpose(1, 2) for s in seen["srcs"]], dim=1)  # (B, L, d)
    pooled = out["dec_attn"][-1] @ local  # (B, C, d)
    assert torch.allclose(out["part_feats"], pooled, atol=1e-5) == (dec_value == "local")


def test_dec_value_is_checked():
    with pytest.raises(ValueError, match="dec_value"):
        LOFR(config=small(dec_value="global"))


def test_cam_stride_8_gives_twice_finer_cams_and_is_checked():
    torch.manual_seed(0)
    model = LOFR(config=small(cam_stride=8)).eval()
    out = model(torch.randn(1, 3, 64, 48))
    assert out["cams"].shape == (1, 17, 8, 6) and model.cam_head.to_classes.in_channels == 64  # small CNN's c2
    assert model.predict_cam(torch.randn(1, 3, 64, 48))["keypoints"].shape == (1, 17, 2)
    assert LOFR(config=small()).cam_head.to_classes.in_channels == 128  # default: stride 16
    with pytest.raises(ValueError, match="cam_stride"):
        LOFRConfig.cpu_small(cam_stride=32).check()
