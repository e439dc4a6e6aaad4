"""Compressing a finished run: the maths of ``splatkit compress`` (no model, no loop in here;
:mod:`splatkit.app.compress` runs the chain through the training loop).

The chain (issue #16's probe; the parts after Compressed 3DGS, Niedermayr et al., CVPR 2024,
"Compressed 3D Gaussian Splatting for Accelerated Novel View Synthesis"):

1. :func:`importance_and_sensitivity`: per Gaussian, the sum of its blending weights
   ``T_i * alpha_i`` over every pixel of every training view (its importance), and the sensitivity
   of the image energy to its SH rest coefficients (Niedermayr et al., Sec. 4.1: ``|dE/dp|``
   summed over the training views, ``E`` the sum of the rendered image), both from one backward
   pass per view: with per-Gaussian colours ``c_i`` as leaves, ``dE/dc_i`` is exactly the blending
   weight sum, and an SH coefficient ``k`` scales it by ``|Y_k(d_i)|`` for the view direction
   ``d_i`` (the clamp of negative colours at 0 is ignored there);
2. :func:`keep_mask`: the most important fraction of the Gaussians stays (then a short fine-tune);
3. :func:`weighted_kmeans`: the SH rest vectors clustered into a codebook, each Gaussian weighted by
   its largest coefficient sensitivity (Niedermayr et al.'s sensitivity-aware clustering), so the
   Gaussians that colour many pixels get the closest entries;
4. :func:`fake_quantize`: the quantisation-aware fine-tune renders every scalar attribute on the
   grid ``.skz`` stores it on (``q_affine``, :func:`splatkit.compress.skz.quantize_columns`),
   with the straight-through gradient.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from splatkit.compress.skz import MAX_QUANT_BITS, QUANT_ATTRIBUTES
from splatkit.errors import SplatkitError

# Bits per stored value (``.skz`` q_affine; ``shN`` means the SH codebook's entries). Issue #16's
# probe: 14-bit positions and 7-8-bit other attributes reached its target; positions need more
# because their error is absolute across the whole scene box.
DEFAULT_BITS = {"means": 14, "scales": 8, "quats": 8, "sh0": 8, "shN": 8}
# SH codebook entries: 256 (one index byte) up to 64k Gaussians, then one entry per 256 Gaussians
# (rounded to a power of two) up to Compressed 3DGS's 4096 for its million-Gaussian scenes.
MIN_CODEBOOK = 256
MAX_CODEBOOK = 4096
GAUSSIANS_PER_ENTRY = 256
KMEANS_ITERS = 20


def parse_bits(text: Optional[str]) -> dict[str, int]:
    """``"means=14,scales=7"`` -> :data:`DEFAULT_BITS` with those values replaced."""
    bits = dict(DEFAULT_BITS)
    if not text:
        return bits
    for item in text.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in QUANT_ATTRIBUTES:
            raise SplatkitError(f"--bits takes NAME=BITS pairs with NAME in {', '.join(QUANT_ATTRIBUTES)}, "
                                f"got {item!r}")
        try:
            b = int(value)
        except ValueError:
            b = -1
        if not 1 <= b <= MAX_QUANT_BITS:
            raise SplatkitError(f"--bits {name}: bits must be an integer in 1..{MAX_QUANT_BITS}, got {value!r}")
        bits[name] = b
    return bits


def codebook_size_for(n: int) -> int:
    """SH codebook entries for ``n`` Gaussians (see :data:`GAUSSIANS_PER_ENTRY`)."""
    want = 2 ** math.ceil(math.log2(max(n / GAUSSIANS_PER_ENTRY, 1)))
    return int(min(MAX_CODEBOOK, max(MIN_CODEBOOK, want)))


def importance_and_sensitivity(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, sh_degree: int,
                               viewmats: Tensor, Ks: Tensor, widths: Sequence[int], heights: Sequence[int],
                               *, backend: str = "auto", near_plane: float = 0.01, far_plane: float = 1e10,
                               progress=None) -> tuple[Tensor, Tensor]:
    """``(importance [N], sh_sensitivity [N, K-1])`` over the given cameras (module docstring).

    ``scales`` and ``opacities`` activated, as the rasteriser takes them. ``progress(i, total)``
    is called after each view."""
    from splatkit.render.contribution import blend_weight_sums
    from splatkit.render.sh import sh_basis

    n = means.shape[0]
    k_rest = (sh_degree + 1) ** 2 - 1
    importance = torch.zeros(n, dtype=torch.float64, device=means.device)
    sens = torch.zeros(n, k_rest, dtype=torch.float64, device=means.device)
    geo = [t.detach() for t in (means, quats, scales, opacities)]
    cam_centers = torch.linalg.inv(viewmats)[:, :3, 3]
    for v in range(viewmats.shape[0]):
        W, H = int(widths[v]), int(heights[v])
        every_pixel = torch.ones(1, H, W, 1, device=means.device)
        w = blend_weight_sums(*geo, viewmats[v:v + 1], Ks[v:v + 1], W, H, every_pixel, near_plane=near_plane,
                              far_plane=far_plane, backend=backend)[:, 0].to(torch.float64).clamp_min(0)
        importance += w
        if k_rest:
            dirs = torch.nn.functional.normalize(geo[0] - cam_centers[v], dim=1)
            sens += w[:, None] * sh_basis(sh_degree, dirs.to(torch.float64))[:, 1:].abs()
        if progress is not None:
            progress(v + 1, viewmats.shape[0])
    return importance, sens


def keep_mask(importance: Tensor, keep: float) -> Tensor:
    """Boolean [N]: the ``round(keep * N)`` (at least one) most important Gaussians."""
    if not 0 < keep <= 1:
        raise SplatkitError(f"the share of Gaussians to keep must be in (0, 1], got {keep}")
    n = importance.shape[0]
    count = max(1, min(n, round(keep * n)))
    out = torch.zeros(n, dtype=torch.bool, device=importance.device)
    out[torch.topk(importance, count).indices] = True
    return out


@torch.no_grad()
def weighted_kmeans(x: Tensor, weights: Tensor, k: int, iters: int = KMEANS_ITERS, seed: int = 0,
                    chunk: int = 32768) -> tuple[Tensor, Tensor]:
    """Weighted k-means (Lloyd) of ``x [N, D]`` with ``weights [N]`` (>= 0): ``(centroids [k', D],
    labels [N])``, ``k' = min(k, N)``. Initialised by k-means++ sampling on the weights; an empty
    cluster takes the point that is farthest from its centroid (weighted)."""
    n = x.shape[0]
    if n == 0:
        raise SplatkitError("cannot cluster zero vectors")
    k = min(int(k), n)
    x = x.to(torch.float32)
    w = weights.to(torch.float32).clamp_min(0) + 1e-12  # every point counts a little
    g = torch.Generator(device="cpu").manual_seed(seed)
    # k-means++ seeding (Arthur & Vassilvitskii 2007), on a weighted subsample for speed.
    sample = torch.multinomial(w.cpu(), min(n, 20 * k), replacement=n < 20 * k, generator=g).to(x.device)
    pts, pw = x[sample], w[sample]
    centers = [pts[int(torch.multinomial(pw.cpu(), 1, generator=g))]]
    d2 = ((pts - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        c = pts[int(torch.multinomial((pw * d2).cpu() + 1e-30, 1, generator=g))]
        centers.append(c)
        d2 = torch.minimum(d2, ((pts - c) ** 2).sum(1))
    cent = torch.stack(centers)
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for _ in range(iters):
        dist = torch.empty(n, device=x.device)
        for s in range(0, n, chunk):
            dd = torch.cdist(x[s:s + chunk], cent)
            dist[s:s + chunk], labels[s:s + chunk] = dd.min(dim=1)
        sums = torch.zeros_like(cent).index_add_(0, labels, x * w[:, None])
        mass = torch.zeros(k, device=x.device).index_add_(0, labels, w)
        empty = mass <= 0
        cent = torch.where(empty[:, None], cent, sums / mass.clamp_min(1e-30)[:, None])
        if bool(empty.any()):
            far = torch.topk(dist * w, int(empty.sum())).indices
            cent[empty] = x[far]
    for s in range(0, n, chunk):
        labels[s:s + chunk] = torch.cdist(x[s:s + chunk], cent).argmin(dim=1)
    return cent, labels


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad


def fake_quantize(x: Tensor, bits: int) -> Tensor:
    """``x`` on the grid :func:`splatkit.compress.skz.quantize_columns` stores it on (each column
    of the last axis between its own min and max, ``2**bits`` levels), straight-through gradient."""
    levels = (1 << int(bits)) - 1
    flat = x.reshape(-1, x.shape[-1])
    lo = flat.detach().min(dim=0).values
    span = flat.detach().max(dim=0).values - lo
    step = torch.where(span > 0, span / levels, torch.ones_like(span))
    return (_RoundSTE.apply((flat - lo) / step) * step + lo).reshape(x.shape)


def canonical_quats(q: Tensor) -> Tensor:
    """Unit quaternions (wxyz) with ``w >= 0``: the same rotations, one sign, so the stored
    components span half the range (finer steps at the same bits)."""
    q = torch.nn.functional.normalize(q, dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)
