"""Errors of :mod:`voxlake.ai` about bad input, under voxlake's tree (:mod:`voxlake.errors`)::

    InvalidDicomError
    └── VolumeError        a series that cannot be made into one volume (tilt, gaps, mixed geometry...)
    InvalidArgumentError
    └── RulesError         a series-selection rules file with a bad field

Messages are one line naming the series (or the rules file and field) and the problem.
"""

from __future__ import annotations

from voxlake.errors import InvalidArgumentError, InvalidDicomError


class VolumeError(InvalidDicomError):
    """A series cannot be assembled into one regular volume; the message names the series and why."""


class RulesError(InvalidArgumentError):
    """A series-selection rules document is invalid; the message names the rule and the field."""
