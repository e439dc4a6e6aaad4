"""Sparse-view regularisers that need no pretrained network, each one plugin
(:mod:`splatkit.methods.plugins`, found through the ``splatkit.plugins`` entry point):

* ``opacity_decay`` — Binocular3DGS (Han et al., NeurIPS 2024): every Gaussian's opacity is
  multiplied by 0.995 after every step from the start of densification on, so Gaussians the
  photometric loss does not hold up fade below the pruning threshold (floaters in sparse views).
* ``warp_consistency`` — Binocular3DGS' binocular-guided consistency: each training view's camera
  is shifted sideways to a virtual "binocular" partner, the partner's render is warped back into
  the training view through the training view's rendered depth, and the warp must reproduce the
  training image (an L1 term plus 0.05 x an edge-aware disparity smoothness).
* ``anisotropy`` — PhysGaussian's (Xie et al., CVPR 2024) cap on each Gaussian's largest-to-
  smallest axis ratio (a penalty on the excess over ``max_ratio``): needles along the training
  rays, which sparse views leave free, show as streaks from every other view.
* ``depth_smoothness`` — RegNeRF's geometry regulariser (Niemeyer et al., CVPR 2022, eq. 4)
  on Gaussians: depth rendered from a random unobserved view (a training camera swung about the
  scene centre) must be smooth, the squared difference of neighbouring pixels' depths, where
  both are opaque. Sparse views leave the depth of what they see free along their rays; from
  another direction the errors show as jagged depth (surfaces that fall apart into streaks).
* ``dark_backdrop`` — DTU's dark room, as DNGaussian (Li et al., CVPR 2024, ``train_dtu.py``) and
  Binocular3DGS treat it: a pixel is backdrop when its brightest channel is below 30/255 and so
  are the 49 pixels above it; rendered alpha there is penalised (Binocular3DGS: ``mean(|alpha| *
  mask)``, weight 1), so the splats leave the backdrop to the (black) background colour. With
  ``exclude_from_loss`` the backdrop is also left out of the photometric loss (its per-pixel
  weights are the mask's complement), as CoR-GS' DTU runs do (``loss_photometric(..., valid=
  ~bg_mask)`` in ``jiaw-z/CoR-GS`` ``train.py``); DNGaussian and Binocular3DGS keep it in (off by
  default). With ``bright`` the white tables of other DTU scans join the backdrop (FreeNeRF's
  black/white prior treats both): runs of pixels whose darkest channel is above 1 - 30/255, over
  ``bright_run`` (100, ours) pixels rather than 50, so that highlights on white objects (scan 65's
  skull: 0.5% of its pixels at 50) are not taken for it; they are always left out of the
  photometric loss (a black background cannot show them). With ``table`` (ours) the table of a
  two-part backdrop (scan 37: the void above a white table; ``background auto`` then trains on
  the table's colour) joins the alpha penalty: pixels of the background's colour within 30/255,
  opened by a 5 x 5 square, in regions that reach the image border and cover >= 1% of it (the
  object's texture and highlights fail one test or the other). Training on the table's colour
  makes a splat of that colour free along a training ray that sees the table, so without this
  they pile up in front of it and cover the object in the views between the training cameras.
  ``solid_weight`` (ours) penalises ``1 - alpha`` on the pixels that are no backdrop.

Constants are those of the authors' code (``hanl2010/Binocular3DGS`` ``train.py``,
``utils/loss_utils.py``, ``scene/__init__.py``; ``Fictionarry/DNGaussian`` ``train_dtu.py``).
"""

from __future__ import annotations

import warnings

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Plugin, RenderOutputs, TrainState
from splatkit.methods.plugins import in_range, register_plugin

