"""The standard 3DGS PLY file, in the user's original world frame.

Layout (what the Inria ``GaussianModel.save_ply`` writes and every 3DGS viewer reads): one
``vertex`` element, binary little-endian float32 properties in this order::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3*(K-1)-1)  opacity  scale_0..2  rot_0..3

* ``nx ny nz`` are zeros (Inria writes them; nothing reads them).
* ``f_dc_*`` is the DC SH coefficient per colour channel.
* ``f_rest_*`` is **channel-major**: all higher-band coefficients of R, then of G, then of B
  (Inria's ``_features_rest.transpose(1, 2).flatten(start_dim=1)``; gsplat's ``export_splats``
  does the same with ``shN.permute(0, 2, 1)``).
* ``opacity`` is the logit, ``scale_*`` the log of the standard deviations, ``rot_*`` the
  quaternion ``w x y z``. Inria writes its raw (unnormalised) rotation parameter; we write unit
  quaternions, which every viewer (all of them normalise) renders identically.

We do not call ``gsplat.export_splats`` for the file itself: it omits ``nx ny nz`` (some
viewers and tools written against Inria's files index properties by position) and silently drops
rows with non-finite values. We write the Inria layout with ``plyfile`` and report dropped rows.

Frames: checkpoints live in splatkit's normalised frame ``x_ours = s R (x_user - c)``
(:class:`~splatkit.data.scene.Normalization`). :func:`splats_to_original_frame` undoes it: means
map back with ``to_original``; a Gaussian's covariance ``Rq S^2 Rq^T`` becomes
``(R^T Rq) (S/s)^2 (R^T Rq)^T``, so log-scales lose ``log s`` and quaternions are left-multiplied
by the quaternion of ``R^T``; view-dependent SH bands are rotated so that the colour seen along a
user-frame direction ``d`` equals the colour the model gave along ``R d``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from splatkit.data.scene import Normalization
from splatkit.errors import SplatkitError
from splatkit.render.sh import MAX_SH_DEGREE, sh_basis
from splatkit.utils.atomic import atomic_path

PARAM_KEYS = ("means", "scales", "quats", "opacities", "sh0", "shN")


def ply_property_names(sh_degree: int) -> list[str]:
    """The Inria 3DGS property names, in file order, for SH degree ``sh_degree``."""
    n_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(n_rest)] + ["opacity"]
            + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


# -- frame change -------------------------------------------------------------------------------
def _quat_from_matrix(R: np.ndarray) -> np.ndarray:
    """Unit quaternion ``w x y z`` of a proper rotation matrix."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(R).as_quat()  # scipy is scalar-last
    return np.array([w, x, y, z])


def _quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of ``w x y z`` quaternions (rotation ``R(a) R(b)``)."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def _fibonacci_sphere(n: int) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n
    r = torch.sqrt(1.0 - z * z)
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)


def sh_rotation_matrices(rotation: np.ndarray, degree: int) -> list[torch.Tensor]:
    """Per band ``l = 1..degree``, the ``(2l+1) x (2l+1)`` matrix ``A_l`` with
    ``sum_k A_l[j, k] c_k`` the band's coefficients after the frame change ``d_new = R^T d_old``.

    Real SH bands are closed under rotation, so ``Y_l(R d) = D_l Y_l(d)`` for one matrix ``D_l``;
    we solve for it by least squares on well-spread directions (exact up to float64 rounding, and
    independent of the basis' sign conventions) and return ``A_l = D_l^T``.
    """
    R = torch.as_tensor(np.asarray(rotation, dtype=np.float64))
    dirs = _fibonacci_sphere(128)
    Y = sh_basis(degree, dirs)  # [M, K]
    Y_rot = sh_basis(degree, dirs @ R.T)  # Y(R d)
    out = []
    for band in range(1, degree + 1):
        lo, hi = band * band, (band + 1) ** 2
        A = torch.linalg.lstsq(Y[:, lo:hi], Y_rot[:, lo:hi]).solution  # Y A = Y_rot  ->  A = D^T
        out.append(A)
    return out


def _is_identity(rotation: np.ndarray) -> bool:
    return bool(np.allclose(np.asarray(rotation, dtype=np.float64), np.eye(3), atol=1e-12, rtol=0.0))


def splats_to_original_frame(splats: dict[str, torch.Tensor], normalization: Normalization,
                             sh_degree: int) -> dict[str, torch.Tensor]:
    """gsplat-named parameters (``means, scales, quats, opacities, sh0, shN``) in splatkit's
    normalised frame -> the same parameters in the user's frame (float64 tensors, quaternions
    normalised). See the module docstring for the algebra."""
    missing = [k for k in PARAM_KEYS if k not in splats]
    if missing:
        raise SplatkitError(f"Gaussian parameters missing: {missing}")
    p = {k: splats[k].detach().to("cpu", torch.float64) for k in PARAM_KEYS}
    R = np.asarray(normalization.rotation, dtype=np.float64)
    s = float(normalization.scale)
    if not (np.isfinite(s) and s > 0):
        raise SplatkitError(f"scene normalisation has an invalid scale {s}")
    if not (np.allclose(R @ R.T, np.eye(3), atol=1e-6) and np.linalg.det(R) > 0):
        raise SplatkitError("scene normalisation rotation is not a proper rotation (det must be +1)")

    means = torch.from_numpy(normalization.to_original(p["means"].numpy()))
    scales = p["scales"] - math.log(s)
    quats = p["quats"] / p["quats"].norm(dim=-1, keepdim=True).clamp_min(1e-12)
    shN = p["shN"]
    if not _is_identity(R):
        # Rotation part of user_from_ours is R^T: R_user = R^T Rq.
        q_rt = torch.from_numpy(_quat_from_matrix(R.T))
        quats = _quat_multiply(q_rt.expand_as(quats), quats)
        if sh_degree > 0:
            shN = shN.clone()
            for band, A in enumerate(sh_rotation_matrices(R, sh_degree), start=1):
                lo, hi = band * band - 1, (band + 1) ** 2 - 1  # shN omits the DC coefficient
                shN[:, lo:hi] = torch.einsum("jk,nkc->njc", A, p["shN"][:, lo:hi])
    # With an identity rotation (all our readers keep the user's axes) directions are unchanged,
    # so SH coefficients and orientations carry over as they are.
    return {"means": means, "scales": scales, "quats": quats, "opacities": p["opacities"],
            "sh0": p["sh0"], "shN": shN}


