"""3D Gaussian Splatting training, following gsplat's ``examples/simple_trainer.py`` (gsplat 1.5.3).

One Adam per parameter group (what gsplat's strategies edit), exponential position-LR decay,
the 3DGS SH-degree schedule, ``(1 - lambda) L1 + lambda D-SSIM``, pluggable regularisers
(:mod:`splatkit.train.regularizers`) and ``gsplat.strategy.DefaultStrategy`` densification driven
by the rasteriser's ``meta``.

Compact-3DGS (Lee et al., CVPR 2024; :mod:`splatkit.compress.compact`), when the config asks:
learnable per-Gaussian masks (a ``mask`` entry in ``model.splats``, so densification carries it,
pruned at densification steps and every ``mask_prune_every`` steps after), a hash-grid colour
field instead of per-Gaussian SH (its own Adam and LR schedule) and R-VQ of scales / rotations
from ``rvq_start`` on (learnable codebooks, straight-through). Evaluation uses
``model.compacted()``: masked-out Gaussians removed, coded attributes at their codebook values.

Nothing is lost: checkpoints are atomic and carry optimiser, strategy, regulariser and RNG state
(torch, numpy, python and the view-sampling generator), so ``--resume`` ends with the same
parameters as an uninterrupted run with the same seed. Ctrl-C finishes the current step and saves
a checkpoint; a non-finite loss or parameter stops the run without overwriting the last good
checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import signal
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

import splatkit
from splatkit.compress import compact
from splatkit.data.scene import Scene
from splatkit.errors import SplatkitError
from splatkit.models.gaussians import GaussianModel
from splatkit.train import run as runfiles
from splatkit.train.config import TrainConfig
from splatkit.train.losses import photometric_loss
from splatkit.train.regularizers import (Batch, Regularizer, RenderOutputs, TrainContext,
                                         build_regularizers)
from splatkit.utils.atomic import atomic_path, write_text_atomic

# 3DGS / gsplat: scene extent = 1.1 x the largest camera distance from the camera centroid.
SCENE_SCALE_MARGIN = 1.1
# gsplat simple_trainer's random init: a cube of half-size 3 x scene_scale.
RANDOM_INIT_EXTENT = 3.0

Callback = Callable[["Trainer", int], None]


# -- helpers shared with tests and tools ------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise SplatkitError(
                f"--device cuda was requested but CUDA is not available (torch {torch.__version__}); "
                "use --device cpu or --device auto")
        return torch.device("cuda")
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    raise SplatkitError(f"device must be auto, cpu or cuda; got {name!r}")


def choose_split(scene: Scene, config: TrainConfig) -> tuple[list[int], list[int]]:
    """Train and test view ids from the config, defaulting to the scene's own split."""
    default_train, default_test = scene.train_test_ids(config.hold_every)
    train, test = config.train_views, config.test_views
    if train is None and test is None:
        train, test = default_train, default_test
    elif test is None:  # every view not trained on
        test = [v for v in scene.ids if v not in train]
    elif train is None:
        train = [v for v in scene.ids if v not in test]
    train, test = [int(v) for v in train], [int(v) for v in test]
    for label, ids in (("train", train), ("test", test)):
        if len(set(ids)) != len(ids):
            raise SplatkitError(f"{label} view ids repeat: {ids}")
        scene.index_of(ids)  # clear error for unknown ids
    both = sorted(set(train) & set(test))
    if both:
        raise SplatkitError(f"view id(s) {both} are in both the train and the test views")
    if not train:
        raise SplatkitError("no training views")
    return train, test


def scene_extent(cameras) -> float:
    """gsplat's ``scene_scale``: 1.1 x the largest camera distance from the cameras' centroid."""
    c = cameras.centers
    radius = float(np.max(np.linalg.norm(c - c.mean(axis=0), axis=1))) if len(c) else 0.0
    if radius < 1e-6:
        # One camera (or all at one spot): fall back to its distance to the origin, where
        # readers put the object after normalisation.
        radius = float(np.max(np.linalg.norm(c, axis=1))) if len(c) else 1.0
        radius = radius if radius > 1e-6 else 1.0
    return SCENE_SCALE_MARGIN * radius


def _visibility_and_colors(scene: Scene, points: np.ndarray, chunk: int = 32768
                           ) -> tuple[np.ndarray, np.ndarray]:
    """For each point: whether every mask that sees it marks it as object (True without masks),
    and the mean colour of the pixels it projects to (0.5 grey where no view sees it)."""
    cams = scene.cameras
    inside = np.ones(len(points), dtype=bool)
    colors = np.full((len(points), 3), 0.5, dtype=np.float32)
    for start in range(0, len(points), chunk):
        pts = points[start:start + chunk]
        uv, z = cams.project(pts)
        acc = np.zeros((len(pts), 3))
        cnt = np.zeros(len(pts))
        ok = np.ones(len(pts), dtype=bool)
        for v in range(len(cams)):
            W, H = int(cams.widths[v]), int(cams.heights[v])
            with np.errstate(invalid="ignore"):
                px = np.floor(uv[v, :, 0])
                py = np.floor(uv[v, :, 1])
            seen = (z[v] > 0) & (px >= 0) & (px < W) & (py >= 0) & (py < H)
            ix = px[seen].astype(np.int64)
            iy = py[seen].astype(np.int64)
            if scene.masks is not None:
                in_mask = scene.masks[v][iy, ix] >= 0.5
                bad = np.zeros(len(pts), dtype=bool)
                bad[np.where(seen)[0][~in_mask]] = True
                ok &= ~bad
            acc[seen] += scene.images[v][iy, ix]
            cnt[seen] += 1
        inside[start:start + chunk] = ok
        has = cnt > 0
        colors[start:start + chunk][has] = (acc[has] / cnt[has, None]).astype(np.float32)
    return inside, colors


