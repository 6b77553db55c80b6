"""``DataError``: a problem with the user's data, named in one line (missing file, not UTF-8, too short...)."""
from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A problem with the user's data (missing file, not UTF-8, too short...); the CLI prints it as one line."""
