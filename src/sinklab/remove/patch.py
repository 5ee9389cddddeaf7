"""Turn any Hugging Face model's attention into a sink-free variant, and back.

``patch(model, variant)`` adds the variant's per-layer parameters to every self-attention module as real
``nn.Parameter``s with stable names (``<attn>.sinklab_sink`` [H], ``sinklab_k_bias`` / ``sinklab_v_bias`` [H, D],
``sinklab_bias`` [H], ``sinklab_gate`` an ``nn.Linear``), registers one attention function with transformers'
``AttentionInterface`` and its mask function with ``AttentionMaskInterface`` (transformers' ``sdpa_mask``: boolean,
causal/sliding-window/padding), switches the model to it and records everything in ``model.config.sinklab_variant``
so that ``save_pretrained`` keeps it. ``load_patched(path)`` (or ``patch(model)`` on a model from
``from_pretrained``) rebuilds the patch from the config and reads the saved parameters back, bit for bit.

``init="identity"`` leaves a pretrained model's outputs unchanged where the variant allows it:
- ``sink``: sink_h = -30 (the slot gets ~e^-30 of the mass; gradients to it start as small: for adaptation pass a
  less negative value, e.g. ``sink=-8.0``);
- ``kv_bias``: k_bias = v_bias = 0 and an extra learnable slot logit ``sink`` = -30 (a key bias alone cannot give
  the slot ~0 weight for every query);
- ``gated``: W_g = 0 and the constant c = 2, so c * sigmoid(0) = 1 exactly (see ``sinklab.remove.gate``);
- ``softmax1``, ``softpick``, ``clipped``, ``sigmoid`` change the attention weights by definition; they are applied
  as they are (``IDENTITY_VARIANTS`` lists the others).
``init="default"`` is for training from scratch: sink 0; k_bias ~ N(0, std), v_bias = 0, no slot logit;
W_g ~ N(0, std), c = 1 (std = ``config.initializer_range``). Keyword ``params`` set initial values of learnable
parameters (a float, or a tensor of the per-layer shape) and the fixed ones (``eps``; ``gamma``, ``zeta``); for
``sigmoid``, ``bias=<float>`` makes the bias a learnable per-head parameter (else it is -log S, not learned).

Attention dropout is not applied by the variants (training-time dropout on attention weights is ignored).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from sinklab.errors import SinklabInputError
from sinklab.ops import VARIANTS
from sinklab.ops import attention as ops_attention
from sinklab.ops.masks import causal_key_padding
from sinklab.remove.gate import apply_gate, make_gate

ATTN_NAME = "sinklab_variant"
CONFIG_KEY = "sinklab_variant"
PATCH_VARIANTS = (*VARIANTS, "gated")
IDENTITY_VARIANTS = ("softmax", "sink", "kv_bias", "gated")
INITS = ("identity", "default")
IDENTITY_LOGIT = -30.0
PREFIX = "sinklab_"


# -- finding attention modules --
def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Self-attention modules that call transformers' attention interface (Llama, Qwen2/3, Mistral, Gemma3, BERT)."""
    found = []
    for name, module in model.named_modules():
        if "Attention" not in type(module).__name__ or not hasattr(module, "scaling"):
            continue
        if getattr(module, "is_cross_attention", False):
            continue
        if hasattr(module, "q_proj") or hasattr(module, "query"):
            found.append((name, module))
    return found


def _shape(module: nn.Module) -> tuple[int, int, int]:
    """(H, D, d_model) of an attention module."""
    cfg = module.config
    H = cfg.num_attention_heads
    D = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None) or cfg.hidden_size // H
    return H, int(D), cfg.hidden_size


