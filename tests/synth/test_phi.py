"""PHI injection: every injected value is in the answer key, where the key says, with the action
PS3.15 Table E.1-1 asks for; the same seed gives the same bytes."""

from __future__ import annotations

import re
import warnings
from collections import defaultdict
from functools import cache
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.charset import convert_encodings
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundMultiFrameImageStorage

from voxlake.synth import rng, uid
from voxlake.synth.phi import AnswerKey, Entry, PhiInjector

SEED = 20240611

# cohort patient, sex, study, modality, instances (frames for the cine), StudyDate the cohort set
COHORT = [
    ("P001", "M", "S1", "CT", 3, "20200314"),
    ("P002", "F", "S2", "CT", 2, None),
    ("P002", "F", "S3", "US", 5, None),
    ("P003", "M", "S4", "CT", 1, None),
]


def _header(patient: str, sex: str, study: str, series: str, number: int, sop_class: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = uid(SEED, "test-sop", series, number)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = uid(SEED, "test-study", study)
    ds.SeriesInstanceUID = uid(SEED, "test-series", series)
    ds.FrameOfReferenceUID = uid(SEED, "test-for", study)
    ds.PatientName, ds.PatientID, ds.PatientSex = f"COHORT^{patient}", patient, sex
    ds.InstanceNumber, ds.SeriesNumber = number, 1
    ds.Manufacturer = "ACME"
    return ds


def _ct(patient: str, sex: str, study: str, number: int) -> tuple[Dataset, np.ndarray]:
    ds = _header(patient, sex, study, study + "-ct", number, CTImageStorage)
    ds.Modality, ds.SeriesDescription, ds.BodyPartExamined = "CT", "AX 5mm", "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ref = Dataset()
    ref.ReferencedSOPClassUID = CTImageStorage
    ref.ReferencedSOPInstanceUID = uid(SEED, "test-localizer", study)
    ds.ReferencedImageSequence = [ref]
    yy, xx = np.mgrid[:64, :64]
    body = ((yy - 32) ** 2 + (xx - 32) ** 2 < 28**2) * 1064
    noise = rng(SEED, "test-ct", study, number).integers(0, 40, size=(64, 64))
    return ds, (body + noise).astype(np.uint16)


def _us_cine(patient: str, sex: str, study: str, frames: int) -> tuple[Dataset, np.ndarray]:
    ds = _header(patient, sex, study, study + "-us", 1, UltrasoundMultiFrameImageStorage)
    ds.Modality = "US"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 96, 128, frames
    ds.FrameTime, ds.FrameIncrementPointer = 40.0, tag_for_keyword("FrameTime")
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    pixels = rng(SEED, "test-us", study).integers(0, 120, size=(frames, 96, 128, 3))
    return ds, pixels.astype(np.uint8)


def _instances() -> list[tuple[str, str, Dataset, np.ndarray]]:
    """(cohort patient, relative path, dataset, pixels) for the test cohort, fresh each time."""
    out = []
    for patient, sex, study, modality, count, study_date in COHORT:
        made = [_us_cine(patient, sex, study, count)] if modality == "US" else [
            _ct(patient, sex, study, n) for n in range(1, count + 1)
        ]
        for ds, pixels in made:
            if study_date:
                ds.StudyDate, ds.StudyTime = study_date, "101500"
            out.append((patient, f"{patient}/{study}/{modality}/{ds.InstanceNumber:04d}.dcm", ds, pixels))
    return out


def write_cohort(
    root: Path, seed: int = SEED, *, reverse: bool = False, **options: float
) -> tuple[AnswerKey, dict[str, np.ndarray], dict[str, str]]:
    """Inject PHI as the cohort hook would, write the files and the key; returns the key, the pixels
    before injection and the cohort patient of each file."""
    injector = PhiInjector(seed, **options)
    originals, patients = {}, {}
    instances = _instances()
    for patient, rel, ds, pixels in reversed(instances) if reverse else instances:
        originals[rel], patients[rel] = pixels.copy(), patient
        out = injector(ds, pixels, rel)
        ds.PixelData = np.ascontiguousarray(out).tobytes()
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an invalid value (too long for its VR) fails the test
            ds.save_as(root / rel, enforce_file_format=True)
    injector.answer_key.write(root / "answer_key")
    return injector.answer_key, originals, patients


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, AnswerKey, dict, dict]:
    root = tmp_path_factory.mktemp("phi")
    _, originals, patients = write_cohort(root)
    return root, AnswerKey.read(root / "answer_key.json"), originals, patients


