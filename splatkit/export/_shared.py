"""Pieces shared by the packed export formats (.splat, compressed PLY, .spz)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from splatkit.errors import DataError, SplatkitError

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


@dataclass
class FormatExport:
    """What an export wrote: the CLI prints ``num_written``/``num_dropped`` and ``notes``."""

    path: Path
    format: str
    num_written: int
    num_dropped: int  # Gaussians with non-finite parameters, left out
    sh_degree: int  # SH degree stored in the file (0 for .splat whatever the model had)
    notes: str = ""  # what the format loses, one line
    bake: Optional[dict] = None  # export_run(report_bake=True) of a colour-field run: bake_report's dict


def splat_arrays(splats: dict, sh_degree: int, max_degree: int, fmt: str) -> tuple[dict[str, np.ndarray], int]:
    """Validate gsplat-named parameters and return float64 numpy arrays of the finite rows.

    ``sh0`` comes back as ``[N, 3]``, ``shN`` as ``[N, K, 3]``, quaternions unit length.
    Rows with a non-finite value or a zero quaternion are dropped and counted, as ``write_ply``
    does; an empty result is an error (every reader of these formats rejects or mis-shows it).
    """
    missing = [k for k in PARAM_KEYS if k not in splats]
    if missing:
        raise SplatkitError(f"Gaussian parameters missing: {missing}")
    degree = int(sh_degree)
    if not 0 <= degree <= max_degree:
        raise SplatkitError(f"{fmt} stores SH degree 0 to {max_degree}, got {sh_degree}")
    a = {k: torch.as_tensor(splats[k]).detach().to("cpu", torch.float64).numpy() for k in PARAM_KEYS}
    n = a["means"].shape[0] if a["means"].ndim == 2 else -1
    k_rest = (degree + 1) ** 2 - 1
    want = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,), "sh0": (n, 1, 3),
            "shN": (n, k_rest, 3)}
    bad = [f"{k} {tuple(a[k].shape)} (want {want[k]})" for k in PARAM_KEYS if tuple(a[k].shape) != want[k]]
    if n < 0 or bad:
        raise SplatkitError(f"Gaussian parameter shapes do not fit SH degree {degree}: {', '.join(bad)}")
    qnorm = np.linalg.norm(a["quats"], axis=1)
    flat = np.concatenate([a["means"], a["scales"], a["quats"], a["opacities"][:, None], a["sh0"][:, 0],
                           a["shN"].reshape(n, 3 * k_rest)], axis=1)
    keep = np.isfinite(flat).all(axis=1) & (qnorm > 0)
    out = {k: v[keep] for k, v in a.items()}
    out["sh0"] = out["sh0"][:, 0, :]
    out["quats"] = out["quats"] / qnorm[keep][:, None]
    if not keep.any():
        raise SplatkitError(f"nothing to write: {n} Gaussians, none with finite parameters" if n
                            else "nothing to write: the model has no Gaussians")
    return out, int((~keep).sum())


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))  # no overflow warnings


def logit(p: np.ndarray, eps: float) -> np.ndarray:
    """Inverse sigmoid, clamped to ``[eps, 1 - eps]`` so 8-bit 0 and 255 stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's ``std::round`` (halves away from zero); numpy's ``round`` goes to even."""
    x = np.asarray(x, dtype=np.float64)
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def to_tensors(means, scales, quats, opacities, sh0, shN) -> dict[str, torch.Tensor]:
    """float32 tensors shaped as ``read_ply`` returns them (``GaussianModel(splats, degree)`` takes them)."""
    def t(x, shape=None):
        x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
        return torch.from_numpy(x.reshape(shape) if shape is not None else x)

    n = len(means)
    return {"means": t(means), "scales": t(scales), "quats": t(quats), "opacities": t(opacities, (n,)),
            "sh0": t(sh0, (n, 1, 3)), "shN": t(shN)}


def unit_quats(q: np.ndarray) -> np.ndarray:
    """Normalise decoded quaternions; an all-zero one (no rotation stored) becomes the identity."""
    q = np.asarray(q, dtype=np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    out = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), 0.0)
    out[norm[:, 0] == 0, 0] = 1.0
    return out


def read_file_bytes(path: str | Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} file not found", path)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {what} file ({exc.strerror or exc})", path)


def sh_degree_for_rest(k_rest: int) -> int:
    """SH degree whose higher bands have ``k_rest`` coefficients per channel, or -1."""
    d = math.isqrt(k_rest + 1) - 1
    return d if (d + 1) ** 2 == k_rest + 1 else -1
