import math

import pytest
import torch
from torch import nn

from lofr.models.encoder import EncoderLayer, MultiHeadAttention, MultiScaleEncoder, TransformerEncoder


def naive_mha(mha: MultiHeadAttention, query, key, value):
    """Eq. 5-8 with loops over batch and heads: softmax(Q_h K_h^T / sqrt(d_k)) V_h, concat, W_O."""
    q, k, v = mha.w_q(query), mha.w_k(key), mha.w_v(value)
    b, _, d = q.shape
    dk = d // mha.nhead
    outs, weights = [], []
    for i in range(b):
        heads, ws = [], []
        for h in range(mha.nhead):
            sl = slice(h * dk, (h + 1) * dk)
            s = torch.softmax(q[i, :, sl] @ k[i, :, sl].T / math.sqrt(dk), dim=-1)  # Eq. 6
            heads.append(s @ v[i, :, sl])  # Eq. 7 (without its residual)
            ws.append(s)
        outs.append(torch.cat(heads, dim=-1))  # Eq. 8 concat
        weights.append(torch.stack(ws).mean(0))
    return mha.w_o(torch.stack(outs)), torch.stack(weights)


def test_attention_matches_naive_reference_both_paths():
    torch.manual_seed(0)
    mha = MultiHeadAttention(8, 2)
    q, kv = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    ref_out, ref_w = naive_mha(mha, q, kv, kv)
    out_fast, w_none = mha(q, kv, kv)  # SDPA path
    out_slow, w = mha(q, kv, kv, need_weights=True)
    assert w_none is None
    assert torch.allclose(out_fast, ref_out, atol=1e-5) and torch.allclose(out_slow, ref_out, atol=1e-5)
    assert torch.allclose(w, ref_w, atol=1e-6)
    assert torch.allclose(mha.attention_weights(q, kv), ref_w, atol=1e-6)
    assert torch.allclose(w.sum(-1), torch.ones(2, 3))
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_encoder_layer_matches_torch_post_norm_layer():
    # Fig. 3a = the original post-norm layer: compare with nn.TransformerEncoderLayer (same weights)
    torch.manual_seed(0)
    ours = EncoderLayer(8, 2, 16)
    ref = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True, norm_first=False)
    with torch.no_grad():
        a = ours.self_attn
        ref.self_attn.in_proj_weight.copy_(torch.cat([a.w_q.weight, a.w_k.weight, a.w_v.weight]))
        ref.self_attn.in_proj_bias.copy_(torch.cat([a.w_q.bias, a.w_k.bias, a.w_v.bias]))
        ref.self_attn.out_proj.weight.copy_(a.w_o.weight)
        ref.self_attn.out_proj.bias.copy_(a.w_o.bias)
        ref.linear1.load_state_dict(ours.ffn[0].state_dict())
        ref.linear2.load_state_dict(ours.ffn[3].state_dict())
        ref.norm1.load_state_dict(ours.norm1.state_dict())
        ref.norm2.load_state_dict(ours.norm2.state_dict())
    x = torch.randn(2, 6, 8)
    out, w = ours(x)
    assert w is None
    assert torch.allclose(out, ref(x), atol=1e-5)


def test_position_goes_into_queries_and_keys_only():
    torch.manual_seed(0)
    layer = EncoderLayer(8, 2, 16)
    x, pos = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    out, _ = layer(x, pos)
    attn, _ = naive_mha(layer.self_attn, x + pos, x + pos, x)  # values without pos
    h = layer.norm1(x + attn)
    expected = layer.norm2(h + layer.ffn(h))
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, layer(x)[0], atol=1e-3)


