"""3D points from a scene whose cameras are known: SIFT features, matches, COLMAP's point
triangulator with every camera held fixed (``colmap point_triangulator``), run in a child process."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from splatkit.data.scene import Scene
from splatkit.errors import DataError


@dataclass
class TriangulatedPoints:
    """Points triangulated from a :class:`~splatkit.data.scene.Scene`'s own cameras.

    ``xyz`` [N, 3] float64 in the Scene's world frame (the normalised frame its
    ``cameras.camtoworlds`` use, not the dataset's original one; ``scene.normalization`` maps
    between them). ``rgb`` [N, 3] uint8 (COLMAP's mean colour over the track). ``reproj_error`` [N]
    mean reprojection error in pixels. ``observations[v] = (point_ids, pixels)``: for scene view
    index ``v`` (a position in the scene, not its dataset id), rows of ``xyz`` seen in that view
    (int64 [M]) and where (float64 [M, 2]), in that view's image pixels at the Scene's resolution
    with splatkit's (and COLMAP's) convention: origin at the top-left *corner*, pixel centres at
    ``+0.5``, so ``pixels`` compare directly with ``scene.cameras.project``. Views without any
    triangulated point have empty arrays.
    """

    xyz: np.ndarray
    rgb: np.ndarray
    reproj_error: np.ndarray
    observations: dict[int, tuple[np.ndarray, np.ndarray]]

    def __len__(self) -> int:
        return len(self.xyz)

    def track_lengths(self) -> np.ndarray:
        """Number of views that see each point, [N]."""
        counts = np.zeros(len(self.xyz), dtype=np.int64)
        for ids, _ in self.observations.values():
            np.add.at(counts, ids, 1)
        return counts


# Skew moves a pixel by skew * (v - cy) / fy; below this many pixels over the whole image it is
# dropped (DTU's decomposed projections carry ~1e-4 px of numerical skew).
MAX_DROPPED_SKEW_PX = 0.01


def _pinhole_params(K: np.ndarray, height: int, label: str) -> list[float]:
    if abs(K[0, 1]) * height / K[1, 1] > MAX_DROPPED_SKEW_PX:
        raise DataError(f"{label}: intrinsics with skew ({K[0, 1]:.3g}) cannot be handed to COLMAP's PINHOLE camera")
    return [float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])]


def triangulate_known_poses(scene: Scene, view_indices: Optional[Sequence[int]] = None, *,
                            workdir: Optional[str | Path] = None, seed: int = 0,
                            max_num_features: int = 8192, two_view_tracks: bool = True,
                            num_threads: int = -1) -> TriangulatedPoints:
    """Extract and match SIFT features in the given views (all by default), triangulate them with
    the scene's cameras held fixed and return the points (see :class:`TriangulatedPoints` for the
    frame and pixel conventions).

    ``view_indices`` are positions in ``scene`` (at least two). Two-view tracks are kept by
    default (sparse views rarely see a point three times). ``workdir`` keeps the images, database
    and log there (a temporary folder otherwise). pycolmap runs in a child process: a failure is
    a :class:`~splatkit.errors.SplatkitError`, never a crash.
    """
    from splatkit.data.imageio_utils import write_image
    from splatkit.data.sfm.runner import run_stage

    idx = list(range(len(scene))) if view_indices is None else [int(v) for v in view_indices]
    if len(idx) < 2:
        raise DataError(f"triangulation needs at least two views, got {len(idx)}")
    if len(set(idx)) != len(idx) or min(idx) < 0 or max(idx) >= len(scene):
        raise DataError(f"view indices must be distinct positions in the scene (0..{len(scene) - 1}), got {idx}")
    with tempfile.TemporaryDirectory(prefix="splatkit-tri-") as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        image_dir = work / "images"
        image_dir.mkdir(parents=True, exist_ok=True)
        w2c = scene.cameras.worldtocams()
        views = []
        for v in idx:
            name = f"{v:06d}.png"
            write_image(image_dir / name, scene.images[v])
            views.append({"name": name, "width": int(scene.cameras.widths[v]), "height": int(scene.cameras.heights[v]),
                          "params": _pinhole_params(scene.cameras.Ks[v], int(scene.cameras.heights[v]),
                                                    f"view {scene.names[v]}"),
                          "cam_from_world": w2c[v, :3, :4].tolist()})
        database = work / "database.db"
        database.unlink(missing_ok=True)
        common = {"database": str(database), "image_dir": str(image_dir), "num_threads": num_threads, "seed": seed}
        run_stage("extract", {**common, "image_names": [v["name"] for v in views], "camera_model": "PINHOLE",
                              "camera_params": views[0]["params"], "single_camera": False,
                              "max_num_features": max_num_features, "set_cameras": views},
                  work, label="feature extraction")
        run_stage("match", {**common, "matching": "exhaustive"}, work, label="feature matching")
        npz = work / "points.npz"
        run_stage("triangulate", {**common, "views": views, "output": str(work / "triangulated"),
                                  "points_npz": str(npz), "two_view_tracks": two_view_tracks},
                  work, label="triangulation")
        with np.load(npz) as z:
            data = {k: z[k] for k in z.files}
    observations = {}
    for k, v in enumerate(idx):
        sel = data["obs_view"] == k
        observations[v] = (data["obs_point"][sel].astype(np.int64), data["obs_xy"][sel].astype(np.float64))
    return TriangulatedPoints(xyz=data["xyz"], rgb=data["rgb"], reproj_error=data["reproj_error"],
                              observations=observations)
