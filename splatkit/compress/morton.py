"""Morton (Z-order) sorting of 3D points.

Sorting Gaussians along a Z-order curve puts spatial neighbours next to each other in memory, so
their (similar) attributes sit in long, self-similar runs that an entropy coder such as zstd
compresses far better than a random order.
"""

from __future__ import annotations

import numpy as np

from splatkit.errors import SplatkitError

MORTON_BITS = 21  # 3 x 21 = 63 bits: the largest interleaved code that fits an unsigned 64-bit int
_MAX_Q = (1 << MORTON_BITS) - 1


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """Insert two zero bits between each of the low 21 bits of ``v`` (uint64)."""
    v = v & np.uint64(0x1FFFFF)
    v = (v | (v << np.uint64(32))) & np.uint64(0x1F00000000FFFF)
    v = (v | (v << np.uint64(16))) & np.uint64(0x1F0000FF0000FF)
    v = (v | (v << np.uint64(8))) & np.uint64(0x100F00F00F00F00F)
    v = (v | (v << np.uint64(4))) & np.uint64(0x10C30C30C30C30C3)
    v = (v | (v << np.uint64(2))) & np.uint64(0x1249249249249249)
    return v


def _as_points(points) -> np.ndarray:
    if hasattr(points, "detach"):  # torch tensor, without importing torch here
        points = points.detach().cpu().numpy()
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise SplatkitError(f"Morton order needs points of shape [N, 3], got {list(p.shape)}")
    if not np.isfinite(p).all():
        raise SplatkitError("Morton order needs finite points (got NaN or inf)")
    return p


def morton_codes(points) -> np.ndarray:
    """63-bit Morton codes (uint64, [N]) of ``points`` [N, 3].

    Points are quantised to 21 bits per axis inside their bounding *cube* (the bounding box's
    largest side on every axis), so the curve is equally fine along every axis and neighbourhoods
    stay isotropic even for elongated scenes. Bit ``3i + a`` of the code is bit ``i`` of axis ``a``.
    """
    p = _as_points(points)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=np.uint64)
    lo = p.min(axis=0)
    extent = float((p.max(axis=0) - lo).max())
    if extent <= 0.0:  # all points coincide: every code is 0
        return np.zeros(p.shape[0], dtype=np.uint64)
    q = np.floor((p - lo) * (_MAX_Q / extent) + 0.5)
    q = np.clip(q, 0, _MAX_Q).astype(np.uint64)
    return _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << np.uint64(1)) | (
        _spread_bits(q[:, 2]) << np.uint64(2))


def morton_order(points) -> np.ndarray:
    """The permutation (int64, [N]) that sorts ``points`` [N, 3] (numpy or torch) in Morton order.

    ``points[morton_order(points)]`` is the sorted array. The sort is stable, so the result is
    deterministic even when points share a code.
    """
    return np.argsort(morton_codes(points), kind="stable").astype(np.int64)
