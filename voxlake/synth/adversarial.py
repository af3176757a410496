"""An adversarial PHI test set: one fake patient planted everywhere a de-identifier can miss it.

:func:`generate_adversarial` writes about 40 DICOM files of one fake patient (Quentina Zyxwvut, a
name that never occurs by chance) across fourteen SOP classes (CT, MR, US, multi-frame US, secondary
capture, CR, DX, three kinds of SR, a grayscale presentation state, SEG, RTSTRUCT, encapsulated PDF)
and six character sets (ASCII, Latin-1, UTF-8, ISO 2022 Japanese, Cyrillic, Greek and GB18030 for
Chinese), and puts the identity where archives and tricky vendors put it: standard attributes at
every depth, free text in other spellings, code meanings and local code values, SR content items,
presentation state text objects, segment and ROI labels, a PDF's text and info dictionary, burned-in
pixels (one image whose BurnedInAnnotation says NO, one without the attribute), overlay planes and
icon images, private blocks with and without their creator, an unknown element stored as UN, UIDs
that carry the MRN and the birth date, and a sequence nested 1000 levels deep. The SEG, PR, SR and
RTSTRUCT reference the CT's instances, so a checker can test that references resolve after UID
replacement; clinical content (``Liver``, ``Heart``, ``Lung_R``, a SNOMED CT code) is planted beside
it, for what a good de-identifier keeps.

``OUT/answer_key.json`` says, for every distinct string a leak detector should look for (the name in
every spelling and script, the MRN with and without its prefix, the birth date in six formats, the
phone, email, street, SSN, accession number, physician and institution), its category, the files that
hold it and where in them. Files are found in the key by a case-, accent- and punctuation-folded
search of what was written, so the key says exactly what a folded search finds.

Everything comes from the seed (:func:`voxlake.synth.rng`, :func:`voxlake.synth.uid`): the same seed
gives byte-identical files and key.
"""

from __future__ import annotations

import json
import re
import unicodedata
import zlib
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from voxlake.synth import UID_ROOT, rng, uid

__all__ = ["WHERE", "AdversarialIdentity", "adversarial_identity", "generate_adversarial"]

#: The places the key distinguishes.
WHERE = ("header", "free-text", "code-meaning", "sr", "pr", "seg", "rt", "pdf", "overlay", "icon", "pixels",
         "private", "uid", "un")
#: Where a value is only in pixels: a search of the bytes or the elements cannot find it there.
PIXEL_WHERE = frozenset({"overlay", "icon", "pixels"})

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
MR_CLASS = "1.2.840.10008.5.1.4.1.1.4"
US_CLASS = "1.2.840.10008.5.1.4.1.1.6.1"
US_MF_CLASS = "1.2.840.10008.5.1.4.1.1.3.1"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"
DX_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"
BASIC_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.11"
ENHANCED_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
COMPREHENSIVE_SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
GSPS_CLASS = "1.2.840.10008.5.1.4.1.1.11.1"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"
PDF_CLASS = "1.2.840.10008.5.1.4.1.1.104.1"

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
NESTING_DEPTH = 1000
LIVER = ("10200004", "SCT", "Liver")
MANUFACTURER = "voxlake synthetic"
_TEXT_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")


@dataclass(frozen=True)
class AdversarialIdentity:
    """The one fake patient of the set, with the spellings the files use."""

    family: str
    given: str
    mrn: str
    birth_date: date
    phone: str
    street: str
    city: str
    email: str
    ssn: str
    accession: str
    insurance_id: str
    physician_family: str
    physician_given: str
    institution: str
    latin1_family: str = "Zyxwvüt"
    japanese_ideographic: tuple[str, str] = ("ジクスウト", "クエンティナ")
    japanese_phonetic: tuple[str, str] = ("じくすうと", "くえんてぃな")
    cyrillic: tuple[str, str] = ("Зыхвут", "Квентина")
    greek: tuple[str, str] = ("Ζυξβουτ", "Κουεντίνα")
    chinese: str = "昆蒂娜·齐瓦特"

    @property
    def patient_id(self) -> str:
        return f"MRN{self.mrn}"

    @property
    def pn(self) -> str:
        return f"{self.family.upper()}^{self.given.upper()}"

    @property
    def physician_pn(self) -> str:
        return f"{self.physician_family.upper()}^{self.physician_given.upper()}"

    @property
    def address(self) -> str:
        return f"{self.street}, {self.city}"

    def dates(self) -> dict[str, str]:
        d = self.birth_date
        return {"da": f"{d:%Y%m%d}", "us": f"{d:%m/%d/%Y}", "iso": f"{d:%Y-%m-%d}", "eu": f"{d:%d.%m.%Y}",
                "long": f"{_MONTHS[d.month - 1]} {d.day}, {d.year}",
                "vms": f"{d.day:02d}-{_MONTHS[d.month - 1][:3].upper()}-{d.year}"}

    def spellings(self) -> dict[str, str]:
        f, g = self.family, self.given
        return {"natural": f"{g} {f}", "comma": f"{f.upper()}, {g.upper()}", "initial": f"{g[0]}. {f}",
                "lower": f"{f.lower()} {g.lower()}", "pn": self.pn}


def adversarial_identity(seed: int = 7) -> AdversarialIdentity:
    """The fake patient of ``seed``: the name is fixed, the numbers and the birth date come from the seed."""
    r = rng(seed, "adversarial", "identity")
    mrn = str(int(r.integers(200000, 989999)))
    while len(set(mrn)) < 4:  # no 111111-like MRN, which would read as a pattern
        mrn = str(int(r.integers(200000, 989999)))
    birth = date(1941, 1, 1) + timedelta(days=int(r.integers(0, 365 * 30)))
    if birth.day <= 12:  # a day above 12: 03/14 and 14.03 cannot be confused
        birth = birth.replace(day=birth.day + 13)
    return AdversarialIdentity(
        family="Zyxwvut", given="Quentina", mrn=mrn, birth_date=birth,
        phone=f"207-555-01{int(r.integers(10, 100))}",
        street=f"{int(r.integers(1000, 9999))} Quillfeather Lane", city="Port Alden, ME 04011",
        email="quentina.zyxwvut@example.org",
        ssn=f"9{int(r.integers(10, 100))}-{int(r.integers(10, 100))}-{int(r.integers(1000, 10000))}",
        accession=f"ACC{int(r.integers(10**6, 10**7))}", insurance_id=f"INS{int(r.integers(10**7, 10**8))}",
        physician_family="Vexquorn", physician_given="Barnaby", institution="Quillmarsh Memorial Infirmary",
    )


def _planted_values(p: AdversarialIdentity) -> list[tuple[str, str]]:
    """(value, category) of every string a leak detector should look for."""
    s, d = p.spellings(), p.dates()
    phone_parts = p.phone.split("-")
    names = [p.family, p.given, s["natural"], f"{p.family} {p.given}", s["initial"], s["comma"],
             p.latin1_family, *p.japanese_ideographic, *p.japanese_phonetic, *p.cyrillic, *p.greek, p.chinese]
    return [
        *[(n, "name") for n in names],
        (p.patient_id, "id"), (p.mrn, "id"), (p.insurance_id, "id"),
        *[(d[k], "date") for k in ("da", "us", "iso", "eu", "long", "vms")],
        (p.phone, "phone"), (f"({phone_parts[0]}) {phone_parts[1]}-{phone_parts[2]}", "phone"),
        (p.street, "address"), (p.street.split(" ", 1)[1], "address"), (p.address, "address"),
        (p.email, "email"), (p.ssn, "ssn"), (p.accession, "accession"),
        (p.physician_family, "physician"), (f"{p.physician_given} {p.physician_family}", "physician"),
        (p.institution, "institution"), (p.institution.split()[0], "institution"),
    ]


