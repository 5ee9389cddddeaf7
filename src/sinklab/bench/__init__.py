"""``sinklab bench``: one versioned protocol, every metric from the measure code, models x methods x factorials.

>>> from sinklab.bench import make_protocol, run_bench
>>> result = run_bench(["smollm2-135m"], "act,kv-quant", "sinks,kv4,w8a8", make_protocol(), "out/")
"""

from __future__ import annotations

from sinklab.bench.compare import compare_runs
from sinklab.bench.protocol import VERSION, Protocol, make_protocol, protocol_hash
from sinklab.bench.runner import run_bench

__all__ = ["VERSION", "Protocol", "compare_runs", "make_protocol", "protocol_hash", "run_bench"]
