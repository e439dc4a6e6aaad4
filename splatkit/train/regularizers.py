"""The one interface through which priors and regularisers plug into the trainer.

A regulariser is a small object with a registered ``name``. The trainer builds the ones the
config names (``TrainConfig.regularizers``, plus ``mask`` when ``use_masks`` is set), calls
:meth:`Regularizer.setup` once with a :class:`TrainContext`, and each step calls
:meth:`Regularizer.loss` with the step's :class:`Batch` and the renderer's
:class:`RenderOutputs`. The returned tensor (or each tensor of a returned dict) is added to the
photometric loss as is, so a regulariser applies its own weight. A regulariser may also change
what a training step renders (:meth:`Regularizer.render_params`: dropout, learnable masks). Regularisers that keep state
across steps (schedules, learned parameters) return it from :meth:`state_dict`; it goes into every
checkpoint so ``--resume`` restores it.

Adding one::

    @register_regularizer
    class DepthRanking(Regularizer):
        name = "depth_ranking"
        needs_depth = True            # ask the trainer to render expected depth
        def __init__(self, config): self.weight = ...
        def loss(self, step, batch, outputs): ...

Modules that define regularisers outside this file are imported by :func:`build_regularizers`
(``splatkit.priors``) so that their ``@register_regularizer`` runs.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Union

import torch

from splatkit.errors import SplatkitError

LossTerms = Union[torch.Tensor, dict[str, torch.Tensor]]

# Imported on demand so that regularisers defined there register themselves.
PLUGIN_MODULES = ("splatkit.priors",)


@dataclass
class TrainContext:
    """What a regulariser may look at once, before training starts."""

    config: Any  # TrainConfig
    scene: Any  # the training views only (splatkit.data.Scene)
    model: Any  # GaussianModel
    device: torch.device
    scene_scale: float
    train_ids: list[int]
    test_ids: list[int]


@dataclass
class Batch:
    """The views of one optimisation step. Image tensors are ``[B, H, W, C]`` on the device."""

    step: int
    positions: list[int]  # indices into the training views
    view_ids: list[int]  # original ids (Scene.ids)
    images: torch.Tensor  # ground truth as loaded, [B, H, W, 3]
    target: torch.Tensor  # what the photometric loss compares against (masked GT composited on the background)
    viewmats: torch.Tensor  # [B, 4, 4]
    Ks: torch.Tensor  # [B, 3, 3]
    width: int
    height: int
    backgrounds: torch.Tensor  # [B, 3]
    masks: Optional[torch.Tensor] = None  # [B, H, W, 1] in [0, 1], 1 = object
    depths: Optional[torch.Tensor] = None  # [B, H, W, 1], 0 = unknown


@dataclass
class RenderOutputs:
    """What the rasteriser returned for the batch."""

    colors: torch.Tensor  # [B, H, W, 3], composited on the batch backgrounds
    alphas: torch.Tensor  # [B, H, W, 1]
    meta: dict
    sh_degree: int
    depths: Optional[torch.Tensor] = None  # [B, H, W, 1] expected depth, when a regulariser asked
    extras: dict = field(default_factory=dict)


class Regularizer:
    """Base class: subclass, set ``name``, implement :meth:`loss`, decorate with
    :func:`register_regularizer`."""

    name: ClassVar[str] = ""
    needs_depth: ClassVar[bool] = False  # render expected depth into RenderOutputs.depths
    needs_masks: ClassVar[bool] = False  # the trainer refuses datasets without masks
    needs_depth_maps: ClassVar[bool] = False  # ... or without depth maps

    def __init__(self, config) -> None:
        self.config = config

    def setup(self, context: TrainContext) -> None:
        """Called once before the first step (after a resume too)."""

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs) -> LossTerms:
        """Weighted loss term(s) for iteration ``step`` (0-based, as gsplat's strategies count;
        logs and checkpoints count completed steps, ``step + 1``). A dict is logged per key."""
        raise NotImplementedError

    def render_params(self, step: int, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Change what a training step renders (``GaussianModel.activated()`` names: means, quats,
        scales, opacities, colors); return a new dict, never edit the tensors in place. Evaluation
        renders are not affected. Default: unchanged."""
        return params

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise SplatkitError(f"regulariser {self.name!r} keeps no state but the checkpoint has some")


_REGISTRY: dict[str, type[Regularizer]] = {}


def register_regularizer(cls: type[Regularizer]) -> type[Regularizer]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise TypeError(f"regulariser name {cls.name!r} is already taken by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _import_plugins() -> None:
    for mod in PLUGIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            if exc.name != mod:  # the package exists but something it imports is missing: a real bug
                raise


def available_regularizers() -> list[str]:
    _import_plugins()
    return sorted(_REGISTRY)


DEPTH_PRIOR_LOSSES = ("depth_ranking", "depth_continuity", "depth_pearson", "depth_patch")


def regularizer_names(config) -> list[str]:
    """The names the config asks for, ``mask`` first when ``use_masks`` is set.

    Presets choose the losses and ``depth_prior`` the data they use. Depth losses without a depth
    prior are left out with a warning (so a sparse preset still trains where no prior exists), and
    a prior that no loss uses is reported too."""
    names = list(dict.fromkeys((["mask"] if config.use_masks else []) + list(config.regularizers)))
    depth = [n for n in names if n in DEPTH_PRIOR_LOSSES]
    prior = getattr(config, "depth_prior", "none")
    if depth and prior == "none":
        warnings.warn(f"no depth prior given, so the depth losses {', '.join(depth)} are off; pass "
                      "--depth-prior files (depth/ beside the images) or a depth model", stacklevel=2)
        names = [n for n in names if n not in DEPTH_PRIOR_LOSSES]
    elif prior != "none" and not depth:
        warnings.warn(f"depth prior {prior!r} is not used: no depth loss is enabled (--regularizers "
                      "depth_ranking,depth_continuity, or --preset sparse)", stacklevel=2)
    return names


def build_regularizers(config) -> list[Regularizer]:
    _import_plugins()
    out = []
    for name in regularizer_names(config):
        if name not in _REGISTRY:
            raise SplatkitError(f"unknown regulariser {name!r}; known: {', '.join(sorted(_REGISTRY)) or 'none'}")
        out.append(_REGISTRY[name](config))
    return out


# -- mask / alpha supervision -------------------------------------------------------------------
@register_regularizer
class MaskRegularizer(Regularizer):
    """Rendered alpha should match the object mask: transparent outside, opaque inside.

    ``bce``: binary cross-entropy (soft masks allowed), ``l1``: mean absolute difference;
    weighted by ``config.mask_weight``.
    """

    name = "mask"
    needs_masks = True

    def __init__(self, config) -> None:
        super().__init__(config)
        self.weight = float(config.mask_weight)
        self.kind = config.mask_loss

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs) -> LossTerms:
        if batch.masks is None:  # setup() guarantees masks; guard against misuse of the API
            raise SplatkitError("mask regulariser called without masks")
        alpha = outputs.alphas
        if self.kind == "bce":
            # Clamp as BCE is infinite at exactly 0/1 alpha, which the rasteriser can produce.
            a = alpha.clamp(1e-6, 1.0 - 1e-6)
            term = torch.nn.functional.binary_cross_entropy(a, batch.masks)
        else:
            term = (alpha - batch.masks).abs().mean()
        return self.weight * term
