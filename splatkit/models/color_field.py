"""View-dependent Gaussian colour from a hash-grid neural field, after Compact-3DGS
(Lee et al., "Compact 3D Gaussian Representation for Radiance Field", CVPR 2024), and its bake
back to per-Gaussian spherical harmonics.

colour(mean, dir) = sigmoid(MLP([HashGrid(contract(mean)), SH_3(dir)]))

Hyperparameters follow the authors' code (github.com/maincold2/Compact-3DGS,
``scene/gaussian_model.py``, ``gaussian_renderer/__init__.py``): hash grid 16 levels x 2
features, ``T = 2**19`` (``--max_hashmap``; 2**16 for NeRF-synthetic), base resolution 16,
per-level scale 1.447; degree-3 SH direction encoding (16 values); MLP with 2 hidden layers of
64 ReLU units and 3 outputs; the Gaussian centre is detached and contracted with the aabb
``[-1, 1]^3`` (mip-NeRF 360 contraction, then ``/4 + 0.5``). Differences, on purpose: by
default the output goes through a sigmoid (``output="sh0"`` is the authors' choice: the raw output
is a DC SH coefficient; docs/benchmarks.md compares the two), directions are fed to the SH basis as
unit vectors in splatkit/gsplat's convention, and the linear layers have biases (tiny-cuda-nn's
fused MLP has none).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field as dc_field
from typing import Any, Callable, NamedTuple, Optional

import numpy as np

import torch
from torch import Tensor

from splatkit.errors import SplatkitError
from splatkit.models.hashgrid import HashGrid, HashGridConfig, contract_to_unit_ball
from splatkit.render.sh import MAX_SH_DEGREE, eval_sh, num_sh_bases, sh_basis, sh_to_rgb


FIELD_OUTPUTS = ("sigmoid", "sh0")


@dataclass
class ColorFieldConfig:
    """Compact-3DGS defaults (real scenes). For NeRF-synthetic the authors use
    ``log2_hashmap_size=16`` and a learning rate of 1e-3 instead of 1e-2."""

    grid: HashGridConfig = dc_field(default_factory=lambda: HashGridConfig(
        n_levels=16, n_features_per_level=2, log2_hashmap_size=19, base_resolution=16, per_level_scale=1.447))
    dir_sh_degree: int = 3
    hidden_dim: int = 64
    n_hidden_layers: int = 2
    # Radius (world units) mapped to the linear part of the contraction; the region
    # |x| <= scene_bound uses half the grid's width, the rest of space the outer shell.
    scene_bound: float = 1.0
    # Compact-3DGS detaches the centres: the colour field does not move the Gaussians.
    detach_means: bool = True
    # How the MLP's 3 outputs become a colour. "sh0": the authors' choice, the output is a DC SH
    # coefficient, colour = max(C0 * out + 0.5, 0) as the rasteriser shows per-Gaussian SH (no
    # saturation: dark and fully saturated colours get the full gradient). "sigmoid": squashed
    # into (0, 1), which slows learning near black and saturated colours.
    output: str = "sigmoid"


class ColorField(torch.nn.Module):
    """Colours ``[..., N, 3]`` in ``[0, 1]`` of Gaussians at ``means`` seen along view directions."""

    def __init__(self, config: Optional[ColorFieldConfig] = None):
        super().__init__()
        self.config = config = ColorFieldConfig() if config is None else config
        if not 0 <= config.dir_sh_degree <= MAX_SH_DEGREE:
            raise SplatkitError(f"dir_sh_degree must be in [0, {MAX_SH_DEGREE}], got {config.dir_sh_degree}")
        if config.hidden_dim < 1 or config.n_hidden_layers < 1:
            raise SplatkitError("ColorField needs hidden_dim >= 1 and n_hidden_layers >= 1")
        if not (math.isfinite(config.scene_bound) and config.scene_bound > 0):
            raise SplatkitError(f"scene_bound must be a positive number, got {config.scene_bound}")
        if config.output not in FIELD_OUTPUTS:
            raise SplatkitError(f"colour-field output must be one of {', '.join(FIELD_OUTPUTS)}; got {config.output!r}")
        self.grid = HashGrid(config.grid)
        h = config.hidden_dim
        # The first layer is split in a position part and a direction part: the position part
        # is computed once per Gaussian and shared by all cameras (same maths as concatenating).
        self.pos_in = torch.nn.Linear(self.grid.output_dim, h)
        self.dir_in = torch.nn.Linear(num_sh_bases(config.dir_sh_degree), h, bias=False)
        layers: list[torch.nn.Module] = []
        for _ in range(config.n_hidden_layers - 1):
            layers += [torch.nn.ReLU(), torch.nn.Linear(h, h)]
        layers += [torch.nn.ReLU(), torch.nn.Linear(h, 3)]
        self.head = torch.nn.Sequential(*layers)

    def encode_positions(self, means: Tensor) -> Tensor:
        """First-layer pre-activation from the position alone, ``[N, hidden]``."""
        if means.dim() != 2 or means.shape[1] != 3:
            raise SplatkitError(f"ColorField means must be [N, 3], got {list(means.shape)}")
        if self.config.detach_means:
            means = means.detach()
        x = contract_to_unit_ball(means, self.config.scene_bound)
        return self.pos_in(self.grid(x))

    def forward(self, means: Tensor, view_dirs: Tensor) -> Tensor:
        """``means [N, 3]``, ``view_dirs [N, 3]`` or ``[C, N, 3]`` (need not be unit) -> ``[..., N, 3]``."""
        n = means.shape[0] if means.dim() == 2 else -1
        if view_dirs.dim() not in (2, 3) or view_dirs.shape[-1] != 3 or view_dirs.shape[-2] != n:
            raise SplatkitError(
                f"ColorField view_dirs must be [N, 3] or [C, N, 3] with N = {n}, got {list(view_dirs.shape)}")
        h_pos = self.encode_positions(means)
        d = view_dirs / view_dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        h = h_pos + self.dir_in(sh_basis(self.config.dir_sh_degree, d).to(h_pos.dtype))
        out = self.head(h)
        if self.config.output == "sh0":
            return sh_to_rgb(out).clamp_min(0.0)
        return torch.sigmoid(out)

    def colors_for_cameras(self, means: Tensor, camtoworlds: Tensor) -> Tensor:
        """Colours ``[C, N, 3]`` seen from each camera centre (for ``rasterization(sh_degree=None)``)."""
        if camtoworlds.dim() != 3 or tuple(camtoworlds.shape[1:]) != (4, 4):
            raise SplatkitError(f"camtoworlds must be [C, 4, 4], got {list(camtoworlds.shape)}")
        if means.dim() != 2 or means.shape[1] != 3:
            raise SplatkitError(f"ColorField means must be [N, 3], got {list(means.shape)}")
        src = means.detach() if self.config.detach_means else means
        dirs = src[None] - camtoworlds[:, None, :3, 3].to(src.dtype)  # camera centre -> Gaussian
        return self(means, dirs)


# ----------------------------------------------------------------------------------------------
# Baking the field into per-Gaussian SH coefficients (for export to standard 3DGS viewers).


class BakedSH(NamedTuple):
    sh0: Tensor  # [N, 1, 3]
    shN: Tensor  # [N, K - 1, 3]
    rms: float  # RMS of rendered colour - field colour over all Gaussians, directions, channels


def fibonacci_sphere(n: int, hemisphere_axis: Optional[Tensor] = None,
                     device: Optional[torch.device] = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Near-uniform unit directions ``[M, 3]`` on the sphere (golden-angle spiral).

    With ``hemisphere_axis``, ``n`` points are placed on the hemisphere ``dot(d, axis) >= 0``.
    """
    if n < 1:
        raise SplatkitError(f"need at least one direction, got {n}")
    i = torch.arange(n, dtype=torch.float64)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    if hemisphere_axis is None:
        z = 1.0 - 2.0 * (i + 0.5) / n
    else:
        z = 1.0 - (i + 0.5) / n  # z in (0, 1): upper hemisphere, then rotated onto the axis
    r = (1.0 - z * z).clamp_min(0).sqrt()
    d = torch.stack((r * torch.cos(golden * i), r * torch.sin(golden * i), z), dim=-1)
    if hemisphere_axis is not None:
        a = hemisphere_axis.detach().to("cpu", torch.float64).reshape(-1)
        if a.numel() != 3 or not torch.isfinite(a).all() or a.norm() == 0:
            raise SplatkitError(f"hemisphere_axis must be a non-zero 3-vector, got {hemisphere_axis}")
        a = a / a.norm()
        # Rodrigues rotation taking +z to a (a half-turn about x when a = -z).
        zax = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
        v, c = torch.linalg.cross(zax, a), float(a @ zax)
        if c < -1.0 + 1e-12:
            rot = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
        else:
            vx = torch.tensor([[0.0, -v[2], v[1]], [v[2], 0.0, -v[0]], [-v[1], v[0], 0.0]], dtype=torch.float64)
            rot = torch.eye(3, dtype=torch.float64) + vx + vx @ vx / (1.0 + c)
        d = d @ rot.T
    return d.to(device=device, dtype=dtype)