@cache
def _read(path: Path) -> Dataset:
    return pydicom.dcmread(path)


def _resolve(ds: Dataset, location: str) -> pydicom.DataElement:
    """The element at a key location such as ``RequestAttributesSequence[0].AccessionNumber``."""
    node, parts = ds, location.split(".")
    for i, part in enumerate(parts):
        name, index = re.fullmatch(r"(.+?)(?:\[(\d+)\])?", part).groups()
        tag = int(name[1:5] + name[6:10], 16) if name.startswith("(") else tag_for_keyword(name)
        elem = node[tag]
        if i == len(parts) - 1:
            return elem
        node = elem.value[int(index)]
    raise AssertionError(location)


def _values(elem: pydicom.DataElement) -> list[str]:
    value = elem.value
    return [str(v) for v in (value if isinstance(value, list | pydicom.multival.MultiValue) else [value])]


def _codec(ds: Dataset) -> str:
    return convert_encodings(ds.get("SpecificCharacterSet", "ISO_IR 6"))[0]


def _walk(ds: Dataset, prefix: str = ""):
    for elem in ds:
        name = elem.keyword if elem.keyword and not elem.tag.is_private else f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield from _walk(item, f"{prefix}{name}[{i}].")
        else:
            yield prefix + name, elem


def test_every_header_value_in_the_key_is_in_its_file_at_its_location(cohort):
    root, key, _, _ = cohort
    tags = [e for e in key if e.location != "pixels"]
    assert len(tags) > 300
    for e in tags:
        ds = _read(root / e.file)
        assert ds.SOPInstanceUID == e.SOPInstanceUID
        values = _values(_resolve(ds, e.location))
        if e.context in ("free-text", "private"):
            assert any(e.value in v for v in values), e
        else:
            assert e.value in values, e
        assert e.value.encode(_codec(ds)) in (root / e.file).read_bytes(), e


IDENTITY = ("PatientName", "PatientID", "OtherPatientIDs", "OtherPatientIDsSequence[1].PatientID", "PatientAddress",
            "PatientTelephoneNumbers", "PatientTelecomInformation")


def test_every_identity_value_in_a_file_is_listed_in_the_key(cohort):
    """The converse scan: wherever a file holds one of its patient's identifiers, the key has an
    entry at that location; and every name, date and time in a header is listed."""
    root, key, _, _ = cohort
    listed: dict[str, list[Entry]] = defaultdict(list)
    for e in key:
        listed[e.file, e.location].append(e)
    for file in {e.file for e in key}:
        ds = _read(root / file)
        identity = {e.value for location in IDENTITY for e in listed[file, location]}
        assert len(identity) >= len(IDENTITY)
        for location, elem in _walk(ds):
            if elem.VR in ("OB", "OW", "UN"):
                continue
            text = " ".join(_values(elem))
            for value in identity:
                if value in text:
                    assert any(value in e.value or e.value in value for e in listed[file, location]), location
            if elem.VR in ("PN", "DA", "TM", "DT") and text:
                assert listed[file, location], location


