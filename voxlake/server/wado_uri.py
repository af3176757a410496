"""WADO-URI (PS3.18 9): ``/wado?requestType=WADO&studyUID=…&seriesUID=…&objectUID=…``, for older viewers.

``contentType``: ``application/dicom`` (the instance; ``transferSyntax`` as for WADO-RS, default
Explicit VR Little Endian, ``*`` as stored), or ``image/jpeg`` (the default for images, PS3.18
9.1.2.1.2) / ``image/png``, rendered with ``frameNumber``, ``windowCenter``/``windowWidth``,
``rows``/``columns`` (fit into), ``imageQuality``. A list of content types takes the first one served.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

from typing import Any

from voxlake.errors import InvalidArgumentError
from voxlake.server import urls
from voxlake.server.errors import bad_request, not_acceptable, not_found

_RENDERED = ("image/jpeg", "image/png")


def _param(request: Any, name: str, *, required: bool = False) -> str | None:
    value = request.query_params.get(name)
    if required and not value:
        raise bad_request(f"WADO-URI needs the {name} parameter")
    return value


def _int(request: Any, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise bad_request(f"{name} must be a positive integer, not {value!r}")
    return number


def retrieve(request: Any) -> Any:
    from starlette.responses import Response

    from voxlake.server import wado

    if (_param(request, "requestType", required=True) or "").upper() != "WADO":
        raise bad_request("requestType must be WADO")
    study = urls.check_uid(_param(request, "studyUID", required=True) or "", "studyUID")
    series = urls.check_uid(_param(request, "seriesUID", required=True) or "", "seriesUID")
    sop = urls.check_uid(_param(request, "objectUID", required=True) or "", "objectUID")
    state = request.app.state.server
    row = state.instance_rows(study, series, sop)[0]
    wanted = [t.split(";")[0].strip().lower() for t in (_param(request, "contentType") or "").split(",") if t.strip()]
    if not wanted:
        wanted = ["image/jpeg"] if row.get("pixel_data_offset") is not None else ["application/dicom"]
    for content_type in wanted:
        if content_type == "application/dicom":
            stored = row.get("TransferSyntaxUID") or wado.IMPLICIT_VR_LITTLE_ENDIAN
            target = _param(request, "transferSyntax") or wado.EXPLICIT_VR_LITTLE_ENDIAN
            target = stored if target == "*" else target
            if not wado.can_transcode(stored, target):
                raise not_acceptable(f"instance is stored as {stored}; it can be sent as that or as "
                                     + " or ".join(wado.TRANSCODE_TARGETS))
            if target == stored and wado._is_part10(row["uri"]):
                body = b"".join(wado._file_chunks(row["uri"]))
            else:
                body = wado.transcode_instance(row, target)
            return Response(body, media_type=f"application/dicom; transfer-syntax={target}")
        if content_type in _RENDERED or content_type in ("image/*", "*/*"):
            media_type = content_type if content_type in _RENDERED else "image/jpeg"
            return _render(request, state, row, media_type, Response)
    raise not_acceptable(f"contentType must be application/dicom, image/jpeg or image/png, not {wanted[0]!r}")


def _render(request: Any, state: Any, row: dict[str, Any], media_type: str, response: Any) -> Any:
    from voxlake.dicom.render import render

    if row.get("pixel_data_offset") is None:
        raise not_found(f"instance {row['SOPInstanceUID']} has no pixel data to render")
    info = state.pixel_info(row)
    frame = _int(request, "frameNumber") or 1
    if frame > info.number_of_frames:
        raise not_found(f"instance {row['SOPInstanceUID']} has no frame {frame}")
    options: dict[str, Any] = {"media_type": media_type}
    center, width = request.query_params.get("windowCenter"), request.query_params.get("windowWidth")
    if center is not None or width is not None:
        try:
            options["window"] = (float(center or ""), float(width or ""), "LINEAR")
        except ValueError:
            raise bad_request("windowCenter and windowWidth must both be numbers") from None
    rows, columns = _int(request, "rows"), _int(request, "columns")
    if rows or columns:
        options["viewport"] = (columns or 1 << 16, rows or 1 << 16)
    if (quality := _int(request, "imageQuality")) is not None:
        options["quality"] = quality
    try:
        image = render(row["uri"], info, frame, **options)
    except InvalidArgumentError as exc:
        raise bad_request(str(exc)) from exc
    return response(image, media_type=media_type)


def router() -> Any:
    from fastapi import APIRouter, Request
    from starlette.responses import Response

    r = APIRouter()

    @r.get("/wado")
    def wado_uri(request: Request) -> Response:
        return retrieve(request)

    return r
