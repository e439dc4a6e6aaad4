"""One error type for every problem caused by the user's input.

The CLI turns a :class:`SplatkitError` into a one-line message and exit status 2; anything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class SplatkitError(Exception):
    """A problem with the user's input (a file, a folder, an option), reported in one line."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.message = message
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)


class DataError(SplatkitError):
    """A dataset folder or file that cannot be read or is inconsistent."""
