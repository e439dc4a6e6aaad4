"""Reading checkpoint files: one place for the errors a missing, corrupt or foreign file gets."""

from __future__ import annotations

from pathlib import Path
from typing import Union

import torch

from splatkit.errors import SplatkitError


def read_payload(path: Union[str, Path], map_location="cpu") -> dict:
    """A checkpoint file's payload, with clear errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise SplatkitError("checkpoint not found", path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:
        raise SplatkitError(f"not a readable checkpoint ({type(exc).__name__})", path)
    if not isinstance(payload, dict) or not isinstance(payload.get("splatkit"), dict):
        raise SplatkitError("not a splatkit checkpoint", path)
    return payload
