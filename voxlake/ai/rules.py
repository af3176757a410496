"""Series-selection rules: which series of the lake a model should segment.

The format follows MONAI Deploy's series selector (a list of named selections, each a set of
conditions on DICOM attributes), in JSON::

    {"selections": [
        {"name": "abdomen-ct",
         "conditions": {
             "Modality": "CT",                       # exact, case-insensitive
             "SeriesDescription": "(?i)abdomen|pancreas",  # regular expression, searched
             "SliceThickness": [0.5, 5.0],           # mm, inclusive range (min, max); null = open
             "orientation": "axial",                 # axial | coronal | sagittal
             "min_instances": 20                     # at least this many instances
         }}
    ]}

Every condition is optional; a selection with none matches every series. A series matches a
selection when all its conditions hold, and it is reported once per matching selection.
Orientation is the patient axis closest to the slice normal (the cross product of
ImageOrientationPatient): z axial, y coronal, x sagittal. SliceThickness must hold for every
instance of the series (its min and max). The loader rejects unknown fields, bad types and bad
regular expressions with a :class:`~voxlake.ai.errors.RulesError` naming the selection and field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxlake.ai.errors import RulesError

if TYPE_CHECKING:
    from voxlake.lake.lake import Lake


class Orientation(StrEnum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"


@dataclass(frozen=True)
class Rule:
    """One named selection; ``None`` conditions are not checked."""

    name: str
    Modality: str | None = None
    SeriesDescription: str | None = None
    SliceThickness: tuple[float | None, float | None] | None = None
    orientation: Orientation | None = None
    min_instances: int | None = None


@dataclass(frozen=True)
class SeriesMatch:
    """A series of the lake that a rule selects."""

    rule: str
    SeriesInstanceUID: str
    StudyInstanceUID: str
    Modality: str | None
    SeriesDescription: str | None
    instances: int
    orientation: str | None


_CONDITIONS = {"Modality", "SeriesDescription", "SliceThickness", "orientation", "min_instances"}


def load_rules(source: str | Path | dict[str, Any]) -> list[Rule]:
    """Rules from a JSON file path, a JSON string, or the parsed document."""
    where = "rules"
    if isinstance(source, dict):
        doc: Any = source
    else:
        text = str(source)
        if not text.lstrip().startswith("{"):
            where = text
            try:
                text = Path(text).read_text()
            except OSError as exc:
                raise RulesError(f"{where}: cannot read the rules file: {exc.strerror}") from exc
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RulesError(f"{where}: not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("selections"), list):
        raise RulesError(f"{where}: 'selections' must be a list of rules")
    rules = [_rule(item, i, where) for i, item in enumerate(doc["selections"])]
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise RulesError(f"{where}: selection names must be unique, got {names}")
    return rules


def _rule(item: Any, i: int, where: str) -> Rule:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
        raise RulesError(f"{where}: selection {i} needs a non-empty 'name'")
    at = f"{where}: selection {item['name']!r}"
    unknown = set(item) - {"name", "conditions"}
    if unknown:
        raise RulesError(f"{at}: unknown field(s) {sorted(unknown)}; expected 'name', 'conditions'")
    cond = item.get("conditions", {})
    if not isinstance(cond, dict):
        raise RulesError(f"{at}: 'conditions' must be an object")
    unknown = set(cond) - _CONDITIONS
    if unknown:
        raise RulesError(f"{at}: unknown condition(s) {sorted(unknown)}; valid: {sorted(_CONDITIONS)}")
    modality = cond.get("Modality")
    if modality is not None and not isinstance(modality, str):
        raise RulesError(f"{at}: Modality must be a string such as 'CT'")
    description = cond.get("SeriesDescription")
    if description is not None:
        if not isinstance(description, str):
            raise RulesError(f"{at}: SeriesDescription must be a regular expression string")
        try:
            re.compile(description)
        except re.error as exc:
            raise RulesError(f"{at}: SeriesDescription is not a valid regular expression: {exc}") from exc
    thickness = cond.get("SliceThickness")
    if thickness is not None:
        ok = (
            isinstance(thickness, list)
            and len(thickness) == 2
            and all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in thickness)
        )
        if not ok or (None not in thickness and thickness[0] > thickness[1]):
            raise RulesError(
                f"{at}: SliceThickness must be [min, max] in mm (null for open), got {thickness!r}"
            )
        thickness = (thickness[0], thickness[1])
    orientation = cond.get("orientation")
    if orientation is not None:
        try:
            orientation = Orientation(orientation)
        except ValueError:
            raise RulesError(
                f"{at}: orientation must be one of {', '.join(o.value for o in Orientation)}, got {orientation!r}"
            ) from None
    minimum = cond.get("min_instances")
    if minimum is not None and (not isinstance(minimum, int) or isinstance(minimum, bool) or minimum < 1):
        raise RulesError(f"{at}: min_instances must be a positive integer, got {minimum!r}")
    return Rule(item["name"], modality, description, thickness, orientation, minimum)


_SERIES_SQL = """
WITH s AS (
    SELECT SeriesInstanceUID,
        min(StudyInstanceUID) AS StudyInstanceUID,
        min(Modality) AS Modality,
        min(SeriesDescription) AS SeriesDescription,
        min(SliceThickness) AS min_thickness,
        max(SliceThickness) AS max_thickness,
        count(*) AS instances,
        min(ImageOrientationPatient) AS iop
    FROM instances WHERE SeriesInstanceUID IS NOT NULL GROUP BY SeriesInstanceUID
), n AS (
    SELECT *,
        abs(iop[2] * iop[6] - iop[3] * iop[5]) AS nx,
        abs(iop[3] * iop[4] - iop[1] * iop[6]) AS ny,
        abs(iop[1] * iop[5] - iop[2] * iop[4]) AS nz
    FROM s
)
SELECT SeriesInstanceUID, StudyInstanceUID, Modality, SeriesDescription, instances,
    CASE WHEN len(iop) != 6 OR iop IS NULL THEN NULL
         WHEN nz >= nx AND nz >= ny THEN 'axial'
         WHEN ny >= nx THEN 'coronal' ELSE 'sagittal' END AS orientation,
    min_thickness, max_thickness
