"""CoR-GS (Zhang et al., ECCV 2024, "CoR-GS: Sparse-View 3D Gaussian Splatting via
Co-Regularization") as one plugin, ``co_reg``: two Gaussian fields trained together on the same
views, each regularising the other.

* The plugin owns the **second field**: a method of the run's own class with its own optimisers
  and densification strategy, trained on every step's batch (its own photometric loss, its own
  backward and optimiser step). Only the first field (the run's method) is evaluated and
  exported, as in CoR-GS's protocol (``train.py`` reports ``gs0``).
* **Co-pruning**: every ``prune_every`` of the run (after densification has started), a Gaussian
  of either field whose centre has no centre of the other field within ``prune_threshold`` is
  pruned (CoR-GS: open3d ``evaluate_registration`` with the identity, i.e. a nearest-neighbour
  search with a distance bound; both masks are computed before either field is pruned).
* **Pseudo-view co-regularisation**: both fields render a pseudo view near the training cameras
  and each is pulled towards the other's (detached) render by the photometric loss
  ``(1 - lambda) L1 + lambda D-SSIM``, weight 1, from ``start`` of the run to ``stop``.

Constants are those of the authors' code (``jiaw-z/CoR-GS``: ``train.py``, ``arguments/__init__.py``,
``scripts/run_dtu.sh``, ``scripts/run_llff.sh``), converted to fractions of the run and of the
camera distance where splatkit's frame and run lengths differ; each is named below. One
Two differences: the authors draw pseudo cameras uniformly in the box of the training cameras'
positions (FSGS' ``generate_random_poses_llff``); here, as the paper describes it, a pseudo camera
is interpolated between two training cameras (position and rotation) with Gaussian noise on the
position. And the authors start both fields from the same points; here the second field has its
own random initialisation by default (``independent_init``, see there).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Method, Plugin, RenderOutputs, TrainState, to_cpu
from splatkit.methods.losses import photometric_loss
from splatkit.methods.plugins import in_range, register_plugin

# CoR-GS train.py: ``loss_gs{i} += loss_photometric(pseudo_i, pseudo_j.detach()) / (gaussiansN - 1)``
# with 2 fields: weight 1 (its ``loss_scale`` warm-up is computed but never used).
COREG_WEIGHT = 1.0
# scripts/run_dtu.sh: ``--start_sample_pseudo 2000`` of ``--iterations 10000`` (LLFF: 500 of 10000).
PSEUDO_START_DTU = 2000 / 10000
PSEUDO_START_LLFF = 500 / 10000
# arguments/__init__.py: ``end_sample_pseudo = 10000``, the end of the 10000-step runs.
PSEUDO_STOP = 10000 / 10000
# train.py: co-pruning ``iteration > densify_from_iter and iteration % 500 == 0``, of 10000 steps.
PRUNE_EVERY = 500 / 10000
# scripts/run_dtu.sh: ``--coprune_threshold 10`` in DTU's world units (mm). Scan 65's three training
# cameras (ids 25, 22, 28) are 671 mm from the object's centre on average, so 10 mm is 0.015 of the
# camera's distance to the scene centre; splatkit states the threshold as that fraction.
PRUNE_THRESHOLD_DTU = 10 / 671
# scripts/run_llff.sh: ``--coprune_threshold 5`` in the COLMAP frame of LLFF; on fern that frame's
# training cameras are 3.88 units apart, 0.118 in splatkit's frame at 0.99 from the centre
# (see sparse_views.WARP_MAX_SHIFT), so 5 units are 0.15 of the camera's distance.
PRUNE_THRESHOLD_LLFF = 5 * 0.118 / 3.88 / 0.99
# Pseudo views: the paper interpolates between training cameras and adds noise; its scale is not
# given (the code samples a box instead, module doc). Our choice: noise of 0.1 x the pair's baseline.
PSEUDO_NOISE = 0.1
# The second field's own random streams (pseudo cameras), offset from the run's seed.
_SEED_OFFSET = 7919


# -- the pieces as plain functions (tested directly) ---------------------------------------------
def has_counterpart(points: torch.Tensor, others: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[N]`` bool: whether each of ``points [N, 3]`` has a point of ``others [M, 3]`` within
    ``threshold`` (CoR-GS' correspondence set of open3d's ``evaluate_registration``)."""
    from scipy.spatial import cKDTree

    if len(others) == 0 or len(points) == 0:
        return torch.zeros(len(points), dtype=torch.bool, device=points.device)
    tree = cKDTree(others.detach().cpu().double().numpy())
    dist, _ = tree.query(points.detach().cpu().double().numpy(), k=1, distance_upper_bound=threshold)
    return torch.from_numpy(np.isfinite(dist)).to(points.device)


