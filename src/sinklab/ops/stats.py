"""What an attention call can report besides its output, and the rules every implementation shares.

``sinklab.ops.attention(..., stats=StatsRequest(...))`` returns ``(out, AttentionStats)`` from every implementation
(naive, chunked, Triton). Statistics are over *valid* queries only: a query whose own token is key padding never
counts. For one layer with weights A [B, H, T, S] (the variant's attention weights; queries are the last T of the S
key positions):

    colsum[b, h, j] = sum_{valid i} A[b, h, i, j]                 attention mass key j receives
    count[b, j]     = #{valid i that may attend j}               so colsum / count is the mean received mass
    entropy[b, h]   = sum_{valid i} -sum_j A_ij log A_ij         nats, summed over valid rows
    rows[b]         = number of valid queries
    slot[b, h]      = sum_{valid i} (weight of the extra slot)   sink logit / softmax1 / kv_bias / gpt-oss sinks
    lse[b, h, i]    = log sum_j exp(s_ij) (+ the slot's logit)   softmax family only, natural log
    columns[b,h,i,n]= A[b, h, i, c_n] for requested key columns  (0 where i may not attend c_n)
    pattern         = A[:, :, :w, :w] of the first w queries and keys, for plots

alpha_k of Gu et al. 2024 ("When Attention Sink Emerges in Language Models") is colsum[k] / count[k]: for full causal
attention count[k] = T - k + 1 (1-indexed), exactly their 1/(T-k+1) sum_{t>=k} A_{t,k}.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StatsRequest:
    """Which statistics an attention call should return (``colsum`` brings ``count`` and ``rows`` with it)."""

    colsum: bool = True
    entropy: bool = True
    lse: bool = False
    pattern: int = 0
    columns: tuple[int, ...] = field(default=())

    def merge(self, other: StatsRequest) -> StatsRequest:
        """The smallest request that answers both."""
        return StatsRequest(
            colsum=self.colsum or other.colsum,
            entropy=self.entropy or other.entropy,
            lse=self.lse or other.lse,
            pattern=max(self.pattern, other.pattern),
            columns=tuple(sorted(set(self.columns) | set(other.columns))),
        )


@dataclass
class AttentionStats:
    """Statistics of one attention call over valid queries; the formulas are in this module's docstring.
    Fields that were not requested (or do not exist for the variant: ``slot``, ``lse``) are None."""

    colsum: torch.Tensor | None
    count: torch.Tensor | None
    entropy: torch.Tensor | None
    rows: torch.Tensor
    pattern: torch.Tensor | None = None
    slot: torch.Tensor | None = None
    lse: torch.Tensor | None = None
    columns: torch.Tensor | None = None


def query_validity(q_len: int, kv_len: int, key_padding: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    """[B, T] bool: a query counts iff its own token (key position ``i + S - T``) is not padding."""
    if key_padding is None:
        return torch.ones(batch, q_len, dtype=torch.bool, device=device)
    return key_padding[:, kv_len - q_len :].bool().expand(batch, q_len)


def key_counts(
    q_len: int,
    kv_len: int,
    *,
    causal: bool,
    window: int | None,
    key_padding: torch.Tensor | None,
    batch: int,
    device,
) -> torch.Tensor:
    """count [B, S] (long): valid queries allowed to attend each key by the position rule of ``sinklab.ops.masks``
    and the key padding, in O(S) memory (prefix sums over the valid queries; no T x S mask)."""
    T, S = q_len, kv_len
    off = S - T
    valid = query_validity(T, S, key_padding, batch, device).long()  # [B, T]
    prefix = torch.nn.functional.pad(valid.cumsum(-1), (1, 0))  # [B, T + 1]: prefix[:, i] = valid queries < i
    j = torch.arange(S, device=device)
    # query i (key position i + off) sees key j iff lo_j <= i < hi_j
    lo = (j - off).clamp(0, T) if causal else torch.zeros_like(j)
    hi = torch.full_like(j, T)
    if window is not None:
        hi = (j - off + window).clamp(0, T)
        if not causal:
            lo = (j - off - window + 1).clamp(0, T)
    hi = torch.maximum(hi, lo)
    count = prefix[:, hi] - prefix[:, lo]
    if key_padding is not None:
        count = count * key_padding.bool().expand(batch, S)
    return count
