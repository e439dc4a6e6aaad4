"""The ``cpu`` rasterizer backend: our C++/OpenMP kernels (``cuda/cpu/*.cpp``).

The extension is compiled on first use with ``torch.utils.cpp_extension.load`` into
``~/.cache/splatkit/extensions/<hash>`` (``$SPLATKIT_CACHE_DIR/extensions/<hash>`` when set),
where the hash covers the sources, the compiler flags and the torch/Python versions, so each
machine builds it once. Flags are portable (``-O3 -fopenmp``, no ``-march=native``) because the
cached build may be reused on another CPU of the same machine pool.

Every stage has a C++ forward and a hand-written backward wrapped in a ``torch.autograd.Function``:
EWA projection (:class:`_ProjectCPU`, gradients to means, quats, scales and viewmats), SH colours
(:class:`_SphericalHarmonicsCPU`, degrees 0-3), tile binning, and compositing
(:class:`_RasterizeToPixelsCPU`, gradients w.r.t. the 2D means, conics, colours and opacities).
The 2D means are an output of the projection function, so ``meta["means2d"].retain_grad()``
gives the image-plane gradient exactly as with gsplat. Inputs of other dtypes are computed in
float32 and the gradients cast back.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from splatkit.errors import SplatkitError
from splatkit.render.torch_impl import Projection, TileBins
from splatkit.resources import cpu_sources_dir

SOURCE_DIR = cpu_sources_dir()
SOURCES = ("rasterize_cpu.cpp", "project_cpu.cpp")
# -ffp-contract=off: no fused multiply-adds, so the arithmetic rounds as in the PyTorch reference
# (and the same on every CPU).
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")
LDFLAGS = ("-fopenmp",)
# Channels per kernel call (the C++ kMaxChannels); wider features are composited in chunks.
CHANNEL_CHUNK = 32

def cache_root() -> Path:
    base = os.environ.get("SPLATKIT_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "splatkit"


def _compiler() -> Optional[str]:
    cxx = os.environ.get("CXX", "c++")
    return shutil.which(cxx)


class CppExtension:
    """One extension of our C++ torch ops (``cuda/cpu/``), compiled on first use with
    ``torch.utils.cpp_extension.load`` into ``cache_root()/extensions/<name>_<hash>``, where the
    hash covers the sources, the flags and the torch/Python versions (each machine builds once).
    A failed build is remembered as a one-line reason instead of being retried per call."""

    def __init__(self, name: str, sources: tuple[str, ...], namespace: str, label: str):
        self.name, self.sources, self.namespace, self.label = name, sources, namespace, label
        self._lock = threading.Lock()
        self.ops = None
        self.error: Optional[str] = None

    def build_dir(self) -> Path:
        h = hashlib.sha256()
        for name in self.sources:
            h.update(name.encode())
            h.update((SOURCE_DIR / name).read_bytes())
        h.update(" ".join(CFLAGS + LDFLAGS).encode())
        h.update(f"{torch.__version__}|{sys.version_info[:2]}|{platform.machine()}".encode())
        return cache_root() / "extensions" / f"{self.name}_{h.hexdigest()[:16]}"

    def _build(self) -> None:
        missing = [n for n in self.sources if not (SOURCE_DIR / n).is_file()]
        if missing:
            self.error = f"C++ sources not found: {SOURCE_DIR / missing[0]}"
            return
        if _compiler() is None:
            self.error = "no C++ compiler found (install g++ or set CXX)"
            return
        from torch.utils import cpp_extension

        out = self.build_dir()
        out.mkdir(parents=True, exist_ok=True)
        try:
            # is_python_module=False: the sources register torch ops (TORCH_LIBRARY) instead of a
            # pybind11 module, which keeps the one-off compile to a few seconds.
            cpp_extension.load(name=f"splatkit_{self.name}", sources=[str(SOURCE_DIR / n) for n in self.sources],
                               extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), build_directory=str(out),
                               is_python_module=False, verbose=False)
            self.ops = getattr(torch.ops, self.namespace)
        except Exception as e:  # compiler errors, missing headers, ninja failures
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            self.error = f"building {self.label} in {out} failed: {first}"

    def load(self):
        """The ops namespace; builds on first call. Raises SplatkitError if impossible."""
        with self._lock:
            if self.ops is None and self.error is None:
                self._build()
        if self.ops is None:
            raise SplatkitError(self.error)
        return self.ops

    def unavailable_reason(self) -> Optional[str]:
        """None when the ops work here (building them if needed), else why not."""
        try:
            self.load()
        except SplatkitError as e:
            return str(e)
        return None


_EXTENSION = CppExtension("rasterize_cpu", SOURCES, "splatkit_cpu", "the C++ rasterizer")


def build_dir() -> Path:
    """Where this build of the rasterizer's extension lives (one folder per sources+flags+toolchain)."""
    return _EXTENSION.build_dir()


def load_extension():
    """The compiled kernels module; builds it on first call. Raises SplatkitError if impossible."""
    return _EXTENSION.load()


