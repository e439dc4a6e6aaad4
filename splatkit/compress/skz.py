"""``.skz``: splatkit's compact, versioned file for (compressed) Gaussian splats.

What it holds (:class:`CompactSplats`): positions, opacities, scales, rotations and SH colour of
``N`` Gaussians in splatkit's normalised frame, where each of scales / quats / shN is either a
plain array or a residual vector quantisation (:class:`RVQ`, Compact-3DGS, Lee et al. CVPR 2024);
optionally a neural colour field (hash grid + MLP) as named float tensors plus a JSON config; the
SH degree; the scene's 4x4 normalisation matrix; free JSON metadata.

File layout (all integers little-endian)::

    offset 0   4 bytes   magic b"SKZ1"
           4   u16       format version: 1; 2 when a section uses ``q_affine``; 3 when one is
                         delta-coded (reads all three)
           6   u32       M = manifest length in bytes
          10   M bytes   manifest: UTF-8 JSON object (below)
      10 + M   ...       the sections' zstd frames, back to back, in manifest order
     end - 4   u32       CRC-32 (zlib) of every byte before it

Manifest keys (all required, no others)::

    n                   number of Gaussians
    sh_degree           0..4
    normalization       4x4 list (ours_from_user, i.e. ``Normalization.matrix``) or null
    meta                free JSON object
    color_field_config  JSON object, or null when there is no colour field
    sections            list of {name, encoding, dtype, shape, raw, compressed[, params]}

``raw`` is the section's uncompressed byte length (``prod(shape) * itemsize``), ``compressed``
the length of its zstd frame (one frame per section, content size in the frame header).
Sections and encodings:

=========================  ============  ==========  ===========================================
name                       encoding      dtype       decoded as
=========================  ============  ==========  ===========================================
``means`` [N,3]            f16_affine    float16     ``q * scale + offset`` per axis (params)
``opacities`` [N]          u8_sigmoid    uint8       ``logit(clamp(u / 255, .5/255, 1-.5/255))``
``sh0`` [N,1,3]            f16           float16     as is (absent when a colour field replaces it)
``scales`` [N,3]           f16           float16     plain log-scales, or instead:
``scales/codebooks``       f16           float16     R-VQ codebooks [S, K, 3]
``scales/indices`` [N,S]   index         uint8/16/32 the smallest type that holds K-1
``quats`` [N,4]            (as scales, D = 4)
``shN`` [N,K-1,3]          (as scales, D = 3(K-1), flattened coefficient-major, channel-minor)
``color_field/<name>``     f16 or        float16 or  ``min + u * (max - min) / levels`` with
                           u8_minmax     uint8       per-tensor ``params = {min, max[, levels]}``
any of ``means``, ``sh0``, q_affine      uint8 (bits ``min[c] + u * (max[c] - min[c]) / (2**bits - 1)``
``scales``, ``quats``,     (version 2)   <= 8) or    per column ``c`` of the last axis;
``shN`` or their                         uint16      ``params = {bits, min: [C], max: [C]}``
``/codebooks``
=========================  ============  ==========  ===========================================

Encoding choices and their precision:

* Gaussians are stored in Morton order of their positions (:mod:`splatkit.compress.morton`);
  the reader returns them in that order (the writer's input order is not kept).
* Positions: fp16 of ``(x - offset) / scale`` with ``offset`` the bounding-box centre and
  ``scale`` its half-extent per axis (stored as float64 ``params``), so the stored values span
  [-1, 1], where fp16 is finest. Absolute error <= half-extent * 2**-12 per axis (about 2.4e-4 of
  the half-extent), whatever the scene's offset from the origin.
* Opacity: ``round(255 * sigmoid(logit))``; the decoded sigmoid is within 0.5/255 of the original.
* ``CompactSplats.bits`` = ``{attribute: bits}`` (1..16) stores those attributes (an R-VQ-coded
  one: its codebooks) as ``q_affine``: each column of the last axis (a position axis, a
  quaternion component, an SH coefficient) quantised uniformly between its own min and max, error
  <= (max - min) / (2 * (2**bits - 1)). Positions then use the same per-axis box as ``f16_affine``
  does implicitly. Values already on such a grid (decoded from a file) are stored again exactly, so
  reading and re-writing a file does not quantise twice. ``splatkit compress`` writes these.
* A per-Gaussian ``q_affine`` section may be delta-coded (``params["delta"] = true``, version 3):
  along the Gaussians (Morton order, so neighbours are near in space and alike) each stored value
  is the zig-zag code of its difference to the previous one, wrapped to the dtype's width
  (``zz(d) = 2d`` for ``d >= 0``, ``-2d - 1`` below). The writer codes a section both ways and keeps
  the smaller frame: `splatkit compress` of the 400x300 synthetic scene went from 359 to 340 kB
  (positions, scales, rotations and DC colour each lose 5-10%; zstd is already within a few
  percent of the columns' order-0 entropy, so a better entropy coder alone would not give this).
* Plain scales / quats / sh0 / shN, codebooks, MLP weights: IEEE fp16 (relative error <= 2**-11).
* Colour-field tensors are min/max quantised to ``levels + 1`` values (``levels = 2**bits - 1``,
  ``bits = config["quantize_bits"]``, 8 when absent; error <= (max - min) / (2 * levels)) when
  their name is listed in ``config["quantize_8bit"]``; when the config has no such key, when their
  name ends in one of :data:`HASH_TABLE_SUFFIXES` (``hash_table``, ``embeddings``). All others are
  fp16. Fewer bits mean fewer distinct bytes, which zstd turns into a smaller section: on the
  400x300 synthetic scene a 6-bit hash table is about a third smaller than an 8-bit one, for
  0.04 to 0.10 dB of test PSNR (``docs/benchmarks.md``, rows "skz, N-bit table").
* Before zstd (default level 19), every section is reordered so zstd sees like with like: the
  array is viewed as ``[shape[0], rest]`` and transposed (one attribute channel at a time), then
  byte-shuffled (all first bytes of every value, then all second bytes, ...). The reader undoes
  both; ``raw`` counts the same bytes.

The reader treats files as untrusted: it checks magic, version, manifest size and JSON types,
dtypes against an allow-list, shapes against ``n`` and each other, byte ranges, the CRC and caps
on the declared sizes (:data:`MAX_RAW_BYTES`, :data:`MAX_EXPANSION`) before it allocates
anything sized by the file, and raises :class:`~splatkit.errors.SplatkitError` for every problem.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import zstandard

from splatkit.compress.morton import morton_order
from splatkit.errors import SplatkitError
from splatkit.render.sh import MAX_SH_DEGREE
from splatkit.utils.atomic import write_bytes_atomic

MAGIC = b"SKZ1"
FORMAT_VERSION = 3  # the newest this module reads; it writes the oldest version that holds the file
QUANT_VERSION = 2  # the first version with q_affine sections
DELTA_VERSION = 3  # the first version with delta-coded q_affine sections
QUANT_ATTRIBUTES = ("means", "sh0", "scales", "quats", "shN")
MAX_QUANT_BITS = 16
MAX_QUANT_COLUMNS = 4096  # q_affine params list one min and one max per column
DEFAULT_LEVEL = 19
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few KiB; 1 MiB leaves room for generous meta
# Declared uncompressed bytes, all sections together. 4 GiB is ~36 M Gaussians at SH degree 3
# without quantisation, far beyond any real model, yet small enough to fit in memory.
MAX_RAW_BYTES = 4 << 30
# Declared uncompressed bytes per byte of file. Positions are near-incompressible (fp16 of
# distinct points: ~2x at best) and are in every file, so real models stay well under 20x;
# zstd itself can reach ~30000x on constant data, which is exactly the decompression-bomb case.
# The writer refuses (degenerate) models that would exceed this, so it never writes a file its
# reader rejects.
MAX_EXPANSION = 1000
MAX_SECTIONS = 4096
MAX_NDIM = 8
MAX_NAME_LEN = 256
HASH_TABLE_SUFFIXES = ("hash_table", "embeddings")

_HEADER = struct.Struct("<4sHI")  # magic, version, manifest length
_CRC = struct.Struct("<I")
_DTYPES = {"float16": np.dtype("<f2"), "uint8": np.dtype("u1"), "uint16": np.dtype("<u2"),
           "uint32": np.dtype("<u4")}
_ENCODING_DTYPES = {"f16": {"float16"}, "f16_affine": {"float16"}, "u8_sigmoid": {"uint8"},
                    "u8_minmax": {"uint8"}, "index": {"uint8", "uint16", "uint32"},
                    "q_affine": {"uint8", "uint16"}}
_SECTION_KEYS = {"name", "encoding", "dtype", "shape", "raw", "compressed"}
_MANIFEST_KEYS = {"n", "sh_degree", "normalization", "meta", "color_field_config", "sections"}
_COLOR_PREFIX = "color_field/"
_F32_MAX = float(np.finfo(np.float32).max)
_OPACITY_EPS = 0.5 / 255.0  # half a quantisation step: u8 0 and 255 decode to finite logits
_MAX_LEVELS = 255  # u8_minmax: the largest stored value, and the default ``levels``
DEFAULT_QUANTIZE_BITS = 8  # a colour-field config without "quantize_bits" (version-1 files)


# -- the in-memory model ------------------------------------------------------------------------
@dataclass
class RVQ:
    """Residual vector quantisation: ``value[i] = sum_s codebooks[s, indices[i, s]]``."""

    codebooks: np.ndarray  # [S, K, D] float32
    indices: np.ndarray  # [N, S] integer, each < K

    def decode(self) -> np.ndarray:
        """[N, D] float32 sums over stages."""
        n, d = self.indices.shape[0], self.codebooks.shape[2]
        out = np.zeros((n, d), dtype=np.float32)
        for s in range(self.codebooks.shape[0]):
            out += self.codebooks[s][self.indices[:, s]]
        return out


Field = Union[np.ndarray, RVQ]


@dataclass
class CompactSplats:
    """A (possibly) compressed splat model, numpy arrays in splatkit's normalised frame.

    ``scales`` [N,3], ``quats`` [N,4] (wxyz) and ``shN`` [N,(d+1)^2-1,3] are plain float32 arrays
    or :class:`RVQ` with ``D`` = 3, 4, 3((d+1)^2-1). ``sh0`` [N,1,3] may be None only when
    ``color_field`` = ``{"config": dict, "tensors": {name: float array}}`` supplies colour.
    ``normalization`` is the 4x4 ``ours_from_user`` matrix (``Normalization.matrix``) or None.
    """

    means: np.ndarray  # [N, 3] float32
    opacities: np.ndarray  # [N] float32 logits
    scales: Field
    quats: Field
    sh0: Optional[np.ndarray]
    shN: Field
    sh_degree: int
    color_field: Optional[dict] = None
    normalization: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)
    bits: dict = field(default_factory=dict)  # attribute -> bits of its q_affine sections (see module doc)

    @property
    def n(self) -> int:
        return int(self.means.shape[0])

    @classmethod
    def from_splats(cls, splats: dict, sh_degree: int, *, color_field: Optional[dict] = None,
                    normalization: Any = None, meta: Optional[dict] = None,
                    bits: Optional[dict] = None) -> "CompactSplats":
        """Build from a gsplat-named dict of torch tensors / numpy arrays.

        ``scales``, ``quats`` and ``shN`` may be :class:`RVQ` (numpy or torch inside) instead of
        arrays; ``sh0`` may be missing when ``color_field`` is given; ``shN`` may be missing at SH
        degree 0. ``normalization`` is a 4x4 matrix or a
        :class:`~splatkit.data.scene.Normalization` (its ``matrix`` is stored). ``bits``:
        ``{attribute: bits}`` stored as ``q_affine`` (module docstring).
        """
        if not isinstance(splats, dict):
            raise SplatkitError("splats must be a dict of named parameters")
        missing = [k for k in ("means", "opacities", "scales", "quats") if k not in splats]
        if missing:
            raise SplatkitError(f"Gaussian parameters missing: {missing}")
        means = _f32(splats["means"])
        n = means.shape[0] if means.ndim >= 1 else 0
        if "shN" in splats:
            shN: Field = _field(splats["shN"])
        elif _is_int(sh_degree) and sh_degree == 0:
            shN = np.zeros((n, 0, 3), dtype=np.float32)
        else:
            raise SplatkitError("Gaussian parameters missing: ['shN']")
        cf = None
        if color_field is not None:
            if not isinstance(color_field, dict) or set(color_field) != {"config", "tensors"} \
                    or not isinstance(color_field["tensors"], dict):
                raise SplatkitError('color_field must be {"config": dict, "tensors": {name: tensor}}')
            cf = {"config": color_field["config"],
                  "tensors": {k: _f32(v) for k, v in color_field["tensors"].items()}}
        if normalization is not None:
            normalization = np.asarray(getattr(normalization, "matrix", normalization), dtype=np.float64)
        sh0 = splats.get("sh0")
        out = cls(means=means, opacities=_f32(splats["opacities"]), scales=_field(splats["scales"]),
                  quats=_field(splats["quats"]), sh0=None if sh0 is None else _f32(sh0), shN=shN,
                  sh_degree=sh_degree, color_field=cf, normalization=normalization,
                  meta={} if meta is None else meta, bits=dict(bits or {}))
        out.validate()
        return out

    def decode(self, device: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
        """gsplat-named float32 tensors with R-VQ sums evaluated. ``sh0`` is omitted when None;
        the colour field (if any) is left to the caller."""
        n = self.n
        k_rest = (self.sh_degree + 1) ** 2 - 1
        arrays = {
            "means": self.means,
            "scales": _plain(self.scales),
            "quats": _plain(self.quats),
            "opacities": self.opacities,
            "shN": _plain(self.shN).reshape(n, k_rest, 3),
        }
        if self.sh0 is not None:
            arrays["sh0"] = self.sh0
        return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)).to(device)
                for k, v in arrays.items()}

    def validate(self) -> None:
        """Raise :class:`SplatkitError` unless every field has the documented type, shape and
        finite values."""
        deg = self.sh_degree
        if not _is_int(deg) or not 0 <= deg <= MAX_SH_DEGREE:
            raise SplatkitError(f"sh_degree must be an integer in 0..{MAX_SH_DEGREE}, got {deg!r}")
        _check_array("means", self.means, None, 3)
        n = self.n
        _check_array("opacities", self.opacities, (n,))
        k_rest = (deg + 1) ** 2 - 1
        for name, value, shape in (("scales", self.scales, (n, 3)), ("quats", self.quats, (n, 4)),
                                   ("shN", self.shN, (n, k_rest, 3))):
            if isinstance(value, RVQ):
                _check_rvq(name, value, n, math.prod(shape[1:]))
            else:
                _check_array(name, value, shape)
        if self.sh0 is not None:
            _check_array("sh0", self.sh0, (n, 1, 3))
        elif self.color_field is None:
            raise SplatkitError("sh0 may be None only when a colour field is present")
        if self.color_field is not None:
            _check_color_field(self.color_field)
        if self.normalization is not None:
            _check_array("normalization", self.normalization, (4, 4))
        if not isinstance(self.meta, dict):
            raise SplatkitError("meta must be a dict")
        if not isinstance(self.bits, dict):
            raise SplatkitError("bits must be a dict {attribute: bits}")
        for name, b in self.bits.items():
            if name not in QUANT_ATTRIBUTES:
                raise SplatkitError(f"bits: {name!r} cannot be quantised (choose from {', '.join(QUANT_ATTRIBUTES)})")
            if not _is_int(b) or not 1 <= b <= MAX_QUANT_BITS:
                raise SplatkitError(f"bits for {name} must be an integer in 1..{MAX_QUANT_BITS}, got {b!r}")
        if "sh0" in self.bits and self.sh0 is None:
            raise SplatkitError("bits for sh0 given but the model has no sh0")


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def _f32(v) -> np.ndarray:
    a = _to_numpy(v)
    if not np.issubdtype(a.dtype, np.floating):
        raise SplatkitError(f"expected a floating-point array, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _field(v) -> Field:
    if isinstance(v, RVQ):
        idx = _to_numpy(v.indices)
        if not np.issubdtype(idx.dtype, np.integer):
            raise SplatkitError(f"R-VQ indices must be integers, got dtype {idx.dtype}")
        return RVQ(_f32(v.codebooks), np.ascontiguousarray(idx, dtype=np.int64))
    return _f32(v)


def _plain(v: Field) -> np.ndarray:
    return v.decode() if isinstance(v, RVQ) else v


def _check_array(name: str, a, shape: Optional[tuple], cols: Optional[int] = None) -> None:
    if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.floating):
        raise SplatkitError(f"{name} must be a floating-point numpy array")
    if shape is None:  # [anything, cols]
        ok = a.ndim == 2 and a.shape[1] == cols
        want = f"[N, {cols}]"
    else:
        ok = a.shape == tuple(shape)
        want = str(list(shape))
    if not ok:
        raise SplatkitError(f"{name} has shape {list(a.shape)}, expected {want}")
    if not np.isfinite(a).all():
        raise SplatkitError(f"{name} contains NaN or inf")


def _check_rvq(name: str, q: RVQ, n: int, dim: int) -> None:
    cb, idx = q.codebooks, q.indices
    if not isinstance(cb, np.ndarray) or cb.ndim != 3:
        raise SplatkitError(f"{name} codebooks must be a numpy array [S, K, {dim}]")
    _check_array(f"{name} codebooks", cb, (cb.shape[0], cb.shape[1], dim))
    s, k = cb.shape[0], cb.shape[1]
    if s < 1 or k < 1 or k > 1 << 32:
        raise SplatkitError(f"{name} codebooks need at least one stage and 1..2^32 entries, "
                            f"got shape {list(cb.shape)}")
    if not isinstance(idx, np.ndarray) or not np.issubdtype(idx.dtype, np.integer):
        raise SplatkitError(f"{name} R-VQ indices must be an integer numpy array")
    if idx.shape != (n, s):
        raise SplatkitError(f"{name} R-VQ indices have shape {list(idx.shape)}, expected [{n}, {s}]")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= k):
        raise SplatkitError(f"{name} R-VQ indices outside 0..{k - 1}")


def _check_color_field(cf) -> None:
    if not isinstance(cf, dict) or set(cf) != {"config", "tensors"}:
        raise SplatkitError('color_field must be {"config": dict, "tensors": {name: array}}')
    if not isinstance(cf["config"], dict) or not isinstance(cf["tensors"], dict):
        raise SplatkitError('color_field must be {"config": dict, "tensors": {name: array}}')
    for name, t in cf["tensors"].items():
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
            raise SplatkitError(f"colour-field tensor names must be 1..{MAX_NAME_LEN} characters, got {name!r}")
        if not isinstance(t, np.ndarray) or t.ndim > MAX_NDIM:
            raise SplatkitError(f"colour-field tensor {name!r} must be an array with at most {MAX_NDIM} dims")
        _check_array(f"colour-field tensor {name!r}", t, t.shape)
    _quantized_names(cf)
    quantize_levels(cf)


def quantize_levels(cf: dict) -> int:
    """``levels`` (largest stored value) of the colour field's quantised tensors: ``2**bits - 1``
    for ``config["quantize_bits"]`` (1..8, default 8)."""
    return levels_for_bits(quantize_bits(cf), 'colour-field config "quantize_bits"')


def quantize_bits(cf: dict):
    """The colour field's ``config["quantize_bits"]`` as stored (unchecked), 8 when absent."""
    return cf["config"].get("quantize_bits", DEFAULT_QUANTIZE_BITS)


