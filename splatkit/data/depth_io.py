"""Reading and writing depth-like maps: ``.npy``, 16-bit ``.png`` and ``.pfm``.

Every reader returns float32 [H, W] with NaN for unknown pixels. In every format a stored 0 and
any non-finite value mean "unknown" (0 is no valid z-depth, and 0 is the "no data" value of 16-bit
depth PNGs and of the readers' ``depth/<stem>.npy`` maps); negative values are an error.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import numpy as np

from splatkit.data.imageio_utils import IMAGE_SUFFIXES, read_image_raw
from splatkit.errors import DataError
from splatkit.utils.atomic import atomic_path, write_bytes_atomic

DEPTH_SUFFIXES = (".npy", ".png", ".pfm")

# What a folder of depth files holds. Only "metric" maps (z-depth in the scene's units) may bound or
# place anything; "depth" (relative: larger = farther, unknown scale and shift) and "inverse"
# (relative disparity, what monocular estimators write) only order pixels.
DEPTH_KINDS = ("metric", "depth", "inverse")
# A folder declares its kind in this file (one word); splatkit's own writers do.
DEPTH_KIND_FILE = "kind.txt"


def declared_depth_kind(folder: Path) -> Optional[str]:
    """The kind a depth folder declares in ``kind.txt``, or None."""
    path = Path(folder) / DEPTH_KIND_FILE
    if not path.is_file():
        return None
    kind = path.read_text(errors="replace").strip().lower()
    if kind not in DEPTH_KINDS:
        raise DataError(f"depth kind must be one of {', '.join(DEPTH_KINDS)}, got {kind!r}", path)
    return kind


def write_depth_kind(folder: Path, kind: str) -> None:
    if kind not in DEPTH_KINDS:
        raise ValueError(kind)
    (Path(folder) / DEPTH_KIND_FILE).write_text(kind + "\n")


def resolve_depth_kind(requested: Optional[str], declared: Optional[str]) -> tuple[str, Optional[str]]:
    """``(kind, note)``: what the user asked for, else what the files declare, else relative depth
    with a note saying so (monocular estimates, the usual depth files, have no scale)."""
    if requested is not None:
        return requested, None
    if declared is not None:
        return declared, None
    return "depth", ("depth files are taken as relative depth (no kind.txt declares them metric): they order "
                     "pixels but bound nothing; pass --depth-prior-kind metric if they are metric z-depth")


def _first_line(exc: Exception) -> str:
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0][:120] if text else ''}"


def _finish(d: np.ndarray, path: Path) -> np.ndarray:
    """float32 with NaN for unknown (0 or non-finite); negative values are an error."""
    d = np.array(d, dtype=np.float32, copy=True)
    d[~np.isfinite(d)] = np.nan
    if (d < 0).any():  # NaN compares False, so only real negatives count
        raise DataError("depth map has negative values (expected depth-like values >= 0, 0 = unknown)", path)
    d[d == 0] = np.nan
    return d


# -- .npy ---------------------------------------------------------------------------------------
def _read_npy(path: Path) -> np.ndarray:
    try:
        d = np.load(path, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError/OSError/EOFError/UnpicklingError
        raise DataError(f"cannot read depth map ({_first_line(exc)})", path)
    d = np.asarray(d)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2 or d.size == 0 or not np.issubdtype(d.dtype, np.number) or np.iscomplexobj(d):
        raise DataError(f"expected a 2D numeric depth map, got shape {d.shape} dtype {d.dtype}", path)
    return d


# -- .png ---------------------------------------------------------------------------------------
def _read_png(path: Path) -> np.ndarray:
    d = read_image_raw(path)  # DataError naming the file for missing/corrupt PNGs
    if d.ndim == 3:
        c = d.shape[-1]
        if c in (2, 4):  # grey+alpha / RGBA: alpha is not depth
            d = d[..., : c - 1]
        if d.shape[-1] > 1 and not all(np.array_equal(d[..., 0], d[..., k]) for k in range(1, d.shape[-1])):
            raise DataError("depth PNG has differing colour channels (a colour-mapped visualisation?); "
                            "expected a single-channel 8- or 16-bit PNG", path)
        d = d[..., 0]
    if not np.issubdtype(d.dtype, np.integer):
        raise DataError(f"expected an 8- or 16-bit integer depth PNG, got dtype {d.dtype}", path)
    return d


def write_depth_png16(path: str | Path, array: np.ndarray) -> None:
    """Write a depth-like map as a 16-bit PNG, scaled so the largest known value is 65535.

    A pure scale (no shift) keeps ratios, so a z-depth stays a z-depth up to scale. Unknown pixels
    (NaN, inf, <= 0) are written as 0; tiny known values are kept at 1 so they stay known.
    """
    from PIL import Image

    a = np.asarray(array, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise DataError(f"expected a 2D depth map, got shape {a.shape}", path)
    known = np.isfinite(a) & (a > 0)
    out = np.zeros(a.shape, np.uint16)
    if known.any():
        scale = 65535.0 / a[known].max()
        out[known] = np.clip(np.rint(a[known] * scale), 1, 65535).astype(np.uint16)
    with atomic_path(path) as tmp:
        Image.fromarray(out).save(tmp, format="PNG")


# -- .pfm ---------------------------------------------------------------------------------------
# Portable Float Map (Paul Debevec's format, as used by Middlebury/SceneFlow/MiDaS): a "PF" (RGB) or
# "Pf" (grey) line, a "width height" line, a scale line whose sign gives the byte order (negative =
# little-endian), then float32 pixels in rows from the BOTTOM of the image to the top.
# One whitespace byte ends the header (a CRLF from Windows writers counts as one).
_PFM_HEADER = re.compile(rb"\A(P[Ff])\s+(\d+)\s+(\d+)\s+([-+0-9.eE]+)(?:\r\n|\s)")


def read_pfm(path: str | Path) -> np.ndarray:
    """The raw PFM data as float32 [H, W] (grey) or [H, W, 3] (colour), top row first."""
    path = Path(path)
    if not path.is_file():
        raise DataError("depth file is missing", path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read PFM file ({_first_line(exc)})", path)
    m = _PFM_HEADER.match(raw[:256])
    if m is None:
        raise DataError("not a PFM file (expected a 'PF'/'Pf' header, width height, scale)", path)
    channels = 3 if m.group(1) == b"PF" else 1
    w, h = int(m.group(2)), int(m.group(3))
    try:
        scale = float(m.group(4))
    except ValueError:
        raise DataError(f"PFM scale {m.group(4)!r} is not a number", path)
    if w == 0 or h == 0 or scale == 0 or not np.isfinite(scale):
        raise DataError(f"bad PFM header (width {w}, height {h}, scale {scale})", path)
    n = w * h * channels
    data = raw[m.end():]
    if len(data) < 4 * n:
        raise DataError(f"PFM file is truncated ({len(data)} data bytes, expected {4 * n} "
                        f"for {w}x{h}x{channels})", path)
    arr = np.frombuffer(data, dtype="<f4" if scale < 0 else ">f4", count=n)
    arr = arr.reshape((h, w, channels) if channels == 3 else (h, w))
    return np.ascontiguousarray(arr[::-1]).astype(np.float32)


def write_pfm(path: str | Path, array: np.ndarray, *, little_endian: bool = True) -> None:
    """Write float32 [H, W] as grey ("Pf") or [H, W, 3] as colour ("PF") PFM, rows bottom-to-top."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] == 3)) or a.size == 0:
        raise DataError(f"PFM holds [H, W] or [H, W, 3] arrays, got shape {a.shape}", path)
    kind = b"Pf" if a.ndim == 2 else b"PF"
    h, w = a.shape[:2]
    header = kind + b"\n" + f"{w} {h}\n".encode() + (b"-1.0\n" if little_endian else b"1.0\n")
    body = np.ascontiguousarray(a[::-1]).astype("<f4" if little_endian else ">f4").tobytes()
    write_bytes_atomic(path, header + body)


