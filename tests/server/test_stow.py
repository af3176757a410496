"""STOW-RS (PS3.18 10.5) against a real uvicorn server on loopback: dicomweb-client for well-formed
requests, raw httpx for malformed ones; the lake is checked with ``lake.sql`` right after each answer."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest

import voxlake
from tests.conftest import CT_SERIES, PYDICOM_FILES, need
from tests.server.conftest import Server

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
dicomweb_client = pytest.importorskip("dicomweb_client")

#: PS3.18 Table I.2-2.
OUT_OF_RESOURCES, MISMATCH, CANNOT_UNDERSTAND = 0xA700, 0xA900, 0xC210
PROCESSING_FAILURE, SOP_CLASS_NOT_SUPPORTED = 0x0110, 0x0122
BOUNDARY = "voxlake-test-boundary"

#: One file per transfer syntax, each its own SOP Instance (MR_small_* share one UID).
SYNTAX_FILES = {
    "CT_small.dcm": "1.2.840.10008.1.2.1",  # explicit VR little endian
    "MR_small_bigendian.dcm": "1.2.840.10008.1.2.2",
    "JPEG2000.dcm": "1.2.840.10008.1.2.4.91",
    "SC_rgb_rle.dcm": "1.2.840.10008.1.2.5",
    "SC_rgb_jpeg_dcmtk.dcm": "1.2.840.10008.1.2.4.50",
}


def make_app(lake: voxlake.Lake, **settings: Any) -> Any:
    from voxlake.server.app import create_app

    return create_app(lake, viewer=False, **settings)


def client(server: Server) -> Any:
    """dicomweb-client's STOW-RS against the server under test."""
    return dicomweb_client.DICOMwebClient(url=server.dicomweb)


@pytest.fixture
def lake(tmp_path: Path) -> voxlake.Lake:
    return voxlake.open(str(tmp_path / "lake"))


@pytest.fixture
def server(lake: voxlake.Lake) -> Iterator[Server]:
    with Server(make_app(lake)) as s:
        yield s


def _files(*names: str) -> list[Path]:
    return [need(PYDICOM_FILES / n) for n in names]


def _ct(n: int) -> list[Path]:
    return sorted(need(CT_SERIES).glob("*.dcm"))[:n]