def test_query_weights_are_rows_of_the_full_attention():
    torch.manual_seed(0)
    enc = TransformerEncoder(8, 2, num_layers=2, dim_ff=16)
    x, pos = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    out, w = enc(x, pos, query_index=3)
    assert w.shape == (2, 2, 5)
    assert torch.allclose(w.sum(-1), torch.ones(2, 2))
    # layer 0's row 3 from the explicit attention
    qk = x + pos
    _, full = enc.layers[0].self_attn(qk, qk, x, need_weights=True)
    assert torch.allclose(w[:, 0], full[:, 3], atol=1e-6)
    out_plain, w_none = enc(x, pos)
    assert w_none is None and torch.allclose(out, out_plain, atol=1e-6)
    assert torch.allclose(enc(x, pos, query_index=-2)[1], w)  # -2 is token 3 of 5
    with pytest.raises(IndexError):
        enc(x, pos, query_index=5)


def _ms_inputs(b=2, d=8):
    torch.manual_seed(1)
    sizes = [(4, 6), (2, 3), (1, 2)]
    srcs = [torch.randn(b, d, h, w) for h, w in sizes]
    pos = [torch.randn(b, d, h, w) for h, w in sizes]
    return srcs, pos, sizes


def test_multiscale_memory_is_the_concat_of_independent_scales():
    srcs, pos, sizes = _ms_inputs()
    enc = MultiScaleEncoder(8, 2, num_layers=2, dim_ff=16, num_scales=3)
    out = enc(srcs, pos)
    assert out["memory"].shape == (2, 24 + 6 + 2, 8) and out["pos"].shape == (2, 32, 8)
    assert out["shapes"] == sizes and out["attn"] is None
    # scale 1's memory is its own encoder applied to its own tokens (row-major)
    tokens = srcs[1].flatten(2).transpose(1, 2)
    p = pos[1].flatten(2).transpose(1, 2)
    assert torch.allclose(out["memory"][:, 24:30], enc.scales[1](tokens, p)[0], atol=1e-6)
    assert torch.allclose(out["pos"][:, 24:30], p)
    # self-attention stays within a scale: changing scale 2 leaves scales 0-1 unchanged
    srcs2 = srcs[:2] + [srcs[2] + 1.0]
    out2 = enc(srcs2, pos)
    assert torch.allclose(out2["memory"][:, :30], out["memory"][:, :30])
    assert not torch.allclose(out2["memory"][:, 30:], out["memory"][:, 30:])
    with pytest.raises(ValueError, match="3 scales"):
        enc(srcs[:2], pos[:2])


def test_multiscale_attention_of_a_query_pixel():
    srcs, pos, _ = _ms_inputs()
    enc = MultiScaleEncoder(8, 2, num_layers=2, dim_ff=16, num_scales=3)
    out = enc(srcs, pos, query_point=(13.0, 9.0), strides=[4, 8, 16])
    assert [tuple(a.shape) for a in out["attn"]] == [(2, 2, 4, 6), (2, 2, 2, 3), (2, 2, 1, 2)]
    # pixel (x=13, y=9) lies in cell (2, 3) at stride 4 -> token 2 * 6 + 3 = 15
    tokens = srcs[0].flatten(2).transpose(1, 2)
    _, w = enc.scales[0](tokens, pos[0].flatten(2).transpose(1, 2), query_index=15)
    assert torch.allclose(out["attn"][0].flatten(2), w)
    with pytest.raises(ValueError, match="strides"):
        enc(srcs, pos, query_point=(1.0, 1.0))


def test_encoder_gradients_reach_every_parameter():
    srcs, pos, _ = _ms_inputs()
    enc = MultiScaleEncoder(8, 2, num_layers=2, dim_ff=16, num_scales=3)
    enc(srcs, pos)["memory"].square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_dropout_is_off_by_default_and_applied_in_training():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    enc = TransformerEncoder(8, 2, 1, 16).train()
    assert torch.equal(enc(x)[0], enc(x)[0])  # dropout 0: deterministic in training mode
    enc_do = TransformerEncoder(8, 2, 1, 16, dropout=0.5).train()
    assert not torch.allclose(enc_do(x)[0], enc_do(x)[0])
    enc_do.eval()
    assert torch.equal(enc_do(x)[0], enc_do(x)[0])
