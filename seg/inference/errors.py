"""The inference layer's error type (its own module, so that the engines and the bundle share it)."""

from __future__ import annotations

from seg.errors import SegError


class BundleError(SegError, ValueError):
    """A model bundle or checkpoint cannot be used; the message is one line naming the file."""
