"""Scene representations: Gaussian splats (and, later, hash-grid NeRFs)."""

from splatkit.models.gaussians import GaussianModel

__all__ = ["GaussianModel"]
