"""Rendering a trained run: its dataset views as PNGs (colour and colour-mapped expected depth)
and an orbit video (MP4 through imageio-ffmpeg; a GIF when no ffmpeg binary is available).

Frames are rendered a few cameras at a time (``batch_size``) and written as they come, so memory
stays bounded however long the video is.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence

import numpy as np

from splatkit.errors import SplatkitError

DEFAULT_FPS = 30
DEFAULT_ORBIT_FRAMES = 120
DEFAULT_BATCH = 4

# -- colour maps --------------------------------------------------------------------------------
# Polynomial fits, so depth maps need no matplotlib. Turbo: Anton Mikhailov's colormap, fit by
# Ruofei Du (https://gist.github.com/mikhailov-work/0d177465a8151eb6ede1768d51d476c7): degree 5.
_TURBO = np.array([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])
# Viridis: Matt Zucker's degree-6 fit of matplotlib's viridis (https://www.shadertoy.com/view/WlfXRN).
_VIRIDIS = np.array([
    [0.2777273272234177, 0.1050930431085774, -0.3308618287255563, -4.634230498983486,
     6.228269936347081, 4.776384997670288, -5.435455855934631],
    [0.005407344544966578, 1.404613529898575, 0.214847559468213, -5.799100973351585,
     14.17993336680509, -13.74514537774601, 4.645852612178535],
    [0.3340998053353061, 1.384590162594685, 0.09509516302823659, -19.33244095627987,
     56.69055260068105, -65.35303263337234, 26.3124352495832],
])
COLORMAPS = {"turbo": _TURBO, "viridis": _VIRIDIS}


def apply_colormap(x: np.ndarray, name: str = "turbo") -> np.ndarray:
    """Values in [0, 1] (clipped) -> float32 RGB in [0, 1], shape ``x.shape + (3,)``."""
    if name not in COLORMAPS:
        raise SplatkitError(f"unknown colormap {name!r}; choose from {', '.join(COLORMAPS)}")
    coeffs = COLORMAPS[name]  # [3, degree + 1], lowest power first
    t = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), 0.0, 1.0)[..., None]
    out = np.zeros(t.shape[:-1] + (3,))
    for c in coeffs.T[::-1]:  # Horner's scheme
        out = out * t + c
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def colorize_depth(depth: np.ndarray, alpha: np.ndarray, near: float, far: float,
                   colormap: str = "turbo") -> np.ndarray:
    """Expected depth [H, W] -> RGB [H, W, 3]: near..far mapped to the colormap's 0..1 (near is
    blue with turbo), faded to white where the render is transparent (nerfstudio's convention)."""
    span = max(float(far) - float(near), 1e-12)
    rgb = apply_colormap((depth - near) / span, colormap)
    a = np.clip(alpha, 0.0, 1.0)[..., None]
    return (rgb * a + (1.0 - a)).astype(np.float32)


def depth_range(means: np.ndarray, opacities: np.ndarray, cameras, max_points: int = 20_000,
                seed: int = 0) -> tuple[float, float]:
    """One (near, far) for a whole set of frames, so their colours are comparable: the 2nd and
    98th percentiles of the camera-space depths of the (mostly) opaque Gaussians in front of the
    cameras (a seeded subsample keeps this cheap for big models and long paths)."""
    pts = np.asarray(means, dtype=np.float64)
    keep = np.asarray(opacities) > 0.5
    if keep.sum() >= 10:
        pts = pts[keep]
    if len(pts) > max_points:
        pts = pts[np.random.default_rng(seed).choice(len(pts), max_points, replace=False)]
    _, z = cameras.project(pts)
    z = z[z > 1e-6]
    if z.size == 0:
        return 0.0, 1.0
    near, far = np.percentile(z, [2.0, 98.0])
    return float(near), float(max(far, near + 1e-6))


# -- rendering ----------------------------------------------------------------------------------
@dataclass
class RenderSettings:
    """How to render a run's model: taken from its training config so renders match training."""

    background: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    device: str = "cpu"
    backend: str = "auto"
    near_plane: float = 0.01
    far_plane: float = 1e10
    batch_size: int = DEFAULT_BATCH


def background_for(config) -> np.ndarray:
    """The fixed background colour renders and evaluation use for a run: the ``black`` / ``white``
    it trained with; black for ``random`` (as the trainer's own test metrics and gsplat do: the
    run learned to leave the background transparent, so any fixed colour is consistent with it)."""
    return np.full(3, 1.0 if config.background == "white" else 0.0, dtype=np.float32)


def settings_for(config, batch_size: int = DEFAULT_BATCH, device: Optional[str] = None) -> RenderSettings:
    import torch

    if device is None:
        device = config.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise SplatkitError("the run asks for device 'cuda' but no CUDA GPU is available here")
    if batch_size < 1:
        raise SplatkitError(f"batch size must be >= 1, got {batch_size}")
    return RenderSettings(background=background_for(config), device=device, backend=config.backend,
                          near_plane=config.near_plane, far_plane=config.far_plane,
                          batch_size=int(batch_size))


def _batches(cameras, batch_size: int) -> Iterator[list[int]]:
    """Consecutive view indices in groups of at most ``batch_size`` sharing one image size."""
    group: list[int] = []
    for i in range(len(cameras)):
        size = (int(cameras.widths[i]), int(cameras.heights[i]))
        if group and (len(group) == batch_size
                      or size != (int(cameras.widths[group[0]]), int(cameras.heights[group[0]]))):
            yield group
            group = []
        group.append(i)
    if group:
        yield group


def render_views(model, cameras, settings: RenderSettings) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(index, rgb [H,W,3] in [0,1], expected depth [H,W], alpha [H,W])`` per camera, rendered
    ``settings.batch_size`` views at a time."""
    import torch

    model = model.to(settings.device)
    for idx in _batches(cameras, settings.batch_size):
        cams = cameras[idx]
        W, H = int(cams.widths[0]), int(cams.heights[0])
        bg = torch.as_tensor(settings.background, dtype=torch.float32, device=settings.device)
        with torch.no_grad():
            renders, alphas, _ = model.render(
                cams.viewmats(settings.device), cams.intrinsics(settings.device), W, H,
                render_mode="RGB+ED", backgrounds=bg[None].expand(len(idx), 3).contiguous(),
                near_plane=settings.near_plane, far_plane=settings.far_plane, backend=settings.backend)
        renders = renders.float().cpu().numpy()
        alphas = alphas.float().cpu().numpy()[..., 0]
        for j, i in enumerate(idx):
            yield i, np.clip(renders[j, ..., :3], 0.0, 1.0), renders[j, ..., 3], alphas[j]


# -- video files --------------------------------------------------------------------------------
def ffmpeg_available() -> tuple[bool, str]:
    """Whether imageio can write MP4 here, and why not."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return False, "the imageio-ffmpeg package is not installed"
    try:
        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as exc:  # RuntimeError when neither the bundled nor a system binary exists
        return False, f"no ffmpeg binary found ({str(exc).splitlines()[0][:160]})"
    return True, exe


def _to_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8:
        frame = (np.clip(frame, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return frame


def _pad_even(frame: np.ndarray) -> np.ndarray:
    # H.264 with yuv420p needs even sizes; padding by one replicated pixel keeps every frame's
    # content unscaled (imageio would otherwise resize to a multiple of 16).
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


@dataclass
class VideoResult:
    path: Path
    num_frames: int
    fallback_reason: Optional[str] = None  # why a GIF was written instead of the MP4 asked for


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: int = DEFAULT_FPS) -> VideoResult:
    """Write frames (float [0,1] or uint8, [H, W, 3]) to ``path`` as they arrive.

    ``.mp4`` needs ffmpeg (the imageio-ffmpeg wheel bundles one); without it a GIF is written next
    to it (``path`` with ``.gif``) and the reason returned. ``.gif`` writes a GIF. The file appears
    only when complete (written under a temporary name, then renamed).
    """
    import imageio.v2 as imageio_v2
    import imageio.v3 as iio

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".mp4", ".gif"):
        raise SplatkitError(f"video file must end in .mp4 or .gif, got {path.name!r}")
    if fps < 1:
        raise SplatkitError(f"fps must be >= 1, got {fps}")
    reason = None
    if suffix == ".mp4":
        ok, why = ffmpeg_available()
        if not ok:
            reason = f"cannot write MP4: {why}; wrote a GIF instead"
            path, suffix = path.with_suffix(".gif"), ".gif"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    count = 0
    try:
        if suffix == ".mp4":
            writer = imageio_v2.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                           pixelformat="yuv420p", quality=8, macro_block_size=1,
                                           ffmpeg_log_level="error")
            try:
                for frame in frames:
                    writer.append_data(_pad_even(_to_uint8(frame)))
                    count += 1
            finally:
                writer.close()
        else:
            # Pillow writes a GIF in one go; uint8 frames are small (a 200x150 frame is 90 kB).
            buf = [_to_uint8(f) for f in frames]
            count = len(buf)
            if count:
                iio.imwrite(tmp, np.stack(buf), extension=".gif", duration=1000.0 / fps, loop=0)
        if count == 0:
            raise SplatkitError("no frames to write", path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return VideoResult(path, count, reason)


def count_video_frames(path: str | Path) -> int:
    """Number of frames in an MP4 or GIF written by :func:`write_video`."""
    import imageio.v2 as imageio_v2
    import imageio.v3 as iio

    path = Path(path)
    if path.suffix.lower() == ".gif":
        return int(iio.improps(path, index=None, extension=".gif").shape[0])
    reader = imageio_v2.get_reader(path, format="FFMPEG")
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


# -- a run's renders ------------------------------------------------------------------------------
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
    from splatkit.train.run import Run

    run = run_dir if isinstance(run_dir, Run) else Run.open(run_dir)
    model, payload = run.load_model(checkpoint)
    scene, ids, positions = run.views(split)
    cameras = scene.cameras[positions]
    names = _unique_names([scene.names[p] for p in positions], ids)
    settings = settings_for(run.config, batch_size, device)
    near, far = depth_range(model.splats["means"].detach().cpu().numpy(),
                            torch_sigmoid(model.splats["opacities"]), cameras)
    folder = Path(out_dir) if out_dir is not None else run.path / "renders" / split
    images, depths = [], []
    for i, rgb, depth, alpha in render_views(model, cameras, settings):
        img_path = folder / f"{names[i]}.png"
        depth_path = folder / "depth" / f"{names[i]}.png"
        write_image(img_path, rgb)
        write_image(depth_path, colorize_depth(depth, alpha, near, far))
        images.append(img_path)
        depths.append(depth_path)
    return SplitRenders(folder, images, depths, int(payload.get("step", -1)), (near, far))


def torch_sigmoid(logits) -> np.ndarray:
    import torch

    return torch.sigmoid(logits.detach().float().cpu()).numpy()


def orbit_focus(cameras, model) -> np.ndarray:
    """The cameras' focus point, or (forward-facing captures, whose axes barely cross) the
    opacity-weighted median of the Gaussians, i.e. where the reconstruction actually is."""
    from splatkit.data.normalize import focus_point

    focus = focus_point(cameras)
    if focus is not None:
        return focus
    means = model.splats["means"].detach().cpu().numpy()
    w = torch_sigmoid(model.splats["opacities"])
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
    from splatkit.train.run import Run

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
