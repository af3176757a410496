"""`synth scale`: header-realistic archives with a fresh, consistent hierarchy, fast and deterministic."""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import data_element_generator

import voxlake
from voxlake.synth import scale
from voxlake.synth.scale import ScaleResult, generate_scale

INSTANCES = 3000
UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
IDENTIFYING = ("PatientName", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


@pytest.fixture(scope="module")
def templates(tmp_path_factory, ct_series, pydicom_files) -> Path:
    """The 134-slice CT series and pydicom's varied test files (other modalities, transfer syntaxes,
    and files that cannot be templates), side by side as one template folder."""
    folder = tmp_path_factory.mktemp("templates")
    (folder / "ct").symlink_to(ct_series, target_is_directory=True)
    (folder / "pydicom").symlink_to(pydicom_files, target_is_directory=True)
    return folder


@pytest.fixture(scope="module")
def archive(tmp_path_factory, templates) -> tuple[Path, ScaleResult, list[int]]:
    out = tmp_path_factory.mktemp("scale") / "big"
    seen: list[int] = []
    result = generate_scale(
        out, instances=INSTANCES, source=templates, seed=7, workers=2, progress=seen.append
    )
    return out, result, seen


@pytest.fixture(scope="module")
def headers(archive) -> dict[Path, pydicom.Dataset]:
    out, _, _ = archive
    return {path: pydicom.dcmread(path) for path in sorted(out.rglob("*.dcm"))}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _top_level_lengths(path: Path) -> list[tuple[int, int]]:
    """(tag, value length) of every top-level element of the file meta and the dataset that has a
    defined length, read by pydicom's element generator."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    implicit = ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
    out = []
    with open(path, "rb") as fp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp.seek(132)
        for elem in data_element_generator(fp, False, True, stop_when=lambda tag, vr, length: tag.group != 2):
            out.append((elem.tag, elem.length))
        for elem in data_element_generator(fp, implicit, True):
            if isinstance(elem, pydicom.dataelem.RawDataElement) and elem.length != 0xFFFFFFFF:
                out.append((elem.tag, elem.length))
    return out


def test_it_writes_exactly_the_instances_asked_for_and_reports_progress(archive):
    out, result, seen = archive
    assert result.files == INSTANCES == sum(1 for p in out.rglob("*") if p.is_file())
    assert result.bytes == sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert sum(seen) == INSTANCES and len(seen) > 1  # progress(n): n more files written
    assert result.patients < result.studies <= result.series < result.files
    assert result.files_per_second > 0
    summary = result.summary()
    assert f"wrote {INSTANCES:,} header-only DICOM files (no Pixel Data)" in summary
    assert f"{result.patients:,} patients, {result.studies:,} studies, {result.series:,} series" in summary


def test_every_file_reads_with_pydicom_and_the_folders_follow_the_hierarchy(archive, headers):
    out, result, _ = archive
    series_uids: dict[Path, set[str]] = defaultdict(set)
    study_uids: dict[Path, set[str]] = defaultdict(set)
    study_patients: dict[Path, set[str]] = defaultdict(set)
    sops = []
    for path, ds in headers.items():
        assert path.relative_to(out).parts[0] == ds.PatientID  # out/<patient>/<study>/<series>/<n>.dcm
        assert path.parent.parent.name == ds.AccessionNumber
        assert "PixelData" not in ds
        series_uids[path.parent].add(ds.SeriesInstanceUID)
        study_uids[path.parent.parent].add(ds.StudyInstanceUID)
        study_patients[path.parent.parent].add(ds.PatientID)
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        sops.append(ds.SOPInstanceUID)
    assert all(len(uids) == 1 for uids in series_uids.values())
    assert all(len(uids) == 1 for uids in study_uids.values())
    assert all(len(ids) == 1 for ids in study_patients.values())
    assert len({next(iter(u)) for u in series_uids.values()}) == len(series_uids) == result.series
    assert len({next(iter(u)) for u in study_uids.values()}) == len(study_uids) == result.studies
    assert len({p.relative_to(out).parts[0] for p in headers}) == result.patients
    assert len(set(sops)) == len(sops) == INSTANCES
    assert all(len(sop) <= 64 and UID.match(sop) for sop in sops)


def test_every_element_written_has_an_even_length(archive, headers):
    odd = [
        (path.name, f"{tag:08X}", length)
        for path in list(headers)[::7]
        for tag, length in _top_level_lengths(path)
        if length % 2
    ]
    assert odd == []


def test_the_same_seed_gives_byte_identical_files_with_one_or_two_workers(tmp_path, templates, monkeypatch):
    monkeypatch.setattr(scale, "TASK_FILES", 50)  # many small tasks, shared out unevenly between workers
    one = generate_scale(tmp_path / "one", instances=600, source=templates, seed=3, workers=1)
    two = generate_scale(tmp_path / "two", instances=600, source=templates, seed=3, workers=2)
    assert (one.files, one.patients, one.studies, one.series) == (
        two.files,
        two.patients,
        two.studies,
        two.series,
    )
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


def test_a_different_seed_gives_different_uids_and_patients(tmp_path, ct_series):
    a = tmp_path / "a"
    b = tmp_path / "b"
    generate_scale(a, instances=200, source=ct_series, seed=1, workers=0)
    generate_scale(b, instances=200, source=ct_series, seed=2, workers=0)

    def identifiers(folder: Path) -> set[str]:
        found = set()
        for path in folder.rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            found |= {str(ds[k].value) for k in IDENTIFYING}
        return found

    assert identifiers(a).isdisjoint(identifiers(b))


def test_headers_keep_the_templates_non_identifying_attributes(headers, ct_series):
    originals = {}
    for path in ct_series.iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        originals[int(ds.InstanceNumber)] = ds
    template_uids = {str(ds[k].value) for ds in originals.values() for k in IDENTIFYING}
    kept = (
        "Modality", "Manufacturer", "ManufacturerModelName", "SeriesDescription", "Rows", "Columns",
        "PixelSpacing", "SliceThickness", "ImageOrientationPatient", "ImagePositionPatient",
        "BitsAllocated", "RescaleIntercept", "KVP", "SOPClassUID", "StudyTime", "SeriesNumber",
    )  # fmt: skip
    copies = [ds for ds in headers.values() if ds.get("Manufacturer") == "Philips" and ds.Modality == "CT"]
    assert len(copies) > 134
    for ds in copies:
        template = originals[int(ds.InstanceNumber)]
        assert [ds.get(k) for k in kept] == [template.get(k) for k in kept]
        assert {str(ds[k].value) for k in IDENTIFYING}.isdisjoint(template_uids | {template.PatientID})
        assert ds.FrameOfReferenceUID != template.FrameOfReferenceUID


def test_references_inside_a_study_follow_its_objects_to_their_new_uids(tmp_path, ct_series, pydicom_files):
    """A template study of three CT slices and an RT Structure Set drawn on them: in each copy the
    structure set references the copied CT's Frame of Reference, series and study."""
    src = tmp_path / "study"
    src.mkdir()
    slices = sorted(ct_series.iterdir())[:3]
    ct = pydicom.dcmread(slices[0])
    rt = pydicom.dcmread(pydicom_files / "rtstruct.dcm", force=True)
    rt.StudyInstanceUID = ct.StudyInstanceUID
    frame = rt.ReferencedFrameOfReferenceSequence[0]
    frame.FrameOfReferenceUID = ct.FrameOfReferenceUID
    frame.RTReferencedStudySequence[0].ReferencedSOPInstanceUID = ct.StudyInstanceUID
    frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID = ct.SeriesInstanceUID
    for roi in rt.StructureSetROISequence:
        roi.ReferencedFrameOfReferenceUID = ct.FrameOfReferenceUID
    rt.save_as(src / "rtstruct.dcm")
    for path in slices:
        (src / path.name).symlink_to(path)

    generate_scale(tmp_path / "out", instances=8, source=src, workers=0)

    copies = [pydicom.dcmread(p) for p in sorted((tmp_path / "out").rglob("*.dcm"))]
    for study_uid in {ds.StudyInstanceUID for ds in copies}:
        [ct_copy, *_] = [ds for ds in copies if ds.StudyInstanceUID == study_uid and ds.Modality == "CT"]
        [rt_copy] = [ds for ds in copies if ds.StudyInstanceUID == study_uid and ds.Modality == "RTSTRUCT"]
        frame = rt_copy.ReferencedFrameOfReferenceSequence[0]
        study = frame.RTReferencedStudySequence[0]
        assert frame.FrameOfReferenceUID == ct_copy.FrameOfReferenceUID != ct.FrameOfReferenceUID
        assert study.ReferencedSOPInstanceUID == study_uid != ct.StudyInstanceUID
        assert study.RTReferencedSeriesSequence[0].SeriesInstanceUID == ct_copy.SeriesInstanceUID
        assert {roi.ReferencedFrameOfReferenceUID for roi in rt_copy.StructureSetROISequence} == {
            ct_copy.FrameOfReferenceUID
        }


def test_each_patient_keeps_one_name_sex_and_birth_date_and_plausible_dates(headers):
    patients: dict[str, set[tuple[str, str, str]]] = defaultdict(set)
    for ds in headers.values():
        patients[ds.PatientID].add((str(ds.PatientName), ds.PatientSex, ds.PatientBirthDate))
        assert "20080101" <= ds.StudyDate <= "20251231"
        assert "19180101" <= ds.PatientBirthDate < ds.StudyDate
        if "PatientAge" in ds:
            years = int(ds.StudyDate[:4]) - int(ds.PatientBirthDate[:4])
            assert int(ds.PatientAge[:3]) in (years - 1, years)
    assert all(len(values) == 1 for values in patients.values())
    assert all(sex in ("F", "M") for ((_, sex, _),) in patients.values())


def test_a_study_keeps_the_intervals_between_its_dates(headers, ct_series):
    template = pydicom.dcmread(next(ct_series.iterdir()), stop_before_pixels=True)
    for ds in headers.values():
        if ds.get("Manufacturer") == "Philips" and ds.Modality == "CT":
            assert _days(ds.AcquisitionDate) - _days(ds.StudyDate) == _days(template.AcquisitionDate) - _days(
                template.StudyDate
            )


def _days(da: str) -> int:
    import datetime as dt

    return dt.date(int(da[:4]), int(da[4:6]), int(da[6:8])).toordinal()


def test_voxlake_ingest_indexes_every_file_and_the_views_show_the_hierarchy(archive, tmp_path):
    out, result, _ = archive
    lake = voxlake.open(str(tmp_path / "lake"))
    summary = lake.ingest(str(out), workers=0)
    assert (summary.indexed, summary.errors, summary.skipped) == (INSTANCES, 0, 0)
    counts = lake.sql(
        "SELECT (SELECT count(*) FROM patients), (SELECT count(*) FROM studies),"
        " (SELECT count(*) FROM series), (SELECT sum(instances) FROM patients)"
    ).fetchall()[0]
    assert counts == (result.patients, result.studies, result.series, INSTANCES)
    assert lake.sql("SELECT max(studies) FROM patients").fetchall()[0][0] <= 3


def test_pixels_template_keeps_the_template_pixel_data(tmp_path, ct_series):
    result = generate_scale(tmp_path / "px", instances=140, source=ct_series, pixels="template", workers=0)
    assert "template pixel data" in result.summary()
    originals = {}
    for path in ct_series.iterdir():
        ds = pydicom.dcmread(path)
        originals[int(ds.InstanceNumber)] = ds.PixelData
    for path in sorted((tmp_path / "px").rglob("*.dcm"))[:10]:
        ds = pydicom.dcmread(path)
        assert ds.PixelData == originals[int(ds.InstanceNumber)]
        assert ds.pixel_array.shape == (512, 512)


def test_templates_that_cannot_serve_are_listed_with_the_reason(archive):
    _, result, _ = archive
    reasons = "\n".join(result.skipped)
    assert "ExplVR_BigEnd.dcm: Explicit VR Big Endian (retired) is not supported" in reasons
    assert "README.txt: no StudyInstanceUID" in reasons
    assert result.template_instances > 134 and result.template_studies > 10


def test_wrong_arguments_say_how_to_fix_them(tmp_path, ct_series):
    with pytest.raises(voxlake.InvalidArgumentError, match="pixels must be one of none, template, not 'raw'"):
        generate_scale(tmp_path / "x", instances=10, source=ct_series, pixels="raw")
    with pytest.raises(voxlake.InvalidArgumentError, match="instances must be at least 1"):
        generate_scale(tmp_path / "x", instances=0, source=ct_series)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.dcm").write_bytes(b"")
    with pytest.raises(voxlake.InvalidArgumentError, match="not an empty folder"):
        generate_scale(tmp_path / "full", instances=10, source=ct_series)
    with pytest.raises(voxlake.SourceError, match="no such file or folder"):
        generate_scale(tmp_path / "y", instances=10, source=tmp_path / "absent")
    with pytest.raises(voxlake.SourceError, match="no usable template"):
        generate_scale(tmp_path / "z", instances=10, source=tmp_path / "full")
