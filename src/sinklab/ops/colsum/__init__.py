"""Attention statistics in O(T) memory: ``chunked.attention_rows`` (query chunks, any device, every variant),
``fused.attention`` (softmax on the CPU from PyTorch's fused kernel, where it is exact) and
the column sums of a stored logsumexp (``naive.colsum`` defines them, ``chunked.colsum`` in chunks). The definition
of every statistic is ``sinklab.ops.naive``; ``AttentionStats`` lives in ``sinklab.ops.stats``.
"""

from sinklab.ops.colsum import chunked, fused, naive

__all__ = ["chunked", "fused", "naive"]