# -- the registered attention function --
def _attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface entry: ``sinklab.ops.attention`` with this module's variant; returns [B, T, H, D]."""
    T, S = query.shape[2], key.shape[2]
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    mask = attention_mask
    if mask is not None:
        causal, mask = _causal_split(attention_mask, T, S)
    elif causal and 1 < T != S:  # transformers skips the mask here only for SDPA's top-left causal alignment
        mask = torch.ones(T, S, dtype=torch.bool, device=query.device).tril()
        causal = False
    device_type = query.device.type
    if torch.is_autocast_enabled(device_type):
        # SDPA is on autocast's lower-precision list and this function is not: cast as autocast would, so the
        # half-precision kernels run (seen on an H200, transformers 5.17: q, k and v all arrived in float32)
        dtype = torch.get_autocast_dtype(device_type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    elif query.dtype != value.dtype or key.dtype != value.dtype:
        query, key = query.to(value.dtype), key.to(value.dtype)  # compute in v's dtype, as SDPA does
    variant, params = module_variant(module)
    out = ops_attention(query, key, value, variant=variant, causal=causal, attn_mask=mask, scale=scaling, **params)
    return finish_output(module, out.transpose(1, 2)).contiguous(), None


def _causal_split(attention_mask: torch.Tensor, T: int, S: int) -> tuple[bool, torch.Tensor | None]:
    """(causal, attn_mask) for transformers' mask: causal=True with the key padding alone (None when there is none)
    where the mask is exactly causal & padding (``sinklab.ops.masks.causal_key_padding``), so the fused kernels take
    it; else the mask itself, which already holds causality, windows, padding and cache offsets."""
    mask = attention_mask[..., :S]
    padding = causal_key_padding(mask, T, S)
    if padding is None:
        return False, mask
    return True, None if bool(padding.all()) else padding


def finish_output(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    """What a patched module does after attention, on out [B, T, H, D]: the gate of gated attention, else nothing.
    Shared with ``sinklab.measure.Observer``, which computes the attention itself."""
    state = module._sinklab
    if state["variant"] == "gated":
        out = apply_gate(out, module._sinklab_x, module.sinklab_gate, state["gate_scale"])
        module._sinklab_x = None
    return out


def module_variant(module: nn.Module) -> tuple[str, dict]:
    """(ops variant, its parameters) of a patched attention module: the ``sinklab.ops.attention`` call that gives its
    attention weights (for "gated" that is plain softmax; the gate acts on the output)."""
    state = module._sinklab
    params = dict(state["hparams"])
    params.update({n: getattr(module, PREFIX + n) for n in state["learnable"] if n != "gate"})
    return ("softmax" if state["variant"] == "gated" else state["variant"]), params


def _stash_input(module, args, kwargs):
    """Forward pre-hook: keep the attention input X (after the input norm) for the gate."""
    module._sinklab_x = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTN_NAME, _attention)
    AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)


# -- parameters --
def _record(variant: str, init: str, headwise: bool, params: dict, std: float) -> dict:
    """Validate patch() arguments and return the config record (JSON-able)."""
    if variant not in PATCH_VARIANTS:
        raise SinklabInputError(f"unknown variant {variant!r}; accepted: {', '.join(PATCH_VARIANTS)}")
    if init not in INITS:
        raise SinklabInputError(f"unknown init {init!r}; accepted: {', '.join(INITS)}")
    if headwise and variant != "gated":
        raise SinklabInputError(f"headwise=True applies to variant 'gated' only, not {variant!r}")
    spec = VARIANTS.get(variant, {})
    for name in params:
        if name not in spec:
            accepted = ", ".join(spec) or "none"
            raise SinklabInputError(f"variant {variant!r} got unknown parameter {name!r}; accepted: {accepted}")
    identity = init == "identity"
    learnable = {
        "softmax": [],
        "softmax1": [],
        "sink": ["sink"],
        "kv_bias": ["k_bias", "v_bias", "sink"] if identity or "sink" in params else ["k_bias", "v_bias"],
        "softpick": [],
        "clipped": [],
        "sigmoid": ["bias"] if "bias" in params else [],
        "gated": ["gate"],
    }[variant]
    hparams = {}
    for name, p in spec.items():
        if not p.learnable:
            value = params.get(name, p.default)
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise SinklabInputError(f"{variant} parameter {name!r} must be a finite float, got {value!r}")
            hparams[name] = float(value)
    if variant == "clipped" and not (hparams["gamma"] < 0 and hparams["zeta"] >= 1):
        raise SinklabInputError(f"clipped softmax needs gamma < 0 and zeta >= 1; got {hparams}")
    if variant == "softpick" and hparams["eps"] <= 0:
        raise SinklabInputError(f"softpick eps must be > 0, got {hparams['eps']}")
    return {
        "variant": variant,
        "init": init,
        "headwise": bool(headwise),
        "learnable": learnable,
        "hparams": hparams,
        "gate_scale": 2.0 if identity else 1.0,
        "init_std": std,
    }


def _initial(name: str, shape: tuple[int, ...], record: dict, given, like: torch.Tensor) -> torch.Tensor:
    """Initial value of learnable parameter ``name`` for one layer."""
    identity = record["init"] == "identity"
    if given is not None:
        if isinstance(given, torch.Tensor):
            if given.numel() != 1 and tuple(given.shape) != shape:
                raise SinklabInputError(
                    f"parameter {name!r} must be a float or a tensor of shape {list(shape)}, got {list(given.shape)}"
                )
            return given.detach().to(like.device, like.dtype).expand(shape).clone()
        if not isinstance(given, int | float) or not math.isfinite(given):
            raise SinklabInputError(f"parameter {name!r} must be a finite float or a tensor, got {given!r}")
        return torch.full(shape, float(given), device=like.device, dtype=like.dtype)
    if name == "sink":
        return torch.full(shape, IDENTITY_LOGIT if identity else 0.0, device=like.device, dtype=like.dtype)
    x = torch.zeros(shape, device=like.device, dtype=like.dtype)
    if name == "k_bias" and not identity:
        x.normal_(0.0, record["init_std"])
    return x


