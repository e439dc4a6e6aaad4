"""Rendering a trained run: its dataset views as PNGs (colour and colour-mapped expected depth)
and an orbit video. Works for any method's run: the model comes from the method registry
(``Run.load_model``) and renders through :func:`splatkit.methods.scoring.render_views`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from splatkit.methods.scoring import DEFAULT_BATCH, render_views, settings_for
from splatkit.render.video import DEFAULT_FPS, VideoResult, colorize_depth, depth_range, write_video
from splatkit.train.run import Run

DEFAULT_ORBIT_FRAMES = 120


def model_anchor_points(model) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``(points [N, 3], weights [N])`` where the model puts its content (3DGS: Gaussian centres
    and opacities), or None for a model that does not say (``anchor_points()``)."""
    fn = getattr(model, "anchor_points", None)
    return None if fn is None else fn()


@dataclass
class SplitRenders:
    folder: Path
    images: list[Path]
    depths: list[Path]
    step: int
    depth_range: tuple[float, float]


def _unique_names(names: Sequence[str], ids: Sequence[int]) -> list[str]:
    if len(set(names)) == len(names):
        return list(names)
    return [f"{i:04d}_{n}" for n, i in zip(names, ids)]


def render_split(run_dir, split: str = "test", checkpoint=None, out_dir=None,
                 batch_size: int = DEFAULT_BATCH, device: Optional[str] = None) -> SplitRenders:
    """Render a run's ``split`` views to ``out_dir`` (default ``RUN/renders/<split>``): one
    ``<name>.png`` per view plus ``depth/<name>.png``, expected depth colour-mapped with turbo
    over one depth range shared by every view."""
    from splatkit.data.imageio_utils import write_image

    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    scene, ids, positions = run.views(split)
    cameras = scene.cameras[positions]
    names = _unique_names([scene.names[p] for p in positions], ids)
    settings = settings_for(run.config, batch_size, device)
    folder = Path(out_dir) if out_dir is not None else run.path / "renders" / split
    anchors = model_anchor_points(model)
    renders = render_views(model, cameras, settings)
    if anchors is not None:
        near, far = depth_range(anchors[0], anchors[1], cameras)
    else:  # no points to go by: the rendered depths themselves (a split is a few dozen views)
        renders = list(renders)
        near, far = _rendered_depth_range([(d, a) for _, _, d, a in renders])
    images, depths = [], []
    for i, rgb, depth, alpha in renders:
        img_path = folder / f"{names[i]}.png"
        depth_path = folder / "depth" / f"{names[i]}.png"
        write_image(img_path, rgb)
        write_image(depth_path, colorize_depth(depth, alpha, near, far))
        images.append(img_path)
        depths.append(depth_path)
    return SplitRenders(folder, images, depths, int(payload.get("step", -1)), (near, far))


def _rendered_depth_range(depth_alpha) -> tuple[float, float]:
    """2nd-98th percentile of the expected depth where renders are mostly opaque."""
    vals = np.concatenate([d[a > 0.5] for d, a in depth_alpha] or [np.zeros(0)])
    vals = vals[np.isfinite(vals) & (vals > 1e-6)]
    if vals.size == 0:
        return 0.0, 1.0
    near, far = np.percentile(vals, [2.0, 98.0])
    return float(near), float(max(far, near + 1e-6))


def orbit_focus(cameras, model) -> np.ndarray:
    """The cameras' focus point, or (forward-facing captures, whose axes barely cross) the
    weighted median of the model's anchor points (3DGS: opacity-weighted Gaussian centres), i.e.
    where the reconstruction actually is; the origin, where readers put the scene, otherwise."""
    from splatkit.data.normalize import focus_point

    focus = focus_point(cameras)
    if focus is not None:
        return focus
    anchors = model_anchor_points(model)
    if anchors is None:
        return np.zeros(3)
    means, w = anchors
    out = np.empty(3)
    for k in range(3):
        order = np.argsort(means[:, k])
        cdf = np.cumsum(w[order])
        out[k] = means[order[np.searchsorted(cdf, 0.5 * cdf[-1])], k]
    return out


def render_orbit(run_dir, video: Optional[str | Path] = None, n_frames: int = DEFAULT_ORBIT_FRAMES,
                 checkpoint=None, fps: int = DEFAULT_FPS, batch_size: int = DEFAULT_BATCH,
                 device: Optional[str] = None) -> VideoResult:
    """Render an orbit around the scene (fitted to the training cameras, see
    :mod:`splatkit.render.cameras_path`) to ``video`` (default ``RUN/renders/orbit.mp4``)."""
    from splatkit.render.cameras_path import orbit_path

    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, _ = run.load_model(checkpoint)
    scene = run.load_scene()
    train_ids, _ = run.split()
    train_cams = scene.cameras[scene.index_of(train_ids)] if train_ids else scene.cameras
    path_cams = orbit_path(train_cams, n_frames, focus=orbit_focus(train_cams, model))
    settings = settings_for(run.config, batch_size, device)
    target = Path(video) if video is not None else run.path / "renders" / "orbit.mp4"
    frames = (rgb for _, rgb, _, _ in render_views(model, path_cams, settings))
    return write_video(target, frames, fps=fps)