def remove_gaussians(method: Method, drop: torch.Tensor) -> None:
    """Remove the Gaussians ``drop [N]`` from a 3DGS method: its parameters, their optimiser
    state and the strategy's per-Gaussian state (gsplat's ``ops.remove``)."""
    from gsplat.strategy.ops import remove

    splats = method.model.splats
    n = len(splats["means"])
    state = getattr(method, "strategy_state", None) or {}
    per_gaussian = {k: v for k, v in state.items() if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n}
    remove(params=splats, optimizers=method.optimizers, state=per_gaussian, mask=drop)
    state.update(per_gaussian)


def co_prune(method_a: Method, method_b: Method, threshold: float) -> tuple[int, int]:
    """CoR-GS co-pruning of two 3DGS methods: Gaussians without a counterpart in the other field
    within ``threshold`` go (both masks before either field changes). A field none of whose
    Gaussians has a counterpart is left as it is (an empty field cannot train). Returns the
    numbers removed."""
    a, b = method_a.model.splats["means"], method_b.model.splats["means"]
    keep_a, keep_b = has_counterpart(a, b, threshold), has_counterpart(b, a, threshold)
    removed = []
    for method, keep in ((method_a, keep_a), (method_b, keep_b)):
        if bool(keep.any()) and not bool(keep.all()):
            remove_gaussians(method, ~keep)
            removed.append(int((~keep).sum()))
        else:
            removed.append(0)
    return removed[0], removed[1]


