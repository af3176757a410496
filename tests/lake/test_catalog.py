"""The catalog answers like the lake's views, follows every commit incrementally, and never shows
what is not committed."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

import voxlake
from voxlake.lake.catalog import Catalog

SERIES_COLUMNS = "SeriesInstanceUID, StudyInstanceUID, Modality, SeriesNumber, SeriesDescription"


def _copy_as_new_study(src: Path, dest: Path, n: int, suffix: str, description: str = "copy",
                       **attributes: str) -> None:
    """The first ``n`` slices of ``src`` as another study (fresh UIDs), under ``dest``."""
    dest.mkdir(parents=True)
    for p in sorted(src.iterdir())[:n]:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[ds.StudyInstanceUID, suffix])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[ds.SeriesInstanceUID, suffix])
        ds.SOPInstanceUID = generate_uid(entropy_srcs=[ds.SOPInstanceUID, suffix])
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyDescription = description
        for keyword, value in attributes.items():
            setattr(ds, keyword, value)
        ds.save_as(dest / p.name)


def _same_as_views(lake: voxlake.Lake, catalog: Catalog) -> None:
    con = catalog.cursor()
    checks = [
        ("SELECT SOPInstanceUID, uri, indexed_at FROM instances ORDER BY 1", None),
        (
            "SELECT StudyInstanceUID, PatientID, StudyDescription, ModalitiesInStudy, series, instances "
            "FROM studies ORDER BY 1",
            "SELECT StudyInstanceUID, PatientID, StudyDescription, ModalitiesInStudy, "
            "NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances FROM studies ORDER BY 1",
        ),
        (
            f"SELECT {SERIES_COLUMNS}, instances FROM series ORDER BY 1",
            f"SELECT {SERIES_COLUMNS}, NumberOfSeriesRelatedInstances FROM series ORDER BY 1",
        ),
        (
            "SELECT PatientID, studies, series, instances FROM patients ORDER BY 1",
            "SELECT PatientID, NumberOfPatientRelatedStudies, NumberOfPatientRelatedSeries, "
            "NumberOfPatientRelatedInstances FROM patients ORDER BY 1",
        ),
    ]
    for lake_sql, catalog_sql in checks:
        assert con.execute(catalog_sql or lake_sql).fetchall() == lake.sql(lake_sql).fetchall()


def test_the_catalog_matches_the_lake_views_and_follows_each_commit(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    catalog = Catalog(lake.uri)
    assert catalog.refresh() is False  # no lake yet: nothing to do, no error
    lake.ingest(str(ct_series), workers=0)
    assert catalog.refresh() is True
    _same_as_views(lake, catalog)
    assert catalog.refresh() is False  # nothing new

    _copy_as_new_study(ct_series, tmp_path / "more", 5, "9")
    lake.ingest(str(tmp_path / "more"), workers=0)
    assert catalog.refresh() is True
    _same_as_views(lake, catalog)
    counts = catalog.cursor().execute("SELECT NumberOfStudyRelatedInstances FROM studies ORDER BY 1").fetchall()
    assert sorted(counts) == [(5,), (134,)]


def test_a_new_version_of_an_instance_replaces_the_old_one_in_every_rollup(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    _copy_as_new_study(ct_series, tmp_path / "v1", 3, "7", description="first")
    lake.ingest(str(tmp_path / "v1"), workers=0)
    catalog = Catalog(lake.uri)
    catalog.refresh()
    # The same three instances again, changed, from another folder: new versions.
    _copy_as_new_study(ct_series, tmp_path / "v2", 3, "7", description="second")
    lake.ingest(str(tmp_path / "v2"), workers=0)
    assert catalog.refresh() is True
    _same_as_views(lake, catalog)
    con = catalog.cursor()
    assert con.execute("SELECT StudyDescription, NumberOfStudyRelatedInstances FROM studies").fetchall() == [
        ("second", 3)
    ]
    assert con.execute("SELECT count(*) FROM instances WHERE uri LIKE '%/v2/%'").fetchall() == [(3,)]


def test_rows_of_a_run_that_never_committed_stay_out(tmp_path, ct_series, monkeypatch):
    lake = voxlake.open(str(tmp_path / "lake"))
    _copy_as_new_study(ct_series, tmp_path / "a", 2, "1")
    lake.ingest(str(tmp_path / "a"), workers=0)

    def die(*args, **kwargs):
        raise KeyboardInterrupt("killed before the run row was written")

    _copy_as_new_study(ct_series, tmp_path / "b", 2, "2")
    monkeypatch.setattr("deltalake.write_deltalake", die)  # data committed, ingest_runs not
    with pytest.raises(KeyboardInterrupt):
        lake.ingest(str(tmp_path / "b"), workers=0)
    monkeypatch.undo()
    catalog = Catalog(lake.uri)
    catalog.refresh()
    assert catalog.cursor().execute("SELECT count(*) FROM instances").fetchall() == [(2,)]
    lake.ingest(str(tmp_path / "b"), workers=0)  # the rerun commits
    assert catalog.refresh() is True
    _same_as_views(lake, catalog)
    assert catalog.cursor().execute("SELECT count(*) FROM studies").fetchall() == [(2,)]


def test_compaction_changes_nothing_visible(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    _copy_as_new_study(ct_series, tmp_path / "a", 4, "1")
    lake.ingest(str(tmp_path / "a"), workers=0)
    _copy_as_new_study(ct_series, tmp_path / "b", 4, "2")
    lake.ingest(str(tmp_path / "b"), workers=0)
    catalog = Catalog(lake.uri)
    catalog.refresh()
    before = catalog.cursor().execute("SELECT * EXCLUDE (_file) FROM instances ORDER BY uri").fetchall()
    lake.optimize()
    catalog.refresh()
    after = catalog.cursor().execute("SELECT * EXCLUDE (_file) FROM instances ORDER BY uri").fetchall()
    assert after == before
    _same_as_views(lake, catalog)


def test_meta_returns_each_instance_header_from_its_file(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(ct_series), workers=0)
    catalog = Catalog(lake.uri)
    catalog.refresh()
    expected = dict(lake.sql("SELECT SOPInstanceUID, meta FROM instances ORDER BY 1 LIMIT 20").fetchall())
    assert catalog.meta(list(expected)) == expected
    assert catalog.meta(["1.2.3.unknown"]) == {}


def test_attributes_promoted_since_a_lake_was_written_are_filled_from_its_headers(tmp_path, ct_series):
    """An older lake has no ReferringPhysicianName column: the catalog still answers it, from
    ``meta``, and rows indexed after the upgrade carry the column itself."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    from voxlake.lake import schema

    physician = "WELBY^MARCUS"
    _copy_as_new_study(ct_series, tmp_path / "old", 2, "old", ReferringPhysicianName=physician)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(tmp_path / "old"), workers=0)
    table = tmp_path / "lake" / "instances"
    old_rows = pa.concat_tables([pq.read_table(f) for f in DeltaTable(str(table)).file_uris()])
    old_schema = schema.INSTANCES.remove(schema.INSTANCES.get_field_index("ReferringPhysicianName"))
    write_deltalake(str(table), old_rows.drop_columns(["ReferringPhysicianName"]).cast(old_schema),
                    mode="overwrite", schema_mode="overwrite")
    assert "ReferringPhysicianName" not in [f.name for f in DeltaTable(str(table)).schema().fields]

    catalog = Catalog(lake.uri)
    catalog.refresh()
    con = catalog.cursor()
    assert con.execute("SELECT DISTINCT ReferringPhysicianName FROM instances").fetchall() == [(physician,)]
    assert con.execute("SELECT ReferringPhysicianName FROM studies").fetchall() == [(physician,)]

    _copy_as_new_study(ct_series, tmp_path / "new", 3, "new", ReferringPhysicianName=physician)
    lake.ingest(str(tmp_path / "new"), workers=0)
    catalog.refresh()
    assert con.execute("SELECT count(*) FROM studies WHERE ReferringPhysicianName = ?",
                       [physician]).fetchall() == [(2,)]
    assert lake.sql("SELECT count(ReferringPhysicianName) FROM instances").fetchall() == [(3,)]  # new rows only

