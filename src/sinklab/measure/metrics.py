"""Sink metrics from attention statistics: the formulas of the literature, in one place.

- First-token mass alpha_1^{l,h} and sink rate Sink_1^eps (Gu et al. 2024, "When Attention Sink Emerges in
  Language Models"): alpha_k = mean attention key k receives over the queries that may attend it;
  Sink_k^eps = mean over sequences and (l, h) of [alpha_k^{l,h} > eps], each sequence thresholded alone.
- Sink discovery: every key whose mean received mass exceeds a threshold in some head (non-initial sinks such as
  delimiters, [SEP]); keys that few queries can see are skipped (their mean is noise).
- Massive activations (Sun et al. 2024): |x| > 100 and about 1000x the median |x| of that hidden state.
- The no-op value-norm ratio and dormant heads (Gu et al. 2024; Bondarenko et al. 2023; Guo et al. 2024;
  Sandoval-Segura et al. 2025): a head with nothing to add parks its attention on a sink whose value is short.
"""

from __future__ import annotations

import torch

from sinklab.ops.stats import AttentionStats

MASSIVE_MIN_ABS = 100.0
MASSIVE_MIN_RATIO = 1000.0
DORMANT_OUTPUT_RATIO = 0.5


def mean_received(stats: AttentionStats) -> torch.Tensor:
    """[B, H, S] mean attention each key receives over the valid queries allowed to attend it (0 where none)."""
    return stats.colsum / stats.count[:, None, :].clamp_min(1)


def first_positions(key_padding: torch.Tensor | None, batch: int, device=None) -> torch.Tensor:
    """[B] index of each sequence's first real token (left padding moves it)."""
    if key_padding is None:
        return torch.zeros(batch, dtype=torch.long, device=device)
    return key_padding.int().argmax(dim=1)


def first_token_mass(stats: AttentionStats, first: torch.Tensor) -> torch.Tensor:
    """[B, H] alpha_1: mean attention the first real token receives."""
    mass = mean_received(stats)
    return mass.gather(2, first.to(mass.device)[:, None, None].expand(-1, mass.shape[1], 1))[..., 0]


def is_sink(mass: torch.Tensor, eps: float) -> torch.Tensor:
    """The sink rule (Gu et al. 2024): a key is a sink of a head when the mean mass it receives exceeds eps."""
    return mass > eps


def sink_share(alpha: torch.Tensor, eps: float) -> torch.Tensor:
    """[N, ..., H] alpha_1 of N sequences -> [..., H] share of the sequences in which each head's alpha_1 exceeds
    eps; NaN where the block has no softmax attention (a hybrid's linear layers)."""
    share = is_sink(alpha, eps).double().mean(0)
    return share.masked_fill(alpha.isnan().any(0), float("nan"))


def sink_rate(share: torch.Tensor) -> float:
    """Sink_1^eps (Gu et al. 2024) from ``sink_share``: the mean over sequences, layers and heads of
    [alpha_1 > eps], every sequence thresholded alone as in their evaluation code
    (``(importance_scores > epsilon).mean(dim=(0, 1, 2))``, sail-sg/Attention-Sink). NaN rows do not count."""
    return float(share[~share.isnan()].mean())


def sink_rate_of_mean(alpha: torch.Tensor, eps: float) -> float:
    """Share of the (layer, head) pairs whose alpha_1 averaged over sequences ([L, H] ``alpha``) exceeds eps: which
    heads are sinks on average. ``sink_rate`` before sinklab 0.2 was this; it differs from Gu et al.'s statistic
    where a head's alpha_1 straddles eps across sequences."""
    alpha = alpha[~alpha.isnan()]
    return float(is_sink(alpha, eps).double().mean())


def mean_slot_mass(stats: AttentionStats) -> torch.Tensor:
    """[B, H] mean share of a valid row's attention that goes to the learned sink slot (gpt-oss sinks, the sink and
    kv_bias variants): mass that no real key receives."""
    return stats.slot / stats.rows[:, None].clamp_min(1)


def mean_entropy(stats: AttentionStats) -> torch.Tensor:
    """[B, H] mean attention entropy (nats) per valid query row."""
    return stats.entropy / stats.rows[:, None].clamp_min(1)


def eligible_keys(stats: AttentionStats, min_queries: int) -> torch.Tensor:
    """[B, S] keys seen by at least ``min_queries`` valid queries: only those can be called sinks."""
    return stats.count >= min_queries


def massive_entries(
    max_values: torch.Tensor,
    medians: torch.Tensor,
    min_abs: float = MASSIVE_MIN_ABS,
    min_ratio: float = MASSIVE_MIN_RATIO,
) -> torch.Tensor:
    """Bool mask over candidate activations that are massive: |x| > min_abs and |x| / median >= min_ratio."""
    mag = max_values.abs()
    return (mag > min_abs) & (mag >= min_ratio * medians.clamp_min(1e-12))


def value_norm_ratio(vnorm: torch.Tensor) -> torch.Tensor:
    """[...] the no-op value-norm ratio ||v_0|| / median_{j >= 1} ||v_j|| of value norms [..., T] (key 0 = the
    first token). Below 1, attending the sink adds a short vector: a near no-op (Gu et al. 2024; Bondarenko
    et al. 2023, "Quantizable Transformers": heads that want no update attend a low-norm value). The median keeps a
    second sink from setting the scale."""
    return vnorm[..., 0] / vnorm[..., 1:].median(dim=-1).values.clamp_min(1e-30)


def dormant_heads(
    alpha: torch.Tensor, output_ratio: torch.Tensor, eps: float, max_output_ratio: float = DORMANT_OUTPUT_RATIO
) -> torch.Tensor:
    """[L, H] bool: dormant heads, which attend the first token and write almost nothing (Guo et al. 2024,
    "Active-dormant attention heads"; Sandoval-Segura et al. 2025, "Identifying and evaluating dormant heads in
    pretrained LLMs": a tiny head output norm). Dormant = alpha_1 > eps (``is_sink``) and
    mean_{t >= 1} ||o_t|| / median_j ||v_j|| < max_output_ratio (``output_ratio``; o_t the head's output before the
    output projection, v_j its KV head's values; default 0.5)."""
    return is_sink(alpha, eps) & (output_ratio < max_output_ratio)
