"""Serving models: a pool that loads each model on first use and unloads it when idle (scale to
zero), and asynchronous segmentation jobs whose state is kept on disk, so a job survives a restart.

Jobs run one at a time in a worker thread, in the order they were submitted. A job's state is a JSON
file (``<id>.json`` in the jobs folder: for a local lake ``<lake>/ai/jobs``) rewritten atomically
(write, fsync, rename) after every series. At start-up, jobs left ``queued`` or ``running`` are
queued again; a resumed job skips the series its model version has already done (their
``segment_stats`` rows), so nothing is segmented twice.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxlake.errors import InvalidArgumentError, VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.model import SegmentationModel

__all__ = ["Job", "JobNotFoundError", "Jobs", "ModelPool"]


class JobNotFoundError(VoxlakeError, LookupError):
    """No job with that id."""


class ModelPool:
    """Models by spec (``ct-tissue``, ``name@champion``), loaded on first use, dropped after
    ``idle_seconds`` unused. An alias is resolved again at every use, so promoting a new champion
    takes effect without a restart."""

    def __init__(self, registry: Any, *, idle_seconds: float = 600.0) -> None:
        self.registry = registry
        self.idle_seconds = idle_seconds
        self._models: dict[tuple[str, str], tuple[SegmentationModel, float]] = {}
        self._lock = threading.Lock()
        #: One inference at a time (HTTP requests and jobs alike): a volume and a model's
        #: activations are each hundreds of MB, and two at once only share the same cores.
        self.busy = threading.Lock()

    def get(self, spec: str) -> SegmentationModel:
        row = self.registry.resolve(spec)
        key = (row.name, str(row.version))
        with self._lock:
            self._evict(time.monotonic())
            entry = self._models.get(key)
            if entry is None:
                model = self.registry.load(row.name if row.kind == "builtin" else f"{row.name}:{row.version}")
            else:
                model = entry[0]
            self._models[key] = (model, time.monotonic())
            return model

    def loaded(self) -> list[tuple[str, str]]:
        with self._lock:
            self._evict(time.monotonic())
            return sorted(self._models)

    def _evict(self, now: float) -> None:
        for key, (_model, used) in list(self._models.items()):
            if now - used > self.idle_seconds:
                del self._models[key]


@dataclass
class Job:
    """An asynchronous segmentation: ``series`` by ``model``; ``status`` queued → running →
    done (every series segmented or recorded as an error) or failed (the job itself could not run)."""

    id: str
    model: str
    series: list[str]
    status: str = "queued"
    created: str = ""
    started: str | None = None
    finished: str | None = None
    model_version: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def progress(self) -> dict[str, int]:
        done = {r["SeriesInstanceUID"] for r in self.results}
        return {"total": len(self.series), "done": len(done & set(self.series)),
                "errors": sum(r["status"] == "error" for r in self.results)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"progress": self.progress}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Jobs:
    """The job queue of one lake. ``start()`` runs the worker thread (and re-queues unfinished
    jobs); ``submit`` returns at once; ``get`` reads a job's state."""

    def __init__(self, lake: Any, pool: ModelPool, folder: str | os.PathLike[str], *,
                 on_segmented: Any = None) -> None:
        self.lake = lake
        self.pool = pool
        self.folder = Path(folder)
        self.on_segmented = on_segmented  # called after each SEG is committed (a server refreshes)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # -- state on disk ----------------------------------------------------------------------

    def _path(self, job_id: str) -> Path:
        if not job_id.isalnum():
            raise JobNotFoundError(f"no job {job_id!r}")
        return self.folder / f"{job_id}.json"

    def _save(self, job: Job) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{job.id}.json.tmp"
        with open(tmp, "w") as fh:
            json.dump(asdict(job), fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._path(job.id))

    def get(self, job_id: str) -> Job:
        path = self._path(job_id)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise JobNotFoundError(f"no job {job_id!r}") from None
        return Job(**data)

    # -- running ----------------------------------------------------------------------------

    def start(self) -> Jobs:
        if self._thread is not None:
            return self
        unfinished = []
        if self.folder.is_dir():
            for path in sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime):
                job = Job(**json.loads(path.read_text()))
                if job.status in ("queued", "running"):
                    unfinished.append(job.id)
        self._thread = threading.Thread(target=self._work, name="voxlake-ai-jobs", daemon=True)
        self._thread.start()
        for job_id in unfinished:
            self._queue.put(job_id)
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def submit(self, model: str, series: list[str]) -> Job:
        if not series:
            raise InvalidArgumentError("a job needs at least one series")
        self.pool.registry.resolve(model)  # an unknown model fails the request, not the job
        job = Job(uuid.uuid4().hex, model, list(dict.fromkeys(series)), created=_now())
        self._save(job)
        self._queue.put(job.id)
        return job

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None:
                return
            try:
                self._run(self.get(job_id))
            except Exception as exc:  # a job that cannot run is failed, the worker goes on
                job = self.get(job_id)
                job.status, job.error, job.finished = "failed", f"{type(exc).__name__}: {exc}", _now()
                self._save(job)

    def _run(self, job: Job) -> None:
        from voxlake.ai.outputs import record_error
        from voxlake.ai.segment import _done, segment_series

        job.status, job.started = "running", job.started or _now()
        self._save(job)
        model = self.pool.get(job.model)
        job.model_version = str(model.version)
        finished = {r["SeriesInstanceUID"] for r in job.results}
        already = _done(self.lake, model)
        for series in job.series:
            if series in finished:
                continue
            if series in already:
                job.results.append({"SeriesInstanceUID": series, "status": "done before"})
            else:
                try:
                    with self.pool.busy:
                        outcome = segment_series(self.lake, series, model)
                    job.results.append({"SeriesInstanceUID": series, "status": "segmented", "SEG": outcome.SEG,
                                        "volumes_ml": outcome.volumes_ml,
                                        "seconds": {k: round(v, 3) for k, v in outcome.timings.items()}})
                    if self.on_segmented is not None:
                        self.on_segmented()
                except Exception as exc:
                    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                    record_error(self.lake, series, model.name, str(model.version), type(exc).__name__, message)
                    job.results.append({"SeriesInstanceUID": series, "status": "error",
                                        "error": f"{type(exc).__name__}: {message}"})
            self._save(job)
        job.status, job.finished = "done", _now()
        self._save(job)

    def wait(self, job_id: str, timeout: float = 600.0) -> Job:
        """The job once it is done or failed (for scripts and tests)."""
        end = time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if job.status in ("done", "failed") or time.monotonic() > end:
                return job
            time.sleep(0.1)
