"""Everything a user tunes for a training run, and how presets, saved configs and flags combine.

Resolution order (later wins): dataclass defaults -> ``--load-config FILE`` (a previous run's
``config.json``) -> ``--preset NAME`` (``configs/NAME.json``; ``default`` when neither a preset nor a
saved config is given) -> explicit command-line flags. :func:`resolve_config` then fills in the
values derived from others (densification schedule scaled to ``steps``) so the ``config.json`` a
run writes reproduces it exactly.

Learning rates and densification defaults are those of 3DGS (Kerbl et al. 2023,
``arguments/__init__.py``) as gsplat's ``examples/simple_trainer.py`` uses them.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

from splatkit.errors import SplatkitError
from splatkit.resources import configs_dir
from splatkit.utils.jsonfile import read_json_object
from splatkit.utils.typecheck import coerce

# 3DGS runs 30k steps, starts densifying at 500, stops at 15k and resets opacities every 3k.
# Shorter runs keep those proportions (see ``resolved``).
REF_STEPS = 30_000
REF_REFINE_START = 500
REF_REFINE_STOP = 15_000
REF_RESET_EVERY = 3_000
# Compact-3DGS (Lee et al., CVPR 2024, arguments/__init__.py), also of 30k steps: prune masked-out
# Gaussians every 1000 steps after densification, R-VQ for the last 1000 steps (rvq_iter 29000),
# colour-field LR warm-up over 100 steps and x0.33 at 5k, 15k and 25k.
REF_MASK_PRUNE_EVERY = 1_000
REF_RVQ_STEPS = 1_000
REF_FIELD_WARMUP = 100
REF_FIELD_MILESTONES = (5_000, 15_000, 25_000)

CONFIGS_DIR = configs_dir()

# Fields that hold paths (written as str in config.json, read back as Path).
_PATH_FIELDS = ("data", "out", "output_root", "depth_prior_dir")


@dataclass
class TrainConfig:
    """A Gaussian-splatting training run."""

    # -- data ----------------------------------------------------------------------------------
    data: Optional[Path] = None
    """Dataset folder (any layout ``splatkit data info`` recognises)."""
    downscale: int = 1
    """Integer image downscale factor applied when loading."""
    intrinsics_size: Optional[str] = None
    """IDR/NeuS ``cameras.npz`` without ``camera_mat``: the image size ``WxH`` its intrinsics describe
    (the reader refuses to guess unless the principal point leaves no doubt)."""
    center_crop: bool = False
    """The images are centre crops of the ``intrinsics_size`` frame (MonoSDF's DTU release)."""
    train_views: Optional[list[int]] = None
    """Original view ids to train on (default: the dataset's split, else all but every 8th view)."""
    test_views: Optional[list[int]] = None
    """Original view ids to evaluate on (default: the dataset's split, else every 8th view)."""
    hold_every: int = 8
    """Without a dataset split or explicit views, hold out every ``hold_every``-th view for testing."""

    # -- run -----------------------------------------------------------------------------------
    out: Optional[Path] = None
    """Run folder (default: ``output_root/<scene>/<method>/<YYYY-mm-dd_HHMMSS>``)."""
    output_root: Path = Path("outputs")
    method: str = "3dgs"
    """What to train: a registered method (:mod:`splatkit.methods`; ``3dgs``)."""
    run_name: Optional[str] = None
    """Folder name between the scene and the time stamp (default: the method)."""
    preset: Optional[str] = None
    """Name of the preset this config was built from (informational once resolved)."""
    steps: int = 30_000
    seed: int = 0
    batch_size: int = 1
    """Images rendered per optimisation step (all training images must share one size if > 1)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "cpu", "torch", "gsplat"] = "auto"
    """Rasteriser backend passed to :func:`splatkit.render.rasterization`."""

    # -- model ---------------------------------------------------------------------------------
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps (3DGS: 1000)."""
    init: Literal["auto", "sfm", "random", "triangulated", "mvs", "visual_hull"] = "auto"
    """``auto``: SfM points when the scene has them, else random points in the estimated object bounds.
    ``triangulated``: SIFT points matched across the training views and triangulated with their known
    cameras (pycolmap; random points, with a warning, when fewer than 100 survive). ``mvs``: dense points
    from plane-sweep stereo between the training views with their known cameras, kept where the views'
    depth maps agree (``splatkit.data.mvs``; at most ``init_num_points``; random points, with a warning,
    when fewer than 100 survive). ``visual_hull``
    (GaussianObject): ``init_num_points`` points filling the voxels inside every training view's
    object mask (64^3 voxels over the hull's box); needs masks, used even without ``use_masks``."""
    init_num_points: int = 100_000
    """Number of random initial points (``random`` init); the most ``mvs`` init keeps."""
    init_opacity: float = 0.1
    init_scale: float = 1.0
    """Multiplier on the initial scales (mean distance to the 3 nearest neighbours)."""
    init_carve_with_masks: bool = True
    """With ``use_masks``, keep only random initial points inside every mask's visual hull."""
    scene_scale: Optional[float] = None
    """Scene extent for LRs and densification (default: 1.1 x the largest camera distance from the
    camera centroid, as 3DGS/gsplat compute it)."""

    # -- optimisation (3DGS / gsplat simple_trainer defaults) -----------------------------------
    means_lr: float = 1.6e-4
    """Initial position LR, multiplied by ``scene_scale``."""
    means_lr_final: float = 1.6e-6
    """Final position LR (x ``scene_scale``); exponential decay between the two over ``steps``."""
    scales_lr: float = 5e-3
    quats_lr: float = 1e-3
    opacities_lr: float = 5e-2
    sh0_lr: float = 2.5e-3
    shN_lr: float = 2.5e-3 / 20
    ssim_lambda: float = 0.2
    """Loss = (1 - ssim_lambda) L1 + ssim_lambda (1 - SSIM), as in 3DGS."""
    background: Literal["auto", "black", "white", "random"] = "auto"
    """Colour composited behind the splats, and behind masked-out ground truth when masks are used.
    ``auto``: the backdrop estimated from the training images (outside the masks when the scene has
    them, else along the image borders; :mod:`splatkit.data.backdrop`) when it is uniform, such as
    a white sweep or images masked to white; black otherwise (DTU's dark room). ``random``: a new
    random colour per view and step (the model must leave the background transparent; needs
    ``use_masks`` unless the images are already transparent there)."""
    prune_backdrop: Optional[bool] = None
    """Remove Gaussians whose blending weight falls only on backdrop pixels (the ``backdrop_prune``
    plugin, 3DGS). None: on when ``background`` ``auto`` found a uniform backdrop (resolved by the
    run and saved in its config.json); measured in docs/benchmarks.md ("Bright backdrops")."""
    background_color: Optional[list[float]] = None
    """The RGB colour (0..1) ``auto`` resolved to, written by the run into its config.json so that
    resume, ``eval`` and ``render`` use the same colour; may also be given to fix the colour."""
    near_plane: float = 0.01
    far_plane: float = 1e10

    # -- priors / regularisers (plugins) -------------------------------------------------------
    use_masks: bool = False
    """Supervise the rendered alpha with the object masks (adds the ``mask`` plugin) and
    composite the ground truth over the background outside the mask."""
    regularizers: list[str] = field(default_factory=list)
    """Plugins to run (:mod:`splatkit.methods.plugins`): depth_ranking, depth_continuity,
    depth_pearson, depth_patch (need ``depth_prior``), dropout, or a third-party plugin."""
    plugins: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each plugin's settings, a nested section per plugin: ``{"depth_ranking": {"weight": 0.2}}``
    (``--plugin.depth-ranking.weight 0.2``). Unset settings keep the plugin's defaults."""
    depth_prior: str = "none"
    """Depth prior for the depth losses: ``none``, ``files`` (``depth/<image stem>.npy|png|pfm``
    beside the images, or ``depth_prior_dir``), ``mvs`` (no network: the training views' own
    plane-sweep stereo, metric depth where two views agree, unknown elsewhere) or a depth model
    (alias such as ``depth-anything-v2-small``, Hugging Face id or local folder; loaded offline)."""
    depth_prior_kind: Optional[Literal["metric", "depth", "inverse"]] = None
    """What depth files hold: ``metric`` z-depth, relative ``depth`` (larger = farther, unknown scale
    and shift) or relative ``inverse`` depth (disparity, as monocular estimators write it). Default:
    what the folder's ``kind.txt`` declares, else relative depth (with a note). Only metric depth
    bounds the initial points; models declare their own kind."""
    depth_prior_dir: Optional[Path] = None
    """Folder of depth-prior files (default: ``depth/`` in the dataset folder)."""
    depth_align: Literal["off", "sfm"] = "off"
    """``sfm``: make relative depth files metric before they are used as such (the initial
    points' depth bounds): each training view's map gets a scale and shift fitted to points
    triangulated from the training views with their known cameras (pycolmap, in a child process);
    the fit's residual is printed and saved as ``depth_alignment.json`` in the run folder."""

    # -- densification (a strategy: gsplat DefaultStrategy or MCMCStrategy) ---------------------
    densify: bool = True
    strategy: Literal["default", "mcmc"] = "default"
    """``default``: 3DGS's clone/split/prune (gsplat ``DefaultStrategy``); ``mcmc``: 3DGS-MCMC's
    relocation, growth up to ``cap_max`` and position noise (gsplat ``MCMCStrategy``)."""
    cap_max: int = 1_000_000
    """MCMC: the most Gaussians the strategy grows to (gsplat's default)."""
    mcmc_noise_lr: float = 5e5
    """MCMC: position noise scale, times the current position LR (3DGS-MCMC / gsplat)."""
    mcmc_opacity_reg: float = 0.01
    """MCMC: weight of the mean-opacity regulariser (3DGS-MCMC / gsplat)."""
    mcmc_scale_reg: float = 0.01
    """MCMC: weight of the mean-scale regulariser (3DGS-MCMC / gsplat)."""
    mcmc_min_opacity: float = 0.005
    """MCMC: Gaussians at or below this opacity are relocated."""
    refine_start_iter: Optional[int] = None
    """Default: 500/30000 of ``steps``."""
    refine_stop_iter: Optional[int] = None
    """Default: half of ``steps`` (3DGS: 15000 of 30000)."""
    refine_every: int = 100
    reset_every: Optional[int] = None
    """Opacity reset period. Default: 3000/30000 of ``steps``."""
    pause_refine_after_reset: int = 0
    grow_grad2d: float = 2e-4
    """Densify Gaussians whose mean screen-space gradient (gsplat's [-1, 1]-normalised units) exceeds this."""
    grow_scale3d: float = 0.01
    """Clone when the largest scale is below this x scene_scale, split above."""
    prune_opa: float = 0.005
    prune_scale3d: float = 0.1
    """After the first opacity reset, prune Gaussians larger than this x scene_scale."""
    absgrad: bool = False

    # -- compact splats (Compact-3DGS, Lee et al. CVPR 2024; values from the authors' code) ---------
    gaussian_masks: bool = False
    """Learn one mask per Gaussian: renders multiply scale and opacity by the hard mask
    ``sigmoid(m) > mask_threshold`` (straight-through gradient), the loss adds ``mask_lambda x
    mean(sigmoid(m))``, and masked-out Gaussians are pruned (and left out of evaluation/exports)."""
    mask_lr: float = 0.01
    mask_lambda: float = 5e-4
    mask_threshold: float = 0.01
    mask_prune_every: Optional[int] = None
    """Prune masked-out Gaussians at every densification step and, once densification has stopped,
    every this many steps. Default: 1000/30000 of ``steps`` (the authors prune every 1000 steps):
    often enough that the Gaussians the masks drop stop costing render time soon after."""
    mask_loss_stop_iter: Optional[int] = None
    """Drop the mask loss from this step on (None: the whole run, as Compact-3DGS). The loss pushes
    every mask down until the photometric loss holds it, so Gaussians keep switching off for as long
    as it runs; stopping it when densification stops ends pruning where nothing refills the gaps."""
    mask_min_gaussians: int = 1000
    """Pruning never leaves fewer Gaussians than this (it keeps those with the largest masks and warns)."""
    color_field: bool = False
    """Colour the Gaussians with a hash-grid neural field (:class:`splatkit.models.color_field.ColorField`)
    instead of per-Gaussian SH; exports to formats without a field bake it to SH of ``sh_degree``."""
    color_field_lr: float = 1e-2
    color_field_output: Literal["sigmoid", "sh0"] = "sigmoid"
    """How the field's MLP output becomes a colour: ``sh0`` is a DC SH coefficient, rendered as
    ``max(C0 * out + 0.5, 0)`` like per-Gaussian SH (Compact-3DGS' code); ``sigmoid`` squashes it into (0, 1)."""
    color_field_log2_hashmap_size: int = 19
    """log2 of the hash-table size per level (Compact-3DGS: 19 for real scenes, 16 for NeRF-synthetic)."""
    color_field_levels: int = 16
    """Hash-grid levels (base resolution 16, x1.447 per level; fewer levels: coarser and smaller)."""
    color_field_bound: float = 1.0
    """Radius (normalised frame, where readers put the object at unit scale) that gets the grid's
    linear, finest half; space beyond is contracted into the rest (Compact-3DGS: aabb [-1, 1]^3)."""
    color_field_warmup: Optional[int] = None
    """Linear LR warm-up from 0.01x. Default: 100/30000 of ``steps``."""
    color_field_lr_milestones: Optional[list[int]] = None
    """Steps where the field LR is multiplied by ``color_field_lr_gamma``. Default: 5k, 15k and 25k of 30k, scaled to ``steps``."""
    color_field_lr_gamma: float = 0.33
    rvq: bool = False
    """Residual vector quantisation of ``rvq_attributes`` from step ``rvq_start`` on: renders use the
    codebook values (learnable codebooks, straight-through to the attributes) and the trained model
    stores codebooks + indices."""
    rvq_attributes: list[str] = field(default_factory=lambda: ["scales", "quats"])
    """Any of scales, quats, shN (shN needs per-Gaussian SH, i.e. no colour field)."""
    rvq_stages: int = 6
    rvq_codebook_size: int = 64
    rvq_start: Optional[int] = None
    """First R-VQ step. Default: the last 1000/30000 of ``steps``."""

    # -- hash-grid NeRF (--method nerf; Instant-NGP as nerfacc's examples set it up) -------------
    nerf_rays: int = 4096
    """Rays per step, drawn uniformly from the pixels of the step's views."""
    nerf_lr: float = 1e-2
    """Adam LR of the hash table and MLPs (linear warm-up over 100 steps, x0.33 at 1/2, 3/4, 9/10 of the run)."""
    nerf_log2_hashmap_size: int = 19
    nerf_levels: int = 16
    nerf_max_resolution: int = 2048
    """Resolution of the finest hash-grid level across the scene box (base resolution 16)."""
    nerf_occ_resolution: int = 128
    """Cells per side of the occupancy grid (nerfacc OccGridEstimator)."""
    nerf_occ_every: int = 16
    """Update the occupancy grid every this many steps (nerfacc: 16)."""
    nerf_march_steps: int = 1024
    """Marching step = scene-box diagonal / this."""
    nerf_cone_angle: float = 0.0
    """Step growth with distance (0: uniform steps; nerfacc uses 1/256 for unbounded scenes)."""
    nerf_aabb: Optional[list[float]] = None
    """Scene box [xmin, ymin, zmin, xmax, ymax, zmax] (default: from the depth maps or the cameras)."""
    nerf_impl: str = "auto"
    """Marching and volume-rendering kernels: auto (nerfacc's on CUDA, our C++ ones on CPU), cpu, torch
    (the PyTorch references, on either device), nerfacc (CUDA only)."""
    hollow: bool = False
    """HollowNeRF pruning (Xie et al., ICCV 2023; nerf method only): a trainable saliency grid scales
    the hash features, a soft zero-skip gate, and an ADMM pruner that drives the grid's L1 mass
    under ``hollow_budget`` (splatkit/models/hollow.py)."""
    hollow_budget: float = 0.04
    """Budget on the saliency grid's mean sigmoid, a fraction of the box (the paper's C = 0.04)."""
    hollow_resolution: int = 64
    """Saliency grid values per side (the paper's T = 64)."""
    hollow_rho: Optional[float] = None
    """Augmented-Lagrangian penalty and dual step of the ADMM pruner (ours; not given in the paper).
    Default by ``hollow_solver``: 1e-4 for ``adam`` (the render loss's gradients on the saliency
    logits are ~1e-9), 1e-2 for ``decoupled`` (splatkit/models/hollow.py)."""
    hollow_solver: str = "adam"
    """How the pruner's pressure reaches the saliency logits: ``adam`` (the paper: the augmented
    Lagrangian is part of the loss, one Adam for everything) or ``decoupled`` (ours: Adam sees the
    render loss only and the Lagrangian's gradient is applied beside it, as AdamW decouples weight
    decay, so that a cell the render loss keeps asking for survives and the rest is pruned)."""
    hollow_threshold: float = 0.01
    """Saliency below which a sample is pruned: zero features, no table lookups (ours)."""
    hollow_init: float = 0.5
    """Saliency everywhere at the start (ours; the paper does not say): the hash features enter the
    MLP scaled by it, so it also scales how fast the field learns at first."""
    hollow_lr: float = 0.05
    """Adam LR of the saliency grid, on the nerf LR schedule (ours: the paper's 1e-2 over 300k steps
    is too slow to move the grid in a short run)."""
    nerf_prune_keep: float = 1.0
    """Gradual magnitude pruning of the hash table (Zhu & Gupta 2018; nerf method only;
    splatkit/models/table_prune.py): the fraction of its rows left at the end, the smallest-norm
    rows zeroed on a cubic schedule; 1: off. A compact export drops the zeroed rows."""
    nerf_prune_start: float = 0.2
    """Fraction of the run where pruning starts (after the occupancy grid's warm-up; ours)."""
    nerf_prune_end: float = 0.5
    """Fraction of the run where ``nerf_prune_keep`` is reached (before the first LR drop, so the
    survivors have half the run to adapt; ours)."""
    nerf_prune_every: int = 100
    """Steps between pruning rounds."""
    nerf_prune_scope: str = "global"
    """``global``: rank every row together; ``level``: prune each level to the same fraction."""

    # -- bookkeeping ---------------------------------------------------------------------------
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and always at the end); 0: only at the end."""
    keep_checkpoints: int = 3
    """How many of the most recent checkpoints to keep (0 keeps all)."""
    log_every: int = 50
    preview_every: int = 1000
    """Write a GT | render preview of one test view every this many steps (0: only at the end)."""

    def resolved(self) -> "TrainConfig":
        """A copy with derived values filled in and every value checked."""
        c = dataclasses.replace(self)
        c.data = None if c.data is None else Path(c.data)
        c.out = None if c.out is None else Path(c.out)
        c.output_root = Path(c.output_root)
        if c.steps < 1:
            raise SplatkitError(f"steps must be >= 1, got {c.steps}")
        frac = c.steps / REF_STEPS
        if c.refine_start_iter is None:
            c.refine_start_iter = max(0, round(REF_REFINE_START * frac))
        if c.refine_stop_iter is None:
            c.refine_stop_iter = max(1, round(REF_REFINE_STOP * frac))
        if c.reset_every is None:
            c.reset_every = max(1, round(REF_RESET_EVERY * frac))
        if c.mask_prune_every is None:
            c.mask_prune_every = max(1, round(REF_MASK_PRUNE_EVERY * frac))
        if c.rvq_start is None:
            c.rvq_start = max(0, c.steps - max(1, round(REF_RVQ_STEPS * frac)))
        if c.color_field_warmup is None:
            c.color_field_warmup = round(REF_FIELD_WARMUP * frac)
        if c.color_field_lr_milestones is None:
            c.color_field_lr_milestones = [max(1, round(m * frac)) for m in REF_FIELD_MILESTONES]
        _check_compact(c)
        _check_positive(c, ("downscale", "batch_size", "sh_degree_interval", "init_num_points",
                            "refine_every", "reset_every", "log_every", "hold_every", "init_scale",
                            "nerf_rays", "nerf_levels", "nerf_max_resolution", "nerf_occ_resolution",
                            "nerf_occ_every", "nerf_march_steps", "nerf_lr"))
        _check_nonnegative(c, ("checkpoint_every", "keep_checkpoints", "preview_every",
                               "ssim_lambda", "refine_start_iter", "refine_stop_iter",
                               "mcmc_noise_lr", "mcmc_opacity_reg", "mcmc_scale_reg", "mcmc_min_opacity",
                               "nerf_cone_angle"))
        _check_positive(c, ("cap_max",))
        _check_hollow(c)
        _check_table_prune(c)
        from splatkit.methods import method_class
        from splatkit.methods.plugins import check_plugin_settings, plugin_class, plugin_settings

        method_class(c.method).check_config(c)  # a clear error for an unknown method or bad values
        c.plugins = check_plugin_settings(c.plugins)
        for name in c.plugins:
            plugin_settings(plugin_class(name), c.plugins)  # each plugin validates its own values
        c.depth_prior_dir = None if c.depth_prior_dir is None else Path(c.depth_prior_dir)
        from splatkit.data.loader import parse_size

        parse_size(c.intrinsics_size)  # a clear error for a malformed size before any data is read
        if c.ssim_lambda > 1:
            raise SplatkitError(f"ssim_lambda must be in [0, 1], got {c.ssim_lambda}")
        if not 0 <= c.sh_degree <= 4:
            raise SplatkitError(f"sh_degree must be 0..4, got {c.sh_degree}")
        if not 0 < c.init_opacity < 1:
            raise SplatkitError(f"init_opacity must be in (0, 1), got {c.init_opacity}")
        if c.scene_scale is not None and not c.scene_scale > 0:
            raise SplatkitError(f"scene_scale must be positive, got {c.scene_scale}")
        for name, allowed in (("device", ("auto", "cpu", "cuda")),
                              ("backend", ("auto", "cpu", "torch", "gsplat")),
                              ("background", ("auto", "black", "white", "random")),
                              ("init", ("auto", "sfm", "random", "triangulated", "mvs", "visual_hull")),
                              ("strategy", ("default", "mcmc")),
                              ("color_field_output", ("sigmoid", "sh0")),
                              ("depth_prior_kind", (None, "metric", "depth", "inverse")),
                              ("depth_align", ("off", "sfm"))):
            if getattr(c, name) not in allowed:
                raise SplatkitError(f"{name} must be one of {', '.join(map(str, allowed))}; got {getattr(c, name)!r}")
        if c.background_color is not None:
            color = c.background_color
            if (not isinstance(color, (list, tuple)) or len(color) != 3
                    or not all(isinstance(v, (int, float)) and 0.0 <= v <= 1.0 for v in color)):
                raise SplatkitError(f"background_color must be three numbers in [0, 1], got {color!r}")
            if c.background == "random":
                raise SplatkitError("background_color fixes the colour; it cannot go with background 'random'")
            c.background_color = [float(v) for v in color]
        c.regularizers = list(dict.fromkeys(c.regularizers))
        return c

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in _PATH_FIELDS:
            if d[k] is not None:
                d[k] = str(d[k])
        return d


def _check_hollow(c: "TrainConfig") -> None:
    from splatkit.models.hollow import RHO_BY_SOLVER, check_settings

    if c.hollow_solver not in RHO_BY_SOLVER:
        raise SplatkitError(f"hollow_solver must be one of {sorted(RHO_BY_SOLVER)}, got {c.hollow_solver!r}")
    if c.hollow_rho is None:
        c.hollow_rho = RHO_BY_SOLVER[c.hollow_solver]
    check_settings(c.hollow_budget, c.hollow_resolution, c.hollow_rho, c.hollow_threshold, c.hollow_init)
    if not c.hollow_lr > 0:
        raise SplatkitError(f"hollow_lr must be positive, got {c.hollow_lr}")
    if c.hollow and c.method != "nerf":
        raise SplatkitError(f"hollow=true prunes a hash-grid NeRF: it needs --method nerf (got {c.method!r})")


def _check_table_prune(c: "TrainConfig") -> None:
    from splatkit.models.table_prune import check_settings

    if c.nerf_prune_keep < 1 and c.method != "nerf":
        raise SplatkitError(f"nerf_prune_keep < 1 prunes a hash-grid NeRF: it needs --method nerf (got {c.method!r})")
    check_settings(c.nerf_prune_keep, c.nerf_prune_start, c.nerf_prune_end, c.nerf_prune_every, c.nerf_prune_scope)


def _check_compact(c: TrainConfig) -> None:
    _check_positive(c, ("mask_prune_every", "mask_min_gaussians", "color_field_lr", "color_field_levels",
                        "color_field_bound", "rvq_stages", "rvq_codebook_size"))
    _check_nonnegative(c, ("mask_lr", "mask_lambda", "color_field_warmup", "rvq_start"))
    if c.mask_loss_stop_iter is not None and c.mask_loss_stop_iter < 0:
        raise SplatkitError(f"mask_loss_stop_iter must be a step >= 0 or null, got {c.mask_loss_stop_iter}")
    if not 0 < c.mask_threshold < 1:
        raise SplatkitError(f"mask_threshold must be in (0, 1), got {c.mask_threshold}")
    if not 1 <= c.color_field_log2_hashmap_size <= 30:
        raise SplatkitError(f"color_field_log2_hashmap_size must be in 1..30, got {c.color_field_log2_hashmap_size}")
    if not 0 < c.color_field_lr_gamma <= 1:
        raise SplatkitError(f"color_field_lr_gamma must be in (0, 1], got {c.color_field_lr_gamma}")
    if any(m < 0 for m in c.color_field_lr_milestones):
        raise SplatkitError(f"color_field_lr_milestones must be steps >= 0, got {c.color_field_lr_milestones}")
    if c.rvq_codebook_size > 65536:
        raise SplatkitError(f"rvq_codebook_size must be at most 65536, got {c.rvq_codebook_size}")
    c.rvq_attributes = list(dict.fromkeys(c.rvq_attributes))
    codable = ("scales", "quats", "shN")
    unknown = [a for a in c.rvq_attributes if a not in codable]
    if unknown:
        raise SplatkitError(f"rvq_attributes: cannot code {', '.join(unknown)} (choose from {', '.join(codable)})")
    if c.rvq and not c.rvq_attributes:
        raise SplatkitError("rvq is on but rvq_attributes is empty")
    if c.rvq and c.rvq_start >= c.steps:
        raise SplatkitError(f"rvq_start ({c.rvq_start}) must be below steps ({c.steps}) for R-VQ to run")
    if c.rvq and "shN" in c.rvq_attributes and (c.color_field or c.sh_degree == 0):
        raise SplatkitError("rvq_attributes: shN needs per-Gaussian SH of degree >= 1 (no color_field)")


def _check_positive(c: TrainConfig, names) -> None:
    for n in names:
        if not getattr(c, n) > 0:
            raise SplatkitError(f"{n} must be positive, got {getattr(c, n)}")


def _check_nonnegative(c: TrainConfig, names) -> None:
    for n in names:
        if not getattr(c, n) >= 0:
            raise SplatkitError(f"{n} must be >= 0, got {getattr(c, n)}")


FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))
_HINTS = typing.get_type_hints(TrainConfig)
# Run labels that presets once wrote as ``method``; they were all 3DGS runs.
_LEGACY_METHOD_LABELS = ("sparse", "sparse9", "compact")


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a JSON value against the field's type; paths become :class:`Path`."""
    return coerce(name, _HINTS[name], value, source)