def levels_for_bits(bits, what: str = "bits") -> int:
    """``2**bits - 1`` for ``bits`` in 1..8; else a SplatkitError naming ``what``."""
    if not _is_int(bits) or not 1 <= bits <= 8:
        raise SplatkitError(f"{what} must be an integer in 1..8, got {bits!r}")
    return (1 << bits) - 1


def _quantized_names(cf: dict) -> set[str]:
    """The colour-field tensors stored with 8 bits (see the module docstring for the rule)."""
    names = cf["tensors"].keys()
    listed = cf["config"].get("quantize_8bit")
    if listed is None:
        return {k for k in names if k.endswith(HASH_TABLE_SUFFIXES)}
    if not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
        raise SplatkitError('colour-field config "quantize_8bit" must be a list of tensor names')
    unknown = sorted(set(listed) - set(names))
    if unknown:
        raise SplatkitError(f'colour-field config "quantize_8bit" names unknown tensors {unknown}')
    return set(listed)


# -- byte layout of one section -----------------------------------------------------------------
def _shuffle(a: np.ndarray) -> bytes:
    """Transpose to [rest, shape[0]] then split into byte planes (see module docstring)."""
    if a.size == 0:
        return b""
    rows = a.shape[0] if a.ndim else 1
    cols = np.ascontiguousarray(a.reshape(rows, -1).T)
    planes = cols.reshape(-1).view(np.uint8).reshape(-1, a.itemsize).T
    return np.ascontiguousarray(planes).tobytes()


