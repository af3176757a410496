"""De-identify a DICOM header (a pydicom Dataset) with a :class:`~voxlake.deid.profile.Profile`.

Every element is visited, in nested sequences to any depth (an explicit stack: no recursion limit),
private blocks and the file meta information. Replacements are keyed
(:class:`~voxlake.deid.keys.Secret`), so the same UID becomes the same new UID in every file (a
SEG's references still point to its CT), the same Patient ID the same pseudonym, and one patient's
dates all move by the same offset.

**Nothing passes unless known safe.** Each element is decided in this order:

1. A recipe's action for the tag (the user's word wins).
2. Private elements: removed, with their creators, unless Retain Safe Private keeps them (the
   recipe's safe list); a private element without a creator is removed.
3. The PS3.15 Table E.1-1 action under the chosen options (:meth:`Profile.action`), its combined
   codes resolved by the element's Type at its place in the object's IOD
   (:func:`voxlake.deid.iod.iod_types`; the strictest Type when the SOP Class is not in the
   standard's tables).
4. An element the Table does not list: UIDs are replaced (U) unless public (the standard's own,
   coding schemes, transfer syntaxes) or Retain UIDs is chosen; sequences are walked; numbers and
   pixel-description values are kept; person names are emptied; dates and times are shifted under
   Retain Longitudinal Modified Dates, kept under Full Dates and removed otherwise; URIs and elements
   of unknown VR (UN) are removed; code strings (CS) are kept, but for the few that are typed labels
   (Content Label, Graphic Layer...), checked against the patient's deny-list; other text (LO, SH,
   ST, LT, UT, UC) is scrubbed (:mod:`voxlake.deid.scrub`) against the deny-list and the PHI
   patterns, but for code values of standard coding schemes and a few device strings, kept. SR TEXT values (TextValue) are scrubbed under Clean Structured Content and replaced by
   a dummy otherwise.
5. What the IOD requires is never deleted: an X on a Type 1 element becomes D, on a Type 2 element
   Z; a sequence left without items is removed unless it is Type 2.

Actions on an element (PS3.15 E.1.1 codes):

* X removes it; Z empties it (a sequence loses its items); K keeps it.
* D writes a dummy of its VR; for Patient ID a keyed pseudonym, for UIDs a keyed UID.
* U replaces each UID with a keyed ``2.25.`` UID (UIDs of the standard, ``1.2.840.10008.*``, stay).
* C: dates and times move back by the patient's offset (paired Date and Time attributes move
  together, as one point in time, so intervals survive exactly); text is scrubbed (step 4's
  scrubber); overlay bitmaps and other binary values are removed (they cannot be cleaned yet).
* Sequences that are kept, dummied, cleaned or U are walked; their items get the same treatment.

Pixel data is not touched: burned-in annotation is the pixel step's job (``BurnedInAnnotation`` is
left as found).
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

from pydicom.datadict import dictionary_has_tag, dictionary_keyword
from pydicom.dataelem import DataElement, empty_value_for_VR
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue

from voxlake.deid.errors import DeidentificationError
from voxlake.deid.iod import iod_types
from voxlake.deid.keys import Secret
from voxlake.deid.profile import TABLE, Action, Option, PrivateTag, Profile
from voxlake.deid.scrub import Identity, Scrubber

__all__ = ["AuditEntry", "Deidentified", "Deidentifier", "identity_of"]

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"})
_SCRUBBED_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "CS", "AE"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_KEPT_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT", "IS", "DS", "AS", "OB", "OD",
                       "OF", "OL", "OV", "OW"})
_DUMMY = {"PN": "ANONYMOUS", "LO": "ANONYMOUS", "SH": "ANONYMOUS", "CS": "ANONYMOUS", "AE": "ANONYMOUS",
          "LT": "ANONYMOUS", "ST": "ANONYMOUS", "UT": "ANONYMOUS", "UC": "ANONYMOUS", "DA": "19000101",
          "TM": "000000", "DT": "19000101000000", "AS": "000Y", "IS": "0", "DS": "0", "UR": ""}
# Unlisted UIDs that name something public rather than an instance or a person.
_PUBLIC_UID_KEYWORDS = frozenset({
    "CodingSchemeUID", "MappingResourceUID", "ContextUID", "ImplementationClassUID", "TransferSyntaxUID",
    "PrivateInformationCreatorUID", "ContextGroupExtensionCreatorUID", "TemplateExtensionCreatorUID",
})
# Coding schemes of the standard and of public terminologies (PS3.16 Table 8-1): their code values
# are codes, not identifiers.
_STANDARD_SCHEMES = frozenset({
    "DCM", "SCT", "SRT", "SNM3", "LN", "UCUM", "FMA", "RADLEX", "NCIT", "NCIt", "UMLS", "ICD10",
    "I10", "I9", "I9C", "I10P", "ICD10PCS", "ICD-10-CM", "ICDO3", "ACR", "MDC", "NEU", "UBERON", "MA",
    "NCBI", "HPC", "ITIS_TSN", "PUBCHEM_CID", "RXNORM", "NDC", "ATC", "MSH", "CPT4", "C4", "C5", "HL7",
    "NYUMCCG", "ISO3166_1", "ISO639_1", "ISO639_2", "RFC5646", "IBSI", "DC", "MAYONRISBSASRG", "BI",
    "NICIP", "RFC3066", "ASTM-sigpurpose",
})
# Unlisted text attributes that describe the device or the data's structure, never the patient:
# checked against the patient's deny-list only (the PHI patterns would mask version numbers).
_STRUCTURAL = frozenset({
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "CodingSchemeDesignator",
    "CodingSchemeVersion", "ContextIdentifier", "MappingResource", "TemplateIdentifier", "ContextGroupVersion",
    "SpecificCharacterSet", "ConvolutionKernel", "ImplementationVersionName", "MappingResourceName",
    "ContentQualification", "SegmentAlgorithmName", "SeriesType", "CodingSchemeRegistry", "LongCodeValue",
    "URNCodeValue", "FilterType", "FocalSpots", "AnatomicRegionModifierSequence",
})
# Code strings that are labels someone typed rather than enumerated values: checked against the
# patient's deny-list (a presentation state's Content Label "ZYXWVUT_Q"). Other CS values are kept.
_CS_LABELS = frozenset({"ContentLabel", "GraphicLayer", "ROIGenerationAlgorithm", "StationAETitle",
                        "ImageSetLabel", "DoseReferenceStructureType"})
_TEXT_VALUE = 0x0040A160
_CODE_VALUE = 0x00080100
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


_ID_WORDS = ("ID", "Number", "Identifier")
_TEXT_TERMS = ("Address", "Telephone", "Telecom", "Institution", "Station", "Department", "Serial", "Issuer")


def identity_of(ds: Dataset, profile: Profile, identity: Identity | None = None, *,
                max_depth: int | None = None) -> Identity:
    """The deny-list terms ``ds`` holds (:class:`~voxlake.deid.scrub.Identity`, added to
    ``identity`` when given), read before de-identification changes the dataset: every person name
    at any depth, private ones included; the values of the identifying attributes the profile does
    not keep (IDs and their digits, addresses, phone numbers, e-mails, institutions, stations); the
    birth date; IDs and names in private blocks. Descriptions, which are cleaned, not deny-listed,
    are left out. Elements are converted from their raw bytes only when needed. Raises
    :class:`~voxlake.deid.errors.DeidentificationError` when sequences nest deeper than
    ``max_depth``."""
    out = identity if identity is not None else Identity()
    stack = [(ds, 0)]
    while stack:
        current, depth = stack.pop()
        if max_depth is not None and depth > max_depth:
            raise DeidentificationError(f"sequences nested more than {max_depth} levels deep")
        charset: tuple[str, ...] | None = None
        for tag in current.keys():  # noqa: SIM118 (iterating a Dataset converts every element)
            tag = int(tag)
            if tag >> 16 == 0x0002:
                continue
            vr = _raw_vr(current, tag)
            private = (tag >> 16) % 2 == 1
            if vr == "SQ" or (private and vr == "UN"):
                try:
                    elem = current[tag]
                except Exception:  # a private UN that is not a sequence nor text: nothing to read
                    continue
                if elem.VR == "SQ":
                    stack.extend((item, depth + 1) for item in reversed(list(elem.value or ())))
                    continue
                vr = elem.VR
            if vr == "PN":
                kind = "name"
            elif vr == "DA" and tag == 0x00100030:
                kind = "date"
            elif vr not in ("LO", "SH", "LT", "ST", "UT", "UC"):
                continue
            elif private:
                if vr not in ("LO", "SH"):
                    continue
                kind = "private"
            else:
                kind = _identity_kind(profile, tag, vr)
                if not kind:
                    continue
            # a patient's files repeat the same values: their terms are worked out once per process
            raw = current._dict.get(tag)
            value = getattr(raw, "value", None)
            if isinstance(value, bytes) and not hasattr(raw, "keyword"):  # still raw: key on its bytes
                if charset is None:
                    charset = tuple(getattr(current, "_character_set", None) or ())
                key: Any = (kind, value, charset)
            else:
                key = (kind, tuple(_values(current[tag])), None)
            terms = _TERMS.get(key)
            if terms is None:
                terms = _terms(kind, _values(current[tag]))
                if len(_TERMS) > 20000:
                    _TERMS.clear()
                _TERMS[key] = terms
            out.update(terms)
    return out


_TERMS: dict[Any, Identity] = {}


def _terms(kind: str, values: list[str]) -> Identity:
    """The deny-list terms of one element's values, by how :func:`identity_of` reads it."""
    terms = Identity()
    for v in values:
        if kind == "name":
            terms.add_name(v)
        elif kind == "date":
            terms.add_date(v)
        elif kind == "id":
            terms.add_id(v)
        elif kind == "text":
            terms.add_text(v)
        elif "^" in v:  # private LO/SH: names and IDs that RIS bridges keep there
            terms.add_name(v)
        elif sum(c.isdigit() for c in v) >= 4:
            terms.add_id(v)
    return terms


