"""``deid verify``: passes on clean output; finds planted leaks (a name variant in a nested sequence, a
date, an un-remapped UID, a broken reference) with the instance and the location."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

import voxlake
from tests.conftest import SHARED_DATA, need
from voxlake.cli.main import main
from voxlake.deid.run import deidentify_lake
from voxlake.deid.verify import CATEGORIES, verify

OPTIONS = ["retain-longitudinal-modified-dates", "clean-pixel-data"]
CT_WITH_TEXT = SHARED_DATA / "presidio-pseudo-phi/docs_sample_data/2_ORIGINAL.dcm"  # KAUFMAN^SCOTT, DOB 19430722


def _tesseract() -> None:
    pytest.importorskip("pytesseract")
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract is not installed (make deid-tools)")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A source lake: a phantom CT series with its SEG, and a CT with fake PHI burned in."""
    pytest.importorskip("highdicom")
    _tesseract()
    from voxlake.synth.phantom import generate_phantoms

    root = tmp_path_factory.mktemp("verify")
    files = root / "files"
    generate_phantoms(files, cases=1, seed=5, rows=64, columns=64, slices=(4, 4), slice_thickness=15.0)
    shutil.copy(need(CT_WITH_TEXT), files / "2_ORIGINAL.dcm")
    lake = voxlake.open(str(root / "lake"))
    lake.ingest(str(files), workers=0)
    key = root / "deid.key"
    key.write_text("0123456789abcdef" * 4)
    return root, lake, key


def _research(source, tmp_path: Path) -> Path:
    _root, lake, key = source
    out = tmp_path / "research"
    summary = deidentify_lake(lake, out, secret=key, options=OPTIONS)
    assert summary.errors == 0 and summary.excluded == 0
    return out


def test_clean_output_passes_every_category(source, tmp_path):
    out = _research(source, tmp_path)
    report = verify(source[1], out, secret=source[2], ocr=False)
    assert report.passed, report.leaks
    assert report.instances == 6 and not report.unmatched
    checked = report.checked
    assert all(checked[c] > 0 for c in ("removed", "retained", "date_shifted", "uid_changed_consistent",
                                        "patient_id_consistent"))


@pytest.mark.slow
def test_clean_output_passes_the_pixel_checks_too(source, tmp_path):
    out = _research(source, tmp_path)
    report = verify(source[1], out, secret=source[2], ocr=True)
    assert report.passed, report.leaks
    assert report.checked["pixels_hidden"] == report.checked["pixels_retained"] == 6


def _rewrite(out: Path, pick, change) -> str:
    """Change one research file in place and re-index the research lake; returns its SOP UID."""
    path = next(p for p in sorted((out / "dicom").rglob("*.dcm")) if pick(pydicom.dcmread(p, stop_before_pixels=True)))
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    voxlake.open(str(out)).ingest(str(out / "dicom"), workers=0)
    return str(ds.SOPInstanceUID)


def test_planted_leaks_are_found_with_instance_and_location(source, tmp_path):
    root, lake, key = source
    out = _research(source, tmp_path)
    src_ct = pydicom.dcmread(root / "files/2_ORIGINAL.dcm", stop_before_pixels=True)
    src_study = next(str(u) for (u,) in lake.sql("SELECT StudyInstanceUID FROM instances WHERE Modality = 'SEG'")
                     .fetchall())

    def name_and_date(ds: Dataset) -> None:
        item = Dataset()
        item.ScheduledProcedureStepDescription = "follow-up for scott kaufman"  # given family, lower case
        ds.RequestAttributesSequence = [Dataset()]
        ds.RequestAttributesSequence[0].ReferencedStudySequence = [item]
        ds.ImageComments = "born 07/22/1943"

    ct = _rewrite(out, lambda d: d.Modality == "CT" and "Aquilion" in str(d.get("ManufacturerModelName", "")),
                  name_and_date)

    def stale_uid(ds: Dataset) -> None:
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        ref.ReferencedSOPInstanceUID = src_study  # the source's Study Instance UID, not remapped
        ds.ReferencedStudySequence = [ref]

    phantom_ct = _rewrite(out, lambda d: d.Modality == "CT" and "Aquilion" not in str(d.get("ManufacturerModelName")),
                          stale_uid)

    def broken(ds: Dataset) -> None:
        ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID = "2.25.12345"

    seg = _rewrite(out, lambda d: d.Modality == "SEG", broken)

    report = verify(lake, out, secret=key, ocr=False)
    assert not report.passed
    found = {(leak.kind, leak.instance, leak.location) for leak in report.leaks}
    assert ("header-value", ct, "RequestAttributesSequence[0].ReferencedStudySequence[0]."
            "ScheduledProcedureStepDescription") in found
    assert ("header-value", ct, "ImageComments") in found
    assert ("uid-retained", phantom_ct, "ReferencedStudySequence[0].ReferencedSOPInstanceUID") in found
    broken_at = "ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID"
    assert ("broken-reference", seg, broken_at) in found
    assert ("uid-inconsistent", seg, broken_at) in found  # with the key: not the keyed UID of the source's
    by_location = {leak.location: leak for leak in report.leaks}
    assert by_location["ImageComments"].category == "removed"
    assert by_location["ImageComments"].source == "PatientBirthDate"
    dump = json.dumps(report.to_dict())
    assert "KAUFMAN" not in dump.upper() and src_ct.PatientID not in dump  # the report holds no PHI
    assert set(report.to_dict()["summary"]) == set(CATEGORIES)


def test_without_the_key_linkage_and_grouping_are_still_checked(source, tmp_path):
    out = _research(source, tmp_path)
    seg = _rewrite(out, lambda d: d.Modality == "SEG", lambda ds: setattr(ds, "StudyInstanceUID", "2.25.999"))
    report = verify(source[1], out, ocr=False)
    kinds = {leak.kind for leak in report.leaks}
    assert "study-split" in kinds  # one source study became two research studies
    assert all(leak.instance in ("", seg) or leak.kind == "study-split" for leak in report.leaks)


def test_cli_verify_exit_status_and_json(source, tmp_path, capsys):
    _root, lake, key = source
    out = _research(source, tmp_path)
    args = ["deid", "verify", "--source", lake.uri, "--deidentified", str(out), "--secret-file", str(key),
            "--no-ocr"]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["summary"]["removed"]["passed"]
    _rewrite(out, lambda d: d.Modality == "CT" and "Aquilion" in str(d.get("ManufacturerModelName", "")),
             lambda ds: setattr(ds, "ImageComments", "KAUFMAN, SCOTT"))
    assert main(args) == 1
    text = capsys.readouterr().out
    assert text.startswith("FAIL") and "header-value" in text and "ImageComments" in text