FROM n
"""


def select_series(lake: Lake, rules: list[Rule] | str | Path | dict[str, Any]) -> list[SeriesMatch]:
    """The series of ``lake`` each rule selects, in rule order, answered by SQL over ``instances``."""
    if not isinstance(rules, list):
        rules = load_rules(rules)
    con = lake.connect()
    out: list[SeriesMatch] = []
    for rule in rules:
        where, params = _where(rule)
        query = f"SELECT * FROM ({_SERIES_SQL}) WHERE {where} ORDER BY StudyInstanceUID, SeriesInstanceUID"
        for row in con.execute(query, params).fetchall():
            out.append(SeriesMatch(rule.name, *row[:6]))
    return out


def _where(rule: Rule) -> tuple[str, list[Any]]:
    clauses, params = ["TRUE"], []
    if rule.Modality is not None:
        clauses.append("upper(Modality) = upper(?)")
        params.append(rule.Modality)
    if rule.SeriesDescription is not None:
        clauses.append("regexp_matches(coalesce(SeriesDescription, ''), ?)")
        params.append(rule.SeriesDescription)
    if rule.SliceThickness is not None:
        low, high = rule.SliceThickness
        if low is not None:
            clauses.append("min_thickness >= ?")
            params.append(low)
        if high is not None:
            clauses.append("max_thickness <= ?")
            params.append(high)
    if rule.orientation is not None:
        clauses.append("orientation = ?")
        params.append(rule.orientation.value)
    if rule.min_instances is not None:
        clauses.append("instances >= ?")
        params.append(rule.min_instances)
    return " AND ".join(clauses), params
