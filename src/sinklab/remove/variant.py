"""Turn any Hugging Face model's attention into a sink-free variant, and back: the ``VariantPatch`` method.

``patch(model, variant)`` attaches a ``VariantPatch`` to the model's attention sites (``sinklab.hf``) for good: it
adds the variant's learnable parameters to every attention module as real ``nn.Parameter``s with stable names
(``<attn>.sinklab_<param>``, e.g. ``sinklab_sink`` [H], ``sinklab_k_bias`` [H, D], ``sinklab_gate`` an
``nn.Linear``), sets the site's variant (the sites compute it through ``sinklab.ops.attention``, so observing a
patched model measures its own weights), and records everything in ``model.config.sinklab_variant`` so that
``save_pretrained`` keeps it. ``load_patched(path)`` (or ``patch(model)`` on a model from ``from_pretrained``)
rebuilds the patch from the config and reads the saved parameters back, bit for bit.

The variants and their parameters are the ``sinklab.ops.variants`` objects (one file each, with their identity
and default initial values) plus "gated" (Qiu et al. 2025, an output edit: ``sinklab.remove.gate``).
``init="identity"`` leaves a pretrained model's outputs unchanged where the variant allows it (``sink``: logit -30;
``kv_bias``: zero key/value bias with a slot logit -30; ``gated``: W_g = 0 with c = 2); ``softmax1``, ``softpick``,
``clipped`` and ``sigmoid`` change the weights by definition and are applied as they are. ``init="default"`` is
for training from scratch. Keyword ``params`` set initial values of learnable parameters (a float, or a tensor of
the per-layer shape) and the fixed ones (``eps``; ``gamma``, ``zeta``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from sinklab.errors import SinklabInputError
from sinklab.hf import AttentionCall, AttentionSite, ModelSites, Variant
from sinklab.method import Method
from sinklab.ops.variants import VARIANTS, get_variant
from sinklab.remove.gate import apply_gate, make_gate

CONFIG_KEY = "sinklab_variant"
INITS = ("identity", "default")
PREFIX = "sinklab_"
ENCODER_TYPES = ("bert", "roberta", "modernbert")  # load_patched builds these with AutoModel


def patch_variants() -> tuple[str, ...]:
    """Every variant ``patch`` takes: the registered ``sinklab.ops`` variants and "gated"."""
    return (*VARIANTS, "gated")


def identity_variants() -> tuple[str, ...]:
    """Variants whose ``init="identity"`` leaves the model's outputs unchanged: plain softmax, and those whose every
    learnable parameter has an identity value (sink logit -30, zero key/value bias with slot logit -30, ...)."""
    names = []
    for name, v in VARIANTS.items():
        learnable = [p for p in v.params.values() if p.learnable]
        if v.family == "softmax" or (learnable and all(p.identity is not None for p in learnable)):
            names.append(name)
    return (*names, "gated")


@dataclass
class VariantPatch(Method):
    """Make a model's attention ``variant`` while attached (``patch`` attaches it for good)."""

    kind = "remove"
    name = "variant"

    variant: str = "softmax"
    init: str = "identity"
    headwise: bool = False
    params: dict = field(default_factory=dict)
    record: dict | None = None  # a config record to restore (``patch(model)``), instead of the fields above

    def __post_init__(self):
        if self.record is None:
            self.record = _record(self.variant, self.init, self.headwise, self.params)
        self.variant = self.record["variant"]

    def install(self, model_sites: ModelSites) -> None:
        record = self.record
        std = float(getattr(model_sites.view.config, "initializer_range", 0.02))
        for site in model_sites.attention:
            info, module = site.info, site.info.module
            like = next(module.parameters())
            for name in record["learnable"]:
                if name == "gate":
                    gate = make_gate(
                        info.hidden_size, info.num_heads, info.head_dim, headwise=record["headwise"],
                        identity=record["init"] == "identity", std=std, like=like,
                    )  # fmt: skip
                    module.add_module(PREFIX + "gate", gate)
                else:
                    shape = _shape(record["variant"], name, info.num_heads, info.head_dim)
                    value = _initial(record, name, shape, self.params.get(name), std, like)
                    module.register_parameter(PREFIX + name, nn.Parameter(value))
        finish = self._gate if record["variant"] == "gated" else None
        model_sites.set_variant(self, Variant(params=self._site_params, finish=finish))

    def uninstall(self, model_sites: ModelSites) -> None:
        for site in model_sites.attention:
            module = site.info.module
            for name in [n for n, _ in module.named_parameters(recurse=False) if n.startswith(PREFIX)]:
                delattr(module, name)
            if hasattr(module, PREFIX + "gate"):
                delattr(module, PREFIX + "gate")

    def _site_params(self, site: AttentionSite) -> tuple[str, dict]:
        """The ``sinklab.ops.attention`` variant and parameters of one site ("gated" attends with softmax)."""
        record = self.record
        params = dict(record["hparams"])
        module = site.info.module
        params.update({n: getattr(module, PREFIX + n) for n in record["learnable"] if n != "gate"})
        return ("softmax" if record["variant"] == "gated" else record["variant"]), params

    def _gate(self, out: torch.Tensor, call: AttentionCall) -> torch.Tensor:
        module = call.site.info.module
        gated = apply_gate(
            out.transpose(1, 2), call.hidden, getattr(module, PREFIX + "gate"), self.record["gate_scale"]
        )
        return gated.transpose(1, 2)


