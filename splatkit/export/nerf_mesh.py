"""A NeRF run's surface as a coloured triangle mesh: the density sampled on a lattice over the
scene box (only near occupied cells of the occupancy grid), marching cubes
(``skimage.measure.marching_cubes``) at a density threshold, vertex colours from the colour MLP
looking along the negative vertex normal, optionally only the largest connected components; PLY
or OBJ through open3d, in the user's world frame as every export.

Threshold: a density is per unit length of the run's normalised frame and how dense a surface gets
depends on the scene and on how long the field trained, so the default is read off the field's own
occupancy grid (:func:`auto_threshold`): the median density of its occupied cells (nerfacc keeps,
per cell, the density at random points in it, times the step size). On the demo scene's NeRF
(600 steps) that is 1.19 (docs/benchmarks.md, "NeRF exports"), well below torch-ngp's fixed 10 or
Instant-NGP's 2.5, which cut most of such a young field away. Without an occupied cell the fallback is
torch-ngp's ``save_mesh`` default, 10. Anything below the occupancy grid's binarisation level
(``occ_thre / step_size``) would need cells the grid skips, so the lattice is then sampled
everywhere.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from splatkit.errors import DataError, SplatkitError

DEFAULT_RESOLUTION = 256  # lattice points along the box's longest side (256^3 is minutes on a CPU)
FALLBACK_THRESHOLD = 10.0  # density (per unit length of the normalised frame) without an occupancy grid
MESH_SUFFIXES = (".ply", ".obj")
OCC_THRESHOLD = 1e-2  # nerfacc's occ_thre: a cell is occupied when density x step size exceeds it
BATCH_POINTS = 1 << 16  # density queries per batch

Progress = Optional[Callable[[int, int], None]]


@dataclass
class TriangleMesh:
    """``vertices [V, 3]`` and ``normals [V, 3]`` (unit, pointing out of the dense side),
    ``faces [F, 3]`` (int64, counter-clockwise seen from outside), ``colors [V, 3]`` in [0, 1];
    float64 numpy arrays in one frame (``frame``: ``"normalised"`` or ``"user"``). ``cell``: the
    lattice spacing (same frame)."""

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray
    colors: np.ndarray
    cell: float
    frame: str = "normalised"
    threshold: float = 0.0  # the density it was extracted at

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])

    @property
    def num_faces(self) -> int:
        return int(self.faces.shape[0])

    def to_original_frame(self, normalization) -> "TriangleMesh":
        """The mesh in the user's world frame (``x_user = R^T x / s + c``; normals rotate by ``R^T``)."""
        R = np.asarray(normalization.rotation, dtype=np.float64)
        return TriangleMesh(normalization.to_original(self.vertices), self.faces.copy(), self.normals @ R,
                            self.colors.copy(), self.cell / float(normalization.scale), "user", self.threshold)


def auto_threshold(model) -> float:
    """The median density of the occupancy grid's occupied cells (``occs / step_size``; every
    level), or ``FALLBACK_THRESHOLD`` when no occupied cell holds a positive value."""
    est = model.estimator
    occs = est.occs.reshape(est.binaries.shape)[est.binaries]
    occs = occs[occs > 0]
    if not occs.numel():
        return FALLBACK_THRESHOLD
    return float(occs.median()) / model.step_size


def lattice(aabb, resolution: int) -> tuple[list[np.ndarray], float]:
    """Coordinates per axis of a lattice with cubic cells over the box, ``resolution`` points along
    its longest side, and the spacing."""
    if resolution < 8:
        raise SplatkitError(f"mesh resolution must be >= 8, got {resolution}")
    lo, hi = np.asarray(aabb[:3], np.float64), np.asarray(aabb[3:], np.float64)
    cell = float((hi - lo).max()) / (resolution - 1)
    axes = []
    for a in range(3):
        n = max(2, int(np.ceil((hi[a] - lo[a]) / cell - 1e-9)) + 1)
        axes.append(lo[a] + cell * np.arange(n))
    return axes, cell


def _near_occupied(model, pts: torch.Tensor, dilate: torch.Tensor) -> torch.Tensor:
    """Whether points fall in an occupied (dilated) cell of the occupancy grid's finest level."""
    est = model.estimator
    box = est.aabbs[0].to(pts.device)
    res = torch.tensor(dilate.shape, device=pts.device)
    idx = ((pts - box[:3]) / (box[3:] - box[:3]) * res).floor().long()
    inside = ((idx >= 0) & (idx < res)).all(-1)
    idx = torch.minimum(idx.clamp_min(0), res - 1)
    return dilate[idx[:, 0], idx[:, 1], idx[:, 2]] & inside


