"""Measure: the one observation mechanism (``Observer``), sink metrics, and ``scan``."""

from sinklab.measure.engine import AttentionContext, Observer, ResidualStats, find_layers
from sinklab.measure.scanner import ScanResult, scan

__all__ = ["AttentionContext", "Observer", "ResidualStats", "ScanResult", "find_layers", "scan"]