def _fold(text: str) -> str:
    """Case, accents, punctuation and spacing folded, as a lenient search compares."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", text).split())


def _pattern(value: str) -> re.Pattern[str]:
    """What finds ``value`` in folded text: digits only with no digit beside them."""
    v = _fold(value)
    return re.compile(rf"(?<!\d){v}(?!\d)" if v.isdigit() else re.escape(v))


# --- recording what is planted ---------------------------------------------------------------------


class _Recorder:
    """Notes every string written, by file and place, and builds the answer key from them."""

    def __init__(self) -> None:
        self.pieces: list[tuple[str, str, str]] = []  # (file, where, text)
        self.keep: list[tuple[str, str]] = []  # (file, text)
        self.files: list[dict[str, Any]] = []
        self.file = ""

    def put(self, ds: Any, keyword: str, value: Any, where: str = "header") -> None:
        setattr(ds, keyword, value)
        self.note(value, where)

    def note(self, value: Any, where: str) -> None:
        assert where in WHERE, where
        for v in value if isinstance(value, list | tuple) else [value]:
            self.pieces.append((self.file, where, str(v)))

    def clinical(self, text: str) -> None:
        self.keep.append((self.file, text))

    def key(self, identity: AdversarialIdentity, survivors: list[str]) -> dict[str, Any]:
        folded = [(f, w, _fold(t)) for f, w, t in self.pieces]
        planted = []
        for value, category in _planted_values(identity):
            pattern = _pattern(value)
            at = sorted({(f, w) for f, w, t in folded if pattern.search(t)})
            if not at:
                raise RuntimeError(f"adversarial set bug: {value!r} was planted nowhere")
            exact = sorted({f for f, _, t in self.pieces if value.casefold() in t.casefold()})
            planted.append({"value": value, "category": category, "files": sorted({f for f, _ in at}),
                            "exact_files": exact, "where": sorted({w for _, w in at}),
                            "at": [{"file": f, "where": w} for f, w in at]})
        must = []
        for word in survivors:
            files = sorted({f for f, t in self.keep if _fold(word) in _fold(t)})
            if not files:
                raise RuntimeError(f"adversarial set bug: clinical {word!r} was written nowhere")
            must.append({"value": word, "files": files})
        d = identity.dates()
        return {
            "identity": {
                "name": {"family": identity.family, "given": identity.given, "pn": identity.pn,
                         "latin1_family": identity.latin1_family,
                         "japanese_ideographic": "^".join(identity.japanese_ideographic),
                         "japanese_phonetic": "^".join(identity.japanese_phonetic),
                         "cyrillic": "^".join(identity.cyrillic), "greek": "^".join(identity.greek),
                         "chinese": identity.chinese, "spellings": identity.spellings()},
                "id": {"patient_id": identity.patient_id, "mrn": identity.mrn,
                       "insurance_id": identity.insurance_id},
                "date": {"birth_date": d["da"], "spellings": d},
                "phone": identity.phone, "address": identity.address, "email": identity.email,
                "ssn": identity.ssn, "accession": identity.accession,
                "physician": {"family": identity.physician_family, "given": identity.physician_given,
                              "pn": identity.physician_pn},
                "institution": identity.institution, "sex": "F",
            },
            "planted": planted,
            "must_survive": must,
            "files": sorted(self.files, key=lambda f: f["path"]),
        }


# --- the generator ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    sop_class: str
    sop_instance: str
    series: str
    study: str


class _Set:
    """The set being written: the identity, the two studies (the second one's UID carries the MRN and
    the birth date), the CT instances the derived objects reference, and the recorder of what went where."""

    def __init__(self, out: Path, seed: int) -> None:
        self.out, self.seed = out, seed
        self.p = adversarial_identity(seed)
        self.rec = _Recorder()
        p = self.p
        self.study = uid(seed, "adversarial", "study", 1)
        # the second study's UID, and one CT instance's, carry the MRN and the birth date
        self.study_2 = f"{UID_ROOT}{p.mrn}.{p.birth_date:%Y%m%d}.2"
        self.frame_of_reference = uid(seed, "adversarial", "frame-of-reference")
        self.study_date = p.birth_date.replace(year=2023) if p.birth_date.month != 2 else date(2023, 3, 1)
        self.ct: list[_Ref] = []
        self.ct_headers: list[Any] = []
        self.count = 0

    # -- common modules

    def dataset(self, rel: str, sop_class: str, modality: str, series: str, number: int, *,
                charset: str | list[str] | None = None, study: str | None = None,
                sop_instance: str | None = None, syntax: str = EXPLICIT, name: str | None = None) -> Any:
        """A dataset with file meta, SOP Common, Patient, General Study, General Series and General
        Equipment, carrying the identity in standard attributes at every depth and in free text."""
        from pydicom.dataset import Dataset, FileMetaDataset

        rec, p, s, d = self.rec, self.p, self.p.spellings(), self.p.dates()
        rec.file = rel
        self.count += 1
        i = self.count
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = syntax
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        sop_instance = sop_instance or uid(self.seed, "adversarial", "sop", rel)
        ds.file_meta.MediaStorageSOPInstanceUID = sop_instance
        ds.file_meta.ImplementationClassUID = UID_ROOT + "7.1"
        ds.file_meta.ImplementationVersionName = "VOXLAKE_ADV"
        if charset:
            ds.SpecificCharacterSet = charset
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_instance
        when = self.study_date
        ds.InstanceCreationDate, ds.InstanceCreationTime = f"{when:%Y%m%d}", f"{101500 + i:06d}"
        # Patient
        rec.put(ds, "PatientName", name or p.pn)
        rec.put(ds, "PatientID", p.patient_id)
        rec.put(ds, "IssuerOfPatientID", p.institution.split()[0].upper())
        rec.put(ds, "PatientBirthDate", d["da"])
        ds.PatientSex = "F"
        rec.put(ds, "PatientAddress", p.address)
        rec.put(ds, "PatientTelephoneNumbers", p.phone)
        rec.put(ds, "PatientTelecomInformation", p.email)
        other = Dataset()
        rec.put(other, "PatientID", p.mrn)
        other.IssuerOfPatientID, other.TypeOfPatientID = "QMI", "TEXT"
        insurance = Dataset()
        rec.put(insurance, "PatientID", p.insurance_id)
        insurance.IssuerOfPatientID, insurance.TypeOfPatientID = "QUILL HEALTH PLAN", "TEXT"
        ds.OtherPatientIDsSequence = [other, insurance]
        texts = _free_texts(p, i)
        rec.put(ds, "PatientComments", texts["patient_comments"], "free-text")
        rec.put(ds, "AdditionalPatientHistory", texts["history"], "free-text")
        # General Study
        ds.StudyInstanceUID = study or self.study
        ds.StudyDate, ds.StudyTime = f"{when:%Y%m%d}", "101500"
        rec.put(ds, "ReferringPhysicianName", p.physician_pn)
        referring = Dataset()
        person = Dataset()
        person.CodeValue, person.CodingSchemeDesignator = "NPI" + p.mrn[::-1], "99LOCAL"
        rec.put(person, "CodeMeaning", f"{p.physician_given} {p.physician_family}", "code-meaning")
        referring.PersonIdentificationCodeSequence = [person]
        rec.put(referring, "InstitutionName", p.institution)
        ds.ReferringPhysicianIdentificationSequence = [referring]
        ds.StudyID = "1"
        rec.put(ds, "AccessionNumber", p.accession)
        rec.put(ds, "StudyDescription", texts["study"], "free-text")
        procedure = Dataset()
        procedure.CodeValue, procedure.CodingSchemeDesignator = "CTABD", "99LOCAL"
        rec.put(procedure, "CodeMeaning", f"CT ABDOMEN for {s['natural']}", "code-meaning")
        ds.ProcedureCodeSequence = [procedure]
        # General Series
        ds.Modality = modality
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = number
        ds.SeriesDate, ds.SeriesTime = ds.StudyDate, f"{102000 + number * 100:06d}"
        rec.put(ds, "SeriesDescription", texts["series"], "free-text")
        rec.put(ds, "ProtocolName", texts["protocol"], "free-text")
        rec.put(ds, "OperatorsName", p.physician_pn)
        rec.put(ds, "PerformedProcedureStepDescription", f"Abdomen for {s['comma']}", "free-text")
        if modality in ("CT", "MR"):
            ds.PatientPosition = "FFS"
        ds.RequestAttributesSequence = [self.request(i)]
        # General Equipment
        ds.Manufacturer = MANUFACTURER
        rec.put(ds, "InstitutionName", p.institution)
        rec.put(ds, "InstitutionAddress", f"1 Infirmary Row, {p.city}")
        ds.StationName, ds.ManufacturerModelName = "ADVSTATION1", "ADVERSARIAL"
        ds.DeviceSerialNumber, ds.SoftwareVersions = "SN-ADV-001", "1.0"
        return ds

    def request(self, i: int) -> Any:
        """A RequestAttributesSequence item: the MRN as a local protocol code, the name in its meaning,
        and in a protocol context item three sequences deep."""
        from pydicom.dataset import Dataset

        rec, p, s = self.rec, self.p, self.p.spellings()
        item = Dataset()
        rec.put(item, "AccessionNumber", p.accession)
        item.RequestedProcedureID = "RP" + p.accession[3:]
        item.ScheduledProcedureStepID = f"SPS{i:03d}"
        rec.put(item, "RequestedProcedureDescription", f"CT abdomen, {s['lower']}", "free-text")
        code = Dataset()
        rec.put(code, "CodeValue", p.patient_id, "code-meaning")
        code.CodingSchemeDesignator = "99LOCAL"
        rec.put(code, "CodeMeaning", f"Liver protocol for {s['natural']}", "code-meaning")
        context = Dataset()
        context.ValueType = "TEXT"
        context.ConceptNameCodeSequence = [_code("121106", "DCM", "Comment")]
        rec.put(context, "TextValue", f"Ordered for {s['comma']} born {p.dates()['us']}", "free-text")
        code.ProtocolContextSequence = [context]
        item.ScheduledProtocolCodeSequence = [code]
        return item

    def anatomy(self, ds: Any) -> None:
        ds.AnatomicRegionSequence = [_code(*LIVER)]
        self.rec.clinical(LIVER[0])
        self.rec.clinical(LIVER[2])

    def image_pixels(self, ds: Any, frames: Any, *, bits: int, signed: bool = False,
                     photometric: str = "MONOCHROME2") -> None:
        """Image Pixel module for ``frames`` (frames x rows x columns)."""
        import numpy as np

        n, rows, cols = frames.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated = 8 if bits <= 8 else 16
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
        dtype = {(8, False): np.uint8, (16, False): np.uint16, (16, True): np.int16}[ds.BitsAllocated, signed]
        data = np.ascontiguousarray(frames.astype(dtype)).tobytes()
        ds.PixelData = data + b"\0" * (len(data) % 2)
        ds["PixelData"].VR = "OB" if ds.BitsAllocated == 8 else "OW"
        if n > 1:
            ds.NumberOfFrames = n

    def burn(self, frame: Any, lines: list[str], *, value: int, where: str = "pixels", size: int = 16,
             corner: str = "tl") -> Any:
        """``lines`` rendered at ``value`` into a copy of ``frame``, stacked from a corner, and noted
        (``where``: pixels, overlay or icon)."""
        out = frame.copy()
        rows, cols = out.shape
        step = size + size // 3
        y = 4 if corner[0] == "t" else rows - 4 - len(lines) * step
        for line in lines:
            mask = _text_mask(line, size)[:step]
            h, w = mask.shape
            w = min(w, cols - 8)
            x = 4 if corner[1] == "l" else cols - 4 - w
            out[y:y + h, x:x + w][mask[:, :w]] = value
            y += step
            self.rec.note(line, where)
        return out

    def save(self, ds: Any, rel: str, *, modality: str, notes: str, burned_in: bool = False,
             tail: bytes = b"") -> None:
        """Write ``ds`` (and ``tail``, elements already encoded that follow its last one) at ``rel``, note
        its UIDs and describe it in the key."""
        from pydicom.multival import MultiValue

        noted = {t for f, _, t in self.rec.pieces if f == rel}
        for elem in [*ds.file_meta.iterall(), *ds.iterall()]:
            if elem.VR == "UI" and isinstance(elem.value, str):
                self.rec.pieces.append((rel, "uid", elem.value))
            elif elem.VR in _TEXT_VRS and elem.value is not None:
                # what a library copied in (highdicom's SEG takes the source's Patient and Study modules)
                values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
                self.rec.pieces.extend((rel, "header", str(v)) for v in values if str(v) not in noted)
        path = self.out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        if tail:
            with path.open("ab") as f:
                f.write(tail)
        charset = ds.get("SpecificCharacterSet")
        if charset is not None and not isinstance(charset, str):
            charset = list(charset)
        self.rec.files.append({
            "path": rel, "sop_class_uid": str(ds.SOPClassUID), "sop_instance_uid": str(ds.SOPInstanceUID),
            "modality": modality, "specific_character_set": charset, "burned_in": burned_in,
            "burned_in_annotation": ds.get("BurnedInAnnotation"), "transfer_syntax": str(ds.file_meta.TransferSyntaxUID),
            "notes": notes,
        })

    # -- images

    def ct_series(self) -> None:
        import numpy as np

        p, rec = self.p, self.rec
        series = uid(self.seed, "adversarial", "series", "ct")
        d = p.dates()
        for k in range(1, 21):
            rel = f"ct/ct_{k:03d}.dcm"
            special = {
                1: "burned-in name, MRN and DOB; BurnedInAnnotation NO (a lie)",
                2: "burned-in name, MRN and DOB; BurnedInAnnotation absent",
                3: "burned-in name, MRN and DOB; BurnedInAnnotation YES",
                4: "SOPInstanceUID carries the MRN and birth date; referenced by SEG, PR, SR, RTSTRUCT",
                5: "overlay plane 6000 with the name rendered, in OverlayDescription and OverlayLabel; "
                   "icon image with the name rendered",
                6: "private block with creator (LO, LT, SQ with PatientName), private elements without a "
                   "creator, an unknown even-group element stored as UN",
                7: "Implicit VR Little Endian; private element without creator and unknown element (read as UN)",
                8: "GB18030: the name in Chinese in the free text",
            }.get(k, "header and free-text PHI")
            sop = f"{UID_ROOT}{p.mrn}.{d['da']}.{4000 + k}" if k == 4 else None
            syntax = IMPLICIT if k == 7 else EXPLICIT
            ds = self.dataset(rel, CT_CLASS, "CT", series, 1, sop_instance=sop, syntax=syntax,
                              charset="GB18030" if k == 8 else None)
            self.anatomy(ds)
            ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = self.frame_of_reference, ""
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.InstanceNumber, ds.AcquisitionNumber = k, 1
            ds.ContentDate, ds.ContentTime = ds.StudyDate, f"{102100 + k:06d}"
            ds.AcquisitionDate, ds.AcquisitionTime = ds.StudyDate, f"{102100 + k:06d}"
            ds.PatientOrientation = ""
            ds.ImagePositionPatient = [-160.0, -160.0, -5.0 * k]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing, ds.SliceThickness, ds.SliceLocation = [1.25, 1.25], 5.0, -5.0 * k
            ds.KVP, ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 120, -1024, 1, "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
            if k == 8:
                rec.put(ds, "ImageComments", f"患者 {p.chinese}, 病历号 {p.mrn}", "free-text")
            else:
                rec.put(ds, "ImageComments", _free_texts(p, k)["image"], "free-text")
            frame = _body(self.seed, "ct", k, 256, 256, air=24, tissue=1060, noise=20).astype(np.int32)
            burned = k in (1, 2, 3)
            if burned:
                frame = self.burn(frame, [p.spellings()["comma"], f"DOB {d['us']}"], value=4095)
                frame = self.burn(frame, [p.patient_id], value=4095, corner="bl")
                if k != 2:
                    ds.BurnedInAnnotation = "NO" if k == 1 else "YES"
            elif k != 7:
                ds.BurnedInAnnotation = "NO"
            if k == 5:
                self.overlay(ds, 256, 256, f"{p.family.upper()} {p.mrn}")
                self.icon(ds, p.family.upper())
            if k == 6:
                self.private(ds)
            if k in (6, 7):
                self.orphans(ds)
            self.image_pixels(ds, frame[None], bits=12)
            self.save(ds, rel, modality="CT", notes=special, burned_in=burned)
            self.ct.append(_Ref(CT_CLASS, str(ds.SOPInstanceUID), series, self.study))
            self.ct_headers.append(ds)

    def mr_series(self) -> None:
        import numpy as np

        p, rec = self.p, self.rec
        d = p.dates()
        series = f"{UID_ROOT}{p.mrn}.{d['da']}.2.1"  # the MR series UID carries the MRN and birth date too
        ja = f"{p.family}^{p.given}={'^'.join(p.japanese_ideographic)}={'^'.join(p.japanese_phonetic)}"
        ja2 = f"{p.family}^{p.given}={'^'.join(p.japanese_ideographic)}"
        variants = [
            ("ISO_IR 100", f"{p.latin1_family}^{p.given}", f"Patientin {p.given} {p.latin1_family}, geb. {d['eu']}",
             "Latin-1: the name with an accent"),
            (["", "ISO 2022 IR 87"], ja, f"{p.japanese_ideographic[0]}様 腹部MRI 生年月日 {d['iso']}",
             "ISO 2022 IR 87: PN with ideographic and phonetic groups (longer than dciodvfy's 64 bytes)"),
            ("ISO_IR 192", ja2, f"{p.given} {p.family} / {'・'.join(p.japanese_ideographic)} / {p.cyrillic[0]}",
             "UTF-8; overlay plane with the name; private block with creator"),
            ("ISO_IR 144", f"{p.cyrillic[0]}^{p.cyrillic[1]}", f"Пациентка {p.cyrillic[1]} {p.cyrillic[0]}, {d['eu']}",
             "Cyrillic (ISO_IR 144): the name transliterated"),
            (None, p.pn, f"MR liver {p.spellings()['lower']} {p.mrn}", "header and free-text PHI"),
            (None, p.pn, f"Q. {p.family} MR follow-up {d['long']}", "header and free-text PHI"),
        ]
        for k, (charset, name, comment, notes) in enumerate(variants, start=1):
            rel = f"mr/mr_{k:03d}.dcm"
            ds = self.dataset(rel, MR_CLASS, "MR", series, 2, charset=charset, study=self.study_2, name=name)
            self.anatomy(ds)
            ds.FrameOfReferenceUID = uid(self.seed, "adversarial", "frame-of-reference", "mr")
            ds.PositionReferenceIndicator = ""
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
            ds.InstanceNumber, ds.AcquisitionNumber = k, 1
            ds.ContentDate, ds.ContentTime = ds.StudyDate, f"{103000 + k:06d}"
            ds.PatientOrientation = ""
            ds.ImagePositionPatient = [-120.0, -120.0, -6.0 * k]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 6.0
            ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "SE", "NONE", ""
            ds.MRAcquisitionType, ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength = "2D", 500.0, 15.0, 1
            ds.MagneticFieldStrength, ds.ImagedNucleus = 1.5, "1H"
            ds.BurnedInAnnotation = "NO"
            rec.put(ds, "ImageComments", comment, "free-text")
            frame = _body(self.seed, "mr", k, 256, 256, air=5, tissue=900, noise=40)
            if k == 3:
                self.overlay(ds, 256, 256, f"{p.given.upper()} {p.family.upper()}")
                self.private(ds)
            self.image_pixels(ds, frame[None].astype(np.int32), bits=12)
            self.save(ds, rel, modality="MR", notes=notes)

    def overlay(self, ds: Any, rows: int, cols: int, text: str) -> None:
        """Overlay plane 6000: the text rendered in its bitmap, and the name in its description and label."""
        import numpy as np
        from pydicom.pixels import pack_bits

        p = self.p
        plane = np.zeros((rows, cols), np.uint8)
        plane = self.burn(plane, [text], value=1, where="overlay", corner="bl")
        ds.add_new(0x60000010, "US", rows)
        ds.add_new(0x60000011, "US", cols)
        ds.add_new(0x60000022, "LO", f"Annotation for {p.spellings()['natural']}")
        ds.add_new(0x60000040, "CS", "G")
        ds.add_new(0x60000050, "SS", [1, 1])
        ds.add_new(0x60000100, "US", 1)
        ds.add_new(0x60000102, "US", 0)
        ds.add_new(0x60001500, "LO", f"{p.spellings()['comma']} {p.patient_id}")
        packed = pack_bits(plane, pad=True)
        ds.add_new(0x60003000, "OW", packed)
        self.rec.note(ds[0x60000022].value, "header")
        self.rec.note(ds[0x60001500].value, "header")

    def icon(self, ds: Any, text: str) -> None:
        """An IconImageSequence item whose pixels show ``text``."""
        import numpy as np
        from pydicom.dataset import Dataset

        icon = Dataset()
        pixels = np.full((48, 128), 8, np.uint8)
        pixels = self.burn(pixels, [text], value=255, where="icon", size=16)
        icon.SamplesPerPixel, icon.PhotometricInterpretation = 1, "MONOCHROME2"
        icon.Rows, icon.Columns = pixels.shape
        icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
        icon.PixelData = pixels.tobytes()
        icon["PixelData"].VR = "OB"
        ds.IconImageSequence = [icon]

    def private(self, ds: Any) -> None:
        """A RIS bridge's private block: name and MRN in LO, a note in LT, PatientName in a private SQ."""
        from pydicom.dataset import Dataset

        p, rec = self.p, self.rec
        block = ds.private_block(0x0033, "QUILLMARSH RIS BRIDGE 2.1", create=True)
        block.add_new(0x01, "LO", p.spellings()["comma"])
        block.add_new(0x02, "LO", p.patient_id)
        block.add_new(0x03, "LT", f"Pt {p.spellings()['natural']} SSN {p.ssn}, DOB {p.dates()['iso']}, "
                                  f"tel {p.phone}, {p.email}")
        inner = Dataset()
        inner.PatientName = p.pn
        inner.PatientBirthDate = p.dates()["da"]
        inner.PatientAddress = p.address
        block.add_new(0x04, "SQ", [inner])
        for v in (p.spellings()["comma"], p.patient_id, block[0x03].value, p.pn, p.dates()["da"], p.address):
            rec.note(v, "private")

    def orphans(self, ds: Any) -> None:
        """Private elements without their creator, and an element of an unknown even group stored as UN."""
        p, rec = self.p, self.rec
        ds.add_new(0x00291010, "LO", f"{p.spellings()['lower']} {p.mrn}")
        ds.add_new(0x00291011, "LT", f"SSN {p.ssn} acc {p.accession}")
        rec.note(ds[0x00291010].value, "private")
        rec.note(ds[0x00291011].value, "private")
        text = f"{p.pn} {p.patient_id} {p.dates()['da']} ".encode("ascii")
        ds.add_new(0x00980010, "UN", text + b" " * (len(text) % 2))
        rec.note(text.decode(), "un")

    def ultrasound(self) -> None:
        import numpy as np

        p, d = self.p, self.p.dates()
        series = uid(self.seed, "adversarial", "series", "us")
        # multi-frame: the name on frames 0, 2 and 4 of 6
        rel = "us/us_multiframe.dcm"
        ds = self.dataset(rel, US_MF_CLASS, "US", series, 3)
        self._us_common(ds, 1)
        frames = np.stack([_body(self.seed, "us", f, 240, 320, air=0, tissue=90, noise=35) for f in range(6)])
        for f in (0, 2, 4):
            frames[f] = self.burn(frames[f], [p.spellings()["comma"], f"ID {p.mrn}"], value=255)
            frames[f] = self.burn(frames[f], [d["vms"]], value=255, corner="br")
        ds.FrameTime, ds.FrameIncrementPointer = 50.0, 0x00181063
        ds.BurnedInAnnotation = "YES"
        self.image_pixels(ds, frames.clip(0, 255), bits=8)
        self.save(ds, rel, modality="US", burned_in=True,
                  notes="6 frames, burned-in name, MRN and DOB on frames 0, 2, 4")
        rel = "us/us_001.dcm"
        ds = self.dataset(rel, US_CLASS, "US", series, 3)
        self._us_common(ds, 2)
        frame = self.burn(_body(self.seed, "us", 9, 240, 320, air=0, tissue=90, noise=35).clip(0, 255),
                          [p.spellings()["natural"], p.patient_id], value=255, corner="tl")
        ds.BurnedInAnnotation = "YES"
        self.image_pixels(ds, frame[None], bits=8)
        self.save(ds, rel, modality="US", burned_in=True, notes="single frame, burned-in name and MRN")

    def _us_common(self, ds: Any, k: int) -> None:
        self.anatomy(ds)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
        ds.InstanceNumber = k
        ds.ContentDate, ds.ContentTime = ds.StudyDate, f"{104000 + k:06d}"
        ds.PatientOrientation = ""
        ds.LossyImageCompression = "00"

    def secondary_capture(self) -> None:
        import numpy as np

        p, d, rec = self.p, self.p.dates(), self.rec
        series = uid(self.seed, "adversarial", "series", "sc")
        rel = "sc/sc_001.dcm"
        ds = self.dataset(rel, SC_CLASS, "OT", series, 4)
        ds.ConversionType, ds.InstanceNumber, ds.PatientOrientation, ds.Laterality = "WSD", 1, "", ""
        ds.ContentDate, ds.ContentTime = ds.StudyDate, "105000"
        screen = np.full((256, 512), 16, np.int32)
        screen = self.burn(screen, [f"Patient: {p.spellings()['comma']}", f"MRN: {p.mrn}", f"DOB: {d['us']}",
                                    f"Tel: {p.phone}", f"Ref: Dr. {p.physician_family}"], value=255, size=24)
        ds.BurnedInAnnotation = "YES"
        self.image_pixels(ds, screen[None], bits=8)
        self.save(ds, rel, modality="OT", burned_in=True, notes="a RIS screenshot: the identity in pixels")
        rel = "sc/sc_002_gb18030.dcm"
        ds = self.dataset(rel, SC_CLASS, "OT", series, 4, charset="GB18030")
        ds.ConversionType, ds.InstanceNumber, ds.PatientOrientation, ds.Laterality = "WSD", 2, "", ""
        ds.ContentDate, ds.ContentTime = ds.StudyDate, "105001"
        rec.put(ds, "ImageComments", f"患者姓名 {p.chinese} 出生日期 {d['iso']} 电话 {p.phone}", "free-text")
        rec.put(ds, "StudyComments", f"{p.chinese} ({p.patient_id})", "free-text")
        ds.BurnedInAnnotation = "NO"
        self.image_pixels(ds, np.full((1, 64, 64), 40, np.int32), bits=8)
        self.save(ds, rel, modality="OT", notes="GB18030: the name in Chinese in free text")

    def radiography(self) -> None:
        p, d, rec = self.p, self.p.dates(), self.rec
        rel = "cr/cr_001_greek.dcm"
        greek = f"{p.greek[0]}^{p.greek[1]}"
        ds = self.dataset(rel, CR_CLASS, "CR", uid(self.seed, "adversarial", "series", "cr"), 5,
                          charset="ISO_IR 126", study=self.study_2, name=greek)
        ds.BodyPartExamined, ds.ViewPosition, ds.InstanceNumber, ds.PatientOrientation = "CHEST", "PA", 1, ["L", "F"]
        ds.ContentDate, ds.ContentTime = ds.StudyDate, "100600"
        rec.put(ds, "ImageComments", f"Ασθενής {p.greek[1]} {p.greek[0]}, {d['eu']}", "free-text")
        ds.BurnedInAnnotation = "NO"
        self.image_pixels(ds, _body(self.seed, "cr", 1, 256, 256, air=100, tissue=2000, noise=60)[None], bits=12)
        self.save(ds, rel, modality="CR", notes="Greek (ISO_IR 126): the name transliterated")
        rel = "dx/dx_001_cyrillic.dcm"
        cyr = f"{p.cyrillic[0]}^{p.cyrillic[1]}"
        ds = self.dataset(rel, DX_CLASS, "DX", uid(self.seed, "adversarial", "series", "dx"), 6,
                          charset="ISO_IR 144", study=self.study_2, name=cyr)
        ds.PresentationIntentType, ds.InstanceNumber, ds.PatientOrientation = "FOR PRESENTATION", 1, ["L", "F"]
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.ContentDate, ds.ContentTime = ds.StudyDate, "100610"
        ds.AcquisitionContextSequence, ds.ImageLaterality, ds.BodyPartExamined = [], "U", "CHEST"
        ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
        ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape, ds.LossyImageCompression = "IDENTITY", "00"
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
        ds.DetectorType, ds.ImagerPixelSpacing, ds.PositionerType = "DIRECT", [0.5, 0.5], "NONE"
        ds.ViewPosition = "PA"
        rec.put(ds, "ImageComments", f"Пациентка {p.cyrillic[1]} {p.cyrillic[0]}, {p.phone}", "free-text")
        frame = self.burn(_body(self.seed, "dx", 1, 256, 256, air=100, tissue=2000, noise=60),
                          [p.spellings()["comma"], d["us"]], value=4095, corner="br")
        ds.BurnedInAnnotation = "YES"
        self.image_pixels(ds, frame[None], bits=12)
        self.save(ds, rel, modality="DX", burned_in=True,
                  notes="Cyrillic (ISO_IR 144); burned-in name and DOB at the bottom right")

    # -- structured and derived objects

    def structured_reports(self) -> None:
        p, s = self.p, self.p.spellings()
        series = uid(self.seed, "adversarial", "series", "sr")
        ja = f"{p.family}^{p.given}={'^'.join(p.japanese_ideographic)}"
        for k, (sop_class, rel, charset, name, notes) in enumerate([
            (BASIC_SR_CLASS, "sr/basic_text_ja.dcm", ["ISO 2022 IR 6", "ISO 2022 IR 87"], ja,
             "Basic Text SR, ISO 2022 IR 87: Japanese text items"),
            (ENHANCED_SR_CLASS, "sr/enhanced.dcm", None, None, "Enhanced SR with a NUM item"),
            (COMPREHENSIVE_SR_CLASS, "sr/comprehensive_utf8.dcm", "ISO_IR 192", ja,
             "Comprehensive SR, UTF-8: the name in four scripts"),
        ], start=1):
            ds = self.dataset(rel, sop_class, "SR", series, 7, charset=charset, name=name)
            self._sr_document(ds, k)
            extra: list[Any] = []
            if k == 1:
                extra.append(self._sr_text("CONTAINS", f"{p.japanese_ideographic[0]}様の所見 {p.japanese_phonetic[0]} "
                                                       f"{p.japanese_phonetic[1]} 患者番号 {p.mrn}"))
            if k == 2:
                extra.append(self._sr_num())
            if k == 3:
                extra.append(self._sr_text("CONTAINS", f"{p.cyrillic[1]} {p.cyrillic[0]} / {p.greek[1]} {p.greek[0]}"
                                                       f" / {p.chinese} / {s['natural']}"))
            ds.ContentSequence = [*self._sr_content(), *extra]
            self.save(ds, rel, modality="SR", notes=notes)
        self.nested()

    def _sr_document(self, ds: Any, k: int) -> None:
        from pydicom.dataset import Dataset

        p, rec = self.p, self.rec
        ds.InstanceNumber, ds.ContentDate, ds.ContentTime = k, ds.StudyDate, f"{110000 + k:06d}"
        ds.ValueType = "CONTAINER"
        ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
        ds.ContinuityOfContent, ds.CompletionFlag, ds.VerificationFlag = "SEPARATE", "COMPLETE", "VERIFIED"
        observer = Dataset()
        rec.put(observer, "VerifyingObserverName", p.physician_pn, "sr")
        rec.put(observer, "VerifyingOrganization", p.institution, "sr")
        observer.VerificationDateTime = f"{ds.StudyDate}120000"
        observer.VerifyingObserverIdentificationCodeSequence = []
        ds.VerifyingObserverSequence = [observer]
        ds.ReferencedPerformedProcedureStepSequence, ds.PerformedProcedureCodeSequence = [], []
        ds.CurrentRequestedProcedureEvidenceSequence = [self._evidence(self.ct[:4])]

    def _evidence(self, refs: list[_Ref]) -> Any:
        from pydicom.dataset import Dataset

        study = Dataset()
        study.StudyInstanceUID = refs[0].study
        series = Dataset()
        series.SeriesInstanceUID = refs[0].series
        series.ReferencedSOPSequence = [_sop_ref(r) for r in refs]
        study.ReferencedSeriesSequence = [series]
        return study

    def _sr_item(self, relationship: str, value_type: str, concept: Any) -> Any:
        from pydicom.dataset import Dataset

        item = Dataset()
        item.RelationshipType, item.ValueType = relationship, value_type
        item.ConceptNameCodeSequence = [concept]
        return item

    def _sr_text(self, relationship: str, text: str, concept: Any = None) -> Any:
        item = self._sr_item(relationship, "TEXT", concept or _code("121071", "DCM", "Finding"))
        self.rec.put(item, "TextValue", text, "sr")
        return item

    def _sr_container(self, relationship: str, concept: Any, children: list[Any]) -> Any:
        item = self._sr_item(relationship, "CONTAINER", concept)
        item.ContinuityOfContent = "SEPARATE"
        item.ContentSequence = children
        return item

    def _sr_num(self) -> Any:
        from pydicom.dataset import Dataset

        item = self._sr_item("CONTAINS", "NUM", _code("410668003", "SCT", "Length"))
        value = Dataset()
        value.NumericValue = "23"
        value.MeasurementUnitsCodeSequence = [_code("mm", "UCUM", "millimeter")]
        item.MeasuredValueSequence = [value]
        return item

    def _sr_content(self) -> list[Any]:
        from pydicom.dataset import Dataset

        p, d, s, rec = self.p, self.p.dates(), self.p.spellings(), self.rec
        subject = self._sr_item("HAS OBS CONTEXT", "PNAME", _code("121029", "DCM", "Subject Name"))
        rec.put(subject, "PersonName", p.pn, "sr")
        subject_id = self._sr_text("HAS OBS CONTEXT", p.patient_id, _code("121030", "DCM", "Subject ID"))
        birth = self._sr_item("HAS OBS CONTEXT", "DATE", _code("121031", "DCM", "Subject Birth Date"))
        rec.put(birth, "Date", d["da"], "sr")
        observer = self._sr_item("HAS OBS CONTEXT", "PNAME", _code("121008", "DCM", "Person Observer Name"))
        rec.put(observer, "PersonName", p.physician_pn, "sr")
        liver = self._sr_item("CONTAINS", "CODE", _code("121071", "DCM", "Finding"))
        liver.ConceptCodeSequence = [_code(*LIVER)]
        rec.clinical(LIVER[0])
        rec.clinical(LIVER[2])
        local = self._sr_item("CONTAINS", "CODE", _code("121071", "DCM", "Finding"))
        meaning = Dataset()
        rec.put(meaning, "CodeValue", p.patient_id, "sr")
        meaning.CodingSchemeDesignator = "99LOCAL"
        rec.put(meaning, "CodeMeaning", f"Follow-up for {s['natural']}", "code-meaning")
        rec.note(meaning.CodeMeaning, "sr")
        local.ConceptCodeSequence = [meaning]
        image = self._sr_item("CONTAINS", "IMAGE", _code("121080", "DCM", "Best illustration of finding"))
        image.ReferencedSOPSequence = [_sop_ref(self.ct[3])]
        study_uid = self._sr_item("CONTAINS", "UIDREF", _code("110180", "DCM", "Study Instance UID"))
        study_uid.UID = self.study_2
        findings = self._sr_container("CONTAINS", _code("121070", "DCM", "Findings"), [
            self._sr_text("CONTAINS", f"{s['natural']} (MRN {p.mrn}, DOB {d['us']}): 23 mm lesion of the liver."),
            liver,
            self._sr_container("CONTAINS", _code("121060", "DCM", "History"), [
                self._sr_text("CONTAINS", f"Lives at {p.address}; call {p.phone}; {p.email}."),
                self._sr_container("CONTAINS", _code("121064", "DCM", "Current Procedure Descriptions"), [
                    self._sr_text("CONTAINS", f"{s['comma']} born {d['long']}, SSN {p.ssn}, acc {p.accession}."),
                ]),
            ]),
            local,
            image,
        ])
        impression = self._sr_container("CONTAINS", _code("121072", "DCM", "Impressions"), [
            self._sr_text("CONTAINS", f"Discussed with {p.physician_given} {p.physician_family} and "
                                      f"{s['initial']} on {d['eu']}."),
        ])
        return [subject, subject_id, birth, observer, findings, impression, study_uid]

    def nested(self) -> None:
        """A Comprehensive SR whose content tree is :data:`NESTING_DEPTH` containers deep, the name at the
        bottom. pydicom's writer takes quadratic time on such a tree (it walks the subtree below every
        sequence), so the tree is written here, in undefined-length items, after what pydicom writes."""
        import struct

        from pydicom.dataset import Dataset

        p, s = self.p, self.p.spellings()
        rel = "sr/nested_1000.dcm"
        ds = self.dataset(rel, COMPREHENSIVE_SR_CLASS, "SR", uid(self.seed, "adversarial", "series", "sr-nested"), 8)
        self._sr_document(ds, 9)
        if any(elem.tag > 0x0040A730 for elem in ds):
            raise RuntimeError("adversarial set bug: ContentSequence must be the last element")
        bottom = self._sr_text("CONTAINS", f"{s['natural']} {p.patient_id} {p.dates()['us']} at depth {NESTING_DEPTH}")
        level = Dataset()
        level.RelationshipType, level.ValueType, level.ContinuityOfContent = "CONTAINS", "CONTAINER", "SEPARATE"
        sequence = struct.pack("<HH2sHI", 0x0040, 0xA730, b"SQ", 0, 0xFFFFFFFF)
        item, item_end = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF), struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
        sequence_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        tree = sequence + item + _dataset_bytes(bottom) + item_end + sequence_end
        prefix = sequence + item + _dataset_bytes(level)
        for _ in range(NESTING_DEPTH - 1):
            tree = prefix + tree + item_end + sequence_end
        self.save(ds, rel, modality="SR", notes=f"ContentSequence nested {NESTING_DEPTH} levels deep", tail=tree)

    def presentation_state(self) -> None:
        from pydicom.dataset import Dataset

        p, s, rec = self.p, self.p.spellings(), self.rec
        rel = "pr/gsps.dcm"
        ds = self.dataset(rel, GSPS_CLASS, "PR", uid(self.seed, "adversarial", "series", "pr"), 9)
        ds.InstanceNumber, ds.Laterality = 1, ""
        rec.put(ds, "ContentLabel", f"{p.family.upper()}_{p.mrn}", "pr")
        rec.put(ds, "ContentDescription", f"Key images for {s['natural']}, {p.patient_id}", "pr")
        rec.put(ds, "ContentCreatorName", p.physician_pn, "pr")
        ds.PresentationCreationDate, ds.PresentationCreationTime = ds.StudyDate, "113000"
        refs = [self.ct[0], self.ct[3]]
        series = Dataset()
        series.SeriesInstanceUID = refs[0].series
        series.ReferencedImageSequence = [_sop_ref(r) for r in refs]
        ds.ReferencedSeriesSequence = [series]
        area = Dataset()
        area.DisplayedAreaTopLeftHandCorner, area.DisplayedAreaBottomRightHandCorner = [1, 1], [256, 256]
        area.PresentationSizeMode, area.PresentationPixelAspectRatio = "SCALE TO FIT", [1, 1]
        ds.DisplayedAreaSelectionSequence = [area]
        layer = Dataset()
        layer.GraphicLayer, layer.GraphicLayerOrder = "NOTES", 1
        rec.put(layer, "GraphicLayerDescription", f"Notes on {s['lower']}", "pr")
        ds.GraphicLayerSequence = [layer]
        text = Dataset()
        rec.put(text, "UnformattedTextValue", f"{s['natural']} {p.patient_id} DOB {p.dates()['iso']}", "pr")
        text.AnchorPointAnnotationUnits, text.AnchorPoint, text.AnchorPointVisibility = "PIXEL", [20.0, 20.0], "N"
        annotation = Dataset()
        annotation.ReferencedImageSequence = [_sop_ref(r) for r in refs]
        annotation.GraphicLayer, annotation.TextObjectSequence = "NOTES", [text]
        ds.GraphicAnnotationSequence = [annotation]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = 40, 400
        ds.SoftcopyVOILUTSequence = [voi]
        ds.ImageRotation, ds.ImageHorizontalFlip = 0, "N"
        ds.PresentationLUTShape = "IDENTITY"
        self.save(ds, rel, modality="PR", notes="GSPS: the name in content label and description, graphic layer, "
                                                  "text object; references CT 1 and 4")

    def segmentation(self) -> None:
        import highdicom as hd
        import numpy as np
        from highdicom.sr import CodedConcept

        p, s, rec = self.p, self.p.spellings(), self.rec
        rel = "seg/seg.dcm"
        rec.file = rel
        sources = [h for h in self.ct_headers if h.file_meta.TransferSyntaxUID == EXPLICIT][:6]
        labels = np.zeros((len(sources), 256, 256), np.uint8)
        yy, xx = np.mgrid[:256, :256]
        for i in range(len(sources)):
            labels[i][((yy - 110) / 40) ** 2 + ((xx - 90) / 50) ** 2 < 1] = 1
            labels[i][((yy - 150) / 8) ** 2 + ((xx - 170) / 8) ** 2 < 1] = 2
        algorithm = hd.AlgorithmIdentificationSequence(name="ADVERSARIAL", version="1.0",
                                                       family=CodedConcept("123109", "DCM", "Manual Processing"))
        tissue = CodedConcept("85756007", "SCT", "Tissue")
        liver = hd.seg.SegmentDescription(
            segment_number=1, segment_label=LIVER[2], segmented_property_category=tissue,
            segmented_property_type=CodedConcept(*LIVER), algorithm_type="SEMIAUTOMATIC",
            algorithm_identification=algorithm, tracking_uid=uid(self.seed, "adversarial", "segment", 1),
            tracking_id="liver")
        lesion = hd.seg.SegmentDescription(
            segment_number=2, segment_label=f"{s['natural']} lesion",
            segmented_property_category=CodedConcept("49755003", "SCT", "Morphologically Altered Structure"),
            segmented_property_type=CodedConcept("52988006", "SCT", "Lesion"), algorithm_type="MANUAL")
        lesion.SegmentDescription = f"Lesion of {s['comma']} {p.patient_id}"
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=labels, segmentation_type="BINARY",
            segment_descriptions=[liver, lesion], series_instance_uid=uid(self.seed, "adversarial", "series", "seg"),
            series_number=10, sop_instance_uid=uid(self.seed, "adversarial", "sop", rel), instance_number=1,
            manufacturer=MANUFACTURER, manufacturer_model_name="ADVERSARIAL", software_versions="1.0",
            device_serial_number="SN-ADV-001", content_label="LIVER", content_description=f"Liver for {s['lower']}",
            content_creator_name=p.physician_pn, series_description=f"SEG {p.family.upper()}",
            content_date=sources[0].ContentDate, content_time=sources[0].ContentTime,
            transfer_syntax_uid=EXPLICIT)
        seg.InstanceCreationDate, seg.InstanceCreationTime = sources[0].ContentDate, sources[0].ContentTime
        for item in seg.get("ContributingEquipmentSequence", []):
            if "ContributionDateTime" in item:
                item.ContributionDateTime = sources[0].ContentDate + sources[0].ContentTime
        for i, item in enumerate(seg.get("DimensionOrganizationSequence", [])):
            old, new = item.DimensionOrganizationUID, uid(self.seed, "adversarial", "dimension-organization", i)
            for elem in seg.iterall():
                if elem.VR == "UI" and elem.value == old:
                    elem.value = new
        seg.SpecificCharacterSet = "ISO_IR 192"
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "ReferringPhysicianName", "AccessionNumber"):
            rec.note(seg.get(keyword), "header")
        rec.put(seg, "PatientName", f"{p.pn}={'^'.join(p.japanese_ideographic)}")
        rec.put(seg, "PatientAddress", p.address)
        rec.put(seg, "InstitutionName", p.institution)
        for v in (lesion.SegmentLabel, lesion.SegmentDescription, seg.ContentDescription, seg.SeriesDescription,
                  seg.ContentCreatorName):
            rec.note(v, "seg")
        rec.clinical(LIVER[2])
        rec.clinical(LIVER[0])
        self.save(seg, rel, modality="SEG", notes="SEG over CT 1-6: segment 'Liver' (clean) and one named after "
                                                  "the patient; UTF-8")

    def rtstruct(self) -> None:
        from pydicom.dataset import Dataset

        p, s, rec = self.p, self.p.spellings(), self.rec
        rel = "rt/rtstruct.dcm"
        ds = self.dataset(rel, RTSTRUCT_CLASS, "RTSTRUCT", uid(self.seed, "adversarial", "series", "rt"), 11)
        ds.InstanceNumber = 1
        rec.put(ds, "StructureSetLabel", p.family.upper(), "rt")
        rec.put(ds, "StructureSetName", f"Plan for {s['natural']}", "rt")
        rec.put(ds, "StructureSetDescription", f"Contours of {s['comma']} {p.patient_id} DOB {p.dates()['us']}", "rt")
        ds.StructureSetDate, ds.StructureSetTime = ds.StudyDate, "114000"
        ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = self.frame_of_reference, ""
        ct = self.ct[:4]
        contour_images = [_sop_ref(r) for r in ct]
        rt_series = Dataset()
        rt_series.SeriesInstanceUID, rt_series.ContourImageSequence = ct[0].series, contour_images
        rt_study = Dataset()
        rt_study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
        rt_study.ReferencedSOPInstanceUID = ct[0].study
        rt_study.RTReferencedSeriesSequence = [rt_series]
        frame = Dataset()
        frame.FrameOfReferenceUID, frame.RTReferencedStudySequence = self.frame_of_reference, [rt_study]
        ds.ReferencedFrameOfReferenceSequence = [frame]
        rois, contours, observations = [], [], []
        for number, (name, colour, centre) in enumerate([
            ("Heart", [255, 0, 0], (-20.0, -40.0)), ("Lung_R", [0, 0, 255], (-80.0, -60.0)),
            (f"{p.family} {p.given} GTV", [0, 255, 0], (40.0, 10.0)),
        ], start=1):
            roi = Dataset()
            roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, self.frame_of_reference
            roi.ROIName, roi.ROIGenerationAlgorithm = name, "MANUAL"
            rois.append(roi)
            if number == 3:
                rec.note(name, "rt")
            else:
                rec.clinical(name)
            contour = Dataset()
            contour.ContourImageSequence = [_sop_ref(ct[3])]
            contour.ContourGeometricType, contour.NumberOfContourPoints = "CLOSED_PLANAR", 4
            cx, cy = centre
            z = -20.0
            contour.ContourData = [cx - 10, cy - 10, z, cx + 10, cy - 10, z, cx + 10, cy + 10, z, cx - 10, cy + 10, z]
            roi_contour = Dataset()
            roi_contour.ReferencedROINumber, roi_contour.ROIDisplayColor = number, colour
            roi_contour.ContourSequence = [contour]
            contours.append(roi_contour)
            obs = Dataset()
            obs.ObservationNumber, obs.ReferencedROINumber = number, number
            obs.RTROIInterpretedType, obs.ROIInterpreter = "ORGAN" if number < 3 else "GTV", ""
            observations.append(obs)
        ds.StructureSetROISequence, ds.ROIContourSequence = rois, contours
        ds.RTROIObservationsSequence = observations
        self.save(ds, rel, modality="RTSTRUCT", notes="ROIs Heart, Lung_R (clean) and one named after the patient; "
                                                       "contours on CT 1-4")

    def pdf(self) -> None:
        p, s, d, rec = self.p, self.p.spellings(), self.p.dates(), self.rec
        rel = "doc/report_pdf.dcm"
        ds = self.dataset(rel, PDF_CLASS, "DOC", uid(self.seed, "adversarial", "series", "doc"), 12)
        ds.InstanceNumber, ds.ContentDate, ds.ContentTime = 1, ds.StudyDate, "115000"
        ds.AcquisitionDateTime, ds.BurnedInAnnotation, ds.ConversionType = "", "YES", "WSD"
        rec.put(ds, "DocumentTitle", f"Radiology report {s['natural']}", "header")
        ds.ConceptNameCodeSequence = [_code("18748-4", "LN", "Diagnostic Imaging Report")]
        title = f"Report for {s['natural']} {p.patient_id}"
        page1 = [f"Patient: {s['natural']}", f"MRN: {p.mrn}", f"DOB: {d['us']}", f"Address: {p.address}",
                 f"Referring: Dr. {p.physician_given} {p.physician_family}", "Findings: 23 mm liver lesion."]
        page2 = [f"SSN {p.ssn}", f"Email {p.email}", f"Phone {p.phone}", f"Accession {p.accession}"]
        pdf = _pdf(title, f"{p.physician_given} {p.physician_family}", page1, page2)
        for line in [title, *page1, *page2]:
            rec.note(line, "pdf")
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.EncapsulatedDocumentLength = len(pdf)
        ds.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
        self.save(ds, rel, modality="DOC", notes="PDF: page 1 plain text, page 2 FlateDecode, /Title and /Author")


