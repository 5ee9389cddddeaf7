"""One ``AttentionSite`` per attention module: the single door every sinklab method uses to reach a model.

``sites(model)`` returns the model's ``ModelSites`` (created once, kept on the model). Methods attach through it:
they add hooks under stable names (TransformerLens style), request statistics, or set the attention variant. On the
first attach ONE attention function is registered with transformers' ``AttentionInterface`` together with ONE mask
entry in ``AttentionMaskInterface`` (transformers' own ``sdpa_mask``: without a mask entry causal masking silently
disappears), under a name private to this model; when the last method detaches both are removed and the model's
previous attention implementation is restored.

Stable hook names, ``i`` the block index (``fn`` returns a replacement or None to keep the value):

    layers.{i}.attn.qkv      fn((q, k, v), call) -> (q, k, v)   post-RoPE q [B, H, T, D], k/v [B, Hkv, S, D]
    layers.{i}.attn.compute  fn(call) -> out [B, H, T, D]       replaces the attention computation (one owner)
    layers.{i}.attn.logits   fn(scores, call) -> scores         [B, H, R, K] logit blocks (call.rows, call.keys)
    layers.{i}.attn.weights  fn(weights, call) -> weights       [B, H, R, K] weight blocks holding whole rows
    layers.{i}.attn.stats    fn(stats, call)                    the AttentionStats of the call (see request)
    layers.{i}.attn.out      fn(out, call) -> out               [B, H, T, D] before the output projection
    layers.{i}.attn_block    fn(out, call) -> out               output of the whole attention module
    layers.{i}.mlp_in        fn(hidden, call) -> hidden         [B, T, d] input of the MLP
    layers.{i}.mlp           fn(out, call) -> out               output of the MLP
    layers.{i}.resid_post    fn(hidden, call) -> hidden         [B, T, d] output of the block

Every keyword transformers passes to the attention function is honoured (``scaling``, ``sliding_window``,
``is_causal``, ``softcap`` of Gemma-2, ``s_aux`` sink logits of gpt-oss) or refused with an error naming it: an
observed or identity-patched model computes what it computed before. Attention dropout in training mode is
applied to the weights, as eager attention does (it runs the chunked path).
"""

from __future__ import annotations

import math
import weakref
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn

from sinklab.errors import MethodConflict, SinklabInputError
from sinklab.hf.arch import AttentionInfo, ModelView
from sinklab.ops import attention as ops_attention
from sinklab.ops.masks import MaskSpec
from sinklab.ops.stats import StatsRequest

ATTN_HOOKS = ("qkv", "compute", "logits", "weights", "stats", "out")
BLOCK_HOOKS = ("attn_block", "mlp_in", "mlp", "resid_post")
# keywords transformers passes that do not change the attention math
IGNORED_KWARGS = frozenset(
    {
        "position_ids", "use_cache", "cache_position", "output_router_logits", "deterministic", "output_attentions",
        "output_hidden_states",  # transformers >= 5.2x passes the model's output flags on to attention
    }
)  # fmt: skip


@dataclass
class AttentionCall:
    """What a hook knows about the attention call it sees (also for block hooks: then only ``layer`` and
    ``key_padding`` are set). ``rows``/``keys``: the query rows and key range of a logit or weight block."""

    layer: int
    causal: bool = True
    window: int | None = None
    key_padding: torch.Tensor | None = None  # [B, S] bool, True = real token; None = no padding
    attn_mask: torch.Tensor | None = None  # a mask that is not causal/window & padding, passed on as it is
    scale: float = 1.0
    softcap: float | None = None
    dropout: float = 0.0  # attention dropout on the weights (training mode only)
    sinks: torch.Tensor | None = None  # [H] the model's own sink logits (gpt-oss ``s_aux``)
    query: torch.Tensor | None = None
    key: torch.Tensor | None = None
    value: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # [B, T, d] the attention module's input
    cache: object | None = None  # the KV cache the module was given (attn_block hooks), or None
    site: AttentionSite | None = None
    rows: tuple[int, int] | None = None
    keys: tuple[int, int] | None = None

    def attend(self, **kw):
        """This call's attention through ``sinklab.ops.attention``: the site's variant (the model's own sink logits
        as the "sink" variant), the call's mask, scale, window and softcap, plus ``kw`` (``stats=``, edits, ``impl=``).
        Methods that need the attention computed again (a statistics pass first) call this too."""
        variant, params, _ = self.site.variant()
        if self.sinks is not None:  # gpt-oss: a learned sink logit per head, exactly the "sink" variant
            if variant != "softmax":
                raise SinklabInputError(
                    f"layer {self.layer} has its own sink logits (s_aux); variant {variant!r} cannot be combined "
                    "with them (accepted on such models: softmax, gated)"
                )
            variant, params = "sink", {"sink": self.sinks.to(self.query.dtype)}
        return ops_attention(
            self.query,
            self.key,
            self.value,
            variant=variant,
            causal=self.causal,
            attn_mask=self.attn_mask,
            key_padding=self.key_padding,
            scale=self.scale,
            window=self.window,
            softcap=self.softcap,
            **kw,
            **params,
        )


