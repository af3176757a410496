"""Engines run the transform over chunks of units and return the files they staged.

Both engines call the same task, :func:`index_and_stage`: index a chunk with the pure transform,
then stage each resulting table as one Parquet file in the lake. The driver commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from voxlake.errors import InvalidArgumentError
from voxlake.ingest.sources import Unit
from voxlake.ingest.transform import TransformOptions, index_units
from voxlake.lake.commit import DATA_TABLES, StagedFile, stage


class Engine(StrEnum):
    LOCAL = "local"
    SPARK = "spark"

    @classmethod
    def parse(cls, value: str | Engine) -> Engine:
        try:
            return cls(value)
        except ValueError:
            valid = ", ".join(e.value for e in cls)
            raise InvalidArgumentError(f"engine must be one of {valid}, not {value!r}") from None


@dataclass
class ChunkResult:
    staged: list[StagedFile]
    counts: dict[str, int]
    units: int


def index_and_stage(units: list[Unit], options: TransformOptions, lake_uri: str) -> ChunkResult:
    """The unit of work of every engine: transform a chunk, stage its tables."""
    batch = index_units(units, options)
    staged = []
    for name, table in zip(DATA_TABLES, (batch.instances, batch.errors, batch.files), strict=True):
        f = stage(name, table, lake_uri, options.run_id)
        if f is not None:
            staged.append(f)
    return ChunkResult(staged=staged, counts=batch.counts, units=len(units))


def chunked(units: list[Unit], workers: int) -> list[list[Unit]]:
    """Chunks big enough to amortise a Parquet file, small enough to balance and show progress."""
    if not units:
        return []
    size = max(16, min(256, -(-len(units) // (max(workers, 1) * 8))))
    return [units[i : i + size] for i in range(0, len(units), size)]
