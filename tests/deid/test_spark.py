"""The Spark engine de-identifies a lake exactly as the local engine does: the same files, byte for
byte, the same audit, the same research lake; executors share no state, only the key."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

import voxlake
from voxlake.deid.run import deidentify_lake

pytestmark = pytest.mark.slow
OPTIONS = ["retain-longitudinal-modified-dates", "clean-descriptors"]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.dcm"))}


def _audit(lake_path: Path) -> list[tuple[Any, ...]]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(lake_path / "deid_audit")).to_pyarrow_table().to_pylist()
    return sorted((r["source_sha256"], r["status"], r["reason"], r["SOPInstanceUID"], str(r["actions"]))
                  for r in rows)


def test_spark_and_local_engines_write_identical_research_lakes(spark, tmp_path, ct_series):
    pytest.importorskip("numpy")
    from voxlake.synth.cohort import generate_cohort
    from voxlake.synth.phi import PhiInjector

    src = tmp_path / "cohort"
    generate_cohort(src, patients=3, seed=5, hook=PhiInjector(5), matrix=32, max_instances_per_series=2)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    key = tmp_path / "deid.key"
    key.write_text("00112233445566778899aabbccddeeff" * 2 + "\n")

    local = deidentify_lake(lake, tmp_path / "local", secret=key, options=OPTIONS)
    on_spark = deidentify_lake(lake, tmp_path / "spark", secret=key, options=OPTIONS, engine="spark")

    assert local.written > 5 and (on_spark.written, on_spark.excluded, on_spark.errors) == (
        local.written, local.excluded, local.errors)
    assert _digests(tmp_path / "spark" / "dicom") == _digests(tmp_path / "local" / "dicom")
    assert _audit(tmp_path / "spark") == _audit(tmp_path / "local")
    query = "SELECT SOPInstanceUID, PatientID, StudyDate, sha256 FROM instances ORDER BY 1"
    assert (voxlake.open(str(tmp_path / "spark")).sql(query).fetchall()
            == voxlake.open(str(tmp_path / "local")).sql(query).fetchall())


@pytest.mark.filterwarnings("ignore:VR lookup failed")
def test_spark_and_local_engines_write_identical_files_from_the_adversarial_set(spark, tmp_path):
    """The per-patient deny-list gathered in the first pass travels with each Spark task: the
    executors scrub the same text the same way, byte for byte, and leave out the same files."""
    from voxlake.deid.run import deidentify_files
    from voxlake.synth.adversarial import generate_adversarial

    generate_adversarial(tmp_path / "set", seed=3)
    key = tmp_path / "deid.key"
    key.write_text("00112233445566778899aabbccddeeff" * 2 + "\n")
    options = ["clean-descriptors", "clean-structured-content", "retain-longitudinal-modified-dates"]
    local = deidentify_files(tmp_path / "set", tmp_path / "local", secret=key, options=options)
    on_spark = deidentify_files(tmp_path / "set", tmp_path / "spark", secret=key, options=options, engine="spark")
    assert local.written > 20
    assert sorted((o.status, o.reason) for o in on_spark.outcomes) == sorted((o.status, o.reason)
                                                                              for o in local.outcomes)
    assert _digests(tmp_path / "spark") == _digests(tmp_path / "local")
