"""SQL over the lake in embedded DuckDB: the current Delta versions as views, plus DICOM macros.

``dicom_tag(meta, path)`` reads any attribute from the ``meta`` JSON by keyword or tag, with
paths into sequences: ``dicom_tag(meta, 'ReferencedImageSequence[0].ReferencedSOPInstanceUID')``.
It returns text: one value as is (a person name as its Alphabetic group), several joined by a
backslash as in DICOM, a sequence as JSON; ``[i]`` after the last step picks one value.
``dicom_json(meta, path)`` returns the element itself as JSON (``{"vr": ..., "Value": [...]}``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import pyarrow as pa

from voxlake.dicom.vr import tag_for_keyword
from voxlake.errors import InvalidArgumentError, LakeNotFoundError, QueryError
from voxlake.lake import schema, storage
from voxlake.lake.tables import dataset
from voxlake.lake.views import view_definitions

_STEP = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*|\(?[0-9A-Fa-f]{4},?[0-9A-Fa-f]{4}\)?)\s*(?:\[(\d+)\])?\s*$")

RAW_NAMES = {
    "instances": "_instances",
    "ingest_errors": "_ingest_errors",
    "ingest_files": "_ingest_files",
    "ingest_runs": "ingest_runs",
}


@lru_cache(maxsize=1024)
def dicom_path(path: str) -> str:
    """Translate ``'Seq[0].Keyword'`` into a JSON path over the DICOM JSON model.

    The last step addresses the element; an index on it selects a value (``$..Value[i]``).
    """
    steps = path.split(".")
    out = "$"
    for i, step in enumerate(steps):
        m = _STEP.match(step)
        if not m:
            raise InvalidArgumentError(f"dicom path {path!r}: cannot read step {step!r}")
        name, index = m.group(1), m.group(2)
        tag = _tag(name, path)
        out += f'."{tag}"'
        last = i == len(steps) - 1
        if not last:
            out += f".Value[{index or 0}]"
        elif index is not None:
            out += f".Value[{index}]"
    return out


def _tag(name: str, path: str) -> str:
    hexdigits = name.strip("()").replace(",", "")
    if len(hexdigits) == 8 and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
        return hexdigits.upper()
    tag = tag_for_keyword(name)
    if tag is None:
        raise InvalidArgumentError(f"dicom path {path!r}: {name!r} is not a DICOM keyword or tag")
    return f"{tag:08X}"


def _dicom_value_sql(e: str, x: str) -> str:
    """SQL rendering a JSON value (x) of an element as text."""
    return (
        f"CASE WHEN json_type({x}) = 'OBJECT' AND json_exists({x}, '$.Alphabetic') "
        f"THEN json_extract_string({x}, '$.Alphabetic') "
        f"WHEN json_type({x}) IN ('OBJECT', 'ARRAY') THEN CAST({x} AS VARCHAR) "
        f"ELSE json_extract_string({x}, '$') END"
    )


_MACROS = [
    "CREATE OR REPLACE MACRO dicom_json(meta, path) AS json_extract(meta, dicom_path(path))",
    "CREATE OR REPLACE MACRO _dicom_render(x) AS " + _dicom_value_sql("", "x"),
    # An element (has "vr") renders its Value; an indexed value renders itself.
    """CREATE OR REPLACE MACRO _dicom_render_element(e) AS CASE
        WHEN e IS NULL THEN NULL
        WHEN json_type(e) = 'OBJECT' AND json_exists(e, '$.vr') THEN
            CASE WHEN json_extract_string(e, '$.vr') = 'SQ' THEN CAST(json_extract(e, '$.Value') AS VARCHAR)
                 WHEN NOT json_exists(e, '$.Value') THEN
                    coalesce(json_extract_string(e, '$.BulkDataURI'), json_extract_string(e, '$.InlineBinary'))
                 ELSE array_to_string(list_transform(json_extract(e, '$.Value[*]'), lambda v: _dicom_render(v)), '\\')
            END
        ELSE _dicom_render(e) END""",
    "CREATE OR REPLACE MACRO dicom_tag(meta, path) AS _dicom_render_element(json_extract(meta, dicom_path(path)))",
]


_TABLE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def extra_tables(lake_uri: str) -> list[str]:
    """Delta tables beside the core ones, written by other parts of voxlake (``deid_audit``,
    ``segment_stats``, ``meshes``, ...): every folder of the lake with a ``_delta_log``, by name."""
    fs = storage.filesystem(lake_uri)
    root = storage.normalize(lake_uri)
    try:
        folders = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    except FileNotFoundError:
        return []
    names = [n for n in folders if _TABLE_NAME.match(n) and n not in RAW_NAMES]
    return sorted(n for n in names if fs.exists(storage.join(root, n, "_delta_log")))


def open_tables(lake_uri: str, *, extra: bool = True) -> dict[str, Any]:
    """The lake's Delta tables at their current versions, by name: the core ones, then (``extra``)
    the others (``segment_stats``, ...). A core table that cannot be opened raises
    :class:`LakeNotFoundError` naming it; another table whose first commit is still being written
    is left out until it has one."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    opts = storage.delta_storage_options(lake_uri)
    tables = {}
    for name in RAW_NAMES:
        try:
            tables[name] = DeltaTable(storage.join(lake_uri, name), storage_options=opts)
        except Exception as exc:
            raise LakeNotFoundError(
                f"{lake_uri}: no voxlake lake here (table {name} is missing); "
                f"run 'voxlake ingest SOURCE --lake {lake_uri}' first"
            ) from exc
    for name in extra_tables(lake_uri) if extra else []:
        try:
            tables[name] = DeltaTable(storage.join(lake_uri, name), storage_options=opts)
        except TableNotFoundError:
            continue
    return tables


