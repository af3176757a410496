"""QIDO-RS (PS3.18 10.6): search for studies, series and instances, answered from the catalog.

Every standard resource is served: ``/studies``, ``/studies/{study}/series``, ``/series``,
``/studies/{study}/series/{series}/instances``, ``/studies/{study}/instances``, ``/instances``.

Matching (PS3.18 8.3.4.1, PS3.4 C.2.2.2), by keyword (``PatientName``) or tag (``00100010``), on
every attribute the catalog holds (the lake's promoted columns and the roll-ups such as
``ModalitiesInStudy`` and ``NumberOfStudyRelatedInstances``), with :mod:`voxlake.lake.matching`:
single value, universal, ``*``/``?`` wild cards (case-insensitive for PN), DA/TM ranges, UID lists
(comma- or backslash-separated; CS values such as ``ModalitiesInStudy=CT,MR`` too). An attribute of
a lower level matches relationally (``/studies?Modality=SEG``: studies with a SEG series). A known
attribute the catalog does not hold is ignored, with a ``Warning`` header saying so (PS3.18 8.3.4.1).

``fuzzymatching=true`` (PS3.18 8.3.4.1.1) applies to person names only: a value without wild cards
matches, case-insensitively, any name whose family, given, middle... component (or any word of one)
begins with it: ``PatientName=jo`` finds ``DOE^JOHN`` and ``JONES^ANN``.

Results: the default attributes of PS3.18 Tables 10.6.3-3 to 10.6.3-5 that the lake holds, plus
RetrieveURL, InstanceAvailability and the level's unique keys and those above it; ``includefield``
(repeated or comma-separated; ``all`` = every attribute the catalog holds at that level) adds more,
an attribute the catalog lacks being read from the header (``meta``) of one instance of each result;
an attribute of a lower level (``Modality`` of a study, which OHIF's study list asks for) has no
single value there and comes back empty (``ModalitiesInStudy`` answers it).
Order is stable: studies newest first (StudyDate, StudyTime, then UID); series by study, SeriesNumber,
UID; instances by study, series, InstanceNumber, UID. ``limit``/``offset`` page it; a response cut by
``limit`` or by the server's maximum carries ``Warning: 299 ... "There are additional results..."``.
No match: 204 No Content (PS3.18 10.6.3.2); dicomweb-client and OHIF read it as an empty list.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import datetime as dt
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from voxlake.lake import matching
from voxlake.server import urls
from voxlake.server.errors import bad_request, not_acceptable

#: Query parameters that are not attributes (PS3.18 8.3.4).
_CONTROL = {"limit", "offset", "includefield", "fuzzymatching", "accept", "charset"}
_JSON_TYPES = {"application/dicom+json", "application/json", "*/*", "application/*", "*"}
_ADDITIONAL_RESULTS = '"There are additional results that can be requested"'


class Level(StrEnum):
    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


_TABLE = {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}
_KEY = {Level.STUDY: "StudyInstanceUID", Level.SERIES: "SeriesInstanceUID", Level.INSTANCE: "SOPInstanceUID"}
#: Higher-level tables joined at a level, with their alias.
_HIGHER = {
    Level.STUDY: [],
    Level.SERIES: [("studies", "st", "StudyInstanceUID")],
    Level.INSTANCE: [("series", "se", "SeriesInstanceUID"), ("studies", "st", "StudyInstanceUID")],
}
#: Lower-level tables: their attributes have no single value at a level.
_LOWER = {Level.STUDY: ["series", "instances"], Level.SERIES: ["instances"], Level.INSTANCE: []}
_ORDER = {
    Level.STUDY: 't."StudyDate" DESC NULLS LAST, t."StudyTime" DESC NULLS LAST, t."StudyInstanceUID"',
    Level.SERIES: 't."StudyInstanceUID", t."SeriesNumber" NULLS LAST, t."SeriesInstanceUID"',
    Level.INSTANCE: 't."StudyInstanceUID", t."SeriesInstanceUID", t."InstanceNumber" NULLS LAST, t."SOPInstanceUID"',
}

#: Default return attributes the lake can answer (PS3.18 Tables 10.6.3-3, -4, -5).
STUDY_DEFAULTS = [
    "SpecificCharacterSet", "StudyDate", "StudyTime", "AccessionNumber", "InstanceAvailability",
    "ModalitiesInStudy", "RetrieveURL", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "StudyDescription", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
]
SERIES_DEFAULTS = [
    "SpecificCharacterSet", "Modality", "SeriesDescription", "RetrieveURL", "SeriesInstanceUID",
    "SeriesNumber", "NumberOfSeriesRelatedInstances", "StudyInstanceUID", "InstanceAvailability",
]
INSTANCE_DEFAULTS = [
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceAvailability", "RetrieveURL",
    "InstanceNumber", "Rows", "Columns", "BitsAllocated", "NumberOfFrames", "StudyInstanceUID",
    "SeriesInstanceUID",
]
_DEFAULTS = {Level.STUDY: STUDY_DEFAULTS, Level.SERIES: SERIES_DEFAULTS, Level.INSTANCE: INSTANCE_DEFAULTS}
#: Computed here, not stored.
_SYNTHETIC = {"SpecificCharacterSet", "InstanceAvailability", "RetrieveURL"}
#: Backslash-joined roll-ups, matched as sets.
_LISTS = {"ModalitiesInStudy", "SOPClassesInStudy"}
_COUNTS = {"NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "NumberOfSeriesRelatedInstances",
           "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries", "NumberOfPatientRelatedInstances"}


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: int
    vr: str

    @property
    def hex(self) -> str:
        return f"{self.tag:08X}"


def attribute(key: str) -> Attribute | None:
    """The attribute a query key names (keyword or 8-hex tag); None if it names none."""
    from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

    tag = int(key, 16) if re.fullmatch(r"[0-9A-Fa-f]{8}", key) else tag_for_keyword(key)
    if tag is None:
        return None
    try:
        vr = dictionary_VR(tag)
    except KeyError:
        return None
    return Attribute(keyword_for_tag(tag) or f"{tag:08X}", tag, vr.split(" or ")[0])


@dataclass
class Search:
    """One QIDO-RS request, parsed: where, what to return, which page."""

    level: Level
    scope: dict[str, str]
    matches: list[tuple[Attribute, list[str]]] = field(default_factory=list)
    includes: list[Attribute] = field(default_factory=list)
    include_all: bool = False
    fuzzy: bool = False
    limit: int | None = None
    offset: int = 0
    warnings: list[str] = field(default_factory=list)


def parse(level: Level, scope: dict[str, str], items: list[tuple[str, str]]) -> Search:
    """A :class:`Search` from the query string's ``(key, value)`` pairs; 400 with the reason for
    a parameter that is not a DICOM attribute or a number that is not one."""
    search = Search(level, scope)
    for key, value in items:
        name = key.strip()
        low = name.lower()
        if low == "limit":
            search.limit = _non_negative(name, value)
        elif low == "offset":
            search.offset = _non_negative(name, value)
        elif low == "fuzzymatching":
            if value.lower() not in ("true", "false"):
                raise bad_request(f"fuzzymatching must be true or false, not {value!r}")
            search.fuzzy = value.lower() == "true"
        elif low == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item.lower() == "all":
                    search.include_all = True
                elif item:
                    attr = attribute(item)
                    if attr is None:
                        raise bad_request(f"includefield {item!r} is not a DICOM keyword or tag")
                    search.includes.append(attr)
        elif low in _CONTROL:
            continue
        else:
            if "." in name:  # sequence paths: 0040A730.0040A160 (PS3.18 8.3.4.1)
                search.warnings.append(f"{name}: matching within sequences is not supported; ignored")
                continue
            attr = attribute(name)
            if attr is None:
                raise bad_request(f"query parameter {name!r} is not a DICOM keyword or tag, nor one of "
                                  "limit, offset, includefield, fuzzymatching")
            search.matches.append((attr, _values(attr, value)))
    return search


def _non_negative(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = -1
    if number < 0:
        raise bad_request(f"{name} must be a non-negative integer, not {value!r}")
    return number


def _values(attr: Attribute, value: str) -> list[str]:
    """The values of one query parameter: a UID list or CS list may be comma-separated."""
    separators = r"[\\,]" if attr.vr in ("UI", "CS") or attr.keyword in _LISTS else r"\\"
    return [v.strip() for v in re.split(separators, value) if v.strip()]


# -- SQL ----------------------------------------------------------------------------------------


@dataclass
class Plan:
    sql: str
    params: list[Any]
    returns: list[tuple[Attribute, str]]  # attribute, select alias ('' for synthetic)
    from_meta: list[Attribute]


def plan(search: Search, columns: dict[str, set[str]], limit: int) -> Plan:
    """The SQL of a search over the catalog tables (``columns``: table → its column names)."""
    level = search.level
    own = columns[_TABLE[level]]
    higher = [(table, alias, key) for table, alias, key in _HIGHER[level]]
    joins: dict[str, str] = {}

    def locate(keyword: str) -> str | None:
        """The SQL expression of an attribute at this level, joining a higher table if needed."""
        if keyword in own:
            return f't."{keyword}"'
        for table, alias, key in higher:
            if keyword in columns[table]:
                joins[alias] = f'LEFT JOIN {table} {alias} ON {alias}."{key}" = t."{key}"'
                return f'{alias}."{keyword}"'
        return None

    where: list[str] = [f't."{_KEY[level]}" IS NOT NULL']
    params: list[Any] = []
    for key, value in search.scope.items():
        where.append(f't."{key}" = ?')
        params.append(value)
    for attr, values in search.matches:
        expr = locate(attr.keyword)
        if expr is None and attr.keyword in columns["instances"] and level is not Level.INSTANCE:
            cond = _condition('i."' + attr.keyword + '"', attr, values, search.fuzzy)
            if cond is not None:
                where.append(f'EXISTS (SELECT 1 FROM instances i WHERE i."{_KEY[level]}" = t."{_KEY[level]}" '
                             f"AND {cond[0]})")
                params.extend(cond[1])
            continue
        if expr is None:
            search.warnings.append(f"{attr.keyword}: not a matching key of this lake; ignored")
            continue
        cond = _condition(expr, attr, values, search.fuzzy)
        if cond is not None:
            where.append(cond[0])
            params.extend(cond[1])

    wanted: list[Attribute] = []
    names = list(_DEFAULTS[level])
    if level is not Level.STUDY and "StudyInstanceUID" not in search.scope:
        names += [n for n in STUDY_DEFAULTS if n not in names]  # across studies (PS3.18 10.6.3.3.2)
    if level is Level.INSTANCE and "SeriesInstanceUID" not in search.scope:
        names += [n for n in SERIES_DEFAULTS if n not in names]
    for name in names:
        attr = attribute(name)
        assert attr is not None
        wanted.append(attr)
    if search.include_all:
        for name in sorted(own):
            if (attr := attribute(name)) is not None:
                wanted.append(attr)
    wanted += search.includes
    returns: list[tuple[Attribute, str]] = []
    from_meta: list[Attribute] = []
    selects = [f't."{_KEY[level]}" AS _key']
    seen: set[int] = set()
    for attr in wanted:
        if attr.tag in seen:
            continue
        seen.add(attr.tag)
        if attr.keyword in _SYNTHETIC:
            returns.append((attr, ""))
            continue
        expr = locate(attr.keyword)
        if expr is None and any(attr.keyword in columns[t] for t in _LOWER[level]):
            # An attribute of a lower level (Modality of a study): it has no one value here.
            if attr in search.includes:
                returns.append((attr, ""))
            continue
        if expr is None:
            if attr.vr != "SQ" or attr in search.includes:
                from_meta.append(attr)
            continue
        alias = f"c{len(selects)}"
        selects.append(f"{expr} AS {alias}")
        returns.append((attr, alias))
    for uid in ("StudyInstanceUID", "SeriesInstanceUID"):
        if (expr := locate(uid)) is not None:
            selects.append(f"{expr} AS _{uid}")
    if from_meta:
        selects.append(_representative(level))
    sql = (f"SELECT {', '.join(selects)} FROM {_TABLE[level]} t {' '.join(joins.values())} "
           f"WHERE {' AND '.join(where)} ORDER BY {_ORDER[level]} LIMIT {int(limit)} OFFSET {int(search.offset)}")
    return Plan(sql, params, returns, from_meta)


def _representative(level: Level) -> str:
    """The SOPInstanceUID of one instance of each result, whose header supplies attributes the
    catalog does not hold."""
    if level is Level.INSTANCE:
        return 't."SOPInstanceUID" AS _sop'
    key = _KEY[level]
    return f'(SELECT min(i."SOPInstanceUID") FROM instances i WHERE i."{key}" = t."{key}") AS _sop'


def _condition(expr: str, attr: Attribute, values: list[str], fuzzy: bool) -> tuple[str, list[Any]] | None:
    if attr.keyword in _LISTS:
        if not values or values == ["*"]:
            return None
        return f"list_has_any(string_split({expr}, '\\'), ?::VARCHAR[])", [values]
    if fuzzy and attr.vr == "PN" and values and not any("*" in v or "?" in v for v in values):
        parts, params = [], []
        for value in values:
            text = re.sub(r"([%_\\])", r"\\\1", matching.person_name(value).lower())
            parts.append(f"(lower({expr}) LIKE ? ESCAPE '\\' OR lower({expr}) LIKE ? ESCAPE '\\' "
                         f"OR lower({expr}) LIKE ? ESCAPE '\\')")
            params += [f"{text}%", f"%^{text}%", f"% {text}%"]
        return "(" + " OR ".join(parts) + ")", params
    kind = "int" if attr.keyword in _COUNTS else matching.KIND.get(attr.keyword, "str")
    return matching.condition(expr, kind, attr.vr, values)


# -- running and rendering ------------------------------------------------------------------------


def run(state: Any, search: Search, base: str) -> tuple[list[dict[str, Any]], bool]:
    """The DICOM JSON results of a search, and whether more results exist beyond them."""
    maximum = state.settings.qido_max_results
    limit = maximum if search.limit is None else min(search.limit, maximum)
    if search.limit is not None and search.limit > maximum:
        search.warnings.append(f"limit {search.limit} is above this server's maximum {maximum}")
    columns = table_columns(state)
    p = plan(search, columns, limit + 1)
    cur = state.cursor().execute(p.sql, p.params)
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    more = len(rows) > limit
    rows = rows[:limit]
    metas: dict[str, Any] = {}
    if p.from_meta and rows:
        import orjson

        sops = [r["_sop"] for r in rows if r.get("_sop")]
        metas = {k: orjson.loads(v) for k, v in state.catalog.meta(sops).items()}
    out = []
    for row in rows:
        ds: dict[str, Any] = {}
        for attr, alias in p.returns:
            if alias:
                ds[attr.hex] = element(attr.vr, row[alias])
            elif attr.keyword == "SpecificCharacterSet":
                ds[attr.hex] = {"vr": "CS", "Value": ["ISO_IR 192"]}
            elif attr.keyword == "InstanceAvailability":
                ds[attr.hex] = {"vr": "CS", "Value": ["ONLINE"]}
            elif attr.keyword == "RetrieveURL":
                ds[attr.hex] = {"vr": "UR", "Value": [base + _path(search.level, row)]}
            else:
                ds[attr.hex] = {"vr": attr.vr}
        meta = metas.get(row.get("_sop") or "", {})
        for attr in p.from_meta:
            elem = meta.get(attr.hex)
            if elem is not None and "BulkDataURI" not in elem:
                ds[attr.hex] = elem
            elif attr in search.includes:
                ds[attr.hex] = {"vr": attr.vr}
        out.append(dict(sorted(ds.items())))
    return out, more


def _path(level: Level, row: dict[str, Any]) -> str:
    study, series = row.get("_StudyInstanceUID") or "", row.get("_SeriesInstanceUID") or ""
    if level is Level.STUDY:
        return urls.study_path(row["_key"])
    if level is Level.SERIES:
        return urls.series_path(study, row["_key"])
    return urls.instance_path(study, series, row["_key"])


def table_columns(state: Any) -> dict[str, set[str]]:
    """Column names of the catalog's tables (fixed for the life of a catalog)."""
    cached = getattr(state, "_qido_columns", None)
    if cached is None:
        rows = state.catalog.cursor().execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_name IN ('studies', 'series', 'instances')"
        ).fetchall()
        cached = {"studies": set(), "series": set(), "instances": set()}
        for table, column in rows:
            if not column.startswith("_"):
                cached[table].add(column)
        state._qido_columns = cached
    return cached


