"""The AI endpoints of ``voxlake serve``: models listed, one series segmented on request with its SEG
at once in QIDO-RS and WADO-RS, jobs that report progress and survive a restart."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pytest

import voxlake
from tests.conftest import ct_and_mr_lake
from tests.server.conftest import Server

pytest.importorskip("highdicom")
pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Any:
    from voxlake.ai.registry import Registry

    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def lake(tmp_path_factory, ct_series: Path) -> voxlake.Lake:
    """12 slices of the real CT and an MR image."""
    return ct_and_mr_lake(tmp_path_factory, ct_series, 60, 12)


def _app(lake: voxlake.Lake, registry: Any) -> Any:
    from voxlake.server.app import create_app

    return create_app(lake, viewer=False, refresh_interval=0, registry=registry)


def _uids(lake: voxlake.Lake, modality: str) -> tuple[str, str]:
    [(study, series)] = lake.sql("SELECT DISTINCT StudyInstanceUID, SeriesInstanceUID FROM instances "
                                 f"WHERE Modality = '{modality}'").fetchall()
    return study, series


def test_models_infer_and_the_seg_is_served_at_once(lake, registry) -> None:
    import httpx

    study, series = _uids(lake, "CT")
    with Server(_app(lake, registry)) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        models = http.get("/ai/models").json()["models"]
        assert {"name": "ct-tissue", "kind": "builtin"}.items() <= models[0].items()
        assert models[0]["labels"]["2"] == "lungs" and models[0]["loaded"] is False

        r = http.post("/ai/models/ct-tissue@champion/infer", json={"SeriesInstanceUID": series, "meshes": False})
        assert r.status_code == 200, r.text
        result = r.json()
        seg = result["SEG"]
        assert seg["StudyInstanceUID"] == study and seg["RetrieveURL"].endswith(
            f"/studies/{study}/series/{seg['SeriesInstanceUID']}/instances/{seg['SOPInstanceUID']}")
        assert result["volumes_ml"]["fat"] > 0 and set(result["seconds"]) == {"load", "predict", "record"}
        assert http.get("/ai/models").json()["models"][0]["loaded"] is True

        found = http.get(f"/dicomweb/studies/{study}/series", params={"Modality": "SEG"}).json()
        assert [s["0020000E"]["Value"][0] for s in found] == [seg["SeriesInstanceUID"]]
        dicom = http.get(seg["RetrieveURL"].replace(server.url, ""),
                         headers={"Accept": 'multipart/related; type="application/dicom"'})
        assert dicom.status_code == 200 and b"DICM" in dicom.content


@pytest.mark.parametrize(("model", "body", "status", "words"), [
    ("no-such-model", {"SeriesInstanceUID": "1.2.3"}, 404, "no series"),
    ("ct-tissue", {}, 400, "SeriesInstanceUID"),
    ("ct-tissue", {"SeriesInstanceUID": "1.2.3"}, 404, "no series 1.2.3"),
])
def test_infer_errors_are_one_clear_line(lake, registry, model, body, status, words) -> None:
    import httpx

    with Server(_app(lake, registry)) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        r = http.post(f"/ai/models/{model}/infer", json=body)
        assert r.status_code == status and words in r.json()["reason"]
        mr = _uids(lake, "MR")[1]
        r = http.post("/ai/models/no-such-model/infer", json={"SeriesInstanceUID": mr})
        assert r.status_code == 404 and "no-such-model" in r.json()["reason"]
        r = http.post("/ai/models/ct-tissue/infer", json={"SeriesInstanceUID": mr})
        assert r.status_code == 400 and "is MR" in r.json()["reason"]


def test_a_job_reports_progress_and_one_left_queued_runs_after_a_restart(lake, registry) -> None:
    import httpx

    from voxlake.ai.service import Job
    from voxlake.server.ai import jobs_folder

    study, ct = _uids(lake, "CT")
    mr = _uids(lake, "MR")[1]
    with Server(_app(lake, registry)) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        r = http.post("/ai/jobs", json={"model": "ct-tissue", "series": [mr], "studies": [study]})
        assert r.status_code == 202 and r.headers["Location"].endswith(f"/ai/jobs/{r.json()['id']}")
        url = r.headers["Location"].replace(server.url, "")
        job = http.get(url).json()
        while job["status"] in ("queued", "running"):
            time.sleep(0.2)
            job = http.get(url).json()
        assert job["status"] == "done" and job["progress"] == {"total": 2, "done": 2, "errors": 1}
        by = {r["SeriesInstanceUID"]: r for r in job["results"]}
        assert by[mr]["status"] == "error" and "is MR" in by[mr]["error"]
        assert by[ct]["status"] in ("segmented", "done before")

    # A server stopped with a job still queued: the next one runs it.
    folder = jobs_folder(lake.uri)
    left = Job("0123456789abcdef0123456789abcdef", "ct-tissue", [ct], created="2026-11-22T00:00:00+00:00")
    (folder / f"{left.id}.json").write_text(json.dumps(dataclasses.asdict(left)))
    with Server(_app(lake, registry)) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        job = http.get(f"/ai/jobs/{left.id}").json()
        while job["status"] in ("queued", "running"):
            time.sleep(0.2)
            job = http.get(f"/ai/jobs/{left.id}").json()
        assert job["status"] == "done" and job["results"][0]["status"] in ("segmented", "done before")
        assert http.get("/ai/jobs/ffffffffffffffffffffffffffffffff").status_code == 404


def test_activelearning_next_names_a_series_and_the_ohif_url_that_opens_it(lake, registry) -> None:
    import httpx

    study, series = _uids(lake, "CT")
    with Server(_app(lake, registry)) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        r = http.get("/ai/activelearning/next", params={"strategy": "first"})
        assert r.status_code == 200, r.text
        case = r.json()
        assert (case["SeriesInstanceUID"], case["StudyInstanceUID"], case["strategy"]) == (series, study, "first")
        assert case["viewer_url"] == (f"{server.url}/segmentation?StudyInstanceUIDs={study}"
                                      f"&initialSeriesInstanceUID={series}")
        assert http.get("/ai/activelearning/next", params={"modality": "MR"}).json()["SeriesInstanceUID"] == \
            _uids(lake, "MR")[1]
        for params, status, words in [({"strategy": "entropy"}, 400, "strategy must be one of"),
                                      ({"strategy": "uncertainty", "model": "ct-tissue"}, 400, "no probabilities"),
                                      ({"modality": "CT'--"}, 400, "modality must be"),
                                      ({"modality": "XA"}, 404, "no series left to label")]:
            r = http.get("/ai/activelearning/next", params=params)
            assert r.status_code == status and words in r.json()["reason"], (params, r.text)


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
def test_a_correction_stored_through_stow_rs_becomes_a_final_label(lake, registry, tmp_path) -> None:
    """What OHIF does when a reader saves an edited segmentation: STOW-RS of a SEG over the model's."""
    import httpx
    import pydicom

    dicomweb_client = pytest.importorskip("dicomweb_client")
    from tests.ai.test_labels import viewer_seg
    from voxlake.ai.volume import load_series

    _study, series = _uids(lake, "CT")
    app = _app(lake, registry)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        r = http.post("/ai/models/ct-tissue/infer", json={"SeriesInstanceUID": series, "meshes": False})
        assert r.status_code == 200, r.text
        volume = load_series(lake, series)
        label_map = registry.load("ct-tissue").predict(volume)
        label_map[label_map == 4] = 0  # the reader erases the fat
        sop = viewer_seg(volume, label_map, tmp_path, creator="Dr^Reader")
        app.state.ai.labels_synced.clear()
        client = dicomweb_client.DICOMwebClient(url=f"{server.url}/dicomweb")
        client.store_instances([pydicom.dcmread(tmp_path / f"{sop}.dcm")])
        assert app.state.ai.labels_synced.wait(120)
    rows = {r["label"]: r for r in lake.sql(f"SELECT * FROM labels WHERE SegmentationSOPInstanceUID = '{sop}'")
            .arrow().to_pylist()}
    assert {r["status"] for r in rows.values()} == {"final"} and rows["body"]["dice"] == 1.0
    assert rows["body"]["author"] == "Dr^Reader" and rows["body"]["model"] == "ct-tissue"
    assert "fat" not in rows  # erased: the reader's SEG has no fat segment