def _degree_of(num_coeffs: int) -> int:
    deg = int(round(math.sqrt(num_coeffs))) - 1
    if (deg + 1) ** 2 != num_coeffs or not 0 <= deg <= MAX_SH_DEGREE:
        raise SplatkitError(f"{num_coeffs} SH coefficients is not (degree + 1)**2 for a degree <= {MAX_SH_DEGREE}")
    return deg


def sh_colors(sh0: Tensor, shN: Tensor, dirs: Tensor) -> Tensor:
    """Colour the splat renderer shows: ``clamp(SH(dir) . [sh0, shN] + 0.5, min=0)``.

    ``sh0 [N, 1, 3]``, ``shN [N, K-1, 3]``; ``dirs`` broadcastable to ``[..., N, 3]``.
    """
    if sh0.dim() != 3 or tuple(sh0.shape[1:]) != (1, 3) or shN.dim() != 3 or shN.shape[0] != sh0.shape[0] \
            or shN.shape[2] != 3:
        raise SplatkitError(f"sh0 must be [N, 1, 3] and shN [N, K-1, 3], got {list(sh0.shape)}, {list(shN.shape)}")
    if dirs.shape[-1] != 3:
        raise SplatkitError(f"dirs must be [..., 3], got {list(dirs.shape)}")
    coeffs = torch.cat((sh0, shN), dim=1)
    return (eval_sh(_degree_of(coeffs.shape[1]), dirs, coeffs) + 0.5).clamp_min(0.0)


