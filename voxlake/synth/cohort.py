"""Synthetic cohorts: patients with studies of several kinds, written as valid DICOM Part 10 files.

A cohort is planned first (:func:`plan_cohort`: patients, studies, series, sizes, devices, transfer
syntaxes; no pixels), then written (:func:`generate_cohort`). Both are deterministic for a seed:
every random draw comes from :func:`voxlake.synth.rng` and every UID from :func:`voxlake.synth.uid`,
keyed by what it is for, so the same seed gives byte-identical files.

Kinds of study, with the IOD of their objects:

* CT chest, CT abdomen: a localizer and one or two axial series (CT Image Storage), HU via
  RescaleIntercept -1024, one FrameOfReferenceUID per study;
* MR brain: T1, T2 and FLAIR axial series, sometimes a 3D sagittal T1 and a post-contrast T1
  (MR Image Storage), sharing a FrameOfReferenceUID;
* CR chest or DX chest: PA and often lateral projections (Computed Radiography Image Storage,
  Digital X-Ray Image Storage - For Presentation);
* US abdomen: B-mode images (Ultrasound Image Storage) and one colour-Doppler cine loop
  (Ultrasound Multi-frame Image Storage, RGB).

Realism comes from the Imaging Data Commons (:mod:`voxlake.synth.distributions`): the kind of each
study follows the IDC's studies per Modality and, for CT, its BodyPartExamined; Manufacturer,
ManufacturerModelName, BodyPartExamined (absent where the IDC's is missing) and series sizes
follow the IDC per Modality. So that even a small cohort shows every IOD, the cohort's first five
studies are one of each kind (CT chest, MR brain, US, CR or DX, CT abdomen); the rest are sampled.
Series sizes are capped by ``max_instances_per_series``, which also caps the frames of the cine (to no
fewer than two).

Files are ``<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<InstanceNumber:04d>.dcm`` under the
output folder, Part 10 with preamble. Each series has one transfer syntax, assigned in turn from
``transfer_syntaxes`` (default: all of Explicit VR Little Endian, RLE Lossless, JPEG-LS Lossless and
JPEG 2000 Lossless). HTJ2K Lossless is used only where pydicom has an encoder for it: pydicom 3.0
has none (OpenJPEG decodes HTJ2K but cannot encode it), so today it is skipped.

``dciodvfy`` (dicom3tools 1.00, snapshot 20220618) reports no errors and no warnings on any of these
objects, in every transfer syntax, so no warning is accepted. Choices that keep it so: ImageLaterality
(B for a paired BodyPartExamined, else U) spares a series Laterality that could only be R or L;
CTDIvol comes with its CTDIPhantomTypeCodeSequence; MR ImageType Value 3 is OTHER; CT localizers
carry no RescaleType, as theirs is not HU; RGB in JPEG 2000 Lossless is written as YBR_RCT, which
the US IODs require. Attributes a hook adds are its own business.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage,
)

from voxlake.synth import rng, uid
from voxlake.synth._anatomy import (
    ABDOMEN,
    BRAIN,
    CHEST,
    HU,
    HU_CONTRAST,
    MR_SIGNAL,
    paint,
    plane,
    project,
    ultrasound,
)
from voxlake.synth._rle import encode_frame
from voxlake.synth.distributions import IdcDistributions
from voxlake.synth.distributions import load as load_distributions

__all__ = [
    "CohortPlan",
    "CohortResult",
    "InstanceHook",
    "PatientPlan",
    "SeriesPlan",
    "StudyKind",
    "StudyPlan",
    "available_transfer_syntaxes",
    "generate_cohort",
    "plan_cohort",
]

#: Called once per instance, after its header is complete and before its pixels are encoded, with the
#: dataset, the pixel array (stored values; frames x rows x columns [x samples] for a multi-frame object,
#: rows x columns [x samples] otherwise) and the path the file will have, relative to the output folder.
#: It may change the dataset in place (add or change elements, sequences, private tags) and returns the
#: array to encode: same shape and dtype, values within BitsStored (e.g. with burned-in text).
InstanceHook = Callable[[Dataset, np.ndarray, str], np.ndarray]


class StudyKind(Enum):
    """What a study is for; it decides the Modality, the anatomy and the series protocols."""

    CT_CHEST = "CT chest"
    CT_ABDOMEN = "CT abdomen"
    MR_BRAIN = "MR brain"
    CR_CHEST = "CR chest"
    DX_CHEST = "DX chest"
    US_ABDOMEN = "US abdomen"


@dataclass(frozen=True)
class _Kind:
    Modality: str
    StudyDescription: str
    body_parts: frozenset[str | None]


_KINDS = {
    StudyKind.CT_CHEST: _Kind("CT", "CT CHEST W/O CONTRAST", frozenset({"CHEST", "LUNG", None})),
    StudyKind.CT_ABDOMEN: _Kind(
        "CT",
        "CT ABDOMEN PELVIS W CONTRAST",
        frozenset({"ABDOMEN", "LIVER", "KIDNEY", "COLON", "PANCREAS", "STOMACH", "PELVIS", "ABDOMENPELVIS",
                   "CHESTABDOMEN", "CHESTABDPELVIS"}),
    ),
    StudyKind.MR_BRAIN: _Kind("MR", "MRI BRAIN W/WO CONTRAST", frozenset({"HEAD", "BRAIN", "HEADNECK", "SKULL", None})),
    StudyKind.CR_CHEST: _Kind("CR", "XR CHEST PA AND LATERAL", frozenset({"CHEST", None})),
    StudyKind.DX_CHEST: _Kind("DX", "XR CHEST PA AND LATERAL", frozenset({"CHEST", None})),
    StudyKind.US_ABDOMEN: _Kind("US", "US ABDOMEN COMPLETE", frozenset({"LIVER", "ABDOMEN", "PANCREAS", None})),
}
_FIRST_KINDS = (StudyKind.CT_CHEST, StudyKind.MR_BRAIN, StudyKind.US_ABDOMEN, None, StudyKind.CT_ABDOMEN)

_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage,
              "DX": DigitalXRayImageStorageForPresentation, "US": UltrasoundImageStorage}

FAMILY_NAMES = (
    "Smith", "Garcia", "Nguyen", "Okafor", "Kowalski", "Rossi", "Jensen", "Haddad", "Tanaka", "Silva", "Novak",
    "Murphy", "Schmidt", "Dubois", "Kim", "Ivanova", "Patel", "Larsen", "Moreau", "Costa", "Fischer", "Sato",
    "Andersson", "Kaya", "Mensah", "Walsh", "Horvath", "Lopez", "Chen", "Brennan",
)
GIVEN_NAMES = {
    "F": ("Anna", "Maria", "Sofia", "Emma", "Aisha", "Mei", "Ingrid", "Lucia", "Hana", "Grace", "Elena", "Nora"),
    "M": ("James", "Luca", "Omar", "Hiroshi", "Jan", "Pedro", "David", "Kwame", "Lars", "Ivan", "Rahul", "Tom"),
}
INSTITUTIONS = ("Synthetic General Hospital", "Example University Medical Center", "Riverside Imaging Clinic")
PAIRED = frozenset({"LUNG", "KIDNEY", "BREAST", "OVARY"})
FIRST_DATE, LAST_DATE = dt.date(2014, 1, 1), dt.date(2024, 12, 31)


# --- transfer syntaxes ----------------------------------------------------------------------------

_CANDIDATES = (ExplicitVRLittleEndian, RLELossless, JPEGLSLossless, JPEG2000Lossless, HTJ2KLossless)
_ALIASES = {"explicit": ExplicitVRLittleEndian, "rle": RLELossless, "jpeg-ls": JPEGLSLossless,
            "jpeg2000": JPEG2000Lossless, "htj2k": HTJ2KLossless}


def _can_encode(ts: UID) -> bool:
    if not ts.is_compressed:
        return True
    try:
        return pydicom.pixels.get_encoder(ts).is_available
    except NotImplementedError:  # no encoder in this pydicom (HTJ2K in 3.0)
        return False


def available_transfer_syntaxes() -> tuple[UID, ...]:
    """The lossless transfer syntaxes that the installed encoders can write."""
    return tuple(ts for ts in _CANDIDATES if _can_encode(ts))


def _transfer_syntax(value: str) -> UID:
    """A transfer syntax from its UID, its pydicom keyword (``JPEGLSLossless``) or an alias (``jpeg-ls``)."""
    ts = _ALIASES.get(value.lower()) or next((t for t in _CANDIDATES if value in (t, t.keyword)), None)
    valid = available_transfer_syntaxes()
    if ts not in valid:
        names = ", ".join(sorted(a for a, t in _ALIASES.items() if t in valid))
        raise ValueError(f"transfer syntax must be one of {names} (or a UID of {', '.join(valid)}), not {value!r}"
                         + ("; no encoder is installed for it" if ts else ""))
    return ts


# --- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesPlan:
    """A series to write: ``instances`` files of ``frames`` frames each, in one transfer syntax."""

    SeriesInstanceUID: str
    SeriesNumber: int
    Modality: str
    protocol: str
    instances: int
    frames: int
    transfer_syntax: UID


@dataclass(frozen=True)
class StudyPlan:
    """A study: its identifiers, its device (one per study, as in an archive) and its series."""

    kind: StudyKind
    StudyInstanceUID: str
    StudyDate: dt.date
    StudyTime: dt.time
    AccessionNumber: str
    StudyID: str
    ReferringPhysicianName: str
    BodyPartExamined: str | None
    Manufacturer: str | None
    ManufacturerModelName: str | None
    DeviceSerialNumber: str
    series: tuple[SeriesPlan, ...]

    @property
    def Modality(self) -> str:
        return _KINDS[self.kind].Modality


@dataclass(frozen=True)
class PatientPlan:
    """A patient: demographics fixed for every study; ``habitus`` scales the anatomy's width."""

    index: int
    PatientID: str
    PatientName: str
    PatientSex: str
    PatientBirthDate: dt.date
    PatientSize: float
    PatientWeight: float
    InstitutionName: str
    habitus: float
    studies: tuple[StudyPlan, ...]


