"""Value representations (PS3.5 6.2) and the data dictionary lookups the parser needs.

The dictionary itself comes from pydicom (generated from the standard), never typed by hand.
"""

from __future__ import annotations

from functools import lru_cache

#: VRs whose explicit-VR header has two reserved bytes and a 32-bit length (PS3.5 7.1.2).
LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"})

#: Every VR the standard defines; anything else in an explicit-VR header is a malformed element.
ALL_VRS = frozenset(
    {
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO", "LT", "OB", "OD", "OF",
        "OL", "OV", "OW", "PN", "SH", "SL", "SQ", "SS", "ST", "SV", "TM", "UC", "UI", "UL", "UN",
        "UR", "US", "UT", "UV",
    }
)  # fmt: skip

#: Text VRs that hold one value (backslash is an ordinary character in them).
SINGLE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UR"})

#: Text VRs affected by Specific Character Set (PS3.5 6.1.2.3).
CHARSET_VRS = frozenset({"SH", "LO", "ST", "PN", "LT", "UC", "UT"})

#: Text VRs in the default repertoire only.
ASCII_VRS = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "TM", "UI", "UR"})

#: Binary numeric VRs and their struct codes (little-endian sizes).
NUMERIC_VRS: dict[str, tuple[str, int]] = {
    "US": ("H", 2),
    "SS": ("h", 2),
    "UL": ("L", 4),
    "SL": ("l", 4),
    "FL": ("f", 4),
    "FD": ("d", 8),
    "SV": ("q", 8),
    "UV": ("Q", 8),
}

#: VRs that are opaque bytes: inline when small, a BulkDataURI when large.
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})

#: Pixel data elements are always bulk data, whatever their size.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})

ITEM = 0xFFFEE000
ITEM_DELIMITATION = 0xFFFEE00D
SEQUENCE_DELIMITATION = 0xFFFEE0DD
UNDEFINED_LENGTH = 0xFFFFFFFF


def _build_tables() -> tuple[dict[int, str], dict[str, int], dict[int, str]]:
    from pydicom.datadict import DicomDictionary

    vrs: dict[int, str] = {}
    keywords: dict[str, int] = {}
    names: dict[int, str] = {}
    for tag, (vr, _vm, _name, _retired, keyword) in DicomDictionary.items():
        vrs[tag] = vr
        if keyword:
            keywords[keyword] = tag
            names[tag] = keyword
    return vrs, keywords, names


_VRS, _KEYWORDS, _NAMES = _build_tables()


@lru_cache(maxsize=4096)
def _repeater_vr(tag: int) -> str:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def dictionary_vr(tag: int) -> str:
    """The VR the data dictionary gives a tag (possibly ambiguous, e.g. ``'US or SS'``), else ``'UN'``.

    Private tags and group lengths are not in the public dictionary.
    """
    vr = _VRS.get(tag)
    if vr is not None:
        return vr
    if tag & 0xFFFF == 0:
        return "UL"  # group length (PS3.5 7.2)
    if (tag >> 16) & 1:
        return "UN"  # private: only the private creator elements are known
    return _repeater_vr(tag)


def tag_for_keyword(keyword: str) -> int | None:
    """The tag of a data dictionary keyword such as ``'StudyInstanceUID'``, or ``None``."""
    return _KEYWORDS.get(keyword)


def keyword_for_tag(tag: int) -> str | None:
    """The data dictionary keyword of a tag, or ``None`` for private and unknown tags."""
    return _NAMES.get(tag)
