"""voxlake: the open medical-imaging lakehouse.

>>> import voxlake
>>> lake = voxlake.open("./lake")
>>> lake.ingest("./incoming")            # doctest: +SKIP
>>> lake.sql("SELECT Modality, count(*) FROM instances GROUP BY 1").fetchall()  # doctest: +SKIP

Importing voxlake is cheap: DuckDB, delta-rs, pydicom and the engines load on first use.
"""

from __future__ import annotations

from voxlake.errors import (
    InvalidArgumentError,
    InvalidDicomError,
    LakeNotFoundError,
    MissingExtraError,
    NotDicomError,
    QueryError,
    SourceError,
    VoxlakeError,
)
from voxlake.lake.lake import Lake
from voxlake.lake.lake import open_lake as open

__version__ = "0.1.0"

__all__ = [
    "InvalidArgumentError",
    "InvalidDicomError",
    "Lake",
    "LakeNotFoundError",
    "MissingExtraError",
    "NotDicomError",
    "QueryError",
    "SourceError",
    "VoxlakeError",
    "__version__",
    "open",
]
