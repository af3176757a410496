"""Ingest: every file accounted for once, incremental reruns, versions, archives, bad input."""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path

import pydicom
import pytest

import voxlake
from tests.conftest import need


@pytest.fixture(scope="module")
def shared_lake(tmp_path_factory, shared_data):
    lake = voxlake.open(str(tmp_path_factory.mktemp("shared") / "lake"))
    summary = lake.ingest(str(shared_data), workers=2)
    return lake, summary


def test_every_shared_file_ends_in_exactly_one_of_instances_errors_or_skipped(shared_lake, shared_data):
    lake, summary = shared_lake
    files = sorted(str(p) for p in shared_data.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert summary.files_seen == len(files)
    rows = lake.sql(
        """SELECT f.uri, f.status,
                  (SELECT count(*) FROM instances_history i WHERE i.uri = f.uri) AS n_instances,
                  (SELECT count(*) FROM ingest_errors e WHERE e.uri = f.uri) AS n_errors,
                  f.skipped
           FROM ingest_files f ORDER BY f.uri"""
    ).fetchall()
    assert [r[0] for r in rows] == files
    for uri, status, n_instances, n_errors, skipped in rows:
        if status == "archive":
            members = lake.sql(
                f"SELECT count(*) FROM instances_history WHERE uri LIKE 'zip://%::{uri}'"
            ).fetchall()[0][0]
            assert members > 0, uri
            continue
        assert n_instances + n_errors + skipped == 1, (uri, status, n_instances, n_errors, skipped)
    counts = lake.sql(
        "SELECT count(*) FILTER (WHERE status='skipped'), sum(instances), sum(errors) FROM ingest_files"
    ).fetchall()[0]
    assert counts == (summary.skipped, summary.indexed, summary.errors)


def test_the_abdominal_ct_is_one_series_of_134_instances(shared_lake, ct_series):
    lake, _ = shared_lake
    rows = lake.sql(
        "SELECT instances, Modality, PatientID FROM series WHERE SeriesInstanceUID = "
        "(SELECT SeriesInstanceUID FROM instances WHERE uri LIKE '%pancreatic-ct-cbct-seg_pyvista/series/1-001.dcm')"
    ).fetchall()
    assert rows == [(134, "CT", "Pancreas-CT-CB_001")]


def test_promoted_columns_agree_with_pydicom(shared_lake, ct_series):
    lake, _ = shared_lake
    path = sorted(ct_series.iterdir())[10]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    row = lake.sql(
        "SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, StudyDate, Modality, Rows, Columns, "
        "PixelSpacing, SliceThickness, ImagePositionPatient, InstanceNumber, PatientName, size, has_pixels "
        f"FROM instances WHERE uri = '{path}'"
    ).fetchall()[0]
    assert row[:3] == (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert row[3].strftime("%Y%m%d") == ds.StudyDate
    assert row[4:7] == (ds.Modality, ds.Rows, ds.Columns)
    assert row[7] == pytest.approx([float(v) for v in ds.PixelSpacing])
    assert row[8] == pytest.approx(float(ds.SliceThickness))
    assert row[9] == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert row[10] == ds.InstanceNumber
    assert row[11] == str(ds.PatientName)
    assert row[12] == path.stat().st_size
    assert row[13] is True


def test_dicom_tag_reads_keywords_and_sequence_paths_like_pydicom(shared_lake, shared_data):
    lake, _ = shared_lake
    path = need(shared_data / "totalsegmentator" / "reference_files" / "example_ct_dicom")
    first = sorted(p for p in path.iterdir() if p.is_file())[0]
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    with pytest.raises(voxlake.QueryError, match="'NoSuchThingHere' is not a DICOM keyword"):
        lake.sql(f"SELECT dicom_tag(meta, 'NoSuchThingHere') FROM instances WHERE uri = '{first}'").fetchall()
    row = lake.sql(
        "SELECT dicom_tag(meta, 'ReferencedImageSequence[0].ReferencedSOPInstanceUID'), "
        "dicom_tag(meta, '(0008,1140)[0].(0008,1155)'), dicom_tag(meta, 'ImageType'), "
        "dicom_tag(meta, 'ImageType[1]'), dicom_tag(meta, 'KVP'), dicom_tag(meta, 'ContrastBolusAgent') "
        f"FROM instances WHERE uri = '{first}'"
    ).fetchall()[0]
    ref_uid = ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID
    assert row[0] == row[1] == ref_uid
    assert row[2] == "\\".join(ds.ImageType)
    assert row[3] == ds.ImageType[1]
    assert float(row[4]) == pytest.approx(float(ds.KVP))
    assert row[5] == (ds.get("ContrastBolusAgent") or None)


def test_views_roll_up_patients_studies_and_series(shared_lake):
    lake, _ = shared_lake
    n_instances = lake.sql("SELECT count(*) FROM instances").fetchall()[0][0]
    assert lake.sql("SELECT sum(instances) FROM series").fetchall()[0][0] == n_instances
    assert lake.sql("SELECT sum(instances) FROM studies").fetchall()[0][0] == n_instances
    assert lake.sql("SELECT sum(instances) FROM patients").fetchall()[0][0] == n_instances
    bytes_ = lake.sql("SELECT sum(size) FROM instances").fetchall()[0][0]
    assert lake.sql("SELECT sum(total_bytes) FROM studies").fetchall()[0][0] == bytes_


def test_errors_name_the_file_and_a_reason(shared_lake):
    lake, _ = shared_lake
    for uri, cls, message in lake.sql("SELECT uri, error_class, message FROM ingest_errors").fetchall():
        assert uri and cls and message


# -- incremental, versions ---------------------------------------------------------------------


def _copy_series(ct_series: Path, dest: Path, n: int) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sorted(ct_series.iterdir())[:n]:
        shutil.copy2(p, dest / p.name)
        out.append(dest / p.name)
    return out


def test_incremental_rerun_indexes_only_new_files_and_never_duplicates(tmp_path, ct_series):
    src = tmp_path / "src"
    _copy_series(ct_series, src, 10)
    lake = voxlake.open(str(tmp_path / "lake"))
    first = lake.ingest(str(src), workers=0)
    assert (first.indexed, first.files_unchanged) == (10, 0)
    again = lake.ingest(str(src), workers=0)
    assert (again.indexed, again.files_unchanged, again.committed) == (0, 10, False)
    for p in sorted(ct_series.iterdir())[10:15]:
        shutil.copy2(p, src / p.name)
    third = lake.ingest(str(src), workers=0)
    assert (third.indexed, third.files_unchanged) == (5, 10)
    assert lake.sql("SELECT count(*), count(DISTINCT uri) FROM instances_history").fetchall() == [(15, 15)]


def test_a_resent_instance_is_a_new_version_and_the_views_show_the_latest(tmp_path, ct_series):
    src = tmp_path / "src"
    [path, *_] = _copy_series(ct_series, src, 3)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    ds = pydicom.dcmread(path)
    ds.SeriesDescription = "CORRECTED"
    ds.save_as(src / "resent.dcm")  # same SOPInstanceUID, different bytes, new file
    lake.ingest(str(src), workers=0)
    history = lake.sql(
        f"SELECT SeriesDescription, sha256 FROM instances_history WHERE SOPInstanceUID = '{ds.SOPInstanceUID}' "
        "ORDER BY indexed_at"
    ).fetchall()
    assert len(history) == 2 and history[0][1] != history[1][1]
    latest = lake.sql(
        f"SELECT SeriesDescription FROM instances WHERE SOPInstanceUID = '{ds.SOPInstanceUID}'"
    ).fetchall()
    assert latest == [("CORRECTED",)]
    assert lake.sql("SELECT instances FROM series").fetchall() == [(3,)]


def test_a_file_changed_in_place_is_reindexed(tmp_path, ct_series):
    src = tmp_path / "src"
    [path, *_] = _copy_series(ct_series, src, 2)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    ds = pydicom.dcmread(path)
    ds.PatientAge = "061Y"
    ds.save_as(path)
    summary = lake.ingest(str(src), workers=0)
    assert summary.indexed == 1
    assert lake.sql(f"SELECT PatientAge FROM instances WHERE uri = '{path}'").fetchall() == [("061Y",)]


# -- sources -----------------------------------------------------------------------------------


def test_zip_archives_are_read_in_memory_nested_ones_too(tmp_path, ct_series):
    files = sorted(ct_series.iterdir())[:4]
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        for p in files[2:]:
            z.write(p, f"inner/{p.name}")
    outer = tmp_path / "src" / "outer.zip"
    outer.parent.mkdir()
    with zipfile.ZipFile(outer, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for p in files[:2]:
            z.write(p, p.name)
        z.writestr("nested.zip", inner.getvalue())
        z.writestr("readme.txt", "not dicom")
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(str(outer), workers=0)
    assert (summary.indexed, summary.skipped, summary.errors) == (4, 1, 0)
    uris = [r[0] for r in lake.sql("SELECT uri FROM instances ORDER BY uri").fetchall()]
    assert f"zip://inner/{files[2].name}::zip://nested.zip::{outer}" in uris
    assert f"zip://{files[0].name}::{outer}" in uris


def test_a_dicomdir_source_indexes_the_files_it_references(tmp_path, pydicom_files):
    root = need(pydicom_files / "dicomdirtests")
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(str(root / "DICOMDIR"), workers=0)
    n_refs = len(
        {tuple(r.ReferencedFileID) for r in pydicom.dcmread(root / "DICOMDIR").DirectoryRecordSequence
         if "ReferencedFileID" in r}
    )
    assert summary.files_seen == n_refs + 1
    assert summary.indexed == n_refs + 1


def test_bad_files_never_abort_a_run(tmp_path, ct_series, pydicom_files):
    src = tmp_path / "src"
    src.mkdir()
    good = sorted(ct_series.iterdir())[0]
    shutil.copy2(good, src / "good.dcm")
    raw = good.read_bytes()
    (src / "truncated.dcm").write_bytes(raw[:5000])
    (src / "garbage.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 64)
    (src / "empty.dcm").write_bytes(b"")
    (src / "broken.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 200)
    (src / "notes.txt").write_text("not dicom")
    shutil.copy2(need(pydicom_files / "rtplan_truncated.dcm"), src / "rtplan_truncated.dcm")
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(str(src), workers=0)
    assert summary.files_seen == 7
    assert (summary.indexed, summary.partial) == (3, 2)
    assert summary.skipped == 2  # empty.dcm, notes.txt
    errors = dict(lake.sql("SELECT uri, message FROM ingest_errors").fetchall())
    assert set(errors) == {str(src / "garbage.dcm"), str(src / "broken.zip")}
    assert "zip" in errors[str(src / "broken.zip")]
    partial = lake.sql("SELECT uri, parse_warnings FROM instances WHERE is_partial ORDER BY uri").fetchall()
    assert [Path(u).name for u, _ in partial] == ["rtplan_truncated.dcm", "truncated.dcm"]
    assert all(w for _, w in partial)


def test_a_file_that_cannot_be_read_is_an_error_and_retried_on_the_next_run(tmp_path, ct_series):
    from voxlake.ingest.run import ingest_units
    from voxlake.ingest.sources import list_units

    src = tmp_path / "src"
    [path, *_] = _copy_series(ct_series, src, 2)
    units = list(list_units(str(src)))
    moved = path.rename(tmp_path / "elsewhere.dcm")  # gone between listing and reading
    lake = voxlake.open(str(tmp_path / "lake"))
    first = ingest_units(lake, str(src), units, workers=0)
    assert (first.indexed, first.errors) == (1, 1)
    assert lake.sql("SELECT uri, error_class FROM ingest_errors").fetchall() == [(str(path), "FileNotFoundError")]
    moved.rename(path)  # back, unchanged: same uri, size and mtime
    second = lake.ingest(str(src), workers=0)
    assert (second.indexed, second.errors, second.files_unchanged) == (1, 0, 1)
    assert lake.sql("SELECT count(*) FROM instances").fetchall() == [(2,)]


def test_a_full_run_indexes_every_unit_it_is_given(tmp_path, ct_series):
    from voxlake.ingest.run import ingest_units
    from voxlake.ingest.sources import list_units

    src = tmp_path / "src"
    _copy_series(ct_series, src, 2)
    units = list(list_units(str(src)))
    lake = voxlake.open(str(tmp_path / "lake"))
    assert ingest_units(lake, str(src), units, workers=0).indexed == 2
    assert ingest_units(lake, str(src), units, workers=0).indexed == 0  # incremental: nothing new
    again = ingest_units(lake, str(src), units, workers=0, mode="full")
    assert again.indexed == 2
    assert lake.sql("SELECT count(*), count(DISTINCT run_id) FROM instances").fetchall() == [(2, 1)]
    assert lake.sql(f"SELECT mode FROM ingest_runs WHERE run_id = '{again.run_id}'").fetchall() == [("full",)]
    assert ingest_units(lake, str(src), units, workers=0, mode="watch").indexed == 0  # other modes compare


def test_symlinked_folders_are_followed_once_even_in_a_loop(tmp_path, ct_series):
    real = tmp_path / "real"
    _copy_series(ct_series, real, 3)
    src = tmp_path / "src"
    src.mkdir()
    (src / "linked").symlink_to(real, target_is_directory=True)
    (real / "loop").symlink_to(src, target_is_directory=True)  # src -> real -> src ...
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(str(src), workers=0)
    assert (summary.files_seen, summary.indexed) == (3, 3)


def test_instances_without_sop_instance_uid_are_indexed_with_a_warning(tmp_path, ct_series):
    src = tmp_path / "src"
    [path, *_] = _copy_series(ct_series, src, 1)
    ds = pydicom.dcmread(path)
    for i in range(2):
        ds.SOPInstanceUID = ""
        ds.InstanceNumber = 100 + i
        ds.save_as(src / f"empty-uid-{i}.dcm")
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(str(src), workers=0)
    assert summary.indexed == 3
    rows = lake.sql(
        "SELECT InstanceNumber, parse_warnings FROM instances WHERE SOPInstanceUID IS NULL ORDER BY 1"
    ).fetchall()
    assert [r[0] for r in rows] == [100, 101]  # both kept: rows without a UID are keyed by uri
    assert all(any("SOPInstanceUID" in w for w in r[1]) for r in rows)
