"""Camera paths for videos: a smooth closed orbit through the neighbourhood of the training views.

The orbit is an ellipse fitted to the training camera centres: its plane is the best-fit plane of
the centres (PCA), its centre their centroid, its axes their principal in-plane directions with
semi-axes ``sqrt(2)`` times the standard deviation along each (exact for centres spread evenly
on an ellipse; for a filled cap of cameras it stays inside the region the views cover, where
renders are trustworthy). Every frame looks at the cameras' focus point (the point closest to
all optical axes) with the training views' up direction (:func:`world_up`) and the first
training camera's intrinsics and image size. Frame 0 sits at the angle of the first training
camera, the path heads towards the second, and the loop closes without repeating a frame.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from splatkit.data.cameras import Cameras
from splatkit.errors import SplatkitError


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """4x4 camera-to-world (OpenCV axes: x right, y down, z forward) at ``eye`` looking at ``target``
    with image-up as close to ``up`` as possible."""
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    zn = np.linalg.norm(z)
    if zn < 1e-12:
        raise SplatkitError("orbit camera coincides with its look-at point")
    z = z / zn
    x = np.cross(-np.asarray(up, dtype=np.float64), z)  # y points down, so right = down x forward
    xn = np.linalg.norm(x)
    if xn < 1e-9:
        raise SplatkitError("orbit camera looks straight along the up direction")
    x = x / xn
    y = np.cross(z, x)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def world_up(cameras: Cameras) -> np.ndarray:
    """The world's up direction as the training views see it.

    Photos are taken with level horizons, so every camera's right axis (+x) is perpendicular to
    up: up is the direction least aligned with all of them (smallest eigenvector of
    ``sum x_i x_i^T``), signed to agree with the cameras' mean image-up (-y). Averaging image-up
    alone would tilt it towards the mean viewing direction and roll the orbit's horizon. When the
    right axes are (nearly) all parallel, that eigenvector is ill-defined and the mean image-up
    is used.
    """
    mean_up = -cameras.camtoworlds[:, :3, 1].mean(axis=0)
    if np.linalg.norm(mean_up) < 1e-9:
        raise SplatkitError("cannot orbit: the training cameras disagree on which way is up")
    mean_up = mean_up / np.linalg.norm(mean_up)
    x = cameras.camtoworlds[:, :3, 0]
    evals, evecs = np.linalg.eigh(x.T @ x / len(x))  # ascending
    if evals[1] - evals[0] < 1e-3:
        return mean_up
    up = evecs[:, 0]
    return up if up @ mean_up >= 0 else -up


def fit_orbit(centers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ellipse through the camera centres: ``(centre, axis_u, axis_v, normal)`` with the semi-axis
    lengths folded into ``axis_u`` / ``axis_v``, so ``p(t) = centre + cos t axis_u + sin t axis_v``."""
    c = np.asarray(centers, dtype=np.float64)
    if len(c) < 2:
        raise SplatkitError("an orbit needs at least 2 training cameras")
    mean = c.mean(axis=0)
    _, sing, vt = np.linalg.svd(c - mean, full_matrices=False)
    std = sing / np.sqrt(len(c))
    if std[0] < 1e-9 * max(1.0, float(np.abs(mean).max())):
        raise SplatkitError("cannot fit an orbit: all training cameras are at the same position")
    u, v = vt[0], vt[1]
    normal = np.cross(u, v)
    return mean, np.sqrt(2.0) * std[0] * u, np.sqrt(2.0) * std[1] * v, normal


def orbit_path(cameras: Cameras, n_frames: int, focus: Optional[np.ndarray] = None) -> Cameras:
    """``n_frames`` cameras on a closed orbit around ``focus`` (default: the training cameras'
    focus point, see :func:`splatkit.data.normalize.focus_point`)."""
    from splatkit.data.normalize import focus_point

    if n_frames < 1:
        raise SplatkitError(f"an orbit needs at least 1 frame, got {n_frames}")
    if len(cameras) < 2:
        raise SplatkitError("an orbit needs at least 2 training cameras")
    if focus is None:
        focus = focus_point(cameras)
        if focus is None:
            raise SplatkitError(
                "cannot orbit: the training cameras' optical axes have no common focus point "
                "(forward-facing capture); give a focus point")
    focus = np.asarray(focus, dtype=np.float64)
    centre, axis_u, axis_v, _ = fit_orbit(cameras.centers)
    up = world_up(cameras)

    def angle(point: np.ndarray) -> float:
        rel = point - centre
        a = float(rel @ axis_u) / max(float(axis_u @ axis_u), 1e-30)
        b = float(rel @ axis_v) / max(float(axis_v @ axis_v), 1e-30)
        return float(np.arctan2(b, a))

    # Start at the first training camera's angle and travel towards the second one, so the
    # video follows the order of the capture.
    t0 = angle(cameras.centers[0])
    if np.sin(angle(cameras.centers[1]) - t0) < 0:
        axis_v = -axis_v
        t0 = -t0
    ts = t0 + 2.0 * np.pi * np.arange(n_frames) / n_frames
    c2ws = np.stack([look_at(centre + np.cos(t) * axis_u + np.sin(t) * axis_v, focus, up) for t in ts])
    return Cameras(
        Ks=np.repeat(cameras.Ks[:1], n_frames, axis=0),
        camtoworlds=c2ws,
        widths=np.full(n_frames, int(cameras.widths[0])),
        heights=np.full(n_frames, int(cameras.heights[0])),
    )
