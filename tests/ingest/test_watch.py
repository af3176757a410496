"""Continuous ingest: ``watch`` in a background thread over a folder that files land in.

Real CT slices from ../shared/data. The watch polls every 0.2 s and needs 0.5 s of quiet; the
tests wait on the lake with generous deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import voxlake
from voxlake.ingest.run import IngestSummary
from voxlake.ingest.watch import watch

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CT_SERIES = DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"

INTERVAL = 0.2
SETTLE = 0.5
DEADLINE = 15.0  # seconds; generous, a file normally lands in the lake in about one second


@pytest.fixture(scope="module")
def ct_files() -> list[Path]:
    files = sorted(CT_SERIES.glob("*.dcm"))[:4]
    if len(files) < 4:
        pytest.skip(f"test data not found (../shared/data): {CT_SERIES}")
    return files


@dataclass
class Watcher:
    """A watch running in a thread, with a Lake of the test's own to observe it."""

    lake_uri: str
    source: Path
    stop: threading.Event = field(default_factory=threading.Event)
    result: list[IngestSummary] | None = None
    seen: list[IngestSummary] = field(default_factory=list)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self, **options: Any) -> Watcher:
        def target() -> None:
            try:
                self.result = watch(
                    voxlake.open(self.lake_uri),
                    str(self.source),
                    interval=INTERVAL,
                    settle=SETTLE,
                    stop=self.stop,
                    on_run=self.seen.append,
                    workers=0,
                    **options,
                )
            except BaseException as exc:
                self.error = exc

        self.thread = threading.Thread(target=target, name="voxlake-watch", daemon=True)
        self.thread.start()
        return self

    def finish(self) -> list[IngestSummary]:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(timeout=DEADLINE)
        assert not self.thread.is_alive(), "watch did not stop after the stop event"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


@pytest.fixture
def watcher(tmp_path: Path) -> Iterator[Watcher]:
    source = tmp_path / "incoming"
    source.mkdir()
    w = Watcher(lake_uri=str(tmp_path / "lake"), source=source)
    yield w
    if w.thread is not None and w.thread.is_alive():
        w.stop.set()
        w.thread.join(timeout=DEADLINE)


def _rows(lake: voxlake.Lake, query: str) -> list[tuple[Any, ...]]:
    try:
        return lake.sql(query).fetchall()
    except voxlake.LakeNotFoundError:
        return []  # the first run has not created the tables yet


def _count(lake: voxlake.Lake) -> int:
    rows = _rows(lake, "SELECT count(*) FROM instances")
    return rows[0][0] if rows else 0


def _wait_for(condition: Callable[[], bool], what: str, watcher: Watcher) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if watcher.error is not None:
            raise watcher.error
        assert time.monotonic() < deadline, f"timed out after {DEADLINE} s waiting for {what}"
        time.sleep(0.05)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_new_file_is_indexed_within_seconds(watcher: Watcher, ct_files: list[Path]) -> None:
    lake = voxlake.open(watcher.lake_uri)
    watcher.start()
    shutil.copyfile(ct_files[0], watcher.source / "a.dcm")  # a fresh mtime
    _wait_for(lambda: _count(lake) == 1, "the first file", watcher)
    # A copy that keeps the original's old mtime is found by the two-poll check alone.
    shutil.copy2(ct_files[1], watcher.source / "b.dcm")
    _wait_for(lambda: _count(lake) == 2, "the second file", watcher)
    summaries = watcher.finish()

    rows = _rows(lake, "SELECT uri, sha256, is_partial FROM instances ORDER BY uri")
    assert rows == [
        (str(watcher.source / "a.dcm"), _sha256(ct_files[0]), False),
        (str(watcher.source / "b.dcm"), _sha256(ct_files[1]), False),
    ]
    assert sum(s.indexed for s in summaries) == 2
    assert _rows(lake, "SELECT DISTINCT mode FROM ingest_runs") == [("watch",)]


