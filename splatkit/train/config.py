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
from splatkit.utils.jsonfile import read_json_object

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

CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"

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
    init: Literal["auto", "sfm", "random"] = "auto"
    """``auto``: SfM points when the scene has them, else random points in the estimated object bounds."""
    init_num_points: int = 100_000
    """Number of random initial points (``random`` init)."""
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
    background: Literal["black", "white", "random"] = "black"
    """Colour composited behind the splats, and behind masked-out ground truth when masks are used."""
    near_plane: float = 0.01
    far_plane: float = 1e10

    # -- priors / regularisers -----------------------------------------------------------------
    use_masks: bool = False
    """Supervise the rendered alpha with the object masks (adds the ``mask`` regulariser) and
    composite the ground truth over the background outside the mask."""
    mask_weight: float = 0.1
    mask_loss: Literal["bce", "l1"] = "bce"
    regularizers: list[str] = field(default_factory=list)
    """Extra regulariser names (see :mod:`splatkit.train.regularizers`): depth_ranking,
    depth_continuity, depth_pearson, depth_patch (need ``depth_prior``), dropout."""
    depth_prior: str = "none"
    """Depth prior for the depth losses: ``none``, ``files`` (``depth/<image stem>.npy|png|pfm``
    beside the images, or ``depth_prior_dir``) or a depth model (alias such as
    ``depth-anything-v2-small``, Hugging Face id or local folder; loaded offline)."""
    depth_prior_kind: Literal["depth", "inverse"] = "depth"
    """What depth files hold: ``depth`` (larger = farther, the default) or ``inverse`` (disparity,
    as monocular estimators write it). Models declare their own kind."""
    depth_prior_dir: Optional[Path] = None
    """Folder of depth-prior files (default: ``depth/`` in the dataset folder)."""
    depth_rank_weight: float = 0.2
    """SparseNeRF local depth ranking weight (the paper's DTU setting)."""
    depth_rank_box: float = 1.0
    """Side of the random box pairs are drawn in, as a fraction of the image (1.0: whole image, DTU)."""
    depth_rank_pairs: int = 4096
    """Pixel pairs (and continuity anchors) per view and step."""
    depth_rank_margin: float = 1e-4
    depth_continuity_weight: float = 1.0
    """SparseNeRF spatial continuity weight."""
    depth_continuity_window: int = 3
    """Neighbours are drawn from the ±window px square around each anchor."""
    depth_continuity_fraction: float = 0.3
    """... among this fraction of the window closest to the anchor in the prior."""
    depth_pearson_weight: float = 0.05
    """FSGS Pearson-correlation depth loss weight."""
    depth_patch_weight: float = 0.1
    """DNGaussian patch-normalised depth loss weight."""
    depth_patch_size: int = 8
    dropout_gamma: float = 0.1
    """DropGaussian: the drop rate grows linearly from 0 to this over the run."""

    # -- densification (gsplat DefaultStrategy) ------------------------------------------------
    densify: bool = True
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
                            "refine_every", "reset_every", "log_every", "hold_every", "init_scale"))
        _check_nonnegative(c, ("checkpoint_every", "keep_checkpoints", "preview_every",
                               "ssim_lambda", "mask_weight", "refine_start_iter", "refine_stop_iter",
                               "depth_rank_weight", "depth_rank_margin", "depth_continuity_weight",
                               "depth_pearson_weight", "depth_patch_weight"))
        _check_positive(c, ("depth_rank_pairs", "depth_continuity_window", "depth_patch_size"))
        for name in ("depth_rank_box", "depth_continuity_fraction"):
            if not 0 < getattr(c, name) <= 1:
                raise SplatkitError(f"{name} must be in (0, 1], got {getattr(c, name)}")
        if not 0 <= c.dropout_gamma < 1:
            raise SplatkitError(f"dropout_gamma must be in [0, 1), got {c.dropout_gamma}")
        c.depth_prior_dir = None if c.depth_prior_dir is None else Path(c.depth_prior_dir)
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
                              ("background", ("black", "white", "random")),
                              ("init", ("auto", "sfm", "random")),
                              ("mask_loss", ("bce", "l1")),
                              ("color_field_output", ("sigmoid", "sh0")),
                              ("depth_prior_kind", ("depth", "inverse"))):
            if getattr(c, name) not in allowed:
                raise SplatkitError(f"{name} must be one of {', '.join(allowed)}; got {getattr(c, name)!r}")
        c.regularizers = list(dict.fromkeys(c.regularizers))
        return c

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in _PATH_FIELDS:
            if d[k] is not None:
                d[k] = str(d[k])
        return d


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


def _coerce(name: str, value: Any, source: str) -> Any:
    """Check a JSON value against the field's type; paths become :class:`Path`."""
    hint = _HINTS[name]
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    optional = origin is typing.Union and type(None) in args
    if optional:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)

    def bad() -> SplatkitError:
        return SplatkitError(f"{source}: {name} = {value!r} is not a valid {getattr(hint, '__name__', hint)}")

    if hint is Path:
        if not isinstance(value, (str, Path)):
            raise bad()
        return Path(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is Literal:
        if value not in args:
            raise SplatkitError(f"{source}: {name} must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise bad()
        return [_coerce_item(name, args[0], v, source) for v in value]
    return value  # pragma: no cover - every field type is handled above


def _coerce_item(name: str, hint, value, source: str):
    if hint is int and not (isinstance(value, int) and not isinstance(value, bool)):
        raise SplatkitError(f"{source}: {name} must be a list of integers, got item {value!r}")
    if hint is str and not isinstance(value, str):
        raise SplatkitError(f"{source}: {name} must be a list of strings, got item {value!r}")
    return value


def read_overrides(path: str | Path, *, allow: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read a JSON object of config values; unknown keys are an error naming the key and file.

    ``allow`` lists extra keys that are accepted and dropped (``splatkit_version`` in a run's
    ``config.json``); keys starting with ``_`` are comments.
    """
    path = Path(path)
    raw = read_json_object(path, "config file")
    out = {}
    for key, value in raw.items():
        if key.startswith("_") or key in allow:
            continue
        if key not in FIELD_NAMES:
            raise SplatkitError(f"unknown config key {key!r} in {path}")
        out[key] = _coerce(key, value, str(path))
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


def load_preset(name: str) -> dict[str, Any]:
    return read_overrides(preset_path(name))


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
        values.update(load_saved_config(load_config))
    if preset is None and load_config is None and "default" in available_presets():
        preset = "default"
    if preset is not None:
        values.update(load_preset(preset))
        values["preset"] = preset
    for key, value in (overrides or {}).items():
        if key not in FIELD_NAMES:
            raise SplatkitError(f"unknown config key {key!r}")
        values[key] = _coerce(key, value, "command line")
    return TrainConfig(**values).resolved()


def config_from_dict(values: dict[str, Any], source: str = "config") -> TrainConfig:
    """A :class:`TrainConfig` from a ``to_dict`` result (unknown keys are an error)."""
    clean = {}
    for key, value in values.items():
        if key == "splatkit_version" or key.startswith("_"):
            continue
        if key not in FIELD_NAMES:
            raise SplatkitError(f"unknown config key {key!r} in {source}")
        clean[key] = _coerce(key, value, source)
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
        if key not in FIELD_NAMES:
            raise SplatkitError(f"--set: unknown config key {key!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        out[key] = _coerce(key, value, "--set")
    return out
