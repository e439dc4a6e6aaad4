"""Photometric training losses: L1 and D-SSIM, combined as in 3DGS.

The SSIM here is the *training* variant of 3DGS (``utils/loss_utils.py``): the same 11x11,
sigma-1.5 Gaussian window and constants as the evaluation metric in :mod:`splatkit.metrics`
(whose window helper it reuses), but with zero "same" padding so every pixel gets a gradient,
float32 and autograd enabled. Reported SSIM numbers come from :func:`splatkit.metrics.ssim`.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from splatkit.metrics.image import SSIM_K1, SSIM_K2, SSIM_SIGMA, SSIM_WINDOW, _gaussian_kernel_1d


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def ssim_map(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM of ``[B, H, W, C]`` images in [0, 1]: ``[B, H, W, C]`` (differentiable)."""
    B, H, W, C = pred.shape
    x = pred.permute(0, 3, 1, 2).reshape(B * C, H, W)
    y = target.permute(0, 3, 1, 2).reshape(B * C, H, W)
    # All 5 * B * C moment maps as the channels of one image: oneDNN's depthwise convolution is
    # ~10x slower on the [B * C, 5, H, W] layout at 400x300 (same arithmetic, same result).
    n = 5 * B * C
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=0).view(1, n, H, W)
    k = _gaussian_kernel_1d(SSIM_WINDOW, SSIM_SIGMA, pred.dtype, pred.device)
    pad = SSIM_WINDOW // 2
    # Separable zero-padded convolution == 3DGS's 2-D conv2d(padding=window // 2).
    stack = F.conv2d(stack, k.view(1, 1, 1, -1).expand(n, 1, 1, -1), padding=(0, pad), groups=n)
    stack = F.conv2d(stack, k.view(1, 1, -1, 1).expand(n, 1, -1, 1), padding=(pad, 0), groups=n)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.view(5, B * C, H, W).unbind(dim=0)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))
    return s.view(B, C, H, W).permute(0, 2, 3, 1)


def ssim_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """D-SSIM term of 3DGS: ``1 - mean SSIM``."""
    return 1.0 - ssim_map(pred, target).mean()


def photometric_loss(pred: torch.Tensor, target: torch.Tensor, ssim_lambda: float = 0.2,
                     weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """3DGS's ``(1 - lambda) L1 + lambda D-SSIM`` and its two terms (for logging).

    ``weights`` (``[B, H, W, 1]`` or anything broadcasting to the images) weigh each pixel's L1
    and D-SSIM before the mean: 0 leaves a pixel out (DTU's dark backdrop), a scalar scales the
    whole term (GaussianObject's ``1 - r`` while pseudo views are trained). None: unweighted."""
    if weights is not None:
        l1 = ((pred - target).abs() * weights).mean()
        dssim = ((1.0 - ssim_map(pred, target)) * weights).mean() if ssim_lambda > 0 else None
    else:
        l1 = l1_loss(pred, target)
        dssim = ssim_loss(pred, target) if ssim_lambda > 0 else None
    if dssim is not None:
        total = (1.0 - ssim_lambda) * l1 + ssim_lambda * dssim
    else:
        dssim = torch.zeros((), device=pred.device)
        total = l1
    return total, {"l1": l1.detach(), "dssim": dssim.detach()}
