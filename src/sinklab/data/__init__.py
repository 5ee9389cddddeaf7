"""Data: the embedded corpus, user text files, and token sequences cut by DESIGN.md's rule."""

from sinklab.data.corpus import BosMode, embedded_corpus, read_texts, token_sequences

__all__ = ["BosMode", "embedded_corpus", "read_texts", "token_sequences"]
