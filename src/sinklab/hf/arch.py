"""``ModelView``: what sinklab needs to know about a Hugging Face model's structure, found in one place.

Duck typing covers the architectures transformers v5 writes in its usual style (Llama, Qwen2/3, Mistral, Phi-3,
OLMo-2, Gemma-2/3, gpt-oss, GPT-2, BERT, RoBERTa, ModernBERT): the transformer blocks are the ``ModuleList`` of
``num_hidden_layers`` modules named ``layers``/``layer``/``h`` (the text model's one in a composite config); a
block's attention is its submodule with ``is_causal`` that calls transformers' attention interface. Linear-attention
layers of hybrids (no softmax attention module in the block) get no attention entry.

Vision encoders (ViT, DeiT, DINOv2 with and without registers, CLIP and SigLIP vision towers) are the same blocks
over image tokens; ``vision_layout`` reads their token order from the embeddings module: the prefix tokens it
prepends (``PREFIX_TOKENS``: [CLS], DeiT's distillation token, DINOv2's registers), then one token per patch.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn

from sinklab.errors import SinklabInputError

BLOCK_LIST_NAMES = ("layers", "layer", "h")
ATTENTION_ATTRS = ("self_attn", "attention", "attn")
MLP_ATTRS = ("mlp", "feed_forward")  # a block's MLP in residual space (BERT's intermediate is not one)
# learned tokens a vision embeddings module puts before the patches, in sequence order: (parameter, label)
PREFIX_TOKENS = (
    ("cls_token", "[CLS]"),  # ViT, DeiT, DINOv2: [1, 1, d]
    ("class_embedding", "[CLS]"),  # CLIP: [d]
    ("distillation_token", "[DIST]"),  # DeiT: [1, 1, d]
    ("register_tokens", "[REG{}]"),  # DINOv2 with registers (Darcet et al. 2024): [1, R, d]
)
PATCH_ATTRS = ("patch_embeddings", "patch_embedding")


@dataclass
class AttentionInfo:
    """One softmax attention module. ``kind``: "full" or "sliding" (self-attention), "cross" (keys from another
    sequence); ``window`` in transformers' convention (query i sees key j iff i - W < j <= i, or |i - j| < W when not
    causal); ``inv_freq`` [D/2] the RoPE inverse frequencies of this layer, None without RoPE."""

    layer: int
    name: str
    module: nn.Module
    kind: str
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    causal: bool
    window: int | None
    inv_freq: torch.Tensor | None


@dataclass(frozen=True)
class VisionLayout:
    """The token sequence of a ViT-style image encoder (Dosovitskiy et al. 2021): ``prefix`` learned tokens
    ("[CLS]", "[DIST]", "[REG0]", ...) in sequence order, then one token per ``patch_size`` patch in raster order;
    ``image_size`` (height, width) is the configured input size."""

    prefix: tuple[str, ...]
    patch_size: tuple[int, int]
    image_size: tuple[int, int]
    num_channels: int

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch rows and columns of a height x width input."""
        return height // self.patch_size[0], width // self.patch_size[1]

    def labels(self, grid: tuple[int, int]) -> list[str]:
        """One label per token: the prefix labels, then ``patch row,col``."""
        return [*self.prefix, *(f"patch {r},{c}" for r in range(grid[0]) for c in range(grid[1]))]


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def is_vision_config(config) -> bool:
    """A config of an image encoder (patch size and image size, no vocabulary)."""
    return all(hasattr(config, a) for a in ("patch_size", "image_size")) and not hasattr(config, "vocab_size")


def vision_layout(model: nn.Module) -> VisionLayout | None:
    """The token layout of an image encoder, None for other models: the embeddings module (the one with a patch
    embedding) tells which ``PREFIX_TOKENS`` precede the patches and how many of each."""
    config = getattr(model, "config", None)
    if config is None or not is_vision_config(config):
        return None
    embeddings = next(
        (m for _, m in model.named_modules() if any(isinstance(getattr(m, a, None), nn.Module) for a in PATCH_ATTRS)),
        None,
    )
    if embeddings is None:
        return None
    prefix: list[str] = []
    for attr, label in PREFIX_TOKENS:
        param = getattr(embeddings, attr, None)
        if isinstance(param, torch.Tensor):
            n = param.numel() // param.shape[-1]
            prefix += [label.format(i) for i in range(n)] if "{}" in label else [label] * n
    return VisionLayout(
        tuple(prefix), _pair(config.patch_size), _pair(config.image_size), int(getattr(config, "num_channels", 3))
    )


def text_config(config):
    """The decoder/text config of a composite (vision-language) config, the config itself otherwise."""
    return config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config


def layer_types(config) -> list[str]:
    """Per-layer attention type ("full_attention", "sliding_attention", ...) of a text config."""
    config = text_config(config)
    types = getattr(config, "layer_types", None)
    if types is None:
        kind = "sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"
        types = [kind] * config.num_hidden_layers
    return list(types)


