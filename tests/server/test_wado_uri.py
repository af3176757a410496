"""WADO-URI (PS3.18 9) for older viewers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.server.conftest import rows

pytestmark = pytest.mark.slow
CT_STUDY = "1.2.392.200103.20080913.113635.0.2009.6.22.21.43.10.22941.1"


@pytest.fixture(scope="module")
def ct(lake: Any) -> dict[str, Any]:
    return rows(lake, f"StudyInstanceUID = '{CT_STUDY}' AND Modality = 'CT'")[0]


def params(row: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"requestType": "WADO", "studyUID": row["StudyInstanceUID"], "seriesUID": row["SeriesInstanceUID"],
            "objectUID": row["SOPInstanceUID"], **extra}


def test_application_dicom_as_stored_or_explicit(server: Any, ct: dict[str, Any]) -> None:
    import httpx

    stored = httpx.get(f"{server.url}/wado", params=params(ct, contentType="application/dicom", transferSyntax="*"))
    assert stored.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2"
    assert stored.content == Path(ct["uri"]).read_bytes()
    explicit = httpx.get(f"{server.url}/wado", params=params(ct, contentType="application/dicom"))
    ds = pydicom.dcmread(io.BytesIO(explicit.content))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1" and ds.SOPInstanceUID == ct["SOPInstanceUID"]


def test_images_default_to_jpeg_and_take_window_and_size(server: Any, ct: dict[str, Any]) -> None:
    import httpx
    from PIL import Image

    jpeg = httpx.get(f"{server.url}/wado", params=params(ct))
    assert jpeg.headers["content-type"] == "image/jpeg"
    png = httpx.get(f"{server.url}/wado", params=params(ct, contentType="image/png", rows="64", columns="64",
                                                         windowCenter="40", windowWidth="400"))
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (64, 64)


@pytest.mark.parametrize(("extra", "status"), [
    ({"requestType": "QIDO"}, 400),
    ({"objectUID": ""}, 400),
    ({"objectUID": "1.2.3.4"}, 404),
    ({"objectUID": "../../etc/passwd"}, 400),
    ({"contentType": "video/mpeg"}, 406),
    ({"contentType": "application/dicom", "transferSyntax": "1.2.840.10008.1.2.4.50"}, 406),
    ({"windowCenter": "a", "windowWidth": "b"}, 400),
])
def test_errors(server: Any, ct: dict[str, Any], extra: dict[str, str], status: int) -> None:
    import httpx

    response = httpx.get(f"{server.url}/wado", params=params(ct, **extra))
    assert response.status_code == status and response.json()["reason"]
