"""Attention math: every variant as a readable definition (``<variant>/naive.py``) beside its fast paths."""

from sinklab.ops.attention import IMPLS, attention, attention_calls
from sinklab.ops.variants import VARIANTS, Param

__all__ = ["IMPLS", "VARIANTS", "Param", "attention", "attention_calls"]