def connect(lake_uri: str, tables: dict[str, Any] | None = None) -> Any:
    """A DuckDB connection with the lake's tables (``tables`` from :func:`open_tables`, by default
    the current versions), views and macros."""
    import duckdb

    con = duckdb.connect()
    # Delta's Parquet files never change once written, so their footers can be cached for the life
    # of the connection: a query (and a refresh) then reads only the footers of new files.
    con.execute("SET parquet_metadata_cache = true")
    con.create_function("dicom_path", dicom_path, [duckdb.sqltype("VARCHAR")], duckdb.sqltype("VARCHAR"), side_effects=False)
    tables = open_tables(lake_uri) if tables is None else tables
    for table, raw in RAW_NAMES.items():
        _bind(con, lake_uri, raw, tables[table], schema.TABLES[table])
    for name, select in view_definitions("duckdb"):
        con.execute(f"CREATE VIEW {name} AS {select}")
    _bind_extra(con, lake_uri, {n: dt for n, dt in tables.items() if n not in RAW_NAMES})
    for macro in _MACROS:
        con.execute(macro)
    return con


def refresh(con: Any, lake_uri: str, changed: dict[str, Any]) -> None:
    """Bind the ``changed`` tables (name → DeltaTable at its new version) on a connection from
    :func:`connect`. The views over them resolve their names at query time, so only the tables are
    re-bound; a commit that touched one table does not cost a new connection."""
    for table, raw in RAW_NAMES.items():
        if table in changed:
            _bind(con, lake_uri, raw, changed[table], schema.TABLES[table])
    _bind_extra(con, lake_uri, {n: dt for n, dt in changed.items() if n not in RAW_NAMES})


def _bind_extra(con: Any, lake_uri: str, tables: dict[str, Any]) -> None:
    """Bind the lake's other tables under their own names, except where the lake's views have them."""
    taken = set(RAW_NAMES.values()) | {name for name, _select in view_definitions("duckdb")}
    for name, dt in tables.items():
        if name not in taken:
            _bind(con, lake_uri, name, dt, pa.schema(dt.schema().to_arrow()))


def _bind(con: Any, lake_uri: str, name: str, dt: Any, table_schema: pa.Schema) -> None:
    """Make ``name`` read the files of ``dt``, replacing what it read before. A query of another
    thread never finds the name missing: the new binding is in place before the old one goes (a
    registered object shadows a view of the same name)."""
    files = dt.file_uris()
    if files and storage.is_local(lake_uri):
        # Files written before a column was appended lack it: the empty table of the current
        # schema first gives every column (NULL where a file lacks it) in schema order.
        con.register(f"_{name}_schema", table_schema.empty_table())
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(
            f"CREATE OR REPLACE VIEW {_database(con)}.main.{name} AS SELECT * FROM _{name}_schema "
            f"UNION ALL BY NAME SELECT * FROM read_parquet([{listing}], union_by_name = true)"
        )
        con.unregister(name)
    else:
        con.register(name, dataset(lake_uri, files, table_schema) if files else table_schema.empty_table())
        con.execute(f"DROP VIEW IF EXISTS {_database(con)}.main.{name}")


def _database(con: Any) -> str:
    return con.execute("SELECT current_database()").fetchone()[0]


_NOISE = re.compile(r"^.*?Python exception occurred while executing the UDF: \w+: ")


def query_error(exc: Exception) -> QueryError:
    """A one-line :class:`QueryError` from a DuckDB error, with UDF wrapping removed."""
    text = str(exc).strip()
    cleaned = _NOISE.sub("", text)
    return QueryError(cleaned.splitlines()[0] if cleaned else type(exc).__name__)


def run_query(con: Any, query: str) -> Result:
    import duckdb

    try:
        return Result(con.sql(query), con)
    except duckdb.Error as exc:
        raise query_error(exc) from exc


class Result:
    """The result of :meth:`Lake.sql`: ``.arrow()``, ``.df()``, ``.fetchall()``, ``.columns``."""

    def __init__(self, relation: Any, connection: Any) -> None:
        self._relation = relation
        self._connection = connection  # keeps the views alive as long as the result

    @property
    def columns(self) -> list[str]:
        return [] if self._relation is None else list(self._relation.columns)

    def arrow(self) -> pa.Table:
        if self._relation is None:
            return pa.table({})
        import duckdb

        try:
            out = self._relation.arrow()
            return out.read_all() if isinstance(out, pa.RecordBatchReader) else out
        except duckdb.Error as exc:
            raise query_error(exc) from exc

    def df(self) -> Any:
        return self.arrow().to_pandas()

    def fetchall(self) -> list[tuple[Any, ...]]:
        import duckdb

        if self._relation is None:
            return []
        try:
            return self._relation.fetchall()
        except duckdb.Error as exc:
            raise query_error(exc) from exc

    def __repr__(self) -> str:
        return repr(self._relation)