FieldFn = Callable[[Tensor, Tensor], Tensor]


@torch.no_grad()
def bake_to_sh(field: FieldFn, means: Tensor, degree: int = 3, num_dirs: int = 128,
               dirs: Optional[Tensor] = None, chunk_size: int = 2048) -> BakedSH:
    """Least-squares SH coefficients reproducing ``field(means, dirs)`` per Gaussian.

    ``field`` is called as ``field(means [n, 3], dirs [M, n, 3]) -> [M, n, 3]`` (a
    :class:`ColorField` or any function of that form). Directions are ``dirs [M, 3]`` if given
    (e.g. a hemisphere from :func:`fibonacci_sphere`), else ``num_dirs`` Fibonacci-sphere points.
    Because the basis matrix ``B [M, K]`` is the same for every Gaussian, one pseudo-inverse
    solves all fits: ``coeffs = pinv(B) (colour - 0.5)``. Returns ``BakedSH(sh0, shN, rms)``.
    Peak memory is about ``chunk_size * M * hidden_dim`` floats (the field's MLP activations).
    """
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise SplatkitError(f"bake degree must be in [0, {MAX_SH_DEGREE}], got {degree}")
    if means.dim() != 2 or means.shape[1] != 3:
        raise SplatkitError(f"means must be [N, 3], got {list(means.shape)}")
    if chunk_size < 1:
        raise SplatkitError(f"chunk_size must be >= 1, got {chunk_size}")
    K = num_sh_bases(degree)
    if dirs is None:
        dirs = fibonacci_sphere(num_dirs, device=means.device, dtype=torch.float64)
    elif dirs.dim() != 2 or dirs.shape[1] != 3:
        raise SplatkitError(f"bake dirs must be [M, 3], got {list(dirs.shape)}")
    dirs = dirs.to(means.device, torch.float64)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    if dirs.shape[0] < K:
        raise SplatkitError(f"a degree-{degree} bake needs at least {K} directions, got {dirs.shape[0]}")
    B = sh_basis(degree, dirs)  # [M, K], float64 for a well-conditioned solve
    if int(torch.linalg.matrix_rank(B)) < K:
        raise SplatkitError(f"the {dirs.shape[0]} bake directions do not determine {K} SH coefficients")
    P = torch.linalg.pinv(B)  # [K, M]
    n = means.shape[0]
    coeffs = torch.empty(n, K, 3, dtype=means.dtype, device=means.device)
    sq_err, count = 0.0, 0
    dirs_f = dirs.to(means.dtype)
    for s in range(0, n, chunk_size):
        m = means[s:s + chunk_size]
        target = field(m, dirs_f[:, None, :].expand(-1, m.shape[0], 3))  # [M, n, 3]
        if tuple(target.shape) != (dirs.shape[0], m.shape[0], 3):
            raise SplatkitError(f"field returned {list(target.shape)}, expected {[dirs.shape[0], m.shape[0], 3]}")
        target = target.to(torch.float64)
        c = torch.einsum("km,mnc->nkc", P, target - 0.5)
        rendered = (torch.einsum("mk,nkc->mnc", B, c) + 0.5).clamp_min(0.0)
        sq_err += float((rendered - target).square().sum())
        count += target.numel()
        coeffs[s:s + chunk_size] = c.to(means.dtype)
    rms = math.sqrt(sq_err / count) if count else 0.0
    return BakedSH(coeffs[:, :1].contiguous(), coeffs[:, 1:].contiguous(), rms)


