"""The one place that knows transformers internals: the model's structure (``ModelView``), one attention site per
attention module (``sites``), and the record of what was observed (``Record``)."""

from sinklab.hf.arch import AttentionInfo, ModelView
from sinklab.hf.record import Record
from sinklab.hf.site import AttentionCall, AttentionSite, ModelSites, Variant, sites

__all__ = ["AttentionCall", "AttentionInfo", "AttentionSite", "ModelSites", "ModelView", "Record", "Variant", "sites"]
