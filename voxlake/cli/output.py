"""Rendering query results for the terminal and for files."""

from __future__ import annotations

import json
import sys
from datetime import date, datetime, time
from decimal import Decimal
from enum import StrEnum
from typing import IO, Any

import pyarrow as pa

from voxlake.errors import InvalidArgumentError


class Format(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"
    PARQUET = "parquet"

    @classmethod
    def parse(cls, value: str) -> Format:
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgumentError(
                f"format must be one of {', '.join(f.value for f in cls)}, not {value!r}"
            ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.hex()
    return value


def write_result(table: pa.Table, fmt: Format, output: str | None) -> None:
    """Write ``table`` in ``fmt`` to ``output`` (a path) or standard output."""
    if fmt is Format.PARQUET:
        if output is None:
            raise InvalidArgumentError("--format parquet needs --output FILE")
        import pyarrow.parquet as pq

        pq.write_table(table, output)
        return
    if fmt is Format.CSV:
        import pyarrow.csv as pcsv

        if output is None:
            sink = pa.BufferOutputStream()
            pcsv.write_csv(table, sink)
            sys.stdout.write(sink.getvalue().to_pybytes().decode())
        else:
            pcsv.write_csv(table, output)
        return
    if fmt is Format.JSON:
        rows = [{k: _jsonable(v) for k, v in row.items()} for row in table.to_pylist()]
        text = json.dumps(rows, ensure_ascii=False, default=str, indent=None)
    else:
        text = render_table(table)
    if output is None:
        print(text)
    else:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def render_table(table: pa.Table, *, max_width: int = 48, max_rows: int = 1000) -> str:
    """A plain aligned text table; long cells are cut with an ellipsis."""
    names = table.column_names
    rows = table.slice(0, max_rows).to_pylist()

    def cell(v: Any) -> str:
        if v is None:
            return "NULL"
        s = json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(_jsonable(v))
        s = s.replace("\n", " ")
        return s if len(s) <= max_width else s[: max_width - 1] + "…"

    cells = [[cell(row[n]) for n in names] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    if table.num_rows > max_rows:
        out.append(f"… {table.num_rows - max_rows} more rows")
    out.append(f"({table.num_rows} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out)


def print_json(obj: Any, stream: IO[str] | None = None) -> None:
    print(json.dumps(obj, default=_jsonable), file=stream or sys.stdout)
