"""The interfaces the training loop is written against: a **method** (what is trained and how it
renders), a **strategy** (how a method's primitives are added, moved and removed) and a **plugin**
(a prior or regulariser that adds losses, changes what a step renders, or acts every N steps).

The loop (:mod:`splatkit.train.trainer`) owns steps, view batches, the photometric loss,
logging, checkpoints, exact resume, the NaN guard and Ctrl-C. It never names a representation:
everything about Gaussians (or, later, a hash-grid NeRF) sits behind :class:`Method`.
See ``docs/architecture.md`` for a worked example of each extension point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Optional, Sequence, Union

import torch

from splatkit.errors import SplatkitError

LossTerms = Union[torch.Tensor, dict[str, torch.Tensor]]
ParamHook = Callable[[int, dict], dict]


@dataclass
class Batch:
    """The views of one optimisation step. Image tensors are ``[B, H, W, C]`` on the device."""

    step: int
    positions: list[int]  # indices into the training views
    view_ids: list[int]  # original ids (Scene.ids)
    images: torch.Tensor  # ground truth as loaded, [B, H, W, 3]
    target: torch.Tensor  # what the photometric loss compares against (masked GT composited on the background)
    viewmats: torch.Tensor  # [B, 4, 4] world-to-camera, OpenCV axes
    Ks: torch.Tensor  # [B, 3, 3]
    width: int
    height: int
    backgrounds: torch.Tensor  # [B, 3]
    masks: Optional[torch.Tensor] = None  # [B, H, W, 1] in [0, 1], 1 = object
    depths: Optional[torch.Tensor] = None  # [B, H, W, 1], 0 = unknown
    # A batch of pixel rays instead of whole images (a NeRF step, Method.prepare_batch): the rays'
    # (view in the batch, row, column) [N, 3]; images, target, masks and depths are then
    # [1, 1, N, C] and backgrounds [N, 3], one per ray.
    pixels: Optional[torch.Tensor] = None


@dataclass
class RenderOutputs:
    """What a method rendered for a batch of cameras."""

    colors: torch.Tensor  # [B, H, W, 3], composited on the batch backgrounds
    alphas: torch.Tensor  # [B, H, W, 1]
    meta: dict  # method-specific (3DGS: the rasteriser's meta, which strategies read)
    sh_degree: Optional[int] = None  # the SH degree a 3DGS step rendered with
    depths: Optional[torch.Tensor] = None  # [B, H, W, 1] expected depth, when asked for
    extras: dict = field(default_factory=dict)


# -- method ---------------------------------------------------------------------------------------
class Method:
    """A trainable representation. Subclass, set :attr:`name` and :attr:`checkpoint_format`,
    implement the methods below and register with :func:`splatkit.methods.register_method`.

    Life cycle, driven by the loop: ``initialize(scene)`` (new run) or ``restore(payload)``
    (resume) -> every plugin's ``setup`` (plugins may add parameters) -> ``build_optimizers()`` ->
    ``load_training_state(state)`` (resume) -> per step ``render_train`` / ``pre_backward`` /
    ``loss_terms`` / backward / ``optimizer_step``. ``checkpoint_payload`` and
    ``training_state`` are what a checkpoint holds; :meth:`load_model` rebuilds from such a
    payload the model that ``eval``, ``render`` and ``export`` use.
    """

    name: ClassVar[str] = ""
    checkpoint_format: ClassVar[str] = ""  # payload["splatkit"]["format"]
    checkpoint_version: ClassVar[int] = 1
    model: Any = None  # what the method trains (3DGS: a GaussianModel)

    def __init__(self, config, device: torch.device):
        self.config = config
        self.device = device
        # Optimisers the loop steps: ``optimizers`` hold one parameter group each (what gsplat's
        # strategies edit); plugins add their own to ``aux_optimizers``.
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.aux_optimizers: dict[str, torch.optim.Optimizer] = {}

    # set-up
    def initialize(self, scene, *, scene_scale: float) -> str:
        """Build a new model from the training scene; returns one line on how."""
        raise NotImplementedError

    def restore(self, payload: dict) -> None:
        """Take the model from a checkpoint payload (for resuming)."""
        raise NotImplementedError

    def build_optimizers(self) -> None:
        raise NotImplementedError

    def load_training_state(self, state: dict) -> None:
        """Optimiser and strategy state from :meth:`training_state`."""

    # The preset a run of this method without --preset/--load-config gets, per device type
    # ("cpu", "cuda"); None: the package's auto presets (3DGS's).
    auto_presets: ClassVar[Optional[dict[str, str]]] = None

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse config values this method cannot train with (a one-line SplatkitError)."""

    def prepare_batch(self, step: int, batch: Batch) -> Batch:
        """What the step trains on, from the loop's batch of whole views (a NeRF samples pixel
        rays here, see :attr:`Batch.pixels`); the photometric loss and plugins see the result."""
        return batch

    def default_plugins(self) -> list["Plugin"]:
        """Plugins the method itself needs for this config (they run before the config's own)."""
        return []

    # training
    def render_train(self, step: int, batch: Batch, *, with_depth: bool,
                     param_hooks: Sequence[ParamHook] = ()) -> RenderOutputs:
        raise NotImplementedError

    def render(self, viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
               backgrounds: torch.Tensor, *, with_depth: bool = True, step: Optional[int] = None) -> RenderOutputs:
        """Render the model being trained into any cameras, with gradients (plugins' pseudo views)."""
        raise NotImplementedError

    def pre_backward(self, step: int, outputs: RenderOutputs) -> None:
        """Before ``loss.backward()`` (gsplat strategies retain gradients here)."""

    def loss_terms(self, step: int, batch: Batch, outputs: RenderOutputs) -> dict[str, torch.Tensor]:
        """Method-owned loss terms (a strategy's regularisers), weighted, added to the loss."""
        return {}

    def optimizer_step(self, step: int, outputs: RenderOutputs) -> None:
        """LR schedules, every optimiser's step, then the strategy's post-backward work."""
        raise NotImplementedError

    def train_stats(self) -> dict[str, float]:
        """Extra numbers for the training log (e.g. the current position LR)."""
        return {}

    def summary_stats(self, eval_model) -> dict[str, Any]:
        """Extra numbers for the run's summary (e.g. the evaluated model's Gaussian count)."""
        return {}

    @property
    def num_primitives(self) -> int:
        raise NotImplementedError

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Every trained tensor, for the NaN guard."""
        raise NotImplementedError

    # checkpoints and evaluation
    def checkpoint_payload(self, step: int, normalization: Optional[dict]) -> dict:
        """The model part of a checkpoint: ``{"step", "splatkit": {"format", "version", "method",
        ...}, ...}``; :meth:`load_model` reads it back."""
        raise NotImplementedError

    def training_state(self) -> dict:
        return {}

    def eval_model(self):
        """The model evaluation and exports see (rendering with :meth:`render`)."""
        raise NotImplementedError

    @classmethod
    def load_model(cls, payload: dict, map_location="cpu", raw: bool = False):
        """The model in a checkpoint payload; ``raw``: as trained (for resuming)."""
        raise NotImplementedError

    # helpers for subclasses
    def metadata(self, normalization: Optional[dict], **extra) -> dict:
        return {"format": self.checkpoint_format, "version": self.checkpoint_version, "method": self.name,
                "normalization": normalization, **extra}


def check_finite(named: dict[str, torch.Tensor], step: int, error=SplatkitError) -> None:
    for name, p in named.items():
        # A sum is non-finite when any element is (and ~25x cheaper than isfinite().all() at 100k
        # Gaussians); a false alarm needs values summing past 3e38, which training never reaches.
        if not bool(torch.isfinite(p.detach().sum())):
            raise error(f"parameter {name!r} became non-finite at step {step}")


# -- plugin ---------------------------------------------------------------------------------------
@dataclass
class TrainState:
    """What a plugin sees: set once before the first step, then read at every hook."""

    config: Any  # TrainConfig
    scene: Any  # the training views only (splatkit.data.Scene)
    method: Method
    device: torch.device
    scene_scale: float
    train_ids: list[int]
    test_ids: list[int]
    resumed: bool = False
    step: int = 0  # completed steps
    # render(viewmats [C,4,4], Ks [C,3,3], width, height, backgrounds [C,3]) -> RenderOutputs with
    # depth, with the model as evaluation sees it: for priors that render extra cameras.
    render: Optional[Callable[..., RenderOutputs]] = None
    cache: dict = field(default_factory=dict)  # data several plugins share (depth priors)
    # A line for the user (the trainer's status output; silent in quiet runs), and the run folder
    # for what a plugin writes there (pictures of its pseudo views); None outside a Trainer.
    say: Optional[Callable[[str], None]] = None
    run_dir: Optional[Any] = None

    @property
    def model(self):
        return self.method.model


class Plugin:
    """A prior or regulariser. Subclass, set ``name``, override the hooks you need, and register
    with :func:`splatkit.methods.plugins.register_plugin`. Its settings are a dataclass ``Config``
    (a nested config section: ``plugins: {NAME: {...}}`` in JSON, ``--plugin.NAME.KEY VALUE``
    on the command line; numbers declared with :func:`splatkit.methods.plugins.in_range` are
    range-checked); the instance gets it as ``self.settings``.

    Hooks, per step, in the loop's order: :meth:`on_step_start`, :meth:`render_params` (changes
    what the step renders), :meth:`photometric_weights` (weighs or masks the photometric loss),
    :meth:`loss`, backward, :meth:`after_backward`, the optimisers and
    strategy, :meth:`on_step_end`, :meth:`every_n` every :attr:`every` steps, and
    :meth:`log_values` at logging steps. State kept
    across steps goes through :meth:`state_dict` into every checkpoint so ``--resume`` restores it.
    """

    name: ClassVar[str] = ""
    needs_depth: ClassVar[bool] = False  # the step renders expected depth into outputs.depths
    needs_masks: ClassVar[bool] = False  # refuse datasets without masks
    needs_depth_maps: ClassVar[bool] = False  # ... or without depth maps
    needs_depth_prior: ClassVar[bool] = False  # left out, with a warning, when no depth prior is given
    applies_to: ClassVar[Optional[tuple[str, ...]]] = None  # method names; None: any method
    # Old flat TrainConfig keys that now set one of this plugin's settings: {old_key: setting}.
    legacy_keys: ClassVar[dict[str, str]] = {}
    every: ClassVar[int] = 0  # call every_n every this many steps (0: never)

    @dataclass
    class Config:
        pass

    def __init__(self, config, settings=None) -> None:
        self.config = config  # the whole TrainConfig
        self.settings = settings if settings is not None else type(self).Config()

    def setup(self, state: TrainState) -> None:
        """Once before the first step, also after a resume (``state.resumed``)."""

    def on_step_start(self, step: int, state: TrainState) -> None:
        pass

    def render_params(self, step: int, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Change what a training step renders (the method's render parameters; 3DGS: means,
        quats, scales, opacities, colors, activated); return a new dict, never edit in place."""
        return params

    def photometric_weights(self, step: int, batch: Batch) -> Optional[Union[float, torch.Tensor]]:
        """Weights on the step's photometric loss: None (the default) leaves it alone; a number
        scales it; a ``[B, H, W, 1]`` tensor weighs each pixel (0 leaves a pixel out). Several
        plugins' weights multiply."""
        return None

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs) -> LossTerms:
        """Weighted loss term(s) for 0-based ``step``; a dict is logged per key."""
        return {}

    def log_values(self, step: int) -> dict[str, float]:
        """Numbers to write into the training log at a logging step (``step`` steps done), never
        added to the loss: what the plugin is doing (counts, fractions, a second field's size).
        Logged as ``NAME/KEY``, as a dict of loss terms is."""
        return {}

    def after_backward(self, step: int, state: TrainState) -> None:
        """Gradients exist; the optimisers have not stepped yet."""

    def on_step_end(self, step: int, state: TrainState) -> None:
        """After the optimisers and the strategy (pruning, pseudo-view bookkeeping)."""

    def every_n(self, step: int, state: TrainState) -> None:
        """Every :attr:`every` completed steps (regenerate pseudo views, ...)."""

    def on_save(self, state: TrainState) -> None:
        """Before a checkpoint or an evaluation: write what the plugin owns into the model."""

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """Trained tensors the plugin owns, for the NaN guard."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise SplatkitError(f"plugin {self.name!r} keeps no state but the checkpoint has some")


def lr_scaled_adam(params, lr: float, batch_size: int, name: Optional[str] = None) -> torch.optim.Optimizer:
    """Adam with gsplat simple_trainer's batch scaling: lr x sqrt(B), eps / sqrt(B), betas^B-ish.
    eps 1e-15 is 3DGS's, and Compact-3DGS' for its colour field. ``foreach``: the multi-tensor
    kernel, bit-identical to the default one and faster on a CPU. Not ``fused``, faster still
    (``scripts/profile_step.py --what-if fused-adam``) but rounding differently: over a run with
    densification that changes the result for the same seed, and results must reproduce."""
    group = {"params": params, "lr": lr * math.sqrt(batch_size)}
    if name is not None:
        group["name"] = name
    return torch.optim.Adam([group], eps=1e-15 / math.sqrt(batch_size),
                            betas=(1 - batch_size * (1 - 0.9), 1 - batch_size * (1 - 0.999)),
                            foreach=True)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """``optimizer.load_state_dict`` that keeps the optimiser's own kernel choice (``foreach``,
    ``fused``) when the saved state came from an optimiser built otherwise (older checkpoints)."""
    kernels = [{k: g.get(k) for k in ("foreach", "fused")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kernel in zip(optimizer.param_groups, kernels):
        group.update(kernel)


def payload_normalization(payload: dict):
    """The scene :class:`~splatkit.data.scene.Normalization` a checkpoint's model lives in."""
    from splatkit.data.scene import Normalization

    norm = (payload.get("splatkit") or {}).get("normalization")
    return Normalization() if norm is None else Normalization.from_dict(norm)


def to_cpu(obj):
    """Tensors (in nested dicts) detached and copied to the CPU, for checkpoints."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return obj


def to_device(obj, device):
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: to_device(v, device) for k, v in obj.items()}
    return obj
