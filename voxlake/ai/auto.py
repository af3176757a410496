"""Segmentation on arrival (``voxlake segment --auto RULES.json``): beside ``voxlake ingest --watch``,
segment each series that the rules select once it is complete, exactly once per model version.

What "complete" means. DICOM has no end-of-series marker: a scanner or PACS sends a series as
instances, over one or many associations, and nothing says the last one has come. So a series is
taken as complete when no new instance has arrived for ``quiet_seconds`` (30 by default: a pause
longer than any gap between two instances of one send, short next to a reading workflow). In
full, :func:`complete_series` returns the series that

1. a rule selects (:func:`voxlake.ai.rules.select_series`), and are not a SEG that voxlake wrote
   itself (a ``SegmentationSeriesInstanceUID`` of ``segment_stats``: outputs are never inputs);
2. are quiet: the newest arrival of their instances is at least ``quiet_seconds`` before ``now``.
   An instance *arrives* when its ingest run commits, so its arrival is the later of its
   ``indexed_at`` and the ``ended_at`` of its ingest run (``ingest_runs``), both UTC. ``indexed_at``
   alone is when a worker read the file, which for a long run is minutes before the run commits:
   a series would look quiet the moment it became visible;
3. are not done by this model version: no ``segment_stats`` row for the series, model and
   ``model_version`` (as :func:`voxlake.ai.segment.segment` decides; such a row is the commit
   point of a segmentation);
4. have not failed with this model version since they last changed: a ``segment_errors`` row for
   the series, model and version whose ``time`` is after the series' newest arrival means the
   same input would fail again, so the series waits until new instances arrive (or a new
   model version comes). A failure is thus recorded once per state of the series, not once
   per poll.

The order is by arrival (oldest first). Rule 3 means a series that gets more instances after it was
segmented is not segmented again (use ``voxlake segment --redo`` for that); a ``quiet_seconds``
longer than the longest stall of a sender avoids it.

:func:`watch` polls the lake every ``interval`` seconds (a :class:`~voxlake.lake.lake.Lake` sees
commits made by other processes at its next query: :meth:`~voxlake.lake.lake.Lake.connect`
compares the tables' Delta versions), takes the complete series and segments them one at a time
with :func:`voxlake.ai.segment.segment_series`; a failure goes to ``segment_errors`` and the loop
goes on. The list is taken again after each series, so a series that got a new instance meanwhile
waits for its quiet period again. At start, and whenever the model's alias moves to a new version,
every complete series the version has not done is caught up, as ``voxlake segment --rules`` would.

>>> watch("./lake", "rules.json", "phantom-organs@champion")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from voxlake.errors import InvalidArgumentError, LakeNotFoundError

if TYPE_CHECKING:
    from voxlake.ai.model import SegmentationModel
    from voxlake.ai.segment import SeriesOutcome
    from voxlake.lake.lake import Lake

__all__ = ["AutoSummary", "complete_series", "outcome_dict", "watch"]

log = logging.getLogger(__name__)

#: The longest pause after passes that failed (a lake briefly unreadable, a registry down).
_MAX_BACKOFF = 60.0
#: How many outcomes an :class:`AutoSummary` keeps (the counts cover all of them).
_KEEP = 10_000


@dataclass
class AutoSummary:
    """What a :func:`watch` did: passes over the lake, series segmented and failed, the model
    versions it used (``name:version``, in order) and the last 10,000 outcomes."""

    model: str
    passes: int = 0
    segmented: int = 0
    errors: int = 0
    seconds: float = 0.0
    versions: list[str] = field(default_factory=list)
    outcomes: deque[tuple[SeriesOutcome, str, str]] = field(default_factory=lambda: deque(maxlen=_KEEP))

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "versions": list(self.versions), "passes": self.passes,
                "segmented": self.segmented, "errors": self.errors, "seconds": round(self.seconds, 3),
                "series": [outcome_dict(o, name, version) for o, name, version in self.outcomes]}


def outcome_dict(outcome: SeriesOutcome, model: str, model_version: str) -> dict[str, Any]:
    """One series as JSON: as in :meth:`voxlake.ai.segment.SegmentSummary.to_dict`, with the model."""
    return {"SeriesInstanceUID": outcome.SeriesInstanceUID, "status": outcome.status, "model": model,
            "model_version": model_version, "SEG": outcome.SEG or None,
            "error": f"{outcome.error_class}: {outcome.message}" if outcome.error_class else None,
            "seconds": {k: round(v, 3) for k, v in outcome.timings.items()}, "volumes_ml": outcome.volumes_ml}


_ARRIVALS = """
WITH wanted AS (SELECT DISTINCT unnest(?::VARCHAR[]) AS SeriesInstanceUID),
runs AS (SELECT run_id, max(ended_at) AS ended_at FROM ingest_runs GROUP BY run_id),
arrivals AS (
    SELECT i.SeriesInstanceUID,
        max(greatest(i.indexed_at, coalesce(r.ended_at, i.indexed_at))) AS arrived
    FROM instances i JOIN wanted w ON w.SeriesInstanceUID = i.SeriesInstanceUID
    LEFT JOIN runs r ON r.run_id = i.run_id
    GROUP BY i.SeriesInstanceUID
)
SELECT a.SeriesInstanceUID FROM arrivals a WHERE a.arrived <= ?
"""


def complete_series(lake: Lake, rules: Any, model: SegmentationModel, *, quiet_seconds: float,
                    now: datetime | None = None) -> list[str]:
    """The series of ``lake`` that ``rules`` select (a rules document or file, or the list of
    :func:`voxlake.ai.rules.load_rules`), complete at ``now`` (default: the current time, UTC)
    and not yet done by, nor failed since their last change with, ``model`` (anything with
    ``name`` and ``version``); oldest arrival first. See the module docstring for the rules."""
    from voxlake.ai.rules import select_series

    if quiet_seconds < 0:
        raise InvalidArgumentError(f"quiet_seconds must be 0 or more, got {quiet_seconds}")
    matched = sorted({m.SeriesInstanceUID for m in select_series(lake, rules)})
    if not matched:
        return []
    now = datetime.now(UTC) if now is None else now
    if now.tzinfo is None:
        raise InvalidArgumentError("now must be timezone-aware (UTC), e.g. datetime.now(UTC)")
    con = lake.connect()
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    query = _ARRIVALS
    params: list[Any] = [matched, now - timedelta(seconds=quiet_seconds)]
    if "segment_stats" in tables:
        query += """ AND NOT EXISTS (SELECT 1 FROM segment_stats s WHERE s.SeriesInstanceUID = a.SeriesInstanceUID
                                     AND s.model = ? AND s.model_version = ?)
            AND NOT EXISTS (SELECT 1 FROM segment_stats s
                            WHERE s.SegmentationSeriesInstanceUID = a.SeriesInstanceUID)"""
        params += [model.name, str(model.version)]
    if "segment_errors" in tables:
        query += """ AND NOT EXISTS (SELECT 1 FROM segment_errors e WHERE e.SeriesInstanceUID = a.SeriesInstanceUID
                                     AND e.model = ? AND e.model_version = ? AND e.time > a.arrived)"""
        params += [model.name, str(model.version)]
    query += " ORDER BY a.arrived, a.SeriesInstanceUID"
    return [r[0] for r in con.execute(query, params).fetchall()]


class _Models:
    """The model of a spec, loaded once; an alias (or a bare name) is resolved again at each
    :meth:`current`, and a new version loaded only when the resolution changed."""

    def __init__(self, model: str | SegmentationModel, registry: Any) -> None:
        self.spec = model if isinstance(model, str) else None
        self.model: SegmentationModel | None = None if isinstance(model, str) else model
        self.key: tuple[str, str] | None = None
        self._registry = registry

    @property
    def registry(self) -> Any:
        if self._registry is None:
            from voxlake.ai.registry import Registry

            self._registry = Registry()
        return self._registry

    def current(self) -> tuple[SegmentationModel, bool]:
        """The model for this pass, and whether it is newly loaded."""
        if self.spec is None:
            assert self.model is not None
            new, self.key = self.key is None, (self.model.name, str(self.model.version))
            return self.model, new
        try:
            row = self.registry.resolve(self.spec)
        except Exception:
            if self.model is None:
                raise
            log.warning("%s: cannot resolve the model; going on with %s:%s", self.spec, *self.key or ("?", "?"),
                        exc_info=True)
            return self.model, False
        key = (row.name, str(row.version))
        if self.model is not None and key == self.key:
            return self.model, False
        builtin = str(getattr(row, "kind", "")) == "builtin"
        self.model = self.registry.load(row.name if builtin else f"{row.name}:{row.version}")
        self.key = key
        return self.model, True


def watch(lake: str | Lake, rules: Any, model: str | SegmentationModel, *, quiet_seconds: float = 30,
          interval: float = 5, once: bool = False, stop: threading.Event | None = None,
          progress: Callable[[SeriesOutcome, SegmentationModel], None] | None = None,
          on_model: Callable[[SegmentationModel], None] | None = None, registry: Any = None,
          nifti: bool = False, meshes: bool = True) -> AutoSummary:
    """Segment the series that ``rules`` select as they arrive in ``lake`` (a URI, opened here, or a
    :class:`~voxlake.lake.lake.Lake` that no other thread queries meanwhile), once each is
    complete (see the module docstring), with ``model``: a :class:`SegmentationModel`, or a
    registry spec (``ct-tissue``, ``phantom-organs@champion``) resolved again at each pass, so a
    promoted champion is used without a restart (loaded once, when the alias moves).

    Every ``interval`` seconds a pass segments what is complete, one series at a time; a failing
    series goes to ``segment_errors`` and the pass goes on. ``progress(outcome, model)`` is called
    after each series, ``on_model(model)`` when a model version is loaded. ``once``: one pass, then
    return (errors reading the lake are raised). Otherwise runs until ``stop`` is set, checked
    between series, or the first Ctrl-C / SIGTERM in the main thread (a second Ctrl-C aborts);
    a missing lake is waited for, and a pass that fails is logged and tried again later, with a
    growing pause. ``nifti``, ``meshes``: as in :func:`voxlake.ai.segment.segment`."""
    import voxlake
    from voxlake._signals import stop_on_signals
    from voxlake.ai.rules import load_rules

    if interval <= 0:
        raise InvalidArgumentError(f"interval must be more than 0 seconds, got {interval}")
    if quiet_seconds < 0:
        raise InvalidArgumentError(f"quiet_seconds must be 0 or more, got {quiet_seconds}")
    if not isinstance(rules, list):
        rules = load_rules(rules)  # a bad rules file is one error now, not a warning at each pass
    own = isinstance(lake, str)
    the_lake: Lake = voxlake.open(lake) if isinstance(lake, str) else lake
    stop = stop if stop is not None else threading.Event()
    models = _Models(model, registry)
    summary = AutoSummary(model if isinstance(model, str) else f"{model.name}:{model.version}")
    start = time.perf_counter()
    failures = 0
    waiting = False
    try:
        with stop_on_signals(stop, message="stopping after the current series (Ctrl-C again to abort)"):
            while not stop.is_set():
                began = time.monotonic()
                try:
                    current, new = models.current()
                    if new:
                        summary.versions.append(f"{current.name}:{current.version}")
                        if on_model is not None:
                            on_model(current)
                    _pass(the_lake, rules, current, summary, stop, progress, quiet_seconds=quiet_seconds,
                          nifti=nifti, meshes=meshes)
                    failures, waiting = 0, False
                except LakeNotFoundError:
                    if once:
                        raise
                    if not waiting:
                        log.info("%s: no lake yet; waiting for the first ingest", the_lake.uri)
                    waiting = True
                except Exception:
                    if once or models.model is None:
                        raise
                    failures += 1
                    log.warning("%s: a pass of segment --auto failed; trying again", the_lake.uri, exc_info=True)
                summary.passes += 1
                if once:
                    break
                pause = min(interval * 2 ** min(failures, 16), max(interval, _MAX_BACKOFF))
                stop.wait(max(0.0, pause - (time.monotonic() - began)))
    finally:
        summary.seconds = time.perf_counter() - start
        if own:
            the_lake.close()
    return summary


def _pass(lake: Lake, rules: Any, model: SegmentationModel, summary: AutoSummary, stop: threading.Event,
          progress: Callable[[SeriesOutcome, SegmentationModel], None] | None, *, quiet_seconds: float,
          nifti: bool, meshes: bool) -> None:
    """Segment the complete series one by one, taking the list again after each (a series may
    have had a new instance meanwhile); each series at most once per pass."""
    from voxlake.ai.outputs import record_error
    from voxlake.ai.segment import SeriesOutcome, segment_series

    tried: set[str] = set()
    while not stop.is_set():
        todo = [s for s in complete_series(lake, rules, model, quiet_seconds=quiet_seconds) if s not in tried]
        if not todo:
            return
        series = todo[0]
        tried.add(series)
        try:
            outcome = segment_series(lake, series, model, nifti=nifti, meshes=meshes)
            summary.segmented += 1
        except Exception as exc:  # one series never stops the loop; the error is recorded
            text = str(exc).strip()
            outcome = SeriesOutcome(series, "error", type(exc).__name__,
                                    text.splitlines()[0] if text else type(exc).__name__)
            summary.errors += 1
            try:
                record_error(lake, series, model.name, str(model.version), outcome.error_class, outcome.message)
            except Exception:  # the lake is unwritable: the series is tried again at the next pass
                log.warning("series %s: cannot record its error in segment_errors", series, exc_info=True)
        summary.outcomes.append((outcome, model.name, str(model.version)))
        if progress is not None:
            progress(outcome, model)
