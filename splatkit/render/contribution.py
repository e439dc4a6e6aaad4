"""How much each Gaussian contributes to chosen pixels: sums of its blending weights.

The blending weight of Gaussian ``i`` at a pixel is ``w_i = alpha_i * T_i`` (its opacity there
times the transmittance in front of it), the factor its colour enters the pixel with. Summed over
pixels it is the importance score of LightGaussian (Fan et al., NeurIPS 2024) and Compressed 3DGS
(Niedermayr et al., CVPR 2024); summed over background and object pixels separately it tells
which Gaussians only explain the backdrop.

Rather than a dedicated kernel (which every backend would need), the sums come from one backward
pass: render ``D`` constant feature channels (all ones); the gradient of ``sum(render[..., d] *
pixel_weights[..., d])`` with respect to Gaussian ``i``'s feature ``d`` is exactly
``sum_pixels pixel_weights[..., d] * w_i``. Any backend with a correct colour gradient (ours on a
CPU, gsplat on CUDA) therefore gives the same sums.
"""

from __future__ import annotations

import torch

from splatkit.errors import SplatkitError


def blend_weight_sums(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
                      viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
                      pixel_weights: torch.Tensor, **render_kwargs) -> torch.Tensor:
    """``[N, D]``: per Gaussian, its blending weights summed over the ``C`` cameras' pixels,
    weighted per pixel by ``pixel_weights [C, H, W, D]`` (e.g. a background mask and an object
    mask as two channels). ``scales`` and ``opacities`` are activated (as
    :func:`splatkit.render.rasterization` takes them); ``render_kwargs`` go to it too."""
    from splatkit.render import rasterization

    C = viewmats.shape[0]
    if pixel_weights.dim() != 4 or tuple(pixel_weights.shape[:3]) != (C, height, width):
        raise SplatkitError(f"pixel_weights must be [C={C}, H={height}, W={width}, D], got {list(pixel_weights.shape)}")
    D = pixel_weights.shape[-1]
    features = torch.ones(means.shape[0], D, device=means.device, dtype=means.dtype, requires_grad=True)
    with torch.enable_grad():
        renders, _, _ = rasterization(means.detach(), quats.detach(), scales.detach(), opacities.detach(),
                                      features, viewmats, Ks, width, height, sh_degree=None, **render_kwargs)
        (grad,) = torch.autograd.grad((renders * pixel_weights.to(renders.dtype)).sum(), features,
                                      allow_unused=True)
    return torch.zeros_like(features) if grad is None else grad.detach()