def _install(model: nn.Module, record: dict, params: dict) -> None:
    modules = attention_modules(model)
    if not modules:
        raise SinklabInputError(
            f"{type(model).__name__} has no attention module using transformers' AttentionInterface; "
            "accepted: Llama, Qwen2/3, Mistral, Gemma3 decoders and BERT encoders"
        )
    handles = []
    for _, module in modules:
        H, D, hidden = _shape(module)
        like = next(module.parameters())
        for name in record["learnable"]:
            if name == "gate":
                gate = make_gate(
                    hidden, H, D, headwise=record["headwise"], identity=record["init"] == "identity",
                    std=record["init_std"], like=like,
                )  # fmt: skip
                module.add_module(PREFIX + "gate", gate)
                handles.append(module.register_forward_pre_hook(_stash_input, with_kwargs=True))
            else:
                shape = (H, D) if name in ("k_bias", "v_bias") else (H,)
                value = _initial(name, shape, record, params.get(name), like)
                module.register_parameter(PREFIX + name, nn.Parameter(value))
        module._sinklab = record
    model._sinklab_handles = handles


# -- public API --
def patch(model: nn.Module, variant: str | None = None, *, init: str = "identity", headwise: bool = False, **params):
    """Make ``model``'s attention ``variant`` (any ``sinklab.ops`` variant or "gated"); returns the model.

    Without ``variant``, restore the patch recorded in ``model.config.sinklab_variant`` (after ``from_pretrained``),
    reading its parameters from the checkpoint in ``model.name_or_path`` when there is one.
    """
    cfg = model.config
    restore = variant is None
    if restore:
        record = getattr(cfg, CONFIG_KEY, None)
        if not record:
            raise SinklabInputError(
                f"model config has no {CONFIG_KEY!r} to restore; pass a variant: {', '.join(PATCH_VARIANTS)}"
            )
        record = dict(record)
    else:
        std = float(getattr(cfg, "initializer_range", 0.02))
        record = _record(variant, init, headwise, params, std)
    if getattr(model, "_sinklab_prev_attn", None) is not None:
        unpatch(model)
    _register()
    _install(model, record, {} if restore else params)
    model._sinklab_prev_attn = cfg._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    setattr(cfg, CONFIG_KEY, record)
    if restore:
        _load_saved(model, getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", ""))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove what ``patch`` added (parameters, hooks, config record) and restore the attention implementation."""
    prev = getattr(model, "_sinklab_prev_attn", None)
    if prev is None:
        raise SinklabInputError("model is not patched by sinklab.remove.patch; nothing to unpatch")
    for handle in model._sinklab_handles:
        handle.remove()
    for _, module in attention_modules(model):
        for name in [n for n, _ in module.named_parameters(recurse=False) if n.startswith(PREFIX)]:
            delattr(module, name)
        if hasattr(module, PREFIX + "gate"):
            delattr(module, PREFIX + "gate")
        for attr in ("_sinklab", "_sinklab_x"):
            if hasattr(module, attr):
                delattr(module, attr)
    del model._sinklab_handles, model._sinklab_prev_attn
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
    model.set_attn_implementation(prev)
    return model


def _load_saved(model: nn.Module, path: str) -> None:
    """Copy the saved ``sinklab_*`` tensors of the checkpoint directory ``path`` into the patched model."""
    from safetensors import safe_open

    folder = Path(path) if path else None
    if folder is None or not folder.is_dir():
        return
    index = folder / "model.safetensors.index.json"
    files = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else []
    files = [folder / f for f in files] or sorted(folder.glob("*.safetensors"))
    saved = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            saved.update({k: f.get_tensor(k) for k in f.keys() if PREFIX in k})  # noqa: SIM118
    if not saved:
        return
    prefix = getattr(model, "base_model_prefix", "")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if PREFIX not in name:
                continue
            for key in (name, name.removeprefix(prefix + "."), f"{prefix}.{name}"):
                if key in saved:
                    p.copy_(saved[key].to(p.dtype))
                    break
            else:
                raise SinklabInputError(f"checkpoint {path} has no tensor for {name}; was it saved after patch()?")


def load_patched(path: str | Path, model_class=None, **kwargs) -> nn.Module:
    """``from_pretrained`` a checkpoint saved from a patched model and restore the patch, parameters included.

    ``model_class`` defaults to ``AutoModelForCausalLM`` (``AutoModel`` for encoders); ``kwargs`` go to
    ``from_pretrained``.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    from transformers.utils import logging

    config = AutoConfig.from_pretrained(path)
    if not getattr(config, CONFIG_KEY, None):
        raise SinklabInputError(f"{path} was not saved from a sinklab-patched model (no {CONFIG_KEY!r} in config.json)")
    if model_class is None:
        model_class = AutoModel if getattr(config, "model_type", "") == "bert" else AutoModelForCausalLM
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the sinklab_* tensors are "unexpected" until patch() re-creates them
    try:
        model = model_class.from_pretrained(path, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    return patch(model)
