"""The exception tree. Every error voxlake raises on purpose is a :class:`VoxlakeError`.

::

    VoxlakeError
    ├── InvalidDicomError       bytes that claim to be DICOM but cannot be read
    ├── NotDicomError           bytes that are not DICOM at all (ingest skips and counts them)
    ├── LakeNotFoundError       no lake at the given URI
    ├── SourceError             a source that cannot be listed or opened
    ├── QueryError              SQL that DuckDB (or a voxlake macro) rejects
    ├── AssociationError        a DICOM peer unreachable, or it rejected or aborted the association
    ├── DimseStatusError        a DICOM peer answered with a failure status
    ├── FrameError              a frame or bulk data range that cannot be read or decoded
    ├── InvalidArgumentError    a wrong option value; the message lists the valid ones
    └── MissingExtraError       an optional part (Spark, S3) that is not installed

Messages name the file or field and say how to fix it, so the CLI can print them as one line.
"""

from __future__ import annotations


class VoxlakeError(Exception):
    """Base class of all voxlake errors."""


class InvalidDicomError(VoxlakeError):
    """The input claims to be DICOM (or looks like it) but cannot be read."""


class NotDicomError(VoxlakeError):
    """The input is not DICOM; ingest counts such files as skipped, not as errors."""


class LakeNotFoundError(VoxlakeError):
    """There is no lake (no voxlake tables) at the given URI."""


class SourceError(VoxlakeError):
    """A source cannot be listed or opened."""


class FrameError(VoxlakeError):
    """A frame (or bulk data range) of an indexed instance cannot be served: a frame number out of
    range, Pixel Data that cannot be located or decoded, a transfer syntax that cannot be produced.
    The message names the instance and the frame."""


class InvalidArgumentError(VoxlakeError, ValueError):
    """An option has a value outside its valid set."""


class MissingExtraError(VoxlakeError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class QueryError(VoxlakeError):
    """A SQL query failed: DuckDB's message, or the voxlake macro's, without engine noise."""


class AssociationError(VoxlakeError):
    """The peer could not be reached, rejected the association, or aborted it."""


class DimseStatusError(VoxlakeError):
    """The peer answered a DIMSE request with a failure status (see :attr:`status`)."""

    def __init__(self, message: str, status: int | None) -> None:
        super().__init__(message)
        self.status = status
