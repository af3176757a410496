"""Continuous ingest (``voxlake ingest --watch``): poll a source, index each file once it is whole.

Why polling: a source is anything :func:`~voxlake.ingest.sources.list_units` lists, a local folder
or an fsspec URL such as ``s3://``. Object stores and network mounts have no inotify, so the watch
lists the source every ``interval`` seconds and compares what it sees with the previous listing.
A new file is indexed within about ``interval + settle`` seconds of landing.

Why the settle rule: a file that is still being written must never be indexed half-written (the
half would be committed as a partial instance). A unit is *ready* when all of these hold:

1. it is not in the lake yet with this (uri, size, mtime): new, or changed since it was indexed;
2. its (size, mtime) is the same as in the previous poll: a writer that is still appending keeps
   changing them, and a copying tool that restores an old mtime at the end is caught too, because
   the size grows between polls while it copies;
3. it has been quiet for ``settle`` seconds: its mtime is that old, or (when the storage clock is
   skewed) this watch has seen it unchanged for that long;
4. its content looks whole, unless it has been quiet for ``partial_settle`` seconds: a writer
   that pauses longer than ``settle`` (a stalled network copy) passes rules 2 and 3, so a recently
   changed DICOM file is read up to its Pixel Data (without the pixels: one seek) and held while
   an element runs past the end of the file; a .zip is held while its central directory (written
   last) is missing, and an empty file is held too. A file that stays cut short for
   ``partial_settle`` seconds is indexed as it is (flagged ``is_partial``, or as an error).

Each poll with ready units makes one run, :func:`~voxlake.ingest.run.ingest_units`: one atomic
commit per batch. Memory stays bounded: between polls the watch keeps only the previous poll's
map ``uri -> (size, mtime, first seen, next check, failed reads)``, not a history.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from voxlake._signals import stop_on_signals
from voxlake.errors import InvalidArgumentError, MissingExtraError
from voxlake.ingest.run import IngestSummary, committed_states, ingest_units
from voxlake.ingest.sources import Unit, list_units

log = logging.getLogger(__name__)

_ZIP_MAGIC = b"PK\x03\x04"
#: The longest pause after failed runs (a lake that is unreachable for a while).
_MAX_BACKOFF = 60.0

#: A unit whose reading failed in a run (status ``retry``) is tried again after this many seconds,
#: doubling with each failure up to the maximum.
_RETRY_AFTER = 30.0
_MAX_RETRY_AFTER = 3600.0
#: ``next_check`` of a unit known to be committed.
_COMMITTED = math.inf

#: uri -> (size, mtime µs, monotonic time this state was first seen, monotonic time before which
#: the unit is not considered (0: now, inf: committed), failed reads of this state)
_State = tuple[int, int, float, float, int]


def watch(
    lake: Any,
    source: str,
    *,
    interval: float = 1.0,
    settle: float = 2.0,
    stop: threading.Event | None = None,
    duration: float | None = None,
    on_run: Callable[[IngestSummary], None] | None = None,
    partial_settle: float = 60.0,
    **ingest_options: Any,
) -> list[IngestSummary]:
    """Index ``source`` into ``lake`` continuously; returns the summary of every committed run.

    Polls every ``interval`` seconds and indexes each new or changed file once it is ready (see
    the module docstring: unchanged between two polls, quiet for ``settle`` seconds, and whole or
    quiet for ``partial_settle`` seconds). Each batch of ready files is one run of
    :func:`~voxlake.ingest.run.ingest_units` with ``ingest_options`` (``engine``, ``workers``,
    ``sha256``, ...; ``mode`` defaults to ``"watch"``), committed atomically; ``on_run`` is called
    with its summary.

    Runs until ``stop`` is set or ``duration`` seconds have passed. Ctrl-C (in the main thread,
    where SIGINT still has Python's default handler) stops after the current run; a second Ctrl-C
    aborts that run, which then commits nothing. A poll whose listing or lake read fails (the
    source is briefly missing, the network drops) logs a warning and the watch goes on; a failed
    run is retried at later polls, with a growing pause. The watch reads the lake's Delta tables
    directly, never through ``lake``'s DuckDB connection, so ``lake`` may be queried from another
    thread meanwhile.
    """
    _check(interval, settle, duration, partial_settle, ingest_options)
    ingest_options.setdefault("mode", "watch")
    stop = stop if stop is not None else threading.Event()
    deadline = None if duration is None else time.monotonic() + duration
    summaries: list[IngestSummary] = []
    poller = _Poller(lake, source, settle=settle, partial_settle=partial_settle)
    failures = 0
    try:
        with stop_on_signals(stop, message="stopping after the current run"):
            while not stop.is_set():
                started = time.monotonic()
                ready = poller.poll()
                if ready:
                    summary = _run(lake, source, ready, ingest_options)
                    failures = failures + 1 if summary is None else 0
                    if summary is not None:
                        poller.after_run(ready, summary)
                    if summary is not None and summary.committed:
                        summaries.append(summary)
                        _log_run(source, summary)
                        if on_run is not None:
                            on_run(summary)
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    break
                pause = min(interval * 2 ** min(failures, 16), max(interval, _MAX_BACKOFF))
                wait = max(0.0, pause - (now - started))
                if deadline is not None:
                    wait = min(wait, deadline - now)
                stop.wait(wait)
    except KeyboardInterrupt:
        log.warning("watch %s: interrupted; %d runs committed", source, len(summaries))
    return summaries


def _check(
    interval: float, settle: float, duration: float | None, partial_settle: float, options: dict[str, Any]
) -> None:
    if not interval > 0:
        raise InvalidArgumentError(f"interval must be a number of seconds above 0, not {interval!r}")
    if not settle >= 0:
        raise InvalidArgumentError(f"settle must be a number of seconds of 0 or more, not {settle!r}")
    if not partial_settle >= 0:
        raise InvalidArgumentError(
            f"partial_settle must be a number of seconds of 0 or more, not {partial_settle!r}"
        )
    if duration is not None and not duration >= 0:
        raise InvalidArgumentError(f"duration must be a number of seconds of 0 or more, not {duration!r}")
    if "engine" in options:
        from voxlake.ingest.engines import Engine

        Engine.parse(options["engine"])  # a wrong engine fails now, not at the first new file


def _log_run(source: str, s: IngestSummary) -> None:
    log.info(
        "watch %s: run %s indexed %d, skipped %d, errors %d (%d files)",
        source,
        s.run_id,
        s.indexed,
        s.skipped,
        s.errors,
        s.files_seen,
    )


def _run(lake: Any, source: str, units: list[Unit], options: dict[str, Any]) -> IngestSummary | None:
    """One run over the ready units; None when it failed (nothing was committed)."""
    try:
        return ingest_units(lake, source, units, **options)
    except (InvalidArgumentError, MissingExtraError):
        raise  # wrong options or a missing extra: no retry fixes these
    except Exception as exc:  # storage and engine errors are retried at the next poll
        log.warning(
            "watch %s: a run over %d files failed, nothing committed; retrying (%s: %s)",
            source,
            len(units),
            type(exc).__name__,
            exc,
        )
        return None


class _Poller:
    """The previous poll's view of the source, and the readiness rule."""

    def __init__(self, lake: Any, source: str, *, settle: float, partial_settle: float) -> None:
        self.lake = lake
        self.source = source
        self.settle = settle
        self.partial_settle = partial_settle
        self.previous: dict[str, _State] = {}
        self._failing: str | None = None  # the last failure logged, so an outage logs once

    def poll(self) -> list[Unit]:
        """List the source once; the units ready to index now."""
        try:
            units = list(list_units(self.source))
        except MissingExtraError:
            raise
        except Exception as exc:  # SourceError, and whatever a backend raises
            self._warn(f"cannot list the source ({exc}); retrying")
            return []  # keep the previous map: files unchanged through the outage stay stable
        now = time.monotonic()
        now_us = time.time_ns() // 1000
        current: dict[str, _State] = {}
        candidates: list[tuple[Unit, float]] = []  # (unit, seconds quiet)
        for unit in units:
            if unit.uri in current:
                continue
            old = self.previous.get(unit.uri)
            if old is None or old[0] != unit.size or old[1] != unit.mtime:
                current[unit.uri] = (unit.size, unit.mtime, now, 0.0, 0)
                continue
            current[unit.uri] = old
            quiet = max((now_us - unit.mtime) / 1e6, now - old[2])
            if now >= old[3] and quiet >= self.settle:
                candidates.append((unit, quiet))
        self.previous = current
        if not candidates:
            self._recovered()
            return []
        done = self._committed()
        if done is None:
            return []
        ready = []
        for unit, quiet in candidates:
            if (unit.uri, unit.size, unit.mtime) in done:
                self._update(unit, _COMMITTED)
            elif quiet >= self.partial_settle or _looks_whole(unit):
                ready.append(unit)
            else:
                log.debug("watch %s: %s looks cut short; waiting for the rest", self.source, unit.uri)
        return ready

    def after_run(self, units: list[Unit], summary: IngestSummary) -> None:
        """Units a run has read are in ingest_files now: no need to ask the lake about them
        again. Those whose reading failed (status ``retry``) are tried again later, each time
        after a longer pause, rather than at every poll."""
        if summary.errors == 0:
            for unit in units:
                self._update(unit, _COMMITTED)
            return
        done = self._committed()
        if done is None:
            return  # the lake cannot be read now: the next poll asks again
        now = time.monotonic()
        for unit in units:
            if (unit.uri, unit.size, unit.mtime) in done:
                self._update(unit, _COMMITTED)
                continue
            state = self.previous.get(unit.uri)
            attempts = 0 if state is None else state[4]
            self._update(unit, now + min(_RETRY_AFTER * 2**attempts, _MAX_RETRY_AFTER), attempts + 1)

    def _committed(self) -> set[tuple[str, int, int]] | None:
        """The lake's committed (uri, size, mtime); None (after a warning) when it cannot be read."""
        try:
            done = committed_states(self.lake.uri)
        except Exception as exc:
            try:
                missing = not self.lake.exists()
            except Exception:
                missing = False
            if not missing:  # an unreachable lake is retried at the next poll
                self._warn(f"cannot read the lake's ingest_files ({type(exc).__name__}: {exc}); retrying")
                return None
            done = set()  # no lake yet: the first run creates it
        self._recovered()
        return done

    def _update(self, unit: Unit, next_check: float, attempts: int | None = None) -> None:
        state = self.previous.get(unit.uri)
        if state is not None and state[0] == unit.size and state[1] == unit.mtime:
            tries = state[4] if attempts is None else attempts
            self.previous[unit.uri] = (state[0], state[1], state[2], next_check, tries)

    def _warn(self, message: str) -> None:
        if message != self._failing:
            log.warning("watch %s: %s", self.source, message)
        self._failing = message

    def _recovered(self) -> None:
        if self._failing is not None:
            log.warning("watch %s: recovered", self.source)
            self._failing = None


def _looks_whole(unit: Unit) -> bool:
    """False when the bytes say more are coming: an empty file, a DICOM element running past the
    end, a zip without its central directory. Anything else (not DICOM at all) is whole."""
    if unit.size == 0:
        return False
    import zipfile

    from voxlake.dicom.parser import read_header
    from voxlake.errors import InvalidDicomError, NotDicomError
    from voxlake.ingest.transform import _open

    try:
        with _open(unit.uri) as fp:
            head = fp.read(132)
            fp.seek(0)
            if head[:4] == _ZIP_MAGIC and head[128:132] != b"DICM":
                try:
                    zipfile.ZipFile(fp).close()
                except zipfile.BadZipFile:
                    return False
                return True
            try:
                header = read_header(fp, uri=unit.uri, size=unit.size)
            except NotDicomError:
                return True
            except InvalidDicomError:
                return False  # e.g. file meta cut short; indexed as an error after partial_settle
            return not header.partial
    except Exception:  # vanished, unreadable right now: ask again at the next poll
        return False
