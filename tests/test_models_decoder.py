import math

import pytest
import torch
from einops import rearrange
from torch import nn

from lofr.models.decoder import (Attention, DecoderLayer, KeypointClassifier, PoseDecoder,
                                 fuse_response_maps, split_scales)

SHAPES = [(4, 3), (2, 2), (1, 1)]  # three scales, L = 12 + 4 + 1 = 17


def make_memory(b, d, shapes=SHAPES, seed=0):
    """Flatten per-scale (B, d, h, w) maps the way the encoder does: row-major, scales in order."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(b, d, h, w, generator=g) for h, w in shapes]
    return torch.cat([rearrange(m, "b d h w -> b (h w) d") for m in maps], dim=1), maps


def test_attention_weights_path_matches_sdpa_and_a_naive_loop():
    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    out_w, weights = attn(q, k, v, need_weights=True)
    out_sdpa, none = attn(q, k, v)
    assert none is None and weights.shape == (2, 2, 3, 5)
    assert torch.allclose(out_w, out_sdpa, atol=1e-6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 2, 3))
    # naive reference: Eq. 5-8 head by head, query by query
    qp, kp, vp = attn.q_proj(q), attn.k_proj(k), attn.v_proj(v)
    ref = torch.zeros(2, 3, 8)
    for b in range(2):
        heads = []
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            rows = []
            for i in range(3):
                s = torch.stack([qp[b, i, sl] @ kp[b, j, sl] / math.sqrt(4) for j in range(5)]).softmax(0)
                assert torch.allclose(s, weights[b, h, i], atol=1e-6)
                rows.append(sum(s[j] * vp[b, j, sl] for j in range(5)))
            heads.append(torch.stack(rows))
        ref[b] = attn.out_proj(torch.cat(heads, dim=-1))
    assert torch.allclose(out_w, ref, atol=1e-5)


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(8, 4).eval()
    mha = nn.MultiheadAttention(8, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        mha.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        mha.out_proj.weight.copy_(ours.out_proj.weight)
        mha.out_proj.bias.copy_(ours.out_proj.bias)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 6, 8)
    out, w = ours(q, kv, kv, need_weights=True)
    ref, ref_w = mha(q, kv, kv, need_weights=True, average_attn_weights=True)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(w.mean(1), ref_w, atol=1e-6)


def test_split_scales_inverts_the_encoder_flattening():
    memory, maps = make_memory(2, 3)
    attn = rearrange(memory, "b l d -> b d l")  # treat the d channels as "queries"
    for got, want in zip(split_scales(attn, SHAPES), maps):
        assert torch.equal(got, want)
    with pytest.raises(ValueError, match="cover 16 positions but the memory has L=17"):
        split_scales(attn, [(4, 3), (2, 2)])


def test_fuse_response_maps_hand_computed():
    # fine 2x2 map holding 0.6 at (0, 0); coarse 1x1 map holding 0.4.
    # renormalised: fine -> [[1, 0], [0, 0]], coarse -> 0.25 everywhere; mean of the two:
    fine = torch.tensor([[0.6, 0.0], [0.0, 0.0]]).view(1, 1, 2, 2)
    coarse = torch.tensor([[0.4]]).view(1, 1, 1, 1)
    fused = fuse_response_maps([fine, coarse])
    assert torch.allclose(fused, torch.tensor([[0.625, 0.125], [0.125, 0.125]]).view(1, 1, 2, 2))
    # zero mass stays zero rather than NaN
    zero = fuse_response_maps([torch.zeros(1, 1, 2, 2)])
    assert torch.equal(zero, torch.zeros(1, 1, 2, 2))


def test_keypoint_classifier_per_keypoint_and_shared():
    head = KeypointClassifier(2, num_keypoints=2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
        head.bias.copy_(torch.tensor([0.5, -1.0]))
    x = torch.tensor([[[3.0, 4.0], [3.0, 4.0]]])  # the same query for both keypoints
    assert torch.allclose(head(x), torch.tensor([[3.5, 7.0]]))  # 1*3 + .5, 2*4 - 1
    with pytest.raises(ValueError, match="2 keypoints got 3"):
        head(torch.randn(1, 3, 2))
    shared = KeypointClassifier(2)
    assert shared(torch.randn(4, 5, 2)).shape == (4, 5)


@pytest.mark.parametrize("c", [17, 16, 14])
@pytest.mark.parametrize("self_attn", [True, False])
def test_pose_decoder_outputs(c, self_attn):
    torch.manual_seed(0)
    b, d, layers = 2, 16, 3
    dec = PoseDecoder(d, 4, layers, 32, self_attn=self_attn, num_keypoints=c)
    memory, _ = make_memory(b, d)
    queries, pos = torch.randn(b, c, d), torch.randn(b, memory.shape[1], d)
    out = dec(queries, memory, pos, SHAPES)
    assert out["hs"].shape == (layers, b, c, d)
    assert out["attn"].shape == (layers, b, c, 17)
    assert [tuple(m.shape) for m in out["response_maps"]] == [(b, c, h, w) for h, w in SHAPES]
    assert out["response_fused"].shape == (b, c, 4, 3)
    assert out["part_feats"].shape == (b, c, d)
    assert out["logits_per_layer"].shape == (layers, b, c)
    assert torch.equal(out["logits"], out["logits_per_layer"][-1])
    # attention is a distribution over all positions of all scales
    total = sum(m.sum(dim=(-2, -1)) for m in out["response_maps"])
    assert torch.allclose(total, torch.ones(b, c), atol=1e-5)
    assert torch.allclose(out["response_fused"].sum(dim=(-2, -1)), torch.ones(b, c), atol=1e-5)
    # part features = response-weighted pooling of the memory (naive loop)
    a = out["attn"][-1]
    ref = torch.stack([torch.stack([sum(a[i, k, l] * memory[i, l] for l in range(17)) for k in range(c)])
                       for i in range(b)])
    assert torch.allclose(out["part_feats"], ref, atol=1e-5)


def test_response_map_peaks_where_the_memory_matches_the_query():
    # one layer, no self-attention, q/k projections = identity: query k attends most to the memory
    # position that carries a large copy of it; that position must come out at the right scale/pixel
    torch.manual_seed(0)
    d, c = 8, 3
    dec = PoseDecoder(d, 1, 1, 16, self_attn=False, num_keypoints=c)
    with torch.no_grad():
        for proj in (dec.layers[0].cross_attn.q_proj, dec.layers[0].cross_attn.k_proj):
            proj.weight.copy_(torch.eye(d))
            proj.bias.zero_()
    queries = torch.eye(d)[:c].unsqueeze(0)  # (1, C, d): one-hot queries
    memory, maps = make_memory(1, d)
    maps = [m * 0.01 for m in maps]
    targets = [(0, 2, 1), (1, 1, 0), (2, 0, 0)]  # keypoint k -> (scale, row, col)
    for k, (s, i, j) in enumerate(targets):
        maps[s][0, :, i, j] = 20.0 * queries[0, k]
    memory = torch.cat([rearrange(m, "b d h w -> b (h w) d") for m in maps], dim=1)
    out = dec(queries, memory, None, SHAPES)
    for k, (s, i, j) in enumerate(targets):
        resp = out["response_maps"][s][0, k]
        assert resp.max() > 0.9 and resp[i, j] == resp.max()


def test_queries_are_independent_without_self_attention():
    torch.manual_seed(0)
    dec = PoseDecoder(16, 4, 2, 32, self_attn=False)  # shared head: any C
    memory, _ = make_memory(1, 16)
    q = torch.randn(1, 5, 16)
    out = dec(q, memory, None, SHAPES)["hs"][-1]
    q2 = q.clone()
    q2[0, 1:] = torch.randn(4, 16)
    assert torch.allclose(dec(q2, memory, None, SHAPES)["hs"][-1][0, 0], out[0, 0], atol=1e-6)
    dec_sa = PoseDecoder(16, 4, 2, 32, self_attn=True)
    a, b = dec_sa(q, memory, None, SHAPES)["hs"][-1], dec_sa(q2, memory, None, SHAPES)["hs"][-1]
    assert not torch.allclose(a[0, 0], b[0, 0], atol=1e-4)


def test_positions_go_into_queries_and_keys_not_values():
    torch.manual_seed(0)
    layer = DecoderLayer(8, 2, 16, self_attn=True).eval()
    tgt, memory = torch.randn(1, 3, 8), torch.randn(1, 6, 8)
    base, base_w = layer(tgt, memory)
    zeros, zeros_w = layer(tgt, memory, torch.zeros(1, 6, 8), torch.zeros(1, 3, 8))
    assert torch.allclose(base, zeros) and torch.allclose(base_w, zeros_w)
    # a memory position encoding changes where the queries look, not what they read
    pos = torch.randn(1, 6, 8)
    _, w = layer(tgt, memory, pos)
    assert not torch.allclose(w, base_w)
    ca = layer.cross_attn
    with torch.no_grad():
        sa_out = layer.norm_sa(tgt + layer.self_attn(tgt, tgt, tgt)[0])
        ref, ref_w = ca(sa_out, memory + pos, memory, need_weights=True)
    assert torch.allclose(w, ref_w.mean(1), atol=1e-6)


def test_decoder_gradients_reach_every_parameter():
    torch.manual_seed(0)
    dec = PoseDecoder(16, 4, 2, 32, num_keypoints=5)
    memory, _ = make_memory(2, 16)
    memory.requires_grad_(True)
    q = torch.randn(2, 5, 16, requires_grad=True)
    out = dec(q, memory, torch.randn_like(memory), SHAPES)
    loss = out["logits"].sum() + out["part_feats"].pow(2).sum() + out["logits_per_layer"][0].sum()
    loss.backward()
    for name, p in list(dec.named_parameters()) + [("queries", q), ("memory", memory)]:
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_decoder_bad_inputs_raise():
    dec = PoseDecoder(8, 2, 1, 16)
    memory, _ = make_memory(1, 8)
    with pytest.raises(ValueError, match="memory must be"):
        dec(torch.randn(1, 3, 8), memory[..., :4], None, SHAPES)
    with pytest.raises(ValueError, match="spatial_shapes"):
        dec(torch.randn(1, 3, 8), memory, None, None)
    with pytest.raises(ValueError, match="divisible"):
        PoseDecoder(10, 4, 1, 16)


def test_part_logits_are_attention_pooled_position_scores():
    # logits_from="part": logit_c = sum_l a_cl <w_c, v_l> + b_c for every layer (attention MIL pooling)
    torch.manual_seed(0)
    b, c, d, shapes = 2, 3, 8, [(2, 3), (1, 2)]
    dec = PoseDecoder(d, 2, 2, 16, num_keypoints=c, logits_from="part")
    q, mem, val = torch.randn(b, c, d), torch.randn(b, 8, d), torch.randn(b, 8, d)
    out = dec(q, mem, None, shapes, value=val)
    w, bias = dec.classifier.weight, dec.classifier.bias  # (C, d), (C,)
    scores = torch.einsum("cd,bld->bcl", w, val)  # <w_c, v_l>, (B, C, L)
    for k in range(2):
        by_hand = (out["attn"][k] * scores).sum(-1) + bias
        assert torch.allclose(out["logits_per_layer"][k], by_hand, atol=1e-5)
    assert torch.allclose(out["logits"], out["logits_per_layer"][-1])
    with pytest.raises(ValueError, match="logits_from"):
        PoseDecoder(d, 2, 1, 16, logits_from="memory")


def test_attention_bias_is_added_to_every_heads_logits():
    torch.manual_seed(0)
    attn = Attention(8, 2).eval()
    q, k, v = torch.randn(2, 3, 8), torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    bias = torch.randn(2, 3, 5)
    out_w, weights = attn(q, k, v, need_weights=True, bias=bias)
    out_sdpa, _ = attn(q, k, v, bias=bias)
    assert torch.allclose(out_w, out_sdpa, atol=1e-6)
    qh = rearrange(attn.q_proj(q), "b n (h e) -> b h n e", h=2)
    kh = rearrange(attn.k_proj(k), "b n (h e) -> b h n e", h=2)
    ref = (qh @ kh.transpose(-2, -1) / 2.0 + bias[:, None]).softmax(-1)  # sqrt(e) = 2
    assert torch.allclose(weights, ref, atol=1e-6)
    # a log-mask bias confines the attention: log(1e-3) off one cell, 0 on it
    mask = torch.full((2, 3, 5), math.log(1e-3)).index_fill_(-1, torch.tensor([2]), 0.0) * 10
    _, w = attn(q, k, v, need_weights=True, bias=mask)
    assert (w[..., 2] > 0.99).all()


def test_lofr_key_bias_pulls_each_query_to_its_cam_location():
    """dec_key_bias: query c's cross-attention logits get gamma * log(F^key_c + 1e-3), F^key the SPE
    location maps; with gamma large every present joint's response peaks on its CAM location."""
    from lofr.models.lofr import LOFR, LOFRConfig

    torch.manual_seed(0)
    model = LOFR(17, LOFRConfig.cpu_small(dec_key_bias=True)).eval()
    assert LOFR(17, LOFRConfig.cpu_small()).key_bias_scale is None
    with torch.no_grad():
        model.key_bias_scale.fill_(50.0)
        model.cam_head.fc.bias.fill_(20.0)  # every joint "present": F^key at full strength
        out = model(torch.randn(2, 3, 64, 48))
    key = out["key_maps"][0]  # (B, C, 16, 12) stride 4
    resp = out["response_maps"][0]  # the stride-4 share of the last layer's attention
    key, resp = rearrange(key, "b c h w -> b c (h w)"), rearrange(resp, "b c h w -> b c (h w)")
    at_peak = torch.gather(key, 2, resp.argmax(-1, keepdim=True))[..., 0]  # F^key where the response peaks
    assert torch.allclose(at_peak, key.amax(-1), atol=1e-6)  # (a tie of F^key cells is allowed)


