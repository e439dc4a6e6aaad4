"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

# The tiny synthetic scene trainer-level tests run on (a module may define its own ``scene_dir``).
TINY_W, TINY_H, TINY_VIEWS = 48, 36, 10


@pytest.fixture(scope="session")
def scene_dir(tmp_path_factory) -> Path:
    """A 48x36, 10-view synthetic scene, written once per test session."""
    from splatkit.data.synthetic import write_synthetic_scene

    return write_synthetic_scene(tmp_path_factory.mktemp("data") / "syn", seed=0, width=TINY_W, height=TINY_H,
                                 n_views=TINY_VIEWS)
