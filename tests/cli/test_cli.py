"""The command line as a user and a script see it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq


def voxlake(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxlake", *args], capture_output=True, text=True, check=check, timeout=300
    )


def test_ingest_json_summary_is_one_object_with_the_counts(tmp_path, ct_series):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(ct_series.iterdir())[:5]:
        shutil.copy2(p, src / p.name)
    (src / "readme.txt").write_text("not dicom")
    out = voxlake("ingest", str(src), "--lake", str(tmp_path / "lake"), "--json", "--workers", "1")
    summary = json.loads(out.stdout)
    assert {"indexed": 5, "skipped": 1, "errors": 0}.items() <= summary.items()
    assert summary["seconds"] > 0


def test_ingest_shows_progress_and_a_summary_line(tmp_path, ct_series):
    out = voxlake("ingest", str(ct_series), "--lake", str(tmp_path / "lake"), "--workers", "2")
    assert "files/s" in out.stderr  # the tqdm bar
    assert out.stdout.startswith("indexed 134, skipped 0, errors 0")


def test_sql_writes_table_csv_json_and_parquet(tmp_path, ct_series):
    lake = str(tmp_path / "lake")
    voxlake("ingest", str(ct_series), "--lake", lake, "--quiet")
    query = "SELECT Modality, count(*) AS n FROM instances GROUP BY 1"
    assert "CT" in voxlake("sql", "--lake", lake, query).stdout
    assert voxlake("sql", "--lake", lake, "--format", "csv", query).stdout.splitlines() == ['"Modality","n"', '"CT",134']
    assert json.loads(voxlake("sql", "--lake", lake, "--format", "json", query).stdout) == [{"Modality": "CT", "n": 134}]
    target = tmp_path / "out.parquet"
    voxlake("sql", "--lake", lake, "--format", "parquet", "--output", str(target), query)
    assert pq.read_table(target).to_pylist() == [{"Modality": "CT", "n": 134}]


def test_errors_are_one_line_without_traceback(tmp_path):
    missing = voxlake("sql", "--lake", str(tmp_path / "nowhere"), "SELECT 1", check=False)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1 and "no voxlake lake here" in missing.stderr
    bad_engine = voxlake("ingest", str(tmp_path), "--lake", str(tmp_path / "l"), "--engine", "sparkk", check=False)
    assert bad_engine.stderr.strip() == "voxlake: error: engine must be one of local, spark, not 'sparkk'"
    no_source = voxlake("ingest", str(tmp_path / "absent"), "--lake", str(tmp_path / "l"), check=False)
    assert "absent: no such file or directory" in no_source.stderr
    assert "Traceback" not in no_source.stderr


def test_serve_refuses_a_path_without_a_lake_unless_told_to_create_one(tmp_path):
    typo = tmp_path / "lkae"
    out = voxlake("serve", "--lake", str(typo), "--port", "1", check=False)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip() == (f"voxlake: error: no lake at {typo} (voxlake ingest makes one; serve --create "
                                  "serves an empty one that STOW-RS uploads fill)")
    assert not typo.exists()


def test_debug_shows_the_traceback(tmp_path):
    out = voxlake("--debug", "sql", "--lake", str(tmp_path / "nowhere"), "SELECT 1", check=False)
    assert "Traceback" in out.stderr


def test_importing_voxlake_loads_no_heavy_dependency():
    code = (
        "import sys, voxlake; heavy = ['duckdb', 'deltalake', 'pyspark', 'pyarrow', 'pydicom', 'torch', 'monai'];"
        "print([m for m in heavy if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_public_api_is_declared():
    import types

    import voxlake

    public = {
        n
        for n, v in vars(voxlake).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType) and n != "annotations"
    }
    assert public <= set(voxlake.__all__)
    assert all(hasattr(voxlake, n) for n in voxlake.__all__)


def test_watch_prints_one_json_line_per_run_and_stops_cleanly_on_sigterm(tmp_path, ct_series):
    import signal
    import time

    src = tmp_path / "src"
    src.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "voxlake", "ingest", str(src), "--lake", str(tmp_path / "lake"),
         "--watch", "--interval", "0.2", "--settle", "0.3", "--json", "--quiet", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.0)
        shutil.copy2(sorted(ct_series.iterdir())[0], src / "a.dcm")
        line = proc.stdout.readline()  # blocks until the first run reports
        assert json.loads(line)["indexed"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopping after the current run" in err
