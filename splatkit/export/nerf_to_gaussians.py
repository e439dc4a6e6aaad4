"""Gaussians from a NeRF run, so that every splat format and viewer takes one: an approximation.

One flat Gaussian per vertex of the NeRF's marching-cubes surface (:mod:`splatkit.export.nerf_mesh`):

* position: the expected termination point of a ray into the surface along the vertex's -normal
  (the vertex itself where the surface is sharp); orientation: the disc's thin axis along the normal;
* scale: ``DISC_SCALE`` x the square root of the vertex's share of the surface area (a third of the
  areas of its triangles: h^2 on a flat lattice of spacing h) in the disc's plane, at least a
  quarter of the lattice spacing; ``THIN`` x the lattice spacing along the normal;
* opacity: that ray's, ``1 - exp(-integral of the density)`` from ``OUTSIDE_CELLS`` lattice cells in
  front of the vertex to ``DEPTH_CELLS`` behind it, shared out among the overlapping discs (so that
  together they transmit what the ray does), clamped to [0.01, 0.99];
* colour: SH of ``sh_degree`` fitted per Gaussian (ridge least squares) to what that ray composites
  (its samples' weights, the colour MLP at each sample) seen from ``num_dirs`` directions on the
  hemisphere in front of the surface (degree 0: their mean).

No fine-tuning here: what the field renders as a soft volume, the discs render as a surface, so the
Gaussians' test PSNR is below the NeRF's (``splatkit export`` prints both);
``splatkit export --finetune-steps N`` then trains them as 3DGS on the run's training views
(:func:`splatkit.app.export.finetune_nerf_gaussians`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from splatkit.errors import SplatkitError

DISC_SCALE = 1.2  # standard deviation in the plane / sqrt(vertex area): neighbouring discs overlap (0.6: -0.9 dB)
THIN = 0.1  # standard deviation along the normal, in lattice cells
DEPTH_CELLS = 6.0  # a ray along -normal is integrated this far behind the vertex (lattice cells) ...
OUTSIDE_CELLS = 1.0  # ... from this far in front of it
DEPTH_SAMPLES = 14
NUM_DIRS = 16  # viewing directions per Gaussian for the colour fit
RIDGE = 1e-2  # regularises the higher SH bands (a hemisphere leaves the back side unconstrained)

NOTE = ("an approximation of the NeRF: one flat Gaussian per surface vertex (marching cubes), opacity from "
        "the density, colour baked from the colour MLP; no fine-tuning")


@dataclass
class NerfGaussians:
    model: object  # GaussianModel in the run's normalised frame
    mesh: object  # the TriangleMesh it came from (normalised frame)
    rms: float  # RMS colour error of the SH fit over the directions it saw


def _vertex_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    area = 0.5 * np.linalg.norm(np.cross(b - a, c - a), axis=1)
    out = np.zeros(len(vertices))
    for i in range(3):
        np.add.at(out, faces[:, i], area / 3.0)
    return out


def _quats_z_to(normals: np.ndarray) -> np.ndarray:
    """wxyz quaternions of the shortest rotations taking +z to each unit normal."""
    n = normals
    q = np.stack([1.0 + n[:, 2], -n[:, 1], n[:, 0], np.zeros(len(n))], axis=1)
    flip = q[:, 0] < 1e-8  # normal = -z: half a turn about x
    q[flip] = [0.0, 1.0, 0.0, 0.0]
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def _hemisphere(num: int) -> np.ndarray:
    """``num`` Fibonacci points on the hemisphere z >= 0 (local frame, z = the normal)."""
    i = np.arange(num) + 0.5
    z = 1.0 - i / num
    r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
    phi = np.pi * (3.0 - np.sqrt(5.0)) * i
    return np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)


def _tangent_frames(normals: np.ndarray) -> np.ndarray:
    """``[V, 3, 3]`` rotations whose third column is the normal."""
    n = normals
    helper = np.where(np.abs(n[:, :1]) < 0.9, np.array([[1.0, 0, 0]]), np.array([[0, 1.0, 0]]))
    t1 = np.cross(helper, n)
    t1 /= np.linalg.norm(t1, axis=1, keepdims=True).clip(1e-12)
    t2 = np.cross(n, t1)
    return np.stack([t1, t2, n], axis=2)


@torch.no_grad()
def along_normals(model, mesh, view_dirs: Optional[np.ndarray] = None
                  ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """What a ray into the surface along ``-normal`` sees, sampled from ``OUTSIDE_CELLS`` in front
    of each vertex to ``DEPTH_CELLS`` behind it: ``(opacity 1 - exp(-integral of the density),
    expected termination distance behind the vertex (0 where the ray sees nothing), colours)``.
    ``colours [M, V, 3]``: the samples' colours seen along ``view_dirs [M, V, 3]`` composited with
    that ray's weights (the colour MLP's view dependence on the same samples), else ``None``."""
    from splatkit.models.nerf_field import DIR_SH_DEGREE
    from splatkit.render.sh import sh_basis

    field = model.field
    h = mesh.cell
    S = DEPTH_SAMPLES
    dt = (DEPTH_CELLS + OUTSIDE_CELLS) * h / S
    t = -OUTSIDE_CELLS * h + (np.arange(S) + 0.5) * dt
    V = mesh.num_vertices
    alpha, depth = np.zeros(V), np.zeros(V)
    colors = None if view_dirs is None else np.zeros((view_dirs.shape[0], V, 3), np.float32)
    tt = torch.as_tensor(t, dtype=torch.float64)
    step = max(1, (1 << 16) // S)
    for s in range(0, V, step):
        v, n = mesh.vertices[s:s + step], mesh.normals[s:s + step]
        c = len(v)
        pts = torch.as_tensor((v[:, None, :] - t[None, :, None] * n[:, None, :]).reshape(-1, 3),
                              dtype=torch.float32, device=model.device)
        sigma, geo = field.density_and_features(pts)  # density and geometry features, as NerfField.forward computes them
        sdt = sigma.reshape(c, S).cpu().double() * dt
        trans = torch.exp(-torch.cumsum(sdt, 1) + sdt)  # transmittance before each sample
        w = trans * (1.0 - torch.exp(-sdt))
        total = w.sum(1)
        alpha[s:s + c] = total.numpy()
        depth[s:s + c] = ((w * tt).sum(1) / total.clamp_min(1e-12)).numpy()
        if colors is None:
            continue
        # Normalised weights; a ray that sees (almost) nothing takes its samples' plain mean.
        wn = torch.where(total[:, None] > 1e-6, w / total.clamp_min(1e-12)[:, None], torch.full_like(w, 1.0 / S))
        wn = wn.to(torch.float32).to(model.device)
        for m in range(view_dirs.shape[0]):
            d = torch.as_tensor(view_dirs[m, s:s + c], dtype=torch.float32, device=model.device)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            basis = sh_basis(DIR_SH_DEGREE, d).repeat_interleave(S, dim=0)
            rgb = torch.sigmoid(field.color_mlp(torch.cat([geo, basis], dim=-1))).reshape(c, S, 3)
            colors[m, s:s + c] = (wn[:, :, None] * rgb).sum(1).cpu().numpy()
    return alpha, depth, colors


def fit_sh(colors: np.ndarray, dirs: np.ndarray, degree: int) -> tuple[np.ndarray, float]:
    """Per-point SH coefficients ``[V, K, 3]`` (colour = basis . coeffs + 0.5, as the rasteriser
    evaluates them) from ``colors [M, V, 3]`` seen along unit ``dirs [M, V, 3]``; ridge-regularised
    beyond the DC term. Returns the coefficients and the fit's RMS error."""
    from splatkit.render.sh import sh_basis

    M, V, _ = colors.shape
    K = (degree + 1) ** 2
    target = torch.as_tensor(colors, dtype=torch.float64).permute(1, 0, 2) - 0.5  # [V, M, 3]
    B = sh_basis(degree, torch.as_tensor(dirs, dtype=torch.float64).reshape(-1, 3)).reshape(M, V, K).permute(1, 0, 2)
    reg = torch.full((K,), RIDGE * M, dtype=torch.float64)
    reg[0] = 0.0
    A = B.transpose(1, 2) @ B + torch.diag(reg)
    coeffs = torch.linalg.solve(A, B.transpose(1, 2) @ target)  # [V, K, 3]
    fitted = (B @ coeffs + 0.5).clamp_min(0.0)
    rms = float((fitted - (target + 0.5)).square().mean().sqrt()) if V else 0.0
    return coeffs.numpy(), rms


