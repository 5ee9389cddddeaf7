"""The Observer's row weights of a patched model's variant: ``sinklab.ops.variants.Variant.row_weights``."""

from sinklab.ops.variants import RowWeights, get_variant


def row_weights(variant: str, params: dict, scale: float, num_keys: int) -> RowWeights | None:
    return get_variant(variant).row_weights(params, scale, num_keys)
