"""The methods axis of ``sinklab bench``: which registered methods a row applies, and how each is measured.

Every method comes from ``sinklab.method.methods()`` (or, for prefix slots and adapted variants, the public API of
``sinklab.exploit.prefix`` / ``sinklab.remove.adapt``). Methods fall in four roles:

- ``model``: it changes the model's forward (ACT, ZeroTuning, prefix slots, an adapted variant): the row runs the
  whole metric suite with it attached;
- ``evaluator``: it *is* one of the protocol's evaluations (``kv-quant`` = the int4-KV perplexity with its keep-first
  keys, ``stream-attention`` = the sinks + window streaming perplexity): the row reports that number with the
  method's settings;
- ``press``: an eviction press acts on a decoding cache, so a parallel forward would not see it: the row decodes
  ``press_tokens`` tokens through it (``sinklab.exploit.stream.stream_nll``);
- ``measure``: observers (``observe``, ``sink_features``) are not treatments and get no row.

A factorial design crosses factors (``sinks``: window-only vs sinks + window streaming cache; ``kv4``: int4 KV with
the first ``keep_first`` keys exact; ``w8a8``; ``act``; ``prefix``: untrained slots, or ``prefix=FILE`` trained
ones) and measures each cell's perplexity once; a run may hold several designs.
"""

from __future__ import annotations

import itertools
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from sinklab.errors import SinklabInputError

ROLES = {
    "act": "model",
    "zerotuning": "model",
    "prefix": "model",
    "variant": "model",
    "kv-quant": "evaluator",
    "stream-attention": "evaluator",
    "knorm": "press",
    "h2o": "press",
    "observe": "measure",
    "sink_features": "measure",
}
# methods whose edits act on ``attn.weights``: StreamAttention attends by itself and does not run those hooks, so
# their streaming perplexity would silently be the plain model's
NOT_IN_STREAM = ("act", "zerotuning")
FACTORS = ("sinks", "kv4", "w8a8", "act", "prefix")
DEFAULT_METHODS = ("act", "zerotuning", "prefix", "kv-quant", "stream-attention", "knorm", "h2o")
DEFAULT_FACTORIAL = ("sinks", "kv4", "w8a8")


@dataclass(frozen=True)
class MethodSpec:
    """One entry of ``--methods``: a registered method name, or ``adapted=PATH`` / ``prefix=PATH`` (a file)."""

    name: str
    path: str | None = None

    @property
    def label(self) -> str:
        return self.name if self.path is None else f"{self.name}={self.path}"

    @property
    def role(self) -> str:
        return "model" if self.name == "adapted" else ROLES[self.name]


def available() -> dict[str, str]:
    """Every method the bench can apply (registered ones, the prefix slots if present) -> its role."""
    from sinklab.method import methods

    found = {name: ROLES.get(name, "model") for name in methods()}
    if "prefix-kv" in found:  # registered by the prefix module: the bench calls it "prefix"
        found.pop("prefix-kv")
        found["prefix"] = "model"
    elif _prefix_api() is not None:
        found["prefix"] = "model"
    return found


def _prefix_api():
    try:
        from sinklab.exploit import prefix
    except ImportError:  # pragma: no cover - the prefix package is optional
        return None
    return prefix if hasattr(prefix, "PrefixKV") else None


def _prefix_module():
    prefix = _prefix_api()
    if prefix is None:
        raise SinklabInputError("prefix slots are not available in this sinklab (sinklab.exploit.prefix.PrefixKV)")
    return prefix


def parse_methods(text: str | None) -> list[MethodSpec]:
    """``act,zerotuning,kv-quant,adapted=ckpt/`` -> specs; "none" alone means the plain model only."""
    if not text or text.strip() == "none":
        return []
    if text.strip() == "all":
        return [MethodSpec(n) for n in DEFAULT_METHODS if n in available()]
    known = available()
    specs = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        name, eq, path = item.partition("=")
        if name == "adapted" and eq and path:
            specs.append(MethodSpec("adapted", path))
            continue
        if name == "prefix" and eq and path:
            check_prefix_file(path)
            specs.append(MethodSpec("prefix", path))
            continue
        if name == "variant":
            raise SinklabInputError("a variant is benchmarked through its adapt checkpoint: --methods adapted=DIR")
        if name not in known or known[name] == "measure":
            usable = sorted(n for n, r in known.items() if r != "measure" and n != "variant")
            raise SinklabInputError(
                f"unknown --methods entry {item!r}; accepted: {', '.join(usable)}, adapted=DIR, prefix=FILE, all, none"
            )
        specs.append(MethodSpec(name))
    return specs


