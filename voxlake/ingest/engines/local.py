"""The local engine: a process pool over the machine's cores (the default engine)."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, as_completed, wait
from types import TracebackType

from voxlake.ingest.engines import ChunkResult, chunked, index_and_stage
from voxlake.ingest.sources import Unit
from voxlake.ingest.transform import TransformOptions
from voxlake.lake import storage


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _init_worker(env: dict[str, str]) -> None:
    """Workers ignore Ctrl-C: the driver decides (a watch finishes its run, an ingest stops), and a
    killed worker would break the whole pool. They take the driver's object-store environment."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    storage.apply_environment(env)


def _ready() -> None:
    """A no-op task: submitting one per worker starts the processes ahead of the work."""


class LocalEngine:
    """A pool of ``workers`` processes (0: run in this process, for debugging).

    Use as a context manager: entering starts the workers (importing pyarrow and friends takes
    them about a second) so that they warm up while the driver lists the source and compares it
    with the lake, work that would otherwise delay every worker.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = default_workers() if workers is None else workers
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> LocalEngine:
        if self.workers > 0:
            # forkserver: forking a process that holds DuckDB or delta-rs threads is unsafe.
            ctx = multiprocessing.get_context("forkserver")
            ctx.set_forkserver_preload(["voxlake.ingest.engines"])
            # Workers get the driver's object-store credentials as they are now (storage.environment).
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(storage.environment(),),
            )
            for _ in range(self.workers):
                self._pool.submit(_ready)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=kind is None, cancel_futures=kind is not None)
            self._pool = None

    def run(
        self,
        units: list[Unit],
        options: TransformOptions,
        lake_uri: str,
        progress: Callable[[ChunkResult], None] | None = None,
    ) -> list[ChunkResult]:
        chunks = chunked(units, self.workers)
        results: list[ChunkResult] = []

        def done(result: ChunkResult) -> None:
            results.append(result)
            if progress:
                progress(result)

        if self._pool is None:
            for chunk in chunks:
                done(index_and_stage(chunk, options, lake_uri))
            return results
        pending: set[Future[ChunkResult]] = set()
        # Bounded in-flight work keeps memory flat however large the source.
        for chunk in chunks:
            pending.add(self._pool.submit(index_and_stage, chunk, options, lake_uri))
            if len(pending) >= 2 * self.workers:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    done(f.result())
        for f in as_completed(pending):
            done(f.result())
        return results


def run_local(
    units: list[Unit],
    options: TransformOptions,
    lake_uri: str,
    *,
    workers: int | None = None,
    progress: Callable[[ChunkResult], None] | None = None,
) -> list[ChunkResult]:
    """Run chunks in ``workers`` processes (0: in this process, for debugging)."""
    with LocalEngine(workers) as engine:
        return engine.run(units, options, lake_uri, progress)
