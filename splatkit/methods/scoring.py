"""One way to render a model's views and score them, used by everything that reports a number:
the trainer's test scores, ``splatkit eval``, ``export``'s bake report and ``benchmark``.

How backgrounds enter the numbers:

* Renders use the run's own background (:func:`background_for`: the ``black`` / ``white`` it
  trained with; black for ``random``).
* The target is what the model was trained to reproduce: the image as loaded or, for runs trained
  with ``use_masks``, the image composited over that same background outside the mask.
* With masks, ``masked_*`` follow the DTU sparse-view protocol (RegNeRF): against the *loaded*
  image, inside the mask (:mod:`splatkit.metrics`).

A model is anything with ``render(viewmats, Ks, width, height, *, backgrounds, render_mode,
near_plane, far_plane, backend) -> (renders, alphas, meta)`` (``render_mode="RGB+ED"`` puts the
expected depth in the last channel) and ``to(device)``: every method's evaluation model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import numpy as np

from splatkit.errors import SplatkitError

DEFAULT_BATCH = 4
METRIC_KEYS = ("psnr", "ssim", "lpips", "masked_psnr", "masked_ssim", "masked_lpips")


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
    """The fixed background colour a run trains, renders and is evaluated with: its
    ``background_color`` (what ``auto`` resolved to, or a given colour), else the ``black`` /
    ``white`` it names; black for ``random`` (as gsplat evaluates: the run learned to leave the
    background transparent, so any fixed colour is consistent with it) and for an unresolved
    ``auto``."""
    color = getattr(config, "background_color", None)
    if color is not None:
        return np.asarray(color, dtype=np.float32).reshape(3)
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
    return RenderSettings(background=background_for(config), device=str(device), backend=config.backend,
                          near_plane=config.near_plane, far_plane=config.far_plane, batch_size=int(batch_size))


def view_batches(cameras, batch_size: int) -> Iterator[list[int]]:
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
    bg = torch.as_tensor(settings.background, dtype=torch.float32, device=settings.device)
    for idx in view_batches(cameras, settings.batch_size):
        cams = cameras[idx]
        W, H = int(cams.widths[0]), int(cams.heights[0])
        with torch.no_grad():
            renders, alphas, _ = model.render(
                cams.viewmats(settings.device), cams.intrinsics(settings.device), W, H,
                render_mode="RGB+ED", backgrounds=bg[None].expand(len(idx), 3).contiguous(),
                near_plane=settings.near_plane, far_plane=settings.far_plane, backend=settings.backend)
        renders = renders.float().cpu().numpy()
        alphas = alphas.float().cpu().numpy()[..., 0]
        for j, i in enumerate(idx):
            yield i, np.clip(renders[j, ..., :3], 0.0, 1.0), renders[j, ..., 3], alphas[j]


def eval_target(scene, position: int, background: np.ndarray, composite: bool) -> np.ndarray:
    """What a render of view ``position`` is scored against (see the module docstring)."""
    img = scene.images[position]
    if composite and scene.masks is not None:
        m = scene.masks[position][..., None]
        img = img * m + background * (1.0 - m)
    return img.astype(np.float32)


def view_metrics(rgb: np.ndarray, target: np.ndarray, gt: np.ndarray, mask: Optional[np.ndarray]) -> dict:
    """One view's metrics. SSIM and LPIPS need images of at least 11x11 pixels and masked metrics a
    non-empty mask; where they are undefined they are ``None``; ``lpips_unavailable`` says why
    LPIPS is missing."""
    from splatkit.metrics.image import SSIM_WINDOW, compute_metrics, masked_psnr, psnr

    if min(rgb.shape[:2]) < SSIM_WINDOW:
        m = {"psnr": psnr(rgb, target), "ssim": None, "lpips": None,
             "lpips_unavailable": f"SSIM and LPIPS are not computed for images smaller than "
                                  f"{SSIM_WINDOW}x{SSIM_WINDOW} pixels"}
        if mask is not None:
            try:
                mp = masked_psnr(rgb, gt, mask)
            except SplatkitError:
                mp = None
            m.update(masked_psnr=mp, masked_ssim=None, masked_lpips=None)
        return m
    m = compute_metrics(rgb, target)
    if mask is not None:
        # The DTU protocol scores against the loaded image, not the background-composited one.
        try:
            masked = compute_metrics(rgb, gt, mask=mask)
        except SplatkitError:  # an empty mask: masked metrics are undefined for this view
            masked = {}
        for key in ("masked_psnr", "masked_ssim", "masked_lpips"):
            m[key] = masked.get(key)
    return m


def score_views(model, scene, positions: Sequence[int], settings: RenderSettings, *, composite_gt: bool,
                on_render=None) -> tuple[list[dict], Optional[str]]:
    """Render ``scene``'s views at ``positions`` and score each: ``(rows, lpips_unavailable)``,
    one row per view ``{"position", "id", "name", metric: value | None}`` (non-finite values as
    None). ``on_render(i, rgb, depth, alpha)`` sees every render (pictures, previews)."""
    import math

    positions = list(positions)
    rows, lpips_reason = [], None
    for i, rgb, depth, alpha in render_views(model, scene.cameras[positions], settings):
        p = positions[i]
        if on_render is not None:
            on_render(i, rgb, depth, alpha)
        mask = scene.masks[p] if scene.masks is not None else None
        target = eval_target(scene, p, settings.background, composite_gt)
        m = view_metrics(rgb, target, scene.images[p], mask)
        lpips_reason = m.pop("lpips_unavailable", None) or lpips_reason
        row = {"position": p, "id": int(scene.ids[p]), "name": scene.names[p]}
        for k in METRIC_KEYS:
            if k in m:
                v = m[k]
                row[k] = None if v is None or not math.isfinite(float(v)) else float(v)
        rows.append(row)
    return rows, lpips_reason


def mean_metrics(rows: Sequence[dict]) -> dict:
    """Per-view means of every metric that has at least one value (benchmarks average per view)."""
    out = {}
    for k in METRIC_KEYS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        if vals:
            out[k] = float(np.mean(vals))
    return out
