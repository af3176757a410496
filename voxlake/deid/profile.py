"""PS3.15 Annex E: the Application Level Confidentiality Profile, its options, and the action each
attribute gets.

The actions come from Table E.1-1 (:mod:`voxlake.deid._table`, generated from the standard); this
module resolves them for a chosen set of :class:`Option` and a user's recipe:

1. A recipe's action for the attribute, when it names one, wins over everything.
2. Else the option columns of the chosen options that have a code for the attribute. When several do
   and disagree (e.g. Calibration Date: K under Retain Device Identity, C under Retain Longitudinal
   Modified Dates), the more protective code wins: C over K.
3. Else the Basic Profile code.

Combined codes are then resolved by the attribute's Type in the IOD of the object (E.1.1):
X/Z → Z for Type 2; X/D, Z/D → D for Type 1; X/Z/D → Z for Type 2, D for Type 1. Type 3 takes the
first code. X/Z/U* (sequences of references) is always U: the sequence stays, its UIDs are replaced
and every other element in it is decided like any other; replaced UIDs disclose no more than an
empty sequence, and a SEG's frames stay linked to their source images.
**When the Type is not known**, voxlake assumes the strictest Type (1): a dummy or empty value
discloses no more than removal does, and the object stays valid (a SEG's Referenced Series keeps
its links). :data:`KNOWN_TYPES` holds the few attributes whose Type is the same in every IOD that
has them; callers may pass more per object.

Patient ID (Z/D) always resolves to D: voxlake's dummy is a keyed pseudonym, so one patient's
studies stay together in the research lake.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType
from typing import Any

from voxlake.deid import _table
from voxlake.errors import InvalidArgumentError, MissingExtraError

__all__ = [
    "CID_7050",
    "KNOWN_TYPES",
    "TABLE",
    "Action",
    "Attribute",
    "Option",
    "PrivateTag",
    "Profile",
    "Recipe",
]


class Action(StrEnum):
    """The action codes of PS3.15 Table E.1-1 (E.1.1 "De-identifier")."""

    DUMMY = "D"  # replace with a non-zero-length dummy value consistent with the VR
    ZERO = "Z"  # replace with a zero-length value (or a dummy)
    REMOVE = "X"
    KEEP = "K"
    CLEAN = "C"  # replace with values of similar meaning that hold no identifying information
    UID = "U"  # replace with a non-zero-length UID, consistently within the set of instances

    @classmethod
    def parse(cls, value: str | Action) -> Action:
        try:
            return cls(str(value).upper())
        except ValueError:
            raise InvalidArgumentError(
                f"action must be one of {', '.join(a.value for a in cls)}; got {value!r}"
            ) from None


class Option(StrEnum):
    """The options of PS3.15 E.3, by the names voxlake's CLI uses (``--option clean-descriptors``)."""

    CLEAN_PIXEL_DATA = "clean-pixel-data"
    CLEAN_RECOGNIZABLE_VISUAL_FEATURES = "clean-recognizable-visual-features"
    CLEAN_GRAPHICS = "clean-graphics"
    CLEAN_STRUCTURED_CONTENT = "clean-structured-content"
    CLEAN_DESCRIPTORS = "clean-descriptors"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain-longitudinal-full-dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain-longitudinal-modified-dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain-patient-characteristics"
    RETAIN_DEVICE_IDENTITY = "retain-device-identity"
    RETAIN_UIDS = "retain-uids"
    RETAIN_SAFE_PRIVATE = "retain-safe-private"
    RETAIN_INSTITUTION_IDENTITY = "retain-institution-identity"

    @classmethod
    def parse(cls, value: str | Option) -> Option:
        try:
            return cls(str(value).strip().lower().replace("_", "-"))
        except ValueError:
            raise InvalidArgumentError(
                f"option must be one of {', '.join(o.value for o in cls)}; got {value!r}"
            ) from None


