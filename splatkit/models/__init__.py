"""Scene representations: Gaussian splats, the multiresolution hash grid and the neural colour
field built on it (and, later, hash-grid NeRFs)."""

from splatkit.models.color_field import ColorField, ColorFieldConfig, bake_to_sh
from splatkit.models.gaussians import GaussianModel
from splatkit.models.hashgrid import HashGrid, HashGridConfig, contract_to_unit_ball

__all__ = ["ColorField", "ColorFieldConfig", "GaussianModel", "HashGrid", "HashGridConfig", "bake_to_sh",
           "contract_to_unit_ball"]
