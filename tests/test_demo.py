"""`make demo` runs this module: it must work on a fresh machine with no service."""

from __future__ import annotations

import subprocess
import sys


def test_demo_generates_an_archive_ingests_it_and_prints_query_results(tmp_path):
    lake = tmp_path / "demo-lake"
    out = subprocess.run(
        [sys.executable, "-m", "voxlake.demo", "--lake", str(lake), "--data", str(tmp_path / "data")],
        capture_output=True, text=True, check=True, timeout=600,
    )
    assert sum(line.startswith("-- ") for line in out.stdout.splitlines()) == 6  # every query ran
    assert "errors 0" in out.stdout
    for modality in ("CT", "MR", "US", "SEG"):
        assert modality in out.stdout
    assert (lake / "instances" / "_delta_log").is_dir()
