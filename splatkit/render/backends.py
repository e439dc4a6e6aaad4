"""Rasterizer backends as a small registry, so a new one (our CUDA kernels, next) is one entry and
:func:`splatkit.render.rasterization` has no per-backend branches.

A backend either renders the whole call itself (``full``: gsplat's own ``rasterization``) or
provides the four stages the shared glue calls (``stages``: a module with ``project_gaussians``,
``bin_tiles``, ``rasterize_to_pixels`` and, optionally, a fused ``sh_colors``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Optional

import torch

from splatkit.errors import SplatkitError


@dataclass(frozen=True)
class Backend:
    name: str
    # Why the backend cannot render tensors on this device (None: it can); may build/load kernels.
    unusable: Callable[[torch.device], Optional[str]]
    stages: Optional[Callable[[], ModuleType]] = None  # the stage implementations, imported on use
    full: Optional[Callable[..., tuple]] = None  # renders a whole rasterization() call
    max_fused_sh_degree: int = -1  # highest SH degree ``stages().sh_colors`` evaluates


_BACKENDS: dict[str, Backend] = {}
# What "auto" tries, in order: the first usable one wins.
AUTO_ORDER: list[str] = []


def register_backend(backend: Backend, *, auto_rank: Optional[int] = None) -> Backend:
    _BACKENDS[backend.name] = backend
    if auto_rank is not None and backend.name not in AUTO_ORDER:
        AUTO_ORDER.insert(auto_rank, backend.name)
    return backend


def backend_names() -> tuple[str, ...]:
    return ("auto", *_BACKENDS)


def get_backend(name: str) -> Backend:
    return _BACKENDS[name]


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``rasterization(backend=...)`` uses for tensors on ``device``: the named one
    (a clear error when it cannot run here) or, for ``auto``, the first usable one of
    :data:`AUTO_ORDER` (a warning when a preferred one is skipped for a reason worth knowing)."""
    if backend != "auto":
        if backend not in _BACKENDS:
            raise SplatkitError(f"unknown rasterizer backend {backend!r} (choose from {', '.join(backend_names())})")
        reason = _BACKENDS[backend].unusable(device)
        if reason is not None:
            raise SplatkitError(f"rasterizer backend {backend!r}: {reason}")
        return backend
    for name in AUTO_ORDER:
        reason = _BACKENDS[name].unusable(device)
        if reason is None:
            return name
        if name == "cpu" and device.type == "cpu":
            warnings.warn(f"splatkit: C++ CPU rasterizer unavailable ({reason}); using the slow PyTorch one")
    raise SplatkitError(f"no rasterizer backend can render {device.type} tensors")


# -- the built-in backends ------------------------------------------------------------------------
def _gsplat_unusable(device: torch.device) -> Optional[str]:
    if device.type != "cuda" or not torch.cuda.is_available():
        return "needs a CUDA GPU and CUDA tensors; use 'cpu' or 'auto'"
    return None


def _gsplat_full(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs):
    import gsplat

    renders, alphas, meta = gsplat.rasterization(means, quats, scales, opacities, colors, viewmats, Ks,
                                                 width, height, packed=False, **kwargs)
    meta["backend"] = "gsplat"
    return renders, alphas, meta


def _cpu_unusable(device: torch.device) -> Optional[str]:
    if device.type != "cpu":
        return f"needs CPU tensors, got {device.type} tensors"
    from splatkit.render import cpu_backend

    return cpu_backend.unavailable_reason()  # builds the extension on first use


def _cpu_stages() -> ModuleType:
    from splatkit.render import cpu_backend

    return cpu_backend


def _torch_stages() -> ModuleType:
    from splatkit.render import torch_impl

    return torch_impl


register_backend(Backend("gsplat", _gsplat_unusable, full=_gsplat_full), auto_rank=0)
# The C++ kernels evaluate SH up to degree 3 in one pass; degree 4 goes through eval_sh.
register_backend(Backend("cpu", _cpu_unusable, stages=_cpu_stages, max_fused_sh_degree=3), auto_rank=1)
register_backend(Backend("torch", lambda device: None, stages=_torch_stages), auto_rank=2)
