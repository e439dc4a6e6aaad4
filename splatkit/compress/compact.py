"""Compact splats during training: learnable masks, R-VQ of Gaussian attributes and the hash-grid
colour field's bookkeeping, after Compact-3DGS (Lee et al., "Compact 3D Gaussian Representation
for Radiance Field", CVPR 2024; constants from the authors' code, github.com/maincold2/Compact-3DGS,
``arguments/__init__.py``, ``scene/gaussian_model.py``, ``gaussian_renderer/__init__.py``).

* Masks: one logit ``m`` per Gaussian; renders use the hard mask ``sigmoid(m) > 0.01`` with the
  sigmoid's gradient (straight-through) on scale and opacity; the loss adds
  ``lambda_mask * mean(sigmoid(m))``; Gaussians whose mask is off are pruned.
* R-VQ: ``S`` stages of ``K``-entry codebooks (:class:`AttributeQuantizer`, built on
  ``vector_quantize_pytorch.ResidualVQ``) replace an attribute in the renders of the last part of
  training; the geometry keeps training through a straight-through estimator. Once trained, the
  model stores each attribute as codebooks + per-Gaussian indices (:func:`rvq_encode`).
The colour field itself, its JSON round trip and LR schedule live in
:mod:`splatkit.models.color_field`. Nothing here imports the models layer.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from splatkit.errors import SplatkitError

# Compact-3DGS: the mask is on while sigmoid(m) > 0.01; masks start at m = 1 (torch.ones) and
# cost lambda_mask = 5e-4 x their mean (their lr, 0.01, is TrainConfig.mask_lr's default).
MASK_THRESHOLD = 0.01
MASK_INIT_LOGIT = 1.0
MASK_LAMBDA = 5e-4
# Compact-3DGS: 6 residual stages of 64 entries; k-means initialisation with 1 iteration.
RVQ_STAGES = 6
RVQ_CODEBOOK_SIZE = 64
RVQ_KMEANS_ITERS = 1
# Attributes R-VQ can code (see rvq_input for the vector each Gaussian contributes).
RVQ_ATTRIBUTES = ("scales", "quats", "shN")


# -- masks ------------------------------------------------------------------------------------------
class _HardMask(torch.autograd.Function):
    """Forward ``sigmoid(m) > threshold`` as 0/1, backward ``d sigmoid(m) / dm``."""

    @staticmethod
    def forward(ctx, logits: Tensor, threshold: float) -> Tensor:
        soft = torch.sigmoid(logits)
        ctx.save_for_backward(soft)
        return (soft > threshold).to(logits.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (soft,) = ctx.saved_tensors
        return grad * soft * (1.0 - soft), None


def straight_through_mask(logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """The hard mask (1 where ``sigmoid(logits) > threshold``) with the sigmoid's gradient."""
    return _HardMask.apply(logits, float(threshold))


def mask_loss(logits: Tensor, weight: float = MASK_LAMBDA) -> Tensor:
    """``weight * mean(sigmoid(logits))``: pushes masks off unless the renders need them."""
    return weight * torch.sigmoid(logits).mean()


