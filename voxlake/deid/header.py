"""De-identify a DICOM header (a pydicom Dataset) with a :class:`~voxlake.deid.profile.Profile`.

Every element is visited, in nested sequences to any depth, private blocks and the file meta
information. Replacements are keyed (:class:`~voxlake.deid.keys.Secret`), so the same UID becomes the
same new UID in every file (a SEG's references still point to its CT), the same Patient ID the same
pseudonym, and one patient's dates all move by the same offset.

Actions on an element (PS3.15 E.1.1 codes, after :meth:`Profile.action`):

* X removes it; Z empties it (a sequence loses its items); K keeps it.
* D writes a dummy of its VR; for Patient ID a keyed pseudonym, for UIDs a keyed UID.
* U replaces each UID with a keyed ``2.25.`` UID (UIDs of the standard, ``1.2.840.10008.*``, stay).
* C: dates and times move back by the patient's offset (paired Date and Time attributes move
  together, as one point in time, so intervals survive exactly); text loses every value of this
  instance's identifying attributes (names in their variants, IDs, dates in the usual spellings) and
  anything that reads as a date, phone number, e-mail or SSN; overlay bitmaps and other binary values
  are removed (they cannot be cleaned yet).
* Sequences that are kept, dummied, cleaned or U are walked; their items get the same treatment.

Attributes the Table does not list are kept, except UIDs not registered by the standard, which are
replaced as U unless Retain UIDs is chosen (a private implementation may put identifying UIDs there).
Pixel data is not touched: burned-in annotation is the pixel step's job (``BurnedInAnnotation`` is
left as found).
"""

from __future__ import annotations

import copy
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue

from voxlake.deid.keys import Secret
from voxlake.deid.profile import TABLE, Action, Option, PrivateTag, Profile

__all__ = ["AuditEntry", "Deidentified", "Deidentifier"]

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANONYMOUS", "CS": "ANONYMOUS", "AE": "ANONYMOUS",
          "LT": "ANONYMOUS", "ST": "ANONYMOUS", "UT": "ANONYMOUS", "UC": "ANONYMOUS", "DA": "19000101",
          "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0", "UR": ""}
# Unlisted UIDs that name something public rather than an instance or a person.
_PUBLIC_UID_KEYWORDS = frozenset({
    "CodingSchemeUID", "MappingResourceUID", "ContextUID", "ImplementationClassUID", "TransferSyntaxUID",
    "PrivateInformationCreatorUID", "ContextGroupExtensionCreatorUID", "TemplateExtensionCreatorUID",
})
_PATTERNS = re.compile(
    r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"  # e-mail
    r"|\b\d{3}-\d{2}-\d{4}\b"  # SSN
    r"|\+?\(?\d{2,4}\)?[\s.-]\d{2,4}[\s.-]\d{3,4}(?:\s*(?:x|ext\.?)\s*\d+)?"  # phone numbers
    r"|\b\d{1,4}[/.-]\d{1,2}[/.-]\d{2,4}\b"  # 03/14/2020, 2020-03-14, 14.03.2020
    r"|\b\d{1,2}\s+(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{4}\b"
    r"|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)[a-z]*\.?\s+\d{1,2},?\s+\d{4}\b"
    r"|\b(?:19|20)\d{6}\b",  # 20200314
    re.IGNORECASE,
)
_MASK = "*"


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What was done to one element: its path (``ReferencedSeriesSequence[0].SeriesInstanceUID``;
    private tags as ``(0011,1001)``), its tag, and the action code. Never the value."""

    path: str
    tag: str
    action: str


@dataclass(frozen=True, slots=True)
class Deidentified:
    """The de-identified dataset and the audit of what was done to it."""

    dataset: Dataset
    audit: list[AuditEntry]
    source_sop_instance_uid: str
    patient_key: str


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _fold(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


class _Cleaner:
    """Removes this instance's identifying values, and what reads like PHI, from free text."""

    def __init__(self, terms: set[str]) -> None:
        words = {t for t in terms if len(t) >= 3} | {_fold(t) for t in terms if len(t) >= 3}
        ordered = sorted(words, key=len, reverse=True)
        self.regex = (re.compile("|".join(rf"(?<!\w){re.escape(w)}(?!\w)" for w in ordered), re.IGNORECASE)
                      if ordered else None)

    def clean(self, text: str) -> str:
        if self.regex is not None:
            text = self.regex.sub(_MASK, text)
            if self.regex.search(_fold(text)):  # an accented name written without its accents
                text = self.regex.sub(_MASK, _fold(text))
        return _PATTERNS.sub(_MASK, text)


