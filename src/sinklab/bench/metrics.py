"""The metrics of ``sinklab bench``: each one is a call into the code that defines it, nothing is recomputed here.

- ``sinklab.measure.quality.quality``: ppl, W8A8 / int4-KV (with and without the first ``keep_first`` keys exact)
  perplexity, window-only and sinks + window streaming perplexity, max |x|, kurtosis, Sink_1^eps (Gu et al. 2024)
  and first-token mass, at each protocol length and at Gu's T=64; ``d_*`` keys are the differences to ``ppl``.
- ``sinklab.measure.scan``: secondary sinks (keys other than the first real token whose mean received mass passes
  the sink threshold), massive activations (Sun et al. 2024: |x| > 100 and 1000x the median), the per-layer
  first-token mass profile at T=64; for encoders also Sink_1, max |x| and kurtosis (their causal perplexity does
  not exist).
- ``sinklab explain``'s noop probe (``NoopProbe.measure`` on the baseline record of each Gu-setting sequence):
  the dormant-head share (``measure.metrics.dormant_heads``: alpha_1 > eps and an output shorter than
  ``dormant_ratio`` typical values; Guo et al. 2024, Sandoval-Segura et al. 2025) and the no-op value-norm ratio
  ||v_0|| / median_j ||v_j|| (``measure.metrics.value_norm_ratio``; Gu et al. 2024, Bondarenko et al. 2023).
- ``sinklab.data.tasks.passkey`` + ``sinklab.exploit.stream.answer`` through a ``SinkCache``: passkey retrieval with
  the needle inside the sinks + window cache and beyond it (StreamingLLM: sinks do not extend the context), and
  through a cache that holds the whole prompt.
- ``sinklab.exploit.stream.stream_nll``: decoded perplexity under an eviction press.
- cost: tokens/s of one plain forward with the row's methods attached, peak accelerator memory of that forward
  (CUDA only: ``torch.cuda.max_memory_allocated``; None on CPU), the 1-minute load average at that forward, and the
  KV bytes of the row's cache (``exploit.stream.kv_bytes`` / ``quantized_kv_bytes``). ``cost_conditions`` says on
  what machine state the timings were taken (a run on shared cores is marked so).
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext

import torch

from sinklab.errors import SinklabInputError

# timings and machine load: not part of the determinism contract
COST_KEYS = ("tokens_per_s", "peak_memory_bytes", "seconds", "load_average_1m")
CORE_NOTES = {
    "shared": "measured on cores shared with other jobs: not idle-machine numbers",
    "idle": "measured with no other job on the cores",
    "unknown": "machine load not declared (see the load averages)",
}


def sequences(tokenizer, protocol, length: int, num_texts: int | None = None) -> torch.Tensor:
    """[num_texts, length] token ids of the protocol's corpus cut by sinklab's rule (``data.token_sequences``)."""
    from sinklab.bench.protocol import corpus_texts
    from sinklab.data import token_sequences

    texts = corpus_texts(protocol.corpus)
    n = protocol.num_texts if num_texts is None else num_texts
    return torch.tensor(token_sequences(tokenizer, texts, length, n, protocol.bos, exact=True))


class Sequences:
    """``seqs(length)`` / ``seqs(length, n)``: the protocol's sequences for one tokenizer, each cut once."""

    def __init__(self, tokenizer, protocol):
        self.tokenizer, self.protocol, self._cut = tokenizer, protocol, {}

    def __call__(self, length: int, num_texts: int | None = None) -> torch.Tensor:
        key = (length, self.protocol.num_texts if num_texts is None else num_texts)
        if key not in self._cut:
            self._cut[key] = sequences(self.tokenizer, self.protocol, *key)
        return self._cut[key]


def _suffixed(values: dict, length: int) -> dict:
    return {f"{k}@{length}": v for k, v in values.items()}


