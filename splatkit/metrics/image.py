"""Image-quality metrics for novel-view evaluation: PSNR, SSIM, LPIPS and their DTU masked forms.

Inputs: numpy arrays or torch tensors, float, values in [0, 1] (data range 1), shaped ``[H, W, 3]``
(one image) or ``[B, H, W, 3]`` (a batch). ``pred`` and ``gt`` must have the same shape. Values are
used as given: clip renders to [0, 1] before calling, as evaluation protocols do.

Return types: a single image gives a Python ``float``; a batch gives a detached float64 CPU
``torch.Tensor`` of shape ``[B]`` with one value per image (benchmarks average per-image values,
not metrics of pooled errors). Everything runs without autograd: these are evaluation metrics,
not losses. Computation is in float64 on the input's device (SSIM takes differences of means of
squares, which lose digits in float32).

Masked variants follow the DTU sparse-view protocol of RegNeRF (``regnerf/eval.py``, pixelNeRF
split): ``masked_psnr`` is the PSNR of the squared error averaged over the pixels where
``mask == 1`` (every channel of those pixels); ``masked_ssim`` / ``masked_lpips`` are the plain
metrics of both images composited on white, ``x * m + (1 - m)``.

LPIPS needs the third-party ``lpips`` package, which needs torchvision and its ImageNet backbone
weights; splatkit's CPU install has neither, and nothing can be downloaded at evaluation time.
When they are missing, :func:`lpips_available` says why, :func:`lpips` raises, and
:func:`compute_metrics` reports ``None`` plus the reason instead of a number.
"""

from __future__ import annotations

import importlib
from typing import Union

import numpy as np
import torch

from splatkit.errors import SplatkitError

ArrayLike = Union[np.ndarray, torch.Tensor]
Metric = Union[float, torch.Tensor]

# SSIM constants of Wang et al. 2004, "Image quality assessment: from error visibility to
# structural similarity", Sec. III-B/C: 11x11 circular-symmetric Gaussian, sigma 1.5,
# K1 = 0.01, K2 = 0.03, dynamic range L = 1 for images in [0, 1].
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 1.0

LPIPS_NETS = ("alex", "vgg", "squeeze")  # the backbones the lpips package ships linear heads for