def _assert_boxes_hold_every_changed_pixel(root: Path, key: AnswerKey, originals: dict[str, np.ndarray]) -> None:
    boxes: dict[tuple[str, int], list[Entry]] = defaultdict(list)
    for e in key:
        if e.location == "pixels":
            boxes[e.file, e.frame_index].append(e)
    assert boxes
    for file, before in originals.items():
        ds = pydicom.dcmread(root / file)
        after = ds.pixel_array
        multi = int(ds.get("NumberOfFrames", 1)) > 1
        frames_before, frames_after = (before, after) if multi else (before[np.newaxis], after[np.newaxis])
        for f in range(len(frames_before)):
            changed = frames_before[f] != frames_after[f]
            changed = changed.any(axis=-1) if changed.ndim == 3 else changed
            inside = np.zeros_like(changed)
            for e in boxes.get((file, f), []):
                region = (slice(e.y0, e.y1), slice(e.x0, e.x1))
                assert (frames_before[f][region] != frames_after[f][region]).any(), e
                inside[region] = True
            assert not (changed & ~inside).any(), (file, f)  # frames without entries: nothing changed
        assert ds.get("BurnedInAnnotation") == ("YES" if any(k[0] == file for k in boxes) else None)


def test_burned_in_boxes_hold_every_changed_pixel_and_other_frames_are_unchanged(cohort):
    root, key, originals, _ = cohort
    _assert_boxes_hold_every_changed_pixel(root, key, originals)


def test_burned_in_text_on_grayscale_images_is_the_brightest_stored_value(tmp_path):
    key, originals, _ = write_cohort(tmp_path, burn_in_fraction=1.0)
    _assert_boxes_hold_every_changed_pixel(tmp_path, key, originals)
    ct = [e for e in key if e.location == "pixels" and "/CT/" in e.file]
    assert {e.file for e in ct} == {f for f in originals if "/CT/" in f}
    for e in ct:
        text = pydicom.dcmread(tmp_path / e.file).pixel_array[e.y0 : e.y1, e.x0 : e.x1]
        assert text.max() == 2**12 - 1  # BitsStored 12, not the 16 allocated


def test_multiframe_object_has_burned_in_text_on_several_but_not_all_frames(cohort):
    _, key, _, _ = cohort
    cine = [e for e in key if e.location == "pixels" and "/US/" in e.file]
    frames = {e.frame_index for e in cine}
    assert 2 <= len(frames) < 5
    for f in frames:
        assert {"patient-name", "id", "date", "time"} <= {e.kind for e in cine if e.frame_index == f}