def element(vr: str, value: Any) -> dict[str, Any]:
    """A catalog value as a DICOM JSON element (PS3.18 F.2); NULL is an empty element."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    if isinstance(value, dt.date):
        value = value.strftime("%Y%m%d")
    elif vr == "TM" and isinstance(value, str):
        value = value.replace(":", "")
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
    if isinstance(value, (list, tuple)):
        values = list(value)
    elif isinstance(value, str) and "\\" in value and vr not in ("LT", "ST", "UT", "UR"):
        values = value.split("\\")
    else:
        values = [value]
    if vr in ("IS", "SL", "SS", "UL", "US", "SV", "UV"):
        values = [int(v) for v in values]
    elif vr in ("DS", "FL", "FD"):
        values = [float(v) for v in values]
    elif vr not in ("IS", "DS"):
        values = [v if isinstance(v, str) else str(v) for v in values]
    return {"vr": vr, "Value": values}


def check_accept(request: Any) -> None:
    """406 unless the client accepts DICOM JSON (PS3.18 8.7.5; XML is not offered)."""
    from voxlake.server.multipart import parse_accept

    header = request.query_params.get("accept") or request.headers.get("accept")
    ranges = parse_accept(header)
    if ranges and not any(r.media_type in _JSON_TYPES for r in ranges):
        raise not_acceptable(f"this resource is application/dicom+json; Accept {header!r} does not include it")


def router() -> Any:
    """The QIDO-RS routes, relative to the DICOMweb root."""
    import orjson
    from fastapi import APIRouter, Request
    from starlette.responses import Response

    r = APIRouter()

    def answer(request: Request, level: Level, scope: dict[str, str]) -> Response:
        check_accept(request)
        state = request.app.state.server
        for name, value in scope.items():
            urls.check_uid(value, name)
        search = parse(level, scope, list(request.query_params.multi_items()))
        base = urls.dicomweb_base(request, state.settings.dicomweb_root)
        results, more = run(state, search, base)
        warnings = [f'299 {request.url.hostname or "voxlake"}: "{w}"' for w in search.warnings]
        if more:
            warnings.append(f"299 {request.url.hostname or 'voxlake'}: {_ADDITIONAL_RESULTS}")
        headers = {"Warning": ", ".join(warnings)} if warnings else {}
        if not results:
            return Response(status_code=204, headers=headers)
        return Response(orjson.dumps(results), media_type="application/dicom+json", headers=headers)

    @r.get("/studies")
    def search_for_studies(request: Request) -> Response:
        return answer(request, Level.STUDY, {})

    @r.get("/series")
    def search_for_all_series(request: Request) -> Response:
        return answer(request, Level.SERIES, {})

    @r.get("/studies/{study}/series")
    def search_for_series(request: Request, study: str) -> Response:
        return answer(request, Level.SERIES, {"StudyInstanceUID": study})

    @r.get("/instances")
    def search_for_all_instances(request: Request) -> Response:
        return answer(request, Level.INSTANCE, {})

    @r.get("/studies/{study}/instances")
    def search_for_study_instances(request: Request, study: str) -> Response:
        return answer(request, Level.INSTANCE, {"StudyInstanceUID": study})

    @r.get("/studies/{study}/series/{series}/instances")
    def search_for_instances(request: Request, study: str, series: str) -> Response:
        return answer(request, Level.INSTANCE, {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    return r
