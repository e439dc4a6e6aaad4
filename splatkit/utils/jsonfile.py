"""Reading the JSON objects users hand us (presets, saved configs) with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

from splatkit.errors import SplatkitError


def read_json_object(path: str | Path, what: str = "JSON file") -> dict:
    """The file's top-level JSON object; :class:`SplatkitError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SplatkitError(f"{what} not found", path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SplatkitError(f"{what} is not valid JSON ({exc})", path)
    if not isinstance(raw, dict):
        raise SplatkitError(f"{what} is not a JSON object", path)
    return raw