def _merge_plugins(into: dict, sections: dict) -> None:
    """Merge plugin sections setting by setting (a preset's weight and a flag's pair count both stay)."""
    for name, settings in sections.items():
        into.setdefault(name.replace("-", "_"), {}).update(settings)


def set_value(values: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Put one config value into ``values``: a field (type-checked), a plugin setting as
    ``plugins.NAME.SETTING``, or an old flat key that now sets plugin settings (an alias)."""
    from splatkit.methods.plugins import legacy_keys

    key = key.replace("-", "_")
    if key.startswith("plugins."):
        parts = key.split(".")
        if len(parts) != 3:
            raise SplatkitError(f"{source}: plugin settings are plugins.NAME.SETTING, got {key!r}")
        _merge_plugins(values.setdefault("plugins", {}), {parts[1]: {parts[2]: value}})
        return
    if key in FIELD_NAMES:
        value = _coerce(key, value, source)
        if key == "plugins":
            _merge_plugins(values.setdefault("plugins", {}), value)
        elif key == "method" and value in _LEGACY_METHOD_LABELS:
            values["method"] = "3dgs"
            values.setdefault("run_name", value)
        else:
            values[key] = value
        return
    aliases = legacy_keys().get(key)
    if aliases is None:
        raise SplatkitError(f"unknown config key {key!r} in {source}")
    for plugin, setting in aliases:
        _merge_plugins(values.setdefault("plugins", {}), {plugin: {setting: value}})


def read_overrides(path: str | Path, *, allow: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a JSON object of config values; unknown keys are an error naming the key and file.

    ``allow`` lists extra keys that are accepted and dropped (``splatkit_version`` in a run's
    ``config.json``); keys starting with ``_`` are comments.
    """
    path = Path(path)
    raw = read_json_object(path, "config file")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key.startswith("_") or key in allow:
            continue
        set_value(out, key, value, str(path))
    return out


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json")) if CONFIGS_DIR.is_dir() else []


def preset_path(name: str) -> Path:
    """``configs/NAME.json``, or ``name`` itself when it is a path to a JSON file."""
    candidate = Path(name)
    if candidate.suffix == ".json" and candidate.is_file():
        return candidate
    path = CONFIGS_DIR / f"{name}.json"
    if not path.is_file():
        known = ", ".join(available_presets()) or "none found"
        raise SplatkitError(f"unknown preset {name!r} (known: {known}; or give a path to a .json file)")
    return path


def load_preset(name: str, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A preset's values. ``"extends": "OTHER"`` starts from preset OTHER's values (plugin sections
    merged setting by setting, lists such as ``regularizers`` replaced whole), so a variant states
    only what it changes and follows its base when the base is re-tuned."""
    path = preset_path(name)
    if path in _chain:
        raise SplatkitError(f"preset {name!r} extends itself ({' -> '.join(p.stem for p in (*_chain, path))})")
    base = read_json_object(path, "config file").get("extends")
    values: dict[str, Any] = {}
    if base is not None:
        if not isinstance(base, str):
            raise SplatkitError(f"{path}: 'extends' names a preset (a string), got {base!r}")
        _update(values, load_preset(base, (*_chain, path)))
    _update(values, read_overrides(path, allow=("extends",)))
    return values


def load_saved_config(path: str | Path) -> dict[str, Any]:
    """Values from a run's ``config.json`` (``--load-config``).

    Its ``out`` (the old run folder) is dropped: reusing a config starts a new run unless ``--out``
    says otherwise (``--resume`` sets it to the run being continued)."""
    values = read_overrides(path, allow=("splatkit_version",))
    values.pop("out", None)
    return values


def resolve_config(overrides: Optional[dict[str, Any]] = None, *, preset: Optional[str] = None,
                   load_config: Optional[str | Path] = None) -> TrainConfig:
    """Build the run's config: defaults -> saved config -> preset -> ``overrides`` (CLI flags).

    Without ``preset`` and ``load_config`` the ``default`` preset applies. ``overrides`` are
    checked like preset values and applied as given (leave out what was not given).
    """
    values: dict[str, Any] = {}
    if load_config is not None:
        _update(values, load_saved_config(load_config))
    if preset is None and load_config is None:
        preset = auto_preset((overrides or {}).get("device", "auto"), (overrides or {}).get("method"))
    if preset is not None:
        _update(values, load_preset(preset))
        values["preset"] = preset
    for key, value in (overrides or {}).items():
        set_value(values, key, value, "command line")
    return TrainConfig(**values).resolved()


def _update(values: dict, new: dict) -> None:
    plugins = new.get("plugins")
    values.update({k: v for k, v in new.items() if k != "plugins"})
    if plugins:
        _merge_plugins(values.setdefault("plugins", {}), plugins)


# The preset a run without --preset gets: 3DGS's 7k-step schedule where a GPU trains it in
# minutes, a schedule a CPU finishes in minutes elsewhere (measured in docs/benchmarks.md).
AUTO_PRESETS = {"cuda": "default", "cpu": "cpu"}


def auto_preset(device: str = "auto", method: Optional[str] = None) -> Optional[str]:
    """``default`` on a CUDA device, ``cpu`` on a CPU (``device`` as ``--device`` takes it), or
    what ``method`` asks for (``Method.auto_presets``; the NeRF: ``nerf``)."""
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    presets = AUTO_PRESETS
    from splatkit.methods import available_methods, method_class

    if method in available_methods():  # not an old run label (resolved later)
        presets = method_class(method).auto_presets or AUTO_PRESETS
    name = presets.get(device, "default")
    return name if name in available_presets() else None


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a ``to_dict`` result (unknown keys are an error)."""
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key == "splatkit_version" or key.startswith("_"):
            continue
        set_value(clean, key, value, source)
    return TrainConfig(**clean)


# -- command-line helpers ----------------------------------------------------------------------
def parse_view_ids(text: Optional[str], flag: str = "--train-views") -> Optional[list[int]]:
    """``"25,22,28"`` (or space separated) -> ``[25, 22, 28]``; ``None`` stays ``None``."""
    if text is None:
        return None
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        ids = [int(p) for p in parts]
    except ValueError:
        raise SplatkitError(f"{flag} takes view ids like 25,22,28; got {text!r}") from None
    if not ids:
        raise SplatkitError(f"{flag} is empty")
    return ids


def parse_set_overrides(items: list[str]) -> dict[str, Any]:
    """``["init=random", "train_views=[1,2]"]`` -> values (JSON when it parses, else a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SplatkitError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        set_value({}, key, value, "--set")  # checked now; applied by resolve_config
        out[key] = value
    return out


def plugin_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split ``--plugin.NAME.SETTING VALUE`` (or ``=VALUE``) out of a command line: ``(the rest,
    ["plugins.NAME.SETTING=VALUE", ...])`` for :func:`parse_set_overrides`."""
    rest, sets = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--plugin.") or arg.startswith("--prior."):
            key, sep, value = arg[2:].partition("=")
            if not sep:
                if i + 1 >= len(argv):
                    raise SplatkitError(f"{arg} needs a value")
                value = argv[i + 1]
                i += 1
            sets.append("plugins." + key.split(".", 1)[1] + "=" + value)
        else:
            rest.append(arg)
        i += 1
    return rest, sets
