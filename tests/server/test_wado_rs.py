"""WADO-RS (PS3.18 10.4) against a real server: instances with transfer syntax negotiation, metadata
with absolute BulkDataURIs (behind proxies too), frames that decode to pydicom's pixels, bulk data,
rendered images and thumbnails."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.server.conftest import rows

pytestmark = pytest.mark.slow

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
CT_STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


def parts(response: Any) -> list[tuple[str, bytes]]:
    """(Content-Type, body) of each part of a multipart/related response."""
    ctype = response.headers["content-type"]
    assert ctype.startswith("multipart/related"), ctype
    boundary = next(p.split("=", 1)[1].strip('"') for p in ctype.split(";") if p.strip().startswith("boundary="))
    out = []
    for chunk in response.content.split(f"--{boundary}".encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().strip().splitlines())
        out.append((headers["Content-Type"], body.removesuffix(b"\r\n")))
    return out


def one(lake: Any, where: str) -> dict[str, Any]:
    found = rows(lake, where)
    assert found, where
    return found[0]


def instance_url(row: dict[str, Any]) -> str:
    return f"/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}/instances/{row['SOPInstanceUID']}"


# -- instances -----------------------------------------------------------------------------------


def test_retrieve_study_series_instance_as_stored_with_star(client: Any, lake: Any) -> None:
    star = (("application/dicom", "*"),)
    study = client.retrieve_study(CT_STUDY, media_types=star)
    assert {ds.SOPInstanceUID for ds in study} == {r["SOPInstanceUID"] for r in rows(lake, f"StudyInstanceUID = '{CT_STUDY}'")}
    row = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    series = client.retrieve_series(CT_STUDY, row["SeriesInstanceUID"], media_types=star)
    assert all(ds.SeriesInstanceUID == row["SeriesInstanceUID"] for ds in series) and len(series) == 3
    ds = client.retrieve_instance(CT_STUDY, row["SeriesInstanceUID"], row["SOPInstanceUID"], media_types=star)
    assert ds.file_meta.TransferSyntaxUID == row["TransferSyntaxUID"] == IMPLICIT


def test_stored_instance_bytes_are_the_file_bytes_and_parts_state_their_syntax(http: Any, lake: Any) -> None:
    row = one(lake, f"TransferSyntaxUID = '{JPEG_BASELINE}'")
    for accept in ('multipart/related; type="application/dicom"; transfer-syntax=*',
                   "multipart/related; type=application/dicom; transfer-syntax=*"):
        response = http.get(instance_url(row), headers={"Accept": accept})
        assert response.status_code == 200
        [(ctype, body)] = parts(response)
        assert ctype == f"application/dicom; transfer-syntax={JPEG_BASELINE}"
        assert body == Path(row["uri"]).read_bytes()


def test_default_and_explicit_uncompressed_requests_transcode_with_pydicom(client: Any, http: Any, lake: Any) -> None:
    row = one(lake, f"TransferSyntaxUID = '{JPEG_BASELINE}'")
    source = pydicom.dcmread(row["uri"])
    # No transfer-syntax parameter: Explicit VR Little Endian (PS3.18 8.7.3.5.2). dicomweb-client
    # itself always sends one (``*`` by default), so this request is made by hand.
    [(_ctype, body)] = parts(http.get(instance_url(row), headers={"Accept": 'multipart/related; type="application/dicom"'}))
    default = pydicom.dcmread(io.BytesIO(body))
    explicit = client.retrieve_instance(row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"],
                                        media_types=(("application/dicom", EXPLICIT),))
    for ds in (default, explicit):
        assert ds.file_meta.TransferSyntaxUID == EXPLICIT
        assert (ds.pixel_array == source.pixel_array).all()


def test_implicit_request_of_an_implicit_instance_is_the_stored_file(http: Any, lake: Any) -> None:
    row = one(lake, f"TransferSyntaxUID = '{IMPLICIT}' AND has_pixels AND uri LIKE '%dcmqi%'")
    response = http.get(instance_url(row), headers={"Accept": f'multipart/related; type="application/dicom"; '
                                                              f"transfer-syntax={IMPLICIT}"})
    [(ctype, body)] = parts(response)
    assert ctype.endswith(IMPLICIT) and body == Path(row["uri"]).read_bytes()


def test_a_syntax_that_cannot_be_produced_is_406(http: Any, lake: Any) -> None:
    row = one(lake, f"TransferSyntaxUID = '{EXPLICIT}' AND has_pixels")
    response = http.get(instance_url(row), headers={
        "Accept": f'multipart/related; type="application/dicom"; transfer-syntax={JPEG_BASELINE}'})
    assert response.status_code == 406 and "transfer-syntax=*" in response.json()["reason"]
    assert http.get(instance_url(row), headers={"Accept": "application/pdf"}).status_code == 406


# -- metadata ------------------------------------------------------------------------------------


def bulk_uris(ds: Any) -> list[tuple[str, str]]:
    out = []
    for tag, elem in ds.items():
        if "BulkDataURI" in elem:
            out.append((tag, elem["BulkDataURI"]))
        for item in elem.get("Value") or [] if elem.get("vr") == "SQ" else []:
            out += bulk_uris(item)
    return out


def test_metadata_at_study_series_and_instance_levels_is_the_complete_header(client: Any, lake: Any) -> None:
    row = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    study = client.retrieve_study_metadata(CT_STUDY)
    series = client.retrieve_series_metadata(CT_STUDY, row["SeriesInstanceUID"])
    instance = client.retrieve_instance_metadata(CT_STUDY, row["SeriesInstanceUID"], row["SOPInstanceUID"])
    assert len(study) == len(rows(lake, f"StudyInstanceUID = '{CT_STUDY}'")) and len(series) == 3
    meta = json.loads(lake.sql(f"SELECT meta FROM instances WHERE SOPInstanceUID = '{row['SOPInstanceUID']}'")
                      .fetchall()[0][0])
    assert set(instance) == set(meta)
    assert instance["00100010"] == meta["00100010"] and instance["00280030"] == meta["00280030"]
    ds = pydicom.Dataset.from_json(instance, bulk_data_uri_handler=lambda *_: b"")
    assert ds.SOPInstanceUID == row["SOPInstanceUID"] and ds.Rows == 512


def test_pixel_data_bulk_uri_points_at_the_frames_and_others_at_bulkdata(http: Any, lake: Any, server: Any) -> None:
    ct = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    [ds] = http.get(instance_url(ct) + "/metadata").json()
    assert ds["7FE00010"]["BulkDataURI"] == f"{server.dicomweb}{instance_url(ct)}/frames/1"
    ecg = one(lake, "Modality = 'ECG'")
    [ds] = http.get(instance_url(ecg) + "/metadata").json()
    uris = [u for _, u in bulk_uris(ds)]
    assert uris and all(u.startswith(f"{server.dicomweb}{instance_url(ecg)}/bulkdata/") for u in uris)
    source = Path(ecg["uri"]).read_bytes()
    meta = json.loads(lake.sql(f"SELECT meta FROM instances WHERE SOPInstanceUID = '{ecg['SOPInstanceUID']}'")
                      .fetchall()[0][0])
    originals = [u for _, u in bulk_uris(meta)]
    for uri, original in zip(uris, originals, strict=True):
        offset, length = (int(x.split("=")[1]) for x in original.rsplit("?", 1)[1].split("&")[:2])
        response = http.get(uri.removeprefix(server.dicomweb))
        [(ctype, body)] = parts(response)
        assert ctype == "application/octet-stream" and body == source[offset:offset + length]


@pytest.mark.parametrize(("headers", "base"), [
    ({"X-Forwarded-Proto": "https", "X-Forwarded-Host": "pacs.example.org", "X-Forwarded-Prefix": "/imaging"},
     "https://pacs.example.org/imaging/dicomweb"),
    ({"Forwarded": 'for=10.0.0.1;proto=https;host="viewer.example.org:8443"'},
     "https://viewer.example.org:8443/dicomweb"),
    ({"X-Forwarded-Host": "proxy.local", "X-Forwarded-Port": "9000"}, "http://proxy.local:9000/dicomweb"),
])
def test_bulk_data_uris_are_absolute_urls_as_the_client_sees_the_server(
        http: Any, lake: Any, headers: dict[str, str], base: str) -> None:
    row = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    series = http.get(f"/studies/{CT_STUDY}/series/{row['SeriesInstanceUID']}/metadata", headers=headers).json()
    for ds in series:
        assert ds["7FE00010"]["BulkDataURI"].startswith(f"{base}/studies/{CT_STUDY}/series/")
    found = http.get("/studies", params={"StudyInstanceUID": CT_STUDY}, headers=headers).json()
    assert found[0]["00081190"]["Value"] == [f"{base}/studies/{CT_STUDY}"]


def test_series_metadata_is_cached_per_series_and_catalog_version(http: Any, lake: Any, server: Any,
                                                                 monkeypatch: Any) -> None:
    row = one(lake, "PatientName = 'Citizen^Jan'")
    url = f"/studies/{row['StudyInstanceUID']}/series/{row['SeriesInstanceUID']}/metadata"
    first = http.get(url).content
    catalog = server.app.state.catalog
    calls: list[int] = []
    real = catalog.meta
    monkeypatch.setattr(catalog, "meta", lambda uids: calls.append(len(uids)) or real(uids))
    monkeypatch.setattr(pydicom, "dcmread", lambda *a, **k: pytest.fail("metadata must not parse files"))
    assert http.get(url).content == first and calls == []


# -- frames --------------------------------------------------------------------------------------


def pixel_rows(lake: Any) -> list[dict[str, Any]]:
    """Instances with pixels that pydicom decodes here, a few per transfer syntax."""
    from pydicom.pixels import get_decoder

    chosen: dict[str, list[dict[str, Any]]] = {}
    for row in rows(lake, "has_pixels AND BitsAllocated > 1 AND TransferSyntaxUID IS NOT NULL "
                          "AND StudyInstanceUID IS NOT NULL AND SeriesInstanceUID IS NOT NULL"):
        ts = row["TransferSyntaxUID"]
        try:
            if ts not in (IMPLICIT, EXPLICIT, "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99") \
                    and not get_decoder(ts).is_available:
                continue
        except NotImplementedError:
            continue
        if len(chosen.setdefault(ts, [])) < 3:
            chosen[ts].append(row)
    return [r for group in chosen.values() for r in group]


def test_frames_decode_to_exactly_pydicoms_pixels_in_every_transfer_syntax(http: Any, lake: Any) -> None:
    import numpy as np

    checked = set()
    for row in pixel_rows(lake):
        try:
            source = pydicom.dcmread(row["uri"])
            expected = source.pixel_array
        except Exception:
            continue  # pydicom itself cannot decode it: nothing to compare against
        frames = int(source.get("NumberOfFrames", 1) or 1)
        numbers = ",".join(str(n) for n in range(1, frames + 1))
        response = http.get(f"{instance_url(row)}/frames/{numbers}",
                            headers={"Accept": f"multipart/related; type=application/octet-stream; "
                                               f"transfer-syntax={EXPLICIT}"})
        assert response.status_code == 200, (row["uri"], response.text)
        got = parts(response)
        assert len(got) == frames
        stack = [expected] if frames == 1 else list(expected)
        if source.PhotometricInterpretation == "YBR_FULL_422" and row["TransferSyntaxUID"] == EXPLICIT:
            # Native 4:2:2 is the stored bytes (PS3.5 8.2.1); pydicom's array is upsampled.
            assert [b for _, b in got] == [source.PixelData]
            continue
        for (ctype, body), want in zip(got, stack, strict=True):
            assert ctype == f"application/octet-stream; transfer-syntax={EXPLICIT}"
            pixels = np.frombuffer(body, want.dtype.newbyteorder("<"))
            assert pixels.size == want.size, (row["uri"], row["TransferSyntaxUID"], row["PhotometricInterpretation"])
            assert np.array_equal(pixels.reshape(want.shape), want), row["uri"]
        checked.add(row["TransferSyntaxUID"])
    assert {IMPLICIT, EXPLICIT, JPEG_BASELINE, "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"} <= checked


def test_frames_as_stored_are_the_encapsulated_fragments(http: Any, lake: Any) -> None:
    from pydicom.encaps import generate_frames

    row = one(lake, "TransferSyntaxUID = '1.2.840.10008.1.2.5' AND has_pixels")
    ds = pydicom.dcmread(row["uri"])
    n = int(ds.get("NumberOfFrames", 1) or 1)
    expected = list(generate_frames(ds.PixelData, number_of_frames=n))
    response = http.get(f"{instance_url(row)}/frames/1",
                        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    [(ctype, body)] = parts(response)
    assert ctype == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.5" and body == expected[0]
    rle = http.get(f"{instance_url(row)}/frames/1", headers={"Accept": 'multipart/related; type="image/dicom-rle"'})
    assert parts(rle)[0] == ("image/dicom-rle; transfer-syntax=1.2.840.10008.1.2.5", expected[0])


def test_frame_errors(http: Any, lake: Any) -> None:
    row = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    assert http.get(f"{instance_url(row)}/frames/2").status_code == 404
    assert http.get(f"{instance_url(row)}/frames/0").status_code == 400
    assert http.get(f"{instance_url(row)}/frames/one").status_code == 400
    jpeg = http.get(f"{instance_url(row)}/frames/1", headers={"Accept": 'multipart/related; type="image/jpeg"'})
    assert jpeg.status_code == 406


# -- rendered and thumbnails ------------------------------------------------------------------


def test_rendered_instance_frame_series_and_study_in_jpeg_and_png(http: Any, lake: Any) -> None:
    from PIL import Image

    row = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    jpeg = http.get(f"{instance_url(row)}/rendered")
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).size == (512, 512)
    png = http.get(f"{instance_url(row)}/frames/1/rendered", params={"viewport": "128,128", "window": "40,400"},
                   headers={"Accept": "image/png"})
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (128, 128)
    other_window = http.get(f"{instance_url(row)}/frames/1/rendered", params={"viewport": "128,128",
                                                                             "window": "400,2000"},
                            headers={"Accept": "image/png"})
    assert other_window.content != png.content
    series = http.get(f"/studies/{CT_STUDY}/series/{row['SeriesInstanceUID']}/rendered")
    assert len(parts(series)) == 3
    assert http.get(f"{instance_url(row)}/rendered", headers={"Accept": "image/gif"}).status_code == 406
    assert http.get(f"{instance_url(row)}/rendered", params={"window": "40"}).status_code == 400


def test_thumbnails_at_every_level(http: Any, lake: Any) -> None:
    from PIL import Image

    row = one(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")
    for path in (f"/studies/{CT_STUDY}/thumbnail", f"/studies/{CT_STUDY}/series/{row['SeriesInstanceUID']}/thumbnail",
                 f"{instance_url(row)}/thumbnail", f"{instance_url(row)}/frames/1/thumbnail"):
        response = http.get(path)
        assert response.status_code == 200, path
        assert max(Image.open(io.BytesIO(response.content)).size) <= 128