# -- any depth file -----------------------------------------------------------------------------
def read_depth_file(path: str | Path) -> np.ndarray:
    """A depth-like map as float32 [H, W], NaN = unknown (stored 0 or non-finite).

    ``.npy`` ([H, W] or [H, W, 1], any numeric dtype), ``.png`` (16- or 8-bit, values as stored)
    or ``.pfm`` (channel 0 of colour PFMs). A :class:`DataError` naming the file otherwise.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in DEPTH_SUFFIXES:
        raise DataError(f"unsupported depth file type {path.suffix!r} (expected one of "
                        f"{', '.join(DEPTH_SUFFIXES)})", path)
    if not path.is_file():
        raise DataError("depth file is missing", path)
    if suffix == ".npy":
        d = _read_npy(path)
    elif suffix == ".png":
        d = _read_png(path)
    else:
        d = read_pfm(path)
        if d.ndim == 3:
            d = d[..., 0]
    return _finish(d, path)


def find_depth_file(folder: str | Path, stem: str) -> Optional[Path]:
    """``folder/<stem>{.npy,.png,.pfm}``, else ``folder/<stem><image ext>{.npy,...}`` (the
    ``image.png.npy`` naming of tools that append to the image's file name); None if neither."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for ext in DEPTH_SUFFIXES:
        c = folder / f"{stem}{ext}"
        if c.is_file():
            return c
    for img_ext in IMAGE_SUFFIXES:
        for ext in DEPTH_SUFFIXES:
            c = folder / f"{stem}{img_ext}{ext}"
            if c.is_file():
                return c
    return None
