"""The one scene container every loader returns and every trainer/evaluator consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from splatkit.data.cameras import Cameras
from splatkit.errors import DataError, SplatkitError


@dataclass
class Normalization:
    """The similarity applied to the user's world: ``x_ours = scale * R @ (x_user - center)``.

    Readers normalise scenes so that the object of interest sits near the origin at unit scale;
    exporters use :meth:`to_original` to write results back in the user's frame.
    """

    center: np.ndarray = field(default_factory=lambda: np.zeros(3))
    scale: float = 1.0
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))

    @property
    def matrix(self) -> np.ndarray:
        """4x4 ``ours_from_user``."""
        T = np.eye(4)
        T[:3, :3] = self.scale * self.rotation
        T[:3, 3] = -self.scale * self.rotation @ np.asarray(self.center, dtype=np.float64)
        return T

    @property
    def inverse_matrix(self) -> np.ndarray:
        """4x4 ``user_from_ours``."""
        return np.linalg.inv(self.matrix)

    def to_original(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return (pts / self.scale) @ self.rotation + np.asarray(self.center)

    def from_original(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return self.scale * (pts - np.asarray(self.center)) @ self.rotation.T

    def inverse(self) -> "Normalization":
        """The similarity that undoes this one (``user -> ours`` becomes ``ours -> user``):
        ``x_user = (1/s) R^T x_ours + c = (1/s) R^T (x_ours + s R c)``."""
        R = np.asarray(self.rotation, dtype=np.float64)
        return Normalization(center=-self.scale * R @ np.asarray(self.center, dtype=np.float64),
                             scale=1.0 / self.scale, rotation=R.T.copy())

    def to_dict(self) -> dict:
        return {"center": np.asarray(self.center).tolist(), "scale": float(self.scale),
                "rotation": np.asarray(self.rotation).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalization":
        return cls(np.asarray(d["center"], dtype=np.float64), float(d["scale"]),
                   np.asarray(d["rotation"], dtype=np.float64))


@dataclass
class Scene:
    """Posed images of one scene, in splatkit's normalised world frame.

    ``images[i]`` is float32 [H_i, W_i, 3] in [0, 1]; ``masks[i]`` float32 [H_i, W_i] in [0, 1]
    (1 = object); ``depths[i]`` float32 [H_i, W_i] z-depth along the camera axis in the
    normalised frame (0 = unknown). ``ids[i]`` is the view's id in the source dataset
    (DTU camera index, COLMAP image id, frame index), ``names[i]`` its file stem.
    """

    cameras: Cameras
    images: list[np.ndarray]
    names: list[str]
    ids: list[int]
    masks: Optional[list[np.ndarray]] = None
    depths: Optional[list[np.ndarray]] = None
    points: Optional[np.ndarray] = None  # [P, 3] SfM points (normalised frame)
    point_colors: Optional[np.ndarray] = None  # [P, 3] float in [0, 1]
    normalization: Normalization = field(default_factory=Normalization)
    splits: dict[str, list[int]] = field(default_factory=dict)  # split name -> view ids
    source_format: str = "unknown"
    root: Optional[Path] = None
    depth_kind: Optional[str] = None  # what ``depths`` hold, when their folder declares it (depth_io.DEPTH_KINDS)
    # Set when ``depths`` were made metric by fitting them to triangulated points
    # (splatkit.data.depth_align): the maps are metric whatever kind the files were declared.
    depth_aligned: bool = False

    def __post_init__(self) -> None:
        n = len(self.cameras)
        if len(self.images) != n:
            raise DataError(f"{len(self.images)} images for {n} cameras", self.root)
        if len(self.names) != n or len(self.ids) != n:
            raise DataError(f"{len(self.names)} names / {len(self.ids)} ids for {n} cameras", self.root)
        for i, img in enumerate(self.images):
            h, w = img.shape[:2]
            if (w, h) != (int(self.cameras.widths[i]), int(self.cameras.heights[i])):
                raise DataError(
                    f"image {self.names[i]} is {w}x{h} but its camera says "
                    f"{int(self.cameras.widths[i])}x{int(self.cameras.heights[i])}", self.root)
        for label, extra in (("masks", self.masks), ("depths", self.depths)):
            if extra is not None and len(extra) != n:
                raise DataError(f"{len(extra)} {label} for {n} images", self.root)
        if len(set(self.ids)) != n:
            raise DataError("view ids are not unique", self.root)

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the first view."""
        return int(self.cameras.widths[0]), int(self.cameras.heights[0])

    def index_of(self, view_ids) -> list[int]:
        """Positions of the given original view ids; a clear error for unknown ids."""
        lookup = {v: i for i, v in enumerate(self.ids)}
        missing = [v for v in view_ids if v not in lookup]
        if missing:
            raise DataError(f"view id(s) {missing} not in this scene (ids {min(self.ids)}..{max(self.ids)})",
                            self.root)
        return [lookup[v] for v in view_ids]

    def subset(self, positions) -> "Scene":
        """A scene holding only the views at ``positions`` (indices into this scene)."""
        pos = [int(p) for p in positions]
        keep_ids = {self.ids[p] for p in pos}
        return Scene(
            cameras=self.cameras[pos],
            images=[self.images[p] for p in pos],
            names=[self.names[p] for p in pos],
            ids=[self.ids[p] for p in pos],
            masks=None if self.masks is None else [self.masks[p] for p in pos],
            depths=None if self.depths is None else [self.depths[p] for p in pos],
            points=self.points,
            point_colors=self.point_colors,
            normalization=self.normalization,
            splits={k: [v for v in ids if v in keep_ids] for k, ids in self.splits.items()},
            depth_kind=self.depth_kind,
            depth_aligned=self.depth_aligned,
            source_format=self.source_format,
            root=self.root,
        )

    def train_test_ids(self, hold_every: int = 8) -> tuple[list[int], list[int]]:
        """Train and test view ids: the dataset's own split when it has one, else every
        ``hold_every``-th view held out (the Mip-NeRF 360 / LLFF habit)."""
        if "train" in self.splits and "test" in self.splits and self.splits["test"]:
            return list(self.splits["train"]), list(self.splits["test"])
        test = [v for i, v in enumerate(self.ids) if i % hold_every == 0]
        train = [v for i, v in enumerate(self.ids) if i % hold_every != 0]
        return train, test


def normalization_from_matrix(matrix) -> Normalization:
    """The :class:`~splatkit.data.scene.Normalization` whose ``matrix`` is this 4x4 similarity."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise SplatkitError("normalisation must be a finite 4x4 matrix")
    a = m[:3, :3]
    det = float(np.linalg.det(a))
    if not det > 0:
        raise SplatkitError("normalisation matrix is not a similarity (its determinant is not positive)")
    s = det ** (1.0 / 3.0)
    rot = a / s
    if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-5):
        raise SplatkitError("normalisation matrix is not a similarity (scaled rotation + translation)")
    return Normalization(center=-(rot.T @ m[:3, 3]) / s, scale=s, rotation=rot)