def _name_terms(value: str) -> set[str]:
    terms: set[str] = set()
    for group in str(value).split("="):
        parts = [p.strip() for p in group.split("^") if p.strip()]
        if not parts:
            continue
        terms.update(parts)
        family, given = parts[0], parts[1] if len(parts) > 1 else ""
        terms.add(" ".join(parts))
        if given:
            terms.update({f"{given} {family}", f"{family}, {given}", f"{family},{given}"})
        for p in parts:
            terms.update(w for w in re.split(r"[\s,.-]+", p) if w)
    return terms


def _date_terms(value: str) -> set[str]:
    try:
        d = datetime.strptime(str(value)[:8], "%Y%m%d").date()
    except ValueError:
        return set()
    return {f"{d:%Y%m%d}", f"{d:%Y-%m-%d}", f"{d:%m/%d/%Y}", f"{d:%d/%m/%Y}", f"{d:%d.%m.%Y}",
            f"{d:%Y/%m/%d}", f"{d.day} {d:%B} {d.year}", f"{d:%B} {d.day}, {d.year}", f"{d.day} {d:%b} {d.year}"}


def _values(elem: DataElement) -> list[str]:
    value = elem.value
    if value is None or isinstance(value, bytes | bytearray):
        return []
    if isinstance(value, MultiValue | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _parse_time(text: str) -> tuple[time, int, str] | None:
    """A TM value → (time, digits of precision, fraction text)."""
    text = text.strip().replace(":", "")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
    if not m:
        return None
    hh, mm, ss = int(m[1]), int(m[2] or 0), int(m[3] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    digits = 2 + 2 * bool(m[2]) + 2 * bool(m[3])
    return time(hh, mm, min(ss, 59)), digits, m[4] or ""


def _render_time(t: time, digits: int, fraction: str) -> str:
    return f"{t:%H%M%S}"[:digits] + (fraction if digits == 6 else "")


class Deidentifier:
    """Applies a :class:`Profile` with a :class:`Secret`; reusable across files and thread-safe
    (it holds no per-file state).

    >>> d = Deidentifier(Profile(["retain-longitudinal-modified-dates"]), Secret.read("deid.key"))  # doctest: +SKIP
    >>> result = d.deidentify(pydicom.dcmread("in.dcm"))                                           # doctest: +SKIP
    >>> result.dataset.save_as("out.dcm"); result.audit[:2]                                        # doctest: +SKIP
    """

    def __init__(self, profile: Profile, secret: Secret) -> None:
        self.profile = profile
        self.secret = secret
        self.retain_uids = Option.RETAIN_UIDS in profile.options

    # -- public -------------------------------------------------------------------------------

    def deidentify(self, ds: Dataset, *, copy_dataset: bool = True) -> Deidentified:
        """De-identify ``ds`` (a copy of it, unless ``copy_dataset`` is False) and return the result
        with its audit."""
        if copy_dataset:
            ds = copy.deepcopy(ds)
        source_sop = str(ds.get("SOPInstanceUID", "") or "")
        patient_key = str(ds.get("PatientID", "") or "").strip() or str(ds.get("StudyInstanceUID", "") or "")
        run = _Run(self, ds, patient_key)
        run.walk(ds, "")
        self._file_meta(ds, run)
        self._mark(ds)
        return Deidentified(ds, run.audit, source_sop, patient_key)

    # -- whole-dataset steps ------------------------------------------------------------------

    def _file_meta(self, ds: Dataset, run: _Run) -> None:
        """Rebuild the file meta information from the de-identified dataset (PS3.10 7.1), so that
        Media Storage SOP Instance UID is the new SOP Instance UID; everything else in it goes."""
        old = getattr(ds, "file_meta", None)
        if old is None:
            return
        from pydicom.uid import PYDICOM_IMPLEMENTATION_UID

        meta = FileMetaDataset()
        sop_class = ds.get("SOPClassUID") or old.get("MediaStorageSOPClassUID")
        if sop_class:
            meta.MediaStorageSOPClassUID = sop_class
        if "SOPInstanceUID" in ds:
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        elif old.get("MediaStorageSOPInstanceUID"):
            meta.MediaStorageSOPInstanceUID = self._uid(str(old.MediaStorageSOPInstanceUID))
        if old.get("TransferSyntaxUID"):
            meta.TransferSyntaxUID = old.TransferSyntaxUID
        else:  # read without meta (force=True): write in the encoding it was read in
            from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

            implicit, little = getattr(ds, "original_encoding", None) or (True, True)
            meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit in (True, None)
                                      else ExplicitVRLittleEndian if little in (True, None) else ExplicitVRBigEndian)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "VOXLAKE_DEID"
        for elem in old:
            if elem.tag == 0x00020003:
                run.audit.append(AuditEntry("MediaStorageSOPInstanceUID", _tag_text(elem.tag), Action.UID.value))
            elif elem.tag not in meta and elem.tag not in (0x00020000, 0x00020001):
                run.audit.append(AuditEntry(elem.keyword or _tag_text(elem.tag), _tag_text(elem.tag),
                                            Action.REMOVE.value))
        ds.file_meta = meta

    def _mark(self, ds: Dataset) -> None:
        """PS3.15 E.1.1: Patient Identity Removed, the method as text and as CID 7050 codes, and
        Longitudinal Temporal Information Modified (E.3.6)."""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = self.profile.method_text()
        items = []
        for value, meaning in self.profile.method_codes():
            item = Dataset()
            item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = items
        options = self.profile.options
        ds.LongitudinalTemporalInformationModified = (
            "MODIFIED" if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options
            else "UNMODIFIED" if Option.RETAIN_LONGITUDINAL_FULL_DATES in options else "REMOVED"
        )

    def _uid(self, value: str) -> str:
        value = value.strip().rstrip("\0")
        if not value or value.startswith("1.2.840.10008."):
            return value
        return self.secret.uid(value)


class _Run:
    """The state of one dataset's de-identification: its audit, cleaner and date offset."""

    def __init__(self, d: Deidentifier, ds: Dataset, patient_key: str) -> None:
        self.d = d
        self.profile = d.profile
        self.audit: list[AuditEntry] = []
        self.offset = d.secret.date_offset(patient_key)
        # the deny-list must be read before the walk changes the dataset; only options (or a
        # recipe) give C actions on text, so the plain Basic Profile skips the extra pass
        self._cleaner = _Cleaner(self._terms(ds)) if d.profile.options or d.profile.recipe.actions else None

    @property
    def cleaner(self) -> _Cleaner:
        return self._cleaner or _Cleaner(set())

    def _terms(self, ds: Dataset) -> set[str]:
        """The identifying values of the (original) dataset: every value of an attribute the profile
        does not keep, names in their variants, dates in their usual spellings."""
        terms: set[str] = set()
        for elem in self._identifying(ds):
            private = elem.tag.is_private
            action = None if private else self.profile.action(elem.tag)
            for v in _values(elem):
                if elem.VR == "PN":
                    terms |= _name_terms(v)
                elif elem.VR in ("DA", "DT"):
                    terms |= _date_terms(v)
                elif elem.VR in ("LO", "SH") and not private and action is not Action.CLEAN \
                        and not _is_descriptor(elem.tag):
                    terms.add(v.strip())  # identifiers, addresses, phones; not descriptions
        return {t for t in terms if t and not t.isspace()}

    def _identifying(self, ds: Dataset) -> Iterator[DataElement]:
        """Elements, at any depth, whose values may identify: private ones, person names, and
        those the profile does not keep. Others are not converted from their raw bytes."""
        for tag in sorted(int(t) for t in ds.keys()):  # noqa: SIM118 (iterating a Dataset converts)
            vr = _raw_vr(ds, tag)
            private = (tag >> 16) % 2 == 1
            if vr == "SQ" or private:
                elem = ds[tag]
                if elem.VR == "SQ":
                    for item in elem.value or ():
                        yield from self._identifying(item)
                    continue
            elif vr in _BINARY_VRS or (vr != "PN" and self.profile.action(tag) in (None, Action.KEEP)):
                continue
            elem = ds[tag]
            if elem.VR not in _BINARY_VRS and elem.VR != "SQ":
                yield elem

    # -- the walk -----------------------------------------------------------------------------

    def walk(self, ds: Dataset, prefix: str) -> None:
        # Elements are converted from their raw bytes only when their action needs the value: the
        # rest (most of a header) are written back as they were read, which is most of the speed.
        originals = _originals(ds) if self._cleaner is not None else {}  # only a CLEAN shifts dates
        creators: dict[int, str] = {}
        kept_blocks: set[int] = set()
        for tag in sorted(int(t) for t in ds.keys()):  # noqa: SIM118 (iterating a Dataset converts)
            group, element = tag >> 16, tag & 0xFFFF
            if group % 2 == 0 and group != 0x0002:
                action = self.profile.action(tag)
                if action is None:
                    vr = _raw_vr(ds, tag)
                    if vr not in ("UI", "SQ") or (vr == "UI" and self.d.retain_uids):
                        continue
                elif self._without_value(ds, tag, action, prefix):
                    continue
            elem = ds[tag]
            path = f"{prefix}{elem.keyword or _tag_text(tag)}"
            if group % 2 == 1:
                if 0x0010 <= element <= 0x00FF:
                    creators[tag] = str(elem.value or "").strip()
                    continue
                block = (group << 16) | (element >> 8)
                creator = str(ds[block].value or "").strip() if block in ds else ""
                action = self.profile.private_action(PrivateTag(group, creator, element & 0xFF))
                self.audit.append(AuditEntry(_tag_text(tag), _tag_text(tag), action.value))
                if action is Action.REMOVE:
                    del ds[tag]
                else:
                    kept_blocks.add(block)
                    if elem.VR == "SQ":
                        self._items(elem, path)
                continue
            if group == 0x0002:
                continue  # file meta in the body: rebuilt by _file_meta
            action = self.profile.action(tag)
            if action is None:
                if elem.VR == "UI" and not self.d.retain_uids and self._private_uid(elem):
                    action = Action.UID
                elif elem.VR == "SQ":
                    self._items(elem, f"{path}")
                    continue
                else:
                    continue
            self.audit.append(AuditEntry(path, _tag_text(tag), action.value))
            self._apply(ds, elem, action, path, originals)
        for tag, _creator in creators.items():
            if tag not in kept_blocks:
                del ds[tag]
                self.audit.append(AuditEntry(_tag_text(tag), _tag_text(tag), Action.REMOVE.value))

    def _without_value(self, ds: Dataset, tag: int, action: Action, prefix: str) -> bool:
        """Apply REMOVE, or ZERO and DUMMY to a plain element, from its VR alone: its value is never
        converted from the raw bytes (these are about 35 of the 45 actions on a typical header).
        False when the action needs the value (or the VR is ambiguous): the caller converts."""
        if action is Action.REMOVE:
            vr = ""
        elif (action is Action.ZERO or action is Action.DUMMY) and tag != 0x00100020:
            vr = _raw_vr(ds, tag)
            if vr in ("SQ", "UI", "UN") or " " in vr:
                return False
        else:
            return False
        keyword = dictionary_keyword(tag) if dictionary_has_tag(tag) else ""  # as DataElement.keyword
        self.audit.append(AuditEntry(f"{prefix}{keyword or _tag_text(tag)}", _tag_text(tag), action.value))
        if action is Action.REMOVE:
            del ds[tag]
        elif action is Action.ZERO:
            ds[tag] = DataElement(tag, vr, empty_value_for_VR(vr))
        else:
            ds[tag] = DataElement(tag, vr, _DUMMY.get(vr, empty_value_for_VR(vr) if vr in _BINARY_VRS else 0))
        return True

    def _items(self, elem: DataElement, path: str) -> None:
        for i, item in enumerate(elem.value or ()):
            self.walk(item, f"{path}[{i}].")

    @staticmethod
    def _private_uid(elem: DataElement) -> bool:
        if elem.keyword in _PUBLIC_UID_KEYWORDS:
            return False
        return any(v and not v.startswith("1.2.840.10008.") for v in _values(elem))

    def _apply(self, ds: Dataset, elem: DataElement, action: Action, path: str,
               originals: dict[str, str]) -> None:
        vr = elem.VR
        if action is Action.REMOVE:
            del ds[elem.tag]
        elif vr == "SQ":
            if action is Action.ZERO:
                elem.value = []
            else:
                self._items(elem, path)
        elif action is Action.KEEP:
            pass
        elif action is Action.ZERO:
            elem.value = elem.empty_value
        elif action is Action.UID or (action is Action.DUMMY and vr == "UI"):
            if vr != "UI":
                elem.value = _DUMMY.get(vr, elem.empty_value)
            else:
                uids = [self.d._uid(v) for v in _values(elem)]
                elem.value = uids[0] if len(uids) == 1 else uids
        elif action is Action.DUMMY:
            if elem.tag == 0x00100020:
                elem.value = self.d.secret.patient_id(str(elem.value or ""))
            else:
                elem.value = _DUMMY.get(vr, elem.empty_value if vr in _BINARY_VRS else 0)
        else:  # CLEAN
            self._clean(ds, elem, originals)

    def _clean(self, ds: Dataset, elem: DataElement, originals: dict[str, str]) -> None:
        vr = elem.VR
        if vr in ("DA", "TM", "DT"):
            shifted = [self._shift(vr, v, elem.keyword, originals) for v in _values(elem)]
            elem.value = shifted[0] if len(shifted) == 1 else shifted
        elif vr in _TEXT_VRS:
            cleaned = [self.cleaner.clean(v) for v in _values(elem)]
            elem.value = cleaned[0] if len(cleaned) == 1 else cleaned
        elif vr in _BINARY_VRS:
            del ds[elem.tag]  # overlay bitmaps and the like cannot be cleaned yet: remove
        # numbers, AS and codes carry no free text: kept

    # -- dates --------------------------------------------------------------------------------

    def _shift(self, vr: str, value: str, keyword: str, originals: dict[str, str]) -> str:
        value = value.strip()
        if not value:
            return value
        if vr == "DA":
            pair = originals.get(keyword[:-4] + "Time") if keyword.endswith("Date") else None
            if pair is None and keyword.startswith("DateOf"):
                pair = originals.get("TimeOf" + keyword[6:])
            return re.sub(r"\d{8}", lambda m: self._shift_date(m[0], pair), value)
        if vr == "TM":
            pair = originals.get(keyword[:-4] + "Date") if keyword.endswith("Time") else None
            if pair is None and keyword.startswith("TimeOf"):
                pair = originals.get("DateOf" + keyword[6:])
            return "-".join(self._shift_time(part, pair) for part in value.split("-"))
        return "-".join(self._shift_datetime(part) for part in value.split("-") if part) if "-" in value[1:8] \
            else self._shift_datetime(value)

    def _shift_date(self, text: str, time_text: str | None) -> str:
        try:
            d = datetime.strptime(text, "%Y%m%d")
        except ValueError:
            return ""
        t = _parse_time(time_text) if time_text else None
        if t is None:
            return f"{d - timedelta(days=self.offset.days):%Y%m%d}"
        return f"{datetime.combine(d.date(), t[0]) - self.offset:%Y%m%d}"

    def _shift_time(self, text: str, date_text: str | None) -> str:
        parsed = _parse_time(text)
        if parsed is None:
            return ""
        t, digits, fraction = parsed
        try:
            d = datetime.strptime(str(date_text)[:8], "%Y%m%d").date() if date_text else date(2000, 1, 1)
        except ValueError:
            d = date(2000, 1, 1)
        moved = datetime.combine(d, t) - (self.offset if date_text else timedelta(seconds=self.offset.seconds))
        return _render_time(moved.time(), digits, fraction)

    def _shift_datetime(self, text: str) -> str:
        m = re.fullmatch(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d{1,6})?([+-]\d{4})?", text.strip())
        if not m:
            return ""
        parts = [int(p) if p else None for p in m.groups()[:6]]
        try:
            dt = datetime(parts[0] or 1, parts[1] or 1, parts[2] or 1, parts[3] or 0, parts[4] or 0,
                          min(parts[5] or 0, 59))
        except ValueError:
            return ""
        precise = parts[3] is not None
        moved = dt - (self.offset if precise else timedelta(days=self.offset.days))
        width = 4 + 2 * sum(p is not None for p in parts[1:])
        out = f"{moved:%Y%m%d%H%M%S}"[:width]
        return out + ((m[7] or "") if width == 14 else "") + (m[8] or "")


def _is_descriptor(tag: int) -> bool:
    row = TABLE.get(f"{tag:08x}")
    return row is not None and Option.CLEAN_DESCRIPTORS in row.options


def _raw_vr(ds: Dataset, tag: int) -> str:
    """The VR of an element without converting its value: the dictionary's for implicit VR and
    for UN (pydicom converts a known tag stored as UN to its dictionary VR, SQ included)."""
    vr = getattr(ds.get_item(tag), "VR", None)
    if vr and vr != "UN":
        return str(vr)
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _originals(ds: Dataset) -> dict[str, str]:
    """The dataset's DA and TM values by keyword, before any is shifted (a date is shifted with
    its time, and a time with its date)."""
    from pydicom.datadict import keyword_for_tag

    out = {}
    for tag in ds.keys():  # noqa: SIM118 (iterating a Dataset converts every element)
        if int(tag) >> 16 != 0x0002 and _raw_vr(ds, int(tag)) in ("DA", "TM") and (kw := keyword_for_tag(tag)):
            out[kw] = str(ds[tag].value or "")
    return out


def _walk_all(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or ():
                yield from _walk_all(item)


def deidentify(ds: Dataset, profile: Profile, secret: Secret) -> Deidentified:
    """Shorthand for ``Deidentifier(profile, secret).deidentify(ds)``."""
    return Deidentifier(profile, secret).deidentify(ds)


def audit_records(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    return [{"path": e.path, "tag": e.tag, "action": e.action} for e in entries]
