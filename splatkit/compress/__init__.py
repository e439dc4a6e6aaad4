"""Compact splats: learnable masks, codebooks, hash-grid colour and the ``.skz`` file format."""

from splatkit.compress.compact import (AttributeQuantizer, mask_loss, prune_selection, rvq_decode, rvq_encode,
                                       straight_through_mask)
from splatkit.compress.morton import morton_order
from splatkit.compress.skz import RVQ, CompactSplats, read_skz, skz_from_bytes, skz_to_bytes, write_skz

__all__ = ["AttributeQuantizer", "CompactSplats", "RVQ", "mask_loss", "morton_order", "prune_selection",
           "read_skz", "rvq_decode", "rvq_encode", "skz_from_bytes", "skz_to_bytes", "straight_through_mask",
           "write_skz"]
