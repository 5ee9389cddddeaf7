"""Attention statistics: the mass each key receives (column sums), counts and entropy, in O(T) memory.

``naive.py`` defines them from the full matrix; ``chunked.py`` computes them in query chunks (CPU and any device);
a Triton column-sum kernel may sit beside them for CUDA. ``AttentionStats`` lives in ``sinklab.ops.stats``.
"""

from sinklab.ops.colsum import chunked, naive
from sinklab.ops.stats import AttentionStats

__all__ = ["AttentionStats", "chunked", "naive"]
