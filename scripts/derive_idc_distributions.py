"""Derive the header distributions the cohort generator samples from, out of the IDC index.

The PyPI package ``idc-index-data`` ships ``idc_index.parquet``: one row per public series of the
NCI Imaging Data Commons (about a million). This script reduces it to a few KB of frequencies and
quantiles in ``voxlake/synth/data/idc_distributions.json``, which is committed, so the package is
needed only to refresh the numbers, never at run time::

    pip install idc-index-data duckdb
    python scripts/derive_idc_distributions.py            # writes the JSON beside the generator
    python scripts/derive_idc_distributions.py --date 2025-01-31 --out /tmp/d.json

Frequencies are over series unless the key says otherwise. Each categorical distribution keeps its
``top`` values and lumps the rest into ``other``; ``missing`` counts series where the attribute is
absent or empty, so ``sum(top) + other + missing == 1``. Quantiles are ``[probability, value]`` pairs,
enough for inverse-CDF sampling.
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

#: The modalities the generator writes; each gets its own section.
MODALITIES = ("CT", "MR", "CR", "DX", "US")
PROBABILITIES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
TOP_MODALITIES = 15
TOP_BODY_PARTS = 15
TOP_MANUFACTURERS = 8
TOP_MODELS = 3
DIGITS = 6

OUT = Path(__file__).resolve().parents[1] / "voxlake" / "synth" / "data" / "idc_distributions.json"


def categorical(rows: list[tuple[Any, int]], top: int) -> dict[str, Any]:
    """Frequencies of the ``top`` most common non-empty values, the rest lumped, empties apart."""
    total = sum(n for _, n in rows)
    present = sorted(((v, n) for v, n in rows if v not in (None, "")), key=lambda r: (-r[1], r[0]))
    missing = sum(n for v, n in rows if v in (None, ""))
    kept = present[:top]
    other = sum(n for _, n in present[top:])
    return {
        "top": {v: round(n / total, DIGITS) for v, n in kept},
        "other": round(other / total, DIGITS),
        "missing": round(missing / total, DIGITS),
        "n": total,
    }


def quantiles(con: Any, sql: str) -> list[list[float]]:
    """``[probability, value]`` pairs of the single numeric column that ``sql`` selects."""
    probs = ", ".join(str(p) for p in PROBABILITIES)
    ((values,),) = con.sql(f"SELECT quantile_cont(x, [{probs}]) FROM ({sql}) AS q(x)").fetchall()
    return [[p, round(float(v), 3)] for p, v in zip(PROBABILITIES, values, strict=True)]


def rows(con: Any, sql: str) -> list[tuple[Any, int]]:
    return [(v, int(n)) for v, n in con.sql(sql).fetchall()]


def modality_section(con: Any, modality: str) -> dict[str, Any]:
    where = f"Modality = '{modality}'"
    manufacturers = categorical(
        rows(con, f"SELECT trim(Manufacturer), count(*) FROM idc WHERE {where} GROUP BY 1"), TOP_MANUFACTURERS
    )
    models = {}
    for manufacturer in manufacturers["top"]:
        found = rows(
            con,
            f"SELECT trim(ManufacturerModelName), count(*) FROM idc WHERE {where} "
            f"AND trim(Manufacturer) = $${manufacturer}$$ GROUP BY 1",
        )
        models[manufacturer] = categorical(found, TOP_MODELS)
    return {
        "series": rows(con, f"SELECT count(*), 0 FROM idc WHERE {where}")[0][0],
        "studies": rows(con, f"SELECT count(DISTINCT StudyInstanceUID), 0 FROM idc WHERE {where}")[0][0],
        "BodyPartExamined": categorical(
            rows(con, f"SELECT upper(trim(BodyPartExamined)), count(*) FROM idc WHERE {where} GROUP BY 1"),
            TOP_BODY_PARTS,
        ),
        "Manufacturer": manufacturers,
        "ManufacturerModelName": models,
        "PhotometricInterpretation": categorical(
            rows(con, f"SELECT PhotometricInterpretation, count(*) FROM idc WHERE {where} GROUP BY 1"), 5
        ),
        "TransferSyntaxUID": categorical(
            rows(con, f"SELECT TransferSyntaxUID, count(*) FROM idc WHERE {where} GROUP BY 1"), 5
        ),
        "instances_per_series": quantiles(con, f"SELECT instanceCount FROM idc WHERE {where}"),
        "series_per_study": quantiles(
            con, f"SELECT count(*) FROM idc WHERE {where} GROUP BY StudyInstanceUID"
        ),
    }


def derive(parquet: Path, version: str, idc_version: Any, date: str) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    con.sql(f"CREATE VIEW idc AS SELECT * FROM read_parquet('{parquet}')")
    # One row per study for demographics, so patients with many series do not weigh more.
    con.sql(
        "CREATE VIEW study AS SELECT StudyInstanceUID, any_value(PatientID) AS PatientID, "
        "any_value(PatientSex) AS PatientSex, any_value(PatientAge) AS PatientAge FROM idc GROUP BY 1"
    )
    total = rows(con, "SELECT count(*), 0 FROM idc")[0][0]
    return {
        "source": {
            "package": "idc-index-data",
            "version": version,
            "idc_version": idc_version,
            "file": "idc_index.parquet",
            "series": total,
            "derived": date,
            "script": "scripts/derive_idc_distributions.py",
            "licence": "IDC index metadata, CC BY 4.0 (Imaging Data Commons); per-collection licences apply "
            "to the images, none of which are copied here",
        },
        "Modality": {
            "series": categorical(rows(con, "SELECT Modality, count(*) FROM idc GROUP BY 1"), TOP_MODALITIES),
            "studies": categorical(
                rows(con, "SELECT Modality, count(DISTINCT StudyInstanceUID) FROM idc GROUP BY 1"), TOP_MODALITIES
            ),
        },
        "patients": {
            "PatientSex": categorical(
                rows(
                    con,
                    "SELECT CASE WHEN PatientSex IN ('F', 'M', 'O') THEN PatientSex END, count(*) FROM "
                    "(SELECT PatientID, any_value(PatientSex) AS PatientSex FROM study GROUP BY 1) GROUP BY 1",
                ),
                3,
            ),
            # "000Y" is mostly an anonymisation placeholder in the IDC, so ages below one year are left out.
            "age_years_per_study": quantiles(
                con,
                "SELECT CAST(left(PatientAge, 3) AS INTEGER) FROM study "
                "WHERE regexp_matches(PatientAge, '^[0-9]{3}Y$') AND left(PatientAge, 3) <> '000'",
            ),
        },
        "modalities": {m: modality_section(con, m) for m in MODALITIES},
    }


def main(argv: list[str] | None = None) -> int:
    import importlib.metadata

    import idc_index_data

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--date", default=datetime.date.today().isoformat(), help="derivation date to record")
    args = p.parse_args(argv)
    parquet = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH)
    versions = parquet.parent / "version_metadata_index.parquet"
    idc_version = None
    if versions.exists():
        import duckdb

        idc_version = duckdb.sql(f"SELECT max(idc_version) FROM read_parquet('{versions}')").fetchall()[0][0]
    data = derive(parquet, importlib.metadata.version("idc-index-data"), idc_version, args.date)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out} ({args.out.stat().st_size:,} bytes) from {parquet.name} "
          f"(idc-index-data {data['source']['version']}, {data['source']['series']:,} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
