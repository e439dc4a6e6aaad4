"""Niantic's ``.spz`` (github.com/nianticlabs/spz: ``README.md``, ``docs`` v3 spec, ``src/cc/load-spz.cc``).

Container (versions 1-3): one gzip stream holding a 16-byte little-endian header::

    uint32 magic 0x5053474e ("NGSP")   uint32 version   uint32 numPoints
    uint8 shDegree   uint8 fractionalBits   uint8 flags (0x1 antialiased, 0x2 extensions)   uint8 reserved

then one array per attribute, in this order (all little-endian):

* positions, 9 bytes each: x y z as 24-bit signed fixed point with ``fractionalBits`` fractional
  bits (version 1: 3 x float16);
* alphas, 1 byte: ``round(sigmoid(opacity) * 255)``;
* colours, 3 bytes: the DC SH coefficient as ``round(f_dc * 0.15 * 255 + 127.5)`` (0.15, not SH_C0,
  so base colours a little outside [0, 1] survive);
* scales, 3 bytes: ``round((log_scale + 10) * 16)``;
* rotations: version 3 packs the unit quaternion (x y z w order) as "smallest three" in a uint32 —
  bits 31-30 index of the largest component (made positive), then the other three in index order,
  10 bits each: sign bit then ``round(511 * |q| / sqrt(1/2))``; version 2 stores x y z as
  ``round(q * 127.5 + 127.5)`` after flipping q so that w >= 0;
* SH bands 1+, ``3 * K`` bytes per Gaussian, coefficient-major (channel fastest), as
  ``round(v * 128) + 128`` rounded to a bucket of 8 (band 1, "5 bits") or 16 (bands 2+, "4 bits").

Version 4 (2026) is a different container: a 32-byte plain header (``numStreams`` and
``tocByteOffset`` after the flags), optional extension records up to the table of contents of
``numStreams`` x (uint64 compressed size, uint64 size), then each non-empty attribute array above
as its own zstd frame, in the same order. We read it and write it on request (``version=4``); by
default we write version 3, which the v3 spec calls current and which every reader we checked
accepts (the spz library and gsply read 1-4; PlayCanvas splat-transform reads through the spz
library and now writes version 4 by default), while viewers built on older spz releases read only
1-3.

Frames: the file holds RUB axes (right, up, back: OpenGL / three.js). The library converts from
the frame its caller declares (``PackOptions.from``; its README calls PLY data RDF, right, down,
front as in OpenCV / COLMAP, and callers pass RDF for it) by negating y and z, the quaternion's
x y z by ``(1, -1, -1)`` and each SH coefficient by its parity under that flip (the library's
table lists Y_4^4 as odd in y, but x^4 - 6x^2y^2 + y^4 is even, so we use +1). Left UNSPECIFIED
(as the stock ``ply_to_spz`` does) nothing is converted, which the README warns harms
interoperability. splatkit's world frame is the PLY's, so by default we write what the library
writes from our PLY with ``from = RDF`` and read back to RDF; ``coordinates="rub"`` passes the
file's axes through unchanged (what gsply does).

Empty clouds are refused both ways: the reference library rejects ``numPoints == 0``.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from splatkit.errors import DataError, SplatkitError
from splatkit.export._shared import (FormatExport, logit, read_file_bytes, round_half_away, sigmoid,
                                     splat_arrays, to_tensors, unit_quats)
from splatkit.render.sh import sh_basis

MAGIC = 0x5053474E
WRITE_VERSION = 3
ZSTD_LEVEL = 12  # version 4's frames: most of level 19's size at a fraction of its time
COLOR_SCALE = 0.15
MAX_SH_DEGREE = 4  # the library reads and writes degree 4 (gsply stops at 3)
MAX_FRACTIONAL_BITS = 24
FLAG_ANTIALIASED = 0x1
FLAG_EXTENSIONS = 0x2
SQRT1_2 = math.sqrt(0.5)
_HEADER = struct.Struct("<IIIBBBB")
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")


def notes(fractional_bits: int = 12) -> str:
    return (f"positions 24-bit fixed point (step 1/{1 << fractional_bits}), log-scales 8-bit in steps of 1/16 "
            "over [-10, 5.9], opacity and colour 8-bit, rotation 9 bits + sign per component, SH bands 5 bits "
            "(band 1) / 4 bits (bands 2+) in [-1, 1]; stored in spz's RUB axes (y and z negated from the PLY)")


def rdf_rub_sh_signs(degree: int) -> np.ndarray:
    """Sign of each higher-band SH coefficient (``shN`` order) under ``(x, y, z) -> (x, -y, -z)``.

    Every real SH basis function is even or odd under this half-turn about x; we read the parity
    off splatkit's own basis instead of copying a table (it equals the spz library's ``flipSh``)."""
    if degree == 0:
        return np.zeros(0)
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(64, 3, generator=g, dtype=torch.float64), dim=1)
    y = sh_basis(degree, dirs)
    y_flip = sh_basis(degree, dirs * torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    ratio = (y * y_flip).sum(0) / (y * y).sum(0)
    return np.sign(ratio.numpy()[1:])


def _flip_frame(means, quats_wxyz, shN, degree):
    """RDF <-> RUB (an involution): negate y and z, conjugate the rotation by the same flip."""
    f = np.array([1.0, -1.0, -1.0])
    return means * f, quats_wxyz * np.array([1.0, 1.0, -1.0, -1.0]), shN * rdf_rub_sh_signs(degree)[None, :, None]


def _check_coordinates(coordinates: str) -> str:
    c = coordinates.lower()
    if c not in ("rdf", "rub"):
        raise SplatkitError(f"spz coordinates must be 'rdf' (PLY / OpenCV axes) or 'rub' (the file's own), "
                            f"got {coordinates!r}")
    return c


# -- writing ------------------------------------------------------------------------------------
def _to_u8(x: np.ndarray) -> np.ndarray:
    """The library's ``toUint8``: round half away from zero, clamp to [0, 255]."""
    return np.clip(round_half_away(x), 0, 255).astype(np.uint8)