def test_key_bias_without_spe_is_refused_not_ignored():
    """dec_key_bias reads SPE's F^key; without SPE there is nothing to bias with, so the config is an
    error (it used to be silently ignored). The baseline view of such a config drops it."""
    from lofr.models.lofr import LOFRConfig

    with pytest.raises(ValueError, match="dec_key_bias needs use_spe"):
        LOFRConfig.cpu_small(dec_key_bias=True, use_spe=False).check()
    base = LOFRConfig.cpu_small(dec_key_bias=True).as_baseline()
    assert not base.dec_key_bias
    base.check()


def test_location_prior_bias_hand_computed():
    """location_prior_bias = -1/2 sum_axes ((p - mu) / sigma)^2 at every token's cell centre, scales in order."""
    from lofr.models.lofr import location_prior_bias

    mean, std = torch.tensor([[4.0, 4.0], [8.0, 16.0]]), torch.tensor([[8.0, 8.0], [8.0, 4.0]])
    # stride 8, 2x2: centres (x, y) = (4, 4), (12, 4), (4, 12), (12, 12); stride 16, 1x1: (8, 8)
    b = location_prior_bias(mean, std, [(2, 2), (1, 1)], [8, 16])
    assert b.shape == (2, 5)
    assert torch.allclose(b[0], torch.tensor([0.0, -0.5, -0.5, -1.0, -0.5 * (0.25 + 0.25)]))
    # joint 1 at (8, 16), std (8, 4): (4, 4) -> -1/2 (0.25 + 9); (12, 12) -> -1/2 (0.25 + 1); (8, 8) -> -1/2 (0 + 4)
    assert torch.allclose(b[1], torch.tensor([-0.5 * 9.25, -0.5 * 9.25, -0.5 * 1.25, -0.5 * 1.25, -2.0]))


