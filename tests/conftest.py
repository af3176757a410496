"""Shared fixtures. Real data comes from ../shared/data beside the repository, never copied in."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CT_SERIES = SHARED_DATA / "pancreatic-ct-cbct-seg_pyvista" / "series"
PYDICOM_FILES = SHARED_DATA / "pydicom" / "test_files"


def need(path: Path) -> Path:
    """Skip the test, with the reason, when a piece of ../shared/data is absent."""
    if not path.exists():
        pytest.skip(f"test data not found: {path} (../shared/data is not beside the repository)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return need(SHARED_DATA)


@pytest.fixture(scope="session")
def ct_series() -> Path:
    return need(CT_SERIES)


@pytest.fixture(scope="session")
def pydicom_files() -> Path:
    return need(PYDICOM_FILES)


@pytest.fixture(scope="session")
def spark() -> Any:
    """One local[2] Spark session for the whole run, in UTC so timestamps read as DuckDB reads them."""
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    if shutil.which("java") is None:
        pytest.skip("Spark needs a Java runtime on PATH (make java)")
    from voxlake.ingest.engines.spark import spark_session

    session = spark_session("local[2]")
    session.conf.set("spark.sql.session.timeZone", "UTC")
    yield session
    session.stop()


def ct_and_mr_lake(tmp_path_factory: pytest.TempPathFactory, ct_series: Path, first: int, count: int) -> Any:
    """A lake of ``count`` slices of the real CT (from slice ``first``) and a single-slice MR: a
    series a CT model segments and one it must refuse."""
    import voxlake

    src = tmp_path_factory.mktemp("src")
    for p in sorted(ct_series.iterdir())[first:first + count]:
        shutil.copy2(p, src / p.name)
    shutil.copy2(need(PYDICOM_FILES / "MR_small.dcm"), src / "MR_small.dcm")
    lake = voxlake.open(str(tmp_path_factory.mktemp("lake") / "lake"))
    lake.ingest(str(src), workers=0)
    return lake
