"""MONAI Label's REST API served by voxlake, exercised as its clients call it.

Written from MONAI Label's API (monailabel/endpoints/*.py) and its two clients: 3D Slicer's module
(plugins/slicer/MONAILabel/MONAILabelLib/client.py: JSON bodies for /activelearning and /train,
multipart/form-data with a ``params`` field and ``label`` file for /infer and /datastore/label, the
image id in the query) and the OHIF v3 plugin (services/MonaiLabelClient.js: ``output=all`` with
``result_extension=.nrrd``, ``result_dtype=uint16``, ``result_compress=false``). Each request below is
built byte for byte as those clients build it.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import voxlake
from tests.conftest import ct_and_mr_lake
from tests.server.conftest import Server

pytest.importorskip("highdicom")
pytest.importorskip("mlflow")
pytest.importorskip("nibabel")
pytestmark = pytest.mark.slow

#: The boundary 3D Slicer's MONAILabelUtils.encode_multipart_formdata uses.
SLICER_BOUNDARY = "----------lImIt_of_THE_fIle_eW_$"


def slicer_multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, dict[str, str]]:
    """The body and headers of MONAILabelUtils.http_multipart (fields first, then files)."""
    lines: list[bytes] = []
    for key, value in fields.items():
        lines += [f"--{SLICER_BOUNDARY}".encode(), f'Content-Disposition: form-data; name="{key}"'.encode(), b"",
                  value.encode()]
    for key, (filename, data) in files.items():
        lines += [f"--{SLICER_BOUNDARY}".encode(),
                  f'Content-Disposition: form-data; name="{key}"; filename="{filename}"'.encode(),
                  b"Content-Type: application/octet-stream", b"", data]
    lines += [f"--{SLICER_BOUNDARY}--".encode(), b""]
    body = b"\r\n".join(lines)
    return body, {"content-type": f"multipart/form-data; boundary={SLICER_BOUNDARY}",
                  "content-length": str(len(body))}


def parse_multipart(response: Any) -> dict[str, tuple[str | None, bytes]]:
    from voxlake.server.monailabel import parse_form

    assert response.headers["content-type"].startswith("multipart/form-data")
    return parse_form(response.content, response.headers["content-type"])


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> Any:
    from voxlake.ai.registry import Registry

    registry = Registry(tmp_path_factory.mktemp("registry"))
    weights = tmp_path_factory.mktemp("weights") / "weights.pt"
    weights.write_bytes(b"not loaded by these tests")
    registry.register("organs", {"weights.pt": weights}, kind="network", labels={1: "liver", 2: "spleen"})
    return registry


@pytest.fixture(scope="module")
def lake(tmp_path_factory, ct_series: Path) -> voxlake.Lake:
    """12 slices of the real CT and an MR image."""
    return ct_and_mr_lake(tmp_path_factory, ct_series, 60, 12)


def _uids(lake: voxlake.Lake, modality: str) -> tuple[str, str]:
    [(study, series)] = lake.sql("SELECT DISTINCT StudyInstanceUID, SeriesInstanceUID FROM instances "
                                 f"WHERE Modality = '{modality}'").fetchall()
    return study, series


@pytest.fixture(scope="module")
def server(lake, registry) -> Any:
    from voxlake.server.app import create_app

    with Server(create_app(lake, viewer=False, refresh_interval=0, registry=registry)) as s:
        yield s


@pytest.fixture(scope="module")
def http(server) -> Any:
    import httpx

    with httpx.Client(base_url=server.url, timeout=300) as c:
        yield c


def test_info_lists_the_models_with_their_labels(http) -> None:
    r = http.get("/info/")
    assert r.status_code == 200, r.text
    info = r.json()
    tissue = info["models"]["ct-tissue"]
    assert tissue["type"] == "segmentation" and tissue["dimension"] == 3 and tissue["description"]
    assert tissue["labels"] == {"body": 1, "lungs": 2, "bone": 3, "fat": 4, "muscle": 5}
    assert info["labels"][0] == "background" and {"body", "lungs", "liver"} <= set(info["labels"])
    assert set(info["strategies"]) == {"first", "random", "uncertainty"}
    assert set(info["trainers"]) == {"organs"}  # the network model; ct-tissue is fixed rules
    assert info["datastore"]["total"] == 2 and "completed" in info["datastore"]


def test_activelearning_then_infer_in_every_output_the_clients_ask_for(lake, http) -> None:
    import nibabel as nib
    import pydicom

    study, series = _uids(lake, "CT")
    # Slicer: MONAILabelUtils.http_method("POST", ..., params) sends the params dict as JSON.
    r = http.post("/activelearning/first", content=json.dumps({"client_id": "user-xyz"}),
                  headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    sample = r.json()
    assert (sample["id"], sample["SeriesInstanceUID"], sample["StudyInstanceUID"]) == (series, series, study)
    assert sample["name"].endswith(".nii.gz") and sample["strategy"]["first"]["client_id"] == "user-xyz"
    image = sample["id"]

    # Slicer: infer(model, image_in, params) posts multipart with a params field, reads params + one file.
    body, headers = slicer_multipart({"params": json.dumps({"client_id": "user-xyz"})}, {})
    r = http.post(f"/infer/ct-tissue?image={image}", content=body, headers=headers)
    assert r.status_code == 200, r.text
    parts = parse_multipart(r)
    params = json.loads(parts["params"][1])
    assert params["label_names"] == {"body": 1, "lungs": 2, "bone": 3, "fat": 4, "muscle": 5}
    filename, data = parts["image"]
    assert filename == f"{image}.nii.gz"
    labels = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(data)).dataobj)
    assert labels.shape == (512, 512, 12) and set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5} and labels.max() > 0
    assert params["SEG"]["RetrieveURL"].endswith(params["SEG"]["SOPInstanceUID"])

    # OHIF v3 plugin: output=all, a FormData with params asking for uncompressed uint16 NRRD.
    ohif = {"result_extension": ".nrrd", "result_dtype": "uint16", "result_compress": False,
            "restore_label_idx": False}
    r = http.post(f"/infer/ct-tissue?image={image}&output=all",
                  files={"params": (None, json.dumps(ohif), "application/json")},
                  headers={"accept": "application/json, multipart/form-data"})
    assert r.status_code == 200, r.text
    assert b"Content-Type: application/json" in r.content and b"Content-Type: application/octet-stream" in r.content
    parts = parse_multipart(r)
    assert set(json.loads(parts["params"][1])["centroids"]) <= {"body", "lungs", "bone", "fat", "muscle"}
    nrrd = parts["image"][1]
    header, _, raw = nrrd.partition(b"\n\n")
    assert b"type: uint16" in header and b"sizes: 512 512 12" in header and b"encoding: raw" in header
    ohif_labels = np.frombuffer(raw, "<u2").reshape(12, 512, 512)
    assert np.array_equal(ohif_labels, labels.transpose(2, 1, 0))  # same map, (i, j, k) order with i fastest

    # The DICOM SEG the run wrote into the lake.
    r = http.post(f"/infer/ct-tissue?image={image}&output=dicom_seg",
                  files={"params": (None, "{}")})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", r.text
    seg = pydicom.dcmread(io.BytesIO(r.content))
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == image
    assert seg.StudyInstanceUID == study

    for url, status, words in [("/infer/ct-tissue?image=1.2.3", 404, "no image series"),
                               ("/infer/no-such-model?image=" + image, 404, "no-such-model"),
                               (f"/infer/ct-tissue?image={_uids(lake, 'MR')[1]}", 400, "is MR"),
                               (f"/infer/ct-tissue?image={image}&output=png", 400, "output must be"),
                               (f"/infer/ct-tissue?image={image}&session_id=x", 501, "session")]:
        r = http.post(url, files={"params": (None, "{}")})
        assert r.status_code == status and words in r.json()["reason"], (url, r.text)


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
def test_saved_labels_land_in_the_lake_as_finals(lake, registry, http, tmp_path) -> None:
    from tests.ai.test_labels import viewer_seg
    from voxlake.ai.volume import load_series

    _study, image = _uids(lake, "CT")
    volume = load_series(lake, image)
    label_map = registry.load("ct-tissue").predict(volume)

    # A label map as Slicer saves it: the segments exported on the image volume, a .nrrd, label_info.
    from voxlake.server.monailabel import write_nrrd

    corrected = label_map.copy()
    corrected[corrected == 4] = 0  # the reader erases the fat
    nrrd = write_nrrd(corrected, volume.affine, dtype=np.uint8, compress=True)
    label_info = [{"name": name, "idx": value} for value, name in
                  {1: "body", 2: "lungs", 3: "bone", 5: "muscle"}.items()]
    body, headers = slicer_multipart({"params": json.dumps({"label_info": label_info, "client_id": "x"})},
                                     {"label": ("label.nrrd", nrrd)})
    r = http.put(f"/datastore/label?image={image}", content=body, headers=headers)
    assert r.status_code == 200, r.text
    saved = r.json()
    assert (saved["image"], saved["label"], saved["tag"]) == (image, image, "final")
    rows = {row["label"]: row for row in saved["labels"]}
    names = {1: "body", 2: "lungs", 3: "bone", 4: "fat", 5: "muscle"}
    assert set(rows) == {names[v] for v in np.unique(corrected) if v} and "fat" not in rows
    assert {row["status"] for row in rows.values()} == {"final"}
    assert all(row["voxels"] == int(np.count_nonzero(corrected == v)) for v, n in names.items() if n in rows
               for row in [rows[n]])

    # A DICOM SEG as a viewer writes it (Slicer with tag=final, as MONAILabelClient.save_label sends a tag).
    sop = viewer_seg(volume, label_map, tmp_path, creator="Dr^Reader")
    body, headers = slicer_multipart({"params": json.dumps({})},
                                     {"label": (f"{sop}.dcm", (tmp_path / f"{sop}.dcm").read_bytes())})
    r = http.put(f"/datastore/label?image={image}&tag=final", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["SOPInstanceUID"] == sop
    final = lake.sql(f"SELECT status, label FROM labels WHERE SegmentationSOPInstanceUID = '{sop}'").fetchall()
    assert {s for s, _ in final} == {"final"} and {n for _, n in final} == {names[v] for v in np.unique(label_map) if v}

    r = http.get("/datastore/", params={"output": "stats"})
    assert r.status_code == 200, r.text
    stats = r.json()
    assert stats["total"] == 2 and stats["completed"] == 1 and stats["label_tags"]["final"] == 1
    everything = http.get("/datastore/", params={"output": "all"}).json()
    assert everything["objects"][image]["labels"]["final"]["info"]["SOPInstanceUID"] == sop
    train = http.get("/datastore/", params={"output": "train"}).json()
    assert [(t["image"], t["meta"]["label"]["SOPInstanceUID"]) for t in train] == [(image, sop)]

    # Every CT series is labelled now: MONAI Label answers {} and its clients say "no more samples".
    r = http.post("/activelearning/random", content=json.dumps({"client_id": "x"}),
                  headers={"content-type": "application/json"})
    assert r.status_code == 200 and r.json() == {}

    for url, files, status, words in [
            (f"/datastore/label?image={image}", {"label": ("label.png", b"\x89PNG....")}, 415, "send a DICOM SEG"),
            (f"/datastore/label?image={image}", {"label": ("label.nrrd", write_nrrd(
                corrected[:6], volume.affine, dtype=np.uint8, compress=False))}, 422, "does not lie on the grid"),
            (f"/datastore/label?image={image}&tag=original", {"label": ("l.nrrd", nrrd)}, 501, "tag"),
            ("/datastore/label?image=1.2.3", {"label": ("l.nrrd", nrrd)}, 404, "no image series")]:
        body, headers = slicer_multipart({"params": "{}"}, files)
        r = http.put(url, content=body, headers=headers)
        assert r.status_code == status and words in r.json()["reason"], (url, r.text)


def test_train(http, monkeypatch) -> None:
    r = http.post("/train/ct-tissue", content=json.dumps({"client_id": "x"}),
                  headers={"content-type": "application/json"})
    assert r.status_code == 400 and "cannot be trained" in r.json()["reason"]
    assert http.post("/train/no-such-model").status_code == 404

    monkeypatch.setitem(sys.modules, "voxlake.ai.finetune", None)  # the module is absent
    r = http.post("/train/organs")
    assert r.status_code == 501 and "finetune_from_labels" in r.json()["reason"]

    calls = []
    release = threading.Event()  # the task runs until the test has seen it refuse a second one

    def finetune_from_labels(lake: Any, registry: Any, model: str, **options: Any) -> Any:
        calls.append((model, options))
        release.wait(timeout=60)
        return types.SimpleNamespace(version="2", promoted=False,
                                     to_dict=lambda: {"model": model, "version": "2", "promoted": False})

    monkeypatch.setitem(sys.modules, "voxlake.ai.finetune",
                        types.SimpleNamespace(finetune_from_labels=finetune_from_labels,
                                              finetune_running=lambda _uri: False))
    assert http.get("/train/").status_code == 404  # no task yet, as MONAI Label answers
    r = http.post("/train/organs", content=json.dumps({"client_id": "x", "max_epochs": 3}),
                  headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "RUNNING" and task["request"]["models"] == ["organs"]
    assert http.get("/train/", params={"check_if_running": "true"}).status_code == 200  # Slicer's poll
    assert http.post("/train/organs").status_code == 429  # one at a time
    release.set()
    status = http.get("/train/").json()
    while status["status"] == "RUNNING":
        time.sleep(0.1)
        status = http.get("/train/").json()
    assert status["status"] == "DONE" and status["result"]["organs"]["version"] == "2", status
    assert calls == [("organs", {"epochs": 3})]
    assert http.get("/train/", params={"check_if_running": "true"}).status_code == 404
    assert http.get("/info/").json()["train_stats"]["organs"]["status"] == "DONE"
    r = http.delete("/train/")
    assert r.status_code == 501 and "stopping" in r.json()["reason"]


def test_train_is_refused_while_a_fine_tune_of_the_lake_started_elsewhere_runs(http, lake) -> None:
    """/ai/train, the CLI and MONAI Label's /train share the lake's fine-tune lock."""
    pytest.importorskip("torch")
    from voxlake.ai.finetune import finetune_lock

    with finetune_lock(lake.uri):
        r = http.post("/train/organs")
        assert r.status_code == 429 and "already running" in r.json()["reason"], r.text