def test_lofr_prior_bias_starts_each_query_at_its_mean_position():
    """dec_prior_bias: the training poses' Gaussians on the cross-attention logits. With gamma large every
    joint's response peaks on the cell nearest its mean; set_location_prior keeps unseen joints at the default
    and floors the spread; the buffers travel in the state dict; the baseline view drops the switch."""
    from lofr.models.lofr import LOFR, LOFRConfig

    torch.manual_seed(0)
    cfg = LOFRConfig.cpu_small(dec_prior_bias=True)
    model = LOFR(17, cfg).eval()
    assert LOFR(17, LOFRConfig.cpu_small()).prior_bias_scale is None
    assert torch.equal(model.prior_mean[0], torch.tensor([24.0, 32.0]))  # 64x48 crop: (W/2, H/2)
    mean = torch.stack([torch.arange(17) * 2.0 + 4.0, torch.arange(17) * 3.0 + 2.0], -1)  # (17, 2), inside 48x64
    mean[5] = float("nan")  # never seen
    std = torch.full((17, 2), 6.0)
    std[3] = 1.0
    model.set_location_prior(mean, std)
    assert torch.equal(model.prior_mean[5], torch.tensor([24.0, 32.0])) and model.prior_std[3, 0] == 4.0
    with torch.no_grad():
        model.prior_bias_scale.fill_(200.0)
        out = model(torch.randn(2, 3, 64, 48))
    resp = out["response_maps"][0]  # (B, C, 16, 12): stride 4
    flat = rearrange(resp, "b c h w -> b c (h w)").argmax(-1)  # (B, C)
    centre = torch.stack([(flat % 12 + 0.5) * 4, (flat // 12 + 0.5) * 4], -1)  # (B, C, 2)
    assert ((centre - model.prior_mean).abs() <= 2.0).all()  # the cell holding the mean
    state = model.state_dict()
    again = LOFR(17, cfg)
    again.load_state_dict(state)
    assert torch.equal(again.prior_mean, model.prior_mean) and torch.equal(again.prior_std, model.prior_std)
    assert not cfg.as_baseline().dec_prior_bias
    with pytest.raises(ValueError, match="without dec_prior_bias"):
        LOFR(17, LOFRConfig.cpu_small()).set_location_prior(mean, std)
