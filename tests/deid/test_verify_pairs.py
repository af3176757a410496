"""``verify(..., pairs=...)``: the output of a tool that writes no ``deid_audit`` table (another
de-identifier, in the benchmark) is checked against its sources through explicit file pairs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

import voxlake
from tests.conftest import SHARED_DATA, need
from voxlake.deid.run import deidentify_file
from voxlake.deid.verify import verify
from voxlake.errors import InvalidArgumentError

COOKIE = SHARED_DATA / "deid-data/data/dicom-cookies/image1.dcm"  # PatientName "nameless waterfall", cookie-47


@pytest.fixture(scope="module")
def lakes(tmp_path_factory):
    """A source lake of one real fake-PHI file; a peer's output folder with voxlake's de-identified
    copy (good.dcm) and a copy whose only change is a new SOP Instance UID (leaky.dcm)."""
    root = tmp_path_factory.mktemp("pairs")
    src_dir, out_dir = root / "src", root / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    source = src_dir / "image1.dcm"
    shutil.copy(need(COOKIE), source)
    key = root / "deid.key"
    key.write_text("0123456789abcdef" * 4)
    # SC images are excluded unless burned-in text is allowed: pixels are out of scope here
    outcome = deidentify_file(source, out_dir / "good.dcm", secret=key, allow_burned_in=True)
    assert outcome.status == "written", outcome.reason
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(out_dir / "leaky.dcm")
    src_lake = voxlake.open(str(root / "src-lake"))
    src_lake.ingest(str(src_dir), workers=0)
    out_lake = voxlake.open(str(root / "out-lake"))
    out_lake.ingest(str(out_dir), workers=0)
    return src_lake, out_lake, str(source), out_dir


def test_paired_clean_output_passes(lakes):
    src, out, source, out_dir = lakes
    report = verify(src, out, ocr=False, pairs={str(out_dir / "good.dcm"): source})
    assert report.instances == 2
    assert len(report.unmatched) == 1  # leaky.dcm has no pair
    assert report.checked["removed"] > 0
    assert not report.leaks, report.leaks


def test_paired_leaky_copy_is_flagged_by_source_attribute(lakes):
    src, out, source, out_dir = lakes
    leaky_sop = str(pydicom.dcmread(out_dir / "leaky.dcm", stop_before_pixels=True).SOPInstanceUID)
    report = verify(src, out, ocr=False, pairs={str(out_dir / "leaky.dcm"): source})
    names = [leak for leak in report.leaks if leak.kind == "header-value" and leak.source == "PatientName"]
    assert names and all(leak.instance == leaky_sop for leak in names)
    assert any(leak.kind == "uid-retained" for leak in report.leaks)  # the Study UID was kept
    assert not report.passed


def test_unpaired_research_instances_are_unmatched(lakes):
    src, out, _source, _out_dir = lakes
    report = verify(src, out, ocr=False, pairs={})
    assert len(report.unmatched) == 2 and not report.leaks and not report.passed


def test_without_pairs_a_lake_with_no_audit_is_still_refused(lakes):
    src, out, _source, _out_dir = lakes
    with pytest.raises(InvalidArgumentError, match="deid_audit"):
        verify(src, out, ocr=False)


def test_coding_scheme_uid_kept_by_the_profile_is_not_a_retained_source_uid(tmp_path):
    """Regression: DICOM JSON tags are upper-case hex, so CodingSchemeUID (0008,010C) was missed
    by verify's list of public UIDs and a kept coding scheme UID counted as a leak."""
    src_dir, out_dir = tmp_path / "src", tmp_path / "out"
    src_dir.mkdir()
    out_dir.mkdir()
    source = src_dir / "test-SR.dcm"  # CodingSchemeUID 1.2.276.0.7230010.3.0.0.1 at several depths
    shutil.copy(need(SHARED_DATA / "pydicom/test_files/test-SR.dcm"), source)
    key = tmp_path / "deid.key"
    key.write_text("0123456789abcdef" * 4)
    assert deidentify_file(source, out_dir / "sr.dcm", secret=key).status == "written"
    src = voxlake.open(str(tmp_path / "src-lake"))
    src.ingest(str(src_dir), workers=0)
    out = voxlake.open(str(tmp_path / "out-lake"))
    out.ingest(str(out_dir), workers=0)
    report = verify(src, out, ocr=False, pairs={str(out_dir / "sr.dcm"): str(source)})
    assert report.checked["uid_changed_consistent"] > 0
    assert report.passed, report.leaks


def test_folders_with_a_pairs_file_on_the_cli(lakes, tmp_path, capsys):
    """Folders need no lake: ``--pairs FILE.json`` maps research files to source files (relative to
    the folders); a leak is named by file and location, never by value."""
    import json as _json

    from voxlake.cli.main import main

    _src, _out, source, out_dir = lakes
    src_dir = str(Path(source).parent)
    pairs = tmp_path / "pairs.json"
    pairs.write_text(_json.dumps({"good.dcm": "image1.dcm"}))
    args = ["deid", "verify", "--source", src_dir, "--deidentified", str(out_dir), "--pairs", str(pairs), "--no-ocr"]
    assert main([*args, "--json"]) == 1  # leaky.dcm has no pair
    report = _json.loads(capsys.readouterr().out)
    leaky_sop = str(pydicom.dcmread(out_dir / "leaky.dcm", stop_before_pixels=True).SOPInstanceUID)
    assert report["unmatched"] == [leaky_sop] and report["leaks"] == []
    pairs.write_text(_json.dumps({"good.dcm": "image1.dcm", "leaky.dcm": "image1.dcm"}))
    assert main([*args, "--json"]) == 1
    report = _json.loads(capsys.readouterr().out)
    leaky = [leak for leak in report["leaks"] if leak["file"].endswith("leaky.dcm")]
    assert leaky and all(len(leak["term"]) == 64 for leak in leaky if leak["kind"] == "header-value")
    assert not [leak for leak in report["leaks"] if leak["file"].endswith("good.dcm")]
    assert "waterfall" not in _json.dumps(report).lower()
