"""Attention math: one file per variant (``variants/<name>.py``), one naive definition (``naive.py``) and fast paths
by family, all behind ``attention(..., stats=...)``."""

from sinklab.ops.dispatch import IMPLS, attention, attention_calls
from sinklab.ops.stats import AttentionStats, StatsRequest
from sinklab.ops.variants import VARIANTS, Param, Variant, get_variant, register_variant

__all__ = [
    "IMPLS",
    "VARIANTS",
    "AttentionStats",
    "Param",
    "StatsRequest",
    "Variant",
    "attention",
    "attention_calls",
    "get_variant",
    "register_variant",
]
