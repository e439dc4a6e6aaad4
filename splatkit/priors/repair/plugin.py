"""The ``diffusion_repair`` plugin: GaussianObject's repair stage inside one splatkit run.

Until ``start`` (a fraction of the run) the run trains as it would without the plugin: that is
GaussianObject's coarse model. At ``start`` the plugin generates the scene's pairs
(:mod:`.pairs`), fine-tunes the repair model on them (:mod:`.base`: ``ours`` or ``controlnet``)
and renders + repairs ``refresh_size`` pseudo views sampled between the training cameras
(:mod:`.views`); they are re-rendered and re-repaired every ``refresh_every`` steps. Each step then
also renders one pseudo view and adds its loss against the repaired image, and the two losses are
mixed as GaussianObject mixes them (``gaussian_object_system.py``)::

    loss = photometric x (1 - r) + r x w_dist x (0.5 L1 + 0.5 L2 + lambda_dssim D-SSIM)

with ``r`` ramping linearly from 1.0 to 0.5 over the first ``ctrl_fraction`` of the repair phase
(``ctrl_steps`` 2800 of GaussianObject's 4000) and 0 after it: a final stretch on the real views
only. GaussianObject's third pseudo-view term is LPIPS (weight 2.0); its VGG backbone needs
torchvision, which splatkit does not depend on, so a D-SSIM term stands in for it.

That mix takes the real views' weight to 0 when the repair phase begins and leaves them half of it
at most until the final stretch: right with a repair model that knows more than the scene (Stable
Diffusion), a cost with one that barely changes a render. ``mix="additive"`` (ours) keeps the
photometric loss at full weight and adds ``r x w_dist x term`` to it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from splatkit.errors import SplatkitError
from splatkit.methods.base import Batch, Plugin, RenderOutputs, TrainState
from splatkit.methods.losses import ssim_loss
from splatkit.methods.plugins import in_range, register_plugin
from splatkit.priors.repair.base import load_repair_model
from splatkit.priors.repair.pairs import generate_pairs
from splatkit.priors.repair.views import SPREAD, camera_tensors, sample_pseudo_views

# configs/gaussian-object.yaml: refresh_interval 200, refresh_size (loo.py) 20.
REFRESH_EVERY = 200
REFRESH_SIZE = 20
# gaussian_object_system.py: ctrl_loss_ratio_begin 1.0, _final 0.5; ctrl_steps 2800 of 4000 steps.
RATIO_BEGIN = 1.0
RATIO_FINAL = 0.5
CTRL_FRACTION = 2800 / 4000
# gaussian_object_system.py: denoise strength uniform in [min_strength 0.1, max_strength 1.0].
MIN_STRENGTH = 0.1
MAX_STRENGTH = 1.0
# configs/gaussian-object.yaml loss: lambda_l1 0.5, lambda_l2 0.5.
LAMBDA_L1 = 0.5
LAMBDA_L2 = 0.5
# Stand-in for LPIPS (module doc): 3DGS's D-SSIM weight.
LAMBDA_DSSIM = 0.2
MIXES = ("gaussian_object", "additive")


@register_plugin
class DiffusionRepair(Plugin):
    """GaussianObject's Gaussian repair as a sparse-view prior (module doc)."""

    name = "diffusion_repair"
    applies_to = ("3dgs",)

    @dataclass
    class Config:
        model: str = "ours"
        """Repair model: 'ours' (shipped weights), 'ours:PATH', or 'controlnet' (diffusers; needs
        base_model and controlnet, local folders or Hugging Face cache, never downloaded)."""
        base_model: Optional[str] = None
        """controlnet: a Stable Diffusion 1.5-class model (folder or repo id in the HF cache)."""
        controlnet: Optional[str] = None
        """controlnet: the ControlNet (GaussianObject: lllyasviel/control_v11f1e_sd15_tile)."""
        prompt: Optional[str] = None
        """controlnet: the prompt (default GaussianObject's rare-token prompt)."""
        resolution: Optional[int] = None
        """controlnet: short side the renders are scaled to for the network (SD 1.5: 512); None keeps it."""
        inference_steps: int = in_range(20, 1)
        """controlnet: DDIM steps of a full denoise (GaussianObject: 50)."""
        start: float = in_range(0.5, 0.0, 1.0, hi_open=True)
        """Fraction of the run trained before the repair phase (the coarse model)."""
        ctrl_fraction: float = in_range(CTRL_FRACTION, 0.0, 1.0, lo_open=True)
        """Part of the repair phase with pseudo views; the rest trains on the real views only."""
        ratio_begin: float = in_range(RATIO_BEGIN, 0.0, 1.0)
        ratio_final: float = in_range(RATIO_FINAL, 0.0, 1.0)
        refresh_every: int = in_range(REFRESH_EVERY, 1)
        refresh_size: int = in_range(REFRESH_SIZE, 1)
        spread: float = in_range(SPREAD, 0.0, 1.0, lo_open=True)
        """How far from the midpoint between two cameras a pseudo view may lie (fraction of half the gap)."""
        min_strength: float = in_range(MIN_STRENGTH, 0.0, 1.0, lo_open=True)
        max_strength: float = in_range(MAX_STRENGTH, 0.0, 1.0, lo_open=True)
        lambda_l1: float = in_range(LAMBDA_L1)
        lambda_l2: float = in_range(LAMBDA_L2)
        lambda_dssim: float = in_range(LAMBDA_DSSIM)
        loo_steps: int = in_range(300, 0)
        """Steps of each leave-one-out fit (0: no leave-one-out pairs; noise from default statistics)."""
        noise_draws: int = in_range(4, 0)
        """Noisy-Gaussian renders per training view."""
        tune_steps: int = in_range(300, 0)
        """Fine-tuning steps of the repair model on the scene's pairs."""
        mix: str = "gaussian_object"
        """How the pseudo-view loss joins the photometric one: 'gaussian_object' (real x (1 - r) +
        pseudo x r) or 'additive' (real + pseudo x r; module doc)."""

    def setup(self, state: TrainState) -> None:
        cfg, s = state.config, self.settings
        if s.mix not in MIXES:
            raise SplatkitError(f"plugins.{self.name}.mix must be one of {', '.join(MIXES)}, got {s.mix!r}")
        if s.min_strength > s.max_strength:
            raise SplatkitError(f"plugins.{self.name}: min_strength {s.min_strength} > max_strength {s.max_strength}")
        if len(state.scene) < 2:
            raise SplatkitError(f"{self.name} needs at least two training views")
        self.state = state
        self.start_step = int(round(s.start * cfg.steps))
        phase = cfg.steps - self.start_step
        self.ctrl_end = self.start_step + max(1, int(round(s.ctrl_fraction * phase)))
        # Own streams: the plugin never moves the trainer's RNG (exact resume).
        self.generator = torch.Generator().manual_seed(int(cfg.seed) + 7919)
        self.rng = np.random.default_rng(int(cfg.seed) + 7919)
        self.model = None
        self.tuned = False
        self.report: dict = {}
        self.pseudo: Optional[dict] = None  # cameras (tensors), repaired images (uint8), weights
        self._bg: Optional[torch.Tensor] = None

    # -- schedule -------------------------------------------------------------------------------
    def ratio(self, step: int) -> float:
        """GaussianObject's ``ctrl_loss_ratio`` at 0-based ``step``: 0 outside the pseudo-view part."""
        if step < self.start_step or step >= self.ctrl_end:
            return 0.0
        s = self.settings
        t = (step - self.start_step) / max(1, self.ctrl_end - self.start_step)
        return s.ratio_begin + (s.ratio_final - s.ratio_begin) * t

    def _say(self, msg: str) -> None:
        say = getattr(self.state, "say", None)
        if say is not None:
            say(f"{self.name}: {msg}")

    def _background(self) -> torch.Tensor:
        """The pseudo views' background, made once (it is read at every step of the repair phase)."""
        if self._bg is None:
            from splatkit.methods.scoring import background_for

            # A random training background has no single colour for pseudo views: black then.
            self._bg = (torch.zeros(3, device=self.state.device) if self.config.background == "random"
                        else torch.from_numpy(background_for(self.config)).float().to(self.state.device))
        return self._bg

    def _load_model(self):
        s = self.settings
        options = {}
        if s.model == "controlnet":
            options = {"base_model": s.base_model, "controlnet": s.controlnet, "resolution": s.resolution,
                       "num_inference_steps": s.inference_steps, "seed": int(self.config.seed)}
            if s.prompt is not None:
                options["prompt"] = s.prompt
        return load_repair_model(s.model, device=self.state.device, **options)

    # -- the repair phase -------------------------------------------------------------------------
    def _tune(self, step: int) -> None:
        s, st = self.settings, self.state
        if self.model is None:
            self.model = self._load_model()
        if s.tune_steps == 0:  # the model as loaded (ours: the pretrained base): no pairs needed
            self._say(f"using {self.model.name} as loaded (tune_steps 0)")
            self.report = {"pairs": {}, "pair_seconds": 0.0, "tune_seconds": 0.0, "tune": {}, "at_step": step}
            self.tuned = True
            return
        t0 = time.perf_counter()
        pairs, report = generate_pairs(st.method, st.scene, self.config, background=self._background(),
                                       scene_scale=st.scene_scale, loo_steps=s.loo_steps, noise_draws=s.noise_draws,
                                       seed=int(self.config.seed) + 17, say=self._say)
        self._say(f"{len(pairs)} pairs {pairs.counts()} in {time.perf_counter() - t0:.0f} s; "
                  f"fine-tuning {self.model.name} for {s.tune_steps} steps")
        t1 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):
            stats = self.model.fine_tune(pairs, steps=s.tune_steps, seed=int(self.config.seed) + 29)
        self.report = {"pairs": pairs.counts(), "pair_seconds": t1 - t0,
                       "tune_seconds": time.perf_counter() - t1, "tune": {k: float(v) for k, v in stats.items()},
                       "at_step": step}
        self.tuned = True

    def _refresh(self, step: int) -> None:
        """Sample pseudo views, render them with the current model and repair the renders."""
        s, st = self.settings, self.state
        views = sample_pseudo_views(st.scene.cameras, s.refresh_size, self.rng, s.spread)
        viewmats, Ks = camera_tensors(views.cameras, st.device)
        bg = self._background()
        W, H = int(views.cameras.widths[0]), int(views.cameras.heights[0])
        repaired, renders = [], []
        t0 = time.perf_counter()
        for v in range(len(views)):
            with torch.no_grad():
                render = st.method.render(viewmats[[v]], Ks[[v]], W, H, bg.view(1, 3), with_depth=False).colors
            renders.append(render[0].clamp(0, 1).cpu())
            strength = s.min_strength + (s.max_strength - s.min_strength) * float(torch.rand((), generator=self.generator))
            with torch.random.fork_rng(devices=[]):
                out = self.model.repair(render.clamp(0, 1), strength=strength, generator=self.generator)
            repaired.append((out[0].clamp(0, 1) * 255).round().to(torch.uint8).cpu())
        self.pseudo = {"viewmats": viewmats.cpu(), "Ks": Ks.cpu(), "width": W, "height": H,
                       "images": torch.stack(repaired), "weights": torch.from_numpy(views.weights)}
        self.report.setdefault("repair_seconds_per_view", []).append((time.perf_counter() - t0) / len(views))
        self._say(f"step {step}: {len(views)} pseudo views repaired ({(time.perf_counter() - t0) / len(views):.2f} s each)")
        self._write_picture(step, renders, self.pseudo["images"])
        if self.state.run_dir is not None:
            import json

            from splatkit.utils.atomic import write_text_atomic

            write_text_atomic(self.state.run_dir / "repair" / "report.json",
                              json.dumps({"model": self.model.name, **self.report}, indent=1))

    def _write_picture(self, step: int, renders: list, repaired: torch.Tensor, columns: int = 5) -> None:
        """``RUN/repair/step_NNNNNN.png``: renders before repair (top) over their repairs (bottom),
        for the first few pseudo views, so a user can see what the repair model does."""
        if self.state.run_dir is None:
            return
        from splatkit.data.imageio_utils import write_image

        k = min(columns, len(renders))
        top = torch.cat(renders[:k], dim=1)
        bottom = torch.cat([repaired[i].float() / 255.0 for i in range(k)], dim=1)
        write_image(self.state.run_dir / "repair" / f"step_{step:06d}.png", torch.cat([top, bottom], dim=0).numpy())

    def on_step_start(self, step: int, state: TrainState) -> None:
        if step < self.start_step or step >= self.ctrl_end:
            return
        if not self.tuned:
            self._tune(step)
        if self.pseudo is None or (step - self.start_step) % self.settings.refresh_every == 0:
            self._refresh(step)

    def photometric_weights(self, step: int, batch: Batch):
        r = self.ratio(step)
        return None if r == 0.0 or self.settings.mix == "additive" else 1.0 - r

    def loss(self, step: int, batch: Batch, outputs: RenderOutputs):
        r = self.ratio(step)
        if r == 0.0 or self.pseudo is None:
            return {}
        s, st, p = self.settings, self.state, self.pseudo
        v = int(torch.randint(len(p["images"]), (1,), generator=self.generator))
        dev = st.device
        render = st.method.render(p["viewmats"][[v]].to(dev), p["Ks"][[v]].to(dev), p["width"], p["height"],
                                  self._background().view(1, 3), with_depth=False, step=step).colors
        target = p["images"][[v]].to(dev, torch.float32) / 255.0
        term = s.lambda_l1 * (render - target).abs().mean() + s.lambda_l2 * ((render - target) ** 2).mean()
        if s.lambda_dssim > 0:
            term = term + s.lambda_dssim * ssim_loss(render, target)
        return r * float(p["weights"][v]) * term

    # -- checkpoints ----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "rng": self.rng.bit_generator.state, "tuned": self.tuned,
                "model": self.model.state_dict() if (self.model is not None and self.tuned) else None,
                "pseudo": self.pseudo, "report": self.report}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            return
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]
        self.tuned = bool(state.get("tuned"))
        self.pseudo = state.get("pseudo")
        self.report = state.get("report") or {}
        if self.tuned:
            self.model = self._load_model()
            self.model.load_state_dict(state.get("model") or {})

