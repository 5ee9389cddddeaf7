"""sinklab: attention sinks in Transformers. Measure them, use them, remove them.

model, tokenizer = sinklab.load("smollm2-135m")
result = sinklab.scan(model, tokenizer, texts)      # where the sinks are, how strong
result.save("out/")                                 # metrics.json, heads.csv, plots, report.html
"""

from sinklab.errors import SinklabInputError
from sinklab.measure import Observer, ScanResult, scan
from sinklab.measure.probes import ExplainResult, explain
from sinklab.models import load

__version__ = "0.1.0"
__all__ = ["ExplainResult", "Observer", "ScanResult", "SinklabInputError", "explain", "load", "scan"]
