"""Fake but realistic PHI, put where real archives have it, with an answer key for scoring
de-identification.

:class:`PhiInjector` is a cohort hook (``hook(ds, pixels, path) -> pixels``): it gives every patient
a consistent fake identity (:func:`voxlake.synth.identities.fake_patient`) and writes it into
standard attributes, sequence items, a private block, free-text descriptions and comments, and for
some images into the pixels (rendered text at recorded boxes). Every value it writes, and every
date, time, UID, name and Table E.1-1 attribute already in the header, becomes an :class:`Entry` of
its :class:`AnswerKey`, with what a correct de-identification must do with it (see
:mod:`voxlake.synth.answer_key` for the actions and the profile they follow).

Every draw comes from :func:`voxlake.synth.rng`, keyed by what it is for (the patient, the study,
the instance), so the same seed gives byte-identical files and answer keys, whatever the order of
the calls and the process that makes them.
"""

from __future__ import annotations

import functools
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.dataelem import DataElement
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag

from voxlake.synth import rng
from voxlake.synth.answer_key import PROFILE, Action, AnswerKey, Context, Entry, Kind
from voxlake.synth.identities import (
    INSTITUTION_COUNT,
    FakeInstitution,
    FakePatient,
    FakePerson,
    ascii_fold,
    choice,
    digits,
    fake_institution,
    fake_patient,
)

__all__ = [
    "PROFILE",
    "Action",
    "AnswerKey",
    "Context",
    "Entry",
    "Kind",
    "PhiInjector",
]

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "VOXSYN RIS BRIDGE 1.0"


# PS3.15 Table E.1-1, the attributes this module writes or meets: keyword -> (Basic Profile code,
# option flags: "L" modified by the Retain Longitudinal ... Modified Dates Option, "C" kept, cleaned,
# by the Clean Descriptors Option).
_E11: dict[str, tuple[str, str]] = {
    "PatientName": ("Z", ""),
    "PatientID": ("Z/D", ""),
    "IssuerOfPatientID": ("X", ""),
    "OtherPatientIDs": ("X", ""),
    "OtherPatientIDsSequence": ("X", ""),
    "OtherPatientNames": ("X", ""),
    "PatientBirthName": ("X", ""),
    "PatientMotherBirthName": ("X", ""),
    "PatientBirthDate": ("Z", ""),
    "PatientBirthTime": ("X", ""),
    "PatientSex": ("Z", ""),
    "PatientAge": ("X", ""),
    "PatientSize": ("X", ""),
    "PatientWeight": ("X", ""),
    "PatientAddress": ("X", ""),
    "PatientTelephoneNumbers": ("X", ""),
    "PatientTelecomInformation": ("X", ""),
    "PatientComments": ("X", "C"),
    "AdditionalPatientHistory": ("X", "C"),
    "ReferringPhysicianName": ("Z", ""),
    "ReferringPhysicianAddress": ("X", ""),
    "ReferringPhysicianTelephoneNumbers": ("X", ""),
    "ReferringPhysicianIdentificationSequence": ("X", ""),
    "PersonIdentificationCodeSequence": ("D", ""),
    "PersonAddress": ("X", ""),
    "PersonTelephoneNumbers": ("X", ""),
    "PersonTelecomInformation": ("X", ""),
    "PerformingPhysicianName": ("X", ""),
    "PerformingPhysicianIdentificationSequence": ("X", ""),
    "NameOfPhysiciansReadingStudy": ("X", ""),
    "PhysiciansOfRecord": ("X", ""),
    "OperatorsName": ("X/Z/D", ""),
    "RequestingPhysician": ("X", ""),
    "InstitutionName": ("X/Z/D", ""),
    "InstitutionAddress": ("X", ""),
    "InstitutionalDepartmentName": ("X", ""),
    "InstitutionCodeSequence": ("X/Z/D", ""),
    "StationName": ("X/Z/D", ""),
    "DeviceSerialNumber": ("X/Z/D", ""),
    "DeviceUID": ("U", ""),
    "AccessionNumber": ("Z", ""),
    "StudyID": ("Z", ""),
    "AdmissionID": ("X", ""),
    "RequestAttributesSequence": ("X", "C"),
    "RequestedProcedureID": ("X", ""),
    "ScheduledProcedureStepID": ("X", ""),
    "RequestedProcedureDescription": ("X/Z", "C"),
    "ReasonForTheRequestedProcedure": ("X", "C"),
    "PerformedProcedureStepID": ("X", ""),
    "PerformedProcedureStepDescription": ("X", "C"),
    "PerformedProcedureStepStartDate": ("X", "L"),
    "PerformedProcedureStepStartTime": ("X", "L"),
    "ScheduledProcedureStepDescription": ("X", "C"),
    "StudyDescription": ("X", "C"),
    "SeriesDescription": ("X", "C"),
    "ImageComments": ("X", "C"),
    "ProtocolName": ("X/D", "C"),
    "StudyComments": ("X", "C"),
    "AcquisitionComments": ("X", "C"),
    "StudyDate": ("Z", "L"),
    "StudyTime": ("Z", "L"),
    "SeriesDate": ("X/D", "L"),
    "SeriesTime": ("X/D", "L"),
    "AcquisitionDate": ("X/Z", "L"),
    "AcquisitionTime": ("X/Z", "L"),
    "AcquisitionDateTime": ("X/Z/D", "L"),
    "ContentDate": ("Z/D", "L"),
    "ContentTime": ("Z/D", "L"),
    "InstanceCreationDate": ("X/D", "L"),
    "InstanceCreationTime": ("X/Z/D", "L"),
    "DateOfLastCalibration": ("X", "L"),
    "TimeOfLastCalibration": ("X", "L"),
    "DateOfSecondaryCapture": ("X", "L"),
    "TimeOfSecondaryCapture": ("X", "L"),
    "FrameAcquisitionDateTime": ("D", "L"),
    "FrameReferenceDateTime": ("D", "L"),
    "TimezoneOffsetFromUTC": ("X", "L"),
    "StudyInstanceUID": ("U", ""),
    "SeriesInstanceUID": ("U", ""),
    "SOPInstanceUID": ("U", ""),
    "FrameOfReferenceUID": ("U", ""),
    "ReferencedSOPInstanceUID": ("U", ""),
    "ReferencedFrameOfReferenceUID": ("U", ""),
    "IrradiationEventUID": ("U", ""),
    "DimensionOrganizationUID": ("U", ""),
    "ConcatenationUID": ("U", ""),
    "SynchronizationFrameOfReferenceUID": ("U", ""),
    "ReferencedImageSequence": ("X/Z/U*", ""),
    "SourceImageSequence": ("X/Z/U*", ""),
    "ReferencedStudySequence": ("X/Z", ""),
    "ReferencedPerformedProcedureStepSequence": ("X/Z/D", ""),
    "ReferencedPatientSequence": ("X", ""),
    "ContentSequence": ("D", ""),
}

