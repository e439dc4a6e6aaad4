"""How close recovered camera poses are to known ones, up to the similarity SfM cannot fix."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splatkit.errors import SplatkitError


def align_poses(recovered_c2w: np.ndarray, known_c2w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(s, R, t)``: the similarity ``x -> s R x + t`` taking recovered cameras onto known ones.

    ``R`` is the chordal L2 mean of the per-view rotations ``R_known R_recovered^T`` (projected onto
    SO(3), Hartley et al., "Rotation averaging", IJCV 2013), then ``s`` and ``t`` are the least-squares
    fit of the centres given ``R``. Fitting ``R`` to the centres alone (Umeyama) is ill-conditioned
    when the cameras lie near a line or an arc, as a row of DTU positions or a forward-facing capture
    do; the orientations fix it whatever the layout."""
    rec = np.asarray(recovered_c2w, dtype=np.float64)
    ref = np.asarray(known_c2w, dtype=np.float64)
    if rec.shape != ref.shape or rec.ndim != 3 or rec.shape[1:] != (4, 4) or len(rec) < 2:
        raise SplatkitError(f"pose alignment needs matching [N, 4, 4] poses with N >= 2, got {rec.shape} and {ref.shape}")
    M = np.einsum("nij,nkj->ik", ref[:, :3, :3], rec[:, :3, :3])  # sum of R_known R_recovered^T
    U, _, Vt = np.linalg.svd(M)
    R = U @ np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))]) @ Vt
    a = rec[:, :3, 3] @ R.T
    b = ref[:, :3, 3]
    a0, b0 = a - a.mean(axis=0), b - b.mean(axis=0)
    den = float((a0 ** 2).sum())
    if den <= 0:
        raise SplatkitError("pose alignment: the recovered camera centres coincide")
    s = float((a0 * b0).sum() / den)
    t = b.mean(axis=0) - s * a.mean(axis=0)
    return s, R, t


@dataclass
class PoseErrors:
    rotation_deg: np.ndarray  # [N] angle between recovered (aligned) and known camera orientations
    center_pct: np.ndarray  # [N] centre distance after alignment, in % of the scene scale
    scene_scale: float  # largest distance between two known camera centres (the capture's extent)

    @property
    def mean_rotation_deg(self) -> float:
        return float(self.rotation_deg.mean())

    @property
    def mean_center_pct(self) -> float:
        return float(self.center_pct.mean())


def pose_errors(recovered_c2w: np.ndarray, known_c2w: np.ndarray) -> PoseErrors:
    """Errors of recovered camera-to-world matrices (OpenCV axes) against known ones for the same
    views, after the similarity :func:`align_poses` fits. Centre errors are in % of the largest
    distance between two known camera centres."""
    rec = np.asarray(recovered_c2w, dtype=np.float64)
    ref = np.asarray(known_c2w, dtype=np.float64)
    s, R, t = align_poses(rec, ref)
    centers = (s * rec[:, :3, 3] @ R.T) + t
    diff = ref[:, None, :3, 3] - ref[None, :, :3, 3]
    scale = float(np.linalg.norm(diff, axis=-1).max())
    rel = np.einsum("nji,njk->nik", ref[:, :3, :3], R @ rec[:, :3, :3])  # R_known^T R_aligned
    cos = np.clip((np.trace(rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    return PoseErrors(rotation_deg=np.degrees(np.arccos(cos)),
                      center_pct=100.0 * np.linalg.norm(centers - ref[:, :3, 3], axis=1) / scale,
                      scene_scale=scale)
