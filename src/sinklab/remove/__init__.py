"""Eliminate sinks: attention variants patched into any HF model, pre-training study, adaptation."""

from sinklab.remove.patch import IDENTITY_VARIANTS, PATCH_VARIANTS, load_patched, patch, unpatch

__all__ = ["IDENTITY_VARIANTS", "PATCH_VARIANTS", "load_patched", "patch", "unpatch"]