def _depth_points(scene: Scene, max_points: int = 200_000) -> Optional[np.ndarray]:
    """World points of the valid depth pixels (subsampled), or None without depth maps."""
    if scene.depths is None:
        return None
    valid_total = sum(int((d > 0).sum()) for d in scene.depths)
    if valid_total == 0:
        return None
    stride = max(1, int(math.ceil(math.sqrt(valid_total / max_points))))
    out = []
    for v, depth in enumerate(scene.depths):
        o, d = scene.cameras.pixel_rays(v)
        o, d, z = o[::stride, ::stride], d[::stride, ::stride], depth[::stride, ::stride]
        keep = z > 0
        fwd = scene.cameras.forward[v]
        # z-depth is along the optical axis; the ray parameter is z / cos(angle to the axis).
        t = z[keep] / (d[keep] @ fwd)
        out.append(o[keep] + d[keep] * t[:, None])
    return np.concatenate(out) if out else None


def _radius_inside_all_frustums(cams, center: np.ndarray) -> float:
    """Radius of the largest sphere around ``center`` that lies inside every camera's frustum
    (0 when ``center`` is outside one of them)."""
    p = (cams.worldtocams() @ np.append(center, 1.0))[:, :3]  # [N, 3] camera coordinates
    fx, fy, cx, cy = cams.Ks[:, 0, 0], cams.Ks[:, 1, 1], cams.Ks[:, 0, 2], cams.Ks[:, 1, 2]
    zero = np.zeros_like(fx)
    # Inward normals of the four side planes (through the camera centre): inside <=> n . p >= 0.
    normals = np.stack([np.stack([fx, zero, cx], -1), np.stack([-fx, zero, cams.widths - cx], -1),
                        np.stack([zero, fy, cy], -1), np.stack([zero, -fy, cams.heights - cy], -1)], 1)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    dist = np.einsum("npk,nk->np", normals, p)
    return max(float(dist.min()), 0.0)


