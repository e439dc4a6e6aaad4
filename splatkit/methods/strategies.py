"""Densification strategies as objects, as gsplat has them: chosen by ``--strategy NAME``.

* ``default``: gsplat's ``DefaultStrategy`` (3DGS's clone / split / prune from screen-space
  gradients), with 3DGS's opacity reset done here since gsplat 1.5.3's never fires.
* ``mcmc``: 3DGS-MCMC (Kheradmand et al., NeurIPS 2024) through gsplat's ``MCMCStrategy``:
  dead Gaussians are relocated onto live ones, 5% more are added per refinement up to
  ``cap_max``, and positions get opacity-gated noise; its loss adds opacity and scale
  regularisers (0.01 each, the paper's and gsplat's values). gsplat computes the relocation
  (Eq. 9 of the paper) and the noise's covariances with CUDA kernels only, so on CPU tensors the
  same maths runs in PyTorch here (:func:`relocation_torch`, tested against the formula).

Each strategy object takes ``(params, optimizers, state)`` as gsplat's do and keeps its state in a
dict that checkpoints carry, so a strategy is one class and one registry entry.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from splatkit.errors import SplatkitError


class Strategy:
    """What the 3DGS method asks of a strategy (gsplat's ``Strategy`` plus a loss and its state)."""

    name: ClassVar[str] = ""

    def initialize_state(self, scene_scale: float) -> dict[str, Any]:
        return {}

    def check_sanity(self, params, optimizers) -> None:
        pass

    def step_pre_backward(self, params, optimizers, state, step: int, info: dict) -> None:
        pass

    def step_post_backward(self, params, optimizers, state, step: int, info: dict, lr: float) -> None:
        pass

    def loss_terms(self, params) -> dict[str, Tensor]:
        return {}


class DefaultStrategy(Strategy):
    """gsplat's ``DefaultStrategy`` with the config's schedule, plus 3DGS's opacity reset."""

    name = "default"

    def __init__(self, config):
        from gsplat.strategy import DefaultStrategy as GsplatDefault

        self.config = config
        self.inner = GsplatDefault(
            prune_opa=config.prune_opa, grow_grad2d=config.grow_grad2d, grow_scale3d=config.grow_scale3d,
            prune_scale3d=config.prune_scale3d, refine_start_iter=config.refine_start_iter,
            refine_stop_iter=config.refine_stop_iter, reset_every=config.reset_every,
            refine_every=config.refine_every, pause_refine_after_reset=config.pause_refine_after_reset,
            absgrad=config.absgrad, verbose=False)

    def initialize_state(self, scene_scale: float) -> dict[str, Any]:
        return self.inner.initialize_state(scene_scale=scene_scale)

    def check_sanity(self, params, optimizers) -> None:
        self.inner.check_sanity(params, optimizers)

    def step_pre_backward(self, params, optimizers, state, step, info) -> None:
        self.inner.step_pre_backward(params, optimizers, state, step, info)

    def step_post_backward(self, params, optimizers, state, step, info, lr) -> None:
        self.inner.step_post_backward(params, optimizers, state, step, info, packed=False)
        # gsplat 1.5.3's DefaultStrategy tests ``step % reset_every == 0 & step > 0``, which Python
        # parses as ``step % reset_every == 0 > 0`` (always False), so its opacity reset never runs.
        # Do it here as 3DGS does; reset_opa clamps, so it stays correct if gsplat fixes its test.
        from gsplat.strategy.ops import reset_opa

        cfg = self.config
        if 0 < step < cfg.refine_stop_iter and step % cfg.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=cfg.prune_opa * 2.0)


def refines_at(config, step: int) -> bool:
    """gsplat DefaultStrategy's refinement test: whether 0-based ``step`` is a densification step."""
    return (config.refine_start_iter < step < config.refine_stop_iter and step % config.refine_every == 0
            and step % config.reset_every >= config.pause_refine_after_reset)


