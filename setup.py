"""Package layout; everything else is in pyproject.toml.

The presets, protocol split files and C++ sources stay in the checkout's configs/, data/splits/
and cuda/cpu/, and are installed inside the package (splatkit/_configs, _splits, _cpu_sources),
where splatkit.resources finds them. packages.find cannot see mapped folders, hence this file.
"""

from setuptools import find_packages, setup

DATA_PACKAGES = {
    "splatkit._configs": "configs",
    "splatkit._splits": "data/splits",
    "splatkit._cpu_sources": "cuda/cpu",
}

setup(
    packages=find_packages(include=["splatkit", "splatkit.*"]) + list(DATA_PACKAGES),
    package_dir=DATA_PACKAGES,
    package_data={
        "splatkit": ["py.typed"],
        "splatkit.priors.repair": ["weights/*.safetensors", "weights/*.json"],  # the `ours` repair model's base weights
        "splatkit._configs": ["*.json"],
        "splatkit._splits": ["*.json"],
        "splatkit._cpu_sources": ["*.cpp", "*.h"],
    },
)
