"""Errors, limits and the boundaries of what a request can read."""

from __future__ import annotations

from typing import Any

import pytest

from tests.server.conftest import Server, rows

pytestmark = pytest.mark.slow
CT_STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


def test_unknown_uids_are_404_with_a_reason(http: Any, lake: Any) -> None:
    row = rows(lake, f"StudyInstanceUID = '{CT_STUDY}'")[0]
    for path in ("/studies/1.2.3", f"/studies/{CT_STUDY}/series/1.2.3", f"/studies/{CT_STUDY}/series/"
                 f"{row['SeriesInstanceUID']}/instances/1.2.3/metadata", "/studies/1.2.3/metadata",
                 f"/studies/{CT_STUDY}/series/1.2.3/thumbnail"):
        response = http.get(path)
        assert response.status_code == 404, path
        assert "not in this lake" in response.json()["reason"]


@pytest.mark.parametrize("path", [
    "/studies/..%2F..%2Fetc%2Fpasswd",
    "/studies/1.2.3/series/..%2F..%2F..%2Fetc/instances/x",
    "/studies/%2Fetc%2Fpasswd/metadata",
    "/studies/1.2.3/series/4.5.6/instances/1.2.3/bulkdata/0/100",
])
def test_paths_cannot_name_files(http: Any, path: str) -> None:
    response = http.get(path)
    assert response.status_code in (400, 404)
    assert "root:" not in response.text


def test_bulkdata_outside_the_instance_file_is_404(http: Any, lake: Any) -> None:
    row = rows(lake, f"StudyInstanceUID = '{CT_STUDY}'")[0]
    base = f"/studies/{CT_STUDY}/series/{row['SeriesInstanceUID']}/instances/{row['SOPInstanceUID']}/bulkdata"
    assert http.get(f"{base}/{row['size']}/10").status_code == 404
    assert http.get(f"{base}/-5/10").status_code == 404
    assert http.get(f"{base}/0/132").status_code == 200


def test_invalid_uids_are_400(http: Any) -> None:
    assert http.get("/studies/" + "1" * 80).status_code == 400
    assert http.get("/studies/1.2.3;DROP/series").status_code == 400


def test_oversized_uploads_are_413_before_reading(lake: Any) -> None:
    import httpx

    from voxlake.server.app import create_app

    with Server(create_app(lake, viewer=False, max_upload_bytes=1000)) as server:
        response = httpx.post(f"{server.dicomweb}/studies", content=b"x" * 2000,
                              headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
    assert response.status_code == 413 and "1000" in response.json()["reason"]


def test_cors_is_off_by_default_and_configurable(http: Any, lake: Any) -> None:
    import httpx

    from voxlake.server.app import create_app

    assert "access-control-allow-origin" not in http.get("/studies", headers={"Origin": "https://x.org"}).headers
    with Server(create_app(lake, viewer=False, cors_origins=["https://viewer.example.org"])) as server:
        response = httpx.get(f"{server.dicomweb}/studies", headers={"Origin": "https://viewer.example.org"})
        assert response.headers["access-control-allow-origin"] == "https://viewer.example.org"
        assert "warning" in response.headers["access-control-expose-headers"].lower()


def test_a_lake_committed_to_while_serving_is_seen(tmp_path: Any, pydicom_files: Any) -> None:
    import httpx

    import voxlake
    from voxlake.server.app import create_app

    lake = voxlake.open(str(tmp_path / "lake"))
    with Server(create_app(lake, viewer=False, refresh_interval=0)) as server:
        assert httpx.get(f"{server.dicomweb}/studies").status_code == 204
        lake.ingest(str(pydicom_files / "CT_small.dcm"), workers=0)
        found = httpx.get(f"{server.dicomweb}/studies").json()
        assert len(found) == 1


def test_a_missing_viewer_is_a_log_line_not_a_failed_start(lake: Any, tmp_path: Any, monkeypatch: Any,
                                                           caplog: Any) -> None:
    import httpx

    from voxlake.server.app import create_app

    monkeypatch.setenv("VOXLAKE_OHIF_DIST", str(tmp_path))  # no index.html there
    app = create_app(lake, viewer=True)
    assert "viewer not served" in caplog.text
    with Server(app) as server:
        assert httpx.get(f"{server.dicomweb}/studies").status_code == 200
        assert httpx.get(f"{server.url}/").status_code == 404
