"""The benchmark protocol: one versioned, hashed record of everything that decides a number.

A protocol fixes the corpus (by the sha256 of its texts), the lengths, Gu et al.'s eps, the dormant-head threshold,
the seeds, the dtype, the BOS rule and the streaming / int4-KV / passkey settings. ``protocol_hash`` is the sha256
(16 hex digits) of that record; every bench.json carries both, and ``--compare`` refuses two results whose hashes
differ.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sinklab.errors import SinklabInputError, check_fraction
from sinklab.measure.metrics import DORMANT_OUTPUT_RATIO

# 2: the dormant-head share and the no-op value-norm ratio; 3: Sink_1 thresholds every sequence alone (Gu et al.)
VERSION = "3"


@dataclass(frozen=True)
class Protocol:
    """What a benchmark run measures and on what.

    ``gu_length`` / ``gu_texts``: Gu et al.'s T=64 setting (Sink_1^eps, secondary sinks, massive activations,
    dormant heads: output norm under ``dormant_ratio`` typical values, ``measure.metrics.dormant_heads``);
    ``lengths``: the perplexity / streaming / quantization lengths of the plain model (``method_lengths`` of them
    for every method); ``num_texts`` sequences per length; ``window`` / ``num_sinks``: the streaming
    cache; ``kv_bits`` / ``kv_group`` / ``keep_first``: int4 KV with the first ``keep_first`` keys exact;
    ``passkey_tokens`` / ``passkey_depths``: the passkey prompts, retrieved through a ``SinkCache(num_sinks,
    window - num_sinks)``; ``press_tokens`` / ``press_chunk``: decoded perplexity of the eviction presses.
    """

    version: str = VERSION
    corpus: str = "embedded"
    corpus_sha256: str = ""
    gu_length: int = 64
    gu_texts: int = 8
    lengths: tuple[int, ...] = (512, 2048)
    method_lengths: tuple[int, ...] = (512,)
    num_texts: int = 1
    eps: float = 0.3
    dormant_ratio: float = DORMANT_OUTPUT_RATIO
    seeds: tuple[int, ...] = (0,)
    dtype: str = "float32"
    bos: str = "auto"
    window: int = 256
    num_sinks: int = 4
    kv_bits: int = 4
    kv_group: int | None = None  # None: quality's default, min(32, head dim)
    keep_first: int = 4
    passkey_tokens: int = 1024
    passkey_depths: tuple[float, ...] = (0.1, 0.5, 0.9, 0.98)
    press_tokens: int = 512
    press_chunk: int = 16
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        check_fraction("eps", self.eps)
        if not self.dormant_ratio > 0:
            raise SinklabInputError(f"the dormant-head output ratio must be > 0, got {self.dormant_ratio}")
        if self.bos not in ("auto", "always", "never"):
            raise SinklabInputError(f"unknown BOS rule {self.bos!r}; accepted: auto, always, never")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise SinklabInputError(f"unknown dtype {self.dtype!r}; accepted: float32, bfloat16, float16")
        sizes = (self.gu_length, *self.lengths, self.window, self.passkey_tokens, self.press_tokens)
        if not self.lengths or any(not isinstance(n, int) or n < 2 for n in sizes):
            raise SinklabInputError(f"lengths, window and task sizes must be integers >= 2, got {sizes}")
        counts = (self.num_texts, self.gu_texts, self.kv_group or 1, self.press_chunk)
        if any(not isinstance(n, int) or n < 1 for n in counts) or not self.seeds:
            raise SinklabInputError(f"texts, int4 group and press chunk must be integers >= 1, got {counts}")
        if not set(self.method_lengths) <= set(self.lengths):
            raise SinklabInputError(f"method lengths {self.method_lengths} must be among the lengths {self.lengths}")
        if not 0 <= self.num_sinks < self.window or self.keep_first < 0:
            raise SinklabInputError(f"need 0 <= sinks < window and keep_first >= 0, got {self.num_sinks}, "
                                    f"{self.window}, {self.keep_first}")  # fmt: skip
        if any(not 0.0 <= d <= 1.0 for d in self.passkey_depths):
            raise SinklabInputError(f"passkey depths must lie in [0, 1], got {self.passkey_depths}")

    def to_dict(self) -> dict:
        return {**asdict(self), "hash": protocol_hash(self)}

    @classmethod
    def from_dict(cls, data: dict) -> Protocol:
        fields = {k: v for k, v in data.items() if k != "hash"}
        for key in ("lengths", "method_lengths", "seeds", "passkey_depths"):
            if key in fields:
                fields[key] = tuple(fields[key])
        return cls(**fields)


def corpus_texts(corpus: str = "embedded") -> list[str]:
    """The texts of ``corpus``: "embedded" (sinklab's default corpus) or a text file / directory / .jsonl."""
    from sinklab.data import read_texts

    return read_texts(None if corpus == "embedded" else [corpus])


def make_protocol(corpus: str = "embedded", **settings) -> Protocol:
    """A protocol whose ``corpus_sha256`` is the hash of the corpus' texts (read now)."""
    from sinklab.provenance import digest

    return Protocol(corpus=corpus, corpus_sha256=digest(corpus_texts(corpus)), **settings)


def protocol_hash(protocol: Protocol) -> str:
    """sha256 (16 hex digits) of every protocol field: two results compare only when this matches."""
    from sinklab.provenance import digest

    return digest(asdict(protocol))
