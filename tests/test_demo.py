"""`make demo` runs this module: it must work on a fresh lake with no service."""

from __future__ import annotations

import subprocess
import sys


def test_demo_ingests_the_sample_files_and_prints_query_results(tmp_path):
    lake = tmp_path / "demo-lake"
    out = subprocess.run(
        [sys.executable, "-m", "voxlake.demo", "--lake", str(lake)],
        capture_output=True, text=True, check=True, timeout=300,
    )
    assert sum(line.startswith("-- ") for line in out.stdout.splitlines()) == 5  # every query ran
    assert "CT" in out.stdout and "errors 0" in out.stdout
    assert (lake / "instances" / "_delta_log").is_dir()