def unavailable_reason() -> Optional[str]:
    """None when the cpu backend works here (building it if needed), else why not."""
    return _EXTENSION.unavailable_reason()


_kernel_threads: Optional[int] = None


def set_kernel_threads(n: Optional[int]) -> None:
    """Run these kernels on ``n`` threads whatever ``torch.set_num_threads`` says; ``None`` (the
    default): ``$SPLATKIT_CPU_THREADS`` when set, else torch's thread count. Why: on a small
    machine shared with other work, torch's many small parallel ops stall at their barriers
    whenever one of their threads is descheduled (a 2-core machine under load: 4-5x slower steps
    with torch on 2 threads than on 1), while these few large kernels hand out work dynamically."""
    global _kernel_threads
    _kernel_threads = None if n is None else max(1, int(n))


def kernel_threads() -> int:
    if _kernel_threads is not None:
        return _kernel_threads
    env = os.environ.get("SPLATKIT_CPU_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return torch.get_num_threads()


class Kernels:
    """An extension's ops, each run on :func:`kernel_threads` threads. With torch's own OpenMP
    runtime (one libgomp in the process) the kernels' ``omp_set_num_threads`` is also torch's
    thread count, so a different kernel count is restored to torch's after the call. Every
    extension defines a ``set_num_threads`` op for this."""

    def __init__(self, extension: CppExtension):
        self._extension = extension

    def __getattr__(self, name):
        ext = self._extension.load()
        op = getattr(ext, name)

        def call(*args):
            n_torch = torch.get_num_threads()
            n = kernel_threads()
            ext.set_num_threads(n)
            if n == n_torch:
                return op(*args)
            try:
                return op(*args)
            finally:
                torch.set_num_threads(n_torch)
        return call


_KERNELS = Kernels(_EXTENSION)


def _ext():
    load_extension()
    return _KERNELS


def _f32(x: Tensor) -> Tensor:
    return x.detach().float().contiguous()


class _ProjectCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, viewmats, Ks, width, height, eps2d,
                near_plane, far_plane, radius_clip, calc_compensations):
        args = [_f32(x) for x in (means, quats, scales)]
        cams = [_f32(viewmats), _f32(Ks)]
        op = None if opacities is None else _f32(opacities)
        radii, means2d, depths, conics, comps = _ext().project_fwd(
            *args, op, *cams, width, height, eps2d, near_plane, far_plane, radius_clip,
            calc_compensations,
        )
        ctx.save_for_backward(*args, *cams, radii)
        ctx.cfg = (width, height, eps2d, calc_compensations)
        ctx.dtypes = (means.dtype, quats.dtype, scales.dtype, viewmats.dtype)
        ctx.mark_non_differentiable(radii)
        dt = means.dtype
        return radii, means2d.to(dt), depths.to(dt), conics.to(dt), comps.to(dt)

    @staticmethod
    def backward(ctx, _v_radii, v_means2d, v_depths, v_conics, v_comps):
        means, quats, scales, viewmats, Ks, radii = ctx.saved_tensors
        width, height, eps2d, calc = ctx.cfg
        C, N = radii.shape[:2]

        def grad(v, shape):
            return torch.zeros(shape) if v is None else _f32(v)

        v_means, v_quats, v_scales, v_viewmats = _ext().project_bwd(
            means, quats, scales, viewmats, Ks, width, height, eps2d, radii,
            grad(v_means2d, (C, N, 2)), grad(v_depths, (C, N)), grad(v_conics, (C, N, 3)),
            _f32(v_comps) if (calc and v_comps is not None) else None,
        )
        dts = ctx.dtypes
        return (v_means.to(dts[0]), v_quats.to(dts[1]), v_scales.to(dts[2]), None,
                v_viewmats.to(dts[3]) if ctx.needs_input_grad[4] else None,
                None, None, None, None, None, None, None, None)


def project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height, eps2d=0.3,
                      near_plane=0.01, far_plane=1e10, radius_clip=0.0,
                      calc_compensations=False) -> Projection:
    """C++ version of :func:`splatkit.render.torch_impl.project_gaussians` (culled Gaussians
    have radii 0, zero outputs and zero gradients, as in gsplat)."""
    radii, means2d, depths, conics, comps = _ProjectCPU.apply(
        means, quats, scales, opacities, viewmats, Ks, int(width), int(height), float(eps2d),
        float(near_plane), float(far_plane), float(radius_clip), bool(calc_compensations),
    )
    return Projection(radii, means2d, depths, conics, comps if calc_compensations else None)


class _SphericalHarmonicsCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, degree, means, campos, coeffs):
        args = (_f32(means), _f32(campos), _f32(coeffs))
        colors = _ext().sh_fwd(degree, *args)
        ctx.save_for_backward(*args, colors)
        ctx.degree = degree
        ctx.dtypes = (means.dtype, campos.dtype, coeffs.dtype)
        return colors.to(coeffs.dtype)

    @staticmethod
    def backward(ctx, v_colors):
        means, campos, coeffs, colors = ctx.saved_tensors
        v_coeffs, v_means, v_campos = _ext().sh_bwd(ctx.degree, means, campos, coeffs, colors, _f32(v_colors))
        dts = ctx.dtypes
        return None, v_means.to(dts[0]), v_campos.to(dts[1]), v_coeffs.to(dts[2])