def _find_blocks(model: nn.Module, n: int) -> tuple[str, nn.ModuleList]:
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) == n and name.split(".")[-1] in BLOCK_LIST_NAMES
    ]
    if not found:
        raise SinklabInputError(
            f"cannot find the {n} transformer blocks of {type(model).__name__} (a ModuleList named "
            f"{'/'.join(BLOCK_LIST_NAMES)}); accepted: transformers decoders and encoders in the usual layout"
        )
    text = [f for f in found if "language_model" in f[0] or "text_model" in f[0]]
    return (text or found)[0]


def _is_attention(module: nn.Module) -> bool:
    return hasattr(module, "is_causal") and "Attention" in type(module).__name__


def _block_attention(block: nn.Module) -> tuple[str, nn.Module] | None:
    """The self-attention module of a block: a plain attribute, or the one attention-interface module inside it
    (BERT's ``attention.self``)."""
    for attr in ATTENTION_ATTRS:
        part = getattr(block, attr, None)
        if isinstance(part, nn.Module):
            if _is_attention(part) and not getattr(part, "is_cross_attention", False):
                return attr, part
            inner = [(f"{attr}.{n}", m) for n, m in part.named_modules() if n and _is_attention(m)]
            if inner:
                return inner[0]
    return None


def _rope_inv_freqs(model: nn.Module, types: list[str]) -> list[torch.Tensor | None]:
    """Per-layer RoPE inverse frequencies from the model's rotary module: one shared ``inv_freq`` (Llama family) or
    one per layer type (Gemma 3: ``<type>_inv_freq``, or a ``rotary_emb_local`` module for sliding layers)."""
    rotary = {n.split(".")[-1]: m for n, m in model.named_modules() if n.split(".")[-1].startswith("rotary_emb")}
    out: list[torch.Tensor | None] = []
    for kind in types:
        inv = None
        for module in rotary.values():
            inv = getattr(module, f"{kind}_inv_freq", None)
            if inv is not None:
                break
        if inv is None:
            module = rotary.get("rotary_emb_local" if kind == "sliding_attention" else "rotary_emb")
            module = module or rotary.get("rotary_emb")
            inv = getattr(module, "inv_freq", None) if module is not None else None
        out.append(inv)
    return out


class ModelView:
    """The structure of ``model``: blocks, attention modules (with heads, KV heads, head dim, causality, window and
    RoPE), MLPs, the text config, the LM head, the cache keyword of its forward, and the token layout of an image
    encoder (``vision``, None for text models).

    >>> view = ModelView(model)
    >>> view.attention[3].num_kv_heads, view.attention[3].window
    """

    def __init__(self, model: nn.Module):
        if not isinstance(model, nn.Module) or not hasattr(model, "config"):
            raise SinklabInputError(
                f"expected a transformers model (an nn.Module with a config), got {type(model).__name__}"
            )
        self.model = model
        self.config = text_config(model.config)
        n = self.config.num_hidden_layers
        self.blocks_name, self.blocks = _find_blocks(model, n)
        types = layer_types(model.config) if hasattr(self.config, "num_hidden_layers") else []
        inv_freqs = _rope_inv_freqs(model, types)
        self.vision = vision_layout(model)
        self.attention: list[AttentionInfo] = []
        self.mlps: list[nn.Module | None] = []
        for i, block in enumerate(self.blocks):
            self.mlps.append(
                next((getattr(block, a) for a in MLP_ATTRS if isinstance(getattr(block, a, None), nn.Module)), None)
            )
            found = _block_attention(block)
            if found is not None:
                self.attention.append(
                    self._info(i, f"{self.blocks_name}.{i}.{found[0]}", found[1], types[i], inv_freqs[i])
                )

    def _info(self, i: int, name: str, module: nn.Module, layer_type: str, inv_freq) -> AttentionInfo:
        cfg = self.config
        H = int(
            getattr(module, "num_heads", None)
            or getattr(module, "num_attention_heads", None)
            or cfg.num_attention_heads
        )
        kv = getattr(module, "num_key_value_heads", None) or getattr(cfg, "num_key_value_heads", None) or H
        D = getattr(module, "head_dim", None) or getattr(module, "attention_head_size", None)
        D = D or getattr(cfg, "head_dim", None) or cfg.hidden_size // H
        window = getattr(module, "sliding_window", None)
        if window is None and layer_type == "sliding_attention":
            window = getattr(cfg, "sliding_window", None)
        return AttentionInfo(
            layer=i,
            name=name,
            module=module,
            kind="sliding" if window else "full",
            num_heads=H,
            num_kv_heads=int(kv),
            head_dim=int(D),
            hidden_size=int(cfg.hidden_size),
            causal=bool(getattr(module, "is_causal", True)),
            window=int(window) if window else None,
            inv_freq=inv_freq,
        )

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    @property
    def lm_head(self) -> nn.Module | None:
        get = getattr(self.model, "get_output_embeddings", None)
        return get() if get is not None else None

    @property
    def cache_keyword(self) -> str:
        """The forward argument that takes a KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
        params = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in params else "past_key_values"

    def require_attention(self) -> list[AttentionInfo]:
        if not self.attention:
            raise SinklabInputError(
                f"{type(self.model).__name__} has no softmax attention module that sinklab can attach to "
                "(a block submodule with is_causal calling transformers' AttentionInterface)"
            )
        return self.attention