# -- writing ------------------------------------------------------------------------------------
@dataclass
class PlyExport:
    path: Path
    num_written: int
    num_dropped: int  # Gaussians with non-finite parameters, left out
    sh_degree: int


def write_ply(path: str | Path, splats: dict[str, torch.Tensor], sh_degree: int) -> PlyExport:
    """Write parameters (already in the frame wanted) as a binary little-endian 3DGS PLY, atomically."""
    from plyfile import PlyData, PlyElement

    if not 0 <= int(sh_degree) <= MAX_SH_DEGREE:
        raise SplatkitError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {sh_degree}")
    n = int(splats["means"].shape[0])
    k_rest = (sh_degree + 1) ** 2 - 1
    as_np = {k: splats[k].detach().to("cpu", torch.float64).numpy() for k in PARAM_KEYS}
    if as_np["shN"].shape != (n, k_rest, 3) or as_np["sh0"].shape != (n, 1, 3):
        raise SplatkitError(
            f"SH shapes {as_np['sh0'].shape}/{as_np['shN'].shape} do not match SH degree {sh_degree}")
    columns = np.concatenate([
        as_np["means"],
        np.zeros((n, 3)),
        as_np["sh0"][:, 0, :],
        as_np["shN"].transpose(0, 2, 1).reshape(n, 3 * k_rest),  # channel-major
        as_np["opacities"].reshape(n, 1),
        as_np["scales"],
        as_np["quats"],
    ], axis=1)
    finite = np.isfinite(columns).all(axis=1)
    columns = columns[finite].astype(np.float32)
    names = ply_property_names(sh_degree)
    assert columns.shape[1] == len(names)
    vertex = np.empty(len(columns), dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = columns[:, i]
    data = PlyData([PlyElement.describe(vertex, "vertex")], byte_order="<")
    path = Path(path)
    with atomic_path(path) as tmp:
        data.write(str(tmp))
    return PlyExport(path, int(finite.sum()), int((~finite).sum()), int(sh_degree))


def export_ply(model, normalization: Normalization, path: str | Path) -> PlyExport:
    """Write a :class:`~splatkit.models.gaussians.GaussianModel` as a 3DGS PLY in the user's frame."""
    original = splats_to_original_frame(dict(model.splats), normalization, model.sh_degree)
    return write_ply(path, original, model.sh_degree)


# -- reading ------------------------------------------------------------------------------------
def read_ply(path: str | Path) -> tuple[dict[str, torch.Tensor], int]:
    """Read a 3DGS PLY into gsplat-named float32 tensors (``GaussianModel(splats, degree)`` takes
    them) and its SH degree. Accepts files from any writer of the Inria layout (property order is
    not required, ``nx ny nz`` may be absent)."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise SplatkitError("PLY file not found", path)
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types for malformed files
        raise SplatkitError(f"not a readable PLY file ({type(exc).__name__}: {str(exc)[:120]})", path)
    if "vertex" not in [el.name for el in ply.elements]:
        raise SplatkitError("PLY file has no 'vertex' element", path)
    v = ply["vertex"].data
    names = set(v.dtype.names or ())
    needed = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"] + [f"scale_{i}" for i in range(3)] \
        + [f"rot_{i}" for i in range(4)]
    missing = [nm for nm in needed if nm not in names]
    if missing:
        raise SplatkitError(f"not a 3DGS PLY: missing properties {missing}", path)
    n_rest = sum(1 for nm in names if nm.startswith("f_rest_"))
    k = n_rest // 3 + 1
    degree = math.isqrt(k) - 1
    if n_rest % 3 or (degree + 1) ** 2 != k or degree > MAX_SH_DEGREE \
            or any(f"f_rest_{i}" not in names for i in range(n_rest)):
        raise SplatkitError(f"{n_rest} f_rest properties do not form SH bands of one degree <= "
                            f"{MAX_SH_DEGREE}", path)

    def cols(keys):
        return torch.from_numpy(np.stack([np.asarray(v[key], dtype=np.float32) for key in keys], axis=1))

    n = len(v)
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]) if n_rest else torch.zeros(n, 0)
    splats = {
        "means": cols(["x", "y", "z"]),
        "scales": cols([f"scale_{i}" for i in range(3)]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "opacities": cols(["opacity"])[:, 0].contiguous(),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :].contiguous(),
        "shN": rest.reshape(n, 3, k - 1).transpose(1, 2).contiguous(),  # channel-major on disk
    }
    return splats, degree