@torch.no_grad()
def density_grid(model, resolution: int = DEFAULT_RESOLUTION, threshold: float = FALLBACK_THRESHOLD,
                 progress: Progress = None) -> tuple[np.ndarray, list[np.ndarray], float, int]:
    """The density of a :class:`~splatkit.models.nerf_field.NerfModel` on :func:`lattice` over its
    scene box: ``(density [nx, ny, nz] float32, axes, spacing, points queried)``. Points outside the
    occupied cells of the occupancy grid (dilated by one cell) read 0 when ``threshold`` is above
    the grid's binarisation level (there the field is below the threshold by construction); else
    every point is queried. ``progress(done, total)`` after each slab of x."""
    axes, cell = lattice(model.config.aabb, resolution)
    nx, ny, nz = (len(a) for a in axes)
    device = model.device
    binaries = model.estimator.binaries[0]
    use_occ = threshold * model.step_size >= OCC_THRESHOLD and bool(binaries.any())
    dilate = None
    if use_occ:
        dilate = torch.nn.functional.max_pool3d(binaries[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    out = np.zeros((nx, ny, nz), np.float32)
    yz = torch.stack(torch.meshgrid(torch.as_tensor(axes[1], dtype=torch.float32),
                                    torch.as_tensor(axes[2], dtype=torch.float32), indexing="ij"), -1).reshape(-1, 2)
    yz = yz.to(device)
    slab = max(1, BATCH_POINTS * 4 // yz.shape[0])
    queried = 0
    for s in range(0, nx, slab):
        xs = torch.as_tensor(axes[0][s:s + slab], dtype=torch.float32, device=device)
        pts = torch.cat([xs[:, None, None].expand(-1, yz.shape[0], 1),
                         yz[None].expand(xs.shape[0], -1, -1)], -1).reshape(-1, 3)
        sigma = torch.zeros(pts.shape[0], device=device)
        todo = _near_occupied(model, pts, dilate).nonzero()[:, 0] if use_occ else None
        n = pts.shape[0] if todo is None else todo.numel()
        for b in range(0, n, BATCH_POINTS):
            if todo is None:
                sigma[b:b + BATCH_POINTS] = model.field.density(pts[b:b + BATCH_POINTS])
            else:
                sel = todo[b:b + BATCH_POINTS]
                sigma[sel] = model.field.density(pts[sel])
        queried += n
        out[s:s + xs.shape[0]] = sigma.reshape(xs.shape[0], ny, nz).cpu().numpy()
        if progress is not None:
            progress(min(s + slab, nx), nx)
    return out, axes, cell, queried


@torch.no_grad()
def surface_colors(model, points: np.ndarray, view_dirs: np.ndarray) -> np.ndarray:
    """The colour MLP's colour at ``points [V, 3]`` seen along ``view_dirs [M, V, 3]`` (ray
    directions, camera to point): ``[M, V, 3]`` in [0, 1]. The hash features are computed once per
    point; only the colour MLP runs per direction."""
    from splatkit.models.nerf_field import DIR_SH_DEGREE
    from splatkit.render.sh import sh_basis

    field = model.field
    device = model.device
    M, V = view_dirs.shape[0], points.shape[0]
    out = np.zeros((M, V, 3), np.float32)
    for s in range(0, V, BATCH_POINTS):
        x = torch.as_tensor(points[s:s + BATCH_POINTS], dtype=torch.float32, device=device)
        _, geo = field.density_and_features(x)  # geometry features, as NerfField.forward computes them
        for m in range(M):
            d = torch.as_tensor(view_dirs[m, s:s + BATCH_POINTS], dtype=torch.float32, device=device)
            d = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            rgb = torch.sigmoid(field.color_mlp(torch.cat([geo, sh_basis(DIR_SH_DEGREE, d)], dim=-1)))
            out[m, s:s + x.shape[0]] = rgb.cpu().numpy()
    return out


def keep_largest_components(mesh: TriangleMesh, count: int) -> TriangleMesh:
    """The ``count`` connected components with the most faces (vertices re-indexed)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if count < 1 or mesh.num_faces == 0:
        return mesh
    f = mesh.faces
    V = mesh.num_vertices
    rows = np.concatenate([f[:, 0], f[:, 1], f[:, 2]])
    cols = np.concatenate([f[:, 1], f[:, 2], f[:, 0]])
    n, labels = connected_components(coo_matrix((np.ones(rows.size), (rows, cols)), shape=(V, V)), directed=False)
    if n <= count:
        return mesh
    face_label = labels[f[:, 0]]
    sizes = np.bincount(face_label, minlength=n)
    keep_labels = np.argsort(-sizes, kind="stable")[:count]
    keep_faces = np.isin(face_label, keep_labels)
    return _subset(mesh, keep_faces)


def _subset(mesh: TriangleMesh, keep_faces: np.ndarray) -> TriangleMesh:
    faces = mesh.faces[keep_faces]
    used = np.zeros(mesh.num_vertices, bool)
    used[faces.reshape(-1)] = True
    remap = np.cumsum(used) - 1
    return TriangleMesh(mesh.vertices[used], remap[faces].astype(np.int64), mesh.normals[used], mesh.colors[used],
                        mesh.cell, mesh.frame, mesh.threshold)


def vertex_normals(vertices: np.ndarray, faces: np.ndarray, fallback: Optional[np.ndarray] = None) -> np.ndarray:
    """Unit vertex normals: the area-weighted mean of the adjacent triangles' normals (steadier
    than the lattice's finite-difference gradient where the density jumps within a cell);
    ``fallback`` where that sum vanishes."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    face_n = np.cross(b - a, c - a)  # length = twice the area
    n = np.zeros_like(vertices)
    for i in range(3):
        np.add.at(n, faces[:, i], face_n)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    if fallback is not None:
        bad = length[:, 0] < 1e-20
        n[bad], length[bad] = fallback[bad], np.linalg.norm(fallback[bad], axis=1, keepdims=True)
    return n / length.clip(1e-20)


def extract_mesh(model, resolution: int = DEFAULT_RESOLUTION, threshold: Optional[float] = None,
                 keep_largest: int = 0, progress: Progress = None) -> TriangleMesh:
    """The NeRF's iso-surface ``density = threshold`` (default :func:`auto_threshold`; the mesh's
    ``threshold`` says which) in its normalised frame (see the module docstring); ``keep_largest``
    > 0 keeps that many largest connected components. Raises a :class:`SplatkitError` when the
    density never crosses the threshold inside the box."""
    from skimage.measure import marching_cubes

    if threshold is None:
        threshold = auto_threshold(model)
    if not (np.isfinite(threshold) and threshold > 0):
        raise SplatkitError(f"mesh threshold must be a positive density, got {threshold}")
    vol, axes, cell, _ = density_grid(model, resolution, threshold, progress)
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < threshold < hi:
        size = "x".join(str(len(a)) for a in axes)
        raise SplatkitError(f"no surface at density threshold {threshold:g}: on the {size} lattice the density "
                            f"ranges from {lo:.3g} to {hi:.3g} (choose --mesh-threshold inside that range)")
    # The box's faces are outside the field (density 0 there in NerfField): pad with zeros so that
    # a surface cut by the box is closed rather than open.
    vol = np.pad(vol, 1)
    verts, faces, normals, _ = marching_cubes(vol, level=threshold, spacing=(cell, cell, cell),
                                              gradient_direction="descent", allow_degenerate=False)
    origin = np.array([a[0] for a in axes]) - cell
    verts = verts.astype(np.float64) + origin
    # skimage's triangles are clockwise seen from the side its normals point to: flip to CCW.
    faces = faces[:, ::-1].astype(np.int64)
    normals = vertex_normals(verts, faces, fallback=normals.astype(np.float64))
    mesh = TriangleMesh(verts, faces, normals, np.zeros_like(verts), cell, threshold=float(threshold))
    if keep_largest:
        mesh = keep_largest_components(mesh, keep_largest)
    # Colour: what a camera looking straight at the vertex (along -normal) sees there.
    mesh.colors = surface_colors(model, mesh.vertices, -mesh.normals[None])[0].astype(np.float64)
    return mesh


def write_mesh(path: str | Path, mesh: TriangleMesh) -> Path:
    """Write PLY (binary) or OBJ with vertex normals and colours through open3d, atomically."""
    import open3d as o3d

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise SplatkitError(f"a mesh export must end in .ply or .obj, got {path.name!r}")
    m = o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(mesh.vertices),
                                  o3d.utility.Vector3iVector(mesh.faces.astype(np.int32)))
    m.vertex_normals = o3d.utility.Vector3dVector(mesh.normals)
    m.vertex_colors = o3d.utility.Vector3dVector(np.clip(mesh.colors, 0.0, 1.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    # open3d picks the writer by the suffix: a temporary name that keeps it, then a rename.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{suffix}")
    try:
        ok = o3d.io.write_triangle_mesh(str(tmp), m, write_ascii=False, compressed=False,
                                        write_vertex_normals=True, write_vertex_colors=True,
                                        write_triangle_uvs=False, print_progress=False)
        if not ok or not tmp.is_file():
            raise DataError("open3d could not write the mesh", path)
        os.replace(tmp, path)
    finally:
        for extra in (tmp, tmp.with_suffix(".mtl")):
            if extra.exists():
                extra.unlink()
    return path


def read_mesh(path: str | Path) -> TriangleMesh:
    """A mesh file read back through open3d (tests, tools)."""
    import open3d as o3d

    m = o3d.io.read_triangle_mesh(str(path))
    if len(m.vertices) == 0:
        raise DataError("no mesh read", path)
    normals = np.asarray(m.vertex_normals) if m.has_vertex_normals() else np.zeros((len(m.vertices), 3))
    colors = np.asarray(m.vertex_colors) if m.has_vertex_colors() else np.zeros((len(m.vertices), 3))
    return TriangleMesh(np.asarray(m.vertices).copy(), np.asarray(m.triangles).astype(np.int64), normals.copy(),
                        colors.copy(), 0.0, "user")