@dataclass
class Variant:
    """The attention variant a remove-method sets on a site: ``params(site)`` gives the ``sinklab.ops.attention``
    variant and its parameters; ``finish(out [B, H, T, D], call)`` acts after attention (gated attention)."""

    params: Callable[[AttentionSite], tuple[str, dict]]
    finish: Callable[[torch.Tensor, AttentionCall], torch.Tensor] | None = None


def split_mask(
    mask: torch.Tensor | None, T: int, S: int, causal: bool, window: int | None, device
) -> tuple[bool, int | None, torch.Tensor | None, torch.Tensor | None]:
    """transformers' mask -> (causal, window, key_padding [B, S] | None, attn_mask | None).

    A bool [B|1, 1, T, S] mask that is exactly the position rule (``sinklab.ops.masks``) and a key padding becomes
    flags plus the padding, so the fused kernels and the O(T) statistics take it; any other mask is passed on as
    ``attn_mask`` (it holds causality, windows and padding itself). None means the position rule alone; SDPA's
    top-left alignment when transformers skipped a causal mask with 1 < T != S."""
    if mask is None:
        if causal and 1 < T != S:
            return False, None, None, torch.ones(T, S, dtype=torch.bool, device=device).tril()
        return causal, window, None, None
    mask = mask[..., :S]
    if mask.dtype == torch.bool and mask.dim() == 4 and mask.shape[1] == 1 and tuple(mask.shape[-2:]) == (T, S):
        padding = mask.any(dim=-2)  # [B, 1, S]: a real key is seen by some query
        rule, _ = MaskSpec(T, S, causal, window, padding[:, :, None, :], None, mask.device).block(0, T, 0, S)
        if torch.equal(mask, rule.expand_as(mask)):
            padding = padding[:, 0]
            return causal, window, (None if bool(padding.all()) else padding), None
    return False, None, None, mask