# 3DGS-MCMC (gsplat's MCMCStrategy and simple_trainer's MCMC settings): the binomial table covers
# up to 51 copies of one Gaussian in Eq. 9; the noise is gated by a steep sigmoid of opacity.
MCMC_N_MAX = 51
MCMC_NOISE_K = 100.0
MCMC_NOISE_X0 = 0.995


def binomial_table(n_max: int = MCMC_N_MAX) -> Tensor:
    table = torch.zeros(n_max, n_max)
    for n in range(n_max):
        for k in range(n + 1):
            table[n, k] = math.comb(n, k)
    return table


def relocation_torch(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> tuple[Tensor, Tensor]:
    """Eq. 9 of 3DGS-MCMC, as gsplat's ``relocation`` CUDA kernel computes it: a Gaussian split
    into ``n`` copies keeps its rendered footprint when each copy has opacity
    ``1 - (1 - o)^(1/n)`` and scales ``o / sum_{i=1..n} sum_{k<i} C(i-1,k) (-1)^k o_new^(k+1) / sqrt(k+1)``
    times the old ones."""
    n_max = binoms.shape[0]
    n = ratios.clamp(1, n_max).to(torch.int64)
    o = opacities.to(torch.float32)
    new_o = 1.0 - torch.pow(1.0 - o, 1.0 / n.to(torch.float32))
    # sum over i = 1..n and k = 0..i-1, as one masked sum over the (i, k) table.
    i = torch.arange(1, n_max + 1, device=o.device)
    k = torch.arange(0, n_max, device=o.device)
    coeff = binoms.to(o.device)[i - 1][:, k] * ((-1.0) ** k)[None, :] / torch.sqrt(k + 1.0)[None, :]  # [I, K]
    valid_ik = (k[None, :] <= (i[:, None] - 1)).to(o.dtype)  # [I, K]
    powers = new_o[:, None] ** (k[None, :] + 1.0)  # [N, K]
    per_i = powers @ (coeff * valid_ik).T  # [N, I]
    used = (i[None, :] <= n[:, None]).to(o.dtype)
    denom = (per_i * used).sum(dim=1)
    return new_o, (o / denom)[:, None] * scales


class MCMCStrategy(Strategy):
    """3DGS-MCMC: relocation, 5% growth per refinement up to ``cap_max``, and noise on positions
    scaled by the current position LR times ``noise_lr``. On CUDA tensors it is gsplat's own
    ``MCMCStrategy``; on CPU the relocation and the noise's covariances run in PyTorch."""

    name = "mcmc"

    def __init__(self, config):
        from gsplat.strategy import MCMCStrategy as GsplatMCMC

        self.config = config
        self.inner = GsplatMCMC(cap_max=config.cap_max, noise_lr=config.mcmc_noise_lr,
                                refine_start_iter=config.refine_start_iter, refine_stop_iter=config.refine_stop_iter,
                                refine_every=config.refine_every, min_opacity=config.mcmc_min_opacity, verbose=False)
        self._binoms = binomial_table()

    def check_sanity(self, params, optimizers) -> None:
        self.inner.check_sanity(params, optimizers)

    def step_post_backward(self, params, optimizers, state, step, info, lr) -> None:
        # The binomial table is a constant, not per-Gaussian state: in the state dict gsplat's
        # remove() (learnable masks' pruning) would index it by Gaussian.
        binoms = self._binoms.to(params["means"].device)
        if params["means"].is_cuda:
            self.inner.step_post_backward(params, optimizers, {"binoms": binoms}, step, info, lr=lr)
            return
        s = self.inner
        if s.refine_start_iter < step < s.refine_stop_iter and step % s.refine_every == 0:
            self._relocate(params, optimizers, binoms)
            self._add(params, optimizers, binoms)
        self._inject_noise(params, lr * s.noise_lr)

    def loss_terms(self, params) -> dict[str, Tensor]:
        cfg = self.config
        out = {}
        if cfg.mcmc_opacity_reg > 0:
            out["opacity_reg"] = cfg.mcmc_opacity_reg * torch.sigmoid(params["opacities"]).abs().mean()
        if cfg.mcmc_scale_reg > 0:
            out["scale_reg"] = cfg.mcmc_scale_reg * torch.exp(params["scales"]).abs().mean()
        return out

    # -- the CPU path: gsplat's ops with the CUDA-only pieces replaced ------------------------------
    @torch.no_grad()
    def _relocate(self, params, optimizers, binoms) -> int:
        """Dead Gaussians (opacity <= min_opacity) become copies of live ones, drawn by opacity."""
        from gsplat.strategy.ops import _multinomial_sample

        opacities = torch.sigmoid(params["opacities"])
        dead = opacities <= self.inner.min_opacity
        alive_idx = (~dead).nonzero(as_tuple=True)[0]
        n = int(dead.sum())
        if n == 0 or len(alive_idx) == 0:
            return 0
        sampled = alive_idx[_multinomial_sample(opacities[alive_idx], n, replacement=True)]
        self._copy(params, optimizers, sampled, binoms, into=dead.nonzero(as_tuple=True)[0])
        return n

    @torch.no_grad()
    def _add(self, params, optimizers, binoms) -> int:
        """5% more Gaussians (up to cap_max), copies of existing ones drawn by opacity."""
        from gsplat.strategy.ops import _multinomial_sample

        current = len(params["means"])
        n = max(0, min(self.inner.cap_max, int(1.05 * current)) - current)
        if n > 0:
            sampled = _multinomial_sample(torch.sigmoid(params["opacities"]), n, replacement=True)
            self._copy(params, optimizers, sampled, binoms, into=None)
        return n

    def _copy(self, params, optimizers, sampled: Tensor, binoms: Tensor, into: Optional[Tensor]) -> None:
        """Split each ``sampled`` Gaussian into itself plus a copy per draw (Eq. 9), the copies
        written over ``into`` (relocation) or appended (growth); their optimiser state restarts."""
        from gsplat.strategy.ops import _update_param_with_optimizer

        opacities = torch.sigmoid(params["opacities"])
        new_o, new_s = relocation_torch(opacities[sampled], torch.exp(params["scales"])[sampled],
                                        torch.bincount(sampled)[sampled] + 1, binoms)
        new_o = new_o.clamp(min=self.inner.min_opacity, max=1.0 - torch.finfo(torch.float32).eps)

        def param_fn(name: str, p: Tensor) -> Tensor:
            if name == "opacities":
                p[sampled] = torch.logit(new_o)
            elif name == "scales":
                p[sampled] = torch.log(new_s)
            if into is None:
                return torch.nn.Parameter(torch.cat([p, p[sampled]]), requires_grad=p.requires_grad)
            p[into] = p[sampled]
            return torch.nn.Parameter(p, requires_grad=p.requires_grad)

        def optimizer_fn(key: str, v: Tensor) -> Tensor:
            if into is None:
                return torch.cat([v, torch.zeros((len(sampled), *v.shape[1:]), device=v.device, dtype=v.dtype)])
            v[sampled] = 0
            return v

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers)

    @torch.no_grad()
    def _inject_noise(self, params, scaler: float) -> None:
        from splatkit.render.torch_impl import quat_scale_to_covar

        opacities = torch.sigmoid(params["opacities"].flatten())
        covars = quat_scale_to_covar(params["quats"], torch.exp(params["scales"]))
        gate = 1.0 / (1.0 + torch.exp(-MCMC_NOISE_K * ((1.0 - opacities) - MCMC_NOISE_X0)))
        noise = torch.randn_like(params["means"]) * gate[:, None] * scaler
        params["means"].add_(torch.einsum("bij,bj->bi", covars, noise))


STRATEGIES: dict[str, type[Strategy]] = {"default": DefaultStrategy, "mcmc": MCMCStrategy}


def make_strategy(config) -> Optional[Strategy]:
    """The config's strategy, or None when ``densify`` is off."""
    if not config.densify:
        return None
    if config.strategy not in STRATEGIES:
        raise SplatkitError(f"unknown strategy {config.strategy!r}; choose from {', '.join(STRATEGIES)}")
    return STRATEGIES[config.strategy](config)