_KIND: dict[str, Kind] = {
    "PatientName": Kind.PATIENT_NAME,
    "OtherPatientNames": Kind.PATIENT_NAME,
    "PatientBirthName": Kind.PATIENT_NAME,
    "PatientMotherBirthName": Kind.PERSON_NAME,
    "ReferringPhysicianName": Kind.PHYSICIAN_NAME,
    "PerformingPhysicianName": Kind.PHYSICIAN_NAME,
    "NameOfPhysiciansReadingStudy": Kind.PHYSICIAN_NAME,
    "PhysiciansOfRecord": Kind.PHYSICIAN_NAME,
    "RequestingPhysician": Kind.PHYSICIAN_NAME,
    "OperatorsName": Kind.OPERATOR_NAME,
    "PatientID": Kind.ID,
    "OtherPatientIDs": Kind.ID,
    "AccessionNumber": Kind.ID,
    "StudyID": Kind.ID,
    "AdmissionID": Kind.ID,
    "RequestedProcedureID": Kind.ID,
    "ScheduledProcedureStepID": Kind.ID,
    "PerformedProcedureStepID": Kind.ID,
    "CodeValue": Kind.ID,
    "IssuerOfPatientID": Kind.INSTITUTION,
    "InstitutionName": Kind.INSTITUTION,
    "InstitutionalDepartmentName": Kind.DEPARTMENT,
    "PatientAddress": Kind.ADDRESS,
    "InstitutionAddress": Kind.ADDRESS,
    "ReferringPhysicianAddress": Kind.ADDRESS,
    "PersonAddress": Kind.ADDRESS,
    "PatientTelephoneNumbers": Kind.PHONE,
    "ReferringPhysicianTelephoneNumbers": Kind.PHONE,
    "PersonTelephoneNumbers": Kind.PHONE,
    "PatientTelecomInformation": Kind.EMAIL,
    "PersonTelecomInformation": Kind.EMAIL,
    "StationName": Kind.STATION,
    "DeviceSerialNumber": Kind.DEVICE_ID,
    "PatientAge": Kind.AGE,
    "PatientSex": Kind.CHARACTERISTIC,
    "PatientSize": Kind.CHARACTERISTIC,
    "PatientWeight": Kind.CHARACTERISTIC,
    "TimezoneOffsetFromUTC": Kind.TIME,
}
_BY_VR = {"DA": Kind.DATE, "TM": Kind.TIME, "DT": Kind.DATETIME, "UI": Kind.UID, "PN": Kind.PERSON_NAME}
#: Not PHI, though they look like it; a de-identifier that removes them has a false positive.
_LOOKALIKES = frozenset(
    {"Manufacturer", "ManufacturerModelName", "SoftwareVersions", "BodyPartExamined", "SOPClassUID",
     "ReferencedSOPClassUID"}
)
_CONSISTENT = frozenset({"PatientID"})
_BULK_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


# --- injection -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mark:
    value: str
    kind: Kind
    in_text: bool