def quality_metrics(model, ids: torch.Tensor, protocol, streaming: bool = True) -> dict:
    """Every ``quality`` metric of ``ids`` plus int4-KV with the first ``keep_first`` keys exact, keyed
    ``name@T``; ``d_<name>`` = that perplexity minus ``ppl``. ``streaming=False``: no streaming numbers (a method
    the streaming evaluator would not apply)."""
    from sinklab.measure.quality import PARTS, quality

    parts = PARTS if streaming else tuple(p for p in PARTS if p not in ("ppl_window", "ppl_sinks"))
    common = dict(eps=protocol.eps, window=protocol.window, num_sinks=protocol.num_sinks, kv_bits=protocol.kv_bits,
                  kv_group=protocol.kv_group)  # fmt: skip
    out = quality(model, ids, keep_first=0, parts=parts, **common)
    kept = quality(model, ids, keep_first=protocol.keep_first, parts=("ppl_kv4",), **common)
    out[f"ppl_kv4_keep{protocol.keep_first}"] = kept["ppl_kv4"]
    for key in [k for k in out if k.startswith("ppl_")]:
        out["d_" + key] = None if out[key] is None else out[key] - out["ppl"]  # None: quality says why
    if not streaming:
        out["ppl_window"] = out["ppl_sinks"] = None
    return _suffixed(out, ids.shape[1])


def gu_metrics(model, tokenizer, protocol, seqs: Sequences, causal: bool = True, prepends: bool = False) -> dict:
    """Gu et al.'s setting (T = ``gu_length``, ``gu_texts`` sequences): Sink_1^eps and first-token mass (from
    ``quality`` for decoders: keys a method prepends are not the first token), and from ``scan`` the secondary
    sinks, massive activations, per-layer first-token mass, max |x| and kurtosis. ``prepends``: a method prepends
    keys (prefix slots); ``scan`` would count them as the first token, so its numbers are left out."""
    from sinklab.measure import scan
    from sinklab.measure.quality import quality

    T = protocol.gu_length
    ids = seqs(T, protocol.gu_texts)
    out: dict = {}
    if causal:
        q = quality(model, ids, eps=protocol.eps, parts=("ppl",))
        out.update({k: q[k] for k in ("sink_rate", "first_token_mass", "prefix_mass") if k in q})
    if prepends:
        return _suffixed(out, T)
    out.update(noop_metrics(model, tokenizer, protocol, ids, causal))
    result = scan(model, tokenizer, ids, protocol.eps, max_tokens=T, num_texts=None, bos=protocol.bos,
                  keep_pattern=0, progress=False, batch_size=len(ids))  # fmt: skip
    first = 0  # sequences start at token 0 (BOS under auto for tokenizers that add one)
    out.update(
        secondary_sinks=sum(1 for s in result.sinks if s["position"] != first),
        secondary_sink_positions=[s["position"] for s in result.sinks if s["position"] != first][:8],
        massive_activations=len(result.massive_activations),
        first_token_mass_by_layer=[round(float(v), 6) for v in result.first_token_mass.nanmean(1)],
    )
    if not causal:
        out.update(sink_rate=result.sink_rate, first_token_mass=float(result.first_token_mass.nanmean()),
                   max_abs=float(result.layer_max_abs.max()), kurtosis=float(result.layer_kurtosis.max()))  # fmt: skip
    return _suffixed(out, T)


def noop_metrics(model, tokenizer, protocol, ids: torch.Tensor, causal: bool) -> dict:
    """The noop probe's per-(layer, head) measures on ``ids`` (one baseline pass per sequence, alpha_1 and norms
    averaged over them): ``dormant_share`` / ``dormant_heads`` = mean / count of ``measure.metrics.dormant_heads``;
    ``value_norm_ratio_by_layer`` = per layer the mean over heads of ``measure.metrics.value_norm_ratio``,
    ``value_norm_ratio`` its median over (layer, head), ``value_norm_ratio_sink_heads`` the median over the heads
    with alpha_1 > eps (None if there is none)."""
    from sinklab.measure import metrics
    from sinklab.measure.probes import NoopProbe
    from sinklab.measure.probes._common import has_lm_head, record
    from sinklab.measure.probes.context import ProbeContext
    from sinklab.measure.scanner import token_decoder

    seqs = ids.tolist()
    ctx = ProbeContext(model, tokenizer, seqs, [record(model, s, residual=False) for s in seqs], protocol.eps, causal,
                       has_lm_head(model), token_decoder(tokenizer))  # fmt: skip
    m = NoopProbe(protocol.dormant_ratio).measure(ctx)
    ratio, sink = m["value_ratio"], metrics.is_sink(m["alpha"], protocol.eps)  # [L, H]
    return {
        "dormant_share": float(m["dormant"].double().mean()),
        "dormant_heads": int(m["dormant"].sum()),
        "value_norm_ratio": float(ratio.median()),
        "value_norm_ratio_sink_heads": float(ratio[sink].median()) if sink.any() else None,
        "value_norm_ratio_by_layer": [round(float(v), 6) for v in ratio.mean(1)],
    }


