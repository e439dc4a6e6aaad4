"""The training loop, for any method (:mod:`splatkit.methods`): steps, view batches, the
photometric loss, plugins' losses and hooks, logging, checkpoints, exact resume, the NaN guard,
Ctrl-C and the end-of-run scores. It never names a representation: the method renders, owns its
parameters, optimisers and strategy, and writes the model part of a checkpoint.

Nothing is lost: checkpoints are atomic and carry the method's optimiser and strategy state, every
plugin's state and the RNG state (torch, numpy, python and the view-sampling generator), so
``--resume`` ends with the same parameters as an uninterrupted run with the same seed. Ctrl-C
finishes the current step and saves a checkpoint; a non-finite loss or parameter stops the run
without overwriting the last good checkpoint.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

import splatkit
from splatkit.data.scene import Scene
from splatkit.errors import SplatkitError
from splatkit.methods import method_class
from splatkit.methods.base import Batch, Plugin, RenderOutputs, TrainState, check_finite
from splatkit.methods.losses import photometric_loss
from splatkit.methods.plugins import build_plugins
from splatkit.methods.scoring import background_for
from splatkit.models.init import scene_extent
from splatkit.train import run as runfiles
from splatkit.train.config import TrainConfig
from splatkit.utils.atomic import atomic_path, write_text_atomic
from splatkit.utils.checkpoint import read_payload

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


def _fmt_views(ids: Sequence[int], limit: int = 12) -> str:
    s = ", ".join(map(str, ids[:limit]))
    return s + (", ..." if len(ids) > limit else "")




class Trainer:
    """``Trainer(config).train()`` trains, checkpoints, evaluates and returns the run folder.

    ``scene``: use this in-memory scene instead of loading ``config.data``. ``callbacks`` are
    called as ``callback(trainer, step)`` after every completed step (``step`` counts completed
    steps), before the finiteness check and checkpointing. ``plugins`` (``regularizers``, the
    old name) are added after those the method and the config name.
    """

    def __init__(self, config: TrainConfig, *, scene: Optional[Scene] = None, resume: bool = False,
                 quiet: bool = False, callbacks: Sequence[Callback] = (), plugins: Sequence[Plugin] = (),
                 regularizers: Sequence[Plugin] = ()):
        self.config = config.resolved()
        self.resume = bool(resume)
        self.quiet = bool(quiet)
        self.callbacks = list(callbacks)
        self._given_scene = scene
        self._given_plugins = list(plugins) + list(regularizers)
        # Checked before any data is read so a wrong --device fails at once.
        self.device = resolve_device(self.config.device)
        if self.device.type == "cpu":
            # Adam's moments of parameters that stop getting gradients (hash-table rows no ray
            # reaches) decay into subnormal floats within ~1000 steps, and x86 arithmetic on
            # subnormals is many times slower, so a NeRF's steps slowed down as it trained. GPUs
            # flush them to zero; so do we. No-op where unsupported.
            torch.set_flush_denormal(True)
        self.step = 0
        self.summary: Optional[dict] = None
        self.run_path: Optional[Path] = None
        self.method = None
        self.plugins: list[Plugin] = []
        self._interrupt_requested = False
        self._mutating = False
        self._snapshot: Optional[dict] = None
        self._last_checkpoint: Optional[Path] = None
        self._t0 = time.time()
        self._elapsed_before = 0.0
        self.train_seconds: Optional[float] = None
        self._background_note: Optional[str] = None
        self._background: Optional[torch.Tensor] = None
        self._depth_note: Optional[str] = None
        self._depth_report: Optional[dict] = None

    @property
    def model(self):
        """The method's model as trained (3DGS: a ``GaussianModel`` with mask logits)."""
        return self.method.model

    @property
    def backend(self) -> Optional[str]:
        return getattr(self.method, "backend", None)

    # ==========================================================================================
    # setup
    # ==========================================================================================
    def _load_scene(self) -> Scene:
        if self._given_scene is not None:
            return self._given_scene
        if self.config.data is None:
            raise SplatkitError("no dataset given (--data DIR)")
        from splatkit.data import load_scene

        cfg = self.config
        return load_scene(cfg.data, downscale=cfg.downscale, intrinsics_size=cfg.intrinsics_size,
                          center_crop=cfg.center_crop)

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
                base = Path(cfg.output_root) / self._scene_name(scene) / (cfg.run_name or cfg.method)
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
        if self._depth_report is not None:
            write_text_atomic(path / "depth_alignment.json", json.dumps(self._depth_report, indent=2) + "\n")

    def _prepare_views(self, scene: Scene) -> None:
        dev = self.device
        self.scene = scene
        self.train_scene = scene.subset(scene.index_of(self.train_ids))
        self.test_scene = scene.subset(scene.index_of(self.test_ids)) if self.test_ids else None
        if self.config.depth_align == "sfm" and not self.resume:
            self._align_depths()
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

    def _align_depths(self) -> None:
        """``depth_align="sfm"``: relative depth files of the training views made metric by a
        per-view fit to points triangulated with the known cameras (:mod:`splatkit.data.depth_align`)."""
        from splatkit.data.depth_align import align_scene_depths
        from splatkit.data.depth_io import resolve_depth_kind
        from splatkit.data.sfm import triangulate_known_poses

        ts = self.train_scene
        if ts.depths is None:
            raise SplatkitError("depth_align sfm needs depth files beside the images (depth/); this dataset has none")
        kind, _ = resolve_depth_kind(self.config.depth_prior_kind, ts.depth_kind)
        if kind == "metric":
            self._depth_note = "depth files are metric already: not aligned"
            return
        ts.depths = [np.array(d, dtype=np.float32, copy=True) for d in ts.depths]  # the scene's own stay as read
        points = triangulate_known_poses(ts)
        report = align_scene_depths(ts, points, kind)
        self._depth_report = report
        err = report["median_rel_error"]
        self._depth_note = (f"depth ({kind}) aligned to {report['points']} triangulated points in "
                            f"{report['aligned_views']}/{len(ts)} views"
                            + (f", median relative error {err:.1%}" if err is not None else ""))

    def _resolve_background(self) -> None:
        """``background="auto"``: the training images' uniform backdrop, else black; the colour
        goes into the run's config (``background_color``) so resume and evaluation reuse it."""
        cfg = self.config
        if cfg.background != "auto" or cfg.background_color is not None:
            if cfg.prune_backdrop is None:
                cfg.prune_backdrop = False
            return
        from splatkit.data.backdrop import color_name, estimate_backdrop
        from splatkit.methods.plugins import plugin_class

        ts = self.train_scene
        estimate = estimate_backdrop(ts.images, ts.masks)
        two_part = False
        if estimate.color is None and self._dark_backdrop_can_step_aside():
            dark = cfg.plugins.get("dark_backdrop", {})
            rest = estimate_backdrop(ts.images, ts.masks,
                                     exclude=plugin_class("dark_backdrop").backdrop_pixels(ts.images, dark))
            two_part = rest.color is not None and bool(rest.color.any())
        if two_part:
            from splatkit.priors.sparse_views import TWO_PART_SOLID

            estimate = rest
            # A white background behind alpha-0 dark pixels cannot be in the photometric loss. With
            # the table's colour behind the run, a splat of that colour in front of the table is
            # free in the loss: the table joins the alpha penalty, and with dark void and table
            # both known the rest must be opaque (DTU scan 37, 3 views: +0.34 dB over 3 seeds;
            # settings given by hand win).
            cfg.plugins = {**cfg.plugins, "dark_backdrop": {"table": True, "solid_weight": TWO_PART_SOLID,
                                                            **dark, "exclude_from_loss": True}}
        color = estimate.color if estimate.color is not None else np.zeros(3, np.float32)
        cfg.background_color = [float(c) for c in color]
        self._background_note = f"background {color_name(color)}: {estimate.describe()}"
        if two_part:
            self._background_note += (" once dark_backdrop's pixels are left aside (they leave the photometric loss;"
                                      " the table's alpha is penalised, the object's 1 - alpha)")
        if cfg.prune_backdrop is None:
            applies = plugin_class("backdrop_prune").applies_to
            # Not on a two-part backdrop: its dark part is dark_backdrop's, and pruning by the table
            # alone would lean on the object masks (DTU's sparse-view protocol trains without them).
            cfg.prune_backdrop = (estimate.color is not None and not two_part
                                  and (applies is None or cfg.method in applies))
            if cfg.prune_backdrop:
                self._background_note += "; pruning Gaussians that only explain it (backdrop_prune)"

    def _dark_backdrop_can_step_aside(self) -> bool:
        """DTU-like captures have a two-part backdrop: a dark void (the ``dark_backdrop`` plugin's)
        and a uniform table. When the run lists that plugin and has not kept its backdrop in the
        loss on purpose, the table's colour can be the background."""
        cfg = self.config
        return "dark_backdrop" in cfg.regularizers and \
            cfg.plugins.get("dark_backdrop", {}).get("exclude_from_loss", True) is not False

    def _setup(self) -> None:
        cfg = self.config
        scene = self._load_scene()
        self.method = method_class(cfg.method)(cfg, self.device)
        self._choose_run_folder(scene)
        self._prepare_views(scene)
        self._resolve_background()  # before the plugins: it may switch on backdrop_prune
        self.plugins = self.method.default_plugins() + build_plugins(cfg, cfg.method) + self._given_plugins
        names = [p.name for p in self.plugins]
        if len(set(names)) != len(names):
            raise SplatkitError(f"plugin names repeat: {names}")
        for plugin in self.plugins:
            if plugin.needs_masks and self.train_scene.masks is None:
                raise SplatkitError(f"the {plugin.name!r} plugin (--use-masks for 'mask') needs a dataset "
                                    "with masks; this one has none")
            if plugin.needs_depth_maps and self.train_scene.depths is None:
                raise SplatkitError(f"the {plugin.name!r} plugin needs depth maps; this dataset has none")
        self.scene_scale = float(cfg.scene_scale) if cfg.scene_scale else scene_extent(self.train_scene.cameras)

        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        torch.manual_seed(cfg.seed)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.sampler = ViewSampler(len(self.train_scene), cfg.batch_size, self.generator)

        ckpts = self.run.checkpoints() if self.resume else []
        resume_from = ckpts[-1] if ckpts else None
        saved: dict = {}
        if resume_from is not None:
            payload = read_payload(resume_from, self.device)
            saved = payload.get("trainer")
            if not isinstance(saved, dict):
                raise SplatkitError("checkpoint has no training state to resume from", resume_from)
            try:
                self.method.restore(payload, scene_scale=self.scene_scale)
            except SplatkitError as exc:
                raise SplatkitError(exc.message, resume_from) from None
            self._init_desc = f"resumed from {resume_from.name}"
        else:
            if cfg.init in ("mvs", "triangulated"):
                # Matching the views takes seconds to minutes before the first step: say so.
                self._say(f"initial points: {'plane-sweep stereo' if cfg.init == 'mvs' else 'SIFT triangulation'} "
                          f"over {len(self.train_scene)} training views (a few seconds per view on a CPU) ...")
            self._init_desc = self.method.initialize(self.train_scene, scene_scale=self.scene_scale)
            self.step = 0
            self._elapsed_before = 0.0

        self.state = TrainState(config=cfg, scene=self.train_scene, method=self.method, device=self.device,
                                scene_scale=self.scene_scale, train_ids=self.train_ids, test_ids=self.test_ids,
                                resumed=resume_from is not None, step=0, render=self.method.render,
                                say=self._say, run_dir=self.run_path)
        for plugin in self.plugins:
            plugin.setup(self.state)
        self.method.build_optimizers()
        if resume_from is not None:
            self.method.load_training_state(saved)
            plugin_states = saved.get("plugins", saved.get("regularizers", {}))
            for plugin in self.plugins:
                plugin.load_state_dict(plugin_states.get(plugin.name, {}))
            self._restore_rng(saved["rng"])
            self.step = int(payload["step"])
            self._elapsed_before = float(saved.get("elapsed_s", 0.0))
            self._last_checkpoint = resume_from
        self.state.step = self.step
        self.with_depth = any(p.needs_depth for p in self.plugins)
        self._write_run_files()
        self._trim_log()

    def _restore_rng(self, rng: dict) -> None:
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        self.generator.set_state(rng["generator"])
        self.sampler.load_state_dict(rng["sampler"])

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
        if self.config.background == "random":
            return torch.rand(n, 3, generator=self.generator).to(self.device)
        if self._background is None:  # fixed for the run once resolved; not rebuilt every step
            self._background = torch.from_numpy(background_for(self.config)).to(self.device)
        return self._background[None].expand(n, 3).contiguous()

    def _make_batch(self, step: int, positions: list[int], bg: torch.Tensor) -> Batch:
        v = self.views
        images = torch.stack([v.images[p] for p in positions])
        masks = None if v.masks is None else torch.stack([v.masks[p] for p in positions])
        depths = None if v.depths is None else torch.stack([v.depths[p] for p in positions])
        target = images
        if self.config.use_masks and masks is not None:
            # The object only: the background is whatever the model is composited on.
            target = images * masks + bg[:, None, None, :] * (1 - masks)
        return Batch(step=step, positions=positions, view_ids=[self.train_ids[p] for p in positions],
                     images=images, target=target, viewmats=v.viewmats[positions], Ks=v.Ks[positions],
                     width=v.widths[positions[0]], height=v.heights[positions[0]], backgrounds=bg,
                     masks=masks, depths=depths)

    def _train_step(self, step: int) -> dict[str, float]:
        """Iteration ``step`` (0-based, as gsplat's strategies count)."""
        cfg, method, state = self.config, self.method, self.state
        positions = self.sampler.next()
        bg = self._backgrounds(len(positions))
        batch = method.prepare_batch(step, self._make_batch(step, positions, bg))
        for plugin in self.plugins:
            plugin.on_step_start(step, state)
        outputs: RenderOutputs = method.render_train(step, batch, with_depth=self.with_depth,
                                                     param_hooks=[p.render_params for p in self.plugins])
        method.pre_backward(step, outputs)

        weights = None
        for plugin in self.plugins:
            w = plugin.photometric_weights(step, batch)
            if w is not None:
                w = torch.as_tensor(w, dtype=outputs.colors.dtype, device=outputs.colors.device)
                weights = w if weights is None else weights * w
        loss, terms = photometric_loss(outputs.colors, batch.target, cfg.ssim_lambda, weights)
        for plugin in self.plugins:
            out = plugin.loss(step, batch, outputs)
            items = out.items() if isinstance(out, dict) else [(None, out)]
            for key, value in items:
                label = plugin.name if key is None else f"{plugin.name}/{key}"
                terms[label] = value.detach()
                loss = loss + value
        for key, value in method.loss_terms(step, batch, outputs).items():
            terms[key] = value.detach()
            loss = loss + value
        if not bool(torch.isfinite(loss)):
            bad = [k for k, v in terms.items() if not bool(torch.isfinite(v).all())]
            raise _Diverged(f"the loss is {loss.item()} at step {step + 1}"
                            + (f" (non-finite term: {', '.join(bad)})" if bad else ""))
        loss.backward()
        for plugin in self.plugins:
            plugin.after_backward(step, state)

        self._mutating = True
        method.optimizer_step(step, outputs)
        for plugin in self.plugins:
            plugin.on_step_end(step, state)
        self._mutating = False

        with torch.no_grad():
            err = (outputs.colors.detach().clamp(0, 1) - batch.target) ** 2
            if weights is not None and weights.dim() == err.dim():
                # Over the pixels the loss sees: a backdrop left out of it (DTU's void behind a
                # white background) would otherwise read as a 7 dB fit.
                w = weights.expand_as(err)
                mse = (err * w).sum() / w.sum().clamp_min(1e-12)
            else:
                mse = err.mean()
        out = {"loss": float(loss.detach()), "psnr": float(-10 * torch.log10(mse.clamp_min(1e-12)))}
        out.update({k: float(v) for k, v in terms.items()})
        if outputs.sh_degree is not None:
            out["sh_degree"] = outputs.sh_degree
        return out

    def _check_finite(self, step: int) -> None:
        named = dict(self.method.named_tensors())
        for plugin in self.plugins:
            named.update(plugin.named_tensors())
        check_finite(named, step, _Diverged)

    def eval_model(self):
        """The model as evaluation and exports see it."""
        for plugin in self.plugins:
            plugin.on_save(self.state)
        return self.method.eval_model()

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
        for plugin in self.plugins:
            plugin.on_save(self.state)
        path = self.run.checkpoint_dir / runfiles.checkpoint_name(self.step)
        payload = self.method.checkpoint_payload(self.step, self.scene.normalization.to_dict())
        payload["trainer"] = {
            **self.method.training_state(),
            "plugins": {p.name: p.state_dict() for p in self.plugins},
            "rng": rng if rng is not None else self._rng_state(),
            "elapsed_s": self._elapsed(),
            "config": self.config.to_dict(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
        self._last_checkpoint = path
        keep = self.config.keep_checkpoints
        if keep > 0:
            for old in self.run.checkpoints()[:-keep]:
                old.unlink(missing_ok=True)
        return path

    # ==========================================================================================
    # evaluation and previews
    # ==========================================================================================
    def _render_settings(self):
        from splatkit.methods.scoring import settings_for

        return settings_for(self.config, device=str(self.device.type))

    @torch.no_grad()
    def render_view(self, scene: Scene, index: int, model=None) -> np.ndarray:
        """Render view ``index`` of ``scene`` as evaluation does (default model:
        :meth:`eval_model`): float32 [H, W, 3] in [0, 1]."""
        from splatkit.methods.scoring import render_views

        model = self.eval_model() if model is None else model
        (_, rgb, _, _), = render_views(model, scene.cameras[[index]], self._render_settings())
        return rgb

    def write_preview(self, model=None) -> Path:
        """``previews/step_NNNNNN.png``: ground truth | render of the first test (else train) view."""
        from splatkit.data.imageio_utils import write_image
        from splatkit.methods.scoring import eval_target

        scene = self.test_scene if self.test_scene is not None else self.train_scene
        settings = self._render_settings()
        pred = self.render_view(scene, 0, model)
        gt = eval_target(scene, 0, settings.background, self.config.use_masks)
        path = self.run.preview_dir / f"step_{self.step:06d}.png"
        with atomic_path(path) as tmp:
            png = tmp.with_name(tmp.name + ".png")  # the writer picks the format from the suffix
            try:
                write_image(png, np.concatenate([gt, pred], axis=1))
                png.replace(tmp)
            finally:
                png.unlink(missing_ok=True)
        return path

    def evaluate(self, model=None, score: bool = True) -> dict:
        """PSNR/SSIM (and masked variants when the scene has masks) on the test views, through the
        same path as ``splatkit eval`` (:func:`splatkit.methods.scoring.score_views`); with
        ``score=False`` the same summary without scores (``mean`` empty, ``scored`` False)."""
        from splatkit.methods.scoring import mean_metrics, score_views

        ts = self.test_scene
        model = self.eval_model() if model is None else model
        settings = self._render_settings()
        composite = bool(self.config.use_masks and ts is not None and ts.masks is not None)
        rows: list[dict] = []
        if ts is not None and score:
            rows, _ = score_views(model, ts, range(len(ts)), settings, composite_gt=composite)
        per_view = [{k: v for k, v in r.items() if k != "position" and not (k.endswith("lpips") and v is None)}
                    for r in rows]
        return {
            "step": self.step,
            "method": self.config.method,
            "num_primitives": self.method.num_primitives,
            **self.method.summary_stats(model),
            "train_views": self.train_ids,
            "test_views": self.test_ids,
            "scored": bool(score),
            "mean": mean_metrics(rows),
            "per_view": per_view,
            "eval_background": [float(c) for c in settings.background],
            "target": ("ground truth composited on the background outside the mask" if composite
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

    def train(self, score: bool = True) -> Path:
        """Train to ``config.steps`` (continuing the run with ``resume``); returns the run folder.
        ``score=False`` leaves the test views unscored in ``train_summary.json``, for callers that
        run ``splatkit eval``'s :func:`~splatkit.eval.evaluate.evaluate_run` next (benchmarks, the
        demo): a NeRF's 25 DTU test views take minutes to render on a CPU."""
        cfg = self.config
        self._setup()
        self._say(f"run folder: {self.run_path}")
        self._say(f"{len(self.train_ids)} train views ({_fmt_views(self.train_ids)}), {len(self.test_ids)} "
                  f"test views; {self._init_desc}; method {cfg.method}, {self.method.num_primitives} "
                  f"primitives; device {self.device}")
        self._say(f"schedule: {cfg.steps} steps (preset {cfg.preset or 'none'}"
                  + (f", strategy {cfg.strategy}" if cfg.densify else ", no densification") + ")")
        for note in (self._background_note, self._depth_note):
            if note:
                self._say(note)
        self._t0 = time.time()
        self._session_start_step = self.step
        previous_handler = self._install_sigint()
        progress = self._make_progress()
        try:
            with progress:
                task = progress.add_task("training", total=cfg.steps, completed=self.step,
                                         loss=float("nan"), psnr=float("nan"),
                                         count=self.method.num_primitives, rate=0.0)
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
        model = self.eval_model()  # compacted once for the preview and the scores
        self.write_preview(model)
        self.summary = self.evaluate(model, score=score)
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
                       "{task.fields[count]} primitives  {task.fields[rate]:.1f} it/s  ETA"),
            TimeRemainingColumn(), TextColumn("elapsed"), TimeElapsedColumn(),
            console=console, disable=disable, transient=False)

    def _status_every(self) -> int:
        """Plain status lines (no progress bar: a log file, a pipe) about every 5% of the run."""
        return max(self.config.log_every, self.config.steps // 20, 1)

    def _loop(self, progress, task) -> None:
        cfg = self.config
        log = open(self.run.log_path, "a", encoding="utf-8")
        try:
            for s in range(self.step, cfg.steps):
                # What a checkpoint must hold if Ctrl-C lands before this step completes.
                self._snapshot = self._rng_state_copy()
                stats = self._train_step(s)
                self.step = self.state.step = s + 1
                self._snapshot = None
                for cb in self.callbacks:
                    cb(self, self.step)
                self._check_finite(self.step)
                if self._interrupt_requested:
                    raise KeyboardInterrupt
                done = self.step
                for plugin in self.plugins:
                    if plugin.every and done % plugin.every == 0:
                        plugin.every_n(done, self.state)
                rate = (done - self._session_start_step) / max(time.time() - self._t0, 1e-9)
                count = self.method.num_primitives
                progress.update(task, completed=done, loss=stats["loss"], psnr=stats["psnr"], count=count, rate=rate)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    rec = {"step": done, "loss": stats["loss"], "psnr": stats["psnr"], "num_primitives": count,
                           "elapsed_s": round(self._elapsed(), 3)}
                    rec.update(self.method.train_stats())
                    rec.update({k: v for k, v in stats.items() if k not in rec})
                    for plugin in self.plugins:
                        rec.update({f"{plugin.name}/{k}": float(v) for k, v in plugin.log_values(done).items()})
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if progress.disable and (done % self._status_every() == 0 or done == cfg.steps):
                    self._say(f"step {done}/{cfg.steps}  loss {stats['loss']:.4f}  psnr {stats['psnr']:.2f}  "
                              f"{count} primitives  {rate:.1f} it/s  ETA {_fmt_eta((cfg.steps - done) / max(rate, 1e-9))}")
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done != cfg.steps:
                    self.save_checkpoint()
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


def _fmt_eta(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def train(config: TrainConfig, **kwargs) -> Path:
    """Train and return the run folder (see :class:`Trainer` for ``kwargs``)."""
    return Trainer(config, **kwargs).train()
