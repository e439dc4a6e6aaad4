"""Pictures and videos of renders: colour maps for depth (no matplotlib), and MP4 video writing
through imageio-ffmpeg (a GIF when no ffmpeg binary is available), frame by frame so memory stays
bounded however long the video is. Rendering a run's views and orbits is
:mod:`splatkit.app.render`'s.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from splatkit.errors import SplatkitError

DEFAULT_FPS = 30

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