def _identity_kind(profile: Profile, tag: int, vr: str) -> str:
    """How :func:`identity_of` reads a standard text element: "id", "text" or "" (not at all)."""
    kinds = profile.identity_kinds
    found = kinds.get((tag, vr))
    if found is None:
        action = profile.action(tag)
        keyword = _keyword(tag)
        if action is None or action is Action.KEEP or action is Action.CLEAN or _is_descriptor(tag):
            found = ""
        elif vr in ("LO", "SH") and any(w in keyword for w in _ID_WORDS):
            found = "id"
        elif any(w in keyword for w in _TEXT_TERMS) or vr in ("LO", "SH"):
            found = "text"
        else:
            found = ""
        kinds[(tag, vr)] = found
    return found


class Deidentifier:
    """Applies a :class:`Profile` with a :class:`Secret`; reusable across files and thread-safe
    (it holds no per-file state beyond a cache of compiled scrubbers).

    >>> d = Deidentifier(Profile(["retain-longitudinal-modified-dates"]), Secret.read("deid.key"))  # doctest: +SKIP
    >>> result = d.deidentify(pydicom.dcmread("in.dcm"))                                           # doctest: +SKIP
    >>> result.dataset.save_as("out.dcm"); result.audit[:2]                                        # doctest: +SKIP
    """

    def __init__(self, profile: Profile, secret: Secret) -> None:
        self.profile = profile
        self.secret = secret
        options = profile.options
        self.retain_uids = Option.RETAIN_UIDS in options
        self.shift_dates = Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in options
        self.keep_dates = Option.RETAIN_LONGITUDINAL_FULL_DATES in options
        self.clean_structured = Option.CLEAN_STRUCTURED_CONTENT in options
        self._scrubbers: dict[Any, Scrubber] = {}

    # -- public -------------------------------------------------------------------------------

    def deidentify(self, ds: Dataset, *, copy_dataset: bool = True, identity: Identity | None = None) -> Deidentified:
        """De-identify ``ds`` (a copy of it, unless ``copy_dataset`` is False) and return the result
        with its audit. ``identity`` is the patient's deny-list gathered from all their instances
        (:func:`identity_of` of each, this one included); without it, this instance's own is used."""
        if copy_dataset:
            ds = copy.deepcopy(ds)
        source_sop = str(ds.get("SOPInstanceUID", "") or "")
        patient_key = str(ds.get("PatientID", "") or "").strip() or str(ds.get("StudyInstanceUID", "") or "")
        # the patient's identity (from every instance, this one included) or this instance's own
        own = identity if identity is not None else identity_of(ds, self.profile)
        run = _Run(self, ds, patient_key, own)
        run.walk(ds)
        self._file_meta(ds, run)
        self._mark(ds)
        return Deidentified(ds, run.audit, source_sop, patient_key)

    def scrubber(self, identity: Identity, offset: timedelta | None) -> Scrubber:
        """A compiled scrubber for ``identity`` (cached: a patient's files share one)."""
        key = (frozenset(identity.words), frozenset(identity.infixes), frozenset(identity.digits),
               frozenset(identity.dates), offset)
        found = self._scrubbers.get(key)
        if found is None:
            if len(self._scrubbers) > 32:
                self._scrubbers.clear()
            shift = None if offset is None else (lambda d, days=offset.days: d - timedelta(days=days))
            found = self._scrubbers[key] = Scrubber(identity, shift=shift)
        return found

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
    """The state of one dataset's de-identification: its audit, scrubber, date offset and the
    Types its IOD gives its attributes."""

    def __init__(self, d: Deidentifier, ds: Dataset, patient_key: str, identity: Identity) -> None:
        self.d = d
        self.profile = d.profile
        self.audit: list[AuditEntry] = []
        self.offset = d.secret.date_offset(patient_key)
        self.scrubber = d.scrubber(identity, self.offset if d.shift_dates else None)
        self.types = iod_types(str(ds.get("SOPClassUID", "") or ""))
        self.shifts = bool(d.profile.options or d.profile.recipe.actions)

    # -- the walk -----------------------------------------------------------------------------

    def walk(self, root: Dataset) -> None:
        """Every dataset of ``root`` (items of sequences at any depth), with an explicit stack."""
        stack: list[tuple[Dataset, str, tuple[str, ...]]] = [(root, "", ())]
        while stack:
            ds, prefix, kpath = stack.pop()
            pushed: list[tuple[Dataset, str, tuple[str, ...]]] = []
            self._dataset(ds, prefix, kpath, pushed)
            stack.extend(reversed(pushed))  # items in document order

    def _type(self, kpath: tuple[str, ...], tag: int) -> int | None:
        """The element's Type at its place (1, 2 or 3), None when the IOD is not known."""
        if self.types is None:
            return None
        keyword = _keyword(tag)
        if not keyword:
            return 3
        return self.types.get(f"{'.'.join(kpath)}.{keyword}" if kpath else keyword, 3)

    def _dataset(self, ds: Dataset, prefix: str, kpath: tuple[str, ...],
                 stack: list[tuple[Dataset, str, tuple[str, ...]]]) -> None:
        # Elements are converted from their raw bytes only when their action needs the value: the
        # rest (most of a header) are written back as they were read, which is most of the speed.
        originals = _originals(ds) if self.shifts else {}  # only a CLEAN shifts dates
        creators: dict[int, str] = {}
        kept_blocks: set[int] = set()
        removed_overlays: set[int] = set()
        for tag in sorted(int(t) for t in ds.keys()):  # noqa: SIM118 (iterating a Dataset converts)
            group, element = tag >> 16, tag & 0xFFFF
            if group == 0x0002:
                continue  # file meta in the body: rebuilt by _file_meta
            if group % 2 == 1:
                self._private(ds, tag, prefix, kpath, creators, kept_blocks, stack)
                continue
            iod_type = self._type(kpath, tag)
            action = self.profile.action(tag, iod_type)
            if action is None:
                self._unlisted(ds, tag, prefix, kpath, originals, stack)
                continue
            if tag not in self.profile.recipe.actions:
                action = self._required(action, iod_type)
            if (group & 0xFF00) == 0x6000 and element == 0x3000 and action is Action.REMOVE:
                removed_overlays.add(group)
            if self._without_value(ds, tag, action, prefix):
                continue
            elem = ds[tag]
            path = f"{prefix}{elem.keyword or _tag_text(tag)}"
            self.audit.append(AuditEntry(path, _tag_text(tag), action.value))
            self._apply(ds, elem, action, path, kpath, originals, stack)
        for tag, _creator in creators.items():
            if tag not in kept_blocks:
                del ds[tag]
                self.audit.append(AuditEntry(_tag_text(tag), _tag_text(tag), Action.REMOVE.value))
        for group in removed_overlays:  # an overlay without its bitmap is invalid: the plane goes
            for tag in [int(t) for t in ds.keys() if int(t) >> 16 == group]:  # noqa: SIM118
                del ds[tag]
                self.audit.append(AuditEntry(f"{prefix}{_tag_text(tag)}", _tag_text(tag), Action.REMOVE.value))

    @staticmethod
    def _required(action: Action, iod_type: int | None) -> Action:
        """What the IOD requires is replaced or emptied, never deleted (and never empty if Type 1)."""
        if iod_type == 1 and action in (Action.REMOVE, Action.ZERO):
            return Action.DUMMY
        if iod_type == 2 and action is Action.REMOVE:
            return Action.ZERO
        return action

    def _private(self, ds: Dataset, tag: int, prefix: str, kpath: tuple[str, ...], creators: dict[int, str],
                 kept_blocks: set[int], stack: list[tuple[Dataset, str, tuple[str, ...]]]) -> None:
        group, element = tag >> 16, tag & 0xFFFF
        if 0x0010 <= element <= 0x00FF:
            creators[tag] = ""
            return
        block = (group << 16) | (element >> 8)
        try:
            creator = str(ds[block].value or "").strip() if block in ds else ""
        except Exception:
            creator = ""
        action = self.profile.private_action(PrivateTag(group, creator, element & 0xFF))
        self.audit.append(AuditEntry(f"{prefix}{_tag_text(tag)}", _tag_text(tag), action.value))
        if action is Action.REMOVE:
            del ds[tag]
            return
        kept_blocks.add(block)
        elem = ds[tag]
        if elem.VR == "SQ":
            self._push(elem, f"{prefix}{_tag_text(tag)}", (*kpath, _tag_text(tag)), stack)

    def _unlisted(self, ds: Dataset, tag: int, prefix: str, kpath: tuple[str, ...], originals: dict[str, str],
                  stack: list[tuple[Dataset, str, tuple[str, ...]]]) -> None:
        """Step 4 of the module's decision order: an element the Table does not list."""
        vr = _raw_vr(ds, tag)
        if vr in _KEPT_VRS or " " in vr:  # numbers, pixel data and its descriptions; "US or SS"
            return
        if vr == "UI" and self.d.retain_uids:
            return
        elem = ds[tag]
        path = f"{prefix}{elem.keyword or _tag_text(tag)}"
        vr = elem.VR
        if vr == "SQ":
            self._push(elem, path, (*kpath, elem.keyword or _tag_text(tag)), stack)
            return
        if vr == "UI":
            if self._private_uid(elem):
                self.audit.append(AuditEntry(path, _tag_text(tag), Action.UID.value))
                self._apply(ds, elem, Action.UID, path, kpath, originals, stack)
            return
        if vr in ("DA", "TM", "DT"):
            if self.d.keep_dates:
                return
            action = Action.CLEAN if self.d.shift_dates else Action.REMOVE
        elif vr == "PN":
            action = Action.ZERO
        elif vr in _SCRUBBED_VRS:
            self._scrub(ds, elem, path)
            return
        else:  # UN (an unknown tag, whatever its bytes hold), UR, binary VRs the dictionary does not know
            action = Action.REMOVE
        self.audit.append(AuditEntry(path, _tag_text(tag), action.value))
        self._apply(ds, elem, action, path, kpath, originals, stack)

    def _scrub(self, ds: Dataset, elem: DataElement, path: str) -> None:
        """Scrub an unlisted text element in place (audited as C only when something changed)."""
        keyword = elem.keyword
        if keyword in _STRUCTURAL:
            return
        values = _values(elem)
        if not values:
            return
        if elem.tag == _TEXT_VALUE and not self.d.clean_structured:
            new = ["ANONYMOUS" for _ in values]  # SR text: only Clean Structured Content keeps it
        elif elem.tag == _CODE_VALUE and str(ds.get("CodingSchemeDesignator", "") or "").strip() in _STANDARD_SCHEMES:
            return
        elif elem.VR in ("CS", "AE"):
            if keyword not in _CS_LABELS:
                return  # enumerated values (ValueType TEXT, PatientPosition HFS): structure, not text
            new = [self.scrubber.scrub(v, patterns=False, mask="X") for v in values]
        else:
            new = [self.scrubber.scrub(v) for v in values]
        if new != values:
            elem.value = new[0] if len(new) == 1 else new
            self.audit.append(AuditEntry(path, _tag_text(elem.tag), Action.CLEAN.value))

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

    @staticmethod
    def _push(elem: DataElement, path: str, kpath: tuple[str, ...],
              stack: list[tuple[Dataset, str, tuple[str, ...]]]) -> None:
        for i, item in enumerate(elem.value or ()):
            stack.append((item, f"{path}[{i}].", kpath))

    @staticmethod
    def _private_uid(elem: DataElement) -> bool:
        if elem.keyword in _PUBLIC_UID_KEYWORDS:
            return False
        return any(v and not v.startswith("1.2.840.10008.") for v in _values(elem))

    def _apply(self, ds: Dataset, elem: DataElement, action: Action, path: str, kpath: tuple[str, ...],
               originals: dict[str, str], stack: list[tuple[Dataset, str, tuple[str, ...]]]) -> None:
        vr = elem.VR
        if action is Action.REMOVE:
            del ds[elem.tag]
        elif vr == "SQ":
            if action is Action.ZERO:
                if self._type(kpath, elem.tag) in (1, 3):  # an empty sequence is valid only as Type 2
                    del ds[elem.tag]
                else:
                    elem.value = []
            else:
                self._push(elem, path, (*kpath, elem.keyword or _tag_text(elem.tag)), stack)
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
        elif vr == "PN":
            elem.value = elem.empty_value
        elif vr in _TEXT_VRS:
            mask = "X" if vr in ("CS", "AE") else "*"
            cleaned = [self.scrubber.scrub(v, patterns=vr not in ("CS", "AE"), mask=mask) for v in _values(elem)]
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


@functools.cache
def _keyword(tag: int) -> str:
    return dictionary_keyword(tag) if dictionary_has_tag(tag) else ""


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
    """Every element at every depth, items after their sequence (an explicit stack)."""
    stack: list[Iterator[DataElement]] = [iter(ds)]
    while stack:
        elem = next(stack[-1], None)
        if elem is None:
            stack.pop()
            continue
        yield elem
        if elem.VR == "SQ":
            for item in reversed(list(elem.value or ())):
                stack.append(iter(item))


def deidentify(ds: Dataset, profile: Profile, secret: Secret) -> Deidentified:
    """Shorthand for ``Deidentifier(profile, secret).deidentify(ds)``."""
    return Deidentifier(profile, secret).deidentify(ds)


def audit_records(entries: list[AuditEntry]) -> list[dict[str, Any]]:
    return [{"path": e.path, "tag": e.tag, "action": e.action} for e in entries]
