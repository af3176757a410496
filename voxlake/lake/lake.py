"""The :class:`Lake`: a folder or object-store prefix of Delta tables, and its library API."""

from __future__ import annotations

from typing import Any

from voxlake.errors import LakeNotFoundError
from voxlake.lake import storage


class Lake:
    """A voxlake lake. Create with :func:`voxlake.open`.

    Tables are created by the first ingest; :meth:`sql` on a lake without them raises
    :class:`LakeNotFoundError`.
    """

    def __init__(self, uri: str) -> None:
        self.uri = storage.normalize(uri)
        self._con: Any = None
        self._versions: tuple[int, ...] | None = None

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
        from deltalake import DeltaTable

        from voxlake.lake.schema import TABLES

        opts = storage.delta_storage_options(self.uri)
        out = {}
        for name in TABLES:
            try:
                out[name] = DeltaTable(storage.join(self.uri, name), storage_options=opts).version()
            except Exception as exc:
                raise LakeNotFoundError(
                    f"{self.uri}: no voxlake lake here (table {name} is missing); "
                    f"run 'voxlake ingest SOURCE --lake {self.uri}' first"
                ) from exc
        return out

    # -- ingest ------------------------------------------------------------------------------

    def ingest(self, source: str, **options: Any) -> Any:
        """Index ``source`` (folder, file, .zip, DICOMDIR or fsspec URL) into the lake.

        Keyword options: ``engine`` ("local" or "spark"), ``workers``, ``spark_master``,
        ``bulk_threshold``, ``sha256``, ``on_start``, ``on_chunk``. Returns an ``IngestSummary``.
        Only new or changed files (by uri, size and mtime) are read; the run commits atomically.
        """
        from voxlake.ingest.run import ingest

        return ingest(self, source, **options)

    def watch(self, source: str, **options: Any) -> Any:
        """Ingest continuously: see :func:`voxlake.ingest.watch.watch`."""
        from voxlake.ingest.watch import watch

        return watch(self, source, **options)

    # -- query -------------------------------------------------------------------------------

    def connect(self) -> Any:
        """A DuckDB connection with the lake's views and macros, at the current versions."""
        versions = tuple(self.versions().values())
        if self._con is None or versions != self._versions:
            from voxlake.lake.sql import connect

            if self._con is not None:
                self._con.close()
            self._con = connect(self.uri)
            self._versions = versions
        return self._con

    def sql(self, query: str) -> Any:
        """Run SQL in DuckDB over the current table versions; returns a ``Result`` with
        ``.arrow()``, ``.df()`` and ``.fetchall()``."""
        from voxlake.lake.sql import run_query

        return run_query(self.connect(), query)

    def register_spark(self, spark: Any) -> list[str]:
        """Register the lake's tables and views in a SparkSession; returns their names."""
        from voxlake.lake.spark import register

        return register(self, spark)

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

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_lake(uri: str) -> Lake:
    """Open (or name, for a first ingest) the lake at ``uri``: a path or an fsspec URL."""
    return Lake(uri)
