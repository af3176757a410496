"""Query/Retrieve over the lake (PS3.4 Annex C): C-FIND identifiers as SQL, and the instances a
C-MOVE or C-GET sends.

A C-FIND identifier becomes one parameterised query over the ``instances`` view, grouped by the
unique key of the Query/Retrieve Level, so that every level and both information models (Patient
Root, Study Root) share one translation. Promoted columns are used where they exist, ``dicom_tag(meta,
...)`` otherwise, so any attribute of the header can be matched and returned.

Matching (PS3.4 C.2.2.2): single value; universal (empty value, or ``*``); wild card (``*``, ``?``) for
the string VRs, case-insensitive for PN; range for DA, TM and DT (``a-b``, ``-b``, ``a-``; a partial
upper bound includes all it abbreviates, ``-1200`` includes 12:00:59); UID list (backslash-separated
values). Not implemented: sequence matching (a sequence key is returned empty and matches
everything), combined date-time range matching of a DA/TM pair (each is matched alone), and
relational queries. Keys of levels below the query level match relationally (a study matches if
one of its instances does), and the counts of a response (NumberOfStudyRelatedInstances...) then
count the matching instances only; hierarchical queries as the standard defines them never do that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from voxlake.lake import matching


class Level(StrEnum):
    """Query/Retrieve Level (0008,0052)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class Model(StrEnum):
    """Query/Retrieve information model (PS3.4 C.6): which levels exist and which keys are needed."""

    PATIENT_ROOT = "PATIENT_ROOT"
    STUDY_ROOT = "STUDY_ROOT"


#: SOP Class UID → information model, for FIND, MOVE and GET.
MODELS: dict[str, Model] = {
    "1.2.840.10008.5.1.4.1.2.1.1": Model.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.2": Model.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.1.3": Model.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": Model.STUDY_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": Model.STUDY_ROOT,
}

#: The unique key of each level (PS3.4 C.6.1.1, C.6.2.1).
UNIQUE_KEY = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}

_LEVELS = {
    Model.PATIENT_ROOT: [Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE],
    Model.STUDY_ROOT: [Level.STUDY, Level.SERIES, Level.IMAGE],
}

#: Return keys computed over the matching instances of a group, by level.
_AGGREGATES: dict[Level, dict[str, str]] = {
    Level.PATIENT: {
        "NumberOfPatientRelatedStudies": "count(DISTINCT StudyInstanceUID)",
        "NumberOfPatientRelatedSeries": "count(DISTINCT SeriesInstanceUID)",
        "NumberOfPatientRelatedInstances": "count(*)",
    },
    Level.STUDY: {
        "NumberOfStudyRelatedSeries": "count(DISTINCT SeriesInstanceUID)",
        "NumberOfStudyRelatedInstances": "count(*)",
        "ModalitiesInStudy": "string_agg(DISTINCT Modality, '\\' ORDER BY Modality)",
        "SOPClassesInStudy": "string_agg(DISTINCT SOPClassUID, '\\' ORDER BY SOPClassUID)",
    },
    Level.SERIES: {"NumberOfSeriesRelatedInstances": "count(*)"},
    Level.IMAGE: {},
}

_KIND = matching.KIND
_INT_VRS = matching.INT_VRS
_FLOAT_VRS = matching.FLOAT_VRS
#: Not matched and not returned: the identifier's own control attributes.
_CONTROL = {Tag("QueryRetrieveLevel"), Tag("SpecificCharacterSet"), Tag("RetrieveAETitle")}


class IdentifierError(matching.MatchError):
    """The identifier does not fit the information model (C-FIND/C-MOVE/C-GET status 0xA900)."""


@dataclass
class Query:
    """A parameterised SQL statement and how to turn its rows into response identifiers."""

    sql: str
    params: list[Any]
    level: Level
    returns: list[tuple[int, str, str]] = field(default_factory=list)  # (tag, VR, column alias)

    @property
    def uses_header(self) -> bool:
        """True when a key is matched or returned from ``meta`` (not a promoted column): such a
        query needs the lake's full ``instances`` view, not the catalog."""
        return "dicom_tag(meta" in self.sql