# PS3.16 CID 7050 "De-identification Method": coding scheme DCM, (code value, code meaning).
CID_7050: Mapping[Option | None, tuple[str, str]] = MappingProxyType({
    None: ("113100", "Basic Application Confidentiality Profile"),
    Option.CLEAN_PIXEL_DATA: ("113101", "Clean Pixel Data Option"),
    Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: ("113102", "Clean Recognizable Visual Features Option"),
    Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
    Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
    Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
    Option.RETAIN_LONGITUDINAL_FULL_DATES: ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
        "113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
    Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
    Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
    Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
    Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
})


@dataclass(frozen=True, slots=True)
class Attribute:
    """One row of Table E.1-1. ``key`` is the tag as 8 lowercase hex digits, ``50xxxxxx`` / ``60xx3000``
    for repeating groups, or ``private`` for the row of all private attributes."""

    key: str
    name: str
    in_std_comp_iod: bool
    basic: str
    options: Mapping[Option, str]

    @property
    def tag(self) -> int | None:
        """The tag as an int, or None for repeating groups and the private row."""
        return int(self.key, 16) if all(c in "0123456789abcdef" for c in self.key) else None


def _load_table() -> Mapping[str, Attribute]:
    names = [Option(o) for o in _table.OPTIONS]
    rows = {}
    for key, name, std, basic, *codes in _table.ROWS:
        options = {o: c for o, c in zip(names, codes, strict=True) if c}
        rows[key] = Attribute(key, name, std, basic, MappingProxyType(options))
    return MappingProxyType(rows)


TABLE: Mapping[str, Attribute] = _load_table()
"""Table E.1-1 by key (see :class:`Attribute`)."""

# Types that are the same in every IOD holding the attribute (PS3.3 Patient, General Series, General
# Equipment, SOP Common, Contrast/Bolus, Content Identification modules).
KNOWN_TYPES: Mapping[int, int] = MappingProxyType({
    0x00100020: 2,  # Patient ID (Patient Module)
    0x00180010: 2,  # Contrast/Bolus Agent
    0x00700084: 2,  # Content Creator's Name
    0x00080013: 3,  # Instance Creation Time (SOP Common)
    0x00081070: 3,  # Operators' Name (General Series)
    0x00080080: 3,  # Institution Name (General Equipment)
    0x00081010: 3,  # Station Name (General Equipment)
    0x00081111: 3,  # Referenced Performed Procedure Step Sequence (General Series)
})


# Where voxlake cleans (C: the scrubber of voxlake.deid.scrub) what the Basic Profile empties: the
# names of a structure set's regions are its content ("Heart", "Lung_R"); emptied, an RT Structure
# Set is useless for research. The scrubber removes the patient's identifiers and PHI patterns.
CLEANED_BY_DEFAULT = frozenset({"30060026"})  # ROI Name


def resolve_code(code: str, iod_type: int | None) -> Action:
    """Resolve a Table code, combined ones included, for an attribute of Type ``iod_type`` (None:
    unknown, treated as Type 1; see the module docstring)."""
    parts = code.replace("*", "").split("/")
    if len(parts) == 1:
        return Action(parts[0])
    t = 1 if iod_type is None else iod_type
    # parts are ordered from Type 3 to Type 1: X/Z/D, X/Z/U*, X/Z, X/D, Z/D
    by_type = {"X": 3, "Z": 2, "D": 1, "U": 1}
    for p in parts:
        if by_type[p] <= t and (t != 2 or p != "D"):
            return Action(p)
    return Action(parts[-1])


@dataclass(frozen=True, slots=True)
class PrivateTag:
    """A private attribute by its block's Private Creator: group, creator, element offset in the block
    (``0x0019, "GEMS_ACQU_01", 0x24`` for (0019,xx24))."""

    group: int
    creator: str
    offset: int

    @classmethod
    def parse(cls, text: str) -> PrivateTag:
        """``"0019,GEMS_ACQU_01,24"`` (hex group and element offset)."""
        try:
            group, creator, offset = (p.strip() for p in text.split(","))
            tag = cls(int(group, 16), creator, int(offset, 16) & 0xFF)
        except ValueError:
            raise InvalidArgumentError(
                f"safe private tag must read GGGG,CREATOR,EE (e.g. 0019,GEMS_ACQU_01,24); got {text!r}"
            ) from None
        if tag.group % 2 == 0:
            raise InvalidArgumentError(f"safe private tag {text!r}: a private group is odd")
        return tag