def _unshuffle(buf: bytes, dtype: np.dtype, shape: tuple) -> np.ndarray:
    count = math.prod(shape)
    if count == 0:
        return np.zeros(shape, dtype=dtype)
    rows = shape[0] if shape else 1
    planes = np.frombuffer(buf, dtype=np.uint8).reshape(dtype.itemsize, count)
    values = np.ascontiguousarray(planes.T).view(dtype).reshape(count // rows, rows)
    return np.ascontiguousarray(values.T).reshape(shape)


def _index_dtype(k: int) -> str:
    return "uint8" if k <= 1 << 8 else "uint16" if k <= 1 << 16 else "uint32"


def _to_f16(name: str, a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = a.astype("<f2")
    if not np.isfinite(h).all():
        raise SplatkitError(f"{name} has values outside the float16 range (|x| > 65504)")
    return h


def quantize_columns(a: np.ndarray, bits: int) -> tuple[np.ndarray, dict]:
    """``q_affine``: each column of the last axis to ``bits`` between its min and max.
    Returns (uint8 / uint16 array, params); :func:`dequantize_columns` inverts it."""
    a64 = np.asarray(a, dtype=np.float64)
    levels = (1 << bits) - 1
    cols = a64.shape[-1] if a64.ndim else 1
    flat = a64.reshape(-1, cols)
    if flat.shape[0]:
        lo, hi = flat.min(axis=0), flat.max(axis=0)
    else:
        lo, hi = np.zeros(cols), np.zeros(cols)
    span = hi - lo
    step = np.where(span > 0, span / levels, 1.0)
    q = np.clip(np.rint((flat - lo) / step), 0, levels)
    dtype = np.uint8 if bits <= 8 else np.dtype("<u2")
    return q.astype(dtype).reshape(a64.shape), {"bits": int(bits), "min": lo.tolist(), "max": hi.tolist()}


def _delta_encode(q: np.ndarray) -> np.ndarray:
    """Zig-zag codes of the differences along axis 0 (the first row against 0), wrapped to the
    dtype's width; :func:`_delta_decode` inverts it exactly for any input."""
    width = 8 * q.dtype.itemsize
    d = np.diff(q.astype(np.int64), axis=0, prepend=np.zeros((1,) + q.shape[1:], np.int64))
    half = 1 << (width - 1)
    d = (d + half) % (1 << width) - half  # the wrapped difference in [-half, half)
    return np.where(d >= 0, 2 * d, -2 * d - 1).astype(q.dtype)


def _delta_decode(z: np.ndarray) -> np.ndarray:
    width = 8 * z.dtype.itemsize
    z64 = z.astype(np.int64)
    d = np.where(z64 % 2 == 0, z64 // 2, -(z64 + 1) // 2)
    return (np.cumsum(d, axis=0) % (1 << width)).astype(z.dtype)


def dequantize_columns(q: np.ndarray, params: dict) -> np.ndarray:
    """float64 values of a ``q_affine`` array (``params`` as :func:`quantize_columns` returns)."""
    levels = (1 << params["bits"]) - 1
    lo, hi = np.asarray(params["min"], dtype=np.float64), np.asarray(params["max"], dtype=np.float64)
    return lo + q.astype(np.float64) * ((hi - lo) / levels)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))  # no overflow for any finite x


def _u8_to_logit(u: np.ndarray) -> np.ndarray:
    p = np.clip(u.astype(np.float64) / 255.0, _OPACITY_EPS, 1.0 - _OPACITY_EPS)
    return (np.log(p) - np.log1p(-p)).astype(np.float32)


# -- writing ------------------------------------------------------------------------------------
def skz_to_bytes(compact: CompactSplats, level: int = DEFAULT_LEVEL, delta: bool = True) -> tuple[bytes, dict]:
    """Encode ``compact`` as ``.skz`` bytes. Returns (bytes, size report as in :func:`write_skz`).
    ``delta=False`` never delta-codes (a file version-2 readers can open)."""
    if not _is_int(level) or not 1 <= level <= 22:
        raise SplatkitError(f"zstd level must be an integer in 1..22, got {level!r}")
    if not isinstance(compact, CompactSplats):
        raise SplatkitError("write_skz needs a CompactSplats")
    compact.validate()
    n = compact.n
    order = morton_order(compact.means)

    # (name, encoding, stored array, params)
    plan: list[tuple[str, str, np.ndarray, Optional[dict]]] = []
    means = compact.means[order].astype(np.float64)
    if n:
        lo, hi = means.min(axis=0), means.max(axis=0)
        offset, scale = (lo + hi) / 2, (hi - lo) / 2
        scale[scale <= 0] = 1.0  # flat axis: every value maps to 0 exactly
    else:
        offset, scale = np.zeros(3), np.ones(3)
    bits = compact.bits
    if "means" in bits:
        plan.append(("means", "q_affine", *quantize_columns(means, bits["means"])))
    else:
        plan.append(("means", "f16_affine", _to_f16("means", (means - offset) / scale),
                     {"offset": offset.tolist(), "scale": scale.tolist()}))
    u8 = np.rint(_sigmoid(compact.opacities[order]) * 255.0).astype(np.uint8)
    plan.append(("opacities", "u8_sigmoid", u8, None))
    def plain(name: str, label: str, a: np.ndarray) -> tuple:
        if name in bits:
            return (label, "q_affine", *quantize_columns(a, bits[name]))
        return (label, "f16", _to_f16(label.replace("/", " "), a), None)

    if compact.sh0 is not None:
        plan.append(plain("sh0", "sh0", compact.sh0[order]))
    for name in ("scales", "quats", "shN"):
        value = getattr(compact, name)
        if isinstance(value, RVQ):
            k = value.codebooks.shape[1]
            plan.append(plain(name, f"{name}/codebooks", value.codebooks))
            plan.append((f"{name}/indices", "index", value.indices[order].astype(_DTYPES[_index_dtype(k)]), None))
        else:
            plan.append(plain(name, name, value[order]))
    config = None
    if compact.color_field is not None:
        config = compact.color_field["config"]
        quantized = _quantized_names(compact.color_field)
        levels = quantize_levels(compact.color_field)
        for tname, t in compact.color_field["tensors"].items():
            sname = _COLOR_PREFIX + tname
            if tname in quantized:
                lo_v = float(t.min()) if t.size else 0.0
                hi_v = float(t.max()) if t.size else 0.0
                span = hi_v - lo_v
                q = np.zeros(t.shape, np.uint8) if span <= 0 else np.rint(
                    (t.astype(np.float64) - lo_v) * (levels / span)).astype(np.uint8)
                params = {"min": lo_v, "max": hi_v}
                if levels != _MAX_LEVELS:  # 8-bit sections keep the version-1 params exactly
                    params["levels"] = levels
                plan.append((sname, "u8_minmax", q, params))
            else:
                plan.append((sname, "f16", _to_f16(f"colour-field tensor {tname!r}", t), None))

    cctx = zstandard.ZstdCompressor(level=level, write_content_size=True)
    sections, frames = [], []
    for name, encoding, arr, params in plan:
        raw = _shuffle(arr)
        frame = cctx.compress(raw)
        if delta and encoding == "q_affine" and "/" not in name and arr.shape[0] > 1:  # per-Gaussian rows only
            delta_raw = _shuffle(_delta_encode(arr))
            delta_frame = cctx.compress(delta_raw)
            if len(delta_frame) < len(frame):
                raw, frame, params = delta_raw, delta_frame, {**params, "delta": True}
        entry = {"name": name, "encoding": encoding, "dtype": arr.dtype.name, "shape": list(arr.shape),
                 "raw": len(raw), "compressed": len(frame)}
        if params is not None:
            entry["params"] = params
        sections.append(entry)
        frames.append(frame)
    manifest = {"n": n, "sh_degree": int(compact.sh_degree),
                "normalization": None if compact.normalization is None else compact.normalization.tolist(),
                "meta": compact.meta, "color_field_config": config, "sections": sections}
    try:
        manifest_bytes = json.dumps(manifest, allow_nan=False, sort_keys=True,
                                    separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise SplatkitError(f"meta or colour-field config is not plain JSON ({exc})")
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise SplatkitError(f"manifest is {len(manifest_bytes)} bytes, over the {MAX_MANIFEST_BYTES}-byte "
                            "limit (meta or colour-field config too large)")
    # Older readers know no q_affine / deltas: files without them keep the older version.
    version = (DELTA_VERSION if any(s.get("params", {}).get("delta") for s in sections if s["encoding"] == "q_affine")
               else QUANT_VERSION if any(s["encoding"] == "q_affine" for s in sections) else 1)
    body = b"".join([_HEADER.pack(MAGIC, version, len(manifest_bytes)), manifest_bytes, *frames])
    data = body + _CRC.pack(zlib.crc32(body))
    raw_total = sum(s["raw"] for s in sections)
    # Never write what read_skz would refuse.
    if raw_total > MAX_RAW_BYTES:
        raise SplatkitError(f"model needs {raw_total} uncompressed bytes, over the .skz limit of {MAX_RAW_BYTES}")
    if raw_total > MAX_EXPANSION * len(data):
        raise SplatkitError(f"model is degenerate: it compresses more than {MAX_EXPANSION}x, which "
                            ".skz readers reject as a decompression bomb")
    report = {
        "n": n,
        "file_bytes": len(data),
        "manifest_bytes": len(manifest_bytes),
        "bytes_per_gaussian": len(data) / n if n else None,
        "float32_bytes": _float32_bytes(compact),
        "sections": {s["name"]: {"raw": s["raw"], "compressed": s["compressed"]} for s in sections},
    }
    return data, report


def _float32_bytes(c: CompactSplats) -> int:
    """Size of the same model as plain float32 parameters (a PLY-like baseline for reports)."""
    per = 3 + 3 + 4 + 1 + 3 * (c.sh_degree + 1) ** 2
    colour = sum(t.size for t in c.color_field["tensors"].values()) if c.color_field else 0
    return 4 * (c.n * per + colour)


def write_skz(path: Union[str, Path], compact: CompactSplats, level: int = DEFAULT_LEVEL) -> dict:
    """Write ``compact`` to ``path`` atomically. Returns a size report: ``n``, ``file_bytes``,
    ``manifest_bytes``, ``bytes_per_gaussian``, ``float32_bytes`` (uncompressed baseline) and
    ``sections`` = {name: {"raw", "compressed"}}."""
    data, report = skz_to_bytes(compact, level)
    try:
        write_bytes_atomic(path, data)
    except OSError as exc:
        raise SplatkitError(f"cannot write .skz file ({exc.strerror or exc})", path)
    report["path"] = str(path)
    return report


# -- reading ------------------------------------------------------------------------------------
def read_skz(path: Union[str, Path]) -> CompactSplats:
    """Read and fully validate a ``.skz`` file (see the module docstring)."""
    path = Path(path)
    try:
        if not path.is_file():
            raise SplatkitError("not found or not a file", path)
        size = path.stat().st_size
        if size > MAX_RAW_BYTES + MAX_MANIFEST_BYTES + (64 << 20):  # declared sizes could not fit
            raise SplatkitError(f"file is {size} bytes, larger than any .skz splatkit writes", path)
        data = path.read_bytes()
    except OSError as exc:
        raise SplatkitError(f"cannot read .skz file ({exc.strerror or exc})", path)
    return skz_from_bytes(data, path)


def skz_from_bytes(data: bytes, path: Union[str, Path, None] = None) -> CompactSplats:
    """Decode ``.skz`` bytes (untrusted) into a :class:`CompactSplats`; ``path`` is for messages."""

    def fail(msg: str) -> SplatkitError:
        return SplatkitError(f"invalid .skz file: {msg}", path)

    data = memoryview(data).cast("B")  # slicing without copies; any bytes-like input
    if len(data) < _HEADER.size + _CRC.size:
        raise fail(f"only {len(data)} bytes, too short for a header")
    magic, version, manifest_len = _HEADER.unpack(data[:_HEADER.size])
    if magic != MAGIC:
        raise SplatkitError("not a .skz file (bad magic bytes)", path)
    if version > FORMAT_VERSION:
        raise SplatkitError(f".skz format version {version} was written by a newer splatkit; this one "
                            f"reads up to version {FORMAT_VERSION} (upgrade splatkit)", path)
    if version < 1:
        raise fail(f"unsupported format version {version}")
    if manifest_len > MAX_MANIFEST_BYTES:
        raise fail(f"manifest length {manifest_len} is over the {MAX_MANIFEST_BYTES}-byte limit")
    sections_start = _HEADER.size + manifest_len
    body_end = len(data) - _CRC.size
    if sections_start > body_end:
        raise fail("truncated (manifest runs past the end of the file)")
    (crc,) = _CRC.unpack(data[body_end:])
    if zlib.crc32(data[:body_end]) != crc:
        raise fail("checksum mismatch (the file is corrupt or truncated)")

    m = _parse_manifest(bytes(data[_HEADER.size:sections_start]), fail)
    n, deg, sections = m["n"], m["sh_degree"], m["sections"]
    by_name = _check_layout(sections, n, deg, m["color_field_config"] is not None, fail)
    if version < QUANT_VERSION and any(s["encoding"] == "q_affine" for s in sections):
        raise fail(f"q_affine sections need format version {QUANT_VERSION}, the header says {version}")
    if version < DELTA_VERSION and any(s["encoding"] == "q_affine" and s["params"].get("delta") for s in sections):
        raise fail(f"delta-coded sections need format version {DELTA_VERSION}, the header says {version}")

    total_compressed = sum(s["compressed"] for s in sections)
    if sections_start + total_compressed > body_end:
        raise fail("truncated (sections run past the end of the file)")
    if sections_start + total_compressed < body_end:
        raise fail(f"{body_end - sections_start - total_compressed} unexpected bytes after the last section")
    raw_total = sum(s["raw"] for s in sections)
    if raw_total > MAX_RAW_BYTES:
        raise fail(f"declares {raw_total} uncompressed bytes, over the limit of {MAX_RAW_BYTES}")
    if raw_total > MAX_EXPANSION * len(data):
        raise fail(f"declares {raw_total} uncompressed bytes for a {len(data)}-byte file "
                   f"(over {MAX_EXPANSION}x: a decompression bomb or a corrupt header)")

    # Every size below is now checked: decompress and decode section by section.
    dctx = zstandard.ZstdDecompressor()
    arrays: dict[str, np.ndarray] = {}
    pos = sections_start
    for s in sections:
        frame = data[pos:pos + s["compressed"]]
        pos += s["compressed"]
        raw = _decompress(dctx, frame, s["raw"], s["name"], fail)
        stored = _unshuffle(raw, _DTYPES[s["dtype"]], tuple(s["shape"]))
        arrays[s["name"]] = _decode_section(s, stored, by_name, fail)

    def fld(name: str) -> Field:
        if name in arrays:
            return arrays[name]
        return RVQ(arrays[f"{name}/codebooks"], arrays[f"{name}/indices"])

    color_field = None
    if m["color_field_config"] is not None:
        color_field = {"config": m["color_field_config"],
                       "tensors": {k[len(_COLOR_PREFIX):]: v for k, v in arrays.items()
                                   if k.startswith(_COLOR_PREFIX)}}
    norm = m["normalization"]
    bits = {s["name"].split("/")[0]: s["params"]["bits"] for s in sections if s["encoding"] == "q_affine"}
    compact = CompactSplats(
        means=arrays["means"], opacities=arrays["opacities"], scales=fld("scales"),
        quats=fld("quats"), sh0=arrays.get("sh0"), shN=fld("shN"), sh_degree=deg,
        color_field=color_field, normalization=None if norm is None else np.asarray(norm, dtype=np.float64),
        meta=m["meta"], bits=bits)
    try:
        compact.validate()
    except SplatkitError as exc:
        raise fail(exc.message)
    return compact


def _parse_manifest(raw: bytes, fail) -> dict:
    def no_constants(name):
        raise ValueError(f"{name} is not allowed")

    def no_duplicates(pairs):
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError("duplicate key")
        return d

    try:
        m = json.loads(raw.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        why = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:80]
        raise fail(f"manifest is not valid JSON ({why})")
    if not isinstance(m, dict) or set(m) != _MANIFEST_KEYS:
        raise fail(f"manifest must be an object with exactly the keys {sorted(_MANIFEST_KEYS)}")
    if not _is_int(m["n"]) or m["n"] < 0:
        raise fail(f"n must be a non-negative integer, got {_short(m['n'])}")
    if not _is_int(m["sh_degree"]) or not 0 <= m["sh_degree"] <= MAX_SH_DEGREE:
        raise fail(f"sh_degree must be an integer in 0..{MAX_SH_DEGREE}, got {_short(m['sh_degree'])}")
    norm = m["normalization"]
    if norm is not None and not (isinstance(norm, list) and len(norm) == 4 and all(
            isinstance(r, list) and len(r) == 4 and all(_is_num(v) for v in r) for r in norm)):
        raise fail("normalization must be null or a 4x4 list of finite numbers")
    if not isinstance(m["meta"], dict):
        raise fail("meta must be a JSON object")
    if m["color_field_config"] is not None and not isinstance(m["color_field_config"], dict):
        raise fail("color_field_config must be null or a JSON object")
    secs = m["sections"]
    if not isinstance(secs, list) or len(secs) > MAX_SECTIONS:
        raise fail(f"sections must be a list of at most {MAX_SECTIONS} entries")
    for i, s in enumerate(secs):
        _check_section_entry(i, s, fail)
    return m


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _check_section_entry(i: int, s, fail) -> None:
    if not isinstance(s, dict) or not (_SECTION_KEYS <= set(s) <= _SECTION_KEYS | {"params"}):
        raise fail(f"section {i} must be an object with keys {sorted(_SECTION_KEYS)} (+ params)")
    name = s["name"]
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN + len(_COLOR_PREFIX):
        raise fail(f"section {i} has an invalid name")
    if s["encoding"] not in _ENCODING_DTYPES:
        raise fail(f"section {name!r} has unknown encoding {_short(s['encoding'])}")
    if s["dtype"] not in _ENCODING_DTYPES[s["encoding"]]:
        raise fail(f"section {name!r}: dtype {_short(s['dtype'])} is not allowed for encoding {s['encoding']}")
    shape = s["shape"]
    if not isinstance(shape, list) or len(shape) > MAX_NDIM or not all(_is_int(d) and d >= 0 for d in shape):
        raise fail(f"section {name!r}: shape must be a list of at most {MAX_NDIM} non-negative integers")
    if any(d > MAX_RAW_BYTES for d in shape):  # also keeps prod() below cheap
        raise fail(f"section {name!r}: shape {_short(shape)} is too large")
    for key in ("raw", "compressed"):
        if not _is_int(s[key]) or s[key] < 0:
            raise fail(f"section {name!r}: {key} must be a non-negative integer")
    if s["raw"] != math.prod(shape) * _DTYPES[s["dtype"]].itemsize:
        raise fail(f"section {name!r}: raw length {_short(s['raw'])} does not match shape {shape} "
                   f"of {s['dtype']}")
    params = s.get("params")
    if s["encoding"] == "f16_affine":
        ok = (isinstance(params, dict) and set(params) == {"offset", "scale"}
              and all(isinstance(params[k], list) and len(params[k]) == 3 and all(_is_num(v) for v in params[k])
                      for k in ("offset", "scale"))
              and all(0 < v <= 1e30 for v in params["scale"]) and all(abs(v) <= 1e30 for v in params["offset"]))
        if not ok:
            raise fail(f"section {name!r}: params must be {{offset: [3 numbers], scale: [3 positive numbers]}}")
    elif s["encoding"] == "u8_minmax":
        levels = params.get("levels", _MAX_LEVELS) if isinstance(params, dict) else None
        ok = (isinstance(params, dict) and set(params) in ({"min", "max"}, {"min", "max", "levels"})
              and _is_num(params["min"]) and _is_num(params["max"]) and params["min"] <= params["max"]
              and max(abs(params["min"]), abs(params["max"])) <= _F32_MAX
              and _is_int(levels) and 1 <= levels <= _MAX_LEVELS)
        if not ok:
            raise fail(f"section {name!r}: params must be {{min, max[, levels]}}: finite numbers with min <= max, "
                       f"levels an integer in 1..{_MAX_LEVELS}")
    elif s["encoding"] == "q_affine":
        cols = shape[-1] if shape else 1
        b = params.get("bits") if isinstance(params, dict) else None
        ok = (isinstance(params, dict) and set(params) in ({"bits", "min", "max"}, {"bits", "min", "max", "delta"})
              and params.get("delta", True) is True and (not params.get("delta") or "/" not in name)
              and _is_int(b)
              and 1 <= b <= MAX_QUANT_BITS and s["dtype"] == ("uint8" if b <= 8 else "uint16")
              and len(shape) >= 1 and cols <= MAX_QUANT_COLUMNS
              and all(isinstance(params[k], list) and len(params[k]) == cols
                      and all(_is_num(v) and abs(v) <= _F32_MAX for v in params[k]) for k in ("min", "max"))
              and all(lo <= hi for lo, hi in zip(params["min"], params["max"])))
        if not ok:
            raise fail(f"section {name!r}: params must be {{bits: 1..{MAX_QUANT_BITS} (uint8 up to 8, else "
                       f"uint16), min and max: one finite number per column of the last axis (at most "
                       f"{MAX_QUANT_COLUMNS}), min <= max[, delta: true (per-Gaussian sections only)]}}")
    elif params is not None:
        raise fail(f"section {name!r}: encoding {s['encoding']} takes no params")


def _check_layout(sections: list, n: int, deg: int, has_color: bool, fail) -> dict:
    """Names, encodings and shapes against ``n``, the SH degree and each other."""
    by_name: dict[str, dict] = {}
    for s in sections:
        if s["name"] in by_name:
            raise fail(f"section {s['name']!r} appears twice")
        by_name[s["name"]] = s

    def expect(name: str, encoding: str, shape: list, quantizable: bool = False) -> None:
        s = by_name.get(name)
        if s is None:
            raise fail(f"missing section {name!r}")
        if s["encoding"] != encoding and not (quantizable and s["encoding"] == "q_affine"):
            raise fail(f"section {name!r} has encoding {s['encoding']}, expected {encoding}"
                       + (" or q_affine" if quantizable else ""))
        if s["shape"] != shape:
            raise fail(f"section {name!r} has shape {_short(s['shape'])}, expected {shape}")

    known = {"means", "opacities"}
    expect("means", "f16_affine", [n, 3], quantizable=True)
    expect("opacities", "u8_sigmoid", [n])
    if "sh0" in by_name:
        expect("sh0", "f16", [n, 1, 3], quantizable=True)
        known.add("sh0")
    elif not has_color:
        raise fail("missing section 'sh0' (and no colour field replaces it)")
    k_rest = (deg + 1) ** 2 - 1
    for name, dim, shape in (("scales", 3, [n, 3]), ("quats", 4, [n, 4]), ("shN", 3 * k_rest, [n, k_rest, 3])):
        cb, ix = f"{name}/codebooks", f"{name}/indices"
        if name in by_name:
            if cb in by_name or ix in by_name:
                raise fail(f"{name} is stored both plain and as R-VQ")
            expect(name, "f16", shape, quantizable=True)
            known.add(name)
            continue
        if cb not in by_name or ix not in by_name:
            raise fail(f"missing section {name!r} (or {cb!r} and {ix!r})")
        cshape = by_name[cb]["shape"]
        if by_name[cb]["encoding"] not in ("f16", "q_affine") or len(cshape) != 3 or cshape[2] != dim \
                or cshape[0] < 1 or not 1 <= cshape[1] <= 1 << 32:
            raise fail(f"section {cb!r} must be f16 or q_affine [S>=1, 1<=K<=2^32, {dim}], got {_short(cshape)}")
        expect(ix, "index", [n, cshape[0]])
        known.update((cb, ix))
    for name, s in by_name.items():
        if name in known:
            continue
        if not name.startswith(_COLOR_PREFIX) or len(name) == len(_COLOR_PREFIX):
            raise fail(f"unknown section {name!r}")
        if not has_color:
            raise fail(f"section {name!r} but the manifest has no colour-field config")
        if s["encoding"] not in ("f16", "u8_minmax"):
            raise fail(f"section {name!r} has encoding {s['encoding']}, expected f16 or u8_minmax")
    return by_name


def _decompress(dctx, frame: memoryview, raw_len: int, name: str, fail) -> bytes:
    try:
        params = zstandard.get_frame_parameters(frame)
        if params.content_size in (zstandard.CONTENTSIZE_UNKNOWN, zstandard.CONTENTSIZE_ERROR):
            raise fail(f"section {name!r}: zstd frame header has no content size")
        # The content size in the frame header decides the output allocation (zstandard ignores
        # max_output_size when it is present), so it must equal the checked raw length first.
        if params.content_size != raw_len:
            raise fail(f"section {name!r}: zstd frame declares {params.content_size} bytes, manifest {raw_len}")
        if params.dict_id != 0:
            raise fail(f"section {name!r}: zstd frame needs a dictionary")
        out = dctx.decompress(frame, max_output_size=raw_len, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise fail(f"section {name!r} does not decompress ({exc})")
    if len(out) != raw_len:
        raise fail(f"section {name!r} decompresses to {len(out)} bytes, expected {raw_len}")
    return out


def _decode_section(s: dict, a: np.ndarray, by_name: dict, fail) -> np.ndarray:
    name, enc = s["name"], s["encoding"]
    with np.errstate(all="ignore"):  # overflow is detected below, not warned about
        if enc == "f16":
            out = a.astype(np.float32)
        elif enc == "f16_affine":
            p = s["params"]
            out = a.astype(np.float64) * np.asarray(p["scale"]) + np.asarray(p["offset"])
            if out.size and not (np.abs(out) <= _F32_MAX).all():
                raise fail(f"section {name!r} decodes outside the float32 range")
            out = out.astype(np.float32)
        elif enc == "u8_sigmoid":
            out = _u8_to_logit(a)
        elif enc == "q_affine":
            if s["params"].get("delta"):
                a = _delta_decode(a)
            if a.size and int(a.max()) > (1 << s["params"]["bits"]) - 1:
                raise fail(f"section {name!r} has values above its {s['params']['bits']}-bit range")
            out = dequantize_columns(a, s["params"])
            if out.size and not (np.abs(out) <= _F32_MAX).all():
                raise fail(f"section {name!r} decodes outside the float32 range")
            out = out.astype(np.float32)
        elif enc == "u8_minmax":
            lo, hi = s["params"]["min"], s["params"]["max"]
            levels = s["params"].get("levels", _MAX_LEVELS)
            if a.size and int(a.max()) > levels:
                raise fail(f"section {name!r} has values above its {levels} quantisation levels")
            out = (lo + a.astype(np.float64) * ((hi - lo) / levels)).astype(np.float32)
        else:  # index
            k = by_name[name.rsplit("/", 1)[0] + "/codebooks"]["shape"][1]
            if a.size and int(a.max()) >= k:
                raise fail(f"section {name!r} has indices >= the codebook size {k}")
            return a.astype(np.int64)
    if not np.isfinite(out).all():
        raise fail(f"section {name!r} contains NaN or inf")
    return out