def model_for(sop_class_uid: str) -> Model:
    try:
        return MODELS[str(sop_class_uid)]
    except KeyError:
        raise IdentifierError(f"{sop_class_uid} is not a Patient or Study Root Q/R SOP Class") from None


def query_level(identifier: Dataset, model: Model) -> Level:
    """The identifier's level, checked against the model (Study Root has no PATIENT level)."""
    raw = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw)
    except ValueError:
        raise IdentifierError(
            f"QueryRetrieveLevel {raw!r} must be one of {', '.join(lv.value for lv in _LEVELS[model])}"
        ) from None
    if level not in _LEVELS[model]:
        raise IdentifierError(f"level {level.value} does not exist in the {model.value} model")
    return level


def _check_higher_keys(identifier: Dataset, model: Model, level: Level) -> None:
    """PS3.4 C.4.1.2.1: below the root, the unique keys of every higher level are given."""
    levels = _LEVELS[model]
    for higher in levels[: levels.index(level)]:
        keyword = UNIQUE_KEY[higher]
        if not _text_values(identifier.get(keyword)):
            raise IdentifierError(f"a {level.value} query in the {model.value} model needs {keyword}")


def build_find(identifier: Dataset, model: Model) -> Query:
    """Translate a C-FIND identifier into one SQL statement over ``instances``."""
    level = query_level(identifier, model)
    _check_higher_keys(identifier, model, level)
    group = UNIQUE_KEY[level]
    aggregates = _AGGREGATES[level]
    where: list[str] = []
    having: list[str] = []
    params: list[Any] = []
    having_params: list[Any] = []
    selects = [f'"{group}" AS k0']
    returns: list[tuple[int, str, str]] = []
    # The unique keys of the level and above are always returned (C.4.1.1.3.2).
    keys = {elem.tag: elem for elem in identifier if elem.tag not in _CONTROL and elem.tag.group != 0x0002}
    levels = _LEVELS[model]
    for lv in levels[: levels.index(level) + 1]:
        tag = Tag(UNIQUE_KEY[lv])
        if tag not in keys:
            returns.append((tag, "LO" if lv is Level.PATIENT else "UI", ""))
    for tag, elem in keys.items():
        if tag.is_private or elem.tag.element == 0:
            continue
        keyword = keyword_for_tag(tag)
        vr = elem.VR if elem.VR not in ("UN", None) else _vr_of(tag)
        alias = f"k{len(selects)}"
        if keyword in aggregates:
            selects.append(f"{aggregates[keyword]} AS {alias}")
            if keyword == "ModalitiesInStudy" and (values := _text_values(elem)):
                having.append(f"list_has_any(string_split({aggregates[keyword]}, '\\'), ?)")
                having_params.append(values)
            returns.append((tag, vr, alias))
            continue
        if vr == "SQ":
            returns.append((tag, vr, ""))  # sequence matching is not implemented
            continue
        expr = _column(keyword, tag)
        selects.append(f"any_value({expr}) AS {alias}")
        returns.append((tag, vr, alias))
        condition = matching.condition(expr, _kind(keyword), vr, _text_values(elem))
        if condition is not None:
            where.append(condition[0])
            params.extend(condition[1])
    for i, (tag, vr, alias) in enumerate(returns):
        if alias == "" and keyword_for_tag(tag) == group:
            returns[i] = (tag, vr, "k0")
        elif alias == "" and vr != "SQ":
            higher = keyword_for_tag(tag)
            selects.append(f'any_value("{higher}") AS k{len(selects)}')
            returns[i] = (tag, vr, f"k{len(selects) - 1}")
    sql = f"SELECT {', '.join(selects)} FROM instances"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f' GROUP BY "{group}"'
    if having:
        sql += " HAVING " + " AND ".join(having)
    sql += f' ORDER BY "{group}"'
    return Query(sql, params + having_params, level, returns)


def find(con: Any, identifier: Dataset, model: Model, *, ae_title: str) -> Iterator[Dataset]:
    """The C-FIND responses' identifiers for ``identifier``, one per matching entity."""
    return responses(con, build_find(identifier, model), ae_title=ae_title)