class AttentionSite:
    """One attention module: its structure (``info``) and the hooks, statistics requests and variant methods put
    on it. Created by ``ModelSites``; call ``sites(model).attention[j]`` or ``sites(model).at(layer)``."""

    def __init__(self, sites: ModelSites, info: AttentionInfo):
        self.sites = sites
        self.info = info
        self.layer = info.layer
        self.name = f"layers.{info.layer}.attn"
        self.hidden: torch.Tensor | None = None
        self.cache = None

    def hooks(self, hook: str) -> list[Callable]:
        return self.sites.hooks(f"{self.name}.{hook}")

    def variant(self) -> tuple[str, dict, Variant | None]:
        spec = self.sites.variant
        if spec is None:
            return "softmax", {}, None
        variant, params = spec.params(self)
        return variant, params, spec

    def __call__(self, module, query, key, value, attention_mask, kwargs: dict) -> torch.Tensor:
        """The attention of this module: q [B, H, T, D], k/v [B, Hkv, S, D] -> out [B, T, H, D]."""
        kwargs = dict(kwargs)
        scale = kwargs.pop("scaling", None)
        scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
        dropout = float(kwargs.pop("dropout", 0.0) or 0.0)
        dropout = dropout if module.training else 0.0  # transformers passes 0 in eval mode; a module may not
        window = kwargs.pop("sliding_window", self.info.window) or None
        causal = kwargs.pop("is_causal", None)
        causal = self.info.causal if causal is None else bool(causal)
        softcap = kwargs.pop("softcap", None) or None
        sinks = kwargs.pop("s_aux", None)
        if kwargs.pop("encoder_hidden_states", None) is not None:
            raise SinklabInputError(f"{type(module).__name__} got encoder_hidden_states: cross-attention is not a site")
        unknown = sorted(k for k in kwargs if k not in IGNORED_KWARGS)
        if unknown:
            raise SinklabInputError(
                f"{type(module).__name__} passed attention keyword(s) {', '.join(unknown)} that sinklab does not "
                f"handle; it refuses rather than drop them (handled: scaling, dropout, sliding_window, is_causal, "
                f"softcap, s_aux, and {', '.join(sorted(IGNORED_KWARGS))})"
            )
        T, S = query.shape[2], key.shape[2]
        causal, window, padding, mask = split_mask(attention_mask, T, S, causal, window, query.device)
        query, key, value = _compute_dtype(query, key, value)
        hidden = self.hidden  # stashed by a torch pre-hook, which runs before accelerate moves the module's inputs
        hidden = hidden.to(query.device) if hidden is not None and hidden.device != query.device else hidden
        call = AttentionCall(
            self.layer, causal, window, padding, mask, scale, softcap, dropout, sinks, hidden=hidden, site=self
        )
        self.hidden = None
        if self.sites.padding is None or self.layer == self.sites.first_layer:
            self.sites.padding = padding
        for fn in self.hooks("qkv"):
            new = fn((query, key, value), call)
            if new is not None:
                query, key, value = new
        call.query, call.key, call.value = query, key, value
        call = _extend_keys(call, key.shape[2] - S, T)
        out = None
        for owner, fn in self.sites.owned(f"{self.name}.compute"):
            out = fn(call)
            if out is not None:
                self._check_bypassed(owner)
                break
        spec = self.sites.variant
        if out is None:
            out = self._attend(call)
        elif sinks is not None:
            raise SinklabInputError(
                f"layer {self.layer} has its own sink logits (s_aux); an attention override cannot take them"
            )
        for fn in self.hooks("out"):
            new = fn(out, call)
            out = out if new is None else new
        if spec is not None and spec.finish is not None:
            out = spec.finish(out, call)
        return out.transpose(1, 2).contiguous()  # [B, T, H, D]

    def _check_bypassed(self, owner: int) -> None:
        """An attention override skips the logit and weight edits and the statistics other methods asked for:
        refuse rather than drop them silently."""
        others = [
            h
            for h in ("logits", "weights", "stats")
            if any(o != owner for o, _ in self.sites.owned(f"{self.name}.{h}"))
        ]
        if self.sites.request(self.layer, skip=owner) is not None:
            others.append("statistics requests")
        if others:
            raise MethodConflict(
                f"layer {self.layer}: {type(self.sites.owners[owner]).__name__} replaces the attention computation, "
                f"so the {', '.join(others)} of other attached methods would not run; attach them separately"
            )

    def _attend(self, call: AttentionCall) -> torch.Tensor:
        request = self.sites.request(self.layer)
        logit_hooks, weight_hooks = self.hooks("logits"), self.hooks("weights")
        if call.dropout:  # as eager attention: dropout on the weights, after every edit (forces the chunked path)
            weight_hooks = [*weight_hooks, lambda w, ctx: nn.functional.dropout(w, call.dropout, training=True)]
        result = call.attend(
            stats=request,
            edit_logits=_chain(logit_hooks, call) if logit_hooks else None,
            edit_weights=_chain(weight_hooks, call) if weight_hooks else None,
        )
        if request is None:
            return result
        out, stats = result
        for fn in self.hooks("stats"):
            fn(stats, call)
        return out


def _chain(fns: list[Callable], call: AttentionCall) -> Callable:
    """Block hooks as one edit ``f(block, rows, keys)`` for ``sinklab.ops.attention``."""

    def edit(block: torch.Tensor, rows: tuple[int, int], keys: tuple[int, int]) -> torch.Tensor:
        ctx = replace(call, rows=rows, keys=keys)
        for fn in fns:
            new = fn(block, ctx)
            block = block if new is None else new
        return block

    return edit


def _extend_keys(call: AttentionCall, added: int, T: int) -> AttentionCall:
    """Keys a qkv hook prepended (prefix slots) are visible to every query."""
    if added <= 0:
        return call
    if call.window is None and call.attn_mask is None:
        if call.key_padding is not None:
            call.key_padding = torch.cat(
                [call.key_padding.new_ones(call.key_padding.shape[0], added), call.key_padding], 1
            )
        return call
    S = (call.attn_mask.shape[-1] if call.attn_mask is not None else None) or 0
    device = call.query.device if call.query is not None else None
    if call.attn_mask is None:
        S = call.key.shape[2] - added if call.key is not None else S
        keep = call.key_padding[:, None, None, :] if call.key_padding is not None else None
        rule, _ = MaskSpec(T, S, call.causal, call.window, keep, None, device).block(0, T, 0, S)
        mask = rule
    else:
        mask = call.attn_mask
    ones = torch.ones(*mask.shape[:-1], added, dtype=torch.bool, device=mask.device)
    call.attn_mask = torch.cat(
        [ones, mask.bool() if mask.dtype == torch.bool else mask > torch.finfo(mask.dtype).min], -1
    )
    call.causal, call.window, call.key_padding = False, None, None
    return call


