"""Seeded tiny random models for tests: built from configs in milliseconds, no downloads.

Text models come with a byte-level tokenizer (every UTF-8 byte is a token, no merges), so any text round-trips;
image encoders (``tiny_vision``, the ``tiny-vit`` ... ``tiny-siglip-vision`` names) with no processor.
``initializer_range`` is raised above the usual 0.02 so attention patterns are far from uniform.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIALS = ["<pad>", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]", "<unk>"]


def byte_tokenizer(template: str = "<bos> $A") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer: ids 0-6 are special tokens, then one token per byte.

    ``template`` is the post-processing rule (``"<bos> $A"`` for decoders, ``"[CLS] $A [SEP]"`` for BERT).
    """
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials_in = [s for s in SPECIALS if s in template]
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(s, vocab[s]) for s in specials_in]
    )
    is_bert = "[CLS]" in template
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="[CLS]" if is_bert else "<bos>",
        eos_token="[SEP]" if is_bert else "<eos>",
        cls_token="[CLS]" if is_bert else None,
        sep_token="[SEP]" if is_bert else None,
        mask_token="[MASK]",
    )


VOCAB_SIZE = len(SPECIALS) + 256


def _build(config, model_cls, template: str, seed: int):
    torch.manual_seed(seed)
    model = model_cls(config)
    return model.eval(), byte_tokenizer(template)


def _small(**changes) -> dict:
    """The shared tiny shape (2 blocks, d 64, 4 heads, byte vocabulary, large init) with ``changes``."""
    base = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=256,
        initializer_range=0.1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return {**base, **changes}


def tiny_llama(seed: int = 0, **overrides):
    """Llama decoder: 3 layers, 4 query heads sharing 2 KV heads (GQA), head dim 16."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = _small(num_hidden_layers=3, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    return _build(LlamaConfig(**{**cfg, **overrides}), LlamaForCausalLM, "<bos> $A", seed)


def tiny_gemma3(seed: int = 0, **overrides):
    """Gemma3 decoder: 4 layers, sliding window 8 on layers 0, 1, 3 and global attention on layer 2."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = _small(
        num_hidden_layers=4, num_key_value_heads=2, head_dim=16, sliding_window=8, max_position_embeddings=1024,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        query_pre_attn_scalar=16,
    )  # fmt: skip
    return _build(Gemma3TextConfig(**{**cfg, **overrides}), Gemma3ForCausalLM, "<bos> $A", seed)


def tiny_bert(seed: int = 0, **overrides):
    """BERT encoder: 2 layers, 4 heads, bidirectional, [CLS] ... [SEP] around each text."""
    from transformers import BertConfig, BertModel

    cfg = _small(max_position_embeddings=512)
    return _build(BertConfig(**{**cfg, **overrides}), BertModel, "[CLS] $A [SEP]", seed)


TINY_MODELS: dict[str, Callable] = {
    "tiny-llama": tiny_llama,
    "tiny-gemma3": tiny_gemma3,
    "tiny-bert": tiny_bert,
}


def _arch_configs() -> dict[str, tuple]:
    """Architecture -> (config, model class, tokenizer template): two blocks each, GQA where the family has it."""
    import transformers as tf

    gqa = dict(num_key_value_heads=2)
    two_types = ["sliding_attention", "full_attention"]
    return {
        "gpt2": (
            tf.GPT2Config(vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                          initializer_range=0.1, bos_token_id=1, eos_token_id=2),
            tf.GPT2LMHeadModel, "<bos> $A",
        ),
        "llama": (tf.LlamaConfig(**_small(**gqa)), tf.LlamaForCausalLM, "<bos> $A"),
        "qwen2": (tf.Qwen2Config(**_small(**gqa)), tf.Qwen2ForCausalLM, "<bos> $A"),
        "qwen3": (tf.Qwen3Config(**_small(**gqa, head_dim=16)), tf.Qwen3ForCausalLM, "<bos> $A"),
        "mistral": (tf.MistralConfig(**_small(**gqa, sliding_window=5)), tf.MistralForCausalLM, "<bos> $A"),
        "phi3": (tf.Phi3Config(**_small(**gqa)), tf.Phi3ForCausalLM, "<bos> $A"),
        "olmo2": (tf.Olmo2Config(**_small(**gqa)), tf.Olmo2ForCausalLM, "<bos> $A"),
        "gemma2": (
            tf.Gemma2Config(**_small(**gqa, head_dim=16, sliding_window=5, attn_logit_softcapping=1.0,
                                     query_pre_attn_scalar=16)),
            tf.Gemma2ForCausalLM, "<bos> $A",
        ),
        "gemma3": (
            tf.Gemma3TextConfig(**_small(**gqa, head_dim=16, sliding_window=5, layer_types=two_types,
                                         query_pre_attn_scalar=16)),
            tf.Gemma3ForCausalLM, "<bos> $A",
        ),
        "gpt_oss": (
            tf.GptOssConfig(**_small(**gqa, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                                     sliding_window=5, layer_types=two_types)),
            tf.GptOssForCausalLM, "<bos> $A",
        ),
        "bert": (tf.BertConfig(**_small()), tf.BertModel, "[CLS] $A [SEP]"),
        "roberta": (
            tf.RobertaConfig(**{**_small(), "max_position_embeddings": 260}), tf.RobertaModel, "[CLS] $A [SEP]",
        ),
        "modernbert": (
            tf.ModernBertConfig(**_small(local_attention=4, global_attn_every_n_layers=2)),
            tf.ModernBertModel, "[CLS] $A [SEP]",
        ),
    }  # fmt: skip


