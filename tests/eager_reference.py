"""The usual way to measure sinks, kept as the reference: eager attention with `output_attentions=True`."""

import torch

from sinklab.measure.metrics import first_positions


def eager_stats(model, ids, mask, is_decoder):
    """colsum, count-normalized alpha_1 and entropy from the full attention matrices."""
    previous = model.config._attn_implementation  # sdpa, or eager where a model has no SDPA path (gpt-oss)
    model.set_attn_implementation("eager")
    kwargs = {"position_ids": (mask.cumsum(1) - 1).clamp_min(0)} if is_decoder else {}
    with torch.no_grad():
        attentions = model.base_model(input_ids=ids, attention_mask=mask, output_attentions=True, **kwargs).attentions
    model.set_attn_implementation(previous)
    valid = mask.bool()
    first = first_positions(valid, ids.shape[0])
    stats = []
    layer_types = getattr(model.config, "layer_types", None) or ["full_attention"] * len(attentions)
    for A, kind in zip(attentions, layer_types, strict=True):  # [B, H, T, S]
        A = A.double() * valid[:, None, :, None]
        colsum = A.sum(2)
        T = A.shape[-1]
        allowed = torch.ones(T, T, dtype=torch.bool)
        if is_decoder:
            allowed = allowed.tril()
        if kind == "sliding_attention":
            allowed = allowed.triu(-(model.config.sliding_window - 1))
        allowed = allowed[None, None]
        allowed = allowed & valid[:, None, None, :] & valid[:, None, :, None]
        count = allowed[:, 0].sum(1)
        alpha = colsum.gather(2, first[:, None, None].expand(-1, A.shape[1], 1))[..., 0] / count.gather(
            1, first[:, None]
        )
        entropy = -torch.special.xlogy(A, A).sum((-1, -2)) / valid.sum(1, keepdim=True)
        stats.append((colsum, alpha, entropy))
    return stats


def gu_sink_rate(model, ids, eps):
    """Sink_1^eps as Gu et al.'s evaluation code computes it (sail-sg/Attention-Sink, eval_sink_open_source.py):
    eager attentions of unpadded [N, T] ids, importance = (A / ratios).sum(-2), (importance > eps).mean over
    samples, layers and heads, at the first token. The ratios broadcast along the key axis: key k is divided by the
    T - k queries that see it."""
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = model.base_model(input_ids=ids, output_attentions=True).attentions
    model.set_attn_implementation(previous)
    scores = torch.stack(attentions, dim=1).double()  # [N, L, H, T, T]
    ratios = torch.arange(scores.shape[-2], 0, -1, dtype=scores.dtype)[None, None, None, :].expand(scores.shape)
    importance = (scores / ratios).sum(dim=-2)  # [N, L, H, T]
    return float((importance > eps).double().mean(dim=(0, 1, 2))[0])
