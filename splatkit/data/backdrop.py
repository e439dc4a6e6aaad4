"""The backdrop behind an object, estimated from the training images.

Captures on a uniform backdrop (a white sweep, product photos, images masked to white such as
MonoSDF's DTU crops) show the same colour all around the object. A splat model trained on a black
background must paint that colour with Gaussians, and with few views those Gaussians float in
front of the object from every other view (fog). Trained on the backdrop's own colour instead,
the backdrop costs nothing: the Gaussians there can stay transparent.

The estimate looks at the pixels that should be backdrop: outside the object masks when the
scene has masks, else a thin frame along every image border (objects are centred in object
captures; a scene that fills the frame has no uniform border and gets no estimate). The backdrop
counts as uniform when most of those pixels lie close to their median colour.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

# Fraction of the image width/height the border frame covers, per side.
BORDER_FRACTION = 0.04
# A pixel belongs to the backdrop when its largest channel difference from the median colour is
# below this (8-bit: ~15 levels; JPEG noise and vignetting on a white sweep stay within it).
COLOR_TOLERANCE = 0.06
# Share of the candidate pixels that must match for the backdrop to count as uniform.
MIN_COVERAGE = 0.75
# Estimated colours this close to black or white snap to exactly black or white, so that a dark
# DTU capture trains exactly as with ``background="black"``.
SNAP_TOLERANCE = 0.04


@dataclass(frozen=True)
class BackdropEstimate:
    color: Optional[np.ndarray]  # [3] in [0, 1]; None: no uniform backdrop found
    coverage: float  # share of the candidate pixels within COLOR_TOLERANCE of the median colour
    median: np.ndarray  # [3] median colour of the candidate pixels
    source: str  # "masks" or "border"
    pixels: int  # candidate pixels looked at

    def describe(self) -> str:
        where = "outside the masks" if self.source == "masks" else "along the image borders"
        median = ", ".join(f"{c:.2f}" for c in self.median)
        if self.color is None:
            return (f"no uniform backdrop {where} ({self.coverage:.0%} of the pixels near their median "
                    f"colour ({median}), {MIN_COVERAGE:.0%} needed)")
        return f"{color_name(self.color)} backdrop {where} ({self.coverage:.0%} of the pixels near ({median}))"


def color_name(color: np.ndarray) -> str:
    if np.all(color == 0.0):
        return "black"
    if np.all(color == 1.0):
        return "white"
    return "(" + ", ".join(f"{c:.3f}" for c in color) + ")"


def _border_mask(shape: tuple[int, int], fraction: float) -> np.ndarray:
    H, W = shape
    by, bx = max(1, round(H * fraction)), max(1, round(W * fraction))
    keep = np.zeros((H, W), bool)
    keep[:by], keep[-by:], keep[:, :bx], keep[:, -bx:] = True, True, True, True
    return keep


def estimate_backdrop(images: Sequence[np.ndarray], masks: Optional[Sequence[np.ndarray]] = None, *,
                      exclude: Optional[Sequence[np.ndarray]] = None,
                      border_fraction: float = BORDER_FRACTION, tolerance: float = COLOR_TOLERANCE,
                      min_coverage: float = MIN_COVERAGE) -> BackdropEstimate:
    """The uniform backdrop of ``images`` ([H, W, 3] in [0, 1]), if there is one.

    With ``masks`` ([H, W], 1 = object) the candidates are the pixels outside the (dilated by one
    pixel, to skip the anti-aliased rim) masks, else a frame of ``border_fraction`` along each
    border. ``exclude`` ([H, W], true = skip) leaves further pixels out of the candidates: a part
    of the backdrop something else treats, such as DTU's dark void beyond its white table. The
    colour is the median of the candidates when at least ``min_coverage`` of them lie within
    ``tolerance`` (max over channels) of it; snapped to black/white within SNAP_TOLERANCE.
    """
    if not len(images):
        raise ValueError("estimate_backdrop needs at least one image")
    chunks = []
    for i, image in enumerate(images):
        rgb = np.asarray(image, dtype=np.float32)[..., :3]
        if masks is not None:
            m = np.asarray(masks[i]) > 0.5
            grown = m.copy()  # one-pixel dilation without scipy
            grown[1:] |= m[:-1]
            grown[:-1] |= m[1:]
            grown[:, 1:] |= m[:, :-1]
            grown[:, :-1] |= m[:, 1:]
            keep = ~grown
        else:
            keep = _border_mask(rgb.shape[:2], border_fraction)
        if exclude is not None:
            keep = keep & ~np.asarray(exclude[i], bool)
        chunks.append(rgb[keep])
    pixels = np.concatenate(chunks) if chunks else np.zeros((0, 3), np.float32)
    source = "masks" if masks is not None else "border"
    if len(pixels) == 0:
        return BackdropEstimate(None, 0.0, np.zeros(3, np.float32), source, 0)
    median = np.median(pixels, axis=0).astype(np.float32)
    coverage = float((np.abs(pixels - median).max(axis=1) <= tolerance).mean())
    color = None
    if coverage >= min_coverage:
        color = median.copy()
        for snap in (0.0, 1.0):
            if np.abs(color - snap).max() <= SNAP_TOLERANCE:
                color = np.full(3, snap, np.float32)
    return BackdropEstimate(color, coverage, median, source, int(len(pixels)))
