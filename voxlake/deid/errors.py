"""De-identification errors (part of the :class:`voxlake.VoxlakeError` tree)."""

from __future__ import annotations

from voxlake.errors import VoxlakeError

__all__ = ["DeidentificationError"]


class DeidentificationError(VoxlakeError):
    """De-identification cannot proceed (no secret, an unsupported object); the message says how to
    fix it. One bad file in a batch is reported, not raised."""