def gaussians_from_nerf(model, mesh, sh_degree: int = 0, num_dirs: int = NUM_DIRS) -> NerfGaussians:
    """Gaussians (normalised frame) for a :class:`~splatkit.models.nerf_field.NerfModel` from its
    surface ``mesh`` (:func:`splatkit.export.nerf_mesh.extract_mesh`); see the module docstring."""
    from splatkit.models.gaussians import GaussianModel

    if not 0 <= sh_degree <= 3:
        raise SplatkitError(f"SH degree of NeRF Gaussians must be 0..3, got {sh_degree}")
    K = (sh_degree + 1) ** 2
    num_dirs = max(num_dirs, 2 * K)
    if mesh.num_vertices == 0:
        raise SplatkitError("the NeRF's surface has no vertices: no Gaussians to write")
    areas = _vertex_areas(mesh.vertices, mesh.faces)
    sigma_plane = DISC_SCALE * np.maximum(np.sqrt(areas), 0.25 * mesh.cell)
    scales = np.stack([sigma_plane, sigma_plane, np.full_like(sigma_plane, THIN * mesh.cell)], axis=1)
    # Viewing rays into the surface: -(local hemisphere direction), rotated into each vertex frame.
    dirs = -np.einsum("vij,mj->mvi", _tangent_frames(mesh.normals), _hemisphere(num_dirs))
    alpha, depth, colors = along_normals(model, mesh, dirs)
    # Neighbouring discs overlap: on a surface where each disc stands for an area A, the discs'
    # footprints sum to 2 pi sigma^2 / A (their peak-1 Gaussians), so a disc opacity of
    # -ln(1 - alpha) A / (2 pi sigma^2) lets the overlapping discs transmit what the field's ray
    # does (a semi-transparent haze stays one; an opaque surface saturates at the clamp).
    area = (sigma_plane / DISC_SCALE) ** 2
    alpha = -np.log1p(-np.clip(alpha, 0.0, 1.0 - 1e-9)) * area / (2.0 * np.pi * sigma_plane ** 2)
    alpha = np.clip(alpha, 0.01, 0.99)
    means = mesh.vertices - depth[:, None] * mesh.normals  # where that ray's colour comes from
    coeffs, rms = fit_sh(colors, dirs, sh_degree)
    splats = {"means": torch.as_tensor(means, dtype=torch.float32),
              "scales": torch.as_tensor(np.log(scales), dtype=torch.float32),
              "quats": torch.as_tensor(_quats_z_to(mesh.normals), dtype=torch.float32),
              "opacities": torch.as_tensor(np.log(alpha / (1.0 - alpha)), dtype=torch.float32),
              "sh0": torch.as_tensor(coeffs[:, :1], dtype=torch.float32),
              "shN": torch.as_tensor(coeffs[:, 1:K], dtype=torch.float32).reshape(len(alpha), K - 1, 3)}
    return NerfGaussians(GaussianModel(splats, sh_degree), mesh, rms)
