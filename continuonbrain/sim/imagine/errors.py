"""The one error of imagination."""

from __future__ import annotations


class ImagineError(RuntimeError):
    """Imagination cannot run: no model, no world model in it, no data, an env without a goal."""
