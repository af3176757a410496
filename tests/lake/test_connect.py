"""``Lake.connect`` keeps one DuckDB connection and re-binds only the tables a commit changed: every
query still sees the current version of every table."""

from __future__ import annotations

import shutil

import pyarrow as pa
from deltalake import write_deltalake

import voxlake


def _counts(lake: voxlake.Lake) -> tuple[int, int, int]:
    return lake.sql("SELECT (SELECT count(*) FROM instances), (SELECT count(*) FROM ingest_errors), "
                    "(SELECT count(*) FROM ingest_runs)").fetchall()[0]


def test_one_connection_follows_commits_to_every_table(tmp_path, ct_series):
    slices = sorted(ct_series.iterdir())
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy2(slices[0], src)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    con = lake.connect()
    assert _counts(lake) == (1, 0, 1)

    shutil.copy2(slices[1], src)
    (src / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    lake.ingest(str(src), workers=0)  # ingest_errors goes from no file to one
    assert lake.connect() is con
    assert _counts(lake) == (2, 1, 2)

    write_deltalake(str(tmp_path / "lake" / "segment_stats"),
                    pa.table({"SeriesInstanceUID": ["1.2.3"], "label": ["body"]}))  # a table appears
    assert lake.sql("SELECT label FROM segment_stats").fetchall() == [("body",)]
    assert lake.connect() is con


def test_a_lake_made_again_in_the_same_place_is_read_anew(tmp_path, ct_series):
    first, second = sorted(ct_series.iterdir())[:2]
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(first), workers=0)
    sop = lake.sql("SELECT SOPInstanceUID FROM instances").fetchall()
    shutil.rmtree(tmp_path / "lake")
    voxlake.open(str(tmp_path / "lake")).ingest(str(second), workers=0)  # the same table versions
    again = lake.sql("SELECT SOPInstanceUID FROM instances").fetchall()
    assert len(again) == 1 and again != sop


def test_a_closed_lake_connects_again(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(sorted(ct_series.iterdir())[0]), workers=0)
    con = lake.connect()
    lake.close()
    assert lake.connect() is not con
    assert _counts(lake) == (1, 0, 1)


def test_a_table_whose_first_commit_is_being_written_is_left_out_until_it_has_one(tmp_path, ct_series):
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(sorted(ct_series.iterdir())[0]), workers=0)
    (tmp_path / "lake" / "segment_stats" / "_delta_log").mkdir(parents=True)  # another writer creating it
    assert _counts(lake) == (1, 0, 1)
    tables = {r[0] for r in lake.sql("SELECT table_name FROM information_schema.tables").fetchall()}
    assert "segment_stats" not in tables
    write_deltalake(str(tmp_path / "lake" / "segment_stats"), pa.table({"label": ["body"]}))
    assert lake.sql("SELECT label FROM segment_stats").fetchall() == [("body",)]


def test_a_lake_without_its_tables_is_one_clear_error(tmp_path):
    import pytest

    lake = voxlake.open(str(tmp_path / "nothing"))
    with pytest.raises(voxlake.LakeNotFoundError, match="table instances is missing"):
        lake.sql("SELECT 1")
    (tmp_path / "nothing" / "instances" / "_delta_log").mkdir(parents=True)  # a first ingest under way
    with pytest.raises(voxlake.LakeNotFoundError, match="table instances is missing"):
        lake.sql("SELECT 1")
