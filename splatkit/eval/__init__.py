"""Evaluation: image-quality metrics for novel views (see :mod:`splatkit.eval.metrics`)."""

from splatkit.eval.metrics import (
    compute_metrics,
    lpips,
    lpips_available,
    masked_lpips,
    masked_psnr,
    masked_ssim,
    psnr,
    ssim,
)

__all__ = [
    "psnr", "ssim", "lpips", "lpips_available", "masked_psnr", "masked_ssim", "masked_lpips",
    "compute_metrics",
]
