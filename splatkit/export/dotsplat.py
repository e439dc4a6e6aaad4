"""The ``.splat`` file of antimatter15's WebGL splat viewer (github.com/antimatter15/splat).

Layout (its ``convert.py`` writes it, its ``main.js`` reads it): no header, 32 bytes per Gaussian,
little-endian::

    position  3 x float32   x y z
    scale     3 x float32   activated standard deviations, exp(log-scale)
    rgba      4 x uint8     r g b = 255 * (0.5 + SH_C0 * f_dc), a = 255 * sigmoid(opacity)
    rotation  4 x uint8     w x y z of the unit quaternion, byte = q * 128 + 128 (read (b - 128) / 128)

Gaussians are ordered as ``convert.py`` orders them, by ``-exp(s0 + s1 + s2) * sigmoid(opacity)``
(largest, most opaque first), so a viewer that streams the file shows the important ones first.
We sort on the logarithm of that key (same order, no overflow) with a stable sort.

What the format drops: all view-dependent colour (SH bands above 0); colour and opacity are 8-bit
and colours outside [0, 1] are clipped; rotations keep about 8 bits per component. We round where
``convert.py`` truncates (the reader decodes both alike; rounding halves the error).

gsplat's ``export_splats(format="splat")`` is not used: it writes Morton order instead of the
viewer's order, truncates, and packs in a per-Gaussian Python loop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from splatkit.errors import DataError, SplatkitError
from splatkit.export._shared import (FormatExport, logit, read_file_bytes, sigmoid, splat_arrays,
                                     to_tensors, unit_quats)
from splatkit.render.sh import MAX_SH_DEGREE, SH_C0
from splatkit.utils.atomic import write_bytes_atomic

SPLAT_DTYPE = np.dtype([("position", "<f4", (3,)), ("scale", "<f4", (3,)), ("rgba", "u1", (4,)),
                        ("rotation", "u1", (4,))])
assert SPLAT_DTYPE.itemsize == 32
NOTES = ("no view-dependent colour (SH bands above 0 dropped); colour and opacity 8-bit, colours outside "
         "[0, 1] clipped; rotation 8 bits per component; positions and scales float32; Gaussians reordered "
         "largest and most opaque first")


def encode_splat(splats: dict, sh_degree: int) -> tuple[bytes, int, int]:
    """``(file bytes, Gaussians written, Gaussians dropped)``; any SH degree is accepted, bands > 0 dropped."""
    a, dropped = splat_arrays(splats, sh_degree, MAX_SH_DEGREE, ".splat")
    # exp overflows float32 above ~88: such a row is as unusable here as a non-finite one.
    with np.errstate(over="ignore"):
        scales = np.exp(a["scales"]).astype(np.float32)
    ok = np.isfinite(scales).all(axis=1)
    dropped += int((~ok).sum())
    a = {k: v[ok] for k, v in a.items()}
    scales = scales[ok]
    if not len(scales):
        raise SplatkitError("nothing to write: every Gaussian's scale overflows float32")
    log_key = a["scales"].sum(axis=1) + np.log(np.maximum(sigmoid(a["opacities"]), 1e-300))
    order = np.argsort(-log_key, kind="stable")
    rgba = np.concatenate([0.5 + SH_C0 * a["sh0"], sigmoid(a["opacities"])[:, None]], axis=1)
    out = np.empty(len(order), dtype=SPLAT_DTYPE)
    out["position"] = a["means"][order]
    out["scale"] = scales[order]
    out["rgba"] = np.clip(np.round(rgba[order] * 255.0), 0, 255)
    out["rotation"] = np.clip(np.round(a["quats"][order] * 128.0 + 128.0), 0, 255)
    return out.tobytes(), len(out), dropped


def write_splat(path: str | Path, splats: dict, sh_degree: int) -> FormatExport:
    """Write parameters (already in the frame wanted) as an antimatter15 ``.splat`` file, atomically."""
    data, written, dropped = encode_splat(splats, sh_degree)
    path = Path(path)
    write_bytes_atomic(path, data)
    return FormatExport(path, "splat", written, dropped, 0, NOTES)


def decode_splat(data: bytes, path: str | Path | None = None) -> tuple[dict, int]:
    if len(data) == 0:
        raise DataError(".splat file is empty: it contains no Gaussians", path)
    if len(data) % SPLAT_DTYPE.itemsize:
        raise DataError(f"not a .splat file: {len(data)} bytes is not a whole number of 32-byte Gaussians "
                        f"(truncated?)", path)
    rec = np.frombuffer(data, dtype=SPLAT_DTYPE)
    means = rec["position"].astype(np.float64)
    scales = rec["scale"].astype(np.float64)
    if not (np.isfinite(means).all() and np.isfinite(scales).all()):
        raise DataError("not a valid .splat file: non-finite positions or scales", path)
    if (scales < 0).any():
        raise DataError("not a valid .splat file: negative scales", path)
    tiny = float(np.finfo(np.float32).tiny)  # a scale that underflowed to 0 stays finite in log space
    rgba = rec["rgba"].astype(np.float64) / 255.0
    n = len(rec)
    splats = to_tensors(
        means, np.log(np.maximum(scales, tiny)), unit_quats((rec["rotation"].astype(np.float64) - 128.0) / 128.0),
        logit(rgba[:, 3], 0.5 / 255.0), (rgba[:, :3] - 0.5) / SH_C0, np.zeros((n, 0, 3)))
    return splats, 0


def read_splat(path: str | Path) -> tuple[dict, int]:
    """Read a ``.splat`` file into gsplat-named float32 tensors; the SH degree is always 0.

    Opacity bytes 0 and 255 decode to the logit of 0.5/255 and 1 - 0.5/255 (finite)."""
    return decode_splat(read_file_bytes(path, ".splat"), path)
