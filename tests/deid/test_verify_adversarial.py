"""``deid verify`` finds what an independent auditor finds, on the adversarial PHI set
(:mod:`voxlake.synth.adversarial`): every planted value in every file it was planted in, when the
output is the raw input (each leak matched to its value by the term's hash, never by the value); no
leak in voxlake's own output, by default and with every cleaning option; everything the independent
detector (tests/deid/leak_detector.py) finds in dicognito's output; and nothing in pure noise."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.deid.leak_detector import find_leaks, ocr_available
from voxlake.deid.keys import Secret
from voxlake.deid.run import deidentify_files
from voxlake.deid.verify import Leak, term_hash, verify
from voxlake.synth.adversarial import PIXEL_WHERE, generate_adversarial

pytestmark = pytest.mark.filterwarnings("ignore:VR lookup failed")  # the planted unknown element, read as UN
ALL_OPTIONS = ["clean-pixel-data", "clean-descriptors", "clean-structured-content", "clean-graphics",
               "retain-longitudinal-modified-dates"]
UNREADABLE = {"sr/nested_1000.dcm"}  # pydicom cannot read a sequence nested 1000 deep
PHI_CATEGORIES = {"removed", "date_shifted", "pixels_hidden"}


@pytest.fixture(scope="module")
def adversarial(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Path]:
    root = tmp_path_factory.mktemp("verify-adversarial")
    key = generate_adversarial(root / "set", seed=7)
    secret = root / "deid.key"
    secret.write_text("00112233445566778899aabbccddeeff" * 2 + "\n")
    return root / "set", key, secret


def _candidates(value: str) -> set[str]:
    """The spellings of a planted value a leak's term may be: the value, its words and its digits
    joined as the answer key's folded search joins them ("(207) 555-0140" is "207-555-0140")."""
    tokens = [t for t in re.split(r"[\W_]+", value) if t]
    return {value, *(w for w in re.split(r"[\s,^\u00b7]+", value) if len(w) >= 3),
            *(t for t in tokens if len(t) >= 3), "-".join(tokens), " ".join(tokens), "".join(tokens)}


def _by_file(leaks: list[Leak], folder: Path) -> dict[str, list[Leak]]:
    out: dict[str, list[Leak]] = {}
    for leak in leaks:
        if leak.file:
            out.setdefault(Path(leak.file).resolve().relative_to(folder.resolve()).as_posix(), []).append(leak)
    return out


def _missed(key: dict, leaks: dict[str, list[Leak]], secret: Secret | None, *, values: set[tuple[str, str]] | None
            = None) -> list[tuple[str, str, str]]:
    """(value, file, where) planted (or in ``values``) that no leak of that file names."""
    missed = []
    ocr = ocr_available()
    for row in key["planted"]:
        hashes = {term_hash(c, secret) for c in _candidates(row["value"])}
        for at in row["at"]:
            if at["file"] in UNREADABLE or (values is not None and (row["value"], at["file"]) not in values):
                continue
            if at["where"] in PIXEL_WHERE and not ocr:
                continue
            if not any(leak.term in hashes for leak in leaks.get(at["file"], [])):
                missed.append((row["value"], at["file"], at["where"]))
    return missed


def test_every_planted_value_is_found_in_every_file_of_a_leaky_copy(adversarial, tmp_path):
    src, key, secret_file = adversarial
    secret = Secret.read(secret_file)
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    pairs = {p.relative_to(copy).as_posix(): p.relative_to(copy).as_posix() for p in copy.rglob("*.dcm")}
    report = verify(src, copy, pairs=pairs, secret=secret, ocr=ocr_available())
    assert not report.passed
    leaks = _by_file(report.leaks, copy)
    assert _missed(key, leaks, secret) == []
    # each planted value is matched only through its hash: the report holds none (the research
    # instances' own UIDs, which carry the MRN and the birth date here, name them)
    dump = str(report.to_dict()).casefold()
    assert [v for row in key["planted"] if len(v := str(row["value"])) >= 5 and not v.isdigit()
            and v.casefold() in dump] == []
    assert report.unmatched == [str((copy / "sr/nested_1000.dcm").resolve())]


def _phi(report) -> list[str]:
    return [f"{leak.kind} {Path(leak.file).name} {leak.location} (from {leak.source})"
            for leak in report.leaks if leak.category in PHI_CATEGORIES]


def test_voxlake_default_output_has_no_leak(adversarial, tmp_path):
    src, _key, secret = adversarial
    out = tmp_path / "out"
    summary = deidentify_files(src, out, secret=secret)
    assert summary.errors == 0
    report = verify(src, out, secret=secret, ocr=ocr_available())
    assert report.instances == summary.written and not report.unmatched
    assert report.checked["removed"] > 0
    assert _phi(report) == []


def test_voxlake_output_with_every_cleaning_option_has_no_leak(adversarial, tmp_path):
    if not ocr_available():
        pytest.skip("clean-pixel-data needs tesseract (make deid-tools)")
    src, _key, secret = adversarial
    out = tmp_path / "out"
    summary = deidentify_files(src, out, secret=secret, options=ALL_OPTIONS)
    assert summary.errors == 0
    report = verify(src, out, secret=secret, ocr=True)
    assert report.checked["pixels_hidden"] > 0 and not report.unmatched
    assert _phi(report) == []


def test_verify_finds_what_the_independent_detector_finds_in_dicognito_output(adversarial, tmp_path):
    pydicom = pytest.importorskip("pydicom")
    dicognito = pytest.importorskip("dicognito.anonymizer")
    src, key, _secret = adversarial
    out = tmp_path / "dicognito"
    anonymizer = dicognito.Anonymizer()
    pairs = {}
    for path in sorted(src.rglob("*.dcm")):
        rel = path.relative_to(src).as_posix()
        if rel in UNREADABLE:
            continue
        try:
            ds = pydicom.dcmread(path)
            anonymizer.anonymize(ds)
        except Exception:  # dicognito gives up on a file: nothing written, nothing to leak
            continue
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(out / rel)
        pairs[rel] = rel
    found = find_leaks(out, key, ocr=ocr_available())
    assert found  # dicognito leaves free text, private tags and burned-in pixels as they were
    report = verify(src, out, pairs=pairs, ocr=ocr_available())
    leaks = _by_file(report.leaks, out)
    assert _missed(key, leaks, None, values={(f.value, f.file) for f in found}) == []


def test_pure_noise_images_give_no_finding(tmp_path):
    """Gaussian-noise MR slices whose source names a patient: nothing reads as text, nothing leaks."""
    if not ocr_available():
        pytest.skip("tesseract is not installed (make deid-tools)")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    src = tmp_path / "src"
    src.mkdir()
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(3)
    for i in range(3):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "QUIXBY^ZELPHINE", "MRN771133", "19510417"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study, series, "MR"
        ds.InstanceNumber, ds.BurnedInAnnotation = i + 1, "NO"
        noise = np.clip(rng.normal(1000, 300, (128, 128)), 0, 4095).astype(np.uint16)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 128, 128
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = noise.tobytes()
        ds.save_as(src / f"mr_{i}.dcm", enforce_file_format=True)
    out = tmp_path / "out"
    summary = deidentify_files(src, out, secret=_key_file(tmp_path))
    assert summary.written == 3
    report = verify(src, out, ocr=True)
    assert report.passed, report.leaks
    assert report.checked["pixels_hidden"] == 3


def _key_file(tmp_path: Path) -> Path:
    key = tmp_path / "deid.key"
    key.write_text("0123456789abcdef" * 4)
    return key
