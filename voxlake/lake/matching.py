"""Attribute matching as SQL (PS3.4 C.2.2.2), shared by C-FIND and QIDO-RS.

One query value of one attribute becomes one parameterised predicate over a column expression:
single value; universal (no value, or ``*``); wild card (``*``, ``?``) for the string VRs,
case-insensitive for PN; range for DA, TM and DT (``a-b``, ``-b``, ``a-``; a partial upper bound
includes all it abbreviates, ``-1200`` includes 12:00:59); UID list (several values).
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from voxlake.errors import InvalidArgumentError
from voxlake.lake.schema import PROMOTED

KIND = {name: kind for name, _tag, kind in PROMOTED}
WILDCARD_VRS = {"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"}
INT_VRS = {"US", "UL", "SS", "SL", "UV", "SV", "IS"}
FLOAT_VRS = {"FL", "FD", "DS"}


class MatchError(InvalidArgumentError):
    """A query value that cannot be matched (not a date, not a number...)."""


def condition(expr: str, kind: str, vr: str, values: list[str]) -> tuple[str, list[Any]] | None:
    """The SQL predicate matching ``values`` (any of them; several UIDs are a UID list), or None
    for universal matching. ``kind`` is the promoted column's kind (``KIND``) or ``"meta"``."""
    if not values or values == ["*"]:
        return None
    parts: list[tuple[str, list[Any]]] = []
    if vr == "UI":
        return f"{expr} IN ({', '.join('?' * len(values))})", values
    for value in values:  # several values of another VR: any of them (lenient)
        if vr in ("DA", "TM", "DT"):
            parts.append(_range(expr, kind, vr, value))
        elif vr in WILDCARD_VRS and ("*" in value or "?" in value):
            pattern = re.sub(r"([%_\\])", r"\\\1", value).replace("*", "%").replace("?", "_")
            if vr == "PN":
                parts.append((f"lower({expr}) LIKE lower(?) ESCAPE '\\'", [person_name(pattern)]))
            else:
                parts.append((f"{expr} LIKE ? ESCAPE '\\'", [pattern]))
        elif vr == "PN":
            parts.append((f"lower({expr}) = lower(?)", [person_name(value)]))
        elif kind in ("int", "float") or vr in INT_VRS | FLOAT_VRS:
            try:
                number = float(value)
            except ValueError:
                raise MatchError(f"{value!r} is not a number ({vr})") from None
            parts.append((f"TRY_CAST({expr} AS DOUBLE) = ?", [number]))
        else:
            parts.append((f"{expr} = ?", [value]))
    if len(parts) == 1:
        return parts[0]
    return "(" + " OR ".join(p[0] for p in parts) + ")", [x for p in parts for x in p[1]]


def person_name(value: str) -> str:
    """The Alphabetic group without trailing empty components, as the column holds it."""
    return value.split("=")[0].rstrip("^ ")


def _range(expr: str, kind: str, vr: str, value: str) -> tuple[str, list[Any]]:
    """Range matching (C.2.2.2.5), a single value being the range from itself to itself."""
    low, sep, high = value.partition("-")
    if vr == "DT" and sep and re.fullmatch(r"[0-9.]+[+-][0-9]{4}", value):
        low, sep, high = value, "", ""  # the '-' of a UTC offset, not a range
    if not sep:
        high = low
    if not low and not high:
        raise MatchError(f"{value!r} is not a {vr} range")
    where, params = [], []
    if kind == "date":
        if low:
            where.append(f"{expr} >= ?")
            params.append(_date(low))
        if high:
            where.append(f"{expr} <= ?")
            params.append(_date(high, upper=True))
        return " AND ".join(where), params
    # Text (TM columns 'HH:MM:SS.ffffff', or DICOM text from meta): the upper bound includes every
    # value it is a prefix of, so '1200' includes '120059.9'.
    norm = _time_column if kind == "time" else _compact
    if low:
        where.append(f"{expr} >= ?")
        params.append(norm(low, vr))
    if high:
        bound = norm(high, vr)
        where.append(f"substr({expr}, 1, {len(bound)}) <= ?")
        params.append(bound)
    return " AND ".join(where), params


def _compact(value: str, vr: str) -> str:
    text = value.replace(":", "") if vr == "TM" else value
    text = text.replace(".", "") if vr == "DA" else text
    if not re.fullmatch(r"[0-9.+-]+", text):
        raise MatchError(f"{value!r} is not a {vr} value")
    return text


def _time_column(value: str, vr: str) -> str:
    """A TM query value in the promoted column's 'HH:MM:SS.ffffff' form."""
    text = _compact(value, "TM")
    m = re.fullmatch(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?", text)
    if not m:
        raise MatchError(f"{value!r} is not a TM value")
    return ":".join(g for g in m.groups()[:3] if g) + (m.group(4) or "")


def _date(value: str, *, upper: bool = False) -> dt.date:
    """A DA bound; a year or a month alone (a common extension) covers all of it."""
    text = value.replace(".", "")  # ACR-NEMA YYYY.MM.DD
    try:
        if len(text) == 4:
            return dt.date(int(text), 12, 31) if upper else dt.date(int(text), 1, 1)
        if len(text) == 6:
            first = dt.date(int(text[:4]), int(text[4:]), 1)
            return (first + dt.timedelta(days=31)).replace(day=1) - dt.timedelta(days=1) if upper else first
        return dt.datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise MatchError(f"{value!r} is not a DA value (YYYYMMDD)") from None
