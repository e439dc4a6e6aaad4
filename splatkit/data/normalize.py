"""Choosing the normalised world frame for a scene."""

from __future__ import annotations

import numpy as np

from splatkit.data.cameras import Cameras
from splatkit.data.scene import Normalization


def focus_point(cameras: Cameras) -> np.ndarray | None:
    """Least-squares point closest to every camera's optical axis (instant-ngp's "look-at" centre).

    ``None`` when the axes are nearly parallel (forward-facing captures), where it is ill-posed.
    """
    c = cameras.centers
    d = cameras.forward
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for ci, di in zip(c, d):
        P = np.eye(3) - np.outer(di, di)
        A += P
        b += P @ ci
    if np.linalg.cond(A) > 1e4 or len(c) < 2:
        return None
    p = np.linalg.solve(A, b)
    # Must lie in front of most cameras to be a sensible centre.
    if np.mean(np.einsum("ni,ni->n", p - c, d) > 0) < 0.5:
        return None
    return p


def normalization_from_cameras(cameras: Cameras) -> Normalization:
    """Centre on the cameras' focus point (camera centroid if ill-posed) and scale so that the
    farthest camera is at distance 1 from the centre. Keeps the user's axes (no rotation)."""
    center = focus_point(cameras)
    if center is None:
        center = cameras.centers.mean(axis=0)
    radius = float(np.max(np.linalg.norm(cameras.centers - center, axis=1)))
    scale = 1.0 / radius if radius > 1e-12 else 1.0
    return Normalization(center=center, scale=scale)


def normalization_from_sphere(center: np.ndarray, radius: float) -> Normalization:
    """Map a known object sphere (DTU's ``scale_mat``, a synthetic scene's bound) to the unit sphere."""
    return Normalization(center=np.asarray(center, dtype=np.float64), scale=1.0 / float(radius))