def _datasets(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def _multipart(parts: list[bytes], *, part_type: str = "application/dicom", close: bool = True) -> bytes:
    out = b""
    for p in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {part_type}\r\n\r\n".encode() + p + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def _post(server: Server, parts: list[bytes], *, path: str = "/studies", **kwargs: Any) -> httpx.Response:
    headers = {"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'}
    headers.update(kwargs.pop("headers", {}))
    return httpx.post(
        server.dicomweb + path, content=_multipart(parts), headers=headers, timeout=60, **kwargs
    )


def _failures(body: dict[str, Any]) -> list[int]:
    return [item["00081197"]["Value"][0] for item in body.get("00081198", {}).get("Value", [])]


def _referenced(body: dict[str, Any]) -> list[str]:
    return [item["00081155"]["Value"][0] for item in body.get("00081199", {}).get("Value", [])]


def _count(lake: voxlake.Lake, view: str = "instances", where: str = "TRUE") -> int:
    try:
        return lake.sql(f"SELECT count(*) FROM {view} WHERE {where}").fetchall()[0][0]
    except voxlake.LakeNotFoundError:
        return 0


def _dcm_files(lake: voxlake.Lake) -> list[Path]:
    return sorted((Path(lake.uri) / "dicom").rglob("*.dcm")) if (Path(lake.uri) / "dicom").is_dir() else []


# -- success ------------------------------------------------------------------------------


def test_store_series_and_transfer_syntaxes_are_queryable_right_after_the_response(
    server: Server, lake: voxlake.Lake
) -> None:
    paths = _ct(4) + _files(*SYNTAX_FILES)
    datasets = _datasets(paths)
    response = client(server).store_instances(datasets)
    sops = [str(ds.SOPInstanceUID) for ds in datasets]
    assert sorted(str(item.ReferencedSOPInstanceUID) for item in response.ReferencedSOPSequence) == sorted(
        sops
    )
    assert "FailedSOPSequence" not in response
    ct = datasets[0]
    url = next(
        i.RetrieveURL
        for i in response.ReferencedSOPSequence
        if i.ReferencedSOPInstanceUID == ct.SOPInstanceUID
    )
    assert url == (
        f"{server.dicomweb}/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}"
        f"/instances/{ct.SOPInstanceUID}"
    )
    rows = dict(lake.sql("SELECT SOPInstanceUID, TransferSyntaxUID FROM instances").fetchall())
    assert set(rows) == set(sops)
    for name, syntax in SYNTAX_FILES.items():
        assert rows[str(pydicom.dcmread(PYDICOM_FILES / name).SOPInstanceUID)] == syntax
    # Landed where DIMSE lands, committed as one run.
    assert all(
        uri.startswith(str(Path(lake.uri) / "dicom"))
        for (uri,) in lake.sql("SELECT uri FROM instances").fetchall()
    )
    assert _count(lake, "ingest_runs") == 1


def test_store_to_one_study_sets_its_retrieve_url(server: Server, lake: voxlake.Lake) -> None:
    datasets = _datasets(_ct(2))
    study = str(datasets[0].StudyInstanceUID)
    response = client(server).store_instances(datasets, study_instance_uid=study)
    assert response.RetrieveURL == f"{server.dicomweb}/studies/{study}"
    assert _count(lake, where=f"StudyInstanceUID = '{study}'") == 2


def test_unquoted_type_and_a_part_without_file_meta_are_accepted(server: Server, lake: voxlake.Lake) -> None:
    bare = need(PYDICOM_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes()
    headers = {"Content-Type": f"multipart/related; type=application/dicom; boundary={BOUNDARY}"}
    r = _post(server, [bare], headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/dicom+json"
    assert _referenced(r.json()) == ["1.2.333.4444.5.6.7.8"]
    stored = pydicom.dcmread(_dcm_files(lake)[0])
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert stored.file_meta.MediaStorageSOPInstanceUID == "1.2.333.4444.5.6.7.8"


# -- failure reasons ------------------------------------------------------------------------


def test_malformed_parts_fail_as_cannot_understand_with_400(server: Server, lake: voxlake.Lake) -> None:
    parts = [
        b"this is not DICOM at all",
        need(PYDICOM_FILES / "MR_truncated.dcm").read_bytes(),
        need(PYDICOM_FILES / "meta_missing_tsyntax.dcm").read_bytes(),
    ]
    r = _post(server, parts)
    assert r.status_code == 400, r.text
    assert _failures(r.json()) == [CANNOT_UNDERSTAND] * 3
    assert _count(lake) == 0 and _dcm_files(lake) == []


def test_a_malformed_part_fails_alone_with_202(server: Server, lake: voxlake.Lake) -> None:
    good = _ct(1)[0].read_bytes()
    r = _post(server, [good, b"\x00" * 200])
    assert r.status_code == 202, r.text
    assert _failures(r.json()) == [CANNOT_UNDERSTAND]
    assert len(_referenced(r.json())) == 1 and _count(lake) == 1


def test_non_storage_sop_class_fails_with_0122_and_409(server: Server, lake: voxlake.Lake) -> None:
    ds = pydicom.dcmread(_files("CT_small.dcm")[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.1"  # Verification
    with pytest.raises(Exception) as raised:
        client(server).store_instances([ds])
    assert getattr(raised.value, "response", None) is not None and raised.value.response.status_code == 409
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = _post(server, [buf.getvalue()])
    assert r.status_code == 409
    item = r.json()["00081198"]["Value"][0]
    assert item["00081197"]["Value"] == [SOP_CLASS_NOT_SUPPORTED]
    assert item["00081150"]["Value"] == ["1.2.840.10008.1.1"]
    assert item["00081155"]["Value"] == [str(ds.SOPInstanceUID)]
    assert _count(lake) == 0


def test_study_mismatch_fails_with_a900(server: Server, lake: voxlake.Lake) -> None:
    ct = _ct(1)[0].read_bytes()
    other = _files("CT_small.dcm")[0].read_bytes()
    study = str(pydicom.dcmread(io.BytesIO(ct)).StudyInstanceUID)
    r = _post(server, [other], path="/studies/1.2.3.4")
    assert r.status_code == 409
    assert _failures(r.json()) == [MISMATCH]
    r = _post(server, [ct, other], path=f"/studies/{study}")
    assert r.status_code == 202
    assert _failures(r.json()) == [MISMATCH]
    assert _count(lake) == 1 and _count(lake, where=f"StudyInstanceUID = '{study}'") == 1


def test_unwritable_landing_area_fails_with_a700(lake: voxlake.Lake) -> None:
    Path(lake.uri).mkdir(parents=True)
    (Path(lake.uri) / "dicom").write_bytes(b"a file where the landing folder should be")
    with Server(make_app(lake)) as server:
        r = _post(server, [_ct(1)[0].read_bytes()])
    assert r.status_code == 409, r.text
    assert _failures(r.json()) == [OUT_OF_RESOURCES]
    assert _count(lake) == 0


# -- HTTP-level errors ----------------------------------------------------------------------


def test_body_over_the_limit_is_413(lake: voxlake.Lake) -> None:
    data = _ct(1)[0].read_bytes()
    with Server(make_app(lake, max_upload_bytes=len(data) // 2)) as server:
        assert _post(server, [data]).status_code == 413
        # Chunked, without Content-Length: counted while streaming.
        chunks = iter([_multipart([data])[i : i + 65536] for i in range(0, len(_multipart([data])), 65536)])
        r = httpx.post(
            server.dicomweb + "/studies",
            content=chunks,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'},
        )
        assert r.status_code == 413
    assert _dcm_files(lake) == []


@pytest.mark.parametrize(
    "content_type",
    [
        "application/dicom",
        f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
        f"multipart/form-data; boundary={BOUNDARY}",
    ],
)
def test_unsupported_media_type_is_415(server: Server, content_type: str) -> None:
    r = _post(server, [_ct(1)[0].read_bytes()], headers={"Content-Type": content_type})
    assert r.status_code == 415


def test_accept_without_dicom_json_is_406(server: Server) -> None:
    r = _post(server, [_ct(1)[0].read_bytes()], headers={"Accept": "application/dicom+xml"})
    assert r.status_code == 406


def test_truncated_multipart_is_400_and_stores_nothing(server: Server, lake: voxlake.Lake) -> None:
    body = _multipart([_ct(1)[0].read_bytes()], close=False)
    r = httpx.post(
        server.dicomweb + "/studies",
        content=body,
        headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'},
    )
    assert r.status_code == 400
    assert _dcm_files(lake) == []


# -- duplicates -----------------------------------------------------------------------------


def test_identical_resend_is_success_and_adds_nothing(server: Server, lake: voxlake.Lake) -> None:
    datasets = _datasets(_ct(2))
    client(server).store_instances(datasets)
    response = client(server).store_instances(datasets)
    assert len(response.ReferencedSOPSequence) == 2
    assert _count(lake) == 2 and _count(lake, "instances_history") == 2
    assert len(_dcm_files(lake)) == 2


def test_different_bytes_for_a_known_instance_are_a_new_version(server: Server, lake: voxlake.Lake) -> None:
    first, second = _files("MR_small.dcm", "MR_small_RLE.dcm")
    sop = str(pydicom.dcmread(first).SOPInstanceUID)
    assert _post(server, [first.read_bytes()]).status_code == 200
    r = _post(server, [second.read_bytes()])
    assert r.status_code == 200 and _referenced(r.json()) == [sop]
    assert lake.sql("SELECT TransferSyntaxUID FROM instances").fetchall() == [("1.2.840.10008.1.2.5",)]
    assert _count(lake, "instances_history") == 2
    assert sorted(p.name for p in _dcm_files(lake)) == [f"{sop}.2.dcm", f"{sop}.dcm"]


def test_two_versions_in_one_request_fail_the_second(server: Server, lake: voxlake.Lake) -> None:
    first, second = _files("MR_small.dcm", "MR_small_RLE.dcm")
    r = _post(server, [first.read_bytes(), second.read_bytes()])
    assert r.status_code == 202
    assert _failures(r.json()) == [PROCESSING_FAILURE]
    assert lake.sql("SELECT TransferSyntaxUID FROM instances").fetchall() == [("1.2.840.10008.1.2.1",)]


# -- atomicity and concurrency ---------------------------------------------------------------


def test_commit_failure_reports_every_instance_and_leaves_nothing(
    server: Server, lake: voxlake.Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    import voxlake.ingest.run

    def broken_commit(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("simulated commit failure")

    monkeypatch.setattr(voxlake.ingest.run, "commit_run", broken_commit)
    r = _post(server, [p.read_bytes() for p in _ct(3)])
    assert r.status_code == 409
    assert _failures(r.json()) == [PROCESSING_FAILURE] * 3
    assert "00081199" not in r.json()
    assert _count(lake) == 0 and _count(lake, "instances_history") == 0
    assert _dcm_files(lake) == []  # nothing left for a recovery pass to index


def test_concurrent_requests_never_index_an_instance_twice(server: Server, lake: voxlake.Lake) -> None:
    parts = [p.read_bytes() for p in _ct(3)]
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda _: _post(server, parts).status_code, range(4)))
    assert statuses == [200] * 4
    assert _count(lake) == 3 and _count(lake, "instances_history") == 3


def test_a_search_right_after_a_store_finds_it(lake: voxlake.Lake) -> None:
    # The catalog would otherwise wait an hour before looking at the lake again.
    with Server(make_app(lake, refresh_interval=3600)) as server:
        path = _ct(1)[0]
        assert httpx.get(f"{server.url}/dicomweb/studies").status_code == 204
        assert _post(server, [path.read_bytes()]).status_code == 200
        found = httpx.get(f"{server.url}/dicomweb/studies")
        assert found.status_code == 200
        study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
        assert [r["0020000D"]["Value"][0] for r in found.json()] == [study]


def test_store_instances_library_and_crash_recovery_without_http(lake: voxlake.Lake) -> None:
    from voxlake.net.store import LandingArea
    from voxlake.server.stow_store import commit_landed, store_instances

    first, second = _ct(2)
    result = store_instances(lake, [first.read_bytes()])
    assert result.http_status() == 200 and result.run_id is not None
    # A file landed but never committed (a crash between the two) is indexed by the recovery pass.
    ds = pydicom.dcmread(second)
    LandingArea(Path(lake.uri) / "dicom").store(
        second.read_bytes(), ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    )
    assert _count(lake) == 1
    assert commit_landed(lake) == 2
    assert _count(lake) == 2 and _count(lake, "instances_history") == 2
