"""Models: embedded real models by short name, any HF id / local path / GGUF file, and tiny test models."""

from sinklab.models.tiny import TINY_MODELS, byte_tokenizer, tiny_bert, tiny_gemma3, tiny_llama
from sinklab.models.zoo import (
    DEFAULT_MODEL,
    EMBEDDED,
    accepted_names,
    check_model,
    check_token_ids,
    input_device,
    is_vision_model,
    load,
    model_source,
    model_status,
    parse_device_map,
    parse_max_memory,
    resolve_device,
)

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "TINY_MODELS",
    "accepted_names",
    "byte_tokenizer",
    "check_model",
    "check_token_ids",
    "input_device",
    "is_vision_model",
    "load",
    "model_source",
    "model_status",
    "parse_device_map",
    "parse_max_memory",
    "resolve_device",
    "tiny_bert",
    "tiny_gemma3",
    "tiny_llama",
]
