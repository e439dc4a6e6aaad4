"""Sparse-view priors: depth sources (files, monocular estimators) and the regularisers that use them.

Importing this package registers its regularisers with :mod:`splatkit.train.regularizers`.
"""

from splatkit.priors import depth_losses  # noqa: F401  (registers the depth regularisers)
from splatkit.priors import sparse_views  # noqa: F401  (opacity decay, warp consistency, dark backdrop)
from splatkit.priors import repair  # noqa: F401  (diffusion_repair: GaussianObject-style repair)
from splatkit.priors import co_regularization  # noqa: F401  (co_reg: CoR-GS, two fields trained together)
from splatkit.priors import floaters  # noqa: F401  (GaussianObject floater elimination)
from splatkit.priors import free_nerf  # noqa: F401  (FreeNeRF frequency + occlusion regularisation, NeRF)
