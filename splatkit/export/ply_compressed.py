"""The PlayCanvas / SuperSplat compressed PLY (``*.compressed.ply``).

Spec: PlayCanvas ``splat-transform`` (``src/lib/writers/write-compressed-ply.ts``,
``writers/compressed-chunk.ts``, ``data-table/morton-order.ts`` write it;
``readers/decompress-ply.ts`` and the engine's ``gsplat-compressed-data.js`` read it).
A binary little-endian PLY with three elements::

    element chunk ceil(N/256)   18 x float: min_x min_y min_z max_x max_y max_z
                                min_scale_x.. max_scale_z (log-scales), min_r.. max_b (colours)
    element vertex N            4 x uint: packed_position packed_rotation packed_scale packed_color
    element sh N                3K x uchar f_rest_0.. (only when SH degree > 0; channel-major
                                like the plain PLY's f_rest)

* Gaussians are sorted in Morton order (10 bits per axis over the scene's bounding box; runs of
  more than 256 equal codes are re-sorted within their own box) and cut into chunks of 256. The
  last chunk's bounds are taken over its real members (splat-transform pads it with copies of
  the last one, which changes nothing).
* Each chunk stores the min/max of position, log-scale (clamped to [-20, 20]) and colour
  ``0.5 + SH_C0 * f_dc``; a value is stored as its fraction of that range: ``packed_position`` and
  ``packed_scale`` 11-10-11 bits (x << 21 | y << 11 | z), ``packed_color`` 8-8-8-8 (r g b and
  ``sigmoid(opacity)`` itself, not range-scaled). Fractions round as ``floor(v * (2^b - 1) + 0.5)``;
  a range under 1e-5 stores 0.
* ``packed_rotation``: smallest three of the unit quaternion in file order ``rot_0..3`` (w x y z),
  sign flipped so the largest is positive; bits 31-30 the largest's index, then the other three
  in index order, 10 bits each as ``v * sqrt(2)/2 + 0.5``.
* ``f_rest``: ``clamp(trunc((v / 8 + 0.5) * 256), 0, 255)``; read back as ``((b + 0.5) / 256 - 0.5) * 8``
  (0 and 255 read as -4 and 4), so SH outside [-4, 4] is clipped.

We write our own instead of ``gsplat.export_splats(format="ply_compressed")``: gsplat divides by a
zero range for chunks whose members share a coordinate (NaN packed values), maps the top Morton
cell to 1024 (which overflows 10 bits), silently drops Gaussians with opacity below 1/255, and
always writes an ``sh`` element, which splat-transform rejects when it has no properties.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from splatkit.errors import DataError
from splatkit.export._shared import (FormatExport, logit, sh_degree_for_rest, sigmoid, splat_arrays,
                                     to_tensors)
from splatkit.render.sh import SH_C0
from splatkit.utils.atomic import write_bytes_atomic

CHUNK_SIZE = 256
MAX_SH_DEGREE = 3  # readers accept 9, 24 or 45 f_rest columns
CHUNK_PROPS = ("min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
               "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
               "min_r", "min_g", "min_b", "max_r", "max_g", "max_b")
VERTEX_PROPS = ("packed_position", "packed_rotation", "packed_scale", "packed_color")
NOTES = ("quantised per chunk of 256 Gaussians: positions and log-scales 11/10/11 bits of the chunk's range, "
         "colour and opacity 8-bit, rotation smallest-three 10 bits per component, SH 8-bit in [-4, 4]; "
         "Gaussians reordered (Morton order)")


# -- writing ------------------------------------------------------------------------------------
def _part1by2(v: np.ndarray) -> np.ndarray:
    """Spread the low 10 bits of ``v`` three apart (fgiesen's Morton ``Part1By2``)."""
    v = v.astype(np.uint32) & 0x000003FF
    v = (v ^ (v << 16)) & 0xFF0000FF
    v = (v ^ (v << 8)) & 0x0300F00F
    v = (v ^ (v << 4)) & 0x030C30C3
    v = (v ^ (v << 2)) & 0x09249249
    return v


def morton_order(xyz: np.ndarray) -> np.ndarray:
    """Indices of ``xyz`` [N, 3] in splat-transform's Morton order (stable within equal codes)."""
    xyz = np.asarray(xyz, dtype=np.float64)
    order = np.arange(len(xyz))
    todo = [(0, len(xyz))]
    while todo:  # splat-transform recurses; an explicit stack sorts the same disjoint ranges
        start, end = todo.pop()
        sub = order[start:end]
        p = xyz[sub]
        lo, hi = p.min(axis=0), p.max(axis=0)
        length = hi - lo
        if not np.isfinite(length).all() or not length.any():
            continue
        mul = np.where(length > 0, 1024.0 / np.where(length > 0, length, 1.0), 0.0)
        cell = np.minimum(1023.0, (p - lo) * mul).astype(np.uint32)  # JS ">>> 0" truncates
        code = (_part1by2(cell[:, 2]) << 2) | (_part1by2(cell[:, 1]) << 1) | _part1by2(cell[:, 0])
        perm = np.argsort(code, kind="stable")  # JS Array.sort is stable
        order[start:end] = sub[perm]
        code = code[perm]
        cuts = np.flatnonzero(np.diff(code)) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(code)]):
            if b - a > CHUNK_SIZE:
                todo.append((start + int(a), start + int(b)))
    return order