def _fractional_bits(means: np.ndarray, wanted: int = 12) -> int:
    """The library's 12 bits, fewer when a coordinate would overflow 24 signed bits (readers honour
    the header's value)."""
    limit = (1 << 23) - 1
    biggest = float(np.abs(means).max()) if means.size else 0.0
    if biggest * (1 << wanted) <= limit - 0.5:
        return wanted
    bits = math.floor(math.log2((limit - 0.5) / biggest)) if biggest > 0 else wanted
    if bits < 0:
        raise SplatkitError(f"positions up to {biggest:.6g} do not fit spz's 24-bit fixed point "
                            f"(|x| must stay below {limit})")
    return bits


def _pack_smallest_three(q_xyzw: np.ndarray) -> np.ndarray:
    largest = np.argmax(np.abs(q_xyzw), axis=1)  # first index on ties, like the library's strict '>'
    rows = np.arange(len(q_xyzw))
    negate = q_xyzw[rows, largest] < 0
    comp = largest.astype(np.uint32)
    for i in range(4):
        skip = largest == i
        neg = ((q_xyzw[:, i] < 0) ^ negate).astype(np.uint32)
        mag = np.minimum(np.floor(511.0 * np.abs(q_xyzw[:, i]) / SQRT1_2 + 0.5), 511).astype(np.uint32)
        comp = np.where(skip, comp, (comp << np.uint32(10)) | (neg << np.uint32(9)) | mag)
    return comp.astype("<u4").view(np.uint8).reshape(-1, 4)


def _pack_first_three(q_xyzw: np.ndarray) -> np.ndarray:
    sign = np.where(q_xyzw[:, 3] < 0, -127.5, 127.5)[:, None]
    return _to_u8(q_xyzw[:, :3] * sign + 127.5)