# -- input handling ---------------------------------------------------------------------------
def _to_tensor(x: ArrayLike, name: str, device=None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fbiu":
            raise SplatkitError(f"{name}: unsupported array dtype {x.dtype}")
        # torch.from_numpy warns on read-only memory (memory-mapped or imageio arrays) and
        # rejects negative strides (flipped views); a copy serves both.
        shareable = x.flags.writeable and all(st >= 0 for st in x.strides)
        t = torch.from_numpy(x if shareable else x.copy())
    else:
        raise SplatkitError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    return t if device is None else t.to(device)


def _images(pred: ArrayLike, gt: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Both images as float64 ``[B, H, W, 3]`` on pred's device, and whether the input was batched."""
    p = _to_tensor(pred, "pred")
    g = _to_tensor(gt, "gt", device=p.device)
    for name, t in (("pred", p), ("gt", g)):
        # Integer images are almost always uint8 in [0, 255]: scoring them as [0, 1] data would
        # give a wrong number silently.
        if not t.is_floating_point():
            raise SplatkitError(
                f"{name}: metrics take float images in [0, 1], got dtype {t.dtype} (divide uint8 by 255)"
            )
        if t.ndim not in (3, 4) or t.shape[-1] != 3:
            raise SplatkitError(
                f"{name}: expected an image [H, W, 3] or a batch [B, H, W, 3], got shape {tuple(t.shape)}"
            )
    if p.shape != g.shape:
        raise SplatkitError(f"pred and gt differ in shape: {tuple(p.shape)} vs {tuple(g.shape)}")
    batched = p.ndim == 4
    if not batched:
        p, g = p[None], g[None]
    return p.to(torch.float64), g.to(torch.float64), batched


def _mask(mask: ArrayLike, like: torch.Tensor, batched: bool) -> torch.Tensor:
    """The mask as float64 broadcast to ``like`` ([B, H, W, 3]); accepts [..., H, W], [..., H, W, 1|3]."""
    m = _to_tensor(mask, "mask", device=like.device).to(torch.float64)
    given = tuple(m.shape)
    img_ndim = 4 if batched else 3
    if m.ndim == img_ndim - 1:
        m = m[..., None]
    if not batched:
        m = m[None]
    if m.ndim != 4 or m.shape[:3] != like.shape[:3] or m.shape[3] not in (1, 3):
        raise SplatkitError(
            f"mask shape {given} does not match the image "
            f"{tuple(like.shape[1:]) if not batched else tuple(like.shape)} "
            "(expected [H, W], [H, W, 1] or [H, W, 3], with a leading B for batches)"
        )
    if not torch.all(torch.isfinite(m)) or m.min() < 0 or m.max() > 1:
        raise SplatkitError("mask values must lie in [0, 1] (1 = object); divide a 0..255 mask by 255")
    return m.expand_as(like)


def _out(values: torch.Tensor, batched: bool) -> Metric:
    values = values.detach().to("cpu", torch.float64)
    return values if batched else float(values[0])


def _composite_on_white(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return x * m + (1.0 - m)


# -- PSNR -------------------------------------------------------------------------------------
def _mse_to_psnr(mse: torch.Tensor) -> torch.Tensor:
    # Zero error gives +inf (log10(0) = -inf), the mathematically correct value; callers that
    # average over views should expect it only for bit-identical images.
    return -10.0 * torch.log10(mse / DATA_RANGE**2)


@torch.no_grad()
def psnr(pred: ArrayLike, gt: ArrayLike) -> Metric:
    """Peak signal-to-noise ratio in dB, ``-10 log10(MSE)`` for data range 1.

    MSE is over all pixels and channels of each image. Identical images give ``inf``.
    Returns a float for one image, a float64 tensor [B] for a batch.
    """
    p, g, batched = _images(pred, gt)
    mse = ((p - g) ** 2).mean(dim=(1, 2, 3))
    return _out(_mse_to_psnr(mse), batched)


@torch.no_grad()
def masked_psnr(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike) -> Metric:
    """PSNR of the MSE over the pixels where ``mask == 1`` only (all channels of those pixels).

    This is RegNeRF's DTU ``psnr_masked`` (``mask_bin = mask == 1``): soft mask values below 1
    are left out, exactly as there. A mask [H, W, 3] selects per channel. Zero error inside the
    mask gives ``inf``, as :func:`psnr` does for identical images, whatever differs outside.
    Raises :class:`SplatkitError` when an image's mask selects no pixel.
    """
    p, g, batched = _images(pred, gt)
    sel = (_mask(mask, p, batched) == 1.0).to(torch.float64)
    count = sel.sum(dim=(1, 2, 3))
    if torch.any(count == 0):
        empty = int(torch.nonzero(count == 0)[0, 0])
        raise SplatkitError(
            "mask selects no pixel (no value equal to 1)" + (f" in batch image {empty}" if batched else "")
        )
    mse = (((p - g) ** 2) * sel).sum(dim=(1, 2, 3)) / count
    return _out(_mse_to_psnr(mse), batched)


# -- SSIM -------------------------------------------------------------------------------------
def _gaussian_kernel_1d(size: int, sigma: float, dtype, device) -> torch.Tensor:
    x = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()  # the 2-D window is the outer product, so it sums to 1 as well


def _blur_valid(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """Unpadded ("valid") correlation of ``x`` with the 1-D kernel ``k`` along ``dim``, as shifted
    adds: in float64 PyTorch's CPU convolution has no fast path and is 3-10x slower."""
    n = x.shape[dim] - k.numel() + 1
    out = x.narrow(dim, 0, n) * k[0]
    for t, w in enumerate(k.tolist()[1:], start=1):
        out.add_(x.narrow(dim, t, n), alpha=w)
    return out


def _ssim_batch(p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Mean SSIM per image of float64 [B, H, W, C] inputs: [B]."""
    B, H, W, C = p.shape
    if H < SSIM_WINDOW or W < SSIM_WINDOW:
        raise SplatkitError(
            f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {W}x{H}"
        )
    x = p.permute(0, 3, 1, 2).reshape(B * C, 1, H, W)
    y = g.permute(0, 3, 1, 2).reshape(B * C, 1, H, W)
    # All five local moments with one separable, unpadded ("valid") Gaussian filter.
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = _gaussian_kernel_1d(SSIM_WINDOW, SSIM_SIGMA, p.dtype, p.device)
    stack = _blur_valid(_blur_valid(stack, k, -1), k, -2)
    mu_x, mu_y, e_xx, e_yy, e_xy = stack.unbind(dim=1)
    var_x = e_xx - mu_x**2  # population (biased) moments, as in Wang et al. 2004
    var_y = e_yy - mu_y**2
    cov = e_xy - mu_x * mu_y
    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2)).view(B, C).mean(dim=1)


@torch.no_grad()
def ssim(pred: ArrayLike, gt: ArrayLike) -> Metric:
    """Mean structural similarity (Wang et al. 2004), per channel, then averaged over channels.

    Variant: 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, data range 1, population
    (not sample) covariances, and a "valid" convolution: the SSIM map covers only windows that
    lie entirely inside the image ((H-10) x (W-10) positions), so no padding invents border
    pixels. This is the paper's definition and mip-NeRF's ``compute_ssim``, and it equals
    ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)``, which filters with reflected
    borders and then discards the 5-pixel border of the map.

    Other code differs, which matters when comparing with published tables: 3DGS's ``ssim``
    zero-pads ("same" convolution), which lowers scores near the borders, and RegNeRF's
    ``eval.py`` calls skimage with its defaults (7x7 uniform window, sample covariance).

    Returns a float for one image, a float64 tensor [B] for a batch. Images must be >= 11x11.
    """
    p, g, batched = _images(pred, gt)
    return _out(_ssim_batch(p, g), batched)


@torch.no_grad()
def masked_ssim(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike) -> Metric:
    """:func:`ssim` of both images composited on white, ``x * m + (1 - m)`` (RegNeRF's DTU
    ``ssim_masked``). Raises :class:`SplatkitError` for an all-zero mask, whose composites would
    be identical white images with a meaningless SSIM of 1."""
    p, g, batched = _images(pred, gt)
    m = _mask(mask, p, batched)
    _require_some_foreground(m, batched)
    return _out(_ssim_batch(_composite_on_white(p, m), _composite_on_white(g, m)), batched)


def _require_some_foreground(m: torch.Tensor, batched: bool) -> None:
    nonzero = (m > 0).flatten(1).any(dim=1)
    if not torch.all(nonzero):
        empty = int(torch.nonzero(~nonzero)[0, 0])
        raise SplatkitError("mask is empty (all zero)" + (f" in batch image {empty}" if batched else ""))


# -- LPIPS ------------------------------------------------------------------------------------
# Built models per backbone, and the reason a backbone could not be built. Both are filled on
# first use: importing lpips imports torchvision, which is slow and may be broken.
_lpips_models: dict[str, torch.nn.Module] = {}
_lpips_failures: dict[str, str] = {}


def _check_net(net: str) -> None:
    if net not in LPIPS_NETS:
        raise SplatkitError(f"unknown LPIPS network {net!r}; choose one of {', '.join(LPIPS_NETS)}")


def _load_lpips(net: str) -> torch.nn.Module | None:
    """The cached LPIPS model for ``net``, or None with the reason stored in ``_lpips_failures``."""
    if net in _lpips_models:
        return _lpips_models[net]
    if net in _lpips_failures:
        return None
    try:
        # Any exception, not just ImportError: a torchvision built for another torch raises
        # RuntimeError/AttributeError/OSError at import time.
        package = importlib.import_module("lpips")
    except Exception as e:  # noqa: BLE001 - the message is kept and reported
        _lpips_failures[net] = (
            f"LPIPS unavailable: the 'lpips' package cannot be imported ({type(e).__name__}: {e}). "
            "It needs torchvision, which splatkit's CPU install deliberately omits; install "
            "'splatkit[lpips]' where a torchvision matching torch is available"
        )
        return None
    try:
        model = package.LPIPS(net=net, verbose=False)
    except Exception as e:  # noqa: BLE001
        _lpips_failures[net] = (
            f"LPIPS unavailable: lpips could not build its {net!r} network ({type(e).__name__}: {e}). "
            "It loads ImageNet backbone weights through torchvision, which must already be in the "
            "torch hub cache when there is no internet access"
        )
        return None
    model.eval()
    for prm in model.parameters():
        prm.requires_grad_(False)
    _lpips_models[net] = model
    return model


def lpips_available(net: str = "alex") -> tuple[bool, str]:
    """Whether LPIPS with backbone ``net`` can be computed here, and a one-line explanation.

    The first call imports ``lpips`` (and torchvision) and builds the model; the result, success
    or failure, is cached for the life of the process.
    """
    _check_net(net)
    model = _load_lpips(net)
    if model is None:
        return False, _lpips_failures[net]
    version = getattr(importlib.import_module("lpips"), "__version__", "unknown version")
    return True, f"lpips {version}, {net} backbone"


@torch.no_grad()
def lpips(pred: ArrayLike, gt: ArrayLike, net: str = "alex") -> Metric:
    """LPIPS distance (Zhang et al. 2018, lpips v0.1 linear heads) between images in [0, 1].

    Lower is better. Returns a float for one image, a float64 tensor [B] for a batch. Raises
    :class:`SplatkitError` with the reason when the ``lpips`` package or its weights are missing.
    """
    _check_net(net)
    p, g, batched = _images(pred, gt)
    return _out(_lpips_batch(p, g, net), batched)


def _lpips_batch(p: torch.Tensor, g: torch.Tensor, net: str) -> torch.Tensor:
    model = _load_lpips(net)
    if model is None:
        raise SplatkitError(_lpips_failures[net])
    model.to(p.device)
    # lpips takes NCHW; normalize=True maps [0, 1] to the [-1, 1] its networks were trained on.
    to_nchw = lambda t: t.permute(0, 3, 1, 2).to(torch.float32).contiguous()  # noqa: E731
    d = model(to_nchw(p), to_nchw(g), normalize=True)
    return d.reshape(p.shape[0])


@torch.no_grad()
def masked_lpips(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike, net: str = "alex") -> Metric:
    """:func:`lpips` of both images composited on white, ``x * m + (1 - m)`` (RegNeRF's DTU
    ``lpips_masked``). Raises :class:`SplatkitError` when LPIPS is unavailable or the mask is
    all zero."""
    _check_net(net)
    p, g, batched = _images(pred, gt)
    m = _mask(mask, p, batched)
    _require_some_foreground(m, batched)
    return _out(_lpips_batch(_composite_on_white(p, m), _composite_on_white(g, m), net), batched)


# -- bundle -----------------------------------------------------------------------------------
def compute_metrics(pred: ArrayLike, gt: ArrayLike, mask: ArrayLike | None = None,
                    net: str = "alex") -> dict:
    """All metrics for one view ([H, W, 3] images; loop over views and average per view).

    Returns ``{"psnr": float, "ssim": float, "lpips": float | None}``; when LPIPS cannot be
    computed, ``"lpips"`` is ``None`` and ``"lpips_unavailable"`` holds the reason. With a mask
    ([H, W], [H, W, 1] or [H, W, 3]) also ``"masked_psnr"``, ``"masked_ssim"`` and
    ``"masked_lpips"`` (``None`` alongside ``"lpips"``).
    """
    if _to_tensor(pred, "pred").ndim != 3:
        raise SplatkitError("compute_metrics takes one view [H, W, 3]; call it once per view")
    out: dict = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
    ok, reason = lpips_available(net)
    out["lpips"] = lpips(pred, gt, net=net) if ok else None
    if not ok:
        out["lpips_unavailable"] = reason
    if mask is not None:
        out["masked_psnr"] = masked_psnr(pred, gt, mask)
        out["masked_ssim"] = masked_ssim(pred, gt, mask)
        out["masked_lpips"] = masked_lpips(pred, gt, mask, net=net) if ok else None
    return out
