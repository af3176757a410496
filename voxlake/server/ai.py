"""AI endpoints of ``voxlake serve`` (the ``ai`` extra), a thin layer over :mod:`voxlake.ai`:

* ``GET /ai/models``: every model version (registry and built-ins), with what is loaded now.
* ``POST /ai/models/{model}/infer`` with ``{"SeriesInstanceUID": "..."}``: segments one series
  synchronously (``model`` as ``name``, ``name@alias`` or ``name:version``) and answers the SEG's
  UIDs and RetrieveURL, the label volumes and the seconds per step.
* ``POST /ai/jobs`` with ``{"model": "...", "series": [...]}`` (or ``"studies": [...]``: their CT
  series): 202 and the job, ``Location: /ai/jobs/{id}``.
* ``GET /ai/jobs/{id}``: status, progress and per-series results with RetrieveURLs.
* ``POST /ai/train/{model}`` (body optional: ``epochs``, ``heldout``, ...): 202, a fine-tune of the
  champion on the lake's final labels in the background (:mod:`voxlake.ai.finetune`; one at a time,
  409 otherwise); ``GET /ai/train/{id}``: running, done (held-out Dice of both, promoted or kept) or
  failed.
* ``GET /ai/activelearning/next?strategy=first|random|uncertainty[&model=...][&modality=CT]``: the
  series to label next (:mod:`voxlake.ai.active`) and ``viewer_url``, OHIF's segmentation mode on it.

The registry opens on the first AI request (MLflow's start-up stays off the server's), models load
on first use and unload when idle (:class:`voxlake.ai.service.ModelPool`); jobs survive a restart
(:class:`voxlake.ai.service.Jobs`). After each SEG commit the catalog is refreshed, so QIDO-RS and
OHIF see it at once. A SEG stored through STOW-RS (a correction saved in OHIF) becomes rows of the
``labels`` table in the background (:meth:`AIService.sync_labels_soon`); with ``train_every`` N, a
sync that finds N new final labels of a model starts its fine-tune
(:meth:`voxlake.ai.finetune.FinetuneJobs.train_when_due`).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from voxlake.server import urls
from voxlake.server.errors import DicomWebError, bad_request, not_found


class AIService:
    """What the AI routes share, built on first use."""

    def __init__(self, state: Any, registry: Any, idle_seconds: float, train_every: int | None = None) -> None:
        self.state = state
        self._registry = registry
        self.idle_seconds = idle_seconds
        self.train_every = train_every
        self._lock = threading.Lock()
        self._pool: Any = None
        self._jobs: Any = None
        self._finetunes: Any = None
        self._labels_pending = False
        self._labels_thread: threading.Thread | None = None
        self.labels_synced = threading.Event()  # set after each background sync (tests wait on it)

    @property
    def pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                from voxlake.ai.registry import Registry
                from voxlake.ai.service import ModelPool

                registry = self._registry if self._registry is not None else Registry()
                self._pool = ModelPool(registry, idle_seconds=self.idle_seconds)
            return self._pool

    @property
    def jobs(self) -> Any:
        pool = self.pool
        with self._lock:
            if self._jobs is None:
                from voxlake.ai.service import Jobs

                self._jobs = Jobs(self.state.lake, pool, jobs_folder(self.state.lake.uri),
                                  on_segmented=lambda: self.state.refresh(force=True)).start()
            return self._jobs

    @property
    def finetunes(self) -> Any:
        """The lake's fine-tunes (:class:`voxlake.ai.finetune.FinetuneJobs`), state in ``<lake>/ai/train``."""
        pool = self.pool
        with self._lock:
            if self._finetunes is None:
                from voxlake.ai.finetune import FinetuneJobs, train_folder

                self._finetunes = FinetuneJobs(self.state.lake, pool.registry, train_folder(self.state.lake.uri))
            return self._finetunes

    def resume(self) -> None:
        """Re-queue the jobs a previous run left unfinished (at start-up, when there are any)."""
        if any(jobs_folder(self.state.lake.uri).glob("*.json")):
            threading.Thread(target=lambda: self.jobs, name="voxlake-ai-resume", daemon=True).start()

    def sync_labels_soon(self) -> None:
        """Turn newly stored SEGs into ``labels`` rows (:func:`voxlake.ai.labels.sync_labels`) in the
        background: a sync takes seconds per SEG, longer than a STOW-RS client should wait. One sync
        at a time; SEGs stored during a sync are taken by one more."""
        with self._lock:
            self._labels_pending = True
            if self._labels_thread is not None and self._labels_thread.is_alive():
                return
            self._labels_thread = threading.Thread(target=self._sync_labels, name="voxlake-labels", daemon=True)
            self._labels_thread.start()

    def _sync_labels(self) -> None:
        import logging

        from voxlake.ai.labels import sync_labels

        log = logging.getLogger("voxlake.server")
        while True:
            with self._lock:
                if not self._labels_pending:
                    self._labels_thread = None
                    return
                self._labels_pending = False
            try:
                result = sync_labels(self.state.lake)
                for error in result.errors:
                    log.warning("labels: %s", error["reason"])
                if self.train_every:  # "train after every N new final labels"
                    for started in self.finetunes.train_when_due(self.train_every):
                        log.info("labels: fine-tuning %s (%s): /ai/train/%s", started["model"], started["trigger"],
                                 started["id"])
            except Exception as exc:  # logged; the next stored SEG tries again
                log.warning("labels: sync failed: %s: %s", type(exc).__name__, exc)
            self.labels_synced.set()

    def close(self) -> None:
        if self._jobs is not None:
            self._jobs.stop()


