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


def committed_states(lake: Any) -> set[tuple[str, int, int]]:
    """(uri, size, mtime µs) of every unit a committed run has read, except those whose reading
    failed (status ``retry``: I/O, network, credentials), which every run tries again."""
    rows = lake.sql("SELECT uri, size, epoch_us(mtime) FROM ingest_files WHERE status <> 'retry'").fetchall()
    return {(u, s, m) for u, s, m in rows}


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
    """Index the units not yet in the lake as one atomic run."""
    engine = Engine.parse(engine)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    ensure_tables(lake.uri)
    done = committed_states(lake)
    todo = [u for u in units if (u.uri, u.size, u.mtime) not in done]
    run_id = new_run_id()
    options = TransformOptions(
        source=storage.normalize(source), run_id=run_id, bulk_threshold=bulk_threshold, sha256=sha256
    )
    if on_start:
        on_start(len(todo))
    if engine is Engine.SPARK:
        from voxlake.ingest.engines.spark import run_spark

        results = run_spark(todo, options, lake.uri, master=spark_master, progress=on_chunk)
        n_workers = workers or 0
    else:
        from voxlake.ingest.engines.local import default_workers, run_local

        n_workers = default_workers() if workers is None else workers
        results = run_local(todo, options, lake.uri, workers=n_workers, progress=on_chunk)
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


def ingest(lake: Any, source: str, **kwargs: Any) -> IngestSummary:
    """List ``source`` and ingest what is new or changed (see :func:`ingest_units`)."""
    units = list(list_units(source))
    return ingest_units(lake, source, units, **kwargs)


def _version() -> str:
    from voxlake import __version__

    return __version__