def _quantize_sh(sh: np.ndarray) -> np.ndarray:
    """``sh`` [N, K, 3] -> bytes: 8-bit ``round(v*128)+128`` snapped to buckets of 8 (band 1) or 16."""
    q = round_half_away(sh * 128.0) + 128.0
    bucket = np.where(np.arange(sh.shape[1]) < 3, 8.0, 16.0)[None, :, None]
    q = np.fix((q + bucket // 2) / bucket) * bucket  # C integer division truncates toward zero
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(splats: dict, sh_degree: int, *, version: int = WRITE_VERSION, coordinates: str = "rdf",
               antialiased: bool = False) -> tuple[bytes, int, int, int]:
    """``(file bytes, Gaussians written, Gaussians dropped, fractional bits)``; ``coordinates`` is the
    frame the splats are given in (``rdf``: converted to the file's RUB, ``rub``: stored as is)."""
    if version not in (2, 3, 4):
        raise SplatkitError(f"spz version {version} cannot be written (2, 3 or 4; 3 is the default)")
    coordinates = _check_coordinates(coordinates)
    a, dropped = splat_arrays(splats, sh_degree, MAX_SH_DEGREE, "spz")
    degree = int(sh_degree)
    means, quats, shN = a["means"], a["quats"], a["shN"]
    if coordinates == "rdf":
        means, quats, shN = _flip_frame(means, quats, shN, degree)
    n = len(means)
    bits = _fractional_bits(means)
    fixed = round_half_away(means * (1 << bits)).astype(np.int64) & 0xFFFFFF
    positions = ((fixed[..., None] >> np.array([0, 8, 16])) & 0xFF).astype(np.uint8)
    q_xyzw = quats[:, [1, 2, 3, 0]]
    rotations = _pack_smallest_three(q_xyzw) if version >= 3 else _pack_first_three(q_xyzw)
    flags = FLAG_ANTIALIASED if antialiased else 0
    arrays = [positions.tobytes(), _to_u8(sigmoid(a["opacities"]) * 255.0).tobytes(),
              _to_u8(a["sh0"] * (COLOR_SCALE * 255.0) + 127.5).tobytes(), _to_u8((a["scales"] + 10.0) * 16.0).tobytes(),
              rotations.tobytes(), _quantize_sh(shN).tobytes()]
    if version == 4:
        return _ngsp_container(arrays, n, degree, bits, flags), n, dropped, bits
    raw = b"".join([_HEADER.pack(MAGIC, version, n, degree, bits, flags, 0), *arrays])
    return gzip.compress(raw, compresslevel=6, mtime=0), n, dropped, bits


def _ngsp_container(arrays: list[bytes], n: int, degree: int, bits: int, flags: int) -> bytes:
    """Version 4: the 32-byte header, the table of contents right after it (no extension records),
    then one zstd frame per non-empty attribute array, in the version-3 order (module docstring)."""
    import zstandard

    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_content_size=True)
    frames = [(cctx.compress(a), len(a)) for a in arrays if a]
    header = _HEADER_V4.pack(MAGIC, 4, n, degree, bits, flags, len(frames), _HEADER_V4.size)
    toc = np.array([[len(f), size] for f, size in frames], dtype="<u8").tobytes()
    return header + toc + b"".join(f for f, _ in frames)


def write_spz(path: str | Path, splats: dict, sh_degree: int, *, version: int = WRITE_VERSION,
              coordinates: str = "rdf", antialiased: bool = False) -> FormatExport:
    """Write parameters as ``.spz`` atomically: gzip version 3 by default, ``version=4`` the NGSP
    container with zstd frames (what splat-transform now writes by default); see the module docstring."""
    from splatkit.utils.atomic import write_bytes_atomic

    data, written, dropped, bits = encode_spz(splats, sh_degree, version=version, coordinates=coordinates,
                                              antialiased=antialiased)
    path = Path(path)
    write_bytes_atomic(path, data)
    return FormatExport(path, "spz", written, dropped, int(sh_degree), notes(bits))


# -- reading ------------------------------------------------------------------------------------
def _section_sizes(n: int, version: int, degree: int) -> list[tuple[str, int]]:
    k_rest = (degree + 1) ** 2 - 1
    return [("positions", n * (6 if version == 1 else 9)), ("alphas", n), ("colors", 3 * n), ("scales", 3 * n),
            ("rotations", n * (4 if version >= 3 else 3)), ("sh", 3 * k_rest * n)]


def _check_header(version, n, degree, bits, path, low=1, high=3):
    if not low <= version <= high:
        raise DataError(f"unsupported SPZ version {version} in this container (expected {low}-{high})", path)
    if degree > MAX_SH_DEGREE:
        raise DataError(f"SPZ header has SH degree {degree} (at most {MAX_SH_DEGREE})", path)
    if bits > MAX_FRACTIONAL_BITS:
        raise DataError(f"SPZ header has {bits} fractional bits (at most {MAX_FRACTIONAL_BITS})", path)
    if n == 0:
        raise DataError("SPZ file contains no Gaussians", path)


def _unpack_smallest_three(r: np.ndarray) -> np.ndarray:
    comp = r.reshape(-1, 4).copy().view("<u4")[:, 0].astype(np.uint32)
    largest = (comp >> np.uint32(30)).astype(np.int64)
    q = np.zeros((len(comp), 4))
    for i in (3, 2, 1, 0):  # the last component written sits in the low bits
        use = largest != i
        mag = (comp & np.uint32(511)).astype(np.float64)
        neg = ((comp >> np.uint32(9)) & np.uint32(1)).astype(bool)
        q[:, i] = np.where(use, np.where(neg, -1.0, 1.0) * SQRT1_2 * mag / 511.0, 0.0)
        comp = np.where(use, comp >> np.uint32(10), comp)
    rows = np.arange(len(q))
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1.0 - (q ** 2).sum(axis=1)))
    return q


