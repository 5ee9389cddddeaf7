"""Models: embedded real models by short name, any HF id / local path / GGUF file, and tiny test models."""

from sinklab.models.tiny import TINY_MODELS, byte_tokenizer, tiny_bert, tiny_gemma3, tiny_llama
from sinklab.models.zoo import DEFAULT_MODEL, EMBEDDED, accepted_names, load, model_status

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "TINY_MODELS",
    "accepted_names",
    "byte_tokenizer",
    "load",
    "model_status",
    "tiny_bert",
    "tiny_gemma3",
    "tiny_llama",
]