def _compute_dtype(query, key, value):
    """Under autocast, cast q, k, v to the autocast dtype as autocast does for SDPA (transformers hands this function
    float32 tensors there); otherwise compute in v's dtype when q/k differ (CPU autocast promotes RoPE's q and k)."""
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        return query.to(dtype), key.to(dtype), value.to(dtype)
    if query.dtype != value.dtype or key.dtype != value.dtype:
        return query.to(value.dtype), key.to(value.dtype), value
    return query, key, value


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _replace_first(output, tensor):
    return (tensor, *output[1:]) if isinstance(output, tuple) else tensor


class ModelSites:
    """The attention sites and block hooks of one model, and the methods attached to them.

    ``attach(owner)`` / ``release(owner)`` bracket a method's life; ``add(owner, name, fn)`` a hook by stable name;
    ``ask(owner, request, layers)`` statistics; ``set_variant(owner, Variant)`` the attention variant (one owner)."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.view = ModelView(model)
        self.attention = [AttentionSite(self, info) for info in self.view.attention]
        self._by_module = {id(s.info.module): s for s in self.attention}
        self._by_layer = {s.layer: s for s in self.attention}
        self.first_layer = self.attention[0].layer if self.attention else 0
        self._hooks: dict[str, list[tuple[int, Callable]]] = defaultdict(list)
        # owners are told apart by identity (two equal dataclass configs are two methods): keys are id(owner)
        self._requests: dict[int, tuple[StatsRequest | Callable[[], StatsRequest], frozenset[int] | None]] = {}
        self.variant: Variant | None = None
        self.variant_owner: int | None = None
        self.owners: dict[int, object] = {}
        self.padding: torch.Tensor | None = None
        self._handles: list = []
        self._previous_impl = None
        self.name = f"sinklab_{id(self):x}"

    def at(self, layer: int) -> AttentionSite:
        if layer not in self._by_layer:
            raise SinklabInputError(f"block {layer} has no attention site; sites at {sorted(self._by_layer)}")
        return self._by_layer[layer]

    # -- owners ----------------------------------------------------------------------------------------------------
    def attach(self, owner: object) -> None:
        if id(owner) in self.owners:
            raise SinklabInputError(f"{type(owner).__name__} is already attached to this model")
        if not self.owners:
            self.view.require_attention()
            self._install()
        self.owners[id(owner)] = owner

    def release(self, owner: object) -> None:
        if self.owners.pop(id(owner), None) is None:
            return
        for name in list(self._hooks):
            self._hooks[name] = [(o, f) for o, f in self._hooks[name] if o != id(owner)]
            if not self._hooks[name]:
                del self._hooks[name]
        self._requests.pop(id(owner), None)
        if self.variant_owner == id(owner):
            self.variant, self.variant_owner = None, None
        if not self.owners:
            self._uninstall()

    def add(self, owner: object, name: str, fn: Callable) -> None:
        """Add hook ``fn`` under the stable ``name`` (see the module docstring) for ``owner``."""
        self.check_hook_name(name)
        self._hooks[name].append((id(owner), fn))

    def check_hook_name(self, name: str) -> None:
        """SinklabInputError unless ``name`` is a stable hook name of a block this model has."""
        parts = name.split(".")
        ok = len(parts) >= 3 and parts[0] == "layers" and parts[1].isdigit()
        hook = ".".join(parts[2:]) if ok else ""
        if not ok or (hook not in BLOCK_HOOKS and not (hook.startswith("attn.") and hook[5:] in ATTN_HOOKS)):
            accepted = ", ".join([f"attn.{h}" for h in ATTN_HOOKS] + list(BLOCK_HOOKS))
            raise SinklabInputError(f"unknown hook name {name!r}; accepted: layers.<i>.<{accepted}>")
        if int(parts[1]) >= self.view.num_layers:
            raise SinklabInputError(f"hook {name!r}: the model has {self.view.num_layers} blocks")

    def hooks(self, name: str) -> list[Callable]:
        return [f for _, f in self._hooks.get(name, ())]

    def owned(self, name: str) -> list[tuple[int, Callable]]:
        """(owner id, fn) of every hook under ``name``."""
        return list(self._hooks.get(name, ()))

    def ask(self, owner: object, request: StatsRequest | Callable[[], StatsRequest], layers=None) -> None:
        """Ask for ``request`` (or what a callable returns at each call) in every attention call of ``layers``
        (None: all) while ``owner`` is attached."""
        self._requests[id(owner)] = (request, None if layers is None else frozenset(layers))

    def request(self, layer: int, skip: int | None = None) -> StatsRequest | None:
        """The merged statistics request of every owner (but ``skip``, an owner id) for ``layer`` (None: nobody
        asks)."""
        merged = None
        for owner, (request, layers) in self._requests.items():
            if owner != skip and (layers is None or layer in layers):
                request = request() if callable(request) else request
                merged = request if merged is None else merged.merge(request)
        return merged

    def set_variant(self, owner: object, variant: Variant) -> None:
        if self.variant_owner not in (None, id(owner)):
            raise SinklabInputError("the model already has an attention variant; detach or unpatch it first")
        self.variant, self.variant_owner = variant, id(owner)

    # -- transformers and torch hooks ------------------------------------------------------------------------------
    def _entry(self, module, query, key, value, attention_mask, **kwargs):
        """The registered AttentionInterface function."""
        site = self._by_module.get(id(module))
        if site is None:
            raise SinklabInputError(f"{type(module).__name__} is not an attention site of this model")
        return site(module, query, key, value, attention_mask, kwargs), None

    def _install(self) -> None:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        sites_ref = weakref.ref(self)  # the global registry must not keep a dropped model alive

        def entry(module, query, key, value, attention_mask, **kwargs):
            return sites_ref()._entry(module, query, key, value, attention_mask, **kwargs)

        AttentionInterface.register(self.name, entry)
        AttentionMaskInterface.register(self.name, sdpa_mask)
        self._finalizer = weakref.finalize(self, _unregister, self.name)  # a model dropped while patched
        self._previous_impl = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.name)
        self._handles.append(self.model.register_forward_pre_hook(self._start, with_kwargs=True))
        for site in self.attention:
            self._handles.append(site.info.module.register_forward_pre_hook(self._stash(site), with_kwargs=True))
        for i, block in enumerate(self.view.blocks):
            self._handles.append(block.register_forward_hook(self._output_hook(i, "resid_post")))
            site = self._by_layer.get(i)
            if site is not None:
                self._handles.append(site.info.module.register_forward_hook(self._output_hook(i, "attn_block")))
            mlp = self.view.mlps[i]
            if mlp is not None:
                self._handles.append(mlp.register_forward_hook(self._output_hook(i, "mlp")))
                self._handles.append(mlp.register_forward_pre_hook(self._input_hook(i), with_kwargs=True))

    def _uninstall(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.model.set_attn_implementation(self._previous_impl)
        self._finalizer()
        self.padding = None

    def _start(self, module, args, kwargs):
        self.padding = None

    def _stash(self, site: AttentionSite):
        def hook(module, args, kwargs):
            site.hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            site.cache = kwargs.get("cache", kwargs.get("past_key_values"))

        return hook

    def _call(self, layer: int, like: torch.Tensor | None = None) -> AttentionCall:
        """A block hook's call; the padding (from the first layer) moved to ``like``'s device, which differs when a
        device_map splits the model."""
        site = self._by_layer.get(layer)
        padding = self.padding
        if padding is not None and like is not None and padding.device != like.device:
            padding = padding.to(like.device)
        return AttentionCall(layer, key_padding=padding, site=site, cache=None if site is None else site.cache)

    def _output_hook(self, layer: int, part: str):
        name = f"layers.{layer}.{part}"

        def hook(module, args, output):
            fns = self.hooks(name)
            if not fns:
                return None
            tensor = new = _first(output)
            for fn in fns:
                out = fn(new, self._call(layer, new))
                new = new if out is None else out
            return None if new is tensor else _replace_first(output, new)

        return hook

    def _input_hook(self, layer: int):
        name = f"layers.{layer}.mlp_in"

        def hook(module, args, kwargs):
            fns = self.hooks(name)
            if not fns:
                return None
            tensor = new = args[0] if args else kwargs["hidden_states"]
            for fn in fns:
                out = fn(new, self._call(layer, new))
                new = new if out is None else out
            if new is tensor:
                return None
            return ((new, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": new})

        return hook


def _unregister(name: str) -> None:
    """Remove the attention function and mask entry registered under ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface._global_mapping.pop(name, None)
    AttentionMaskInterface._global_mapping.pop(name, None)


def sites(model: nn.Module) -> ModelSites:
    """The ``ModelSites`` of ``model`` (built on first use and kept on the model)."""
    found = model.__dict__.get("_sinklab_sites")
    if found is None:
        found = ModelSites(model)
        model.__dict__["_sinklab_sites"] = found
    return found
