"""The cohort generator: valid IODs, the same bytes for the same seed, a consistent UID hierarchy and
geometry, lossless round trips, the archives' mix of modalities and vendors, and a hook that sees
every instance before its pixels are encoded."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest

from voxlake.synth.cohort import (
    CohortResult,
    StudyKind,
    available_transfer_syntaxes,
    generate_cohort,
    plan_cohort,
)
from voxlake.synth.distributions import load

SEED = 7
SMALL = {"patients": 5, "max_instances_per_series": 3, "matrix": 32}  # five studies cover every kind


class Recorder:
    """A hook that marks every dataset and its pixels, and keeps what it returned."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.pixels: dict[str, np.ndarray] = {}

    def __call__(self, ds: pydicom.Dataset, pixels: np.ndarray, path: str) -> np.ndarray:
        self.paths.append(path)
        ds.ImageComments = f"hooked {path}"
        ds.private_block(0x0011, "VOXLAKE TEST", create=True).add_new(0x01, "LO", "private value")
        out = pixels.copy()
        out.reshape(-1)[0] = 1  # as burned-in text would, a change the file must keep
        self.pixels[path] = out
        return out


def sha256s(result: CohortResult) -> dict[str, str]:
    return {rel: hashlib.sha256((result.out_dir / rel).read_bytes()).hexdigest() for rel in result.files}


def dciodvfy_errors(path: Path) -> list[str]:
    run = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def kind_of(ds: pydicom.Dataset) -> str:
    if ds.Modality == "US":
        return "US multi-frame" if "NumberOfFrames" in ds else "US"
    return "CR/DX" if ds.Modality in ("CR", "DX") else str(ds.Modality)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[CohortResult, Recorder, list[int], dict]:
    recorder, ticks = Recorder(), []
    result = generate_cohort(tmp_path_factory.mktemp("cohort"), seed=SEED, hook=recorder, progress=ticks.append,
                             **SMALL)
    headers = {rel: pydicom.dcmread(result.out_dir / rel) for rel in result.files}
    return result, recorder, ticks, headers


def test_dciodvfy_reports_no_errors_on_any_kind_of_object(cohort) -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy not found (Debian package dicom3tools)")
    result, _, _, headers = cohort
    assert {kind_of(ds) for ds in headers.values()} >= {"CT", "MR", "CR/DX", "US", "US multi-frame"}
    errors = {f"{kind_of(headers[rel])} {rel}": e for rel in result.files if (e := dciodvfy_errors(result.out_dir / rel))}
    assert errors == {}


@pytest.mark.parametrize("transfer_syntax", available_transfer_syntaxes(), ids=lambda ts: ts.keyword)
def test_every_kind_is_valid_and_lossless_in_each_transfer_syntax(transfer_syntax, tmp_path: Path) -> None:
    recorder = Recorder()
    result = generate_cohort(tmp_path, patients=5, seed=3, transfer_syntaxes=[transfer_syntax], hook=recorder,
                             max_instances_per_series=1, matrix=32)
    headers = {rel: pydicom.dcmread(result.out_dir / rel) for rel in result.files}
    assert {kind_of(ds) for ds in headers.values()} >= {"CT", "MR", "CR/DX", "US", "US multi-frame"}
    for rel, ds in headers.items():
        assert ds.file_meta.TransferSyntaxUID == transfer_syntax
        assert np.array_equal(ds.pixel_array, recorder.pixels[rel]), rel
    if shutil.which("dciodvfy"):
        assert {rel: e for rel in result.files if (e := dciodvfy_errors(result.out_dir / rel))} == {}


def test_the_same_seed_gives_byte_identical_files(cohort, tmp_path: Path) -> None:
    result = cohort[0]
    again = generate_cohort(tmp_path, seed=SEED, hook=Recorder(), **SMALL)
    assert again.files == result.files
    assert sha256s(again) == sha256s(result)


def test_a_different_seed_gives_different_uids(cohort, tmp_path: Path) -> None:
    headers = cohort[3]
    other = generate_cohort(tmp_path, patients=1, seed=SEED + 1, max_instances_per_series=2, matrix=32)
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
        ours = {ds.get(keyword) for ds in headers.values()} - {None}
        theirs = {pydicom.dcmread(other.out_dir / rel).get(keyword) for rel in other.files} - {None}
        assert ours and theirs and not ours & theirs, keyword


def test_folders_follow_the_uid_hierarchy(cohort) -> None:
    result, _, _, headers = cohort
    sop_uids, study_of_series = set(), {}
    frames_of_reference: dict[str, set[str]] = {}
    for rel, ds in headers.items():
        patient_id, study, series, name = rel.split("/")
        assert (ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID) == (patient_id, study, series)
        assert name == f"{ds.InstanceNumber:04d}.dcm"
        assert study_of_series.setdefault(series, study) == study
        assert ds.SOPInstanceUID not in sop_uids
        sop_uids.add(ds.SOPInstanceUID)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
        assert ds.preamble == b"\0" * 128
        if "FrameOfReferenceUID" in ds:
            frames_of_reference.setdefault(study, set()).add(ds.FrameOfReferenceUID)
    assert all(len(uids) == 1 for uids in frames_of_reference.values())
    numbers: dict[str, list[int]] = {}
    for ds in headers.values():
        numbers.setdefault(ds.SeriesInstanceUID, []).append(int(ds.InstanceNumber))
    assert all(sorted(n) == list(range(1, len(n) + 1)) for n in numbers.values())
    assert result.series == len(numbers) and result.studies == len(set(study_of_series.values()))