Part = str | tuple[str, Kind]


class _Sink:
    """Sets attributes of one dataset (the top level or a sequence item) and notes, by tag path,
    which PHI it put there."""

    def __init__(self, ds: Dataset, prefix: str, marks: dict[str, list[_Mark]]) -> None:
        self.ds, self.prefix, self.marks = ds, prefix, marks

    def put(self, keyword: str, value: str | list[str], kind: Kind | None = None) -> None:
        setattr(self.ds, keyword, value)
        for v in value if isinstance(value, list) else [value]:
            self.marks[self.prefix + keyword].append(_Mark(v, kind or _KIND[keyword], False))

    def text(self, keyword: str, parts: list[Part]) -> None:
        """Free text made of plain strings and (PHI, kind) pairs."""
        setattr(self.ds, keyword, "".join(p if isinstance(p, str) else p[0] for p in parts))
        for p in parts:
            if not isinstance(p, str):
                self.marks[self.prefix + keyword].append(_Mark(p[0], p[1], True))

    def item(self, keyword: str) -> _Sink:
        if keyword not in self.ds:
            setattr(self.ds, keyword, [])
        seq = self.ds[keyword].value
        seq.append(Dataset())
        return _Sink(seq[-1], f"{self.prefix}{keyword}[{len(seq) - 1}].", self.marks)

    def private(self, offset: int, vr: str, parts: list[Part]) -> None:
        """An element of the RIS bridge's private block: one (PHI, kind), or text as in :meth:`text`."""
        tag = self._private_tag(offset)
        self.ds.add_new(tag, vr, "".join(p if isinstance(p, str) else p[0] for p in parts))
        for p in parts:
            if not isinstance(p, str):
                self.marks[self.prefix + _tag_text(tag)].append(_Mark(p[0], p[1], len(parts) > 1))

    def private_item(self, offset: int) -> _Sink:
        """A private sequence of one item, for standard attributes that vendors keep in private."""
        tag = self._private_tag(offset)
        self.ds.add_new(tag, "SQ", [Dataset()])
        return _Sink(self.ds[tag].value[0], f"{self.prefix}{_tag_text(tag)}[0].", self.marks)

    def _private_tag(self, offset: int) -> int:
        block = self.ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        return int(block.get_tag(offset))


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _da(d: date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: datetime) -> str:
    return t.strftime("%H%M%S")


def _free_date(d: date, style: int) -> str:
    return (f"{d:%m/%d/%Y}", f"{d:%Y-%m-%d}", f"{d:%d.%m.%Y}", f"{d.day} {_MONTHS[d.month - 1].title()} {d.year}")[
        style % 4
    ]


def _parse_da(value: Any) -> date | None:
    text = str(value or "")
    try:
        return datetime.strptime(text[:8], "%Y%m%d").date() if len(text) >= 8 else None
    except ValueError:
        return None


def _parse_tm(value: Any) -> tuple[int, int, int] | None:
    text = re.sub(r"[^0-9]", "", str(value or "").split(".")[0])
    if len(text) < 4:
        return None
    hh, mm, ss = int(text[:2]), int(text[2:4]), int(text[4:6] or 0)
    return (hh, mm, ss) if hh < 24 and mm < 60 and ss < 60 else None


@dataclass(frozen=True)
class _Study:
    institution: FakeInstitution
    other_institution: FakeInstitution
    start: datetime
    prior: date
    accession: str
    study_id: str
    admission_id: str
    requested_procedure_id: str
    scheduled_step_id: str
    referring: FakePerson
    reading: FakePerson
    text_style: int
    description_phi: bool


@dataclass(frozen=True)
class _Series:
    start: datetime
    station: tuple[str, str]
    performing: FakePerson
    operator: FakePerson
    performed_step_id: str
    description_phi: bool