@dataclass(frozen=True)
class CohortPlan:
    """Everything :func:`generate_cohort` decides before drawing a pixel."""

    seed: int
    patients: tuple[PatientPlan, ...]

    def series(self) -> Iterator[tuple[PatientPlan, StudyPlan, SeriesPlan]]:
        for p in self.patients:
            for st in p.studies:
                for se in st.series:
                    yield p, st, se

    @property
    def instances(self) -> int:
        """How many files :func:`generate_cohort` writes for this plan (a total for a progress bar)."""
        return sum(se.instances for _, _, se in self.series())


def _sample_kind(r: Any, d: IdcDistributions, position: int) -> tuple[StudyKind, str | None]:
    """The kind and BodyPartExamined of the cohort's study number ``position``: the first five cover
    every kind, later ones follow the IDC's studies per Modality (and CT's body parts)."""
    if position < len(_FIRST_KINDS) and _FIRST_KINDS[position] is not None:
        kind = _FIRST_KINDS[position]
    else:
        modalities = ("CR", "DX") if position < len(_FIRST_KINDS) else ("CT", "MR", "CR", "DX", "US")
        modality = d.modalities_of_studies.sample(r, allowed=modalities, missing=False)
        kind = {"MR": StudyKind.MR_BRAIN, "CR": StudyKind.CR_CHEST, "DX": StudyKind.DX_CHEST,
                "US": StudyKind.US_ABDOMEN}.get(modality)
        if kind is None:  # CT: chest or abdomen as the IDC's CT BodyPartExamined has it
            body_part = d.modality("CT").body_parts.sample(
                r, allowed=_KINDS[StudyKind.CT_CHEST].body_parts | _KINDS[StudyKind.CT_ABDOMEN].body_parts)
            in_chest = body_part in _KINDS[StudyKind.CT_CHEST].body_parts
            return (StudyKind.CT_CHEST if in_chest else StudyKind.CT_ABDOMEN), body_part
    return kind, d.modality(_KINDS[kind].Modality).body_parts.sample(r, allowed=_KINDS[kind].body_parts)