def _decode_sections(sec: dict[str, bytes], n: int, version: int, degree: int, bits: int,
                     coordinates: str) -> tuple[dict, int]:
    u8 = {k: np.frombuffer(v, dtype=np.uint8) for k, v in sec.items()}
    if version == 1:  # float16 positions, never released but still read by the library
        means = np.frombuffer(sec["positions"], dtype="<f2").astype(np.float64).reshape(n, 3)
    else:
        b = u8["positions"].reshape(n, 3, 3).astype(np.int64)
        fixed = b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16)
        fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
        means = fixed / float(1 << bits)
    scales = u8["scales"].reshape(n, 3) / 16.0 - 10.0
    if version >= 3:
        q_xyzw = _unpack_smallest_three(u8["rotations"])
    else:
        xyz = u8["rotations"].reshape(n, 3) / 127.5 - 1.0
        q_xyzw = np.concatenate([xyz, np.sqrt(np.maximum(0.0, 1.0 - (xyz ** 2).sum(axis=1)))[:, None]], axis=1)
    quats = unit_quats(q_xyzw[:, [3, 0, 1, 2]])
    # The library clamps to [1/255, 254/255]; half a step keeps every byte's own value finite.
    opacities = logit(u8["alphas"] / 255.0, 0.5 / 255.0)
    sh0 = (u8["colors"].reshape(n, 3) / 255.0 - 0.5) / COLOR_SCALE
    k_rest = (degree + 1) ** 2 - 1
    shN = (u8["sh"].reshape(n, k_rest, 3).astype(np.float64) - 128.0) / 128.0
    if coordinates == "rdf":
        means, quats, shN = _flip_frame(means, quats, shN, degree)
    return to_tensors(means, scales, quats, opacities, sh0, shN), degree


def _split(payload: bytes, sizes: list[tuple[str, int]]) -> dict[str, bytes]:
    out, at = {}, 0
    for name, size in sizes:
        out[name] = payload[at:at + size]
        at += size
    return out


