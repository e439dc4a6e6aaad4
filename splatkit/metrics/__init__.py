"""Image-quality metrics (PSNR, SSIM, LPIPS and their DTU masked forms), below training so that
the trainer's SSIM loss and its end-of-run scores share them with ``splatkit eval``."""

from splatkit.metrics.image import (
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