# DNGaussian / Binocular3DGS (DTU): backdrop = brightest channel below 30/255 ...
DARK_THRESHOLD = 30 / 255
# ... in the pixel and in the 49 pixels above it (``bg_mask[:, i:] *= clone[:, :-i]`` for i < 50).
DARK_RUN = 50
# White backdrops (ours): the same threshold from white, over a run of 100 pixels (module doc).
BRIGHT_RUN = 100
# The table of a two-part backdrop (ours, module doc): its colour within 30/255 (DNGaussian's dark
# threshold, from the other side), opened by a 5x5 square so that highlights thinner than that on
# the object are not taken for it, in regions that reach the image border and cover >= 1% of it.
TABLE_OPENING = 5
TABLE_MIN_AREA = 0.01
# Weight of the opacity term off a two-part backdrop (``solid_weight``; ours, as the alpha weight:
# scan 37 at 3 views, 1.0 measured in docs/benchmarks.md).
TWO_PART_SOLID = 1.0
# Largest-to-smallest axis ratio a Gaussian may reach before the anisotropy term (PhysGaussian's
# form, Xie et al. CVPR 2024) acts; 10 is a common choice of r (ours to pick: the paper gives none).
ANISOTROPY_RATIO = 10.0
# Binocular3DGS: opacity x 0.995 per step (``--opacity_decay_factor``).
OPACITY_DECAY = 0.995
# Binocular3DGS: the shifted-camera loss starts at step 20000 of 30000 (``--shift_cam_start``).
WARP_START_FRACTION = 20_000 / 30_000
# Binocular3DGS: disparity smoothness weight 0.05 and the image-edge factor 0.33 of ``SmoothLoss``.
WARP_SMOOTH_WEIGHT = 0.05
EDGE_FACTOR = 0.33
# RegNeRF renders its unobserved views in 8x8 patches at the training rays' resolution; a whole
# view at a quarter of the training size (ours) costs one small render per step. Views swing up to
# 30 degrees about the scene centre from a training camera (ours: DTU's 3 training cameras span
# ~25 degrees, its test views up to ~60 away), from the start (RegNeRF regularises from step 0).
SMOOTH_DOWNSCALE = 4
SMOOTH_MAX_ANGLE = 30.0
# Pixels whose rendered alpha is below this are backdrop: their depth is no surface's.
SMOOTH_MIN_ALPHA = 0.5
# Binocular3DGS shifts the camera by up to 0.4 units of its COLMAP frame (``--cam_trans_dist``).
# On LLFF fern that frame's training cameras are 3.88 units apart (views 1 and 10 of the 3-view
# split); in splatkit's normalised frame they are 0.118 apart at 0.99 from the scene centre, so
# 0.4 units are 0.012 of the camera's distance to the centre (max disparity ~ 0.012 x focal px).
WARP_MAX_SHIFT = 0.012


# -- the pieces as plain functions (tested directly) ---------------------------------------------
def dark_backdrop_mask(images: torch.Tensor, threshold: float = DARK_THRESHOLD, run: int = DARK_RUN) -> torch.Tensor:
    """``[B, H, W, 1]`` float mask of backdrop pixels of ``images [B, H, W, 3]``: the brightest
    channel is below ``threshold`` in the pixel and in the ``run - 1`` pixels above it (fewer in
    the top rows, as in DNGaussian's shifted products)."""
    bright = (images.amax(dim=-1) >= threshold).float()  # [B, H, W]
    B, H, W = bright.shape
    cs = torch.cat([bright.new_zeros(B, 1, W), bright.cumsum(dim=1)], dim=1)  # [B, H + 1, W]
    rows = torch.arange(H, device=images.device)
    lo = (rows - run + 1).clamp_min(0)
    count = cs[:, rows + 1] - cs[:, lo]  # bright pixels among rows max(0, r - run + 1) .. r
    return (count == 0).float()[..., None]


