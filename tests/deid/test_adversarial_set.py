"""The adversarial PHI set (`voxlake synth adversarial`) and the independent leak detector that scores
de-identification against it: the set is as varied as it says, its answer key is exact (every planted
value is found where the key says, by a detector that shares no code with voxlake.deid), clinical words
are there to survive, and a cleaned file shows no leak."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from tests.deid.leak_detector import Finding, find_leaks, ocr_available, read_dicom, survivors
from voxlake.synth.adversarial import (
    NESTING_DEPTH,
    PIXEL_WHERE,
    WHERE,
    adversarial_identity,
    generate_adversarial,
)

SEED = 7
pytestmark = pytest.mark.filterwarnings("ignore:VR lookup failed")  # the planted unknown element, read as UN


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("adversarial")
    t0 = time.perf_counter()
    key = generate_adversarial(out, seed=SEED)
    print(f"\ngenerated {len(key['files'])} files in {time.perf_counter() - t0:.1f} s")
    return out, key


@pytest.fixture(scope="module")
def leaks(adversarial: tuple[Path, dict]) -> list[Finding]:
    out, key = adversarial
    t0 = time.perf_counter()
    found = find_leaks(out, key)
    print(f"\nfind_leaks (no OCR): {len(found)} findings in {time.perf_counter() - t0:.1f} s")
    return found


def _digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_set_is_varied_and_readable(adversarial):
    out, key = adversarial
    files = key["files"]
    assert 36 <= len(files) <= 48
    assert len({f["sop_class_uid"] for f in files}) >= 10
    charsets = {json.dumps(f["specific_character_set"]) for f in files if f["specific_character_set"]}
    assert len(charsets) >= 5, charsets
    assert {"ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "ISO_IR 126", "GB18030"} <= {
        c for f in files if isinstance(c := f["specific_character_set"], str)}
    assert any("ISO 2022 IR 87" in (f["specific_character_set"] or []) for f in files)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*.dcm")}
    assert on_disk == {f["path"] for f in files}
    for f in files:
        ds = read_dicom(out / f["path"])
        assert ds is not None, f["path"]
        assert str(ds.SOPClassUID) == f["sop_class_uid"]
        assert str(ds.PatientID) == key["identity"]["id"]["patient_id"], f["path"]  # one patient throughout
        if f["path"].endswith("nested_1000.dcm"):
            item, depth = ds, 0
            while "ContentSequence" in item:
                item, depth = item.ContentSequence[0], depth + 1
            assert depth == NESTING_DEPTH
            assert key["identity"]["name"]["family"] in item.TextValue
        else:
            pydicom.dcmread(out / f["path"])  # plain reading works too
    lying = [f for f in files if f["burned_in"] and f["burned_in_annotation"] == "NO"]
    silent = [f for f in files if f["burned_in"] and f["burned_in_annotation"] is None]
    assert lying and silent


def test_derived_objects_reference_instances_of_the_set(adversarial):
    out, key = adversarial
    instances = {f["sop_instance_uid"] for f in key["files"]}
    studies = {str(pydicom.dcmread(out / "ct" / "ct_001.dcm").StudyInstanceUID)}  # RTSTRUCT's study reference
    for name in ("seg/seg.dcm", "pr/gsps.dcm", "sr/basic_text_ja.dcm", "sr/enhanced.dcm", "sr/comprehensive_utf8.dcm",
                 "rt/rtstruct.dcm"):
        ds = pydicom.dcmread(out / name)
        refs = {str(e.value) for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
        assert refs & instances and refs - instances <= studies, name
    mrn = key["identity"]["id"]["mrn"]
    assert any(mrn in f["sop_instance_uid"] for f in key["files"])  # one referenced UID carries the MRN


def test_the_same_seed_gives_the_same_bytes(adversarial, tmp_path):
    out, _ = adversarial
    generate_adversarial(tmp_path / "again", seed=SEED)
    assert _digest(tmp_path / "again") == _digest(out)
    assert adversarial_identity(SEED + 1).mrn != json.loads((out / "answer_key.json").read_text())["identity"]["id"]["mrn"]


def test_the_key_is_complete_and_well_formed(adversarial):
    _, key = adversarial
    assert set(key) >= {"identity", "planted", "must_survive", "files"}
    categories = {r["category"] for r in key["planted"]}
    assert categories == {"name", "id", "date", "phone", "address", "email", "ssn", "accession", "physician",
                          "institution"}
    wheres = {w for r in key["planted"] for w in r["where"]}
    assert wheres <= set(WHERE)
    assert wheres >= {"header", "free-text", "code-meaning", "sr", "pr", "seg", "rt", "pdf", "overlay", "icon",
                      "pixels", "private", "uid", "un"}
    values = [r["value"] for r in key["planted"]]
    assert len(values) == len(set(values))
    for row in key["planted"]:
        assert len(row["value"]) >= 5 and not (row["value"].isdigit() and len(row["value"]) == 4)
        assert row["files"] == sorted({a["file"] for a in row["at"]})
        assert set(row["exact_files"]) <= set(row["files"])
    name = key["identity"]["name"]
    for variant in ("Quentina Zyxwvut", "ZYXWVUT, QUENTINA", "Q. Zyxwvut", "Zyxwvut Quentina", "Zyxwvüt",
                    name["cyrillic"].split("^")[0], name["greek"].split("^")[0], "ジクスウト", "じくすうと"):
        assert variant in values, variant
    exact = {r["value"]: r["exact_files"] for r in key["planted"]}
    assert exact["Zyxwvüt"] == ["mr/mr_001.dcm"]
    assert "mr/mr_002.dcm" in exact["じくすうと"]
    assert set(key["identity"]["date"]["spellings"].values()) <= set(values)
    assert {r["value"] for r in key["must_survive"]} >= {"Liver", "Heart", "Lung_R", "10200004"}


def test_every_planted_value_is_found_where_the_key_says(adversarial, leaks):
    _, key = adversarial
    found = {(f.file, f.value) for f in leaks}
    expected = {(a["file"], r["value"]) for r in key["planted"] for a in r["at"] if a["where"] not in PIXEL_WHERE}
    assert expected - found == set()
    # and nothing the key does not know of, outside pixels: the key is exact
    everywhere = {(a["file"], r["value"]) for r in key["planted"] for a in r["at"]}
    assert found - everywhere == set()
    hows = {f.how.split(":")[0] for f in leaks}
    assert hows == {"bytes", "element", "pdf"}
    pdf = {f.value for f in leaks if f.how.startswith("pdf") and f.file == "doc/report_pdf.dcm"}
    assert key["identity"]["ssn"] in pdf  # only in the FlateDecode stream


def test_clinical_words_are_there_to_survive(adversarial):
    out, key = adversarial
    assert survivors(out, key) == {r["value"]: True for r in key["must_survive"]}


def test_a_cleaned_file_shows_no_leak_and_digits_need_boundaries(adversarial, tmp_path):
    out, key = adversarial
    ds = pydicom.dcmread(out / "ct" / "ct_012.dcm")
    ds.remove_private_tags()
    for elem in list(ds.iterall()):
        if elem.VR in ("PN", "LO", "LT", "SH", "ST", "UT", "DA", "CS", "AE") and elem.tag != 0x00080005:
            elem.value = ""
    for keyword in ("OtherPatientIDsSequence", "RequestAttributesSequence", "ProcedureCodeSequence",
                    "ReferringPhysicianIdentificationSequence"):
        delattr(ds, keyword)
    clean = tmp_path / "clean"
    clean.mkdir()
    ds.save_as(clean / "ct.dcm")
    shutil.copy(out / "answer_key.json", clean / "answer_key.json")  # ignored
    (clean / "audit.jsonl").write_text(json.dumps(key["identity"]) + "\n")  # ignored
    assert find_leaks(clean, key) == []
    mrn = key["identity"]["id"]["mrn"]
    (clean / "uid.txt").write_text(f"2.25.1{mrn}9 and 7{mrn}")
    assert find_leaks(clean, key) == []
    (clean / "uid.txt").write_text(f"id:{mrn}.")
    assert [(f.file, f.value) for f in find_leaks(clean, key)] == [("uid.txt", mrn)]


def test_the_cli_writes_the_set_and_a_summary(tmp_path):
    run = subprocess.run([sys.executable, "-m", "voxlake", "synth", "adversarial", str(tmp_path / "a"), "--json"],
                         capture_output=True, text=True, check=True, timeout=300)
    summary = json.loads(run.stdout)
    assert summary["files"] == len(list((tmp_path / "a").rglob("*.dcm")))
    assert (tmp_path / "a" / "answer_key.json").is_file()


@pytest.mark.slow
def test_ocr_reads_the_burned_in_text(adversarial):
    if not ocr_available():
        pytest.skip("OCR needs pytesseract and the tesseract program (make deid-tools)")
    out, key = adversarial
    t0 = time.perf_counter()
    found = find_leaks(out, key, ocr=True)
    print(f"\nfind_leaks (OCR): {len(found)} findings in {time.perf_counter() - t0:.1f} s")
    ocr = {(f.file, f.value, f.how.split()[0]) for f in found if f.how.startswith("ocr:")}
    family = key["identity"]["name"]["family"]
    for f in key["files"]:
        if f["burned_in"]:
            assert (f["path"], family, "ocr:pixels") in ocr, f["path"]
    pixel_rows = [(a["file"], r["value"]) for r in key["planted"] for a in r["at"]
                  if a["where"] == "pixels" and r["category"] in ("name", "id", "date")]
    read = [fv for fv in pixel_rows if (*fv, "ocr:pixels") in ocr]
    assert len(read) >= 0.9 * len(pixel_rows), sorted(set(pixel_rows) - set(read))
    assert ("ct/ct_005.dcm", family, "ocr:overlay") in ocr
    assert ("mr/mr_003.dcm", family, "ocr:overlay") in ocr
    assert ("ct/ct_005.dcm", family, "ocr:icon") in ocr


@pytest.mark.slow
def test_dciodvfy_checks_the_files(adversarial):
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy is not installed (make dicom-tools)")
    out, key = adversarial
    counts = {}
    for f in key["files"]:
        if "nested" in f["path"]:
            continue
        run = subprocess.run(["dciodvfy", str(out / f["path"])], capture_output=True, text=True, timeout=120)
        lines = (run.stdout + run.stderr).splitlines()
        assert not any("Unrecognized SOP Class" in line for line in lines), f["path"]
        counts[f["path"]] = sum(line.startswith("Error") for line in lines)
    print("\ndciodvfy errors per file:", {k: v for k, v in counts.items() if v}, "total", sum(counts.values()))
    assert counts
