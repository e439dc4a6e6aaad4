"""splatkit: sparse-view 3D reconstruction with Gaussian splats and hash-grid NeRFs."""

__version__ = "0.1.0"

from splatkit.errors import SplatkitError

__all__ = ["SplatkitError", "__version__"]
