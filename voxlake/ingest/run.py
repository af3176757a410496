"""An ingest run: list the source, keep what is new or changed, run an engine, commit once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from voxlake.dicom.parser import DEFAULT_BULK_THRESHOLD
from voxlake.ingest.engines import ChunkResult, Engine
from voxlake.ingest.sources import Unit, list_units
from voxlake.ingest.transform import TransformOptions
from voxlake.lake import storage
from voxlake.lake.commit import commit_run, ensure_tables


@dataclass
class IngestSummary:
    """What a run did; ``--json`` prints this."""

    run_id: str
    source: str
    engine: str
    workers: int
    files_seen: int
    files_unchanged: int
    indexed: int
    skipped: int
    errors: int
    partial: int
    bytes: int
    seconds: float
    committed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def new_run_id() -> str:
    """Sortable by start time, unique across machines."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


def committed_states(lake: Any, uris: list[str] | None = None) -> set[tuple[str, int, int]]:
    """(uri, size, mtime µs) of every unit a committed run of ``lake`` (a Lake or its URI) has
    read, except those whose reading failed (status ``retry``: I/O, network, credentials), which
    every run tries again. Only those of ``uris`` when given: a run of a few files into a big lake
    then builds no set of every file (at a million files, 4 s)."""
    import pyarrow.compute as pc

    from voxlake.lake.tables import read_columns

    lake_uri = lake if isinstance(lake, str) else lake.uri
    where = None if uris is None else pc.field("uri").isin(uris)
    files = read_columns(lake_uri, "ingest_files", ["uri", "size", "mtime", "status", "run_id"], where)
    if files.num_rows == 0:
        return set()
    runs = read_columns(lake_uri, "ingest_runs", ["run_id"]).column("run_id")
    keep = pc.and_(pc.is_in(files.column("run_id"), value_set=runs), pc.not_equal(files.column("status"), "retry"))
    files = files.filter(keep)
    mtimes = pc.cast(files.column("mtime"), "int64").to_pylist()
    return set(zip(files.column("uri").to_pylist(), files.column("size").to_pylist(), mtimes, strict=True))


def ingest_units(
    lake: Any,
    source: str,
    units: list[Unit],
    *,
    engine: str | Engine = Engine.LOCAL,
    workers: int | None = None,
    spark_master: str | None = None,
    bulk_threshold: int = DEFAULT_BULK_THRESHOLD,
    sha256: bool = True,
    mode: str = "incremental",
    on_start: Callable[[int], None] | None = None,
    on_chunk: Callable[[ChunkResult], None] | None = None,
) -> IngestSummary:
    """Index the units not yet in the lake as one atomic run. ``mode`` is recorded with the run;
    ``"full"`` indexes every unit without comparing (for units known to be new, such as a file just
    landed under a new name: a big lake's ``ingest_files`` is then not read)."""
    engine = Engine.parse(engine)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    run_id = new_run_id()
    options = TransformOptions(
        source=storage.normalize(source), run_id=run_id, bulk_threshold=bulk_threshold, sha256=sha256
    )
    if engine is Engine.SPARK:
        ensure_tables(lake.uri)
        todo = units if mode == "full" else _new_units(lake.uri, units)
        if on_start:
            on_start(len(todo))
        from voxlake.ingest.engines.spark import run_spark

        results = run_spark(todo, options, lake.uri, master=spark_master, progress=on_chunk)
        n_workers = workers or 0
    else:
        from voxlake.ingest.engines.local import LocalEngine

        # The workers start while the driver creates tables and compares the source with the lake.
        with LocalEngine(workers) as local:
            ensure_tables(lake.uri)
            todo = units if mode == "full" else _new_units(lake.uri, units)
            if on_start:
                on_start(len(todo))
            results = local.run(todo, options, lake.uri, progress=on_chunk)
        n_workers = local.workers
    counts = {"indexed": 0, "skipped": 0, "errors": 0, "partial": 0, "bytes": 0}
    staged = []
    for r in results:
        staged.extend(r.staged)
        for k in counts:
            counts[k] += r.counts[k]
    committed = bool(todo)
    if committed:
        commit_run(
            lake.uri,
            staged,
            {
                "run_id": run_id,
                "source": options.source,
                "engine": engine.value,
                "workers": n_workers,
                "mode": mode,
                "files_seen": len(units),
                "files_unchanged": len(units) - len(todo),
                **counts,
                "started_at": started,
                "ended_at": datetime.now(UTC),
                "voxlake_version": _version(),
            },
        )
    return IngestSummary(
        run_id=run_id,
        source=options.source,
        engine=engine.value,
        workers=n_workers,
        files_seen=len(units),
        files_unchanged=len(units) - len(todo),
        seconds=round(time.perf_counter() - t0, 3),
        committed=committed,
        **counts,
    )


def _new_units(lake_uri: str, units: list[Unit]) -> list[Unit]:
    done = committed_states(lake_uri, [u.uri for u in units])
    return [u for u in units if (u.uri, u.size, u.mtime) not in done]


def ingest(lake: Any, source: str, **kwargs: Any) -> IngestSummary:
    """List ``source`` and ingest what is new or changed (see :func:`ingest_units`)."""
    units = list(list_units(source))
    return ingest_units(lake, source, units, **kwargs)


def _version() -> str:
    from voxlake import __version__

    return __version__