def test_same_seed_gives_byte_identical_files_and_answer_key_in_any_order(cohort, tmp_path):
    root, _, _, _ = cohort
    write_cohort(tmp_path, reverse=True)
    written = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert written == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in written:
        assert (root / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel
    other = tmp_path / "other"
    write_cohort(other, seed=SEED + 1)
    assert (other / "answer_key.json").read_bytes() != (root / "answer_key.json").read_bytes()


def test_each_patient_keeps_one_identity_across_files_and_patients_differ(cohort):
    root, _, _, patients = cohort
    identity = {}
    for file, patient in patients.items():
        ds = _read(root / file)
        seen = (str(ds.PatientName), ds.PatientID, ds.PatientBirthDate, ds.PatientAddress,
                ds.OtherPatientIDsSequence[1].PatientID, ds.get(0x00111001).value)
        assert identity.setdefault(patient, seen) == seen, file
    assert len({v[0] for v in identity.values()}) == len({v[1] for v in identity.values()}) == len(identity) == 3


def test_every_kind_of_phi_appears_in_every_kind_of_place(cohort):
    _, key, _, _ = cohort
    kinds = {e.kind for e in key}
    assert {"patient-name", "physician-name", "operator-name", "id", "ssn", "date", "time", "address", "phone",
            "email", "institution", "department", "station", "device-id", "uid", "age", "patient-characteristic",
            "non-phi"} <= kinds
    by_context = defaultdict(set)
    for e in key:
        by_context[e.context].add(e.kind)
    assert {"patient-name", "id", "date", "address", "phone", "institution", "physician-name"} <= by_context["standard"]
    assert {"id", "ssn", "physician-name", "address", "phone", "email", "institution", "uid"} <= by_context["sequence"]
    assert {"patient-name", "id", "ssn", "date", "physician-name", "phone", "email", "address"} <= by_context["private"]
    assert {"patient-name", "date", "physician-name"} <= by_context["free-text"]
    assert {"patient-name", "id", "date"} <= by_context["pixels"]
    names = {e.value for e in key if e.kind == "patient-name"}
    assert any("^" in n for n in names)  # DICOM PN
    assert any(re.fullmatch(r"[A-Z' -]+, \w.*", n) for n in names)  # FAMILY, Given
    assert any(" " in n and "," not in n and "^" not in n for n in names)  # Given Family


def test_expected_actions_follow_table_e1_1_with_modified_dates(cohort):
    _, key, _, _ = cohort
    first = {}
    for e in key:
        first.setdefault(e.location, e)
    expected = {
        "PatientName": ("replace", "Z"),
        "PatientID": ("replace-consistently", "Z/D"),
        "PatientBirthDate": ("replace", "Z"),
        "PatientAddress": ("remove", "X"),
        "AccessionNumber": ("replace", "Z"),
        "StudyDate": ("shift-date", "Z"),
        "AcquisitionDateTime": ("shift-date", "X/Z/D"),
        "InstitutionName": ("remove", "X/Z/D"),
        "StudyInstanceUID": ("replace-consistently", "U"),
        "ReferencedImageSequence[0].ReferencedSOPInstanceUID": ("replace-consistently", "U"),
        "ReferencedImageSequence[0].ReferencedSOPClassUID": ("keep", ""),
        "OtherPatientIDsSequence[0].PatientID": ("remove", "X"),
        "RequestAttributesSequence[0].AccessionNumber": ("remove", "X"),
        "ReferringPhysicianIdentificationSequence[0].PersonIdentificationCodeSequence[0].CodeValue": ("remove", "X"),
        "(0011,1001)": ("remove", "X"),
        "(0011,1006)[0].PatientName": ("remove", "X"),
        "PatientComments": ("clean", "X"),
        "Manufacturer": ("keep", ""),
        "SOPClassUID": ("keep", ""),
    }
    for location, (action, code) in expected.items():
        assert (first[location].action, first[location].basic_profile) == (action, code), location
    assert {e.action for e in key if e.context == "pixels"} == {"clean"}
    assert {e.action for e in key if e.context == "private"} == {"remove"}


def test_dates_the_cohort_set_are_kept_and_listed_for_shifting(cohort):
    root, key, _, _ = cohort
    file = "P001/S1/CT/0001.dcm"
    assert _read(root / file).StudyDate == "20200314"
    assert [(e.value, e.action) for e in key if e.file == file and e.location == "StudyDate"] == [
        ("20200314", "shift-date")
    ]


def test_non_ascii_names_are_written_with_iso_ir_192(tmp_path):
    key, _, _ = write_cohort(tmp_path, non_ascii_fraction=1.0)
    names = [e for e in key if e.location == "PatientName"]
    assert all(not e.value.isascii() for e in names)
    for e in names:
        ds = _read(tmp_path / e.file)
        assert ds.SpecificCharacterSet == "ISO_IR 192"
        assert e.value.encode("utf-8") in (tmp_path / e.file).read_bytes()


def test_parquet_and_json_answer_keys_agree_and_are_sorted(cohort):
    root, key, _, _ = cohort
    parquet = AnswerKey.read(root / "answer_key.parquet")
    assert parquet.entries == key.entries == key.sorted()


def test_the_cohort_generator_takes_the_injector_as_its_hook(tmp_path):
    cohort_module = pytest.importorskip("voxlake.synth.cohort")
    injector = PhiInjector(SEED)
    result = cohort_module.generate_cohort(
        tmp_path, patients=3, seed=SEED, hook=injector, matrix=64, max_instances_per_series=3
    )
    injector.answer_key.write(tmp_path / "answer_key")
    key = AnswerKey.read(tmp_path / "answer_key.parquet")
    assert {e.file for e in key} == set(result.files)
    for e in key:
        if e.location != "pixels":
            ds = _read(tmp_path / e.file)
            values = _values(_resolve(ds, e.location))
            assert any(e.value in v for v in values) if e.context in ("free-text", "private") else e.value in values
            assert e.value.encode(_codec(ds)) in (tmp_path / e.file).read_bytes(), e
    assert any(e.context == "pixels" and e.frame_index > 0 for e in key)  # the ultrasound cine
