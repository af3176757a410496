"""Atomic runs: workers stage Parquet files, the driver adds them in Delta transactions.

A run touches four tables and Delta Lake commits one table at a time, so the ``ingest_runs`` row
is the run's commit point: the data tables are committed first, the run row last, and every
view reads data rows only of runs that have a row in ``ingest_runs``. A run killed at any moment
therefore leaves the lake as it was (its staged files and any data commits are invisible), and
rerunning it redoes exactly its files. Staged files of such runs are removed by ``Lake.vacuum``.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from voxlake.lake import schema, storage

#: Data tables in commit order; ``ingest_runs`` always comes last.
DATA_TABLES = ("instances", "ingest_errors", "ingest_files")
_STATS_COLUMNS = ("StudyDate", "Modality", "PatientID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class StagedFile:
    """A Parquet file written into a table folder but not yet part of any table version."""

    table: str
    path: str  # relative to the table root
    size: int
    num_records: int
    stats: str
    modification_time: int

    def to_json(self) -> str:
        return json.dumps(self.__dict__)

    @staticmethod
    def from_json(text: str) -> StagedFile:
        return StagedFile(**json.loads(text))


def stage(table_name: str, data: pa.Table, lake_uri: str, run_id: str) -> StagedFile | None:
    """Write ``data`` as one Parquet file under the table's folder; None when it has no rows."""
    if data.num_rows == 0:
        return None
    rel = f"part-{run_id}-{uuid.uuid4().hex}.parquet"
    target = storage.join(lake_uri, table_name, rel)
    if storage.is_local(lake_uri):
        pq.write_table(data, target, compression="zstd")
        import os

        size = os.path.getsize(target)
    else:
        fs = storage.filesystem(lake_uri)
        with fs.open(target, "wb") as f:
            pq.write_table(data, f, compression="zstd")
        size = int(fs.info(target)["size"])
    return StagedFile(
        table=table_name,
        path=rel,
        size=size,
        num_records=data.num_rows,
        stats=_stats(data),
        modification_time=int(time.time() * 1000),
    )


def _stats(data: pa.Table) -> str:
    """Delta add-action statistics (PROTOCOL.md, Per-file Statistics) so readers can skip files.

    Every primitive column among the first 32 (Delta's default ``dataSkippingNumIndexedCols``)
    gets min, max and null count: some readers (delta-rs's pyarrow dataset) treat a column missing
    from the stats as all-null and would drop the file from filtered scans. Long strings are cut
    to a 32-character prefix; the max then gets U+10FFFF appended so it stays an upper bound.
    """
    import pyarrow.compute as pc

    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for i, field in enumerate(data.schema):
        if i >= _INDEXED_COLUMNS and field.name not in _STATS_COLUMNS:
            continue
        if pa.types.is_nested(field.type):
            continue
        col = data.column(field.name)
        nulls[field.name] = col.null_count
        if col.null_count == len(col) or pa.types.is_boolean(field.type):
            continue
        mm = pc.min_max(col).as_py()
        lo, hi = mm["min"], mm["max"]
        if pa.types.is_timestamp(field.type):
            lo = _iso_ms(lo, up=False)
            hi = _iso_ms(hi, up=True)
        elif pa.types.is_date(field.type):
            lo, hi = lo.isoformat(), hi.isoformat()
        elif isinstance(lo, str):
            lo = lo[:_STRING_PREFIX]
            if len(hi) > _STRING_PREFIX:
                hi = hi[:_STRING_PREFIX] + "\U0010ffff"
        mins[field.name] = lo
        maxs[field.name] = hi
    return json.dumps(
        {"numRecords": data.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls},
        ensure_ascii=False,
    )


_INDEXED_COLUMNS = 32
_STRING_PREFIX = 32


def _iso_ms(value: Any, *, up: bool) -> str:
    """A timestamp in Delta's stats format, at millisecond precision, rounded outwards."""
    import datetime as dt

    us = value.microsecond % 1000
    value = value - dt.timedelta(microseconds=us)
    if up and us:
        value += dt.timedelta(milliseconds=1)
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def ensure_tables(lake_uri: str) -> None:
    """Create the lake's Delta tables if they do not exist yet (idempotent)."""
    from deltalake import DeltaTable

    opts = storage.delta_storage_options(lake_uri)
    for name, table_schema in schema.TABLES.items():
        uri = storage.join(lake_uri, name)
        if not DeltaTable.is_deltatable(uri, storage_options=opts):
            DeltaTable.create(
                uri,
                schema=table_schema,
                mode="ignore",
                name=name,
                storage_options=opts,
            )


def _add_missing_columns(dt: Any, table_schema: pa.Schema) -> None:
    """Schema evolution for lakes created by an older voxlake: columns appended to a table's
    schema since (all nullable) are added to the Delta schema before files holding them are."""
    from deltalake import Field

    have = {f.name for f in dt.schema().fields}
    missing = [Field.from_arrow(f) for f in table_schema if f.name not in have]
    if missing:
        dt.alter.add_columns(missing)


def commit_run(lake_uri: str, staged: list[StagedFile], run_row: dict[str, Any]) -> None:
    """Add the staged files to their tables, then append the run row: the commit point."""
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.transaction import AddAction

    opts = storage.delta_storage_options(lake_uri)
    run_id = run_row["run_id"]
    for name in DATA_TABLES:
        files = [s for s in staged if s.table == name]
        if not files:
            continue
        dt = DeltaTable(storage.join(lake_uri, name), storage_options=opts)
        _add_missing_columns(dt, schema.TABLES[name])
        actions = [
            AddAction(f.path, f.size, {}, f.modification_time, True, f.stats) for f in files
        ]
        dt.create_write_transaction(
            actions,
            mode="append",
            schema=schema.TABLES[name],
            commit_properties=CommitProperties(custom_metadata={"voxlake.run_id": run_id}),
        )
    write_deltalake(
        storage.join(lake_uri, "ingest_runs"),
        pa.Table.from_pylist([run_row], schema=schema.INGEST_RUNS),
        mode="append",
        storage_options=opts,
        commit_properties=CommitProperties(custom_metadata={"voxlake.run_id": run_id}),
    )