def random_init_points(scene: Scene, n: int, rng: np.random.Generator, carve: bool = True,
                       scene_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` random points around the object: ``(points, colors, how the bounds were found)``.

    Bounds come from the depth maps (1st-99th percentile box of the unprojected depths) when the
    scene has them, else from the cameras: the largest sphere around their focus point that every
    camera sees whole. Forward-facing captures (no focus point) get gsplat's cube of half-size
    3 x scene_scale around the cameras. With masks (and ``carve``), points outside any mask that
    sees them are rejected: a visual hull. Colours are the mean of the pixels a point projects to.
    """
    from splatkit.data.normalize import focus_point

    cams = scene.cameras
    dpts = _depth_points(scene)
    if dpts is not None and len(dpts) >= 8:
        lo, hi = np.percentile(dpts, 1, axis=0), np.percentile(dpts, 99, axis=0)
        pad = 0.1 * (hi - lo) + 1e-3
        lo, hi = lo - pad, hi + pad
        how = "depth-map bounds"

        def sample(m: int) -> np.ndarray:
            return lo + (hi - lo) * rng.random((m, 3))
    else:
        center = focus_point(cams) if len(cams) >= 2 else None
        radius = _radius_inside_all_frustums(cams, center) if center is not None else 0.0
        if radius > 0:
            how = "sphere seen by every camera"

            def sample(m: int) -> np.ndarray:
                d = rng.normal(size=(m, 3))
                d /= np.linalg.norm(d, axis=1, keepdims=True) + 1e-12
                return center + d * radius * rng.random((m, 1)) ** (1 / 3)
        else:
            center = cams.centers.mean(axis=0)
            half = RANDOM_INIT_EXTENT * scene_scale
            how = "cube around the cameras"

            def sample(m: int) -> np.ndarray:
                return center + half * (2 * rng.random((m, 3)) - 1)

    if carve and scene.masks is not None:
        kept_pts, kept_cols, total = [], [], 0
        for _ in range(50):  # rejection sampling; a thin object may keep only a few % per round
            cand = sample(max(4 * n, 4096))
            ok, cols = _visibility_and_colors(scene, cand)
            kept_pts.append(cand[ok])
            kept_cols.append(cols[ok])
            total += int(ok.sum())
            if total >= n:
                break
        if total > 0:
            return (np.concatenate(kept_pts)[:n], np.concatenate(kept_cols)[:n],
                    how + ", carved by the masks")
        how += " (mask carving kept no point; uncarved)"
    pts = sample(n)
    _, cols = _visibility_and_colors(scene if scene.masks is None else _without_masks(scene), pts)
    return pts, cols, how


def _without_masks(scene: Scene) -> Scene:
    s = scene.subset(range(len(scene)))
    s.masks = None
    return s


def _without_depths(scene: Scene) -> Scene:
    s = scene.subset(range(len(scene)))
    s.depths = None
    return s


class ViewSampler:
    """Shuffled passes over the training views from a dedicated generator (saved in checkpoints)."""

    def __init__(self, n: int, batch_size: int, generator: torch.Generator):
        self.n, self.batch_size, self.generator = n, batch_size, generator
        self.perm: list[int] = []
        self.pos = 0

    def next(self) -> list[int]:
        out = []
        while len(out) < self.batch_size:
            if self.pos >= len(self.perm):
                self.perm = torch.randperm(self.n, generator=self.generator).tolist()
                self.pos = 0
            out.append(self.perm[self.pos])
            self.pos += 1
        return out

    def state_dict(self) -> dict:
        return {"perm": list(self.perm), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.perm, self.pos = list(state["perm"]), int(state["pos"])


class _Diverged(SplatkitError):
    pass


@dataclass
class _TrainViews:
    images: list[torch.Tensor]  # [H, W, 3]
    masks: Optional[list[torch.Tensor]]  # [H, W, 1]
    depths: Optional[list[torch.Tensor]]  # [H, W, 1]
    viewmats: torch.Tensor  # [N, 4, 4]
    Ks: torch.Tensor  # [N, 3, 3]
    widths: list[int]
    heights: list[int]


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    return obj


def _to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _fmt_views(ids: Sequence[int], limit: int = 12) -> str:
    s = ", ".join(map(str, ids[:limit]))
    return s + (", ..." if len(ids) > limit else "")


class Trainer:
    """``Trainer(config).train()`` trains, checkpoints, evaluates and returns the run folder.

    ``scene``: use this in-memory scene instead of loading ``config.data``. ``callbacks`` are
    called as ``callback(trainer, step)`` after every completed step (``step`` counts completed
    steps), before the finiteness check and checkpointing. ``regularizers`` are added to those the
    config names.
    """

    def __init__(self, config: TrainConfig, *, scene: Optional[Scene] = None, resume: bool = False,
                 quiet: bool = False, callbacks: Sequence[Callback] = (),
                 regularizers: Sequence[Regularizer] = ()):
        self.config = config.resolved()
        self.resume = bool(resume)
        self.quiet = bool(quiet)
        self.callbacks = list(callbacks)
        self._given_scene = scene
        self._given_regularizers = list(regularizers)
        # Checked before any data is read so a wrong --device fails at once.
        self.device = resolve_device(self.config.device)
        self.step = 0
        self.summary: Optional[dict] = None
        self.run_path: Optional[Path] = None
        self._interrupt_requested = False
        self._mutating = False
        self._snapshot: Optional[dict] = None
        self._last_checkpoint: Optional[Path] = None
        self._t0 = time.time()
        self._elapsed_before = 0.0
        self.train_seconds: Optional[float] = None
        self.quantizers: dict[str, compact.AttributeQuantizer] = {}
        self.aux_optimizers: dict[str, torch.optim.Optimizer] = {}
        self._warned_floor = False

    # ==========================================================================================
    # setup
    # ==========================================================================================
    def _load_scene(self) -> Scene:
        if self._given_scene is not None:
            return self._given_scene
        if self.config.data is None:
            raise SplatkitError("no dataset given (--data DIR)")
        from splatkit.data import load_scene

        return load_scene(self.config.data, downscale=self.config.downscale)

    def _scene_name(self, scene: Scene) -> str:
        for p in (self.config.data, scene.root):
            if p is not None:
                name = Path(p).resolve().name
                if name:
                    return name
        return "scene"

    def _choose_run_folder(self, scene: Scene) -> None:
        """Pick the run folder and the split; writes nothing (see :meth:`_write_run_files`)."""
        cfg = self.config
        if self.resume:
            if cfg.out is None:
                raise SplatkitError("--resume needs the run folder to continue (--out RUN)")
            path = Path(cfg.out)
            if not (path / runfiles.CONFIG_NAME).is_file():
                raise SplatkitError(f"cannot resume: not a run folder (no {runfiles.CONFIG_NAME})", path)
            saved_train, saved_test = runfiles.Run(path, cfg).split()
            for label, given, saved in (("train", cfg.train_views, saved_train),
                                        ("test", cfg.test_views, saved_test)):
                if given is not None and list(given) != saved:
                    raise SplatkitError(f"cannot change the {label} views of a run when resuming "
                                        f"(run has {saved}, got {list(given)})")
            self.train_ids, self.test_ids = saved_train, saved_test
            scene.index_of(self.train_ids + self.test_ids)
        else:
            self.train_ids, self.test_ids = choose_split(scene, cfg)
            if cfg.out is not None:
                path = Path(cfg.out)
                if path.exists() and (not path.is_dir() or any(path.iterdir())):
                    raise SplatkitError("run folder already exists and is not empty; add --resume to "
                                        "continue it or choose another --out", path)
            else:
                base = Path(cfg.output_root) / self._scene_name(scene) / cfg.method
                stamp = datetime.now().strftime("%Y-%m-%d_%H%M%S")
                path, k = base / stamp, 1
                while path.exists():  # two runs started within the same second
                    path, k = base / f"{stamp}_{k}", k + 1
        path = path.resolve()
        self.run_path = path
        # The resolved config, absolute paths, so that --load-config works from anywhere.
        self.config.out = path
        if self.config.data is not None:
            self.config.data = Path(self.config.data).resolve()
        if self.config.depth_prior_dir is not None:
            self.config.depth_prior_dir = Path(self.config.depth_prior_dir).resolve()
        self.run = runfiles.Run(path, self.config)

    def _write_run_files(self) -> None:
        """config.json and split.json, once every check has passed (and, when resuming, the
        checkpoint has loaded), so a failed start leaves no half-made run behind."""
        path = self.run_path
        path.mkdir(parents=True, exist_ok=True)
        cfg_dict = {**self.config.to_dict(), "splatkit_version": splatkit.__version__}
        write_text_atomic(path / runfiles.CONFIG_NAME, json.dumps(cfg_dict, indent=2) + "\n")
        write_text_atomic(path / runfiles.SPLIT_NAME,
                          json.dumps({"train": self.train_ids, "test": self.test_ids}) + "\n")

    def _prepare_views(self, scene: Scene) -> None:
        dev = self.device
        self.scene = scene
        self.train_scene = scene.subset(scene.index_of(self.train_ids))
        self.test_scene = scene.subset(scene.index_of(self.test_ids)) if self.test_ids else None
        ts = self.train_scene
        sizes = {(int(w), int(h)) for w, h in zip(ts.cameras.widths, ts.cameras.heights)}
        if self.config.batch_size > 1 and len(sizes) > 1:
            raise SplatkitError(f"batch_size > 1 needs training images of one size; got {sorted(sizes)}")
        if self.config.batch_size > len(ts):
            raise SplatkitError(f"batch_size {self.config.batch_size} exceeds the {len(ts)} training views")

        def col(arrs):
            return None if arrs is None else [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
                                              .reshape(a.shape[0], a.shape[1], -1).to(dev) for a in arrs]

        self.views = _TrainViews(
            images=col(ts.images), masks=col(ts.masks), depths=col(ts.depths),
            viewmats=ts.cameras.viewmats(dev), Ks=ts.cameras.intrinsics(dev),
            widths=[int(w) for w in ts.cameras.widths], heights=[int(h) for h in ts.cameras.heights])

    def _init_model(self) -> str:
        cfg = self.config
        ts = self.train_scene
        init = cfg.init
        if init == "sfm" and (ts.points is None or len(ts.points) == 0):
            raise SplatkitError("init 'sfm' needs SfM points; this dataset has none (use --init random)")
        if init == "auto":
            init = "sfm" if ts.points is not None and len(ts.points) > 0 else "random"
        if init == "sfm":
            pts = np.asarray(ts.points, dtype=np.float32)
            cols = (np.asarray(ts.point_colors, dtype=np.float32) if ts.point_colors is not None
                    else np.full_like(pts, 0.5))
            how = f"{len(pts)} SfM points"
        else:
            rng = np.random.default_rng(cfg.seed)
            if cfg.depth_prior_kind == "inverse" and ts.depths is not None:
                # The files in depth/ are declared inverse depth: not metric, so no bounds from them.
                ts = _without_depths(ts)
            pts, cols, bounds = random_init_points(ts, cfg.init_num_points, rng,
                                                   carve=cfg.use_masks and cfg.init_carve_with_masks,
                                                   scene_scale=self.scene_scale)
            how = f"{len(pts)} random points ({bounds})"
        self.model = GaussianModel.from_points(torch.from_numpy(np.asarray(pts, dtype=np.float32)),
                                               torch.from_numpy(np.asarray(cols, dtype=np.float32)),
                                               sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity,
                                               init_scale=cfg.init_scale).to(self.device)
        if cfg.gaussian_masks:
            self.model.splats["mask"] = torch.nn.Parameter(
                torch.full((self.model.num_gaussians,), compact.MASK_INIT_LOGIT, device=self.device))
        if cfg.color_field:
            self.model.color_field = self._new_color_field().to(self.device)
            self.model.bake_axis = compact.view_hemisphere_axis(ts.cameras.centers)
        return how

    def _new_color_field(self):
        from splatkit.models.color_field import ColorField, ColorFieldConfig
        from splatkit.models.hashgrid import HashGridConfig

        cfg = self.config
        grid = HashGridConfig(n_levels=cfg.color_field_levels, log2_hashmap_size=cfg.color_field_log2_hashmap_size,
                              seed=cfg.seed)
        return ColorField(ColorFieldConfig(grid=grid, scene_bound=cfg.color_field_bound, output=cfg.color_field_output))

    def _prepare_compact(self) -> None:
        """Settings the model and quantizers take from the config, fresh or resumed."""
        cfg = self.config
        self.model.mask_threshold = cfg.mask_threshold
        if self.model.color_field is not None:
            # The field colours the Gaussians; their SH only hold the initial colours.
            for name in ("sh0", "shN"):
                self.model.splats[name].requires_grad_(False)
        if cfg.rvq:
            shapes = {k: tuple(v.shape[1:]) for k, v in self.model.splats.items()}
            self.quantizers = {k: q.to(self.device) for k, q in compact.make_quantizers(
                cfg.rvq_attributes, shapes, cfg.rvq_stages, cfg.rvq_codebook_size).items()}

    def _build_optimizers(self) -> None:
        cfg = self.config
        bs = cfg.batch_size
        lrs = {"means": cfg.means_lr * self.scene_scale, "scales": cfg.scales_lr, "quats": cfg.quats_lr,
               "opacities": cfg.opacities_lr, "sh0": cfg.sh0_lr, "shN": cfg.shN_lr, "mask": cfg.mask_lr}

        def adam(params, lr: float, name: Optional[str] = None) -> torch.optim.Optimizer:
            # Batch scaling as in gsplat simple_trainer: lr x sqrt(B), eps / sqrt(B), betas^B-ish.
            # eps 1e-15 is also Compact-3DGS' choice for its colour field.
            group = {"params": params, "lr": lr * math.sqrt(bs)}
            if name is not None:
                group["name"] = name
            return torch.optim.Adam([group], eps=1e-15 / math.sqrt(bs),
                                    betas=(1 - bs * (1 - 0.9), 1 - bs * (1 - 0.999)))

        # Frozen entries (SH under a colour field) have no optimiser; gsplat's strategy expects that.
        self.optimizers = {name: adam([p], lrs[name], name) for name, p in self.model.splats.items()
                           if p.requires_grad}
        self.aux_optimizers = {}
        if self.model.color_field is not None:
            self.aux_optimizers["color_field"] = adam(list(self.model.color_field.parameters()), cfg.color_field_lr)
        for name, q in self.quantizers.items():
            # A codebook entry stands for many Gaussians' values: it learns at their LR.
            self.aux_optimizers[f"rvq/{name}"] = adam(list(q.parameters()), lrs[name])
        self._means_lr0 = lrs["means"] * math.sqrt(bs)
        self._field_lr0 = cfg.color_field_lr * math.sqrt(bs)

    def _build_strategy(self) -> None:
        from gsplat.strategy import DefaultStrategy

        cfg = self.config
        self.strategy = DefaultStrategy(
            prune_opa=cfg.prune_opa, grow_grad2d=cfg.grow_grad2d, grow_scale3d=cfg.grow_scale3d,
            prune_scale3d=cfg.prune_scale3d, refine_start_iter=cfg.refine_start_iter,
            refine_stop_iter=cfg.refine_stop_iter, reset_every=cfg.reset_every,
            refine_every=cfg.refine_every, pause_refine_after_reset=cfg.pause_refine_after_reset,
            absgrad=cfg.absgrad, verbose=False)
        self.strategy.check_sanity(self.model.splats, self.optimizers)
        self.strategy_state = self.strategy.initialize_state(scene_scale=self.scene_scale)

    def _setup(self) -> None:
        cfg = self.config
        scene = self._load_scene()
        self.regularizers = build_regularizers(cfg) + self._given_regularizers
        names = [r.name for r in self.regularizers]
        if len(set(names)) != len(names):
            raise SplatkitError(f"regulariser names repeat: {names}")
        self._choose_run_folder(scene)
        self._prepare_views(scene)
        for reg in self.regularizers:
            if reg.needs_masks and self.train_scene.masks is None:
                raise SplatkitError(f"the {reg.name!r} regulariser (--use-masks for 'mask') needs a dataset "
                                    "with masks; this one has none")
            if reg.needs_depth_maps and self.train_scene.depths is None:
                raise SplatkitError(f"the {reg.name!r} regulariser needs depth maps; this dataset has none")
        self.scene_scale = float(cfg.scene_scale) if cfg.scene_scale else scene_extent(self.train_scene.cameras)
        self.backend = None

        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sampler = ViewSampler(len(self.train_scene), cfg.batch_size, self.generator)

        resume_from = None
        if self.resume:
            ckpts = self.run.checkpoints()
            resume_from = ckpts[-1] if ckpts else None
        if resume_from is not None:
            self._init_desc = f"resumed from {resume_from.name}"
            self._load_training_state(resume_from)
        else:
            self._init_desc = self._init_model()
            self._prepare_compact()
            self._build_optimizers()
            self._build_strategy()
            self.step = 0
            self._elapsed_before = 0.0

        context = TrainContext(config=cfg, scene=self.train_scene, model=self.model, device=self.device,
                               scene_scale=self.scene_scale, train_ids=self.train_ids, test_ids=self.test_ids)
        for reg in self.regularizers:
            reg.setup(context)
        if resume_from is not None:
            saved = self._resume_payload.get("regularizers", {})
            for reg in self.regularizers:
                reg.load_state_dict(saved.get(reg.name, {}))
        self.render_mode = "RGB+ED" if any(r.needs_depth for r in self.regularizers) else "RGB"
        self._write_run_files()
        self._trim_log()

    def _load_training_state(self, path: Path) -> None:
        cfg = self.config
        model, payload = GaussianModel.load_checkpoint(path, map_location=self.device, raw=True)
        state = payload.get("trainer")
        if not isinstance(state, dict):
            raise SplatkitError("checkpoint has no training state to resume from", path)
        if model.sh_degree != cfg.sh_degree:
            raise SplatkitError(f"checkpoint has SH degree {model.sh_degree}, the config asks for "
                                f"{cfg.sh_degree}; the SH degree cannot change on resume", path)
        if (model.color_field is not None) != cfg.color_field:
            raise SplatkitError(f"checkpoint {'has' if model.color_field is not None else 'has no'} colour field "
                                f"but the config has color_field={cfg.color_field}; it cannot change on resume", path)
        if "mask" in model.splats and not cfg.gaussian_masks:
            raise SplatkitError("checkpoint has learnable masks but the config has gaussian_masks=false; "
                                "they cannot be turned off on resume", path)
        if cfg.gaussian_masks and "mask" not in model.splats:
            # A checkpoint from before masks were on: every Gaussian starts with the initial mask.
            model.splats["mask"] = torch.nn.Parameter(
                torch.full((model.num_gaussians,), compact.MASK_INIT_LOGIT, device=self.device))
        self.model = model
        self._prepare_compact()
        for name, q in self.quantizers.items():
            if name in state.get("quantizers", {}):
                q.load_state_dict(state["quantizers"][name])
        self._build_optimizers()
        for name, opt in self.optimizers.items():
            if name in state["optimizers"]:  # "mask" is new for checkpoints from before masks
                opt.load_state_dict(state["optimizers"][name])
        for name, opt in self.aux_optimizers.items():
            if name in state.get("aux_optimizers", {}):
                opt.load_state_dict(state["aux_optimizers"][name])
        self._build_strategy()
        self.strategy_state = _to_device(state["strategy_state"], self.device)
        self.strategy_state["scene_scale"] = self.scene_scale
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"])
        self.sampler.load_state_dict(rng["sampler"])
        self.step = int(payload["step"])
        self._elapsed_before = float(state.get("elapsed_s", 0.0))
        self._resume_payload = state
        self._last_checkpoint = path

    def _trim_log(self) -> None:
        """On resume, drop log lines past the checkpoint so the log has no duplicate steps."""
        log = self.run.log_path
        if not log.is_file():
            return
        kept = []
        for line in log.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= self.step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        write_text_atomic(log, "".join(k + "\n" for k in kept))

    # ==========================================================================================
    # one step
    # ==========================================================================================
    def _backgrounds(self, n: int) -> torch.Tensor:
        bg = self.config.background
        if bg == "random":
            return torch.rand(n, 3, generator=self.generator).to(self.device)
        value = 1.0 if bg == "white" else 0.0
        return torch.full((n, 3), value, device=self.device)

    def _eval_background(self) -> torch.Tensor:
        value = 1.0 if self.config.background == "white" else 0.0  # random -> black, as gsplat evaluates
        return torch.full((1, 3), value, device=self.device)

    def _make_batch(self, step: int, positions: list[int], bg: torch.Tensor) -> Batch:
        v = self.views
        images = torch.stack([v.images[p] for p in positions])
        masks = None if v.masks is None else torch.stack([v.masks[p] for p in positions])
        depths = None if v.depths is None else torch.stack([v.depths[p] for p in positions])
        target = images
        if self.config.use_masks and masks is not None:
            # The object only: the background is whatever the splats are composited on.
            target = images * masks + bg[:, None, None, :] * (1 - masks)
        return Batch(step=step, positions=positions, view_ids=[self.train_ids[p] for p in positions],
                     images=images, target=target, viewmats=v.viewmats[positions], Ks=v.Ks[positions],
                     width=v.widths[positions[0]], height=v.heights[positions[0]], backgrounds=bg,
                     masks=masks, depths=depths)

    def _render(self, viewmats, Ks, width, height, sh_degree, backgrounds, render_mode="RGB",
                absgrad=False, params=None, model=None):
        cfg = self.config
        renders, alphas, meta = (self.model if model is None else model).render(
            viewmats, Ks, width, height, sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode,
            near_plane=cfg.near_plane, far_plane=cfg.far_plane, absgrad=absgrad, backend=cfg.backend,
            params=params)
        self.backend = meta.get("backend", self.backend)  # what "auto" picked, for the summary
        return renders, alphas, meta

    def _train_step(self, step: int) -> dict[str, float]:
        """Iteration ``step`` (0-based, as gsplat's strategies count)."""
        cfg = self.config
        positions = self.sampler.next()
        bg = self._backgrounds(len(positions))
        batch = self._make_batch(step, positions, bg)
        sh_degree = min(step // cfg.sh_degree_interval, self.model.sh_degree)
        params = self._compact_params(step, self.model.activated())
        for reg in self.regularizers:
            params = reg.render_params(step, params)
        renders, alphas, meta = self._render(batch.viewmats, batch.Ks, batch.width, batch.height, sh_degree,
                                             bg, self.render_mode, absgrad=cfg.absgrad and cfg.densify,
                                             params=params)
        colors = renders[..., :3]
        outputs = RenderOutputs(colors=colors, alphas=alphas, meta=meta, sh_degree=sh_degree,
                                depths=renders[..., 3:4] if renders.shape[-1] > 3 else None)
        if cfg.densify:
            self.strategy.step_pre_backward(self.model.splats, self.optimizers, self.strategy_state, step, meta)

        loss, terms = photometric_loss(colors, batch.target, cfg.ssim_lambda)
        if "mask" in self.model.splats and (cfg.mask_loss_stop_iter is None or step < cfg.mask_loss_stop_iter):
            term = compact.mask_loss(self.model.splats["mask"], cfg.mask_lambda)
            terms["gaussian_mask"] = term.detach()
            loss = loss + term
        for reg in self.regularizers:
            out = reg.loss(step, batch, outputs)
            items = out.items() if isinstance(out, dict) else [(None, out)]
            for key, value in items:
                label = reg.name if key is None else f"{reg.name}/{key}"
                terms[label] = value.detach()
                loss = loss + value
        if not bool(torch.isfinite(loss)):
            bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
            raise _Diverged(f"the loss is {loss.item()} at step {step + 1}"
                            + (f" (non-finite term: {', '.join(bad)})" if bad else ""))
        loss.backward()

        # 3DGS position LR: exponential decay from means_lr to means_lr_final over the run.
        ratio = cfg.means_lr_final / cfg.means_lr if cfg.means_lr > 0 else 1.0
        self.optimizers["means"].param_groups[0]["lr"] = self._means_lr0 * ratio ** (step / cfg.steps)
        if "color_field" in self.aux_optimizers:
            self.aux_optimizers["color_field"].param_groups[0]["lr"] = self._field_lr0 * compact.color_field_lr_factor(
                step, cfg.color_field_warmup, cfg.color_field_lr_milestones, cfg.color_field_lr_gamma)

        self._mutating = True
        for opt in (*self.optimizers.values(), *self.aux_optimizers.values()):
            opt.step()
            opt.zero_grad(set_to_none=True)
        if cfg.densify:
            self.strategy.step_post_backward(self.model.splats, self.optimizers, self.strategy_state, step,
                                             meta, packed=False)
            self._opacity_reset(step)
        self._prune_masked(step)
        self._mutating = False

        with torch.no_grad():
            mse = ((colors.detach().clamp(0, 1) - batch.target) ** 2).mean()
        out = {"loss": float(loss.detach()), "psnr": float(-10 * torch.log10(mse.clamp_min(1e-12)))}
        out.update({k: float(v) for k, v in terms.items()})
        out["sh_degree"] = sh_degree
        return out

    def _opacity_reset(self, step: int) -> None:
        # gsplat 1.5.3's DefaultStrategy tests ``step % reset_every == 0 & step > 0``, which Python
        # parses as ``step % reset_every == 0 > 0`` (always False), so its opacity reset never runs.
        # Do it here as 3DGS does; reset_opa clamps, so it stays correct if gsplat fixes its test.
        from gsplat.strategy.ops import reset_opa

        cfg = self.config
        if 0 < step < cfg.refine_stop_iter and step % cfg.reset_every == 0:
            reset_opa(params=self.model.splats, optimizers=self.optimizers, state=self.strategy_state,
                      value=cfg.prune_opa * 2.0)

    def _compact_params(self, step: int, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """What Compact-3DGS renders in training: R-VQ-coded attributes from ``rvq_start`` on,
        then scale and opacity times the straight-through hard mask."""
        splats = self.model.splats
        out = dict(params)
        if self.quantizers and step >= self.config.rvq_start:
            for name, q in self.quantizers.items():
                coded = q(compact.rvq_input(name, splats[name]))
                if name == "scales":
                    out["scales"] = torch.exp(coded)
                elif name == "quats":
                    out["quats"] = coded
                else:  # shN
                    out["colors"] = torch.cat([splats["sh0"], coded.reshape(splats["shN"].shape)], dim=1)
        if "mask" in splats:
            m = compact.straight_through_mask(splats["mask"], self.config.mask_threshold)
            out["scales"] = out["scales"] * m[:, None]
            out["opacities"] = out["opacities"] * m
        return out

    def _prune_masked(self, step: int) -> None:
        """Remove masked-out Gaussians at densification steps (as Compact-3DGS' densify_and_prune
        does) and every ``mask_prune_every`` steps once densification has stopped."""
        from gsplat.strategy.ops import remove

        cfg = self.config
        if "mask" not in self.model.splats:
            return
        if cfg.densify and step < cfg.refine_stop_iter:
            # gsplat DefaultStrategy's refinement test, so both prune at the same steps.
            due = (step > cfg.refine_start_iter and step % cfg.refine_every == 0
                   and step % cfg.reset_every >= cfg.pause_refine_after_reset)
        else:
            due = step > 0 and step % cfg.mask_prune_every == 0
        if not due:
            return
        drop, floored = compact.prune_selection(self.model.splats["mask"], cfg.mask_threshold,
                                                cfg.mask_min_gaussians)
        if floored and not self._warned_floor:
            self._warned_floor = True
            warnings.warn(f"learnable masks turned off nearly every Gaussian at step {step + 1}; keeping the "
                          f"{cfg.mask_min_gaussians} with the largest masks (mask_min_gaussians). Consider a "
                          "smaller mask_lambda", stacklevel=2)
        if bool(drop.any()):
            remove(params=self.model.splats, optimizers=self.optimizers, state=self.strategy_state, mask=drop)

    def _sync_codebooks(self) -> None:
        """Put the quantizers' current codebooks on the model (what checkpoints and evaluation use)."""
        self.model.codebooks = {name: q.codebooks.detach().clone() for name, q in self.quantizers.items()
                                if q.initialized}

    def eval_model(self) -> GaussianModel:
        """The model as evaluation and exports see it (:meth:`GaussianModel.compacted`)."""
        self._sync_codebooks()
        return self.model.compacted()

    def _check_finite(self, step: int) -> None:
        extra = {} if self.model.color_field is None else {
            f"color_field.{k}": v for k, v in self.model.color_field.named_parameters()}
        extra.update({f"rvq/{k}": q.codebooks for k, q in self.quantizers.items()})
        for name, p in (*self.model.splats.items(), *extra.items()):
            if not bool(torch.isfinite(p).all()):
                raise _Diverged(f"parameter {name!r} became non-finite at step {step}")

    # ==========================================================================================
    # state
    # ==========================================================================================
    def _rng_state(self) -> dict:
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "numpy": np.random.get_state(),
            "python": random.getstate(),
            "generator": self.generator.get_state(),
            "sampler": self.sampler.state_dict(),
        }

    def _elapsed(self) -> float:
        return self._elapsed_before + (time.time() - self._t0)

    def save_checkpoint(self, rng: Optional[dict] = None) -> Path:
        """Write ``checkpoints/ckpt_{step}.pt`` (atomically) and drop old ones beyond ``keep_checkpoints``."""
        self._check_finite(self.step)  # never write NaNs over a good checkpoint
        self._sync_codebooks()
        path = self.run.checkpoint_dir / runfiles.checkpoint_name(self.step)
        state = {
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "aux_optimizers": {k: o.state_dict() for k, o in self.aux_optimizers.items()},
            "quantizers": {k: _to_cpu(q.state_dict()) for k, q in self.quantizers.items()},
            "strategy_state": _to_cpu(self.strategy_state),
            "rng": rng if rng is not None else self._rng_state(),
            "regularizers": {r.name: r.state_dict() for r in self.regularizers},
            "elapsed_s": self._elapsed(),
            "config": self.config.to_dict(),
        }
        self.model.save_checkpoint(path, self.step, normalization=self.scene.normalization.to_dict(),
                                   extra={"trainer": state})
        self._last_checkpoint = path
        keep = self.config.keep_checkpoints
        if keep > 0:
            for old in self.run.checkpoints()[:-keep]:
                old.unlink(missing_ok=True)
        return path

    # ==========================================================================================
    # evaluation and previews
    # ==========================================================================================
    @torch.no_grad()
    def render_view(self, scene: Scene, index: int, model: Optional[GaussianModel] = None) -> np.ndarray:
        """Render view ``index`` of ``scene`` with ``model`` (default: :meth:`eval_model`):
        float32 [H, W, 3] in [0, 1]."""
        model = self.eval_model() if model is None else model
        cams = scene.cameras[index]
        renders, _, _ = self._render(cams.viewmats(self.device), cams.intrinsics(self.device),
                                     int(cams.widths[0]), int(cams.heights[0]), model.sh_degree,
                                     self._eval_background(), model=model)
        return renders[0, ..., :3].clamp(0, 1).cpu().numpy()

    def _eval_target(self, scene: Scene, index: int) -> np.ndarray:
        img = scene.images[index]
        if self.config.use_masks and scene.masks is not None:
            m = scene.masks[index][..., None]
            bg = self._eval_background()[0].cpu().numpy()
            img = img * m + bg * (1 - m)
        return img.astype(np.float32)

    def write_preview(self) -> Path:
        """``previews/step_NNNNNN.png``: ground truth | render of the first test (else train) view."""
        from splatkit.data.imageio_utils import write_image

        scene = self.test_scene if self.test_scene is not None else self.train_scene
        pred = self.render_view(scene, 0)
        gt = self._eval_target(scene, 0)
        path = self.run.preview_dir / f"step_{self.step:06d}.png"
        with atomic_path(path) as tmp:
            png = tmp.with_name(tmp.name + ".png")  # the writer picks the format from the suffix
            try:
                write_image(png, np.concatenate([gt, pred], axis=1))
                png.replace(tmp)
            finally:
                png.unlink(missing_ok=True)
        return path

    def evaluate(self) -> dict:
        """PSNR/SSIM (and masked variants when the scene has masks) on the test views."""
        from splatkit.eval.metrics import masked_psnr, masked_ssim, psnr, ssim

        per_view = []
        ts = self.test_scene
        model = self.eval_model()
        for i in range(0 if ts is None else len(ts)):
            pred = self.render_view(ts, i, model)
            gt = self._eval_target(ts, i)
            row: dict[str, Any] = {"id": ts.ids[i], "name": ts.names[i], "psnr": psnr(pred, gt)}
            small = min(gt.shape[:2]) < 11
            row["ssim"] = None if small else ssim(pred, gt)
            if ts.masks is not None:
                m = ts.masks[i]
                # DTU protocol (RegNeRF): scored against the raw image, inside the mask only.
                try:
                    row["masked_psnr"] = masked_psnr(pred, ts.images[i], m)
                    row["masked_ssim"] = None if small else masked_ssim(pred, ts.images[i], m)
                except SplatkitError:  # an empty mask: the masked metrics are undefined for this view
                    row["masked_psnr"] = row["masked_ssim"] = None
            per_view.append(row)
        mean = {}
        for key in ("psnr", "ssim", "masked_psnr", "masked_ssim"):
            vals = [r[key] for r in per_view if r.get(key) is not None]
            if vals:
                mean[key] = float(np.mean(vals))
        return {
            "step": self.step,
            "num_gaussians": model.num_gaussians,
            "train_views": self.train_ids,
            "test_views": self.test_ids,
            "mean": mean,
            "per_view": per_view,
            "eval_background": self._eval_background()[0].tolist(),
            "target": ("ground truth composited on the background outside the mask"
                       if self.config.use_masks and ts is not None and ts.masks is not None
                       else "ground truth"),
            "train_time_s": round(self.train_seconds if self.train_seconds is not None else self._elapsed(), 3),
            "backend": self.backend,
            "device": str(self.device),
        }

    # ==========================================================================================
    # the loop
    # ==========================================================================================
    def _install_sigint(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            if self._interrupt_requested:
                raise KeyboardInterrupt  # second Ctrl-C: stop right now
            self._interrupt_requested = True
            print("\nsplatkit: stopping after this step to save a checkpoint (Ctrl-C again to stop now)",
                  file=sys.stderr)

        signal.signal(signal.SIGINT, handler)
        return previous

    def _say(self, msg: str) -> None:
        if not self.quiet:
            print(msg, flush=True)

    def train(self) -> Path:
        """Train to ``config.steps`` (continuing the run with ``resume``); returns the run folder."""
        cfg = self.config
        self._setup()
        self._say(f"run folder: {self.run_path}")
        self._say(f"{len(self.train_ids)} train views ({_fmt_views(self.train_ids)}), {len(self.test_ids)} "
                  f"test views; {self._init_desc}; {self.model.num_gaussians} Gaussians; device {self.device}")
        self._t0 = time.time()
        self._session_start_step = self.step
        previous_handler = self._install_sigint()
        progress = self._make_progress()
        try:
            with progress:
                task = progress.add_task("training", total=cfg.steps, completed=self.step,
                                         loss=float("nan"), psnr=float("nan"),
                                         gaussians=self.model.num_gaussians, rate=0.0)
                self._loop(progress, task)
        except KeyboardInterrupt:
            self._on_interrupt()
            raise
        except _Diverged as exc:
            raise SplatkitError(self._diverged_message(exc)) from None
        finally:
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)

        self.train_seconds = self._elapsed()
        if self._last_checkpoint is None or runfiles.checkpoint_step(self._last_checkpoint) != self.step:
            self.save_checkpoint()
        self.write_preview()
        self.summary = self.evaluate()
        write_text_atomic(self.run.summary_path, json.dumps(self.summary, indent=2) + "\n")
        mean = self.summary["mean"]
        if mean:
            self._say("test: " + ", ".join(f"{k} {v:.4f}" for k, v in mean.items()))
        return self.run_path

    def _make_progress(self):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        console = Console()
        disable = self.quiet or not console.is_terminal
        return Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  psnr {task.fields[psnr]:.2f}  "
                       "{task.fields[gaussians]} splats  {task.fields[rate]:.1f} it/s"),
            TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=disable, transient=False)

    def _loop(self, progress, task) -> None:
        cfg = self.config
        log = open(self.run.log_path, "a", encoding="utf-8")
        try:
            for s in range(self.step, cfg.steps):
                # What a checkpoint must hold if Ctrl-C lands before this step completes.
                self._snapshot = self._rng_state_copy()
                stats = self._train_step(s)
                self.step = s + 1
                self._snapshot = None
                for cb in self.callbacks:
                    cb(self, self.step)
                self._check_finite(self.step)
                if self._interrupt_requested:
                    raise KeyboardInterrupt
                done = self.step
                rate = (done - self._session_start_step) / max(time.time() - self._t0, 1e-9)
                progress.update(task, completed=done, loss=stats["loss"], psnr=stats["psnr"],
                                gaussians=self.model.num_gaussians, rate=rate)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    rec = {"step": done, "loss": stats["loss"], "psnr": stats["psnr"],
                           "num_gaussians": self.model.num_gaussians, "elapsed_s": round(self._elapsed(), 3)}
                    rec.update({k: v for k, v in stats.items() if k not in rec})
                    rec["lr_means"] = self.optimizers["means"].param_groups[0]["lr"]
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.steps:
                    self.save_checkpoint()
                    if progress.disable:
                        self._say(f"step {done}/{cfg.steps}  loss {stats['loss']:.4f}  psnr {stats['psnr']:.2f}  "
                                  f"{self.model.num_gaussians} splats  {rate:.1f} it/s")
                if cfg.preview_every and done % cfg.preview_every == 0 and done != cfg.steps:
                    self.write_preview()
        finally:
            log.close()

    def _diverged_message(self, exc: SplatkitError) -> str:
        kept = (f"the last good checkpoint is {self._last_checkpoint}" if self._last_checkpoint
                else "no checkpoint had been written yet")
        return f"training diverged: {exc.message}; {kept}. Try lower learning rates or another --seed"

    def _rng_state_copy(self) -> dict:
        st = self._rng_state()
        st["sampler"] = {"perm": list(st["sampler"]["perm"]), "pos": st["sampler"]["pos"]}
        return st

    def _on_interrupt(self) -> None:
        if self._mutating:
            where = f"; kept {self._last_checkpoint}" if self._last_checkpoint else ""
            print(f"splatkit: interrupted during a parameter update, no checkpoint written{where}",
                  file=sys.stderr)
            return
        try:
            # Interrupted mid-step: the parameters are those of the last completed step, and the
            # RNG state must be the one that step left, so that --resume replays the step.
            path = self.save_checkpoint(rng=self._snapshot)
        except _Diverged as exc:
            print(f"splatkit: interrupted; not saving non-finite parameters ({exc})", file=sys.stderr)
            return
        print(f"splatkit: interrupted at step {self.step}; saved {path} (continue with --resume --out "
              f"{self.run_path})", file=sys.stderr)


def train(config: TrainConfig, **kwargs) -> Path:
    """Train and return the run folder (see :class:`Trainer` for ``kwargs``)."""
    return Trainer(config, **kwargs).train()


def train_command(overrides: dict[str, Any], *, preset: Optional[str] = None,
                  load_config: Optional[Path] = None, resume: bool = False, quiet: bool = False) -> Trainer:
    """What ``splatkit train`` does once its flags are parsed; returns the finished trainer.

    ``resume`` continues the run folder ``overrides["out"]`` with its own ``config.json`` (unless
    ``load_config`` names another), overridden by the other flags (e.g. more ``steps``).
    """
    from splatkit.train.config import resolve_config

    if resume:
        out = overrides.get("out")
        if out is None:
            raise SplatkitError("--resume needs the run folder to continue (--out RUN)")
        runfiles.Run.open(out)  # clear errors for a missing or foreign folder
        if load_config is None:
            load_config = Path(out) / runfiles.CONFIG_NAME
    config = resolve_config(overrides, preset=preset, load_config=load_config)
    trainer = Trainer(config, resume=resume, quiet=quiet)
    trainer.train()
    return trainer
