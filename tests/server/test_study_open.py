"""Opening a study as OHIF does (QIDO series, series metadata, frames) on the real 134-slice CT:
metadata needs no file parsing, is built once per catalog version, and the frames come by byte
range as pydicom decodes them. Also ``voxlake serve`` itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

import voxlake
from tests.server.conftest import Server

pytestmark = pytest.mark.slow
OHIF_FRAMES = {"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"}


@pytest.fixture(scope="module")
def ct_server(tmp_path_factory: pytest.TempPathFactory, ct_series: Path) -> Iterator[tuple[Server, voxlake.Lake]]:
    from voxlake.server.app import create_app

    lake = voxlake.open(str(tmp_path_factory.mktemp("ct") / "lake"))
    lake.ingest(str(ct_series), workers=0)
    with Server(create_app(lake, viewer=False)) as server:
        yield server, lake


def test_series_metadata_of_the_134_slice_ct_parses_no_file_and_is_cached(
        ct_server: tuple[Server, voxlake.Lake], monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    server, _lake = ct_server
    catalog = server.app.state.catalog
    calls: list[int] = []
    real_meta = catalog.meta
    monkeypatch.setattr(catalog, "meta", lambda uids: calls.append(len(uids)) or real_meta(uids))
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("study open must not parse DICOM files"))
    with httpx.Client(base_url=server.dicomweb) as http:
        [study] = http.get("/studies").json()
        uid = study["0020000D"]["Value"][0]
        [series] = http.get(f"/studies/{uid}/series").json()
        series_uid = series["0020000E"]["Value"][0]
        first = http.get(f"/studies/{uid}/series/{series_uid}/metadata")
        again = http.get(f"/studies/{uid}/series/{series_uid}/metadata")
        assert calls == [134]  # one batch from the catalog, then the cache
        assert first.content == again.content and len(first.json()) == 134
        frame_url = first.json()[0]["7FE00010"]["BulkDataURI"].removeprefix(server.dicomweb)
        response = http.get(frame_url, headers=OHIF_FRAMES)
    assert calls == [134]  # the frame request found its PixelInfo cached by the metadata
    assert response.status_code == 200
    assert "transfer-syntax=1.2.840.10008.1.2" in response.text[:200]


def test_every_frame_of_the_ct_is_pydicoms_pixels(ct_server: tuple[Server, voxlake.Lake]) -> None:
    import httpx
    import numpy as np

    server, lake = ct_server
    for row in lake.sql("SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, uri FROM instances "
                        "ORDER BY InstanceNumber").fetchall()[::19]:
        url = f"{server.dicomweb}/studies/{row[0]}/series/{row[1]}/instances/{row[2]}/frames/1"
        response = httpx.get(url, headers={"Accept": "application/octet-stream"})
        expected = pydicom.dcmread(row[3]).pixel_array
        got = np.frombuffer(response.content, expected.dtype.newbyteorder("<")).reshape(expected.shape)
        assert np.array_equal(got, expected)


def test_the_frames_of_a_series_cost_one_catalog_query_for_the_whole_series(
        ct_server: tuple[Server, voxlake.Lake], monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    server, lake = ct_server
    state = server.app.state.server
    queries: list[tuple[str | None, str | None]] = []
    real = state._query_rows
    monkeypatch.setattr(state, "_query_rows", lambda st, se, sop: queries.append((se, sop)) or real(st, se, sop))
    state.series_rows.clear()
    rows = lake.sql("SELECT StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID FROM instances "
                    "ORDER BY InstanceNumber").fetchall()
    with httpx.Client(base_url=server.dicomweb) as http:
        for study, series, sop in rows[:40]:
            r = http.get(f"/studies/{study}/series/{series}/instances/{sop}/frames/1", headers=OHIF_FRAMES)
            assert r.status_code == 200
        missing = http.get(f"/studies/{rows[0][0]}/series/{rows[0][1]}/instances/1.2.3/frames/1", headers=OHIF_FRAMES)
    assert queries == [(rows[0][1], None)]
    assert missing.status_code == 404 and "instance 1.2.3" in missing.json()["reason"]


def test_voxlake_serve_prints_the_url_and_stops_on_ctrl_c(tmp_path: Path, pydicom_files: Path) -> None:
    import httpx

    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(pydicom_files / "CT_small.dcm"), workers=0)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "voxlake", "serve", "--lake", lake.uri, "--port", str(port),
                             "--no-viewer"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert f"http://localhost:{port}/" in line
        while True:  # uvicorn binds just after the line; bounded by pytest-timeout
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/dicomweb/studies")
                break
            except httpx.ConnectError:
                continue
        assert response.status_code == 200 and len(response.json()) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "stopped" in err
