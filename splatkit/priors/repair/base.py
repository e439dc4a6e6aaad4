"""What every repair model shares: the training pairs a scene generates for it, the interface the
``diffusion_repair`` plugin calls, and the factory that loads a model by name.

GaussianObject (Yang et al., SIGGRAPH Asia 2024) repairs renders of a sparse-view Gaussian model
with a ControlNet fine-tuned per scene on pairs the scene itself generates (leave-one-out renders
and renders of noise-perturbed Gaussians, each against the real photo). Two models implement
:class:`RepairModel` here: that ControlNet path through diffusers (:mod:`.diffusion`, needs weights
from outside) and a compact network of ours pretrained on procedural scenes (:mod:`.unet`). Pairs,
view sampling and the loss are the same for both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional, Sequence

import torch

from splatkit.errors import SplatkitError

PAIR_KINDS = ("loo", "noise", "identity")
# progress(done, total, loss): called now and then by long steps (fine-tuning, pair generation).
Progress = Optional[Callable[[int, int, float], None]]


@dataclass
class RepairPairs:
    """Training pairs for a repair model: corrupted renders and the photos they should become."""

    inputs: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]: a corrupted render
    targets: torch.Tensor  # [N, H, W, 3] float32 in [0, 1]: the real photo of that camera
    kinds: list[str] = field(default_factory=list)  # per pair, one of PAIR_KINDS
    view_ids: list[int] = field(default_factory=list)  # per pair: the training view it shows

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        if self.inputs.shape != self.targets.shape or self.inputs.ndim != 4 or self.inputs.shape[-1] != 3:
            raise SplatkitError(f"repair pairs: inputs {tuple(self.inputs.shape)} and targets "
                                f"{tuple(self.targets.shape)} must both be [N, H, W, 3]")
        if not self.kinds:
            self.kinds = ["noise"] * n
        if not self.view_ids:
            self.view_ids = [-1] * n
        if len(self.kinds) != n or len(self.view_ids) != n:
            raise SplatkitError(f"repair pairs: {n} images but {len(self.kinds)} kinds and {len(self.view_ids)} view ids")
        bad = sorted(set(self.kinds) - set(PAIR_KINDS))
        if bad:
            raise SplatkitError(f"repair pairs: unknown kind(s) {bad}; known: {', '.join(PAIR_KINDS)}")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def subset(self, index: Sequence[int]) -> "RepairPairs":
        idx = [int(i) for i in index]
        return RepairPairs(self.inputs[idx], self.targets[idx], [self.kinds[i] for i in idx],
                           [self.view_ids[i] for i in idx])

    @staticmethod
    def cat(parts: Sequence["RepairPairs"]) -> "RepairPairs":
        parts = [p for p in parts if len(p)]
        if not parts:
            raise SplatkitError("repair pairs: nothing to concatenate")
        return RepairPairs(torch.cat([p.inputs for p in parts]), torch.cat([p.targets for p in parts]),
                           [k for p in parts for k in p.kinds], [v for p in parts for v in p.view_ids])

    def counts(self) -> dict[str, int]:
        return {k: self.kinds.count(k) for k in PAIR_KINDS if k in self.kinds}


class RepairModel:
    """A repair model: a corrupted render in, the repaired image out.

    Subclasses set :attr:`name` and implement :meth:`fine_tune`, :meth:`repair`,
    :meth:`state_dict` and :meth:`load_state_dict` (only what fine-tuning changed, so a
    checkpoint stays small and ``--resume`` restores the fine-tuned model without redoing it).
    """

    name: ClassVar[str] = ""
    # Whether ``repair`` uses ``strength`` (img2img denoising strength); a one-step network
    # that ignores it says so here, and the plugin's log states it.
    uses_strength: ClassVar[bool] = True

    def fine_tune(self, pairs: RepairPairs, *, steps: int, seed: int, progress: Progress = None) -> dict[str, float]:
        """Per-scene fine-tune on ``pairs`` (GaussianObject: LoRA). Returns a few statistics
        (``loss_first``, ``loss_last``, ``seconds``)."""
        raise NotImplementedError

    def repair(self, images: torch.Tensor, *, strength: float, generator: torch.Generator) -> torch.Tensor:
        """``[B, H, W, 3]`` in [0, 1] -> repaired ``[B, H, W, 3]`` in [0, 1], same size; no gradients."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def load_repair_model(spec: str, *, device: torch.device | str = "cpu", **options) -> RepairModel:
    """A repair model by name: ``"ours"`` (the compact network with the weights that ship with
    splatkit), ``"ours:PATH"`` (weights written by ``scripts/pretrain_repair.py``) or
    ``"controlnet"`` (a ControlNet on a Stable Diffusion 1.5-class model through diffusers; the
    options name both, local folders or Hugging Face repo ids found in the cache, never
    downloaded). Missing weights raise a one-line :class:`SplatkitError` saying how to get them."""
    spec = str(spec).strip()
    if spec == "ours" or spec.startswith("ours:"):
        from splatkit.priors.repair.unet import UNetRepairModel

        path = spec[len("ours:"):] or None if spec.startswith("ours:") else None
        return UNetRepairModel.load(path, device=device, **options)
    if spec == "controlnet":
        from splatkit.priors.repair.diffusion import ControlNetRepairModel

        return ControlNetRepairModel.load(device=device, **options)
    raise SplatkitError(f"unknown repair model {spec!r}; use 'ours', 'ours:PATH' or 'controlnet'")