def _free_texts(p: AdversarialIdentity, i: int) -> dict[str, str]:
    """Free-text values in rotating spellings, so every spelling is in several files."""
    s, d = p.spellings(), p.dates()
    names = [s["natural"], s["comma"], s["initial"], s["lower"]]
    dates = [d["us"], d["iso"], d["eu"], d["long"]]
    name, other, when = names[i % 4], names[(i + 1) % 4], dates[i % 4]
    return {
        "study": f"CT ABDOMEN {name}",
        "series": [f"Ax 5mm {p.mrn}", f"Axial {other}", f"Liver {p.patient_id}", f"Portal {when}"][i % 4],
        "protocol": f"ABD LIVER {other} {p.mrn}",
        "patient_comments": f"Call {p.phone} before the scan. Lives at {p.street}, {p.city}.",
        "history": f"Hx per {name} (MRN {p.mrn}), DOB {when}; email {p.email}; SSN {p.ssn}.",
        "image": f"Pt {other}, DOB {dates[(i + 1) % 4]}, acc {p.accession}",
    }


def _dataset_bytes(ds: Any) -> bytes:
    """``ds`` encoded as Explicit VR Little Endian, without a preamble or file meta."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return bytes(fp.getvalue())


def _code(value: str, scheme: str, meaning: str) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def _sop_ref(ref: _Ref) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ref.sop_class, ref.sop_instance
    return item


def _body(seed: int, what: str, k: int, rows: int, cols: int, *, air: int, tissue: int, noise: int) -> Any:
    """A noisy ellipse on a dark background: text in a corner stands out, as on a scanner's screen."""
    import numpy as np

    r = rng(seed, "adversarial", "pixels", what, k)
    yy, xx = np.mgrid[:rows, :cols]
    inside = ((yy - rows / 2) / (rows * 0.3)) ** 2 + ((xx - cols / 2) / (cols * 0.34)) ** 2 < 1
    image = np.where(inside, tissue, air) + r.normal(0, noise, (rows, cols)) * inside
    return image.round().clip(0, None).astype(np.int32)