def _rotation_power(R: torch.Tensor, u: float) -> torch.Tensor:
    """``R^u`` for a rotation ``R [3, 3]`` (same axis, ``u`` times the angle; Rodrigues)."""
    cos = ((torch.trace(R) - 1) / 2).clamp(-1.0, 1.0)
    theta = torch.arccos(cos)
    s = torch.sin(theta)
    if float(s) < 1e-6:  # no rotation (or a half turn, which training cameras never are)
        return torch.eye(3, dtype=R.dtype)
    axis = torch.stack([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * s)
    K = torch.zeros(3, 3, dtype=R.dtype)
    K[0, 1], K[0, 2], K[1, 2] = -axis[2], axis[1], -axis[0]
    K = K - K.T
    a = u * theta
    return torch.eye(3, dtype=R.dtype) + torch.sin(a) * K + (1 - torch.cos(a)) * (K @ K)


def interpolated_pseudo_camera(camtoworlds: torch.Tensor, generator: torch.Generator,
                               noise: float = PSEUDO_NOISE) -> tuple[torch.Tensor, int]:
    """A pseudo camera between two training cameras ``camtoworlds [N, 4, 4]`` (OpenCV axes): two
    distinct cameras drawn at random, a uniform fraction ``u`` of the way from the first to the
    second in position and in rotation, plus Gaussian noise of ``noise`` x their baseline on the
    position. Returns its camera-to-world matrix (float64) and the first camera's index (whose
    intrinsics and size the pseudo view takes)."""
    c2w = camtoworlds.detach().cpu().double()
    n = len(c2w)
    i = int(torch.randint(n, (1,), generator=generator))
    j = i if n == 1 else (i + 1 + int(torch.randint(n - 1, (1,), generator=generator))) % n
    u = float(torch.rand((), generator=generator))
    eps = torch.randn(3, generator=generator, dtype=torch.float64)
    Ri, Rj, ci, cj = c2w[i, :3, :3], c2w[j, :3, :3], c2w[i, :3, 3], c2w[j, :3, 3]
    baseline = float((cj - ci).norm()) if n > 1 else 0.1 * float(ci.norm())
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = Ri @ _rotation_power(Ri.T @ Rj, u)
    out[:3, 3] = (1 - u) * ci + u * cj + noise * baseline * eps
    return out, i


# -- the plugin ---------------------------------------------------------------------------------
@register_plugin
class CoRegularization(Plugin):
    """CoR-GS (module doc): a second field trained alongside the run's, co-pruning and
    pseudo-view co-regularisation. Defaults: the authors' DTU settings; for LLFF set ``start``
    0.05 and ``prune_threshold`` 0.15 (their LLFF script). Costs about twice a plain run."""

    name = "co_reg"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        weight: float = in_range(COREG_WEIGHT)
        """Weight of each field's pseudo-view term (CoR-GS: 1)."""
        start: float = in_range(PSEUDO_START_DTU, 0.0, 1.0)
        """First step of the pseudo-view term, as a fraction of the run (DTU 2000 / 10000; LLFF 0.05)."""
        stop: float = in_range(PSEUDO_STOP, 0.0, 1.0)
        """Last step of the pseudo-view term, as a fraction of the run (CoR-GS: to the end)."""
        pseudo_noise: float = in_range(PSEUDO_NOISE)
        """Noise on a pseudo camera's position, as a fraction of its two training cameras' baseline."""
        co_prune: bool = True
        prune_every: float = in_range(PRUNE_EVERY, 0.0, 1.0, lo_open=True)
        """Co-pruning interval as a fraction of the run (CoR-GS: every 500 of 10000 steps), from
        ``refine_start_iter`` on."""
        prune_threshold: float = in_range(PRUNE_THRESHOLD_DTU, 0.0, lo_open=True)
        """Largest distance to a counterpart, as a fraction of the training cameras' mean distance
        to the scene centre (CoR-GS DTU: 10 mm = 0.015; LLFF: 0.15)."""
        independent_init: bool = True
        """True: the second field has its own initialisation (seed + 1), so the fields disagree
        from the start. False, as CoR-GS' code: it starts as a copy of the first and the two part
        only through densification's random draws; in splatkit's short schedules, where
        densification adds a few hundred Gaussians at most (the ``sparse`` preset on DTU at 600
        steps: 10000 -> 10306 -> 9984), the copy stays nearly identical and co_reg does almost
        nothing."""

    def __init__(self, config, settings=None) -> None:
        super().__init__(config, settings)
        self.field2: Optional[Method] = None
        self._out2: Optional[RenderOutputs] = None
        self.pruned = [0, 0]  # Gaussians co-pruning removed from field 1, field 2 (this session)

    # -- set-up ---------------------------------------------------------------------------------
    def setup(self, state: TrainState) -> None:
        self.state = state
        if state.method.default_plugins():
            raise SplatkitError("co_reg cannot train a second field with Compact-3DGS' parts "
                                "(gaussian_masks, color_field, rvq): turn them off or drop co_reg")
        self.generator = torch.Generator().manual_seed(int(state.config.seed) + _SEED_OFFSET)
        self.camtoworlds = torch.linalg.inv(state.scene.cameras.viewmats("cpu").double())
        self.Ks = state.scene.cameras.intrinsics("cpu")
        self.sizes = [(int(w), int(h)) for w, h in zip(state.scene.cameras.widths, state.scene.cameras.heights)]
        distance = float(self.camtoworlds[:, :3, 3].norm(dim=1).mean())
        self.threshold = self.settings.prune_threshold * distance  # in the scene's (normalised) units
        steps = int(self.config.steps)
        self.prune_interval = max(1, int(round(self.settings.prune_every * steps)))
        self.pseudo_first = int(round(self.settings.start * steps))
        self.pseudo_last = int(round(self.settings.stop * steps))
        if not state.resumed:
            self.field2 = self._make_field2()

    def _make_field2(self, payload: Optional[dict] = None) -> Method:
        state, cfg = self.state, self.config
        if payload is None and self.settings.independent_init:
            cfg = copy.copy(cfg)
            cfg.seed = int(cfg.seed) + 1
        field = type(state.method)(cfg, state.device)
        if payload is None and not self.settings.independent_init:
            # A copy of the first field as initialised (its own tensors: to_cpu clones them).
            payload = to_cpu(state.method.checkpoint_payload(0, None))
        if payload is not None:
            field.restore(payload, scene_scale=state.scene_scale)
        else:
            field.initialize(state.scene, scene_scale=state.scene_scale)
        field.build_optimizers()
        return field

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(),
                "payload": to_cpu(self.field2.checkpoint_payload(self.state.step, None)),
                "training": self.field2.training_state()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            raise SplatkitError("co_reg: the checkpoint has no second field to resume (co_reg cannot be "
                                "added to a run on resume)")
        self.generator.set_state(state["generator"].cpu())
        self.field2 = self._make_field2(payload=state["payload"])
        self.field2.load_training_state(state["training"])

    def named_tensors(self) -> dict[str, torch.Tensor]:
        return {} if self.field2 is None else {f"co_reg.{k}": v for k, v in self.field2.named_tensors().items()}

    # -- a step ---------------------------------------------------------------------------------
    def pseudo_camera(self, device) -> tuple[torch.Tensor, torch.Tensor, int, int]:
        """``(viewmats [1, 4, 4], Ks [1, 3, 3], width, height)`` of a new pseudo view."""
        c2w, i = interpolated_pseudo_camera(self.camtoworlds, self.generator, self.settings.pseudo_noise)
        viewmat = torch.linalg.inv(c2w).float()[None].to(device)
        w, h = self.sizes[i]
        return viewmat, self.Ks[i][None].to(device), w, h

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        if batch.pixels is not None:
            raise SplatkitError(f"{self.name} needs whole rendered views, not a batch of rays")
        field2, lam = self.field2, float(self.config.ssim_lambda)
        # The second field's own step on the same views (its graph is separate from the first's).
        out2 = field2.render_train(step, batch, with_depth=False)
        field2.pre_backward(step, out2)
        loss2, _ = photometric_loss(out2.colors, batch.target, lam)
        for value in field2.loss_terms(step, batch, out2).values():
            loss2 = loss2 + value
        terms = {}
        if self.pseudo_first <= step < self.pseudo_last and self.settings.weight > 0:
            viewmats, Ks, w, h = self.pseudo_camera(outputs.colors.device)
            bg = batch.backgrounds[:1]
            r1 = self.state.method.render(viewmats, Ks, w, h, bg, with_depth=False, step=step).colors
            r2 = field2.render(viewmats, Ks, w, h, bg, with_depth=False, step=step).colors
            co1, _ = photometric_loss(r1, r2.detach(), lam)
            co2, _ = photometric_loss(r2, r1.detach(), lam)
            loss2 = loss2 + self.settings.weight * co2
            terms["pseudo"] = self.settings.weight * co1
        if not bool(torch.isfinite(loss2)):
            raise SplatkitError(f"co_reg: the second field's loss is {float(loss2)} at step {step + 1}")
        loss2.backward()
        self._out2 = out2
        return terms

    def log_values(self, step: int) -> dict[str, float]:
        return {"field2_primitives": self.field2.num_primitives, "co_pruned_1": self.pruned[0],
                "co_pruned_2": self.pruned[1]}

    def on_step_end(self, step: int, state: TrainState) -> None:
        if self._out2 is None:
            raise SplatkitError("co_reg: the second field was not rendered this step (its loss hook did not run)")
        self.field2.optimizer_step(step, self._out2)
        self._out2 = None
        done = step + 1
        if self.settings.co_prune and done > self.config.refine_start_iter and done % self.prune_interval == 0:
            with torch.no_grad():
                a, b = co_prune(state.method, self.field2, self.threshold)
            self.pruned[0] += a
            self.pruned[1] += b
