"""Diagnostics the trainer records while it trains: ``attention_qk_scales`` (``attn_qk_min`` in
metrics.jsonl) and the warning said when an attention layer has lost its query / key projections."""

from __future__ import annotations

from torch import nn

__all__ = ["DEAD_ATTENTION", "attention_qk_scales", "dead_attention_warning"]


DEAD_ATTENTION = 1e-2  # ||W_q|| ||W_k|| below this: the layer's attention is (nearly) uniform


def attention_qk_scales(model: nn.Module) -> dict[str, float]:
    """{module name: ||W_q||_F * ||W_k||_F} for every attention layer of ``model`` (the encoder's
    ``MultiHeadAttention``: w_q / w_k; the decoder's ``Attention``: q_proj / k_proj).

    The product bounds how far a layer's attention logits can move from uniform. At initialisation it
    is about 20 (d_model 64); a value near 0 means the layer attends uniformly to everything. Adam's L2
    weight decay (``optim.optimizer=adam``, the paper's optimiser) drives exactly these weights to 0
    when their loss gradient is weaker than the decay term — Adam normalises the sum, so the decay
    then shrinks them by about lr per step: measured on synth-cpu (from scratch), the decoder's query /
    key projections reached norms of 1e-5 to 0 within 2040 steps and 2 of 3 seeds ended with exactly
    uniform response maps; ``optim.optimizer=adamw`` (decoupled decay) keeps them at ~6."""
    out = {}
    for name, m in model.named_modules():
        q = getattr(m, "w_q", None) or getattr(m, "q_proj", None)  # encoder / decoder attention
        k = getattr(m, "w_k", None) or getattr(m, "k_proj", None)
        if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
            out[name] = float(q.weight.detach().norm() * k.weight.detach().norm())
    return out


def dead_attention_warning(scales: dict[str, float], optimizer: str) -> str | None:
    dead = sorted(n for n, v in scales.items() if v < DEAD_ATTENTION)
    if not dead:
        return None
    hint = (" Adam's L2 weight decay shrinks weights whose loss gradient is weaker than the decay by ~lr per "
            "step; optim.optimizer=adamw (decoupled decay) keeps them." if optimizer == "adam" else "")
    return (f"WARNING: {len(dead)} attention layer(s) have lost their query/key projections "
            f"(||W_q|| ||W_k|| < {DEAD_ATTENTION:g}: {', '.join(dead)}): they now attend uniformly.{hint}")
