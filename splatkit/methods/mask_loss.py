"""The ``mask`` plugin: rendered alpha should match the object mask (``--use-masks``). Works for
any method that renders alpha."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, LossTerms, Plugin, RenderOutputs
from splatkit.methods.plugins import in_range, register_plugin


@register_plugin
class MaskLoss(Plugin):
    """Transparent outside the mask, opaque inside: ``bce`` (binary cross-entropy, soft masks
    allowed) or ``l1`` (mean absolute difference), times ``weight``."""

    name = "mask"
    needs_masks = True
    legacy_keys = {"mask_weight": "weight", "mask_loss": "kind"}

    @dataclass
    class Config:
        weight: float = in_range(0.1)
        kind: Literal["bce", "l1"] = "bce"

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs) -> LossTerms:
        if batch.masks is None:  # the loop refuses datasets without masks; guard against misuse
            raise SplatkitError("mask plugin called without masks")
        alpha = outputs.alphas
        if self.settings.kind == "bce":
            # Clamp as BCE is infinite at exactly 0/1 alpha, which the rasteriser can produce.
            a = alpha.clamp(1e-6, 1.0 - 1e-6)
            term = torch.nn.functional.binary_cross_entropy(a, batch.masks)
        else:
            term = (alpha - batch.masks).abs().mean()
        return self.settings.weight * term