def _decode_gzip_container(data: bytes, path, coordinates: str) -> tuple[dict, int]:
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"not a valid SPZ file: the gzip stream is damaged or truncated ({exc})", path)
    if len(raw) < _HEADER.size:
        raise DataError(f"not a valid SPZ file: {len(raw)} bytes after gunzip, the header alone is 16", path)
    magic, version, n, degree, bits, flags, _ = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        raise DataError(f"not an SPZ file: magic 0x{magic:08x}, expected 0x{MAGIC:08x}", path)
    if version >= 4:
        raise DataError(f"SPZ version {version} must use the NGSP container, not a gzip stream", path)
    _check_header(version, n, degree, bits, path)
    sizes = _section_sizes(n, version, degree)
    need = _HEADER.size + sum(s for _, s in sizes)
    if len(raw) < need:
        raise DataError(f"SPZ data truncated or count mismatch: the header says {n} Gaussians ({need} bytes), "
                        f"the stream holds {len(raw)}", path)
    # The library appends extension records after the arrays (flag 0x2); they carry nothing we use.
    if len(raw) > need and not flags & FLAG_EXTENSIONS:
        raise DataError(f"SPZ count mismatch: the header says {n} Gaussians ({need} bytes), the stream holds "
                        f"{len(raw)}", path)
    return _decode_sections(_split(raw[_HEADER.size:need], sizes), n, version, degree, bits, coordinates)


def _decode_ngsp_container(data: bytes, path, coordinates: str) -> tuple[dict, int]:
    import zstandard

    if len(data) < _HEADER_V4.size:
        raise DataError(f"SPZ file truncated: {len(data)} bytes, the version 4 header alone is 32", path)
    magic, version, n, degree, bits, flags, n_streams, toc = _HEADER_V4.unpack_from(data)
    _check_header(version, n, degree, bits, path, low=4, high=4)
    sizes = [(name, s) for name, s in _section_sizes(n, version, degree) if s]
    if n_streams != len(sizes):
        raise DataError(f"SPZ count mismatch: {n_streams} streams for {len(sizes)} non-empty attributes", path)
    toc_end = toc + 16 * n_streams
    if toc < _HEADER_V4.size or toc_end > len(data):
        raise DataError(f"SPZ file truncated or damaged: table of contents at {toc}..{toc_end} of {len(data)} bytes",
                        path)
    table = np.frombuffer(data, dtype="<u8", count=2 * n_streams, offset=toc).reshape(n_streams, 2)
    sections, at = {}, toc_end
    dctx = zstandard.ZstdDecompressor()
    for (name, want), (csize, usize) in zip(sizes, table.tolist()):
        if usize != want:
            raise DataError(f"SPZ count mismatch: {name} holds {usize} bytes, {n} Gaussians need {want}", path)
        if at + csize > len(data):
            raise DataError(f"SPZ file truncated: the {name} stream ends past the end of the file", path)
        try:
            sections[name] = dctx.decompress(data[at:at + csize], max_output_size=want)
        except zstandard.ZstdError as exc:
            raise DataError(f"SPZ {name} stream is damaged ({exc})", path)
        if len(sections[name]) != want:
            raise DataError(f"SPZ {name} stream decompressed to {len(sections[name])} bytes, expected {want}", path)
        at += csize
    if at != len(data):
        raise DataError(f"SPZ file has {len(data) - at} bytes after its last stream", path)
    sections.setdefault("sh", b"")
    return _decode_sections(sections, n, version, degree, bits, coordinates)


def decode_spz(data: bytes, path: str | Path | None = None, coordinates: str = "rdf") -> tuple[dict, int]:
    coordinates = _check_coordinates(coordinates)
    if data[:2] == b"\x1f\x8b":
        return _decode_gzip_container(data, path, coordinates)
    if len(data) >= 4 and struct.unpack_from("<I", data)[0] == MAGIC:
        return _decode_ngsp_container(data, path, coordinates)
    raise DataError("not an SPZ file: neither a gzip stream nor an NGSP header", path)


def read_spz(path: str | Path, coordinates: str = "rdf") -> tuple[dict, int]:
    """Read a ``.spz`` (versions 1-4) into gsplat-named float32 tensors and its SH degree.

    ``coordinates="rdf"`` (default) undoes the writer's axis flip (the PLY / splatkit frame);
    ``"rub"`` returns the file's own axes."""
    return decode_spz(read_file_bytes(path, "SPZ"), path, coordinates)
