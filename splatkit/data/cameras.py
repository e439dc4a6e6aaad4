"""The one camera model shared by every part of splatkit.

Conventions (the same as COLMAP, OpenCV and gsplat):

* ``camtoworlds`` are 4x4 camera-to-world matrices in **OpenCV axes**: x right, y down, z forward.
* ``Ks`` are 3x3 pinhole intrinsics mapping camera coordinates to **continuous pixel coordinates
  whose origin is the top-left corner of the top-left pixel**; the centre of pixel ``(i, j)`` is at
  ``(i + 0.5, j + 0.5)``. This is COLMAP's convention and what gsplat's rasteriser samples.
  With it, downsampling an image by an integer factor ``d`` (averaging ``d x d`` blocks) scales
  ``fx, fy, cx, cy`` by exactly ``1/d``: :meth:`Cameras.rescaled`.
  Sources that put pixel centres on integers (OpenCV calibration, DTU/IDR ``world_mat``) are shifted
  by +0.5 px when read (:func:`shift_principal_point_to_corner_origin`).
* ``distortion`` (optional) holds OpenCV coefficients ``k1, k2, p1, p2[, k3]`` per view.

Arrays are float64 numpy (sub-pixel geometry checks need the precision); :meth:`viewmats` and
:meth:`intrinsics` hand float32 torch tensors to renderers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from splatkit.errors import DataError

# Flip y and z: OpenCV (x right, y down, z forward) <-> OpenGL (x right, y up, z backward).
_CV_FROM_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_to_opencv(c2w_gl: np.ndarray) -> np.ndarray:
    """Camera-to-world matrices with OpenGL/Blender/nerfstudio axes -> OpenCV axes."""
    return np.asarray(c2w_gl, dtype=np.float64) @ _CV_FROM_GL


def opencv_to_opengl(c2w_cv: np.ndarray) -> np.ndarray:
    """Camera-to-world matrices with OpenCV axes -> OpenGL/Blender/nerfstudio axes."""
    return np.asarray(c2w_cv, dtype=np.float64) @ _CV_FROM_GL


def shift_principal_point_to_corner_origin(K: np.ndarray) -> np.ndarray:
    """Intrinsics with pixel centres on integers -> ours (centres at +0.5)."""
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, 2] += 0.5
    K[..., 1, 2] += 0.5
    return K


def check_rigid(c2w: np.ndarray, what: str = "pose", tol: float = 1e-3) -> None:
    """Raise :class:`DataError` unless every matrix is a finite rigid transform."""
    c2w = np.asarray(c2w, dtype=np.float64)
    if c2w.ndim == 2:
        c2w = c2w[None]
    if not np.all(np.isfinite(c2w)):
        bad = int(np.where(~np.isfinite(c2w).reshape(len(c2w), -1).all(axis=1))[0][0])
        raise DataError(f"{what} {bad} has non-finite values")
    R = c2w[:, :3, :3]
    err = np.abs(R @ np.swapaxes(R, 1, 2) - np.eye(3)).max(axis=(1, 2))
    det = np.linalg.det(R)
    bottom = np.abs(c2w[:, 3] - np.array([0, 0, 0, 1.0])).max(axis=1)
    bad = np.where((err > tol) | (np.abs(det - 1) > tol) | (bottom > 1e-6))[0]
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"{what} {i} is not a rigid transform (|R R^T - I| = {err[i]:.3g}, det R = {det[i]:.4g})"
        )


@dataclass
class Cameras:
    """A batch of ``N`` pinhole cameras (see the module docstring for conventions)."""

    Ks: np.ndarray  # [N, 3, 3]
    camtoworlds: np.ndarray  # [N, 4, 4], OpenCV axes
    widths: np.ndarray  # [N] int
    heights: np.ndarray  # [N] int
    distortion: Optional[np.ndarray] = None  # [N, 4 or 5]

    def __post_init__(self) -> None:
        self.Ks = np.asarray(self.Ks, dtype=np.float64).reshape(-1, 3, 3)
        self.camtoworlds = np.asarray(self.camtoworlds, dtype=np.float64).reshape(-1, 4, 4)
        n = len(self.camtoworlds)
        self.widths = np.broadcast_to(np.asarray(self.widths, dtype=np.int64), (n,)).copy()
        self.heights = np.broadcast_to(np.asarray(self.heights, dtype=np.int64), (n,)).copy()
        if len(self.Ks) != n:
            raise DataError(f"{len(self.Ks)} intrinsics for {n} camera poses")
        if self.distortion is not None:
            self.distortion = np.asarray(self.distortion, dtype=np.float64).reshape(n, -1)
            if not np.any(self.distortion):
                self.distortion = None
        if not np.all(np.isfinite(self.Ks)):
            raise DataError("camera intrinsics contain non-finite values")
        check_rigid(self.camtoworlds, "camera pose")

    # -- basic access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.camtoworlds)

    def __getitem__(self, index) -> "Cameras":
        idx = np.arange(len(self))[index]
        idx = np.atleast_1d(idx)
        return Cameras(
            Ks=self.Ks[idx],
            camtoworlds=self.camtoworlds[idx],
            widths=self.widths[idx],
            heights=self.heights[idx],
            distortion=None if self.distortion is None else self.distortion[idx],
        )

    @staticmethod
    def concatenate(parts: Sequence["Cameras"]) -> "Cameras":
        dist = None
        if any(p.distortion is not None for p in parts):
            width = max(p.distortion.shape[1] for p in parts if p.distortion is not None)
            dist = np.concatenate(
                [
                    np.zeros((len(p), width)) if p.distortion is None
                    else np.pad(p.distortion, ((0, 0), (0, width - p.distortion.shape[1])))
                    for p in parts
                ]
            )
        return Cameras(
            Ks=np.concatenate([p.Ks for p in parts]),
            camtoworlds=np.concatenate([p.camtoworlds for p in parts]),
            widths=np.concatenate([p.widths for p in parts]),
            heights=np.concatenate([p.heights for p in parts]),
            distortion=dist,
        )

    @property
    def centers(self) -> np.ndarray:
        """Camera centres in world coordinates, [N, 3]."""
        return self.camtoworlds[:, :3, 3].copy()

    @property
    def forward(self) -> np.ndarray:
        """Viewing directions (+z of each camera) in world coordinates, [N, 3]."""
        return self.camtoworlds[:, :3, 2].copy()

    def worldtocams(self) -> np.ndarray:
        """World-to-camera matrices (OpenCV axes), float64 numpy, [N, 4, 4]."""
        R = self.camtoworlds[:, :3, :3]
        t = self.camtoworlds[:, :3, 3]
        out = np.tile(np.eye(4), (len(self), 1, 1))
        out[:, :3, :3] = np.swapaxes(R, 1, 2)
        out[:, :3, 3] = -np.einsum("nji,nj->ni", R, t)
        return out

    # -- what renderers take ------------------------------------------------------------------
    def viewmats(self, device="cpu"):
        """World-to-camera matrices as gsplat's ``rasterization(viewmats=...)`` takes them: [N,4,4] float32."""
        import torch

        return torch.from_numpy(self.worldtocams()).float().to(device)

    def intrinsics(self, device="cpu"):
        """Intrinsics as gsplat's ``rasterization(Ks=...)`` takes them: [N,3,3] float32."""
        import torch

        return torch.from_numpy(self.Ks).float().to(device)

    # -- conversions --------------------------------------------------------------------------
    def rescaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (0.25 for a x4 downsample).

        With the corner-origin pixel convention, every intrinsic scales by ``factor``; image sizes
        become ``round(size * factor)``. (Integer downsampling by block averaging is exact.)
        """
        if not factor > 0:
            raise DataError(f"rescale factor must be positive, got {factor}")
        Ks = self.Ks.copy()
        Ks[:, :2, :] *= factor
        return Cameras(
            Ks=Ks,
            camtoworlds=self.camtoworlds.copy(),
            widths=np.round(self.widths * factor).astype(np.int64),
            heights=np.round(self.heights * factor).astype(np.int64),
            distortion=None if self.distortion is None else self.distortion.copy(),
        )

    def camtoworlds_opengl(self) -> np.ndarray:
        """Camera-to-world matrices in OpenGL axes (nerfstudio, Blender, instant-ngp)."""
        return opencv_to_opengl(self.camtoworlds)

    @classmethod
    def from_opengl(cls, Ks, camtoworlds_gl, widths, heights, distortion=None) -> "Cameras":
        return cls(Ks, opengl_to_opencv(camtoworlds_gl), widths, heights, distortion)

    def transformed(self, world_from_old: np.ndarray) -> "Cameras":
        """Cameras after applying a similarity transform ``x_new = s R x_old + t`` to the world.

        The scale is removed from the rotation so the result stays rigid.
        """
        T = np.asarray(world_from_old, dtype=np.float64)
        s = np.cbrt(np.linalg.det(T[:3, :3]))
        c2w = T @ self.camtoworlds
        c2w[:, :3, :3] /= s
        return Cameras(self.Ks.copy(), c2w, self.widths.copy(), self.heights.copy(),
                       None if self.distortion is None else self.distortion.copy())

    # -- geometry -----------------------------------------------------------------------------
    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Project world points [P,3] into every camera: pixel coords [N,P,2] and depths [N,P].

        Pinhole only: ``distortion`` is kept from the source but not applied here, nor are images
        undistorted by the readers (the rasterizer is pinhole too)."""
        pts = np.asarray(points, dtype=np.float64)
        w2c = self.worldtocams()
        cam = np.einsum("nij,pj->npi", w2c[:, :3, :3], pts) + w2c[:, None, :3, 3]
        z = cam[..., 2]
        uv = np.einsum("nij,npj->npi", self.Ks, cam)
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uv[..., :2] / uv[..., 2:3]
        return uv, z

    def pixel_rays(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Ray origins and unit directions through every pixel centre of view ``index``: [H,W,3] each."""
        W, H = int(self.widths[index]), int(self.heights[index])
        u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
        K = self.Ks[index]
        x = (u - K[0, 2] - K[0, 1] * (v - K[1, 2]) / K[1, 1]) / K[0, 0]
        y = (v - K[1, 2]) / K[1, 1]
        d_cam = np.stack([x, y, np.ones_like(x)], axis=-1)
        R = self.camtoworlds[index, :3, :3]
        d = d_cam @ R.T
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        o = np.broadcast_to(self.camtoworlds[index, :3, 3], d.shape).copy()
        return o, d
