"""Diffusion repair (GaussianObject, Yang et al., SIGGRAPH Asia 2024) as a sparse-view prior:
pairs a scene generates (:mod:`.pairs`), pseudo views between its cameras (:mod:`.views`), repair
models behind one interface (:mod:`.base`; diffusers' ControlNet in :mod:`.diffusion`, our compact
network in :mod:`.unet`) and the ``diffusion_repair`` plugin (:mod:`.plugin`)."""

from splatkit.priors.repair import plugin  # noqa: F401  (registers diffusion_repair)
from splatkit.priors.repair.base import RepairModel, RepairPairs, load_repair_model

__all__ = ["RepairModel", "RepairPairs", "load_repair_model"]
