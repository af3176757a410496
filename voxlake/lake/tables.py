"""Reading the live Parquet files of a table's current Delta version without a query engine.

Ingest needs a few columns of small tables (which units are already in the lake) before any SQL
is asked for; reading them with pyarrow keeps DuckDB out of the ingest path.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from voxlake.lake import schema, storage


def live_files(lake_uri: str, table: str) -> list[str]:
    """The data files of the table's current version (absolute paths or URLs)."""
    from deltalake import DeltaTable

    opts = storage.delta_storage_options(lake_uri)
    return DeltaTable(storage.join(lake_uri, table), storage_options=opts).file_uris()


def dataset(lake_uri: str, files: list[str], table_schema: pa.Schema) -> Any:
    """A pyarrow dataset over exactly these files (object stores through :func:`storage.arrow_filesystem`)."""
    import pyarrow.dataset as pds

    if storage.is_local(lake_uri):
        return pds.dataset(files, schema=table_schema, format="parquet")
    paths = [f.split("://", 1)[1] if "://" in f else f for f in files]
    return pds.dataset(paths, schema=table_schema, format="parquet", filesystem=storage.arrow_filesystem(lake_uri))


def read_columns(lake_uri: str, table: str, columns: list[str], where: Any = None) -> pa.Table:
    """Some columns of a table at its current version (all rows, committed or not), only the rows
    that match ``where`` (a ``pyarrow.compute`` expression) when one is given."""
    files = live_files(lake_uri, table)
    table_schema = schema.TABLES[table]
    if not files:
        return table_schema.empty_table().select(columns)
    return dataset(lake_uri, files, table_schema).to_table(columns=columns, filter=where)