def encoder_metrics(model, tokenizer, protocol, ids: torch.Tensor) -> dict:
    """An encoder on ``ids``: Sink_1^eps, first-token mass, max |x|, kurtosis, sinks (``scan``)."""
    from sinklab.measure import scan

    length = ids.shape[1]
    result = scan(model, tokenizer, ids, protocol.eps, max_tokens=length, num_texts=None, bos=protocol.bos,
                  keep_pattern=0, progress=False)  # fmt: skip
    return _suffixed(
        {
            "sink_rate": result.sink_rate,
            "first_token_mass": float(result.first_token_mass.nanmean()),
            "max_abs": float(result.layer_max_abs.max()),
            "kurtosis": float(result.layer_kurtosis.max()),
            "massive_activations": len(result.massive_activations),
            "secondary_sinks": sum(1 for s in result.sinks if s["position"] != 0),
        },
        length,
    )


def passkey_metrics(model, tokenizer, protocol) -> dict:
    """Greedy passkey retrieval (``data.tasks.passkey``, seeds x depths) through ``SinkCache(num_sinks, window)``:
    accuracy with the needle still in the cache and with it evicted; and through a cache that holds the whole
    prompt (``passkey_full``)."""
    from sinklab.data.tasks import passkey
    from sinklab.exploit.cache import SinkCache
    from sinklab.exploit.stream import answer

    inside, beyond, full = [], [], []
    for seed in protocol.seeds:
        for depth in protocol.passkey_depths:
            ex = passkey(tokenizer, protocol.passkey_tokens, depth=depth, seed=seed)
            got = answer(model, tokenizer, ex.prompt, SinkCache(protocol.num_sinks, protocol.window, model=model),
                         max_new_tokens=8)  # fmt: skip
            (inside if ex.in_window(protocol.num_sinks, protocol.window) else beyond).append(ex.correct(got))
            whole = SinkCache(protocol.num_sinks, ex.num_tokens + 16, model=model)
            full.append(ex.correct(answer(model, tokenizer, ex.prompt, whole, max_new_tokens=8)))
    share = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {
        "passkey_in_window": share(inside),
        "passkey_beyond_window": share(beyond),
        "passkey_full": share(full),
        "passkey_n": [len(inside), len(beyond), len(full)],
    }


def press_metrics(model, ids: torch.Tensor, press: str, protocol) -> dict:
    """Decoded perplexity of the first ``press_tokens`` tokens of ``ids`` under ``press`` (budget num_sinks +
    window, the sinks protected; chunks of ``press_chunk`` tokens: a press evicts once per chunk), beside dense
    decoding of the same tokens."""
    from sinklab.exploit.stream import kv_bytes, stream_nll

    piece = ids[:1, : protocol.press_tokens]
    T = piece.shape[1]
    run = lambda policy: stream_nll(model, piece, policy, protocol.num_sinks, protocol.window,  # noqa: E731
                                    chunk=protocol.press_chunk).ppl  # fmt: skip
    dense, pressed = run("dense"), run(press)
    return {f"ppl_dense_decode@{T}": dense, f"ppl_press@{T}": pressed, f"d_ppl_press@{T}": pressed - dense,
            "kv_cache_bytes": kv_bytes(model, min(T, protocol.num_sinks + protocol.window))}  # fmt: skip


