"""One error type for everything a user can get wrong.

The CLI and the KFP components print an ``AugPaintError`` as a single line
(``augpaint: error: <where>: <what>``) instead of a traceback.
"""
from __future__ import annotations


class AugPaintError(Exception):
    """A user-facing error: bad input, bad config or an unreachable service."""
