"""Compact splats: learnable masks, codebooks, hash-grid colour and the ``.skz`` file format."""

from splatkit.compress.morton import morton_order
from splatkit.compress.skz import RVQ, CompactSplats, read_skz, skz_from_bytes, skz_to_bytes, write_skz

__all__ = ["CompactSplats", "RVQ", "morton_order", "read_skz", "skz_from_bytes", "skz_to_bytes", "write_skz"]