@dataclass(frozen=True)
class Design:
    """One ``--factorial``: 2 to 4 factors crossed 2^k; ``prefix``: the file of the prefix factor's slots (None: an
    untrained slot, ``make_prefix``)."""

    factors: tuple[str, ...]
    prefix: str | None = None

    @property
    def label(self) -> str:
        return ",".join(f"prefix={self.prefix}" if f == "prefix" and self.prefix else f for f in self.factors)


def parse_factorial(text: str | None) -> Design | None:
    """``sinks,kv4,w8a8`` (or ``kv4,w8a8,prefix=FILE``) -> the design; "none" -> no factorial."""
    if not text or text.strip() == "none":
        return None
    items = [s.strip() for s in text.split(",") if s.strip()]
    factors = tuple(s.partition("=")[0] for s in items)
    paths = [s.partition("=")[2] for s in items if s.startswith("prefix=")]
    bad = [f for f in factors if f not in FACTORS] + [s for s in items if "=" in s and not s.startswith("prefix=")]
    if bad or not 2 <= len(set(factors)) == len(factors) <= 4 or paths == [""]:
        raise SinklabInputError(
            f"--factorial takes 2 to 4 distinct factors of {', '.join(FACTORS)} (prefix=FILE for trained slots) "
            f"or none, got {text!r}"
        )
    if "sinks" in factors and "act" in factors:
        raise SinklabInputError(
            "--factorial cannot cross sinks with act: the streaming evaluator attends by itself and skips ACT's "
            "attention-weight edits; cross act with kv4, w8a8 or prefix instead"
        )
    if paths:
        check_prefix_file(paths[0])
    return Design(factors, paths[0] if paths else None)


def parse_designs(texts: str | list[str] | None) -> list[Design]:
    """Every ``--factorial`` given (a string or a list of them); two designs of one factor set are refused (their
    cells would carry the same labels)."""
    designs = [d for d in map(parse_factorial, [texts] if isinstance(texts, str | None) else texts) if d]
    seen = [frozenset(d.factors) for d in designs]
    if len(set(seen)) != len(seen):
        raise SinklabInputError("two --factorial designs cross the same factors; give each factor set once")
    return designs


def check_prefix_file(path: str) -> None:
    """Refuse a prefix file ``sinklab.exploit.prefix.load_prefix`` would refuse, before any model loads."""
    _prefix_module().load_prefix(path)


def cells(factors: tuple[str, ...]) -> list[dict[str, bool]]:
    """Every combination of the factors, the all-off cell first."""
    return [dict(zip(factors, levels, strict=True)) for levels in itertools.product((False, True), repeat=len(factors))]


def cell_label(cell: dict[str, bool]) -> str:
    """``factorial:-sinks+kv4-w8a8``: each factor with + (on) or - (off; for sinks: the window-only cache)."""
    return "factorial:" + "".join(("+" if on else "-") + f for f, on in cell.items())


def build(spec: MethodSpec, model, tokenizer, protocol):
    """The Method object of a model-role spec (attached by the caller), or None for an adapted checkpoint."""
    from sinklab.method import methods

    if spec.name == "prefix":
        return make_prefix(model, tokenizer, spec.path)
    if spec.name == "adapted":
        return None
    return methods()[spec.name]()


def make_prefix(model, tokenizer, path: str | None = None):
    """Prefix slots: loaded from ``path`` (``sinklab.exploit.prefix.load_prefix``) or, untrained, the model's own
    key/values of its BOS token (or its first special token, else token 0) shifted before position 0."""
    prefix = _prefix_module()
    if path is not None:
        return prefix.load_prefix(path)
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else (tokenizer.eos_token_id or 0)
    return prefix.PrefixKV.from_tokens(model, [start])


@contextmanager
def applied(model, methods_: list):
    """Attach ``methods_`` (Method objects, None skipped) for the block, detach them after, in reverse order."""
    with ExitStack() as stack:
        for method in methods_:
            if method is not None:
                stack.enter_context(method(model))
        yield