def _shape(variant: str, name: str, H: int, D: int) -> tuple[int, ...]:
    return tuple({"H": H, "D": D}[d] for d in get_variant(variant).params[name].shape)


def _record(variant: str, init: str, headwise: bool, params: dict) -> dict:
    """Validate patch() arguments and return the config record (JSON-able)."""
    if variant not in patch_variants():
        raise SinklabInputError(f"unknown variant {variant!r}; accepted: {', '.join(patch_variants())}")
    if init not in INITS:
        raise SinklabInputError(f"unknown init {init!r}; accepted: {', '.join(INITS)}")
    if headwise and variant != "gated":
        raise SinklabInputError(f"headwise=True applies to variant 'gated' only, not {variant!r}")
    identity = init == "identity"
    if variant == "gated":
        if params:
            raise SinklabInputError(f"variant 'gated' takes no parameters, got {', '.join(params)}")
        return {"variant": "gated", "init": init, "headwise": bool(headwise), "learnable": ["gate"], "hparams": {},
                "gate_scale": 2.0 if identity else 1.0}  # fmt: skip
    spec = get_variant(variant)
    for name in params:
        if name not in spec.params:
            accepted = ", ".join(spec.params) or "none"
            raise SinklabInputError(f"variant {variant!r} got unknown parameter {name!r}; accepted: {accepted}")
    learnable, hparams = [], {}
    for name, p in spec.params.items():
        if p.learnable:
            start = p.identity if identity else p.init
            if name in params or start is not None:
                learnable.append(name)
            continue
        value = params.get(name, p.default)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise SinklabInputError(f"{variant} parameter {name!r} must be a finite float, got {value!r}")
        hparams[name] = float(value)
    spec.check(hparams)
    return {"variant": variant, "init": init, "headwise": False, "learnable": learnable, "hparams": hparams,
            "gate_scale": 1.0}  # fmt: skip


def _initial(record: dict, name: str, shape: tuple[int, ...], given, std: float, like: torch.Tensor) -> torch.Tensor:
    """Initial value of learnable parameter ``name`` for one layer: the given one, else the variant's init."""
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
    p = get_variant(record["variant"]).params[name]
    start = p.identity if record["init"] == "identity" else p.init
    if start == "normal":
        return torch.zeros(shape, device=like.device, dtype=like.dtype).normal_(0.0, std)
    return torch.full(shape, float(start), device=like.device, dtype=like.dtype)


# -- public API --
def patch(model: nn.Module, variant: str | None = None, *, init: str = "identity", headwise: bool = False, **params):
    """Make ``model``'s attention ``variant`` (any ``sinklab.ops`` variant or "gated") for good; returns the model.

    Without ``variant``, restore the patch recorded in ``model.config.sinklab_variant`` (after ``from_pretrained``),
    reading its parameters from the checkpoint in ``model.name_or_path`` when there is one.
    """
    restore = variant is None
    if restore:
        record = getattr(model.config, CONFIG_KEY, None)
        if not record:
            raise SinklabInputError(
                f"model config has no {CONFIG_KEY!r} to restore; pass a variant: {', '.join(patch_variants())}"
            )
        method = VariantPatch(record=dict(record))
    else:
        method = VariantPatch(variant, init, headwise, params)
    if model.__dict__.get("_sinklab_patch") is not None:
        unpatch(model)
    method.apply(model)
    model.__dict__["_sinklab_patch"] = method
    setattr(model.config, CONFIG_KEY, method.record)
    if restore:
        _load_saved(model, getattr(model, "name_or_path", "") or getattr(model.config, "_name_or_path", ""))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove what ``patch`` added (parameters, the variant, the config record)."""
    method = model.__dict__.pop("_sinklab_patch", None)
    if method is None:
        raise SinklabInputError("model is not patched by sinklab.remove.patch; nothing to unpatch")
    method.detach()
    if hasattr(model.config, CONFIG_KEY):
        delattr(model.config, CONFIG_KEY)
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
        is_encoder = not getattr(config, "is_decoder", False) and getattr(config, "model_type", "") in ENCODER_TYPES
        model_class = AutoModel if is_encoder else AutoModelForCausalLM
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the sinklab_* tensors are "unexpected" until patch() re-creates them
    try:
        model = model_class.from_pretrained(path, **kwargs)
    finally:
        logging.set_verbosity(verbosity)
    return patch(model)