def _series_sizes(kind: StudyKind, r: Any, d: IdcDistributions, cap: int) -> list[tuple[str, int, int]]:
    """``(protocol, instances, frames)`` of each series of a study of this kind."""
    sizes = d.modality(_KINDS[kind].Modality).instances_per_series

    def volume(low_p: float, least: int) -> int:
        # Volumes only: the IDC's smallest series of the Modality are localizers, reports and the like.
        n = sizes.quantile(low_p + (1 - low_p) * float(r.random()))
        return int(np.clip(round(n), min(least, cap), cap))

    if kind in (StudyKind.CT_CHEST, StudyKind.CT_ABDOMEN):
        recon = "ct_lung" if kind is StudyKind.CT_CHEST else "ct_arterial"
        out = [("ct_scout", 1, 1), ("ct_soft" if kind is StudyKind.CT_CHEST else "ct_venous", volume(0.3, 20), 1)]
        return out + ([(recon, volume(0.3, 20), 1)] if r.random() < 0.6 else [])
    if kind is StudyKind.MR_BRAIN:
        out = [(p, volume(0.05, 12), 1) for p in ("mr_t1", "mr_t2", "mr_flair")]
        out += [("mr_t1_sag_3d", volume(0.05, 12), 1)] if r.random() < 0.5 else []
        return out + ([("mr_t1_post", volume(0.05, 12), 1)] if r.random() < 0.4 else [])
    if kind in (StudyKind.CR_CHEST, StudyKind.DX_CHEST):
        return [("xr_pa", 1, 1)] + ([("xr_lat", 1, 1)] if r.random() < 0.6 else [])
    bmode = int(np.clip(round(sizes.sample(r)), 1, cap))
    return [("us_bmode", bmode, 1), ("us_cine", 1, max(2, min(int(r.integers(10, 31)), cap)))]  # a loop: 2+ frames


def _digits(seed: int, *parts: object, n: int = 8) -> str:
    return uid(seed, *parts)[-n:]