class PhiInjector:
    """The ``--inject-phi`` hook: ``injector(ds, pixels, path) -> pixels``.

    Called once per instance after its header is complete and before its pixels are encoded, with
    ``pixels`` as frames x rows x columns [x samples] when NumberOfFrames > 1, rows x columns
    [x samples] otherwise, in stored values; ``path`` is where the file will be written, relative to
    the cohort's root. It replaces the patient's name and identifiers in ``ds`` by those of its fake
    identity (keyed by the PatientID the cohort gave), fills dates and times the header lacks (those
    it has are kept, so a cohort's longitudinal intervals survive), and adds its entries to
    :attr:`answer_key`. Use one injector per process and :meth:`AnswerKey.extend` to merge.

    ``burn_in_fraction`` of the images get text burned into their pixels; ultrasound and secondary
    capture always do, as they do in real archives, on about half of the frames of a multi-frame
    object. ``non_ascii_fraction`` of patients get a name outside ASCII (SpecificCharacterSet
    ``ISO_IR 192``).
    """

    def __init__(self, seed: int, *, burn_in_fraction: float = 0.2, non_ascii_fraction: float = 0.2) -> None:
        if not 0 <= burn_in_fraction <= 1 or not 0 <= non_ascii_fraction <= 1:
            raise ValueError("burn_in_fraction and non_ascii_fraction must be between 0 and 1")
        self.seed = seed
        self.burn_in_fraction = burn_in_fraction
        self.non_ascii_fraction = non_ascii_fraction
        self.answer_key = AnswerKey()
        self._patients: dict[tuple[str, str | None], FakePatient] = {}
        self._studies: dict[str, _Study] = {}
        self._series: dict[str, _Series] = {}

    def patient(self, key: str, sex: str | None = None) -> FakePatient:
        if (key, sex) not in self._patients:
            self._patients[key, sex] = fake_patient(self.seed, key, sex=sex,
                                                    non_ascii_fraction=self.non_ascii_fraction)
        return self._patients[key, sex]

    def __call__(self, ds: Dataset, pixels: np.ndarray, path: str) -> np.ndarray:
        key = str(ds.get("PatientID") or ds.get("PatientName") or ds.StudyInstanceUID)
        patient = self.patient(key, ds.get("PatientSex") if ds.get("PatientSex") in ("M", "F") else None)
        study = self._study(ds, patient)
        series = self._series_of(ds, study)
        marks: dict[str, list[_Mark]] = defaultdict(list)
        top = _Sink(ds, "", marks)
        self._patient_module(top, patient, study)
        self._study_module(top, ds, patient, study)
        self._series_module(top, ds, study, series)
        self._image_module(top, ds, patient, study, series)
        self._private_block(top, patient, study)
        if any(not m.value.isascii() for ms in marks.values() for m in ms):
            ds.SpecificCharacterSet = "ISO_IR 192"
        file, sop = str(path), str(ds.SOPInstanceUID)
        entries = _sweep(ds, marks, file=file, sop=sop, patient_id=patient.patient_id)
        pixels, burned = self._burn(ds, pixels, patient, study, series)
        for frame, box, text, kind in burned:
            entries.append(Entry(file, sop, patient.patient_id, "pixels", "PixelData", "(7FE0,0010)", "", "",
                                 frame, *box, text, kind.value, Context.PIXELS.value, Action.CLEAN.value, ""))
        self.answer_key.extend(entries)
        return pixels

    # -- per study and series facts, the same in every file and every process

    def _study(self, ds: Dataset, patient: FakePatient) -> _Study:
        study_uid = str(ds.StudyInstanceUID)
        if study_uid in self._studies:
            return self._studies[study_uid]
        r = rng(self.seed, "phi-study", study_uid)
        index = patient.institution if r.random() < 0.8 else int(r.integers(INSTITUTION_COUNT))
        institution = fake_institution(self.seed, index)
        other = fake_institution(self.seed, (index + 1 + int(r.integers(INSTITUTION_COUNT - 1))) % INSTITUTION_COUNT)
        day = _parse_da(ds.get("StudyDate")) or date(2012, 1, 1) + timedelta(days=int(r.integers(0, 365 * 12)))
        hms = _parse_tm(ds.get("StudyTime")) or (int(r.integers(7, 19)), int(r.integers(60)), int(r.integers(60)))
        number = int(r.integers(10**6, 10**9))
        study = _Study(
            institution=institution,
            other_institution=other,
            start=datetime(day.year, day.month, day.day, *hms),
            prior=day - timedelta(days=int(r.integers(30, 900))),
            accession=choice(r, (f"A{number:09d}", f"{day.year}{number % 10**6:06d}", f"ACC{number:08d}")),
            study_id=str(int(r.integers(1, 9999))),
            admission_id=f"V{digits(r, 8)}",
            requested_procedure_id=f"RP{digits(r, 7)}",
            scheduled_step_id=f"SPS{digits(r, 6)}",
            referring=choice(r, institution.physicians),
            reading=choice(r, institution.physicians),
            text_style=int(r.integers(4)),
            description_phi=bool(r.random() < 0.5),
        )
        self._studies[study_uid] = study
        return study

    def _series_of(self, ds: Dataset, study: _Study) -> _Series:
        series_uid = str(ds.SeriesInstanceUID)
        if series_uid in self._series:
            return self._series[series_uid]
        r = rng(self.seed, "phi-series", series_uid)
        modality = str(ds.get("Modality", ""))
        stations = [s for s in study.institution.stations if s[0].startswith(modality)] or list(
            study.institution.stations
        )
        series = _Series(
            start=study.start + timedelta(minutes=int(r.integers(0, 40)), seconds=int(r.integers(60))),
            station=stations[0],
            performing=choice(r, study.institution.physicians),
            operator=choice(r, study.institution.operators),
            performed_step_id=f"PPS{digits(r, 6)}",
            description_phi=bool(r.random() < 0.3),
        )
        self._series[series_uid] = series
        return series

    # -- modules

    def _patient_module(self, s: _Sink, p: FakePatient, study: _Study) -> None:
        r = rng(self.seed, "phi-patient-text", p.patient_id, study.accession)
        s.put("PatientName", p.pn)
        s.put("PatientID", p.patient_id)
        s.put("IssuerOfPatientID", f"{fake_institution(self.seed, p.institution).code} MRN")
        s.put("OtherPatientIDs", [p.other_id])
        item = s.item("OtherPatientIDsSequence")
        item.put("PatientID", p.other_id)
        item.put("IssuerOfPatientID", p.other_issuer)
        item.ds.TypeOfPatientID = "TEXT"
        item = s.item("OtherPatientIDsSequence")
        item.put("PatientID", p.ssn, Kind.SSN)
        item.ds.IssuerOfPatientID = "US SSA"
        item.ds.TypeOfPatientID = "TEXT"
        if p.alias:
            s.put("OtherPatientNames", [p.alias.dicom(upper=p.upper)])
        if p.mother_birth_name:
            s.put("PatientMotherBirthName", p.mother_birth_name.dicom(upper=p.upper))
        s.put("PatientBirthDate", _da(p.birth_date), Kind.DATE)
        age = study.start.year - p.birth_date.year - ((study.start.month, study.start.day) <
                                                      (p.birth_date.month, p.birth_date.day))
        if 0 <= age < 1000:
            s.put("PatientAge", f"{age:03d}Y")
        s.put("PatientAddress", p.address)
        s.put("PatientTelephoneNumbers", list(p.phones))
        s.put("PatientTelecomInformation", p.email)
        dob = _free_date(p.birth_date, study.text_style)
        name = p.name.natural()
        s.text("PatientComments", choice(r, (
            ["Pt ", (name, Kind.PATIENT_NAME), " (DOB ", (dob, Kind.DATE), ", MRN ", (p.patient_id, Kind.ID),
             ") prefers contact at ", (p.phones[0], Kind.PHONE), "."],
            [(p.name.comma(), Kind.PATIENT_NAME), ", born ", (dob, Kind.DATE), ", lives at ",
             (p.address, Kind.ADDRESS), ". Email ", (p.email, Kind.EMAIL), "."],
            ["Patient ", (name, Kind.PATIENT_NAME), " asks for results by phone ", (p.phones[-1], Kind.PHONE),
             "; SSN ", (p.ssn, Kind.SSN), " on file."],
        )))
        doctor = study.referring.name
        s.text("AdditionalPatientHistory", choice(r, (
            ["Prior exam ", (_free_date(study.prior, study.text_style + 1), Kind.DATE), " at ",
             (study.other_institution.name, Kind.INSTITUTION), "; referred by Dr. ",
             (doctor.family, Kind.PHYSICIAN_NAME), "."],
            ["Follow-up for ", (p.name.given, Kind.PATIENT_NAME), " ", (p.name.family, Kind.PATIENT_NAME),
             ", see letter of ", (doctor.natural(), Kind.PHYSICIAN_NAME), " dated ",
             (_free_date(study.prior, study.text_style), Kind.DATE), "."],
        )))

    def _study_module(self, s: _Sink, ds: Dataset, p: FakePatient, study: _Study) -> None:
        doctor = study.referring
        if "StudyDate" not in ds:
            s.put("StudyDate", _da(study.start.date()), Kind.DATE)
        if "StudyTime" not in ds:
            s.put("StudyTime", _tm(study.start), Kind.TIME)
        if "StudyID" not in ds:
            s.put("StudyID", study.study_id)
        s.put("AccessionNumber", study.accession)
        s.put("AdmissionID", study.admission_id)
        s.put("ReferringPhysicianName", doctor.pn)
        s.put("ReferringPhysicianAddress", study.institution.address)
        s.put("ReferringPhysicianTelephoneNumbers", [doctor.phone])
        item = s.item("ReferringPhysicianIdentificationSequence")
        code = item.item("PersonIdentificationCodeSequence")
        code.put("CodeValue", doctor.npi)
        code.ds.CodingSchemeDesignator = "L"
        code.put("CodeMeaning", doctor.name.natural(), Kind.PHYSICIAN_NAME)
        item.put("InstitutionName", study.institution.name)
        item.put("PersonAddress", study.institution.address)
        item.put("PersonTelephoneNumbers", [doctor.phone])
        item.put("PersonTelecomInformation", doctor.email)
        s.put("NameOfPhysiciansReadingStudy", [study.reading.pn])
        description = str(ds.get("StudyDescription") or "IMAGING STUDY")
        suffix = f" {p.name.overlay()}"
        if study.description_phi and len(description + suffix) <= 64:
            s.text("StudyDescription", [description, " ", (suffix[1:], Kind.PATIENT_NAME)])
        request = s.item("RequestAttributesSequence")
        request.put("RequestedProcedureID", study.requested_procedure_id)
        request.put("ScheduledProcedureStepID", study.scheduled_step_id)
        request.put("AccessionNumber", study.accession)
        request.text("ReasonForTheRequestedProcedure", [
            "F/u lesion seen ", (_free_date(study.prior, 0), Kind.DATE), ", per Dr. ",
            (doctor.name.family, Kind.PHYSICIAN_NAME),
        ])

    def _series_module(self, s: _Sink, ds: Dataset, study: _Study, series: _Series) -> None:
        if "SeriesDate" not in ds:
            s.put("SeriesDate", _da(series.start.date()), Kind.DATE)
        if "SeriesTime" not in ds:
            s.put("SeriesTime", _tm(series.start), Kind.TIME)
        s.put("PerformingPhysicianName", [series.performing.pn])
        s.put("OperatorsName", [series.operator.pn])
        s.put("PerformedProcedureStepID", series.performed_step_id)
        s.put("PerformedProcedureStepStartDate", _da(series.start.date()), Kind.DATE)
        s.put("PerformedProcedureStepStartTime", _tm(series.start), Kind.TIME)
        description = str(ds.get("SeriesDescription") or ds.get("Modality") or "SERIES")
        stamp = f"{series.start:%Y-%m-%d}"
        if series.description_phi and len(description) + 1 + len(stamp) <= 64:
            s.text("SeriesDescription", [description, " ", (stamp, Kind.DATE)])
        s.put("InstitutionName", study.institution.name)
        s.put("InstitutionAddress", study.institution.address)
        s.put("InstitutionalDepartmentName", study.institution.department)
        s.put("StationName", series.station[0])
        s.put("DeviceSerialNumber", series.station[1])
        if "Manufacturer" not in ds:
            ds.Manufacturer = "Hartley & Lowe Medical Systems"  # a look-alike: it reads like two names

    def _image_module(self, s: _Sink, ds: Dataset, p: FakePatient, study: _Study, series: _Series) -> None:
        r = rng(self.seed, "phi-instance", str(ds.SOPInstanceUID))
        number = int(ds.get("InstanceNumber") or 0)
        acquired = series.start + timedelta(seconds=2 * number + int(r.integers(0, 2)))
        for keyword, value, kind in (
            ("AcquisitionDate", _da(acquired.date()), Kind.DATE),
            ("AcquisitionTime", _tm(acquired), Kind.TIME),
            ("AcquisitionDateTime", acquired.strftime("%Y%m%d%H%M%S"), Kind.DATETIME),
            ("ContentDate", _da(acquired.date()), Kind.DATE),
            ("ContentTime", _tm(acquired), Kind.TIME),
            ("InstanceCreationDate", _da(acquired.date()), Kind.DATE),
            ("InstanceCreationTime", _tm(acquired + timedelta(seconds=5)), Kind.TIME),
        ):
            if keyword not in ds:
                s.put(keyword, value, kind)
        if r.random() < 0.5:
            doctor = series.performing.name
            s.text("ImageComments", choice(r, (
                ["Reviewed with ", (doctor.natural(), Kind.PHYSICIAN_NAME), " on ",
                 (_free_date(acquired.date(), 2), Kind.DATE)],
                ["Scanned for ", (p.name.comma(), Kind.PATIENT_NAME), " (", (p.patient_id, Kind.ID), ")"],
                ["Tech ", (series.operator.name.natural(), Kind.OPERATOR_NAME), ", call ext ",
                 (study.institution.phone, Kind.PHONE)],
            )))

    def _private_block(self, s: _Sink, p: FakePatient, study: _Study) -> None:
        """A RIS bridge's private block, as vendors keep order data: names and IDs in LO, a note in LT,
        and standard attributes inside a private sequence."""
        s.private(0x01, "LO", [(p.name.comma(), Kind.PATIENT_NAME)])
        s.private(0x02, "LO", [(p.patient_id, Kind.ID)])
        s.private(0x03, "LO", [(p.ssn, Kind.SSN)])
        s.private(0x04, "DA", [(_da(study.start.date() - timedelta(days=study.text_style)), Kind.DATE)])
        doctor = study.referring
        s.private(0x05, "LT", [
            "Ordered by ", (doctor.name.natural(), Kind.PHYSICIAN_NAME), ", tel ", (doctor.phone, Kind.PHONE),
            "; patient email ", (p.email, Kind.EMAIL), ".",
        ])
        item = s.private_item(0x06)
        item.put("PatientName", p.pn)
        item.put("PatientBirthDate", _da(p.birth_date), Kind.DATE)
        item.put("PatientAddress", p.address)

    # -- pixels

    def _burn(
        self, ds: Dataset, pixels: np.ndarray, p: FakePatient, study: _Study, series: _Series
    ) -> tuple[np.ndarray, list[tuple[int, tuple[int, int, int, int], str, Kind]]]:
        """Render name, ID, dates, the acquisition clock and the institution into the pixels, as a
        modality's overlay, on about half the frames of a multi-frame object; returns the pixels and,
        per line of text, (frame, ink box, text, kind)."""
        r = rng(self.seed, "phi-burn", str(ds.SOPInstanceUID))
        # ultrasound and secondary capture carry their annotations in the pixels, in real archives too
        always = ds.get("Modality") in ("US", "SC", "OT") or str(ds.get("SOPClassUID", "")).startswith(
            "1.2.840.10008.5.1.4.1.1.7"
        )
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
        if (r.random() >= self.burn_in_fraction and not always) or photometric == "PALETTE COLOR":
            return pixels, []
        n_frames = int(ds.get("NumberOfFrames") or 1)
        frames = pixels if n_frames > 1 else pixels[np.newaxis]
        if frames.ndim not in (3, 4) or frames.shape[0] != n_frames:
            return pixels, []
        rows, cols = frames.shape[1:3]
        fg, alt = _ink(ds, photometric, frames.dtype)
        several = min(n_frames, max(2, (n_frames + 1) // 2))
        chosen = sorted(int(i) for i in r.choice(n_frames, size=several, replace=False)) if n_frames > 1 else [0]
        frame_ms = float(ds.get("FrameTime") or 1000.0)
        when = study.start.date()
        clock = _parse_tm(ds.get("AcquisitionTime") or ds.get("ContentTime")) or series.start.timetuple()[3:6]
        start = datetime(when.year, when.month, when.day, *clock)
        lines: list[tuple[str, Kind, str]] = [
            (p.name.overlay(), Kind.PATIENT_NAME, "tl"),
            (p.patient_id, Kind.ID, "tl"),
            (f"DOB {p.birth_date:%m/%d/%Y}", Kind.DATE, "tl"),
            (f"{when.day:02d}-{_MONTHS[when.month - 1]}-{when.year}", Kind.DATE, "tr"),
            ("", Kind.TIME, "tr"),
            (ascii_fold(study.institution.name), Kind.INSTITUTION, "bl"),
        ]
        out = frames.copy()
        burned: list[tuple[int, tuple[int, int, int, int], str, Kind]] = []
        for f in chosen:
            stamp = start + timedelta(milliseconds=frame_ms * f)
            texts = [(t or f"{stamp:%H:%M:%S}", k, a) for t, k, a in lines]
            for text, kind, mask in _layout(texts, rows, cols):
                before = out[f][mask].copy()
                out[f][mask] = fg
                if np.array_equal(out[f][mask], before):
                    out[f][mask] = alt
                ys, xs = np.nonzero(mask)
                burned.append((f, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1), text, kind))
        if not burned:
            return pixels, []
        ds.BurnedInAnnotation = "YES"
        return (out if n_frames > 1 else out[0]), burned


def _ink(ds: Dataset, photometric: str, dtype: np.dtype) -> tuple[Any, Any]:
    """The brightest displayable stored value (the darkest for MONOCHROME1), and its opposite."""
    bits = int(ds.get("BitsStored") or dtype.itemsize * 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    hi, lo = (2 ** (bits - 1) - 1, -(2 ** (bits - 1))) if signed else (2**bits - 1, 0)
    if int(ds.get("SamplesPerPixel") or 1) == 3:
        if photometric.startswith("YBR"):
            mid = (hi + 1) // 2
            return (hi, mid, mid), (lo, mid, mid)
        return (hi, hi, hi), (lo, lo, lo)
    return (lo, hi) if photometric == "MONOCHROME1" else (hi, lo)


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, size: int) -> tuple[np.ndarray, int, int]:
    """``text`` rendered without anti-aliasing in Pillow's bundled font (the same glyphs everywhere):
    the tight ink mask, its offset below the text origin, and the font's line height. Measured
    from the rendering, as ``getbbox`` differs from what monochrome drawing inks."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    pad = size
    image = Image.new("L", (len(text) * size + 2 * pad, 3 * size + 2 * pad), 0)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"  # every pixel of a glyph is text or not: a crisp ground truth
    draw.text((pad, pad), text, fill=255, font=font)
    ink = np.asarray(image) > 0
    ascent, descent = font.getmetrics()
    if not ink.any():
        return np.zeros((0, 0), bool), 0, ascent + descent
    ys, xs = np.nonzero(ink)
    mask = ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return mask, int(ys.min()) - pad, ascent + descent


def _layout(lines: list[tuple[str, Kind, str]], rows: int, cols: int) -> Iterator[tuple[str, Kind, np.ndarray]]:
    """Place each line at its corner (tl, tr, bl, br), stacked, in the largest legible size that fits;
    lines that do not fit, or would touch another, are left out. Yields (text, kind, ink mask)."""
    margin = max(1, cols // 64)
    size = min(16, max(8, min(rows, cols) // 36))
    cursor = {"tl": margin, "tr": margin, "bl": rows - margin, "br": rows - margin}
    taken: list[tuple[int, int, int, int]] = []
    for text, kind, corner in lines:
        fits = (g for s in range(size, 7, -1) if (g := _glyphs(text, s))[0].shape[1] <= cols - 2 * margin)
        glyphs, dy, line_height = next(fits, (np.zeros((0, 0), bool), 0, 0))
        if not glyphs.size:
            continue
        height, width = glyphs.shape
        x = margin if corner[1] == "l" else cols - margin - width
        y = (cursor[corner] if corner[0] == "t" else cursor[corner] - line_height) + dy
        box = (x, y, x + width, y + height)
        if box[0] < 0 or box[1] < 0 or box[2] > cols or box[3] > rows or any(
            box[0] <= b[2] and b[0] <= box[2] and box[1] <= b[3] and b[1] <= box[3] for b in taken
        ):
            continue
        mask = np.zeros((rows, cols), bool)
        mask[y : y + height, x : x + width] = glyphs
        taken.append(box)
        cursor[corner] += line_height + 1 if corner[0] == "t" else -(line_height + 1)
        yield text, kind, mask


# --- the sweep: from what the header holds to entries ----------------------------------------------


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v) for v in items if v is not None and str(v) != ""]


def _action(
    keyword: str, vr: str, enclosing: list[str], *, private: bool, in_text: bool, lookalike: bool = False
) -> tuple[Action, str]:
    """The expected action and the Table E.1-1 code that decides it."""
    if private:
        return Action.REMOVE, "X"
    for seq in enclosing:  # outermost first: a sequence the Table removes takes its contents along
        code = _E11.get(seq, ("", ""))[0]
        if code and "U" not in code and code.split("/")[0] in ("X", "Z"):
            return Action.REMOVE, code
    code, flags = _E11.get(keyword, ("", ""))
    if lookalike:
        return Action.KEEP, code
    if in_text:
        return (Action.CLEAN if "C" in flags else Action.REMOVE), code
    if "L" in flags or (vr in ("DA", "DT", "TM") and not code):
        return Action.SHIFT_DATE, code
    if keyword in _CONSISTENT or code == "U" or (vr == "UI" and not code):
        return Action.REPLACE_CONSISTENTLY, code
    if not code:
        return (Action.REMOVE if vr == "PN" else Action.KEEP), code
    return (Action.REMOVE if code.startswith("X") else Action.REPLACE), code


def _sweep(ds: Dataset, marks: dict[str, list[_Mark]], *, file: str, sop: str, patient_id: str) -> list[Entry]:
    """Entries for what the injector marked, and for the dates, times, UIDs, names, Table E.1-1
    attributes and look-alikes the header holds besides (values the cohort set)."""
    entries: list[Entry] = []
    seen: set[str] = set()

    def walk(d: Dataset, prefix: str, enclosing: list[str], creator: str) -> None:
        for elem in d:
            tag: BaseTag = elem.tag
            if tag.is_private and tag.is_private_creator:
                continue
            private = bool(creator) or tag.is_private
            name = _tag_text(tag) if tag.is_private or not elem.keyword else elem.keyword
            path = prefix + name
            where = creator or ((elem.private_creator or "") if tag.is_private else "")
            if elem.VR == "SQ":
                for i, item in enumerate(elem.value):
                    walk(item, f"{path}[{i}].", [*enclosing, elem.keyword], where)
                continue
            if elem.VR in _BULK_VRS:
                continue
            values = _values(elem)
            todo: list[tuple[str, Kind, bool]] = []
            if path in marks:
                seen.add(path)
                text = " ".join(values)
                for m in marks[path]:
                    if (m.value not in text) if m.in_text else (m.value not in values):
                        raise RuntimeError(f"injector bug: {path}: {m.value!r} was not written")
                    todo.append((m.value, m.kind, m.in_text))
            elif not private:
                kind = _auto_kind(elem)
                todo = [(v, kind, False) for v in values] if kind else []
            for value, kind, in_text in todo:
                action, code = _action(elem.keyword, elem.VR, enclosing, private=private, in_text=in_text,
                                       lookalike=kind is Kind.NON_PHI)
                context = (
                    Context.PRIVATE if private
                    else Context.FREE_TEXT if in_text
                    else Context.SEQUENCE if enclosing
                    else Context.STANDARD
                )
                entries.append(Entry(file, sop, patient_id, path, elem.keyword, _tag_text(tag), elem.VR, where,
                                     None, None, None, None, None, value, kind.value, context.value,
                                     action.value, code))

    walk(ds, "", [], "")
    missing = set(marks) - seen
    if missing:
        raise RuntimeError(f"injector bug: marked but not written: {sorted(missing)}")
    return entries


def _auto_kind(elem: DataElement) -> Kind | None:
    keyword = elem.keyword
    if keyword in _LOOKALIKES:
        return Kind.NON_PHI
    if elem.VR == "UI" and keyword not in _E11 and ("Instance" not in keyword or keyword.endswith("ClassUID")):
        return None  # class, transfer syntax and coding scheme UIDs identify no one
    if elem.VR in _BY_VR:
        return _KIND.get(keyword, _BY_VR[elem.VR])
    code, flags = _E11.get(keyword, ("", ""))
    if code and "C" not in flags:
        return _KIND.get(keyword, Kind.ID)
    return None
