"""Staged files carry complete Delta statistics, so any Delta reader can skip files safely."""

from __future__ import annotations

import shutil

import pyarrow as pa
from deltalake import DeltaTable

import voxlake
from voxlake.lake.schema import TABLES


def _actions(path) -> list[dict]:
    return pa.table(DeltaTable(str(path)).get_add_actions(flatten=True)).to_pylist()


def test_every_indexed_column_has_min_max_and_null_count(tmp_path, ct_series):
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(ct_series.iterdir())[:3]:
        shutil.copy2(p, src / p.name)
    (src / "notes.txt").write_text("not dicom")
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    for name in ("instances", "ingest_files"):
        actions = _actions(tmp_path / "lake" / name)
        assert actions
        schema = TABLES[name]
        for action in actions:
            assert action["num_records"] > 0
            for field in list(schema)[:32]:
                if field.type.num_fields or str(field.type).startswith("list"):
                    continue
                assert f"null_count.{field.name}" in action, (name, field.name)
    [action] = _actions(tmp_path / "lake" / "instances")
    assert action["min.Modality"] == action["max.Modality"] == "CT"
    assert action["null_count.PatientBirthDate"] == 3


def test_optimize_compacts_small_files_without_changing_any_row(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(ct_series), workers=2)
    query = "SELECT uri, sha256, SeriesInstanceUID FROM instances ORDER BY uri"
    before = lake.sql(query).fetchall()
    files_before = len(DeltaTable(str(tmp_path / "lake" / "instances")).file_uris())
    assert files_before > 1  # one Parquet file per ingest chunk
    lake.optimize()
    assert len(DeltaTable(str(tmp_path / "lake" / "instances")).file_uris()) == 1
    assert lake.sql(query).fetchall() == before
    assert lake.sql("SELECT instances FROM series").fetchall() == [(134,)]