# Compact-3DGS colour-field optimiser: Adam(lr 1e-2, eps 1e-15), LinearLR warm-up from 0.01x over
# 100 steps, then x0.33 at steps 5k, 15k and 25k (of 30k; TrainConfig scales them to the run).
FIELD_WARMUP_START = 0.01
FIELD_LR_GAMMA = 0.33


# -- the colour field --------------------------------------------------------------------------------
def color_field_to_dict(field) -> dict[str, Any]:
    """A :class:`~splatkit.models.color_field.ColorField`'s config as JSON values."""
    return dataclasses.asdict(field.config)


def color_field_from_dict(config: dict, tensors: Optional[dict] = None):
    """Rebuild a ``ColorField`` from :func:`color_field_to_dict` output (extra keys such as
    ``quantize_8bit`` are ignored) and, when given, its state dict ``tensors`` (arrays or tensors)."""
    try:
        grid = HashGridConfig(**config["grid"])
        known = {f.name for f in dataclasses.fields(ColorFieldConfig)} - {"grid"}
        cfg = ColorFieldConfig(grid=grid, **{k: v for k, v in config.items() if k in known})
        grid.validate()
        if tensors is not None:
            # Sizes from (untrusted) configs are checked against the tensors before allocating.
            table_rows = sum(min((r + 1) ** 3, 2 ** grid.log2_hashmap_size) for r in grid.resolutions())
            want = {"grid.table": (table_rows, grid.n_features_per_level),
                    "pos_in.weight": (cfg.hidden_dim, grid.n_levels * grid.n_features_per_level)}
            if any(tuple(np.shape(tensors.get(k, ()))) != shape for k, shape in want.items()):
                raise SplatkitError("colour-field tensors do not match its config")
        field = ColorField(cfg)
    except (KeyError, TypeError, ValueError) as exc:
        raise SplatkitError(f"invalid colour-field config ({type(exc).__name__}: {exc})") from None
    if tensors is not None:
        state = {k: torch.as_tensor(np.asarray(v, dtype=np.float32)) if not isinstance(v, Tensor) else v.float()
                 for k, v in tensors.items()}
        own = field.state_dict()
        if set(state) != set(own) or any(tuple(state[k].shape) != tuple(own[k].shape) for k in own):
            raise SplatkitError("colour-field tensors do not match its config")
        field.load_state_dict(state)
    return field


def color_field_lr_factor(step: int, warmup: int, milestones, gamma: float = FIELD_LR_GAMMA) -> float:
    """Compact-3DGS' colour-field LR multiplier at 0-based ``step``: linear warm-up from 0.01 over
    ``warmup`` steps times ``gamma`` per milestone passed."""
    warm = 1.0 if warmup <= 0 else FIELD_WARMUP_START + (1.0 - FIELD_WARMUP_START) * min(step, warmup) / warmup
    return warm * gamma ** sum(step >= m for m in milestones)


def view_hemisphere_axis(centers, min_cos: float = 0.2) -> Optional[list[float]]:
    """The mean viewing direction (camera centre -> origin, where readers put the object) when
    every camera looks within ``acos(min_cos)`` (~78 deg, room for parallax) of it, else None.
    Baking a colour field to SH over that hemisphere fits the directions the scene was seen
    from instead of spending the few SH coefficients on directions no camera saw."""
    c = torch.as_tensor(np.asarray(centers, dtype=np.float64))
    if c.numel() == 0:
        return None
    d = torch.nn.functional.normalize(-c, dim=1)
    axis = d.mean(dim=0)
    if axis.norm() < 1e-6:
        return None
    axis = axis / axis.norm()
    return axis.tolist() if float((d @ axis).min()) >= min_cos else None
