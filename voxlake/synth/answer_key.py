"""The answer key of injected PHI: every value, where it was put, and what a correct
de-identification must do with it.

Expected actions follow PS3.15 Table E.1-1, Basic Application Level Confidentiality Profile with
the Retain Longitudinal Temporal Information with Modified Dates Option (:data:`PROFILE`); the
Table's code for the attribute that decides is in ``basic_profile``:

* ``remove`` (X, and X/Z, X/D, X/Z/D: the value must go; an empty or dummy attribute is also
  correct where the IOD needs it), and everything inside a sequence the Table removes, and every
  private attribute;
* ``replace`` (Z, D, Z/D: the attribute stays, empty or with a dummy value);
* ``replace-consistently`` (U: the same original gives the same replacement in every file; also
  PatientID, where voxlake needs a consistent pseudonym to keep a patient's studies together);
* ``shift-date`` (dates and times the option modifies: shift, by the same interval for a patient);
* ``clean`` (PHI inside free text the Clean Descriptors Option keeps, or burned into pixels: the
  value must go, the rest may stay; removing the whole attribute, as the Basic Profile does, is
  correct too);
* ``keep`` (look-alikes that are not PHI, such as Manufacturer: removing them is a false positive).

The key is written as Parquet and JSON, sorted, without timestamps: the same cohort gives the same
bytes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import astuple, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

__all__ = ["COLUMNS", "PROFILE", "Action", "AnswerKey", "Context", "Entry", "Kind"]

PROFILE = (
    "PS3.15 Table E.1-1 Basic Application Level Confidentiality Profile with the "
    "Retain Longitudinal Temporal Information with Modified Dates Option"
)


class Action(StrEnum):
    """What a correct de-identification must do with a value (see the module docstring)."""

    REMOVE = "remove"
    REPLACE = "replace"
    REPLACE_CONSISTENTLY = "replace-consistently"
    SHIFT_DATE = "shift-date"
    CLEAN = "clean"
    KEEP = "keep"


class Kind(StrEnum):
    """What a value is, so that a score can be broken down by kind."""

    PATIENT_NAME = "patient-name"
    PHYSICIAN_NAME = "physician-name"
    OPERATOR_NAME = "operator-name"
    PERSON_NAME = "person-name"
    ID = "id"
    SSN = "ssn"
    DATE = "date"
    TIME = "time"
    DATETIME = "datetime"
    AGE = "age"
    CHARACTERISTIC = "patient-characteristic"
    ADDRESS = "address"
    PHONE = "phone"
    EMAIL = "email"
    INSTITUTION = "institution"
    DEPARTMENT = "department"
    STATION = "station"
    DEVICE_ID = "device-id"
    UID = "uid"
    NON_PHI = "non-phi"


class Context(StrEnum):
    """Where a value sits, the places a de-identifier must look."""

    STANDARD = "standard"
    SEQUENCE = "sequence"
    PRIVATE = "private"
    FREE_TEXT = "free-text"
    PIXELS = "pixels"


@dataclass(frozen=True, slots=True)
class Entry:
    """One PHI value (or look-alike) in one file, where it is, and what must happen to it.

    ``location`` is a tag path such as ``RequestAttributesSequence[0].RequestedProcedureID`` (private
    tags as ``(0011,1001)``), or ``pixels`` with the 0-based ``frame_index`` and the box ``x0, y0,
    x1, y1`` (pixel columns and rows, end exclusive) that holds the rendered ``value``. In free text,
    ``value`` is the part of the attribute's text that is PHI."""

    file: str
    SOPInstanceUID: str
    PatientID: str
    location: str
    keyword: str
    tag: str
    vr: str
    private_creator: str
    frame_index: int | None
    x0: int | None
    y0: int | None
    x1: int | None
    y1: int | None
    value: str
    kind: str
    context: str
    action: str
    basic_profile: str

    def sort_key(self) -> tuple[Any, ...]:
        natural = tuple((0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", self.location))
        box = tuple(-1 if v is None else v for v in (self.frame_index, self.y0, self.x0))
        return (self.file, natural, box, self.kind, self.value)


COLUMNS = tuple(f.name for f in fields(Entry))


class AnswerKey:
    """The entries of a cohort, written sorted so that the same cohort gives the same bytes."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.entries: list[Entry] = list(entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries)

    def extend(self, entries: Iterable[Entry]) -> None:
        """Add entries, e.g. those of an injector that ran in another process."""
        self.entries.extend(entries)

    def sorted(self) -> list[Entry]:
        return sorted(self.entries, key=Entry.sort_key)

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(COLUMNS, astuple(e), strict=True)) for e in self.sorted()]

    def to_arrow(self) -> Any:
        import pyarrow as pa

        ints = {"frame_index", "x0", "y0", "x1", "y1"}
        schema = pa.schema(
            [pa.field(c, pa.int32() if c in ints else pa.string(), nullable=c in ints) for c in COLUMNS],
            metadata={"voxlake.profile": PROFILE},
        )
        rows = self.sorted()
        return pa.table({c: [getattr(e, c) for e in rows] for c in COLUMNS}, schema=schema)

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``<path>.parquet`` and ``<path>.json`` (``path`` without suffix, or a directory, which
        gets ``answer_key.*``); returns both paths."""
        import pyarrow.parquet as pq

        path = Path(path)
        if path.is_dir():
            path = path / "answer_key"
        elif path.suffix in (".parquet", ".json"):
            path = path.with_suffix("")
        path.parent.mkdir(parents=True, exist_ok=True)
        parquet, json_path = path.with_name(path.name + ".parquet"), path.with_name(path.name + ".json")
        pq.write_table(self.to_arrow(), parquet, compression="zstd")
        document = {"profile": PROFILE, "actions": [a.value for a in Action], "columns": list(COLUMNS),
                    "entries": self.records()}
        json_path.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        return parquet, json_path

    @classmethod
    def read(cls, path: str | Path) -> AnswerKey:
        """Read a key written by :meth:`write` (its ``.json`` or ``.parquet``)."""
        path = Path(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return cls(Entry(**row) for row in pq.read_table(path).to_pylist())
        document = json.loads(path.read_text(encoding="utf-8"))
        return cls(Entry(**row) for row in document["entries"])