@dataclass(frozen=True)
class Recipe:
    """A user's overrides: ``actions`` by tag (int) for any attribute, and the ``safe_private`` list
    that Retain Safe Private keeps. Read from a small YAML or JSON file::

        options: [retain-longitudinal-modified-dates, clean-descriptors]
        actions:
          PatientAge: K              # keyword, "(0010,1010)" or "00101010"
          "(0008,1030)": X
        safe_private:
          - "0019,GEMS_ACQU_01,24"
    """

    actions: Mapping[int, Action] = field(default_factory=dict)
    safe_private: frozenset[PrivateTag] = frozenset()
    options: tuple[Option, ...] = ()

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "recipe") -> Recipe:
        unknown = set(data) - {"options", "actions", "safe_private", "profile"}
        if unknown:
            raise InvalidArgumentError(
                f"{source}: unknown keys {sorted(unknown)}; valid: profile, options, actions, safe_private"
            )
        if str(data.get("profile", "basic")).lower() != "basic":
            raise InvalidArgumentError(f"{source}: profile must be basic; got {data['profile']!r}")
        actions = {parse_tag(k): Action.parse(v) for k, v in (data.get("actions") or {}).items()}
        safe = frozenset(PrivateTag.parse(t) for t in data.get("safe_private") or ())
        options = tuple(Option.parse(o) for o in data.get("options") or ())
        return cls(actions, safe, options)

    @classmethod
    def read(cls, path: str | Path) -> Recipe:
        """Read a recipe file (``.json``, or YAML otherwise)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read recipe {path}: {exc.strerror or exc}") from None
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            try:
                import yaml
            except ImportError as exc:
                raise MissingExtraError("YAML recipes need pyyaml: pip install 'voxlake[deid]'") from exc
            data = yaml.safe_load(text) or {}
        if not isinstance(data, Mapping):
            raise InvalidArgumentError(f"recipe {path}: expected a mapping at the top level")
        return cls.from_mapping(data, source=f"recipe {path}")


def parse_tag(text: str | int) -> int:
    """A tag from a keyword (``PatientAge``), ``(0010,1010)``, ``0010,1010`` or ``00101010``."""
    if isinstance(text, int):
        return text
    from pydicom.datadict import tag_for_keyword

    t = str(text).strip()
    found = tag_for_keyword(t)
    if found is not None:
        return int(found)
    hexed = t.strip("()").replace(",", "").replace(" ", "")
    if len(hexed) == 8:
        try:
            return int(hexed, 16)
        except ValueError:
            pass
    raise InvalidArgumentError(f"not a DICOM keyword or tag: {text!r} (e.g. PatientAge or (0010,1010))")


class Profile:
    """The Basic Application Level Confidentiality Profile with ``options`` and a ``recipe``.

    >>> p = Profile(["retain-longitudinal-modified-dates"])
    >>> p.action(0x00080020)   # Study Date: shifted (C) instead of emptied (Z)
    <Action.CLEAN: 'C'>
    """

    def __init__(self, options: Iterable[str | Option] = (), *, recipe: Recipe | None = None,
                 types: Mapping[int, int] | None = None) -> None:
        self.recipe = recipe or Recipe()
        chosen = {Option.parse(o) for o in options} | set(self.recipe.options)
        if {Option.RETAIN_LONGITUDINAL_FULL_DATES, Option.RETAIN_LONGITUDINAL_MODIFIED_DATES} <= chosen:
            raise InvalidArgumentError(
                "choose one of retain-longitudinal-full-dates and retain-longitudinal-modified-dates"
            )
        self.options: frozenset[Option] = frozenset(chosen)
        self.types: dict[int, int] = {**KNOWN_TYPES, **(types or {})}
        self._cache: dict[int, Action | None] = {}
        # how voxlake.deid.header.identity_of reads each (tag, VR) under this profile, filled as it goes
        self.identity_kinds: dict[tuple[int, str], str] = {}

    def __repr__(self) -> str:
        return f"Profile({sorted(o.value for o in self.options)!r})"

    def code(self, attribute: Attribute) -> str:
        """The Table code for ``attribute`` under the chosen options, before Type resolution."""
        if attribute.key in CLEANED_BY_DEFAULT:
            return "C"
        codes = {c for o, c in attribute.options.items() if o in self.options}
        if "C" in codes:
            return "C"
        if codes:
            return codes.pop()
        return attribute.basic

    def action(self, tag: int, iod_type: int | None = None) -> Action | None:
        """The action for a standard (even-group) attribute; None when the Table does not list it
        (the Basic Profile keeps those; the caller still remaps unregistered UIDs)."""
        if iod_type is None and tag in self._cache:
            return self._cache[tag]
        result = self._action(tag, iod_type)
        if iod_type is None:
            self._cache[tag] = result
        return result

    def _action(self, tag: int, iod_type: int | None) -> Action | None:
        if tag in self.recipe.actions:
            return self.recipe.actions[tag]
        row = TABLE.get(f"{tag:08x}")
        group, element = tag >> 16, tag & 0xFFFF
        if row is None and (group & 0xFF00) == 0x5000:
            row = TABLE["50xxxxxx"]
        if row is None and (group & 0xFF00) == 0x6000 and element in (0x3000, 0x4000):
            row = TABLE[f"60xx{element:04x}"]
        if row is None:
            return None
        if tag == 0x00100020 and row.basic == "Z/D" and self.code(row) == "Z/D":
            return Action.DUMMY
        if self.code(row) == "X/Z/U*":
            return Action.UID  # references stay, UIDs replaced (see the module docstring)
        return resolve_code(self.code(row), iod_type if iod_type is not None else self.types.get(tag))

    def private_action(self, tag: PrivateTag) -> Action:
        """Private attributes go (X) unless Retain Safe Private is chosen and the tag is on the
        recipe's safe list (C: kept, as a safe attribute needs no cleaning)."""
        if Option.RETAIN_SAFE_PRIVATE in self.options and tag in self.recipe.safe_private:
            return Action.CLEAN
        return Action.REMOVE

    def method_codes(self) -> list[tuple[str, str]]:
        """CID 7050 (code value, meaning) for the profile and each option used, in CID order."""
        return [code for o, code in CID_7050.items() if o is None or o in self.options]

    def method_text(self) -> str:
        """A De-identification Method (0012,0063) value (LO, at most 64 characters)."""
        short = {
            Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: "ModDates", Option.RETAIN_LONGITUDINAL_FULL_DATES: "Dates",
            Option.CLEAN_DESCRIPTORS: "CleanDesc", Option.RETAIN_UIDS: "UIDs",
            Option.RETAIN_PATIENT_CHARACTERISTICS: "PatChars", Option.RETAIN_DEVICE_IDENTITY: "DevId",
            Option.RETAIN_INSTITUTION_IDENTITY: "InstId", Option.RETAIN_SAFE_PRIVATE: "SafePriv",
            Option.CLEAN_STRUCTURED_CONTENT: "CleanSR", Option.CLEAN_GRAPHICS: "CleanGraph",
            Option.CLEAN_PIXEL_DATA: "CleanPix", Option.CLEAN_RECOGNIZABLE_VISUAL_FEATURES: "CleanVis",
        }
        parts = [short[o] for o in CID_7050 if o is not None and o in self.options]
        return ("voxlake PS3.15 Basic" + ("+" + "+".join(parts) if parts else ""))[:64]