def _pack_unorm(v: np.ndarray, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return np.clip(np.floor(v * t + 0.5), 0, t).astype(np.uint32)


def _fraction(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """splat-transform's ``normalize``: 0 at or below min, 1 at or above max, 0 for a tiny range."""
    span = hi - lo
    t = np.where(span < 1e-5, 0.0, (v - lo) / np.where(span < 1e-5, 1.0, span))
    return np.where(v <= lo, 0.0, np.where(v >= hi, 1.0, t))


def _pack_111011(f: np.ndarray) -> np.ndarray:
    return (_pack_unorm(f[..., 0], 11) << 21) | (_pack_unorm(f[..., 1], 10) << 11) | _pack_unorm(f[..., 2], 11)


def _pack_rotation(q: np.ndarray) -> np.ndarray:
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    largest = np.argmax(np.abs(q), axis=1)  # first index on ties, like the reference's reduce
    rows = np.arange(len(q))
    q = q * np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    packed = _pack_unorm(q[rows[:, None], others] * (math.sqrt(2) * 0.5) + 0.5, 10)
    return ((largest.astype(np.uint32) << 30) | (packed[:, 0] << 20) | (packed[:, 1] << 10) | packed[:, 2])


def encode_ply_compressed(splats: dict, sh_degree: int, comment: str = "") -> tuple[bytes, int, int]:
    """``(file bytes, Gaussians written, Gaussians dropped)`` for parameters in the frame wanted."""
    a, dropped = splat_arrays(splats, sh_degree, MAX_SH_DEGREE, "ply-compressed")
    # splat-transform holds every column as float32 and computes in double: do the same.
    f32 = {k: v.astype(np.float32).astype(np.float64) for k, v in a.items()}
    n = len(f32["means"])
    order = morton_order(f32["means"])
    n_chunks = -(-n // CHUNK_SIZE)
    pad = np.r_[order, np.full(n_chunks * CHUNK_SIZE - n, order[-1])]  # repeat the last, as the reference

    def chunked(x):
        return x[pad].reshape(n_chunks, CHUNK_SIZE, *x.shape[1:])

    pos = chunked(f32["means"])
    scl = chunked(f32["scales"])
    col = chunked((f32["sh0"] * SH_C0 + 0.5).astype(np.float32).astype(np.float64))
    p_lo, p_hi = pos.min(axis=1, keepdims=True), pos.max(axis=1, keepdims=True)
    s_lo = np.clip(scl.min(axis=1, keepdims=True), -20, 20)  # "sometimes values are at infinity"
    s_hi = np.clip(scl.max(axis=1, keepdims=True), -20, 20)
    c_lo, c_hi = col.min(axis=1, keepdims=True), col.max(axis=1, keepdims=True)
    chunk_table = np.concatenate([p_lo, p_hi, s_lo, s_hi, c_lo, c_hi], axis=2)[:, 0, :].astype("<f4")

    c = _fraction(col, c_lo, c_hi)
    alpha = chunked(sigmoid(f32["opacities"]))
    vertex = np.stack([
        _pack_111011(_fraction(pos, p_lo, p_hi)).reshape(-1),
        _pack_rotation(f32["quats"][pad]),
        _pack_111011(_fraction(scl, s_lo, s_hi)).reshape(-1),
        ((_pack_unorm(c[..., 0], 8) << 24) | (_pack_unorm(c[..., 1], 8) << 16) | (_pack_unorm(c[..., 2], 8) << 8)
         | _pack_unorm(alpha, 8)).reshape(-1),
    ], axis=1)[:n].astype("<u4")

    k_rest = (int(sh_degree) + 1) ** 2 - 1
    rest = f32["shN"][order].transpose(0, 2, 1).reshape(n, 3 * k_rest)  # channel-major f_rest order
    sh = np.clip(np.trunc((rest / 8.0 + 0.5) * 256.0), 0, 255).astype(np.uint8)

    lines = ["ply", "format binary_little_endian 1.0"]
    if comment:
        lines.append(f"comment {comment}")
    lines += [f"element chunk {n_chunks}"] + [f"property float {p}" for p in CHUNK_PROPS]
    lines += [f"element vertex {n}"] + [f"property uint {p}" for p in VERTEX_PROPS]
    if k_rest:
        lines += [f"element sh {n}"] + [f"property uchar f_rest_{i}" for i in range(3 * k_rest)]
    header = ("\n".join(lines + ["end_header"]) + "\n").encode("ascii")
    data = header + chunk_table.tobytes() + vertex.tobytes() + (sh.tobytes() if k_rest else b"")
    return data, n, dropped


def write_ply_compressed(path: str | Path, splats: dict, sh_degree: int) -> FormatExport:
    """Write parameters (already in the frame wanted) as a compressed PLY, atomically."""
    import splatkit

    data, written, dropped = encode_ply_compressed(splats, sh_degree,
                                                   comment=f"Generated by splatkit {splatkit.__version__}")
    path = Path(path)
    write_bytes_atomic(path, data)
    return FormatExport(path, "ply-compressed", written, dropped, int(sh_degree), NOTES)


# -- reading ------------------------------------------------------------------------------------
def is_compressed_ply_header(path: str | Path) -> bool:
    """Whether a PLY file's header declares a ``chunk`` element (the compressed layout)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = head.find(b"end_header")
    lines = (head if end < 0 else head[:end]).split(b"\n")
    return any(line.split()[:2] == [b"element", b"chunk"] for line in lines)


def _unorm(v: np.ndarray, shift: int, bits: int) -> np.ndarray:
    t = (1 << bits) - 1
    return ((v >> np.uint32(shift)) & np.uint32(t)).astype(np.float64) / t


def _lerp(lo: np.ndarray, hi: np.ndarray, t: np.ndarray) -> np.ndarray:
    return lo * (1.0 - t) + hi * t


def read_ply_compressed(path: str | Path) -> tuple[dict, int]:
    """Read a compressed PLY into gsplat-named float32 tensors and its SH degree.

    Decodes as splat-transform's ``decompress-ply.ts`` does (chunks without colour bounds hold the
    colour directly); opacity bytes 0 and 255 read as the logit of 0.5/255 and 1 - 0.5/255."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise DataError("compressed PLY file not found", path)
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types for malformed or truncated files
        raise DataError(f"not a readable PLY file ({type(exc).__name__}: {str(exc)[:120]})", path)
    elements = {el.name: el for el in ply.elements}
    if "chunk" not in elements or "vertex" not in elements:
        raise DataError("not a compressed PLY: needs 'chunk' and 'vertex' elements, found "
                        f"{sorted(elements)}", path)

    def columns(el, names, dtype, required=True):
        have = {p.name: p.val_dtype for p in el.properties}
        missing = [nm for nm in names if nm not in have]
        if missing:
            if required:
                raise DataError(f"compressed PLY '{el.name}' element lacks {missing}", path)
            return None
        wrong = [nm for nm in names if np.dtype(have[nm]) != np.dtype(dtype)]
        if wrong:
            raise DataError(f"compressed PLY '{el.name}' properties {wrong} must be {np.dtype(dtype).name}", path)
        return np.stack([np.asarray(el.data[nm]) for nm in names], axis=1) if len(el.data) else \
            np.zeros((0, len(names)), dtype=dtype)

    chunks = columns(elements["chunk"], CHUNK_PROPS[:12], np.float32).astype(np.float64)
    colour_bounds = columns(elements["chunk"], CHUNK_PROPS[12:], np.float32, required=False)
    packed = columns(elements["vertex"], VERTEX_PROPS, np.uint32).astype(np.uint32)
    n = len(packed)
    if n == 0:
        raise DataError("compressed PLY contains no Gaussians", path)
    if len(chunks) != -(-n // CHUNK_SIZE):
        raise DataError(f"compressed PLY count mismatch: {n} Gaussians need {-(-n // CHUNK_SIZE)} chunks of "
                        f"{CHUNK_SIZE}, the file has {len(chunks)}", path)
    ci = np.arange(n) // CHUNK_SIZE
    ch = chunks[ci]

    def unpack_111011(v):
        return np.stack([_unorm(v, 21, 11), _unorm(v, 11, 10), _unorm(v, 0, 11)], axis=1)

    means = _lerp(ch[:, 0:3], ch[:, 3:6], unpack_111011(packed[:, 0]))
    scales = _lerp(ch[:, 6:9], ch[:, 9:12], unpack_111011(packed[:, 2]))
    rgba = np.stack([_unorm(packed[:, 3], s, 8) for s in (24, 16, 8, 0)], axis=1)
    colour = rgba[:, :3]
    if colour_bounds is not None:
        cb = colour_bounds.astype(np.float64)[ci]
        colour = _lerp(cb[:, 0:3], cb[:, 3:6], colour)

    rot = packed[:, 1]
    abc = (np.stack([_unorm(rot, 20, 10), _unorm(rot, 10, 10), _unorm(rot, 0, 10)], axis=1) - 0.5) * math.sqrt(2)
    m = np.sqrt(np.maximum(0.0, 1.0 - (abc ** 2).sum(axis=1)))
    which = (rot >> np.uint32(30)).astype(np.int64)
    quats = np.empty((n, 4))
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[which]
    rows = np.arange(n)
    quats[rows, which] = m
    quats[rows[:, None], others] = abc
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)  # m >= 0 and |abc| <= 1: norm is 1 up to rounding

    degree, shN = 0, np.zeros((n, 0, 3))
    if "sh" in elements:
        el = elements["sh"]
        n_cols = len(el.properties)
        degree = sh_degree_for_rest(n_cols // 3) if n_cols % 3 == 0 else -1
        if not 1 <= degree <= MAX_SH_DEGREE:
            raise DataError(f"compressed PLY 'sh' element has {n_cols} properties; readers accept 9, 24 or 45",
                            path)
        if len(el.data) != n:
            raise DataError(f"compressed PLY count mismatch: 'sh' has {len(el.data)} rows, 'vertex' {n}", path)
        raw = columns(el, [f"f_rest_{i}" for i in range(n_cols)], np.uint8).astype(np.float64)
        norm = np.where(raw == 0, 0.0, np.where(raw == 255, 1.0, (raw + 0.5) / 256.0))
        k = n_cols // 3
        shN = ((norm - 0.5) * 8.0).reshape(n, 3, k).transpose(0, 2, 1)  # channel-major on disk

    splats = to_tensors(means, scales, quats, logit(rgba[:, 3], 0.5 / 255.0), (colour - 0.5) / SH_C0, shN)
    return splats, degree
