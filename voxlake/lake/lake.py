"""The :class:`Lake`: a folder or object-store prefix of Delta tables, and its library API."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from voxlake.lake import storage

if TYPE_CHECKING:
    from voxlake.ingest.engines import ChunkResult
    from voxlake.ingest.run import IngestSummary
    from voxlake.lake.sql import Result


class Lake:
    """A voxlake lake. Create with :func:`voxlake.open`.

    Tables are created by the first ingest; :meth:`sql` on a lake without them raises
    :class:`LakeNotFoundError`.
    """

    def __init__(self, uri: str) -> None:
        self.uri = storage.normalize(uri)
        self._con: Any = None
        self._bound: dict[str, tuple[str, int]] = {}  # table -> (id, version) the connection reads

    def __repr__(self) -> str:
        return f"Lake({self.uri!r})"

    # -- state -------------------------------------------------------------------------------

    def exists(self) -> bool:
        """True when the lake's tables exist."""
        from deltalake import DeltaTable

        from voxlake.lake.schema import TABLES

        opts = storage.delta_storage_options(self.uri)
        try:
            return all(
                DeltaTable.is_deltatable(storage.join(self.uri, name), storage_options=opts)
                for name in TABLES
            )
        except OSError as exc:
            # An object store without the bucket answers 404 to the listing: no lake there.
            if not storage.is_local(self.uri) and "404" in str(exc):
                return False
            raise

    def versions(self) -> dict[str, int]:
        """The current Delta version of each table."""
        from voxlake.lake.sql import open_tables

        return {name: dt.version() for name, dt in open_tables(self.uri, extra=False).items()}

    # -- ingest ------------------------------------------------------------------------------

    def ingest(
        self,
        source: str,
        *,
        engine: str = "local",
        workers: int | None = None,
        spark_master: str | None = None,
        bulk_threshold: int = 1024,
        sha256: bool = True,
        on_start: Callable[[int], None] | None = None,
        on_chunk: Callable[[ChunkResult], None] | None = None,
    ) -> IngestSummary:
        """Index ``source`` (folder, file, .zip, DICOMDIR or fsspec URL) into the lake.

        Only new or changed files (by uri, size and mtime) are read, and the run commits
        atomically. ``engine`` is "local" (a process pool of ``workers``, default all cores; 0
        runs in this process) or "spark" (on ``spark_master``, default ``local[*]``). Binary
        values over ``bulk_threshold`` bytes become BulkDataURIs. ``on_start(n_files)`` and
        ``on_chunk(result)`` report progress.
        """
        from voxlake.ingest.run import ingest

        return ingest(
            self,
            source,
            engine=engine,
            workers=workers,
            spark_master=spark_master,
            bulk_threshold=bulk_threshold,
            sha256=sha256,
            on_start=on_start,
            on_chunk=on_chunk,
        )

    def watch(self, source: str, **options: Any) -> list[IngestSummary]:
        """Ingest continuously until stopped; see :func:`voxlake.ingest.watch.watch` for the
        options (``interval``, ``settle``, ``stop``, ``duration``, ``on_run``, and those of
        :meth:`ingest`)."""
        from voxlake.ingest.watch import watch

        return watch(self, source, **options)

    # -- query -------------------------------------------------------------------------------

    def connect(self) -> Any:
        """A DuckDB connection with the lake's views and macros, at the current versions.

        One connection serves the lake object's life: after a commit only the tables whose version
        changed are bound again (on a 100,000-instance lake a new connection costs 0.3–1 s, a refresh 0.05 s)."""
        from voxlake.lake import sql

        tables = sql.open_tables(self.uri)
        # The table's id too: a lake deleted and created again starts its versions anew.
        versions = {name: (dt.metadata().id, dt.version()) for name, dt in tables.items()}
        if self._con is None or not set(self._bound) <= set(versions):
            self.close()
            self._con = sql.connect(self.uri, tables)
        elif versions != self._bound:
            sql.refresh(self._con, self.uri, {n: dt for n, dt in tables.items() if self._bound.get(n) != versions[n]})
        self._bound = versions
        return self._con

    def sql(self, query: str) -> Result:
        """Run SQL in DuckDB over the current table versions; returns a ``Result`` with
        ``.arrow()``, ``.df()`` and ``.fetchall()``."""
        from voxlake.lake.sql import run_query

        return run_query(self.connect(), query)

    def register_spark(self, spark: Any) -> list[str]:
        """Register the lake's tables and views in a SparkSession; returns their names."""
        from voxlake.lake.spark import register

        return register(self, spark)

    def optimize(self, *, target_size: int = 256 << 20) -> dict[str, dict[str, Any]]:
        """Compact each table's small files (every ingest chunk and every network commit adds one)
        into files of about ``target_size`` bytes; queries then open a few files instead of
        hundreds. Rows and versions are unchanged; old files stay until :meth:`vacuum`."""
        from deltalake import DeltaTable

        from voxlake.lake.schema import TABLES

        opts = storage.delta_storage_options(self.uri)
        self.versions()  # raises LakeNotFoundError with a clear message
        return {
            name: DeltaTable(storage.join(self.uri, name), storage_options=opts).optimize.compact(
                target_size=target_size
            )
            for name in TABLES
        }

    def vacuum(self, *, retention_hours: int = 168, dry_run: bool = True) -> dict[str, list[str]]:
        """Delete files no table version needs any more, older than ``retention_hours``: those of
        replaced versions and those staged by runs that never committed. Dry run by default."""
        from deltalake import DeltaTable

        from voxlake.lake.schema import TABLES

        opts = storage.delta_storage_options(self.uri)
        self.versions()  # raises LakeNotFoundError with a clear message
        return {
            name: DeltaTable(storage.join(self.uri, name), storage_options=opts).vacuum(
                retention_hours=retention_hours, dry_run=dry_run, enforce_retention_duration=False, full=True
            )
            for name in TABLES
        }

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None
            self._bound = {}

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_lake(uri: str) -> Lake:
    """Open (or name, for a first ingest) the lake at ``uri``: a path or an fsspec URL."""
    return Lake(uri)
