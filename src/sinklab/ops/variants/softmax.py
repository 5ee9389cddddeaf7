"""Softmax attention (Vaswani et al. 2017), the baseline: a_ij = exp(s_ij) / sum_j exp(s_ij), s = scale * q k^T."""

from __future__ import annotations

from sinklab.ops.variants import Variant

VARIANT = Variant(name="softmax", doc=__doc__, family="softmax", kernel="softmax")