def _text_mask(text: str, size: int) -> Any:
    """``text`` rendered without anti-aliasing in Pillow's bundled font, as a boolean mask."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    image = Image.new("L", (len(text) * size + 8, size * 2), 0)
    draw = ImageDraw.Draw(image)
    draw.fontmode = "1"
    draw.text((2, 2), text, fill=255, font=font)
    mask = np.asarray(image) > 0
    xs = np.nonzero(mask.any(axis=0))[0]
    ys = np.nonzero(mask.any(axis=1))[0]
    if not xs.size:
        return mask[:size]
    return mask[int(ys.min()):int(ys.max()) + 1, : int(xs.max()) + 3]


def _pdf(title: str, author: str, page1: list[str], page2: list[str]) -> bytes:
    """A small valid PDF: page 1's content stream in plain text, page 2's FlateDecode, an /Info dictionary."""

    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    def content(lines: list[str]) -> bytes:
        ops = ["BT", "/F1 12 Tf", "72 720 Td"]
        for line in lines:
            ops += [f"({escape(line)}) Tj", "0 -18 Td"]
        return ("\n".join([*ops, "ET"]) + "\n").encode("latin-1")

    plain, packed = content(page1), zlib.compress(content(page2), 9)
    page = "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {} 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 6 0 R] /Count 2 >>",
        page.format(4).encode(),
        b"<< /Length %d >>\nstream\n" % len(plain) + plain + b"endstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        page.format(7).encode(),
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed + b"\nendstream",
        f"<< /Title ({escape(title)}) /Author ({escape(author)}) /Producer (voxlake synth adversarial) >>".encode(),
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for n, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 8 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def generate_adversarial(out: str | Path, *, seed: int = 7) -> dict[str, Any]:
    """Write the adversarial set of ``seed`` under ``out`` and ``out/answer_key.json``; return the key.

    The key (sorted keys, deterministic) holds ``identity`` (the values by category), ``planted``
    (one row per string to look for: value, category, files, where, and ``at``, the (file, where)
    pairs, as a case-, accent- and punctuation-folded search finds them, so ``Zyxwvüt`` is wherever
    ``Zyxwvut`` is; ``exact_files``, where the value is written as it is, case aside), ``must_survive`` (clinical words and the files that hold them) and ``files`` (per file:
    path, SOP class and instance UIDs, modality, SpecificCharacterSet, transfer syntax, whether text
    is burned into its pixels, BurnedInAnnotation as written, notes).
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    s = _Set(out, seed)
    s.ct_series()
    s.mr_series()
    s.ultrasound()
    s.secondary_capture()
    s.radiography()
    s.structured_reports()
    s.presentation_state()
    s.segmentation()
    s.rtstruct()
    s.pdf()
    key = s.rec.key(s.p, ["Liver", "Heart", "Lung_R", LIVER[0]])
    key["seed"] = seed
    (out / "answer_key.json").write_text(json.dumps(key, sort_keys=True, indent=1, ensure_ascii=False) + "\n",
                                         encoding="utf-8")
    return key


def summary(key: dict[str, Any]) -> str:
    """One line: how many files, SOP classes, character sets and planted values."""
    files = key["files"]
    classes = {f["sop_class_uid"] for f in files}
    charsets = {json.dumps(f["specific_character_set"]) for f in files}
    return (f"{len(files)} files, {len(classes)} SOP classes, {len(charsets)} character sets, "
            f"{len(key['planted'])} planted values, {len(key['must_survive'])} must-survive words")