def responses(con: Any, query: Query, *, ae_title: str) -> Iterator[Dataset]:
    """Run ``query`` on ``con`` (the lake's views or a catalog cursor): one identifier per row."""
    cursor = con.execute(query.sql, query.params)
    names = [d[0] for d in cursor.description]
    while rows := cursor.fetchmany(256):
        for row in rows:
            values = dict(zip(names, row, strict=True))
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.QueryRetrieveLevel = query.level.value
            ds.RetrieveAETitle = ae_title
            for tag, vr, alias in query.returns:
                ds.add_new(tag, vr, _dicom_value(values.get(alias) if alias else None, vr))
            yield ds


@dataclass(frozen=True, slots=True)
class Match:
    """An instance a C-MOVE or C-GET sends."""

    uri: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sop_instance_uid: str


def build_retrieve(identifier: Dataset, model: Model) -> tuple[str, list[Any]]:
    """SQL selecting the instances a C-MOVE or C-GET identifies: only the unique keys of the level
    and above count (PS3.4 C.4.2.2.1), and the level's own one must be given."""
    level = query_level(identifier, model)
    _check_higher_keys(identifier, model, level)
    levels = _LEVELS[model]
    where, params = [], []
    for lv in levels[: levels.index(level) + 1]:
        keyword = UNIQUE_KEY[lv]
        values = _text_values(identifier.get(keyword))
        if not values:
            if lv is level:
                raise IdentifierError(f"a {level.value} retrieve needs {keyword}")
            continue
        where.append(f'"{keyword}" IN ({", ".join("?" * len(values))})')
        params.extend(values)
    sql = (
        "SELECT uri, SOPClassUID, TransferSyntaxUID, SOPInstanceUID FROM instances WHERE "
        + " AND ".join(where)
        + " ORDER BY StudyInstanceUID, SeriesInstanceUID, InstanceNumber, uri"
    )
    return sql, params


def retrieve(con: Any, identifier: Dataset, model: Model) -> list[Match]:
    """The instances a C-MOVE or C-GET identifier names, in study, series, instance order."""
    sql, params = build_retrieve(identifier, model)
    return [Match(*row) for row in con.execute(sql, params).fetchall()]


# -- matching -----------------------------------------------------------------------------------


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _kind(keyword: str | None) -> str:
    return _KIND.get(keyword or "", "meta")


def _column(keyword: str | None, tag: int) -> str:
    if keyword in _KIND and _KIND[keyword] != "floats":
        return f'"{keyword}"'
    return f"dicom_tag(meta, '{keyword or f'{tag:08X}'}')"


def _text_values(elem: Any) -> list[str]:
    """The non-empty values of a query element as text (a list for UID list matching)."""
    if elem is None:
        return []
    value = elem.value if hasattr(elem, "value") else elem
    if value is None:
        return []
    items = list(value) if isinstance(value, (MultiValue, list, tuple)) else [value]
    out = []
    for item in items:
        text = str(item).strip().strip("\x00")
        if text:
            out.append(text)
    return out


# -- responses ----------------------------------------------------------------------------------


def _dicom_value(value: Any, vr: str) -> Any:
    """A lake value (typed column or ``dicom_tag`` text) as a pydicom element value; '' if unknown."""
    if value is None or vr == "SQ":
        return [] if vr == "SQ" else ""
    if isinstance(value, dt.date):
        return value.strftime("%Y%m%d")
    if isinstance(value, (list, tuple)):
        return [_dicom_value(v, vr) for v in value]
    if vr == "TM" and isinstance(value, str):
        return value.replace(":", "")
    if isinstance(value, str) and vr in _INT_VRS - {"IS"} | {"FL", "FD"}:
        try:
            parsed = [int(v) if vr not in ("FL", "FD") else float(v) for v in value.split("\\")]
        except ValueError:
            return ""
        return parsed[0] if len(parsed) == 1 else parsed
    if isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT"):
        return value.split("\\")
    if isinstance(value, (int, float)) and vr not in _INT_VRS | _FLOAT_VRS:
        return str(value)
    if vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN", "AT"):
        return None
    return value
