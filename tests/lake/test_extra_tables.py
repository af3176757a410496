"""Delta tables that other parts of voxlake add to a lake (deid_audit, segment_stats, meshes, ...)
are queryable by name, at their current version, like the core tables."""

from __future__ import annotations

import pyarrow as pa
from deltalake import write_deltalake

import voxlake


def test_other_delta_tables_are_views_by_name_and_follow_their_commits(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(sorted(ct_series.iterdir())[0]), workers=0)
    rows = pa.table({"SeriesInstanceUID": ["1.2.3"], "label": ["body"], "volume_ml": [1234.5]})
    write_deltalake(str(tmp_path / "lake" / "segment_stats"), rows)
    assert lake.sql("SELECT label, volume_ml FROM segment_stats").fetchall() == [("body", 1234.5)]

    more = pa.table({"SeriesInstanceUID": ["1.2.3"], "label": ["lung"], "volume_ml": [10.0],
                     "model_version": ["2"]})
    write_deltalake(str(tmp_path / "lake" / "segment_stats"), more, mode="append", schema_mode="merge")
    assert lake.sql("SELECT label, model_version FROM segment_stats ORDER BY label").fetchall() == [
        ("body", None), ("lung", "2")]


def test_a_table_named_like_a_view_or_a_plain_folder_is_not_registered(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(sorted(ct_series.iterdir())[0]), workers=0)
    write_deltalake(str(tmp_path / "lake" / "studies"), pa.table({"x": [1]}))  # the lake's own view wins
    (tmp_path / "lake" / "notes").mkdir()
    tables = {r[0] for r in lake.sql("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "notes" not in tables
    assert lake.sql("SELECT count(*) FROM studies").fetchall() == [(1,)]
    assert "StudyInstanceUID" in lake.sql("SELECT * FROM studies").arrow().column_names
