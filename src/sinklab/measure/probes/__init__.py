"""Probes: one measured quantity and one intervention per mechanism the literature proposes for attention sinks.

``explain(model, tokenizer, texts_or_ids)`` runs them (``noop``, ``outlier``, ``bias``, ``anchor``,
``emergence``) through the measurement engine's ``Observer`` and returns an ``ExplainResult``.
"""

from sinklab.measure.probes._common import ProbeNotApplicable
from sinklab.measure.probes.anchor import AnchorProbe
from sinklab.measure.probes.bias import BiasProbe
from sinklab.measure.probes.emergence import EmergenceProbe
from sinklab.measure.probes.noop import NoopProbe
from sinklab.measure.probes.outlier import OutlierProbe
from sinklab.measure.probes.runner import PROBES, ExplainResult, explain

__all__ = [
    "PROBES",
    "AnchorProbe",
    "BiasProbe",
    "EmergenceProbe",
    "ExplainResult",
    "NoopProbe",
    "OutlierProbe",
    "ProbeNotApplicable",
    "explain",
]