def table_backdrop_mask(image: np.ndarray, color, tolerance: float = DARK_THRESHOLD,
                        opening: int = TABLE_OPENING, min_area: float = TABLE_MIN_AREA) -> np.ndarray:
    """Boolean ``[H, W]`` mask of the table of a two-part backdrop in ``image [H, W, 3]``: pixels
    within ``tolerance`` (every channel) of the table's ``color``, morphologically opened by an
    ``opening`` x ``opening`` square, in connected regions that touch the image border and cover
    at least ``min_area`` of it. Texture and thin highlights of the object that happen to match the
    colour fail the opening or the region test."""
    from scipy import ndimage

    near = (np.abs(np.asarray(image, np.float32)[..., :3] - np.asarray(color, np.float32)).max(axis=-1) < tolerance)
    if opening > 1:
        near = ndimage.binary_opening(near, structure=np.ones((opening, opening), bool))
    labels, count = ndimage.label(near)
    if count == 0:
        return near
    H, W = near.shape
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = np.zeros(count + 1, bool)
    keep[border] = True
    keep &= sizes >= min_area * H * W
    keep[0] = False
    return keep[labels]


def shifted_viewmats(viewmats: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """World-to-camera matrices of cameras moved by ``shifts [B]`` along their own x axis (image
    right): a point at camera coordinates ``p`` is at ``p - (s, 0, 0)`` in the moved camera."""
    out = viewmats.clone()
    out[:, 0, 3] = out[:, 0, 3] - shifts
    return out


def warp_from_shifted(shifted: torch.Tensor, disparity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse warp (monodepth's, as Binocular3DGS uses it): ``out[b, r, c] = shifted[b, r, c +
    disparity[b, r, c]]``, linear between the two neighbouring columns. ``shifted [B, H, W, C]``,
    ``disparity [B, H, W]``. Returns ``(warped, valid [B, H, W, 1])``; pixels whose neighbours
    fall outside the image are 0 and invalid."""
    B, H, W, C = shifted.shape
    x = torch.arange(W, device=shifted.device, dtype=shifted.dtype)[None, None] + disparity
    x = x.clamp(-2.0, W + 1.0)  # empty pixels (depth ~0) have huge disparities: keep the indices sane
    x0 = torch.floor(x)
    w1 = (x - x0)[..., None]
    x0 = x0.long()
    x1 = x0 + 1
    valid = ((x0 >= 0) & (x1 <= W - 1))[..., None]
    i0 = x0.clamp(0, W - 1)[..., None].expand(B, H, W, C)
    i1 = x1.clamp(0, W - 1)[..., None].expand(B, H, W, C)
    warped = (1 - w1) * shifted.gather(2, i0) + w1 * shifted.gather(2, i1)
    return warped * valid, valid.to(shifted.dtype)


def _central_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """0.5 x (right - left) and 0.5 x (below - above) of ``[B, H, W, C]`` summed over channels, on
    the interior ``[B, H - 2, W - 2]`` (Binocular3DGS' ``SmoothLoss`` 3x3 edge filters, no padding)."""
    dx = 0.5 * (x[:, 1:-1, 2:] - x[:, 1:-1, :-2]).sum(dim=-1)
    dy = 0.5 * (x[:, 2:, 1:-1] - x[:, :-2, 1:-1]).sum(dim=-1)
    return dx, dy


def edge_aware_smoothness(disparity: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Binocular3DGS' ``SmoothLoss``: ``mean|exp(-0.33 |d_x I|) d_x D| + mean|exp(-0.33 |d_y I|) d_y D|``
    with ``D = disparity [B, H, W]`` and the image ``[B, H, W, 3]`` differences summed over channels."""
    ix, iy = _central_differences(image)
    dx, dy = _central_differences(disparity[..., None])
    return (torch.exp(-EDGE_FACTOR * ix.abs()) * dx).abs().mean() + (torch.exp(-EDGE_FACTOR * iy.abs()) * dy).abs().mean()


def depth_smoothness_loss(depth: torch.Tensor, alpha: torch.Tensor, scale: torch.Tensor,
                          min_alpha: float = SMOOTH_MIN_ALPHA) -> torch.Tensor:
    """RegNeRF's depth smoothness: the mean over neighbouring pixel pairs (right and below) of
    ``((d1 - d2) / scale)^2``, counting pairs whose alphas both reach ``min_alpha``. ``depth`` and
    ``alpha`` ``[B, H, W, 1]``; ``scale [B]`` makes it unit-free (the camera's distance to the
    scene centre). 0 when no pair counts."""
    d = depth[..., 0] / scale[:, None, None]
    opaque = alpha[..., 0] >= min_alpha
    right = opaque[:, :, 1:] & opaque[:, :, :-1]
    below = opaque[:, 1:, :] & opaque[:, :-1, :]
    count = right.sum() + below.sum()
    if int(count) == 0:
        return depth.sum() * 0.0
    penalty = ((d[:, :, 1:] - d[:, :, :-1]).square() * right).sum() + ((d[:, 1:, :] - d[:, :-1, :]).square() * below).sum()
    return penalty / count


def swung_camera(camtoworld: np.ndarray, center: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """A camera-to-world (OpenCV axes) moved on the sphere about ``center`` through its eye: ``yaw``
    radians about the camera's up axis, then ``pitch`` about its right axis, looking at ``center``
    with the camera's own up."""
    from scipy.spatial.transform import Rotation

    from splatkit.render.cameras_path import look_at

    right, down = camtoworld[:3, 0], camtoworld[:3, 1]
    turn = Rotation.from_rotvec(pitch * right) * Rotation.from_rotvec(yaw * -down)
    eye = center + turn.apply(camtoworld[:3, 3] - center)
    return look_at(eye, center, turn.apply(-down))


def warp_consistency_loss(shifted_render: torch.Tensor, depth: torch.Tensor, target: torch.Tensor, fx: torch.Tensor,
                          shifts: torch.Tensor, smooth_weight: float = WARP_SMOOTH_WEIGHT) -> torch.Tensor:
    """Binocular3DGS' consistency term for views moved by ``shifts [B]``: disparity ``-fx s / depth``
    (a point moves left when the camera moves right), the shifted render warped back, then
    ``mean|warped * valid - target * valid| + smooth_weight * smoothness(disparity * valid)``.
    ``shifted_render``/``target`` ``[B, H, W, 3]``, ``depth [B, H, W, 1]``, ``fx [B]``."""
    disparity = -(fx * shifts)[:, None, None] / (depth[..., 0] + 1e-5)
    warped, valid = warp_from_shifted(shifted_render, disparity)
    l1 = (warped * valid - target * valid).abs().mean()
    return l1 + smooth_weight * edge_aware_smoothness(disparity * valid[..., 0], target)


# -- plugins ------------------------------------------------------------------------------------
@register_plugin
class OpacityDecay(Plugin):
    """Binocular3DGS: opacities x ``factor`` after every step from ``refine_start_iter`` on (its
    authors also densify to the end of the run and never reset opacities; presets set that)."""

    name = "opacity_decay"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        factor: float = in_range(OPACITY_DECAY, 0.0, 1.0, lo_open=True)
        """Multiplier on every opacity per step (Binocular3DGS: 0.995)."""

    def setup(self, state: TrainState) -> None:
        self.state = state

    def log_values(self, step: int) -> dict[str, float]:
        with torch.no_grad():
            return {"mean_opacity": float(torch.sigmoid(self.state.method.model.splats["opacities"]).mean())}

    def on_step_end(self, step: int, state: TrainState) -> None:
        if step < self.config.refine_start_iter:
            return
        with torch.no_grad():
            op = state.method.model.splats["opacities"]  # logits
            op.copy_(torch.logit(torch.sigmoid(op) * self.settings.factor))


@register_plugin
class Anisotropy(Plugin):
    """PhysGaussian's anisotropy regulariser (Xie et al., CVPR 2024, eq. 8): ``weight x mean over
    Gaussians of max(max(s) / min(s), r) - r``. Sparse views leave depth along each training ray
    free, so densification grows needles along the rays that show as streaks from other views."""

    name = "anisotropy"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        weight: float = in_range(0.1)
        """Ours: enough that Adam's normalised steps bring the ratio back to ``max_ratio``."""
        max_ratio: float = in_range(ANISOTROPY_RATIO, 1.0)

    def setup(self, state: TrainState) -> None:
        self.state = state

    def _axis_ratios(self) -> torch.Tensor:
        """Each Gaussian's largest-to-smallest axis ratio, ``exp(max - min)`` of its log-scales (no
        division by tiny scales)."""
        log_scales = self.state.method.model.splats["scales"]
        return torch.exp(log_scales.max(dim=-1).values - log_scales.min(dim=-1).values)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        ratio = self._axis_ratios()
        if ratio.numel() == 0:
            return self.state.method.model.splats["scales"].sum() * 0.0
        r = self.settings.max_ratio
        return self.settings.weight * (ratio.clamp_min(r) - r).mean()

    def log_values(self, step: int) -> dict[str, float]:
        with torch.no_grad():
            ratio = self._axis_ratios()
            return {"median_ratio": float(ratio.median())} if ratio.numel() else {}


@register_plugin
class WarpConsistency(Plugin):
    """Binocular3DGS' binocular-guided consistency (module doc). The virtual camera moves by a
    uniform random ``[0, max_shift]`` fraction of its distance to the scene centre (the normalised
    frame's origin), left or right at random, from ``start`` of the run on."""

    name = "warp_consistency"
    applies_to = ("3dgs",)
    needs_depth = True

    @dataclass
    class Config:
        weight: float = in_range(1.0)
        """Binocular3DGS adds the term unweighted."""
        max_shift: float = in_range(WARP_MAX_SHIFT, 0.0, 1.0, lo_open=True)
        """Largest sideways move, as a fraction of the camera's distance to the scene centre."""
        start: float = in_range(WARP_START_FRACTION, 0.0, 1.0)
        """First step, as a fraction of the run (Binocular3DGS: 20000 of 30000)."""
        smooth_weight: float = in_range(WARP_SMOOTH_WEIGHT)

    def setup(self, state: TrainState) -> None:
        self.state = state
        # Its own stream, so the shifts never move the trainer's RNG (exact resume).
        self.generator = torch.Generator().manual_seed(int(state.config.seed) + 6007)
        centers = torch.linalg.inv(state.scene.cameras.viewmats("cpu"))[:, :3, 3]
        self.distance = centers.norm(dim=1).clamp_min(1e-6).to(state.device)  # per training view

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"])

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        cfg = self.settings
        if step < int(round(cfg.start * self.config.steps)):
            return {}
        if outputs.depths is None:
            raise SplatkitError(f"{self.name}: the trainer did not render depth")
        if batch.pixels is not None:
            raise SplatkitError(f"{self.name} needs whole rendered views, not a batch of rays")
        n = len(batch.positions)
        draw = torch.rand(n, generator=self.generator)
        sign = torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0)
        dev = outputs.depths.device
        shifts = (draw * sign).to(dev) * cfg.max_shift * self.distance[torch.as_tensor(batch.positions, device=dev)]
        shifted = self.state.method.render(shifted_viewmats(batch.viewmats, shifts), batch.Ks, batch.width,
                                           batch.height, batch.backgrounds, with_depth=False, step=step)
        term = warp_consistency_loss(shifted.colors, outputs.depths, batch.target, batch.Ks[:, 0, 0], shifts,
                                     cfg.smooth_weight)
        return cfg.weight * term


@register_plugin
class DepthSmoothness(Plugin):
    """RegNeRF's geometry regulariser (module doc) on an unobserved view per step: a training
    camera chosen at random swings by up to ``max_angle`` degrees about the scene centre (the
    normalised frame's origin), renders at ``1 / downscale`` of its size, and the squared
    differences of neighbouring depths are penalised where both pixels are opaque."""

    name = "depth_smoothness"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        weight: float = in_range(1.0)
        """Ours (RegNeRF's depths are in its own scene units; these are relative to the camera's
        distance to the centre)."""
        max_angle: float = in_range(SMOOTH_MAX_ANGLE, 0.0, 90.0)
        """Largest swing of the unobserved camera, in degrees, up / down and sideways."""
        downscale: int = in_range(SMOOTH_DOWNSCALE, 1)
        start: float = in_range(0.0, 0.0, 1.0)
        """First step, as a fraction of the run."""
        min_alpha: float = in_range(SMOOTH_MIN_ALPHA, 0.0, 1.0)

    def setup(self, state: TrainState) -> None:
        self.state = state
        # Its own stream, so the cameras never move the trainer's RNG (exact resume).
        self.generator = torch.Generator().manual_seed(int(state.config.seed) + 7919)
        cams = state.scene.cameras
        self.camtoworlds = np.asarray(cams.camtoworlds, dtype=np.float64)
        if np.any(np.linalg.norm(self.camtoworlds[:, :3, 3], axis=1) < 1e-6):
            raise SplatkitError(f"{self.name}: a training camera sits at the scene centre it swings about")
        self.Ks = torch.as_tensor(np.asarray(cams.Ks), dtype=torch.float32)
        self.sizes = [(int(w), int(h)) for w, h in zip(cams.widths, cams.heights)]

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if "generator" in state:
            self.generator.set_state(state["generator"].cpu())

    def unobserved_camera(self, device) -> tuple[torch.Tensor, torch.Tensor, int, int, float]:
        """``(viewmats [1, 4, 4], Ks [1, 3, 3], width, height, distance to the centre)``."""
        i = int(torch.randint(len(self.camtoworlds), (1,), generator=self.generator))
        yaw, pitch = ((torch.rand(2, generator=self.generator, dtype=torch.float64) * 2 - 1)
                      * np.radians(self.settings.max_angle)).tolist()
        c2w = swung_camera(self.camtoworlds[i], np.zeros(3), yaw, pitch)
        k = self.settings.downscale
        w, h = self.sizes[i]
        K = self.Ks[i].clone()
        K[:2] /= k
        viewmat = torch.linalg.inv(torch.as_tensor(c2w)).float()[None].to(device)
        return viewmat, K[None].to(device), max(1, w // k), max(1, h // k), float(np.linalg.norm(c2w[:3, 3]))

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        cfg = self.settings
        if step < int(round(cfg.start * self.config.steps)) or cfg.weight == 0:
            return {}
        viewmats, Ks, w, h, distance = self.unobserved_camera(outputs.colors.device)
        out = self.state.method.render(viewmats, Ks, w, h, batch.backgrounds[:1], with_depth=True, step=step)
        scale = torch.full((1,), distance, device=out.depths.device)
        return cfg.weight * depth_smoothness_loss(out.depths, out.alphas, scale, cfg.min_alpha)


@register_plugin
class DarkBackdrop(Plugin):
    """DTU's dark backdrop (module doc): rendered alpha on dark backdrop pixels is penalised,
    ``weight x mean(alpha x mask)`` over the image (Binocular3DGS' form and weight); with
    ``exclude_from_loss`` the backdrop's photometric weights are 0 (CoR-GS)."""

    name = "dark_backdrop"

    def __init__(self, config, settings=None) -> None:
        super().__init__(config, settings)
        self._mask: Optional[tuple[torch.Tensor, tuple]] = None  # (images, their masks): once per step
        self._tables: dict[tuple[int, int, int], torch.Tensor] = {}  # (view, H, W) -> table mask
        self._table_color: Optional[np.ndarray] = None
        self.active = True

    def setup(self, state: TrainState) -> None:
        from splatkit.methods.scoring import background_for

        # Alpha pushed to 0 shows the background: in the photometric loss, only a black one looks
        # like a dark backdrop; out of it (exclude_from_loss), the colour never meets those pixels.
        bright = state.config.background == "random" or background_for(state.config).any()
        if bright and not self.settings.exclude_from_loss:
            if state.config.background == "auto":
                # The preset that lists this plugin was run on a bright capture: nothing to treat.
                warnings.warn("dark_backdrop: background auto found a bright backdrop, so there is no dark one "
                              "to treat; the plugin is off for this run", stacklevel=2)
                self.active = False
            else:
                raise SplatkitError("dark_backdrop needs a black background (background black, or auto on a "
                                    "dark capture such as DTU), or exclude_from_loss=true")
        if self.settings.table:
            if state.config.background == "random":
                raise SplatkitError("dark_backdrop table=true needs a fixed background of the table's colour "
                                    "(background auto on a two-part backdrop, or the colour given)")
            self._table_color = background_for(state.config)

    @dataclass
    class Config:
        weight: float = in_range(1.0)
        threshold: float = in_range(DARK_THRESHOLD, 0.0, 1.0, lo_open=True)
        """A backdrop pixel's brightest channel is below this (DNGaussian: 30/255; 15/255 for scan 110)."""
        run: int = in_range(DARK_RUN, 1)
        """... and so are the run - 1 pixels above it."""
        exclude_from_loss: bool = False
        """Leave the backdrop out of the photometric loss (CoR-GS: yes; DNGaussian, Binocular3DGS: no)."""
        bright: bool = False
        """Also take runs of near-white pixels for backdrop (white tables; always out of the loss)."""
        bright_run: int = in_range(BRIGHT_RUN, 1)
        table: bool = False
        """Also penalise alpha on the table of a two-part backdrop: large border-touching regions of
        the background's colour (the table's, as ``background auto`` finds it); they stay in the loss."""
        solid_weight: float = in_range(0.0)
        """Weight of ``mean((1 - alpha) x object)`` over the pixels that are no backdrop: the object
        is opaque, so it may not borrow the background's colour through thin splats (ours)."""

    @classmethod
    def backdrop_pixels(cls, images, settings: dict) -> list[np.ndarray]:
        """Which pixels of each image ``[H, W, 3]`` the plugin with ``settings`` takes for dark
        backdrop (boolean ``[H, W]``): what ``background auto`` sets aside on a two-part backdrop."""
        cfg = cls.Config(**settings)
        return [dark_backdrop_mask(torch.as_tensor(np.asarray(im, np.float32)[None, ..., :3]), cfg.threshold,
                                   cfg.run)[0, ..., 0].numpy() > 0 for im in images]

    def _table_mask(self, batch: Batch) -> torch.Tensor:
        """``[B, H, W, 1]`` table masks of the batch's views, computed once per view (on the CPU)."""
        out = []
        for i, position in enumerate(batch.positions):
            key = (int(position), batch.height, batch.width)
            if key not in self._tables:
                mask = table_backdrop_mask(batch.images[i].detach().cpu().numpy(), self._table_color,
                                           self.settings.threshold)
                self._tables[key] = torch.as_tensor(mask, dtype=batch.images.dtype, device=batch.images.device)[..., None]
            out.append(self._tables[key])
        return torch.stack(out)

    def backdrop(self, step: int, batch: Batch) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        """The step's dark, (with ``bright``) bright and (with ``table``) table backdrop masks
        ``[B, H, W, 1]`` (1 = backdrop), computed once per step."""
        if batch.pixels is not None:
            raise SplatkitError(f"{self.name} needs whole rendered views, not a batch of rays")
        if self._mask is None or self._mask[0] is not batch.images:
            cfg = self.settings
            dark = dark_backdrop_mask(batch.images, cfg.threshold, cfg.run)
            bright = dark_backdrop_mask(1.0 - batch.images, cfg.threshold, cfg.bright_run) if cfg.bright else None
            table = self._table_mask(batch) if self._table_color is not None else None
            self._mask = (batch.images, (dark, bright, table))
        return self._mask[1]

    def photometric_weights(self, step: int, batch: Batch):
        if not self.active or not (self.settings.exclude_from_loss or self.settings.bright):
            return None
        dark, bright, _ = self.backdrop(step, batch)
        out = 1.0 - dark if self.settings.exclude_from_loss else torch.ones_like(dark)
        return out if bright is None else out * (1.0 - bright)

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        if not self.active:
            return {}
        mask = None
        for part in self.backdrop(step, batch):
            if part is not None:
                mask = part if mask is None else torch.maximum(mask, part)
        term = self.settings.weight * (outputs.alphas.abs() * mask).mean()
        if self.settings.solid_weight <= 0:
            return term
        solid = self.settings.solid_weight * ((1.0 - outputs.alphas) * (1.0 - mask)).mean()
        return {"alpha": term, "solid": solid}
