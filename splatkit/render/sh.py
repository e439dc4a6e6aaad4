"""Real spherical harmonics for view-dependent Gaussian colour (degrees 0-4).

The basis, its ordering and its signs are those of 3DGS and gsplat (Sloan, "Efficient Spherical
Harmonic Evaluation", JCGT 2013; gsplat ``SphericalHarmonicsCUDA.cu``), so SH coefficients trained
here load into any 3DGS viewer and vice versa. Coefficients are stored as ``[..., K, 3]`` with
``K = (degree + 1) ** 2`` bases, band by band; colour = ``sum_k basis_k(dir) * coeff_k``; the
renderer then adds 0.5 and clamps at 0 (gsplat's "apple-to-apple with Inria" offset).
"""

from __future__ import annotations

import torch
from torch import Tensor

# Y_0^0 = 1 / (2 sqrt(pi)).
SH_C0 = 0.28209479177387814
MAX_SH_DEGREE = 4


def num_sh_bases(degree: int) -> int:
    """Number of SH bases up to and including ``degree``."""
    return (degree + 1) ** 2


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient that renders as ``rgb`` (inverse of the renderer's ``C0 * c + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh_dc: Tensor) -> Tensor:
    """Colour of a DC-only SH coefficient, before the renderer's clamp at 0."""
    return sh_dc * SH_C0 + 0.5


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """SH basis values ``[..., (degree+1)**2]`` at unit directions ``dirs [..., 3]``."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        a = 0.48860251190292
        out += [-a * y, a * z, -a * x]
    if degree >= 2:
        z2 = z * z
        tb = -1.092548430592079 * z
        c1 = x * x - y * y
        s1 = 2.0 * x * y
        sh6 = 0.9461746957575601 * z2 - 0.3153915652525201
        out += [0.5462742152960395 * s1, tb * y, sh6, tb * x, 0.5462742152960395 * c1]
    if degree >= 3:
        tc = -2.285228997322329 * z2 + 0.4570457994644658
        tb = 1.445305721320277 * z
        c2 = x * c1 - y * s1
        s2 = x * s1 + y * c1
        sh12 = z * (1.865881662950577 * z2 - 1.119528997770346)
        out += [
            -0.5900435899266435 * s2,
            tb * s1,
            tc * y,
            sh12,
            tc * x,
            tb * c1,
            -0.5900435899266435 * c2,
        ]
    if degree >= 4:
        td = z * (-4.683325804901025 * z2 + 2.007139630671868)
        tc = 3.31161143515146 * z2 - 0.47308734787878
        tb = -1.770130769779931 * z
        c3 = x * c2 - y * s2
        s3 = x * s2 + y * c2
        out += [
            0.6258357354491763 * s3,
            tb * s2,
            tc * s1,
            td * y,
            1.984313483298443 * z * sh12 - 1.006230589874905 * sh6,
            td * x,
            tc * c1,
            tb * c2,
            0.6258357354491763 * c3,
        ]
    return torch.stack(out, dim=-1)


def eval_sh(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colours ``[..., 3]`` from SH ``coeffs [..., K, 3]`` (``K >= (degree+1)**2``) seen along ``dirs``.

    ``dirs [..., 3]`` need not be normalised; a zero direction (a Gaussian at the camera centre)
    gives the DC colour instead of NaN.
    """
    nb = num_sh_bases(degree)
    if coeffs.shape[-2] < nb:
        raise ValueError(f"SH degree {degree} needs {nb} coefficients, got {coeffs.shape[-2]}")
    if degree == 0:
        return SH_C0 * coeffs[..., 0, :]
    # Clamped norm as in F.normalize: keeps the gradient finite at the origin.
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs)  # [..., nb]
    return (basis[..., :, None] * coeffs[..., :nb, :]).sum(dim=-2)
