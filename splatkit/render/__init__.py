"""Differentiable Gaussian rasterization (gsplat-compatible API, CPU and CUDA backends)."""

from splatkit.render.rasterization import rasterization, resolve_backend
from splatkit.render.sh import SH_C0, eval_sh, num_sh_bases, rgb_to_sh, sh_to_rgb

__all__ = [
    "rasterization",
    "resolve_backend",
    "SH_C0",
    "eval_sh",
    "num_sh_bases",
    "rgb_to_sh",
    "sh_to_rgb",
]