def plan_cohort(
    *,
    patients: int,
    seed: int = 0,
    transfer_syntaxes: Sequence[str] | None = None,
    max_instances_per_series: int = 60,
) -> CohortPlan:
    """What :func:`generate_cohort` will write for these arguments, without writing anything.

    Cheap (no pixels), so it serves as a header-only sample of the distributions and gives the total
    number of instances for a progress bar.
    """
    if patients < 0 or max_instances_per_series < 1:
        raise ValueError("patients must be >= 0 and max_instances_per_series >= 1")
    cycle = [_transfer_syntax(t) for t in transfer_syntaxes] if transfer_syntaxes else available_transfer_syntaxes()
    offset = int(rng(seed, "transfer syntax").integers(len(cycle)))
    d = load_distributions()
    mrn_prefix = _digits(seed, "mrn", n=3)
    out, n_studies, n_series = [], 0, 0
    for p in range(patients):
        r = rng(seed, "patient", p)
        sex = d.patient_sex.sample(r, missing=False) or "O"
        given = GIVEN_NAMES.get(sex) or GIVEN_NAMES[("F", "M")[int(r.integers(2))]]
        name = f"{FAMILY_NAMES[int(r.integers(len(FAMILY_NAMES)))]}^{given[int(r.integers(len(given)))]}"
        first = FIRST_DATE + dt.timedelta(days=int(r.integers((LAST_DATE - FIRST_DATE).days - 800)))
        age = float(np.clip(d.age_years.sample(r), 18, 95))  # the synthetic anatomy is adult-sized
        birth = first - dt.timedelta(days=int(age * 365.25) + int(r.integers(365)))
        height = float(r.normal(1.64 if sex == "F" else 1.77, 0.07))
        studies, date = [], first
        for s in range(1 + int(r.choice(3, p=[0.5, 0.3, 0.2]))):
            rs = rng(seed, "study", p, s)
            kind, body_part = _sample_kind(rs, d, n_studies)
            md = d.modality(_KINDS[kind].Modality)
            manufacturer = md.manufacturers.sample(rs)
            model = md.sample_model(rs, manufacturer)
            date += dt.timedelta(days=int(rs.integers(7, 400))) if s else dt.timedelta()
            series = []
            for k, (protocol, instances, frames) in enumerate(_series_sizes(kind, rs, d, max_instances_per_series)):
                series.append(SeriesPlan(uid(seed, "series", p, s, k), k + 1, md.Modality, protocol, instances,
                                         frames, cycle[(offset + n_series) % len(cycle)]))
                n_series += 1
            studies.append(StudyPlan(
                kind=kind,
                StudyInstanceUID=uid(seed, "study", p, s),
                StudyDate=date,
                StudyTime=dt.time(int(rs.integers(7, 19)), int(rs.integers(60)), int(rs.integers(60))),
                AccessionNumber=f"{mrn_prefix}{n_studies + 1:07d}",
                StudyID=str(int(rs.integers(1000, 99999))),
                ReferringPhysicianName=f"{FAMILY_NAMES[int(rs.integers(len(FAMILY_NAMES)))]}^"
                f"{GIVEN_NAMES['FM'[int(rs.integers(2))]][int(rs.integers(12))]}^^Dr",
                BodyPartExamined=body_part,
                Manufacturer=manufacturer,
                ManufacturerModelName=model,
                # The same scanner (institution, make, model) has the same serial number in every study.
                DeviceSerialNumber=_digits(seed, "device", p % len(INSTITUTIONS), md.Modality, manufacturer, model),
                series=tuple(series),
            ))
            n_studies += 1
        out.append(PatientPlan(
            index=p,
            PatientID=f"{mrn_prefix}{p + 1:06d}",
            PatientName=name.upper(),
            PatientSex=sex,
            PatientBirthDate=birth,
            PatientSize=round(height, 2),
            PatientWeight=round(float(np.clip(r.normal(24.5, 4.0), 17, 40)) * height**2, 1),
            InstitutionName=INSTITUTIONS[p % len(INSTITUTIONS)],
            habitus=float(np.clip(r.normal(1.0, 0.07), 0.85, 1.2)),
            studies=tuple(studies),
        ))
    return CohortPlan(seed, tuple(out))


# --- headers --------------------------------------------------------------------------------------


def _code(value: str, meaning: str, scheme: str = "SCT") -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _da(d: dt.date) -> str:
    return d.strftime("%Y%m%d")


