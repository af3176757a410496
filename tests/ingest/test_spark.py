"""The Spark engine writes the lake the local engine writes, and Spark SQL reads what DuckDB reads."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import voxlake
from tests.conftest import SHARED_DATA, need
from voxlake.errors import MissingExtraError
from voxlake.ingest.transform import TransformOptions

PYDICOM = SHARED_DATA / "pydicom"
#: CT, SEG, SR, RWVM, parametric maps and a zipped MR series.
DCMQI = SHARED_DATA / "dcmqi" / "data"

VIEWS = ("instances_history", "instances", "ingest_errors", "ingest_files", "series", "studies", "patients")
RAW = ("_instances", "_ingest_errors", "_ingest_files", "ingest_runs")


@dataclass
class Ingested:
    local: voxlake.Lake
    spark: voxlake.Lake
    local_summary: Any
    spark_summary: Any


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 230 varied files: every pydicom test file kind, dcmqi's objects and zip, two bad files."""
    src = tmp_path_factory.mktemp("source")
    shutil.copytree(need(PYDICOM), src / "pydicom")
    shutil.copytree(need(DCMQI), src / "dcmqi")
    (src / "bad").mkdir()
    (src / "bad" / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    (src / "bad" / "broken.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    return src


@pytest.fixture(scope="module")
def ingested(source: Path, spark: Any, tmp_path_factory: pytest.TempPathFactory) -> Ingested:
    """The same source ingested into two fresh lakes, once by each engine."""
    root = tmp_path_factory.mktemp("lakes")
    local, on_spark = voxlake.open(str(root / "local")), voxlake.open(str(root / "spark"))
    local_summary = local.ingest(str(source), engine="local", workers=2)
    spark_summary = on_spark.ingest(str(source), engine="spark", spark_master="local[2]")
    return Ingested(local, on_spark, local_summary, spark_summary)


@pytest.fixture(scope="module")
def registered(ingested: Ingested, spark: Any) -> list[str]:
    return ingested.spark.register_spark(spark)


def rows(table: pa.Table) -> list[tuple[Any, ...]]:
    """Rows as tuples, instants as naive UTC: DuckDB and Spark label the same instants differently."""
    naive = pa.schema(
        [pa.field(f.name, pa.timestamp("us")) if pa.types.is_timestamp(f.type) else f for f in table.schema]
    )
    return [tuple(r.values()) for r in table.cast(naive).to_pylist()]


def duckdb_rows(lake: voxlake.Lake, query: str) -> list[tuple[Any, ...]]:
    return rows(lake.sql(query).arrow())


# -- the engine -------------------------------------------------------------------------------


@pytest.mark.slow
def test_spark_engine_writes_the_same_instance_rows_as_the_local_engine(ingested: Ingested) -> None:
    query = "SELECT * EXCLUDE (run_id, indexed_at) FROM instances_history ORDER BY uri, SOPInstanceUID"
    local = duckdb_rows(ingested.local, query)
    assert len(local) > 200
    members = "SELECT count(*) FROM instances_history WHERE uri LIKE 'zip://%'"
    assert ingested.spark.sql(members).fetchall()[0][0] > 0, "the zipped series is indexed too"
    assert duckdb_rows(ingested.spark, query) == local


@pytest.mark.slow
def test_spark_engine_records_the_same_errors_and_file_states_as_the_local_engine(
    ingested: Ingested,
) -> None:
    errors = "SELECT * EXCLUDE (run_id, time) FROM ingest_errors ORDER BY ALL"
    files = "SELECT * EXCLUDE (run_id) FROM ingest_files ORDER BY uri"
    assert len(duckdb_rows(ingested.local, errors)) >= 2
    assert duckdb_rows(ingested.spark, errors) == duckdb_rows(ingested.local, errors)
    assert duckdb_rows(ingested.spark, files) == duckdb_rows(ingested.local, files)


@pytest.mark.slow
def test_spark_engine_reports_the_same_counts_as_the_local_engine(ingested: Ingested) -> None:
    def counts(s: Any) -> dict[str, Any]:
        return {k: v for k, v in s.to_dict().items() if k not in ("run_id", "engine", "workers", "seconds")}

    assert counts(ingested.spark_summary) == counts(ingested.local_summary)
    assert ingested.spark_summary.committed
    assert ingested.spark.sql("SELECT engine FROM ingest_runs").fetchall() == [("spark",)]


@pytest.mark.slow
def test_spark_engine_rerun_on_an_unchanged_source_reads_nothing(ingested: Ingested, source: Path) -> None:
    again = ingested.spark.ingest(str(source), engine="spark", spark_master="local[2]")
    assert (again.files_unchanged, again.indexed, again.committed) == (again.files_seen, 0, False)


def test_spark_engine_without_pyspark_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from voxlake.ingest.engines.spark import run_spark

    monkeypatch.setitem(sys.modules, "pyspark", None)  # makes `import pyspark` raise ImportError
    with pytest.raises(MissingExtraError, match=r"pip install 'voxlake\[spark\]'"):
        run_spark([], TransformOptions(source="s", run_id="r"), str(tmp_path))


def test_spark_engine_with_nothing_to_do_starts_no_session(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pytest.importorskip("pyspark", reason="the spark extra is not installed")
    from voxlake.ingest.engines import spark as engine

    def no_session(master: str | None = None) -> None:
        raise AssertionError("a SparkSession was requested")

    monkeypatch.setattr(engine, "spark_session", no_session)
    assert engine.run_spark([], TransformOptions(source="s", run_id="r"), str(tmp_path)) == []


# -- Spark SQL over the lake ------------------------------------------------------------------


@pytest.mark.slow
def test_register_spark_names_the_raw_tables_and_every_view(registered: list[str]) -> None:
    assert registered == [*RAW, *VIEWS]


@pytest.mark.slow
@pytest.mark.parametrize(
    "query",
    [
        "SELECT Modality, count(*) AS instances FROM instances GROUP BY Modality ORDER BY Modality NULLS LAST",
        "SELECT * FROM series ORDER BY SeriesInstanceUID NULLS LAST",
        "SELECT * FROM studies ORDER BY StudyInstanceUID NULLS LAST",
        "SELECT * FROM patients ORDER BY PatientID NULLS LAST",
        "SELECT uri, StudyDate, PixelSpacing, mtime, indexed_at FROM instances ORDER BY uri",
        "SELECT uri, error_class, message, time FROM ingest_errors ORDER BY uri, message",
    ],
    ids=["modality-counts", "series", "studies", "patients", "instance-values", "errors"],
)
def test_spark_sql_over_the_views_gives_the_rows_duckdb_gives(
    ingested: Ingested, spark: Any, registered: list[str], query: str
) -> None:
    expected = duckdb_rows(ingested.spark, query)
    assert expected, "the query has rows to compare"
    assert rows(spark.sql(query).toArrow()) == expected


@pytest.mark.slow
def test_studies_with_several_modalities_list_them_sorted_and_backslash_separated(
    spark: Any, registered: list[str]
) -> None:
    found = [r[0] for r in spark.sql("SELECT ModalitiesInStudy FROM studies").collect()]
    several = [m for m in found if m and "\\" in m]
    assert several, found
    assert all(m.split("\\") == sorted(m.split("\\")) for m in several)


@pytest.mark.slow
def test_register_spark_on_a_lake_without_rows_gives_empty_views(spark: Any, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    lake = voxlake.open(str(tmp_path / "lake"))
    assert not lake.ingest(str(tmp_path / "empty")).committed  # creates the tables, adds nothing
    session = spark.newSession()  # its own temp views: the module's lake stays registered
    lake.register_spark(session)
    counts = {name: session.table(name).count() for name in (*RAW, *VIEWS)}
    assert counts == dict.fromkeys((*RAW, *VIEWS), 0)
    assert session.table("instances").schema["indexed_at"].dataType.typeName() == "timestamp"