def evaluator_metrics(model, ids: torch.Tensor, name: str, protocol) -> dict:
    """kv-quant: int4-KV perplexity with the first ``keep_first`` keys exact; stream-attention: perplexity with
    ``num_sinks`` sinks + ``window`` recent tokens (``quality``'s parts, which attach those very methods)."""
    from sinklab.exploit.stream import kv_bytes, quantized_kv_bytes
    from sinklab.measure.quality import quality

    T = ids.shape[1]
    common = dict(eps=protocol.eps, window=protocol.window, num_sinks=protocol.num_sinks, kv_bits=protocol.kv_bits,
                  kv_group=protocol.kv_group, keep_first=protocol.keep_first)  # fmt: skip
    base = quality(model, ids, parts=("ppl",), **common)["ppl"]
    if name == "kv-quant":
        ppl = quality(model, ids, parts=("ppl_kv4",), **common)["ppl_kv4"]
        nbytes = quantized_kv_bytes(model, T, protocol.kv_bits, protocol.keep_first, protocol.kv_group)
    else:
        ppl = quality(model, ids, parts=("ppl_sinks",), **common)["ppl_sinks"]
        nbytes = kv_bytes(model, min(T, protocol.num_sinks + protocol.window))
    return {f"ppl@{T}": ppl, f"d_ppl@{T}": ppl - base, "kv_cache_bytes": nbytes}


def cell_ppl(model, ids: torch.Tensor, cell: dict[str, bool], protocol, prefix=None) -> float:
    """Perplexity of one factorial cell, every factor applied in one exact parallel forward:

    ``sinks`` on/off = ``quality``'s sinks + window / window-only streaming part; ``kv4`` = int4 KV with the first
    ``keep_first`` keys exact (``QuantizedKVAttention``, or ``quality``'s own int4 part where nothing else streams);
    ``w8a8`` = ``remove.quant.W8A8(activations="tensor")``; ``act`` = ``ACT()``; ``prefix`` = the given slots."""
    from sinklab.bench.methods import applied
    from sinklab.exploit.cache.quant import QuantizedKVAttention
    from sinklab.exploit.redistribute.act import ACT
    from sinklab.measure.quality import quality
    from sinklab.remove.quant import W8A8

    attach = [prefix if cell.get("prefix") else None, ACT() if cell.get("act") else None]
    common = dict(eps=protocol.eps, window=protocol.window, num_sinks=protocol.num_sinks, kv_bits=protocol.kv_bits,
                  kv_group=protocol.kv_group, keep_first=protocol.keep_first)  # fmt: skip
    kv = QuantizedKVAttention(protocol.kv_bits, protocol.keep_first, protocol.kv_group) if cell.get("kv4") else None
    outer = nullcontext()
    if "sinks" in cell:
        part = "ppl_sinks" if cell["sinks"] else "ppl_window"
        attach.append(kv)
        if cell.get("w8a8"):
            outer = W8A8(model, activations="tensor")
    elif cell.get("w8a8"):
        part = "ppl_w8a8"
        attach.append(kv)
    elif cell.get("kv4"):
        part = "ppl_kv4"  # quality attaches the same QuantizedKVAttention itself
    else:
        part = "ppl"
    with applied(model, attach), outer:
        return quality(model, ids, parts=(part,), **common)[part]


def cost_metrics(model, ids: torch.Tensor) -> dict:
    """Seconds, tokens/s of one plain forward of ``ids`` with whatever is attached; peak CUDA memory of it; the
    1-minute load average just after it (other jobs on the cores slow it)."""
    device = next(model.parameters()).device
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(input_ids=ids.to(device), use_cache=False)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "tokens_per_s": ids.numel() / seconds,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if cuda else None,
        "load_average_1m": os.getloadavg()[0],
    }


def check_cores(cores: str) -> None:
    if cores not in CORE_NOTES:
        raise SinklabInputError(f"unknown --cores {cores!r}; accepted: {', '.join(CORE_NOTES)}")


def cost_conditions(cores: str, start_load: tuple[float, ...]) -> dict:
    """The machine state of a run's timings: ``cores`` as the caller declares it (``shared``: other jobs ran on the
    cores, so tokens/s is not an idle-machine number; ``idle``; ``unknown``), the CPU count, torch's threads, this
    process's nice level and the load averages (1, 5, 15 min) at the start and the end."""
    return {
        "cores": cores,
        "timings": CORE_NOTES[cores],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "nice": os.nice(0),
        "load_average_start": list(start_load),
        "load_average_end": list(os.getloadavg()),
    }