def test_patients_are_the_same_person_in_every_file_and_age_with_the_study_date(cohort) -> None:
    headers = cohort[3]
    people: dict[str, set[tuple]] = {}
    for ds in headers.values():
        people.setdefault(ds.PatientID, set()).add((ds.PatientName, ds.PatientBirthDate, ds.PatientSex))
        born, seen = ds.PatientBirthDate, ds.StudyDate
        years = int(seen[:4]) - int(born[:4]) - (seen[4:] < born[4:])
        assert ds.PatientAge == f"{years:03d}Y"
        assert 18 <= years <= 100 and ds.PatientSex in ("F", "M", "O")
        assert ds.StudyDate <= ds.SeriesDate and ds.AccessionNumber and ds.StudyID
    assert len(people) == SMALL["patients"] and all(len(p) == 1 for p in people.values())


def test_slices_step_by_their_spacing_along_the_normal(cohort) -> None:
    series: dict[str, list[pydicom.Dataset]] = {}
    for ds in cohort[3].values():
        if ds.Modality in ("CT", "MR") and "LOCALIZER" not in ds.ImageType:
            series.setdefault(ds.SeriesInstanceUID, []).append(ds)
    assert any(len(s) > 1 for s in series.values())
    for slices in series.values():
        slices.sort(key=lambda ds: int(ds.InstanceNumber))
        orientation = np.array(slices[0].ImageOrientationPatient, float)
        normal = np.cross(orientation[:3], orientation[3:])
        spacing = float(slices[0].get("SpacingBetweenSlices") or slices[0].SliceThickness)
        positions = np.array([ds.ImagePositionPatient for ds in slices], float)
        assert np.allclose(np.diff(positions, axis=0), spacing * normal, atol=1e-3)
        assert np.allclose([float(ds.SliceLocation) for ds in slices], positions @ normal, atol=1e-3)
        assert all(ds.ImageOrientationPatient == slices[0].ImageOrientationPatient for ds in slices)


def test_every_file_decodes_to_the_pixels_it_was_given_in_every_transfer_syntax(cohort) -> None:
    _, recorder, _, headers = cohort
    assert {ds.file_meta.TransferSyntaxUID for ds in headers.values()} == set(available_transfer_syntaxes())
    for rel, ds in headers.items():
        assert np.array_equal(ds.pixel_array, recorder.pixels[rel]), (ds.file_meta.TransferSyntaxUID.name, rel)
    ct = next(ds for ds in headers.values() if ds.Modality == "CT" and "AXIAL" in ds.ImageType)
    hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
    assert hu.min() < -900 and 0 < np.median(hu[hu > -500]) < 100  # air outside, soft tissue inside


def test_the_hook_sees_every_instance_and_its_changes_land_in_the_files(cohort) -> None:
    result, recorder, ticks, headers = cohort
    assert recorder.paths == list(result.files)
    assert ticks == [1] * result.instances
    for rel, ds in headers.items():
        assert ds.ImageComments == f"hooked {rel}"
        assert ds.private_block(0x0011, "VOXLAKE TEST")[0x01].value == "private value"
        assert ds.pixel_array.reshape(-1)[0] == 1


def test_the_result_counts_what_the_plan_said(cohort) -> None:
    result = cohort[0]
    plan = plan_cohort(patients=SMALL["patients"], seed=SEED, max_instances_per_series=3)
    assert result.instances == len(result.files) == plan.instances == sum(result.modalities.values())
    assert (result.patients, result.studies) == (5, sum(len(p.studies) for p in plan.patients))
    assert result.bytes == sum((result.out_dir / rel).stat().st_size for rel in result.files)
    assert f"{result.instances:,} DICOM files" in result.summary() and "5 patients" in result.summary()


def test_the_mix_of_a_large_cohort_follows_the_idc_distributions() -> None:
    d, cap = load(), 40
    plan = plan_cohort(patients=1500, seed=1, max_instances_per_series=cap)
    studies = [s for p in plan.patients for s in p.studies]
    generated = ("CT", "MR", "CR", "DX", "US")
    total = sum(d.modalities_of_studies.frequency(m) for m in generated)
    got = Counter(s.Modality for s in studies)
    for m in generated:
        assert got[m] / len(studies) == pytest.approx(d.modalities_of_studies.frequency(m) / total, abs=0.03), m
    ct = [s for s in studies if s.Modality == "CT"]
    top = d.modality("CT").manufacturers
    for name in ("GE MEDICAL SYSTEMS", "SIEMENS"):
        share = top.frequency(name) / (sum(top.top.values()) + top.missing)
        assert sum(s.Manufacturer == name for s in ct) / len(ct) == pytest.approx(share, abs=0.05), name
    assert Counter(s.BodyPartExamined for s in ct).most_common(1)[0][0] == "CHEST"
    assert {s.kind for s in studies} == set(StudyKind)
    sizes = [se.instances for s in ct for se in s.series if se.protocol != "ct_scout"]
    assert min(sizes) >= 20 and max(sizes) <= cap


def test_transfer_syntaxes_are_named_by_uid_keyword_or_alias() -> None:
    by_alias = plan_cohort(patients=2, transfer_syntaxes=["rle", "JPEGLSLossless", "1.2.840.10008.1.2.1"])
    assert {se.transfer_syntax.keyword for _, _, se in by_alias.series()} == {
        "RLELossless", "JPEGLSLossless", "ExplicitVRLittleEndian"}
    with pytest.raises(ValueError, match=r"must be one of .*jpeg-ls"):
        plan_cohort(patients=1, transfer_syntaxes=["jpeg-xl"])
    if "HTJ2KLossless" not in {ts.keyword for ts in available_transfer_syntaxes()}:
        with pytest.raises(ValueError, match="no encoder is installed"):
            plan_cohort(patients=1, transfer_syntaxes=["htj2k"])
