"""Where repaired pseudo views are rendered from, and how much each one counts.

GaussianObject (``threestudio/data/random_camera_sampler.py``, ``sample_away_from_gt``) fits an
ellipse through the training cameras and samples, for each training camera, a point between it
and one of its two neighbours on the ellipse (chosen at random), uniformly within
``dis_from_gt`` (0.8, ``threestudio/data/loo.py``) of half the gap around the midpoint. On its
360-degree captures the ellipse's neighbours are the angular neighbours; on a DTU-style arc the
ellipse would wrap round the back of the object, where nothing was photographed. Here the same
sampling runs on the sphere around the cameras' focus point between a camera and one of its two
nearest cameras by angle, which is the same thing on a ring and stays on the arc otherwise.

Distance-aware weight (``gaussian_object_system.py``): a pseudo view's loss is scaled by
``min(1, 2 d / D)`` with ``d`` its distance to the nearest training camera and ``D`` 1.2 x the
largest distance from a training camera to its second-nearest (``distances[2]`` of the sorted
distances, itself included). GaussianObject measures these between world-to-camera translations;
camera centres are used here (the translations mix in the rotation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from splatkit.data.cameras import Cameras
from splatkit.data.normalize import focus_point
from splatkit.errors import SplatkitError

# GaussianObject threestudio/data/loo.py: refresh_random_poses uses dis_from_gt = 0.8.
SPREAD = 0.8
# gaussian_object_system.py: max_cam_dis *= 1.2 ("magic number here").
MAX_DISTANCE_MARGIN = 1.2


@dataclass
class PseudoViews:
    """Cameras of pseudo views (OpenCV axes) and their distance-aware loss weights."""

    cameras: Cameras
    weights: np.ndarray  # [V] in (0, 1]
    anchors: np.ndarray  # [V, 2] int: the two training cameras each view lies between

    def __len__(self) -> int:
        return len(self.cameras)


def _look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world matrix (OpenCV: +z forward, +y down) at ``eye`` looking at ``target``."""
    z = target - eye
    z = z / np.linalg.norm(z)
    x = np.cross(z, up)  # OpenCV: x = y cross z with y = -up, i.e. z cross up
    if np.linalg.norm(x) < 1e-8:
        x = np.cross(z, np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0]))
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def _slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    a = a / np.linalg.norm(a)
    b = b / np.linalg.norm(b)
    omega = float(np.arccos(np.clip(a @ b, -1.0, 1.0)))
    if omega < 1e-6:
        return a
    return (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)


def scene_center(cameras: Cameras) -> np.ndarray:
    """The point the cameras look at (their focus point), or the origin (where readers put the
    object) when their axes nearly meet nowhere (forward-facing captures)."""
    c = focus_point(cameras) if len(cameras) >= 2 else None
    return np.zeros(3) if c is None else np.asarray(c, dtype=np.float64)


def max_camera_distance(cameras: Cameras) -> float:
    """GaussianObject's ``max_cam_dis``: 1.2 x the largest distance from a training camera to
    its second-nearest other camera (its nearest when there are only two)."""
    c = cameras.centers
    if len(c) < 2:
        raise SplatkitError("pseudo views need at least two training cameras")
    d = np.sort(np.linalg.norm(c[:, None] - c[None], axis=-1), axis=1)  # column 0 is the camera itself
    return MAX_DISTANCE_MARGIN * float(d[:, min(2, len(c) - 1)].max())


def distance_weights(centers: np.ndarray, cameras: Cameras) -> np.ndarray:
    """``min(1, 2 d / max_cam_dis)`` for camera centres ``[V, 3]``: views near a training camera
    count little (it shows them already), views far between cameras fully."""
    d = np.linalg.norm(np.asarray(centers)[:, None] - cameras.centers[None], axis=-1).min(axis=1)
    return np.minimum(1.0, 2.0 * d / max(max_camera_distance(cameras), 1e-12))


def sample_pseudo_views(cameras: Cameras, count: int, rng: np.random.Generator, spread: float = SPREAD
                        ) -> PseudoViews:
    """``count`` pseudo cameras between training cameras (module doc). Training cameras are
    visited in turn, as GaussianObject samples one view per camera per round; intrinsics and
    image size are those of the camera a view starts from."""
    n = len(cameras)
    if n < 2:
        raise SplatkitError("pseudo views need at least two training cameras")
    if not 0.0 < spread <= 1.0:
        raise SplatkitError(f"pseudo-view spread must be in (0, 1], got {spread}")
    center = scene_center(cameras)
    rel = cameras.centers - center
    radius = np.linalg.norm(rel, axis=1)
    if np.any(radius < 1e-9):
        raise SplatkitError("a training camera sits at the scene centre; pseudo views cannot orbit it")
    unit = rel / radius[:, None]
    angle = np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))
    np.fill_diagonal(angle, np.inf)
    neighbours = np.argsort(angle, axis=1)[:, :min(2, n - 1)]
    ups = -cameras.camtoworlds[:, :3, 1]  # OpenCV +y points down the image
    c2w, Ks, widths, heights, anchors = [], [], [], [], []
    for k in range(count):
        i = k % n
        j = int(neighbours[i, rng.integers(neighbours.shape[1])])
        # GaussianObject: uniform within spread x half the gap around the midpoint.
        t = 0.5 + (rng.random() - 0.5) * spread
        direction = _slerp(unit[i], unit[j], t)
        eye = center + direction * ((1 - t) * radius[i] + t * radius[j])
        up = (1 - t) * ups[i] + t * ups[j]
        c2w.append(_look_at(eye, center, up))
        Ks.append(cameras.Ks[i])
        widths.append(int(cameras.widths[i]))
        heights.append(int(cameras.heights[i]))
        anchors.append((i, j))
    cams = Cameras(Ks=np.stack(Ks), camtoworlds=np.stack(c2w), widths=np.array(widths), heights=np.array(heights))
    return PseudoViews(cameras=cams, weights=distance_weights(cams.centers, cameras).astype(np.float32),
                       anchors=np.asarray(anchors, dtype=np.int64))


def camera_tensors(cameras: Cameras, device) -> tuple[torch.Tensor, torch.Tensor]:
    """World-to-camera matrices and intrinsics as float32 tensors, for ``Method.render``."""
    return (torch.as_tensor(cameras.worldtocams(), dtype=torch.float32, device=device),
            torch.as_tensor(cameras.Ks, dtype=torch.float32, device=device))