def sh_colors(degree: int, means: Tensor, campos: Tensor, coeffs: Tensor) -> Tensor:
    """``max(0, SH(means - campos) + 0.5)`` as ``[C, N, 3]``; coeffs ``[N, K, 3]`` or ``[C, N, K, 3]``.
    Degrees 0-3 (degree 4 is left to the PyTorch path)."""
    return _SphericalHarmonicsCPU.apply(int(degree), means, campos, coeffs)


@torch.no_grad()
def bin_tiles(means2d: Tensor, radii: Tensor, depths: Tensor, tile_size: int,
              tile_width: int, tile_height: int) -> TileBins:
    """C++ version of :func:`splatkit.render.torch_impl.bin_tiles` (same outputs)."""
    out = _ext().bin_tiles(
        means2d.detach().float().contiguous(), radii.to(torch.int32).contiguous(),
        depths.detach().float().contiguous(), tile_size, tile_width, tile_height,
    )
    return TileBins(*out)


class _RasterizeToPixelsCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, backgrounds, width, height, tile_size,
                isect_offsets, flatten_ids, absgrad):
        dtypes = (means2d.dtype, conics.dtype, colors.dtype, opacities.dtype)
        f32 = [x.detach().float().contiguous() for x in (means2d, conics, colors, opacities)]
        bg = None if backgrounds is None else backgrounds.detach().float().contiguous()
        offsets = isect_offsets.to(torch.int32).contiguous()
        fids = flatten_ids.to(torch.int32).contiguous()
        render, alphas, n_used = _ext().rasterize_fwd(*f32, bg, width, height, tile_size, offsets, fids)
        ctx.save_for_backward(*f32, offsets, fids, alphas, n_used)
        ctx.bg = bg
        ctx.cfg = (width, height, tile_size, absgrad, dtypes)
        ctx.has_bg = backgrounds is not None
        ctx.means2d = means2d if absgrad else None
        out_dtype = colors.dtype
        return render.to(out_dtype), alphas.to(out_dtype)

    @staticmethod
    def backward(ctx, v_render, v_alphas):
        means2d, conics, colors, opacities, offsets, fids, alphas, n_used = ctx.saved_tensors
        width, height, tile_size, absgrad, dtypes = ctx.cfg
        if v_render is None:
            v_render = torch.zeros(alphas.shape[:-1] + (colors.shape[-1],))
        if v_alphas is None:
            v_alphas = torch.zeros_like(alphas)
        v_m, v_c, v_col, v_o, v_abs = _ext().rasterize_bwd(
            means2d, conics, colors, opacities, ctx.bg, width, height, tile_size, offsets, fids,
            alphas, n_used, v_render.float().contiguous(), v_alphas.float().contiguous(), absgrad,
        )
        if absgrad and ctx.means2d is not None:
            prev = getattr(ctx.means2d, "absgrad", None)
            # Several channel chunks (or cameras rendered twice) add up, as gradients do.
            ctx.means2d.absgrad = v_abs if prev is None or prev.shape != v_abs.shape else prev + v_abs
        v_bg = None
        if ctx.has_bg and ctx.needs_input_grad[4]:
            v_bg = (v_render * (1.0 - alphas)).sum(dim=(1, 2)).to(ctx.bg.dtype)
        return (v_m.to(dtypes[0]), v_c.to(dtypes[1]), v_col.to(dtypes[2]), v_o.to(dtypes[3]),
                v_bg, None, None, None, None, None, None)


def rasterize_to_pixels(
    means2d: Tensor,  # [C, N, 2]
    conics: Tensor,  # [C, N, 3]
    colors: Tensor,  # [C, N, D]
    opacities: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int,
    isect_offsets: Tensor,
    flatten_ids: Tensor,
    backgrounds: Optional[Tensor] = None,  # [C, D]
    absgrad: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Differentiable compositing with the C++ kernels; same contract as the torch reference."""
    if absgrad and means2d.requires_grad:
        means2d.absgrad = None  # fresh accumulation for this render
    D = colors.shape[-1]
    if D <= CHANNEL_CHUNK:
        return _RasterizeToPixelsCPU.apply(means2d, conics, colors, opacities, backgrounds,
                                           width, height, tile_size, isect_offsets, flatten_ids, absgrad)
    renders, alphas = [], None
    for c0 in range(0, D, CHANNEL_CHUNK):
        bg = None if backgrounds is None else backgrounds[:, c0:c0 + CHANNEL_CHUNK]
        r, a = _RasterizeToPixelsCPU.apply(means2d, conics, colors[..., c0:c0 + CHANNEL_CHUNK],
                                           opacities, bg, width, height, tile_size, isect_offsets,
                                           flatten_ids, absgrad)
        renders.append(r)
        alphas = a if alphas is None else alphas  # one alpha carries the alpha gradient
    return torch.cat(renders, dim=-1), alphas
