"""Eliminate sinks: attention variants patched into any HF model, pre-training study, adaptation."""

from sinklab.remove.variant import VariantPatch, identity_variants, load_patched, patch, patch_variants, unpatch

__all__ = ["VariantPatch", "identity_variants", "load_patched", "patch", "patch_variants", "unpatch"]