ARCHS = ("gpt2", "llama", "qwen2", "qwen3", "mistral", "phi3", "olmo2", "gemma2", "gemma3", "gpt_oss", "bert",
         "roberta", "modernbert")  # fmt: skip


def tiny_arch(arch: str, seed: int = 0):
    """A two-block random model of one of ``ARCHS`` with the byte tokenizer (the architecture test matrix)."""
    config, model_cls, template = _arch_configs()[arch]
    model, tok = _build(config, model_cls, template, seed)
    if arch == "gpt_oss":  # learned sink logits that matter: -2, 0, 2, 4 per head
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.copy_(torch.tensor([-2.0, 0.0, 2.0, 4.0]))
    return model, tok


def tiny_hybrid(seed: int = 0):
    """A two-block Qwen3-Next hybrid: block 0 gated-DeltaNet linear attention, block 1 softmax attention (what scan,
    detection and every method must handle: a first block that is not an attention site)."""
    import transformers as tf

    config = tf.Qwen3NextConfig(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, layer_types=["linear_attention", "full_attention"],
        linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
        max_position_embeddings=256, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(seed)
    return tf.Qwen3NextForCausalLM(config).eval(), byte_tokenizer()


VISION_ARCHS = ("vit", "dinov2", "dinov2_registers", "clip_vision", "siglip_vision")


def tiny_vision(arch: str = "dinov2_registers", seed: int = 0):
    """A two-block random image encoder of one of ``VISION_ARCHS``: 64 x 64 inputs in 8 x 8 patches (an 8 x 8 grid),
    d 64, 4 heads; no image processor (scans preprocess from the config). DINOv2's registers, zero at
    initialisation, are drawn at random so that each is its own token."""
    import transformers as tf

    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=64, patch_size=8)
    configs = {
        "vit": (tf.ViTConfig(**shape, intermediate_size=128, initializer_range=0.1), tf.ViTModel),
        "dinov2": (tf.Dinov2Config(**shape, mlp_ratio=2, initializer_range=0.1), tf.Dinov2Model),
        "dinov2_registers": (
            tf.Dinov2WithRegistersConfig(**shape, mlp_ratio=2, initializer_range=0.1, num_register_tokens=4),
            tf.Dinov2WithRegistersModel,
        ),
        "clip_vision": (tf.CLIPVisionConfig(**shape, intermediate_size=128), tf.CLIPVisionModel),
        "siglip_vision": (tf.SiglipVisionConfig(**shape, intermediate_size=128), tf.SiglipVisionModel),
    }
    config, model_cls = configs[arch]
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    registers = getattr(getattr(model, "embeddings", None), "register_tokens", None)
    if registers is not None:
        with torch.no_grad():
            registers.normal_(0.0, 1.0)
    return model, None


VISION_NAMES = {
    "tiny-vit": "vit",
    "tiny-dinov2": "dinov2",
    "tiny-dinov2-reg": "dinov2_registers",
    "tiny-clip-vision": "clip_vision",
    "tiny-siglip-vision": "siglip_vision",
}
TINY_MODELS.update({name: functools.partial(tiny_vision, arch) for name, arch in VISION_NAMES.items()})