def jobs_folder(lake_uri: str) -> Path:
    """``<lake>/ai/jobs`` for a local lake; for an object-store lake, a local state folder."""
    from voxlake.lake import storage

    if storage.is_local(lake_uri):
        return Path(storage.normalize(lake_uri)) / "ai" / "jobs"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "voxlake" / "jobs" / hashlib.sha256(lake_uri.encode()).hexdigest()[:16]


def _seg_link(request: Any, state: Any, result: dict[str, Any]) -> dict[str, Any]:
    """A series result with its SEG's RetrieveURL (when the SEG is in the catalog)."""
    sop = result.get("SEG")
    if not sop:
        return result
    state.refresh(force=True)
    row = state.cursor().execute("SELECT StudyInstanceUID, SeriesInstanceUID FROM instances WHERE "
                                 "SOPInstanceUID = ?", [sop]).fetchone()
    if row is None:
        return result
    base = urls.dicomweb_base(request, state.settings.dicomweb_root)
    return result | {"SEG": {"SOPInstanceUID": sop, "SeriesInstanceUID": row[1], "StudyInstanceUID": row[0],
                             "RetrieveURL": base + urls.instance_path(row[0], row[1], sop)}}


def model_error(exc: Exception) -> DicomWebError:
    """The HTTP error for a model's failure: 404 unknown model, 503 missing extra, 400 bad request,
    422 anything else the model raised (one line)."""
    from voxlake.ai.seg import EmptySegmentationError
    from voxlake.errors import InvalidArgumentError, MissingExtraError

    if isinstance(exc, DicomWebError):
        return exc
    if isinstance(exc, EmptySegmentationError):
        return DicomWebError(422, str(exc).strip())
    if isinstance(exc, LookupError):  # ModelNotFoundError
        return not_found(str(exc))
    if isinstance(exc, MissingExtraError):
        return DicomWebError(503, str(exc))
    if isinstance(exc, InvalidArgumentError):
        return bad_request(str(exc))
    return DicomWebError(422, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")


def router() -> Any:
    from fastapi import APIRouter, Body, Request
    from fastapi.responses import JSONResponse

    r = APIRouter(prefix="/ai")

    def service(request: Request) -> AIService:
        return request.app.state.ai

    @r.get("/models")
    def list_models(request: Request) -> Any:
        ai = service(request)
        loaded = set(ai.pool.loaded())
        return {"models": [{"name": m.name, "version": m.version, "aliases": list(m.aliases), "kind": str(m.kind),
                            "labels": {str(k): v for k, v in m.labels.items()},
                            "loaded": (m.name, str(m.version)) in loaded}
                           for m in ai.pool.registry.list()]}

    @r.post("/models/{model}/infer")
    def infer(request: Request, model: str, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        from voxlake.ai.segment import segment_series

        series = body.get("SeriesInstanceUID")
        if not isinstance(series, str) or not series:
            raise bad_request("the body needs SeriesInstanceUID (one series)")
        urls.check_uid(series, "SeriesInstanceUID")
        ai = service(request)
        if ai.state.cursor().execute("SELECT 1 FROM instances WHERE SeriesInstanceUID = ? LIMIT 1",
                                     [series]).fetchone() is None:
            raise not_found(f"no series {series} in this lake")
        try:
            the_model = ai.pool.get(model)
            with ai.pool.busy:
                outcome = segment_series(ai.state.lake, series, the_model, nifti=bool(body.get("nifti")),
                                         meshes=bool(body.get("meshes", True)))
        except Exception as exc:
            raise model_error(exc) from exc
        result = {"SeriesInstanceUID": series, "model": the_model.name, "model_version": str(the_model.version),
                  "SEG": outcome.SEG, "volumes_ml": outcome.volumes_ml,
                  "seconds": {k: round(v, 3) for k, v in outcome.timings.items()}}
        return _seg_link(request, ai.state, result)

    @r.post("/jobs", status_code=202)
    def submit(request: Request, body: dict[str, Any] = Body(...)) -> Any:  # noqa: B008
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request("the body needs model (name, name@alias or name:version)")
        ai = service(request)
        lists = {key: body.get(key) or [] for key in ("series", "studies")}
        for key, value in lists.items():
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise bad_request(f"{key} must be a list of UIDs")
        series = [urls.check_uid(s, "series") for s in lists["series"]]
        studies = [urls.check_uid(s, "studies") for s in lists["studies"]]
        if studies:
            rows = ai.state.cursor().execute(
                "SELECT DISTINCT SeriesInstanceUID FROM instances WHERE StudyInstanceUID IN (SELECT unnest(?)) "
                "AND Modality = 'CT' ORDER BY 1", [studies]).fetchall()
            series += [row[0] for row in rows]
        if not series:
            raise bad_request("the body needs series (SeriesInstanceUIDs) or studies holding CT series")
        try:
            job = ai.jobs.submit(model, series)
        except Exception as exc:
            raise model_error(exc) from exc
        location = str(request.url_for("job_status", job_id=job.id))
        return JSONResponse(job.to_dict() | {"url": location}, status_code=202, headers={"Location": location})

    @r.get("/jobs/{job_id}", name="job_status")
    def job_status(request: Request, job_id: str) -> Any:
        from voxlake.ai.service import JobNotFoundError

        ai = service(request)
        try:
            job = ai.jobs.get(job_id)
        except JobNotFoundError as exc:
            raise not_found(str(exc)) from exc
        out = job.to_dict()
        out["results"] = [_seg_link(request, ai.state, r) for r in job.results]
        return out

    @r.get("/activelearning/next")
    def next_case(request: Request, strategy: str = "random", model: str | None = None,
                  modality: str = "CT") -> Any:
        """The series to label next (:func:`voxlake.ai.active.next_case`) and the OHIF URL that
        opens it in segmentation mode."""
        import re

        from voxlake.ai.active import NoCandidateError
        from voxlake.ai.active import next_case as choose

        if not re.fullmatch(r"[A-Z]{1,16}", modality):
            raise bad_request(f"modality must be a DICOM modality such as CT; got {modality!r}")
        ai = service(request)
        try:
            where = f"Modality = '{modality}'"
            if strategy == "uncertainty" and model:
                the_model = ai.pool.get(model)
                with ai.pool.busy:  # scoring runs the model: not beside a job's
                    case = choose(ai.state.lake, strategy, where=where, model=the_model)
            else:
                case = choose(ai.state.lake, strategy, where=where)
        except NoCandidateError as exc:
            raise not_found(str(exc)) from exc
        except Exception as exc:
            raise model_error(exc) from exc
        viewer = (f"/segmentation?StudyInstanceUIDs={case.StudyInstanceUID}"
                  f"&initialSeriesInstanceUID={case.SeriesInstanceUID}")
        return case.to_dict() | {"viewer_url": str(request.base_url).rstrip("/") + viewer}

    # -- fine-tuning on the lake's final labels (voxlake.ai.finetune) ----------------------------------------
    # POST /ai/train/{model} (body optional: {"epochs": N, "heldout": DIR, "seed": N, "learning_rate": x}):
    # 202 and the run's state, the fine-tune in a background thread, one at a time (409 while one runs).
    # GET /ai/train/{id}: running, done (with the result) or failed (with the error, one line). State in
    # memory and in <lake>/ai/train/<id>.json (voxlake.ai.finetune.FinetuneJobs).
    def trainer(request: Request) -> Any:
        return service(request).finetunes

    @r.post("/train/{model}", status_code=202)
    def train(request: Request, model: str, body: dict[str, Any] | None = Body(None)) -> Any:  # noqa: B008
        from voxlake.ai.finetune import FinetuneBusyError

        body = body or {}
        options: dict[str, Any] = {}
        for key, kinds in (("epochs", (int,)), ("seed", (int,)), ("learning_rate", (int, float)),
                           ("heldout", (str,))):
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise bad_request(f"{key} must be {'a folder path' if key == 'heldout' else 'a number'}; "
                                  f"got {value!r}")
            options[key] = value
        try:
            state = trainer(request).submit(model, **options)
        except FinetuneBusyError as exc:
            raise DicomWebError(409, str(exc)) from exc
        except Exception as exc:
            raise model_error(exc) from exc
        location = str(request.url_for("train_status", train_id=state["id"]))
        return JSONResponse(state | {"url": location}, status_code=202, headers={"Location": location})

    @r.get("/train/{train_id}", name="train_status")
    def train_status(request: Request, train_id: str) -> Any:
        try:
            return trainer(request).get(train_id)
        except LookupError as exc:
            raise not_found(str(exc)) from exc

    return r