def _tm(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


def _ds(values: Sequence[float], digits: int = 4) -> list[float]:
    return [round(float(v), digits) + 0.0 for v in values]


def _age(birth: dt.date, on: dt.date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{years:03d}Y"


def _vendor(manufacturer: str | None) -> str:
    m = (manufacturer or "").upper()
    return next((v for v in ("GE", "SIEMENS", "PHILIPS", "TOSHIBA", "CANON") if v in m), "")


_KERNELS = {"GE": ("STANDARD", "LUNG"), "SIEMENS": ("B30f", "B70f"), "PHILIPS": ("B", "L"),
            "TOSHIBA": ("FC08", "FC51"), "CANON": ("FC08", "FC51"), "": ("STANDARD", "LUNG")}


@dataclass(frozen=True)
class _Context:
    seed: int
    patient: PatientPlan
    study: StudyPlan
    series: SeriesPlan
    matrix: int

    @property
    def time(self) -> dt.datetime:
        start = dt.datetime.combine(self.study.StudyDate, self.study.StudyTime)
        return start + dt.timedelta(minutes=4 * (self.series.SeriesNumber - 1))


def _common(c: _Context, sop_class: str, number: int) -> Dataset:
    """Patient, General Study, Patient Study, General Series, General Equipment, General Image and SOP
    Common modules, the same for every IOD here."""
    p, st, se = c.patient, c.study, c.series
    when = c.time + dt.timedelta(seconds=number)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid(c.seed, "instance", st.StudyInstanceUID, se.SeriesNumber, number)
    ds.file_meta.TransferSyntaxUID = se.transfer_syntax
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.InstanceCreationDate, ds.InstanceCreationTime = _da(when), _tm(when)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyDate, ds.SeriesDate, ds.AcquisitionDate, ds.ContentDate = (_da(st.StudyDate), _da(when), _da(when),
                                                                       _da(when))
    ds.StudyTime = _tm(dt.datetime.combine(st.StudyDate, st.StudyTime))
    ds.SeriesTime, ds.AcquisitionTime, ds.ContentTime = _tm(c.time), _tm(when), _tm(when)
    ds.AccessionNumber, ds.Modality = st.AccessionNumber, se.Modality
    ds.Manufacturer = st.Manufacturer or ""
    ds.InstitutionName, ds.ReferringPhysicianName = p.InstitutionName, st.ReferringPhysicianName
    ds.StationName = f"{se.Modality}{st.DeviceSerialNumber[-2:]}"
    ds.StudyDescription = _KINDS[st.kind].StudyDescription
    if st.ManufacturerModelName:
        ds.ManufacturerModelName = st.ManufacturerModelName
    ds.PatientName, ds.PatientID = p.PatientName, p.PatientID
    ds.PatientBirthDate, ds.PatientSex = _da(p.PatientBirthDate), p.PatientSex
    ds.PatientAge = _age(p.PatientBirthDate, st.StudyDate)
    ds.PatientSize, ds.PatientWeight = p.PatientSize, p.PatientWeight
    if st.BodyPartExamined:
        ds.BodyPartExamined = st.BodyPartExamined
    # Both sides of a paired part (LUNG, KIDNEY), else unpaired; without it, a paired or unknown
    # BodyPartExamined would require the series' Laterality, which can only be R or L.
    ds.ImageLaterality = "B" if st.BodyPartExamined in PAIRED else "U"
    ds.DeviceSerialNumber, ds.SoftwareVersions = st.DeviceSerialNumber, "synthetic"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = st.StudyInstanceUID, se.SeriesInstanceUID
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = st.StudyID, se.SeriesNumber, 1, number
    ds.BurnedInAnnotation = "NO"
    return ds


def _pixels_module(ds: Dataset, rows: int, cols: int, bits: int, samples: int = 1) -> None:
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = (8, 8, 7) if bits == 8 else (16, bits, bits - 1)
    ds.PixelRepresentation = 0


def _ct(c: _Context) -> Iterator[tuple[Dataset, np.ndarray]]:
    st, se, n = c.study, c.series, c.matrix
    r, ra = rng(c.seed, "pixels", se.SeriesInstanceUID), rng(c.seed, "acquisition", st.StudyInstanceUID)
    contrast = st.kind is StudyKind.CT_ABDOMEN and se.protocol != "ct_scout"
    phantom, hu = (CHEST, HU) if st.kind is StudyKind.CT_CHEST else (ABDOMEN, HU_CONTRAST if contrast else HU)
    kvp, ma = int(ra.choice([100, 120, 120, 120, 140])), int(ra.integers(80, 400))
    fov = float(ra.integers(320, 421))
    centre = np.array([0.0, -20.0 if st.kind is StudyKind.CT_CHEST else 0.0, -180.0])  # table position
    lung = se.protocol == "ct_lung"
    kernel = _KERNELS[_vendor(st.Manufacturer)][int(lung)]
    thickness = float(r.choice([1.0, 1.25]) if lung else r.choice([2.5, 3.0, 5.0]))
    noise = 12 * math.sqrt(200 / ma) * (2.5 if lung else 1.0) / math.sqrt(thickness / 2.5)
    for i in range(se.instances):
        ds = _common(c, CTImageStorage, i + 1)
        ds.ScanOptions, ds.KVP, ds.XRayTubeCurrent = "HELICAL MODE", kvp, ma
        ds.ExposureTime, ds.Exposure = 750, round(ma * 0.75)
        ds.DataCollectionDiameter, ds.ReconstructionDiameter = 500, fov
        ds.DistanceSourceToDetector, ds.DistanceSourceToPatient = 1040, 570
        ds.GantryDetectorTilt, ds.TableHeight, ds.RotationDirection = 0, 160, "CW"
        ds.FilterType, ds.FocalSpots, ds.ConvolutionKernel = "BODY FILTER", 1.2, kernel
        ds.RevolutionTime, ds.SpiralPitchFactor = 0.75, 0.984
        ds.CTDIvol = round(0.04 * ma * (kvp / 120) ** 2.5, 2)
        ds.CTDIPhantomTypeCodeSequence = DicomSequence([_code("113691", "IEC Body Dosimetry Phantom", "DCM")])
        ds.PatientPosition, ds.FrameOfReferenceUID = "HFS", uid(c.seed, "frame of reference", st.StudyInstanceUID)
        ds.PositionReferenceIndicator = ""
        if se.protocol == "ct_scout":
            ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
            siemens = _vendor(st.Manufacturer) == "SIEMENS"
            ds.ScanOptions, ds.SeriesDescription = "SCOUT MODE", ("Topogram 0.6 T20f" if siemens else "Scout")
            spacing = 520.0 / n
            origin = [-260 + spacing / 2, 0.0, centre[2] + 260 - spacing / 2]
            orientation = ([1.0, 0, 0], [0, 0, -1.0])
            x, _, z = plane(origin, *orientation, spacing, n, n, centre)
            line = project(x, z, 1, phantom, c.patient.habitus, hu)
            stored = 1024 + 40 + line * 220 + r.normal(0, 8, line.shape)
            ds.SliceThickness, ds.WindowCenter, ds.WindowWidth = 1.0, 1600, 1600
            ds.RescaleIntercept, ds.RescaleSlope = 0, 1  # a projection: no RescaleType, since not HU
        else:
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.SeriesDescription = {"ct_soft": "CHEST 2.5 STD", "ct_lung": "LUNG 1.25", "ct_venous": "ABD/PEL VENOUS",
                                    "ct_arterial": "ABD ARTERIAL"}[se.protocol]
            if contrast:
                ds.ContrastBolusAgent, ds.ContrastBolusRoute, ds.ContrastBolusVolume = "OMNIPAQUE 350", "IV", 100
            spacing = fov / n
            z = centre[2] + (i - (se.instances - 1) / 2) * thickness
            origin = [-fov / 2 + spacing / 2 + centre[0], -fov / 2 + spacing / 2 + centre[1], z]
            orientation = ([1.0, 0, 0], [0, 1.0, 0])
            xyz = plane(origin, *orientation, spacing, n, n, centre)
            stored = 1024 + paint(xyz, phantom, hu, c.patient.habitus) + r.normal(0, noise, (n, n))
            ds.SliceThickness, ds.SliceLocation = thickness, round(z, 4)
            ds.WindowCenter, ds.WindowWidth = (-600, 1500) if lung else (40, 400)
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = _ds(origin), _ds([*orientation[0], *orientation[1]])
        ds.PixelSpacing = _ds([spacing, spacing], 6)
        _pixels_module(ds, n, n, 12)
        yield ds, np.clip(np.rint(stored), 0, 4095).astype(np.uint16)


_MR = {  # ScanningSequence, SequenceVariant, TR, TE, TI, flip angle, echo train, description, weighting
    "mr_t1": ("SE", "SK", (450, 650), (8, 15), None, 90, 1, "AX T1 SE", "t1"),
    "mr_t2": ("SE", ["SK", "SP"], (3000, 5000), (80, 110), None, 90, 16, "AX T2 FSE", "t2"),
    "mr_flair": (["SE", "IR"], ["SK", "SP", "MP"], (8000, 11000), (100, 140), (2200, 2600), 90, 24, "AX FLAIR",
                 "flair"),
    "mr_t1_sag_3d": (["GR", "IR"], ["SK", "SP", "MP"], (1900, 2300), (2.3, 3.5), (850, 950), 9, 1, "SAG T1 3D MPRAGE",
                     "t1"),
    "mr_t1_post": ("SE", "SK", (450, 650), (8, 15), None, 90, 1, "AX T1 SE POST GAD", "t1_post"),
}


def _mr(c: _Context) -> Iterator[tuple[Dataset, np.ndarray]]:
    st, se, n = c.study, c.series, c.matrix
    r = rng(c.seed, "pixels", se.SeriesInstanceUID)
    scanning, variant, tr, te, ti, flip, etl, description, weighting = _MR[se.protocol]
    field = float(rng(c.seed, "field strength", st.DeviceSerialNumber).choice([1.5, 3.0]))
    fov, three_d = float(r.choice([220, 230, 240])), se.protocol == "mr_t1_sag_3d"
    thickness, step = (1.0, 1.0) if three_d else (5.0, 6.0)
    row, col = ([0.0, 1.0, 0.0], [0.0, 0.0, -1.0]) if three_d else ([1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    normal = np.cross(row, col)
    centre = np.array([0.0, -10.0, 20.0])  # the head near the magnet's isocentre
    spacing = fov / n
    repetition, echo = round(float(r.uniform(*tr)), 1), round(float(r.uniform(*te)), 2)
    for i in range(se.instances):
        ds = _common(c, MRImageStorage, i + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]  # Value 3 is required; OTHER is a defined term
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = scanning, variant, ""
        ds.MRAcquisitionType, ds.SeriesDescription, ds.ProtocolName = ("3D" if three_d else "2D"), description, description
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.FlipAngle = repetition, echo, etl, flip
        if ti:
            ds.InversionTime = round(float(r.uniform(*ti)))
        ds.MagneticFieldStrength, ds.ImagingFrequency = field, round(42.577478 * field, 6)
        ds.ImagedNucleus, ds.EchoNumbers, ds.NumberOfAverages = "1H", 1, 1
        ds.SliceThickness, ds.SpacingBetweenSlices = thickness, step
        ds.ReceiveCoilName, ds.TransmitCoilName = "HEAD", "BODY"
        ds.AcquisitionMatrix, ds.InPlanePhaseEncodingDirection = [n, 0, 0, n * 3 // 4], "ROW"
        ds.PixelBandwidth, ds.PatientPosition = 200, "HFS"
        if weighting == "t1_post":
            ds.ContrastBolusAgent, ds.ContrastBolusRoute, ds.ContrastBolusVolume = "GADAVIST", "IV", 7.5
        ds.FrameOfReferenceUID = uid(c.seed, "frame of reference", st.StudyInstanceUID)
        ds.PositionReferenceIndicator = ""
        offset = (i - (se.instances - 1) / 2) * step + (0 if three_d else 15)
        origin = centre + offset * normal - (np.asarray(row) + np.asarray(col)) * (fov - spacing) / 2
        signal = paint(plane(origin, row, col, spacing, n, n, centre), BRAIN, MR_SIGNAL[weighting],
                        c.patient.habitus)
        noisy = np.hypot(signal + r.normal(0, 20, signal.shape), r.normal(0, 20, signal.shape))
        ds.ImagePositionPatient, ds.ImageOrientationPatient = _ds(origin), _ds([*row, *col])
        ds.SliceLocation, ds.PixelSpacing = round(float(np.dot(origin, normal)), 4), _ds([spacing, spacing], 6)
        ds.WindowCenter, ds.WindowWidth = 900, 1800
        _pixels_module(ds, n, n, 12)
        yield ds, np.clip(np.rint(noisy), 0, 4095).astype(np.uint16)


def _xr(c: _Context) -> Iterator[tuple[Dataset, np.ndarray]]:
    st, se = c.study, c.series
    r = rng(c.seed, "pixels", se.SeriesInstanceUID)
    dx, lateral = se.Modality == "DX", se.protocol == "xr_lat"
    cols, rows = c.matrix, c.matrix * 5 // 4
    pitch = 430.0 / rows
    v, h = np.mgrid[0:rows, 0:cols].astype(float) * pitch
    u, z = h - cols * pitch / 2, 245 - v  # columns run to the patient's left (PA) or back (lateral)
    line = project(u, z, 0 if lateral else 1, CHEST, c.patient.habitus, HU)
    stored = np.clip(np.rint(300 + line * 650 + r.normal(0, 20, line.shape)), 0, 4095).astype(np.uint16)
    ds = _common(c, _SOP_CLASS[se.Modality], 1)
    ds.SeriesDescription = "CHEST LAT" if lateral else "CHEST PA"
    ds.ViewPosition, ds.PatientOrientation = ("LL", ["P", "F"]) if lateral else ("PA", ["L", "F"])
    ds.KVP, ds.ExposureTime, ds.XRayTubeCurrent = (125 if lateral else 115), 10, 320
    ds.Exposure, ds.DistanceSourceToDetector, ds.ImagerPixelSpacing = 3, 1800, _ds([pitch, pitch], 6)
    if dx:
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LOG", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape, ds.LossyImageCompression = "IDENTITY", "00"
        ds.DetectorType, ds.PositionerType, ds.ExposureIndex = "SCINTILLATOR", "COLUMN", 400
        ds.AnatomicRegionSequence = DicomSequence([_code("51185008", "Chest")])
        ds.ViewCodeSequence = DicomSequence([_code("399173006", "left lateral") if lateral
                                             else _code("399348003", "postero-anterior")])
        ds.AcquisitionContextSequence = DicomSequence()
    else:
        ds.BodyPartExamined = st.BodyPartExamined or ""  # Type 2 in the CR Series module
    ds.WindowCenter, ds.WindowWidth = 2000, 3500
    _pixels_module(ds, rows, cols, 12)
    yield ds, stored


def _us(c: _Context) -> Iterator[tuple[Dataset, np.ndarray]]:
    se = c.series
    r = rng(c.seed, "pixels", se.SeriesInstanceUID)
    cine = se.protocol == "us_cine"
    cols, rows = c.matrix, max(32, c.matrix * 3 // 4)  # JPEG 2000's 6 resolution levels need 32
    for i in range(se.instances):
        ds = _common(c, UltrasoundMultiFrameImageStorage if cine else UltrasoundImageStorage, i + 1)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0011" if cine else "0001"]
        ds.SeriesDescription = "Liver cine CFM" if cine else "Abdomen"
        ds.PatientOrientation, ds.LossyImageCompression = "", "00"
        ds.MechanicalIndex, ds.SoftTissueThermalIndex, ds.DepthOfScanField = 1.1, 0.4, 160
        region = Dataset()
        region.RegionSpatialFormat, region.RegionDataType, region.RegionFlags = 1, 1, 0
        region.RegionLocationMinX0, region.RegionLocationMinY0 = 0, 0
        region.RegionLocationMaxX1, region.RegionLocationMaxY1 = cols - 1, rows - 1
        region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = 3, 3
        region.PhysicalDeltaX = region.PhysicalDeltaY = round(16.0 / rows, 6)
        region.ReferencePixelX0, region.ReferencePixelY0 = cols // 2, 0
        region.ReferencePixelPhysicalValueX = region.ReferencePixelPhysicalValueY = 0.0
        region.TransducerFrequency = 3500
        ds.SequenceOfUltrasoundRegions = DicomSequence([region])
        if cine:
            frame_ms = round(1000 / 30, 2)
            ds.NumberOfFrames, ds.FrameIncrementPointer = se.frames, pydicom.tag.Tag("FrameTime")
            ds.FrameTime, ds.CineRate, ds.RecommendedDisplayFrameRate = frame_ms, 30, 30
            ds.EffectiveDuration = round(frame_ms * se.frames / 1000, 3)
            pixels = np.stack([ultrasound(rows, cols, r, f * frame_ms / 1000, True) for f in range(se.frames)])
            _pixels_module(ds, rows, cols, 8, samples=3)
        else:
            pixels = ultrasound(rows, cols, r, 0.7 * i, False)
            _pixels_module(ds, rows, cols, 8)
        yield ds, pixels


_WRITERS = {"CT": _ct, "MR": _mr, "CR": _xr, "DX": _xr, "US": _us}


# --- writing --------------------------------------------------------------------------------------


def _encode(ds: Dataset, pixels: np.ndarray, ts: UID) -> None:
    if ts == RLELossless:
        frames = pixels if "NumberOfFrames" in ds else pixels[None]
        ds.PixelData = pydicom.encaps.encapsulate([encode_frame(f) for f in frames])
        ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
        ds.file_meta.TransferSyntaxUID = ts
    elif ts.is_compressed:
        if ts == JPEG2000Lossless and ds.PhotometricInterpretation == "RGB":
            # Lossless JPEG 2000 colour is YBR_RCT (reversible transform) in the US IODs; decoders give RGB back.
            ds.PhotometricInterpretation = "YBR_RCT"
        ds.compress(ts, pixels, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = ts
        ds.add_new("PixelData", "OB" if ds.BitsAllocated == 8 else "OW", np.ascontiguousarray(pixels).tobytes())


@dataclass(frozen=True)
class CohortResult:
    """What :func:`generate_cohort` wrote: ``files`` are relative POSIX paths under ``out_dir``."""

    out_dir: Path
    files: tuple[str, ...]
    modalities: Mapping[str, int]  # instances per Modality
    transfer_syntaxes: Mapping[str, int]  # instances per transfer syntax name
    patients: int
    studies: int
    series: int
    instances: int
    bytes: int

    def summary(self) -> str:
        def counts(m: Mapping[str, int]) -> str:
            return ", ".join(f"{k} {v:,}" for k, v in sorted(m.items(), key=lambda kv: (-kv[1], kv[0])))

        return "\n".join([
            f"Wrote {self.instances:,} DICOM files ({self.bytes / 1e6:,.1f} MB) to {self.out_dir}: "
            f"{self.patients:,} patients, {self.studies:,} studies, {self.series:,} series",
            f"  by Modality: {counts(self.modalities)}",
            f"  by transfer syntax: {counts(self.transfer_syntaxes)}",
            "  layout: <PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<InstanceNumber>.dcm",
        ])


def generate_cohort(
    out_dir: str | Path,
    *,
    patients: int,
    seed: int = 0,
    transfer_syntaxes: Sequence[str] | None = None,
    hook: InstanceHook | None = None,
    progress: Callable[[int], None] | None = None,
    max_instances_per_series: int = 60,
    matrix: int = 256,
) -> CohortResult:
    """Write a synthetic cohort of ``patients`` under ``out_dir``; same arguments, same bytes.

    ``transfer_syntaxes`` are taken in turn per series (UIDs, pydicom keywords or the aliases
    explicit, rle, jpeg-ls, jpeg2000, htj2k); default all that the installed encoders can write.
    ``hook`` sees every instance before encoding (see :data:`InstanceHook`). ``progress(1)`` is called
    after each file, as tqdm's ``update`` expects; the total is ``plan_cohort(...).instances``.
    ``matrix`` is the CT/MR image size (radiographs are matrix x 1.25 tall, ultrasound 0.75), at least 32
    since JPEG 2000 needs room for its resolution levels.
    """
    if matrix < 32:
        raise ValueError(f"matrix must be at least 32, not {matrix}")
    plan = plan_cohort(patients=patients, seed=seed, transfer_syntaxes=transfer_syntaxes,
                       max_instances_per_series=max_instances_per_series)
    out = Path(out_dir)
    files: list[str] = []
    modalities: Counter[str] = Counter()
    syntaxes: Counter[str] = Counter()
    size = 0
    for patient, study, series in plan.series():
        context = _Context(seed, patient, study, series, matrix)
        for ds, pixels in _WRITERS[series.Modality](context):
            rel = f"{patient.PatientID}/{study.StudyInstanceUID}/{series.SeriesInstanceUID}/{ds.InstanceNumber:04d}.dcm"
            if hook is not None:
                pixels = hook(ds, pixels, rel)
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            _encode(ds, pixels, series.transfer_syntax)
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)
            files.append(rel)
            modalities[series.Modality] += 1
            syntaxes[series.transfer_syntax.name] += 1
            size += path.stat().st_size
            if progress is not None:
                progress(1)
    return CohortResult(
        out_dir=out,
        files=tuple(files),
        modalities=dict(modalities),
        transfer_syntaxes=dict(syntaxes),
        patients=len(plan.patients),
        studies=sum(len(p.studies) for p in plan.patients),
        series=sum(1 for _ in plan.series()),
        instances=len(files),
        bytes=size,
    )
