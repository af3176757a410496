"""A run commits atomically: killed at any moment, the lake stays at its previous version, and a
rerun completes the work with no duplicate and no lost row."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import voxlake


def _copies(ct_series: Path, dest: Path, folders: list[str]) -> None:
    for name in folders:
        (dest / name).mkdir(parents=True)
        for p in sorted(ct_series.iterdir()):
            shutil.copy2(p, dest / name / p.name)


def _staged(lake_dir: Path) -> set[str]:
    folder = lake_dir / "instances"
    return {p.name for p in folder.glob("part-*.parquet")} if folder.exists() else set()


@pytest.mark.slow
def test_a_run_killed_midway_leaves_the_previous_version_and_a_rerun_completes_it(tmp_path, ct_series):
    src = tmp_path / "src"
    _copies(ct_series, src, ["a"])
    lake_dir = tmp_path / "lake"
    lake = voxlake.open(str(lake_dir))
    lake.ingest(str(src), workers=0)
    before = lake.versions()
    _copies(ct_series, src, ["b", "c"])
    staged_before = _staged(lake_dir)

    proc = subprocess.Popen(
        [sys.executable, "-m", "voxlake", "ingest", str(src), "--lake", str(lake_dir), "--workers", "1", "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (_staged(lake_dir) - staged_before) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its worker processes, mid-run
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert _staged(lake_dir) - staged_before, "the kill should land after workers staged files"

    lake = voxlake.open(str(lake_dir))
    assert lake.versions() == before
    assert lake.sql("SELECT count(*) FROM instances_history").fetchall() == [(134,)]

    summary = lake.ingest(str(src), workers=2)
    assert summary.indexed == 268
    assert lake.sql("SELECT count(*), count(DISTINCT uri) FROM instances_history").fetchall() == [(402, 402)]
    assert lake.sql("SELECT count(*) FROM ingest_files").fetchall() == [(402,)]


def test_a_run_that_dies_between_table_commits_stays_invisible_and_is_redone(tmp_path, ct_series, monkeypatch):
    src = tmp_path / "src"
    _copies(ct_series, src, ["a"])
    lake = voxlake.open(str(tmp_path / "lake"))

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed before the run row was written")

    # The data tables commit, then the process dies before ingest_runs: the commit point.
    monkeypatch.setattr("deltalake.write_deltalake", die)
    with pytest.raises(KeyboardInterrupt):
        lake.ingest(str(src), workers=0)
    monkeypatch.undo()
    assert lake.versions()["instances"] == 1  # the data commit happened...
    assert lake.sql("SELECT count(*) FROM instances_history").fetchall() == [(0,)]  # ...but is not visible
    assert lake.sql("SELECT count(*) FROM ingest_files").fetchall() == [(0,)]

    summary = lake.ingest(str(src), workers=0)
    assert summary.indexed == 134
    assert lake.sql("SELECT count(*), count(DISTINCT uri) FROM instances_history").fetchall() == [(134, 134)]


def test_vacuum_removes_files_staged_by_a_run_that_never_committed(tmp_path, ct_series, monkeypatch):
    src = tmp_path / "src"
    _copies(ct_series, src, ["a"])
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src / "a" / "1-001.dcm"), workers=0)

    def die(self, *args, **kwargs):
        raise KeyboardInterrupt("killed before the commit")

    monkeypatch.setattr("deltalake.DeltaTable.create_write_transaction", die)
    with pytest.raises(KeyboardInterrupt):
        lake.ingest(str(src), workers=0)
    monkeypatch.undo()
    orphans = lake.vacuum(retention_hours=0)  # dry run: lists, deletes nothing
    assert len(orphans["instances"]) >= 1
    assert all((tmp_path / "lake" / "instances" / Path(p).name).exists() for p in orphans["instances"])
    lake.vacuum(retention_hours=0, dry_run=False)
    assert not any((tmp_path / "lake" / "instances" / Path(p).name).exists() for p in orphans["instances"])
    assert lake.sql("SELECT count(*) FROM instances").fetchall() == [(1,)]
