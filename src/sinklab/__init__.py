"""sinklab: attention sinks in Transformers. Measure them, use them, remove them.

model, tokenizer = sinklab.load("smollm2-135m")
result = sinklab.scan(model, tokenizer, texts)      # where the sinks are, how strong
result.save("out/")                                 # metrics.json, heads.csv, plots, report.html
vit, processor = sinklab.load("path/to/dinov2")     # an image encoder: [CLS]/register sinks, high-norm patches
sinklab.scan(vit, processor, images="photos/")      # (images=None: matplotlib's sample images)

The names below are imported on first use (PEP 562), so ``import sinklab.errors`` or the CLI's start-up does not
load torch and transformers before it needs them.
"""

import importlib

from sinklab.errors import SinklabInputError

__version__ = "0.3.0"
_LAZY = {
    "ExplainResult": "sinklab.measure.probes",
    "Observer": "sinklab.measure",
    "ScanResult": "sinklab.measure",
    "explain": "sinklab.measure.probes",
    "load": "sinklab.models",
    "scan": "sinklab.measure",
    "scan_images": "sinklab.measure.vision",
}
__all__ = ["ExplainResult", "Observer", "ScanResult", "SinklabInputError", "explain", "load", "scan", "scan_images"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sinklab' has no attribute {name!r}")
