"""Batch segmentation over a lake, as a hospital runs it overnight: every selected series gets a SEG
and statistics, a bad series is recorded and skipped, and a rerun does only what is left."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import voxlake
from tests.conftest import ct_and_mr_lake

pytest.importorskip("highdicom")
pytest.importorskip("scipy")


@pytest.fixture(scope="module")
def lake(tmp_path_factory, ct_series: Path) -> voxlake.Lake:
    """40 slices of the real abdominal CT and a single-slice MR in one lake."""
    return ct_and_mr_lake(tmp_path_factory, ct_series, 40, 40)


def test_a_batch_segments_the_ct_records_the_mr_as_an_error_and_a_rerun_does_nothing(lake):
    from voxlake.ai.segment import segment
    from voxlake.ai.tissue import CTTissueModel

    model = CTTissueModel()
    summary = segment(lake, model=model, where="TRUE", meshes=False)

    assert (summary.selected, summary.segmented, summary.errors) == (2, 1, 1)
    [ct] = [o for o in summary.outcomes if o.status == "segmented"]
    [mr] = [o for o in summary.outcomes if o.status == "error"]
    assert "is MR" in mr.message and "ct-tissue segments CT" in mr.message
    assert lake.sql("SELECT error_class, message FROM segment_errors").fetchall() == [
        (mr.error_class, mr.message)]
    seg = lake.sql(f"SELECT Modality, StudyInstanceUID FROM instances WHERE SOPInstanceUID = '{ct.SEG}'").fetchall()
    [(ct_study,)] = lake.sql("SELECT DISTINCT StudyInstanceUID FROM instances WHERE Modality = 'CT'").fetchall()
    assert seg == [("SEG", ct_study)]
    stats = dict(lake.sql("SELECT label, volume_ml FROM segment_stats WHERE SeriesInstanceUID = "
                          f"'{ct.SeriesInstanceUID}' AND model = 'ct-tissue'").fetchall())
    assert stats == pytest.approx(ct.volumes_ml)
    assert 5_000 < sum(stats.values()) < 20_000  # every label is inside the body: a 12 cm slab of an adult abdomen
    assert set(ct.timings) == {"load", "predict", "record"}

    again = segment(lake, model=model, where="Modality = 'CT'")
    assert (again.selected, again.already_done, again.segmented, again.errors) == (1, 1, 0, 0)


def test_a_model_that_returns_labels_it_does_not_declare_is_an_error_of_that_series(lake):
    from voxlake.ai.segment import segment

    class Careless:
        name, version, labels = "careless", "0", {1: "body"}

        def predict(self, volume):
            return np.full(volume.shape, 7, dtype=np.uint8)

    summary = segment(lake, model=Careless(), where="Modality = 'CT'")
    assert (summary.segmented, summary.errors) == (0, 1)
    assert summary.outcomes[0].error_class == "ModelOutputError"
    assert "labels [7]" in summary.outcomes[0].message
    assert lake.sql("SELECT count(*) FROM segment_stats WHERE model = 'careless'").fetchall() == [(0,)]


@pytest.mark.parametrize(("values", "said"), [(np.array([-1, 1], np.int16), "negative labels"),
                                               (np.array([0.0, 1.0], np.float32), "float32 labels")])
def test_a_model_that_returns_negative_or_fractional_labels_is_an_error_of_that_series(lake, values, said):
    from voxlake.ai.segment import segment

    class Sloppy:
        name, version, labels = f"sloppy-{values.dtype}", "0", {1: "body"}

        def predict(self, volume):
            return np.resize(values, volume.shape)

    summary = segment(lake, model=Sloppy(), where="Modality = 'CT'")
    assert (summary.segmented, summary.errors) == (0, 1)
    assert summary.outcomes[0].error_class == "ModelOutputError"
    assert said in summary.outcomes[0].message


def test_the_cli_segments_with_a_progress_bar_and_prints_json(tmp_path, ct_series):
    import json
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(ct_series.iterdir())[60:72]:
        shutil.copy2(p, src / p.name)
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    command = [sys.executable, "-m", "voxlake", "segment", "--lake", lake.uri, "--model", "ct-tissue",
               "--registry", str(tmp_path / "registry"), "--json"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert (summary["model"], summary["segmented"], summary["errors"]) == ("ct-tissue", 1, 0)
    [series] = summary["series"]
    assert series["status"] == "segmented" and series["SEG"] and series["volumes_ml"]["fat"] > 0
    assert "segment ct-tissue" in out.stderr  # the progress bar
    again = json.loads(subprocess.run(command, capture_output=True, text=True, timeout=600, check=True).stdout)
    assert (again["segmented"], again["already_done"]) == (0, 1)


def test_the_spark_engine_writes_what_the_local_engine_writes(tmp_path_factory, ct_series, spark, tmp_path):
    """Series are computed in Spark tasks (the model loaded there from the registry by the version the
    driver resolved) and committed by the driver: the same statistics, one SEG per series, the same
    error for the MR, and nothing done twice."""
    from voxlake.ai.registry import Registry
    from voxlake.ai.segment import segment

    registry = Registry(tmp_path / "registry")
    results = {}
    for engine in ("local", "spark"):
        lake = ct_and_mr_lake(tmp_path_factory, ct_series, 60, 30)
        summary = segment(lake, model="ct-tissue@champion", registry=registry, where="TRUE", meshes=False,
                          engine=engine, spark_master="local[2]")
        assert (summary.selected, summary.segmented, summary.errors) == (2, 1, 1)
        results[engine] = (
            lake.sql("SELECT label, voxels, mean_hu, bbox_min_index, model_version FROM segment_stats "
                     "ORDER BY label").fetchall(),
            lake.sql("SELECT error_class, message FROM segment_errors").fetchall(),
            lake.sql("SELECT count(*) FROM instances WHERE Modality = 'SEG'").fetchall()[0][0],
        )
        again = segment(lake, model="ct-tissue", registry=registry, where="TRUE", engine=engine,
                        spark_master="local[2]")
        assert (again.already_done, again.segmented) == (1, 0)
    assert results["spark"] == results["local"]
    assert results["spark"][2] == 1 and len(results["spark"][0]) == 5

    from voxlake.cli.main import main  # the CLI's --engine spark, on this process's Spark session

    assert main(["segment", "--lake", lake.uri, "--model", "ct-tissue", "--registry", str(tmp_path / "registry"),
                 "--where", "Modality = 'CT'", "--redo", "--no-meshes", "--engine", "spark", "--quiet"]) == 0
    assert lake.sql("SELECT count(*) FROM instances WHERE Modality = 'SEG'").fetchall()[0][0] == 2


def test_an_unknown_engine_is_refused_before_any_work(lake):
    from voxlake.ai.segment import segment
    from voxlake.errors import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="engine must be local or spark"):
        segment(lake, model="ct-tissue", engine="dask")
