"""The local engine: a process pool over the machine's cores (the default engine)."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait

from voxlake.ingest.engines import ChunkResult, chunked, index_and_stage
from voxlake.ingest.sources import Unit
from voxlake.ingest.transform import TransformOptions
from voxlake.lake import storage


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def run_local(
    units: list[Unit],
    options: TransformOptions,
    lake_uri: str,
    *,
    workers: int | None = None,
    progress: Callable[[ChunkResult], None] | None = None,
) -> list[ChunkResult]:
    """Run chunks in ``workers`` processes (0: in this process, for debugging)."""
    workers = default_workers() if workers is None else workers
    chunks = chunked(units, workers)
    results: list[ChunkResult] = []
    if workers == 0:
        for chunk in chunks:
            result = index_and_stage(chunk, options, lake_uri)
            results.append(result)
            if progress:
                progress(result)
        return results
    # forkserver: forking a process that holds DuckDB or delta-rs threads is unsafe.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["voxlake.ingest.engines"])
    # Workers get the driver's object-store credentials as they are now (see storage.environment).
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=storage.apply_environment,
        initargs=(storage.environment(),),
    ) as pool:
        pending: set[Future[ChunkResult]] = set()
        queue = iter(chunks)
        # Bounded in-flight work keeps memory flat however large the source.
        for chunk in queue:
            pending.add(pool.submit(index_and_stage, chunk, options, lake_uri))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    results.append(f.result())
                    if progress:
                        progress(results[-1])
        for f in as_completed(pending):
            results.append(f.result())
            if progress:
                progress(results[-1])
    return results