def masked_out(logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Boolean [N]: Gaussians whose mask is off (what pruning removes)."""
    return torch.sigmoid(logits.detach()) <= threshold


def prune_selection(logits: Tensor, threshold: float, floor: int) -> tuple[Tensor, bool]:
    """Which Gaussians to remove: those masked out, unless fewer than ``floor`` would remain, in
    which case the ``floor`` Gaussians with the largest masks stay. Returns ``(remove, floored)``."""
    remove = masked_out(logits, threshold)
    n = logits.shape[0]
    keep_at_least = min(int(floor), n)
    if n - int(remove.sum()) >= keep_at_least:
        return remove, False
    keep = torch.topk(logits.detach(), keep_at_least).indices
    remove = torch.ones(n, dtype=torch.bool, device=logits.device)
    remove[keep] = False
    return remove, True


# -- residual vector quantisation --------------------------------------------------------------------
def rvq_input(name: str, values: Tensor) -> Tensor:
    """[N, D] vectors R-VQ codes for a stored attribute: log-scales as stored, unit quaternions
    (a quaternion's norm is irrelevant to the render), SH rest bands flattened. Compact-3DGS codes
    the activated scales; log-scales are what ``.skz`` stores, and their error is relative."""
    if name == "scales":
        return values
    if name == "quats":
        return torch.nn.functional.normalize(values, dim=-1)
    if name == "shN":
        return values.reshape(values.shape[0], -1)
    raise SplatkitError(f"R-VQ cannot code {name!r} (codable: {', '.join(RVQ_ATTRIBUTES)})")


@torch.no_grad()
def rvq_encode(x: Tensor, codebooks: Tensor, chunk: int = 65536) -> Tensor:
    """Greedy residual nearest-neighbour codes ``[N, S]`` (int64) of ``x [N, D]`` with
    ``codebooks [S, K, D]``: what ``ResidualVQ`` assigns in eval mode."""
    if codebooks.dim() != 3 or x.dim() != 2 or x.shape[1] != codebooks.shape[2]:
        raise SplatkitError(f"R-VQ of {list(x.shape)} vectors needs codebooks [S, K, {x.shape[-1]}], "
                            f"got {list(codebooks.shape)}")
    cb = codebooks.to(x.device, x.dtype)
    out = torch.empty(x.shape[0], cb.shape[0], dtype=torch.long, device=x.device)
    for s in range(0, x.shape[0], chunk):
        residual = x[s:s + chunk]
        for stage in range(cb.shape[0]):
            idx = torch.cdist(residual, cb[stage]).argmin(dim=1)
            out[s:s + chunk, stage] = idx
            residual = residual - cb[stage][idx]
    return out


def rvq_decode(codebooks: Tensor, indices: Tensor) -> Tensor:
    """``sum_s codebooks[s, indices[:, s]]`` as [N, D]."""
    cb = codebooks.to(indices.device)
    return sum(cb[s][indices[:, s]] for s in range(cb.shape[0]))


class AttributeQuantizer(torch.nn.Module):
    """R-VQ of one attribute during training: ``ResidualVQ`` from ``vector-quantize-pytorch``
    with Compact-3DGS' shape (6 x 64, k-means init with 1 iteration, no commitment loss).

    The codebooks are parameters trained by the render loss (an optimiser over
    :meth:`parameters`; the authors' code instead updates them by EMA k-means, decay 0.8); the
    input gets the identity gradient (straight-through), so geometry keeps training. ``ResidualVQ``'s own straight-through sums one identity per stage (the input
    gradient would be ``S`` times too large), so it is given the detached input and the
    straight-through term is added here instead.
    """

    def __init__(self, dim: int, stages: int = RVQ_STAGES, codebook_size: int = RVQ_CODEBOOK_SIZE,
                 kmeans_iters: int = RVQ_KMEANS_ITERS):
        super().__init__()
        from vector_quantize_pytorch import ResidualVQ

        self.dim, self.stages, self.codebook_size = int(dim), int(stages), int(codebook_size)
        self.rvq = ResidualVQ(dim=self.dim, num_quantizers=self.stages, codebook_size=self.codebook_size,
                              commitment_weight=0.0, kmeans_init=True, kmeans_iters=int(kmeans_iters),
                              ema_update=False, learnable_codebook=True, rotation_trick=False,
                              threshold_ema_dead_code=0)

    @property
    def initialized(self) -> bool:
        return all(bool(layer._codebook.initted) for layer in self.rvq.layers)

    @property
    def codebooks(self) -> Tensor:
        """[S, K, D]."""
        return self.rvq.codebooks

    def forward(self, x: Tensor) -> Tensor:
        """Quantised ``x [N, D]``: codebook values forward, identity gradient to ``x``, the
        render loss's gradient to the codebook entries used."""
        quantized, _, _ = self.rvq(x.detach()[None])
        return quantized[0] + (x - x.detach())


def make_quantizers(names, shapes: dict[str, tuple], stages: int, codebook_size: int,
                    kmeans_iters: int = RVQ_KMEANS_ITERS) -> dict[str, AttributeQuantizer]:
    """One :class:`AttributeQuantizer` per attribute name (``shapes``: the attribute's per-Gaussian shape)."""
    out = {}
    for name in names:
        if name not in RVQ_ATTRIBUTES:
            raise SplatkitError(f"R-VQ cannot code {name!r} (codable: {', '.join(RVQ_ATTRIBUTES)})")
        out[name] = AttributeQuantizer(math.prod(shapes[name]), stages, codebook_size, kmeans_iters)
    return out
