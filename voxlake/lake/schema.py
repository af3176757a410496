"""The lake's tables and their columns: one place for both.

Promoted columns of ``instances`` are named by their DICOM keyword, as in the IDC index, and are
typed (dates as DATE, numbers as numbers); the complete header stays in ``meta`` as DICOM JSON.
Times stay text ('HH:MM:SS.ffffff') because Delta Lake has no TIME type; ``CAST(StudyTime AS TIME)``
works in DuckDB.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa

#: (keyword, tag, kind) for each promoted column of the first release, in table order.
#: kind: str, pn (PersonName, Alphabetic group), date, time, int, float, floats (multi-valued).
_PROMOTED_FIRST: list[tuple[str, str, str]] = [
    ("PatientID", "00100020", "str"),
    ("PatientName", "00100010", "pn"),
    ("PatientSex", "00100040", "str"),
    ("PatientBirthDate", "00100030", "date"),
    ("PatientAge", "00101010", "str"),
    ("StudyInstanceUID", "0020000D", "str"),
    ("StudyID", "00200010", "str"),
    ("StudyDate", "00080020", "date"),
    ("StudyTime", "00080030", "time"),
    ("StudyDescription", "00081030", "str"),
    ("AccessionNumber", "00080050", "str"),
    ("SeriesInstanceUID", "0020000E", "str"),
    ("SeriesNumber", "00200011", "int"),
    ("SeriesDate", "00080021", "date"),
    ("SeriesTime", "00080031", "time"),
    ("SeriesDescription", "0008103E", "str"),
    ("Modality", "00080060", "str"),
    ("BodyPartExamined", "00180015", "str"),
    ("SOPInstanceUID", "00080018", "str"),
    ("SOPClassUID", "00080016", "str"),
    ("InstanceNumber", "00200013", "int"),
    ("Manufacturer", "00080070", "str"),
    ("ManufacturerModelName", "00081090", "str"),
    ("InstitutionName", "00080080", "str"),
    ("TransferSyntaxUID", "00020010", "str"),
    ("Rows", "00280010", "int"),
    ("Columns", "00280011", "int"),
    ("NumberOfFrames", "00280008", "int"),
    ("BitsAllocated", "00280100", "int"),
    ("PhotometricInterpretation", "00280004", "str"),
    ("PixelSpacing", "00280030", "floats"),
    ("SliceThickness", "00180050", "float"),
    ("ImagePositionPatient", "00200032", "floats"),
    ("ImageOrientationPatient", "00200037", "floats"),
]
#: Promoted since (OHIF's study list asks for ReferringPhysicianName): at the end of the table, so
#: that an older lake gains them by schema evolution; its older rows hold NULL there, and the
#: catalog fills them from ``meta`` (:mod:`voxlake.lake.catalog`).
PROMOTED_LATER: list[tuple[str, str, str]] = [
    ("ReferringPhysicianName", "00080090", "pn"),
]
PROMOTED = _PROMOTED_FIRST + PROMOTED_LATER

_ARROW_KIND = {
    "str": pa.string(),
    "pn": pa.string(),
    "date": pa.date32(),
    "time": pa.string(),
    "int": pa.int64(),
    "float": pa.float64(),
    "floats": pa.list_(pa.float64()),
}

#: Where enhanced (multi-frame) objects keep geometry: (column, functional group macro, attribute).
_SHARED_FG = "52009229"
_PER_FRAME_FG = "52009230"
_FUNCTIONAL_GROUP_FALLBACK = {
    "PixelSpacing": ("00289110", "00280030"),
    "SliceThickness": ("00289110", "00180050"),
    "ImageOrientationPatient": ("00209116", "00200037"),
    "ImagePositionPatient": ("00209113", "00200032"),
}

UTC = "UTC"

FILE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("uri", pa.string()),
    ("size", pa.int64()),
    ("mtime", pa.timestamp("us", tz=UTC)),
    ("sha256", pa.string()),
    ("pixel_data_offset", pa.int64()),
    ("pixel_data_length", pa.int64()),
    ("has_pixels", pa.bool_()),
]

#: The frame index of encapsulated (compressed) Pixel Data, for WADO-RS frame retrieval without
#: parsing the file: one entry per frame, in frame order. ``frame_offsets[i]`` is the absolute byte
#: offset in the file of the value of frame i+1's first fragment; ``frame_lengths[i]`` runs from there
#: to the end of its last fragment's value. A frame of one fragment is exactly that range; a frame
#: of several fragments is that range minus the 8-byte item headers (FFFE,E000 + length) between
#: them, which :func:`voxlake.dicom.frames.read_frames` strips. Found from the Extended Offset
#: Table, the Basic Offset Table, or the fragments themselves as pydicom does. NULL for native
#: (uncompressed) Pixel Data, where frame i starts at ``pixel_data_offset + i * frame size``, and
#: when the frames cannot be located.
FRAME_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("frame_offsets", pa.list_(pa.int64())),
    ("frame_lengths", pa.list_(pa.int64())),
]

INSTANCES = pa.schema(
    [pa.field(name, _ARROW_KIND[kind]) for name, _tag, kind in _PROMOTED_FIRST]
    + [pa.field(name, t) for name, t in FILE_COLUMNS]
    + [
        pa.field("meta", pa.string()),
        pa.field("is_partial", pa.bool_()),
        pa.field("parse_warnings", pa.list_(pa.string())),
        pa.field("source", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("indexed_at", pa.timestamp("us", tz=UTC)),
    ]
    # Added after the first release: lakes written before lack them (readers fill NULL).
    + [pa.field(name, t) for name, t in FRAME_COLUMNS]
    + [pa.field(name, _ARROW_KIND[kind]) for name, _tag, kind in PROMOTED_LATER]
)

INGEST_ERRORS = pa.schema(
    [
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.timestamp("us", tz=UTC)),
        ("error_class", pa.string()),
        ("message", pa.string()),
        ("source", pa.string()),
        ("run_id", pa.string()),
        ("time", pa.timestamp("us", tz=UTC)),
    ]
)

#: One row per source unit (file or archive) a run looked at: the state incremental runs compare.
INGEST_FILES = pa.schema(
    [
        ("uri", pa.string()),
        ("size", pa.int64()),
        ("mtime", pa.timestamp("us", tz=UTC)),
        ("status", pa.string()),  # indexed | skipped | error | archive | retry (reading failed)
        ("instances", pa.int64()),
        ("errors", pa.int64()),
        ("skipped", pa.int64()),
        ("source", pa.string()),
        ("run_id", pa.string()),
    ]
)

INGEST_RUNS = pa.schema(
    [
        ("run_id", pa.string()),
        ("source", pa.string()),
        ("engine", pa.string()),
        ("workers", pa.int64()),
        ("mode", pa.string()),
        ("files_seen", pa.int64()),
        ("files_unchanged", pa.int64()),
        ("indexed", pa.int64()),
        ("skipped", pa.int64()),
        ("errors", pa.int64()),
        ("partial", pa.int64()),
        ("bytes", pa.int64()),
        ("started_at", pa.timestamp("us", tz=UTC)),
        ("ended_at", pa.timestamp("us", tz=UTC)),
        ("voxlake_version", pa.string()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "instances": INSTANCES,
    "ingest_errors": INGEST_ERRORS,
    "ingest_files": INGEST_FILES,
    "ingest_runs": INGEST_RUNS,
}


def _first(element: dict[str, Any] | None) -> Any:
    if not element:
        return None
    value = element.get("Value")
    if not value:
        return None
    return value[0]


def parse_da(text: str) -> dt.date | None:
    """A DA value (YYYYMMDD, or the pre-1993 YYYY.MM.DD) as a date; None if invalid."""
    digits = text.replace(".", "").strip()
    if len(digits) != 8 or not digits.isdigit():
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None


def parse_tm(text: str) -> str | None:
    """A TM value (HH[MM[SS[.F{1,6}]]], or the older HH:MM:SS) as 'HH:MM:SS[.ffffff]'."""
    t = text.strip().replace(":", "")
    main, _, frac = t.partition(".")
    if not main.isdigit() or len(main) not in (2, 4, 6) or (frac and not frac.isdigit()):
        return None
    hh, mm, ss = int(main[:2]), int(main[2:4] or 0), int(main[4:6] or 0)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    out = f"{hh:02d}:{mm:02d}:{min(ss, 59):02d}"
    return f"{out}.{frac[:6]}" if frac else out


def promoted_values(dataset: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    """The promoted columns of one instance from its DICOM JSON; invalid values become NULL
    with a warning naming the attribute."""
    out: dict[str, Any] = {}
    for name, tag, kind in PROMOTED:
        element = dataset.get(tag)
        if element is None and name in _FUNCTIONAL_GROUP_FALLBACK:
            element = _functional_group(dataset, name)
        if element is None:
            out[name] = None
            continue
        values = element.get("Value")
        if not values:
            out[name] = None
            continue
        first = values[0]
        value: Any = None
        if kind == "str":
            value = first if isinstance(first, str) else (None if first is None else str(first))
        elif kind == "pn":
            value = first.get("Alphabetic") if isinstance(first, dict) else None
        elif kind == "date":
            value = parse_da(first) if isinstance(first, str) else None
            if value is None:
                warnings.append(f"{name} {first!r} is not a valid DA (YYYYMMDD)")
        elif kind == "time":
            value = parse_tm(first) if isinstance(first, str) else None
            if value is None:
                warnings.append(f"{name} {first!r} is not a valid TM (HHMMSS.FFFFFF)")
        elif kind == "int":
            value = first if isinstance(first, int) else None
        elif kind == "float":
            value = float(first) if isinstance(first, (int, float)) else None
        elif kind == "floats" and all(isinstance(v, (int, float)) for v in values):
            value = [float(v) for v in values]
        out[name] = value
    return out


def _functional_group(dataset: dict[str, Any], name: str) -> dict[str, Any] | None:
    macro, attribute = _FUNCTIONAL_GROUP_FALLBACK[name]
    for fg in (_SHARED_FG, _PER_FRAME_FG):
        item = _first(dataset.get(fg))
        if isinstance(item, dict):
            inner = _first(item.get(macro))
            if isinstance(inner, dict) and attribute in inner:
                return inner[attribute]
    return None