def test_file_written_in_pieces_is_never_indexed_half_written(
    watcher: Watcher, ct_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="voxlake.ingest.watch")
    lake = voxlake.open(watcher.lake_uri)
    watcher.start()
    # A complete file first: once it is in the lake the watch is polling and the tables exist.
    shutil.copyfile(ct_files[0], watcher.source / "first.dcm")
    _wait_for(lambda: _count(lake) == 1, "the control file", watcher)

    data = ct_files[1].read_bytes()
    full_sha = hashlib.sha256(data).hexdigest()
    target = watcher.source / "slow.dcm"
    observations = 0

    def check() -> bool:
        """The invariant, at one observation; True once the complete file is in."""
        nonlocal observations
        observations += 1
        rows = _rows(lake, f"SELECT sha256, is_partial FROM instances_history WHERE uri = '{target}'")
        assert rows in ([], [(full_sha, False)]), f"half-written file in the lake: {rows}"
        return bool(rows)

    with open(target, "wb") as fp:
        fp.write(data[: len(data) // 2])
        fp.flush()
        # Pause much longer than settle: the half is unchanged over many polls and quiet enough.
        paused_until = time.monotonic() + 4 * SETTLE
        while time.monotonic() < paused_until:
            assert not check()
            time.sleep(0.05)
        assert any("looks cut short" in r.getMessage() for r in caplog.records), (
            "the watch never saw the half"
        )
        fp.write(data[len(data) // 2 :])
    _wait_for(check, "the completed file", watcher)
    watcher.finish()

    assert observations > 10
    assert _rows(lake, f"SELECT size FROM ingest_files WHERE uri = '{target}'") == [(len(data),)]
    assert _rows(lake, "SELECT count(*) FROM instances_history WHERE is_partial") == [(0,)]
    assert _rows(lake, "SELECT count(*) FROM ingest_errors") == [(0,)]


def test_stop_returns_the_summaries(watcher: Watcher, ct_files: list[Path]) -> None:
    lake = voxlake.open(watcher.lake_uri)
    watcher.start()
    for f in ct_files[:2]:
        shutil.copyfile(f, watcher.source / f.name)
    _wait_for(lambda: _count(lake) == 2, "two files", watcher)
    shutil.copyfile(ct_files[2], watcher.source / ct_files[2].name)
    _wait_for(lambda: _count(lake) == 3, "the third file", watcher)
    summaries = watcher.finish()

    assert summaries == watcher.seen  # on_run saw each run as it committed
    assert all(isinstance(s, IngestSummary) and s.committed for s in summaries)
    assert sum(s.indexed for s in summaries) == 3
    assert sum(s.errors + s.skipped + s.partial for s in summaries) == 0
    runs = {r[0] for r in _rows(lake, "SELECT run_id FROM ingest_runs")}
    assert {s.run_id for s in summaries} == runs
    assert 2 <= len(runs) <= 3  # one run per poll with ready files; the third came later


def test_missing_source_does_not_end_the_watch(
    watcher: Watcher, ct_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="voxlake.ingest.watch")
    lake = voxlake.open(watcher.lake_uri)
    watcher.source.rmdir()
    watcher.start()
    _wait_for(lambda: any("cannot list" in r.getMessage() for r in caplog.records), "a warning", watcher)
    watcher.source.mkdir()
    shutil.copyfile(ct_files[3], watcher.source / "late.dcm")
    _wait_for(lambda: _count(lake) == 1, "the file in the re-created folder", watcher)
    assert len(watcher.finish()) == 1
    assert sum("cannot list" in r.getMessage() for r in caplog.records) == 1  # logged once per outage


def test_duration_ends_the_watch(tmp_path: Path, ct_files: list[Path]) -> None:
    source = tmp_path / "incoming"
    source.mkdir()
    shutil.copy2(ct_files[0], source / "old.dcm")  # already there, with an old mtime
    lake = voxlake.open(str(tmp_path / "lake"))
    summaries = watch(lake, str(source), interval=INTERVAL, settle=SETTLE, duration=1.5, workers=0)
    assert [s.indexed for s in summaries] == [1]
    assert _count(lake) == 1
    # A second watch finds nothing new: the committed state is read from the lake.
    assert watch(lake, str(source), interval=INTERVAL, settle=SETTLE, duration=1.0, workers=0) == []


def test_wrong_options_fail_at_once(tmp_path: Path) -> None:
    lake = voxlake.open(str(tmp_path / "lake"))
    with pytest.raises(voxlake.InvalidArgumentError, match="interval"):
        watch(lake, str(tmp_path), interval=0)
    with pytest.raises(voxlake.InvalidArgumentError, match="engine"):
        watch(lake, str(tmp_path), engine="nope", duration=0)
