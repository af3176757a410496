"""WADO-RS (PS3.18 10.4): instances, metadata, frames, bulk data, rendered images and thumbnails.

Files are opened only through the ``uri`` of a catalog row found by its UIDs, so no request path
can name a file. Instances stream part by part as they are read.

Transfer syntax negotiation (PS3.18 8.7.3.5): ``transfer-syntax=*`` returns what is stored; no
``transfer-syntax`` means Explicit VR Little Endian (1.2.840.10008.1.2.1), the standard's default;
an explicit syntax is served when it is the stored one, or Explicit/Implicit VR Little Endian, to
which any instance whose pixels pydicom can decode is transcoded. Anything else: 406. Each part's
Content-Type names its transfer syntax. Frames also answer the single-frame media types of the
compressed syntaxes (``image/jls``, ``image/jp2``...) when the frames are stored that way.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime.

import io
from collections.abc import Iterator
from typing import Any

from voxlake.errors import FrameError, InvalidArgumentError
from voxlake.server import metadata as metadata_module
from voxlake.server import multipart, urls
from voxlake.server.errors import DicomWebError, bad_request, not_acceptable, not_found
from voxlake.server.multipart import EXPLICIT_VR_LITTLE_ENDIAN, UNCOMPRESSED, MediaRange, parse_accept

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
TRANSCODE_TARGETS = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
_CHUNK = 1 << 20
_DICOM_TYPES = {"application/dicom", "", "*/*", "*", "application/*"}
_OCTET_TYPES = {"application/octet-stream", "", "*/*", "*", "application/*"}
_RENDERED_TYPES = ("image/jpeg", "image/png")


def _ranges(request: Any) -> list[MediaRange]:
    """The request's media ranges: the ``accept`` query parameter wins over the header (PS3.18 8.3.3.1)."""
    return parse_accept(request.query_params.get("accept") or request.headers.get("accept"))


# -- instances ---------------------------------------------------------------------------------


def can_transcode(stored: str, target: str) -> bool:
    """Whether an instance stored as ``stored`` can be sent as ``target``."""
    if stored == target:
        return True
    if target not in TRANSCODE_TARGETS:
        return False
    if stored in UNCOMPRESSED or stored in ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"):
        return True
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(stored).is_available)
    except (NotImplementedError, ValueError):
        return False


def dicom_syntax(request: Any, stored: set[str]) -> str:
    """The transfer syntax to send instances stored as ``stored`` in (``*``: as stored); 406 if
    no acceptable media range can be met."""
    ranges = _ranges(request) or [MediaRange("multipart/related", {"type": "application/dicom"})]
    for r in ranges:
        if not (r.multipart and r.part_type in _DICOM_TYPES) and r.media_type not in ("application/dicom", "*/*"):
            continue
        ts = r.transfer_syntax or EXPLICIT_VR_LITTLE_ENDIAN
        if ts == "*" or all(can_transcode(s, ts) for s in stored):
            return ts
    raise not_acceptable(
        "cannot send these instances as requested (stored as " + ", ".join(sorted(stored))
        + "); ask for multipart/related; type=\"application/dicom\" with transfer-syntax=* (as stored) or "
        + " or ".join(TRANSCODE_TARGETS)
    )


def _file_chunks(uri: str) -> Iterator[bytes]:
    from voxlake.dicom.frames import open_uri

    with open_uri(uri) as fp:
        while chunk := fp.read(_CHUNK):
            yield chunk


def _is_part10(uri: str) -> bool:
    from voxlake.dicom.frames import open_uri

    with open_uri(uri) as fp:
        head = fp.read(132)
    return head[128:132] == b"DICM"


def transcode_instance(row: dict[str, Any], target: str) -> bytes:
    """The instance as a DICOM file in ``target`` (Explicit or Implicit VR Little Endian), decoded
    by pydicom when compressed; also used to give files without a File Meta header one."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID

    from voxlake.dicom.frames import open_uri

    with open_uri(row["uri"]) as fp:
        ds = pydicom.dcmread(fp, force=True)
        stored = UID(row.get("TransferSyntaxUID") or IMPLICIT_VR_LITTLE_ENDIAN)
        if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = stored
        if "PixelData" in ds and UID(ds.file_meta.TransferSyntaxUID).is_compressed and target != stored:
            ds.decompress()  # PS3.5 A.4 → native; YBR becomes RGB as pydicom decodes it
        else:
            _ = [e for e in ds]  # read everything while the file is open
    ds.file_meta.TransferSyntaxUID = UID(target)
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword in ds and f"MediaStorage{keyword}" not in ds.file_meta:
            setattr(ds.file_meta, f"MediaStorage{keyword}", getattr(ds, keyword))
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True, implicit_vr=target == IMPLICIT_VR_LITTLE_ENDIAN, little_endian=True)
    return out.getvalue()


def instance_parts(rows: list[dict[str, Any]], target: str) -> Iterator[tuple[str, Any, dict[str, str] | None]]:
    for row in rows:
        stored = row.get("TransferSyntaxUID") or IMPLICIT_VR_LITTLE_ENDIAN
        ts = stored if target == "*" else target
        if ts == stored and _is_part10(row["uri"]):
            chunks: Any = _file_chunks(row["uri"])
        else:
            chunks = [transcode_instance(row, ts)]
        yield f"application/dicom; transfer-syntax={ts}", chunks, None


def retrieve(request: Any, rows: list[dict[str, Any]]) -> Any:
    from starlette.responses import StreamingResponse

    target = dicom_syntax(request, {r.get("TransferSyntaxUID") or IMPLICIT_VR_LITTLE_ENDIAN for r in rows})
    boundary = multipart.new_boundary()
    return StreamingResponse(
        multipart.stream(boundary, instance_parts(rows, target)),
        media_type=multipart.content_type("application/dicom", boundary),
    )


# -- frames and bulk data ----------------------------------------------------------------------


def frame_numbers(text: str) -> list[int]:
    """``1,2,3`` → [1, 2, 3]; 400 otherwise (PS3.18 8.3.5.1.1: comma-separated, from 1)."""
    try:
        numbers = [int(p) for p in text.split(",")]
    except ValueError:
        numbers = []
    if not numbers or any(n < 1 for n in numbers) or len(numbers) > 100_000:
        raise bad_request(f"frame list {text[:80]!r} must be comma-separated frame numbers, from 1")
    return numbers


def _frame_choice(request: Any, stored: str) -> tuple[str, str, bool]:
    """(part media type, transfer syntax to produce, multipart?) for frames stored as ``stored``."""
    ranges = _ranges(request) or [MediaRange("multipart/related", {"type": "application/octet-stream"})]
    compressed_type = multipart.MEDIA_TYPE_OF_SYNTAX.get(stored)
    for r in ranges:
        ts = r.transfer_syntax
        if r.part_type in _OCTET_TYPES:
            if ts == "*":
                return "application/octet-stream", stored, r.multipart
            target = ts or EXPLICIT_VR_LITTLE_ENDIAN
            if target == stored or (target in TRANSCODE_TARGETS and can_transcode(stored, target)):
                return "application/octet-stream", target, r.multipart
        if compressed_type and r.part_type not in ("", "*/*", "*") and r.matches(compressed_type) \
                and ts in (None, "*", stored):
            return compressed_type, stored, r.multipart
    raise not_acceptable(
        f"frames are stored as {stored}; acceptable: multipart/related; type=\"application/octet-stream\" "
        f"with transfer-syntax=* or one of {', '.join(TRANSCODE_TARGETS)}"
        + (f", or type=\"{compressed_type}\"" if compressed_type else "")
    )


def frames(request: Any, state: Any, row: dict[str, Any], numbers: list[int]) -> Any:
    from starlette.responses import Response

    from voxlake.dicom import frames as frames_module

    info = state.pixel_info(row)
    missing = [n for n in numbers if n > info.number_of_frames]
    if missing:
        raise not_found(f"instance {row['SOPInstanceUID']} has {info.number_of_frames} frame(s); "
                        f"frame {missing[0]} does not exist")
    media_type, target, is_multipart = _frame_choice(request, info.transfer_syntax_uid)
    stored = info.transfer_syntax_uid
    if target == stored or (target in UNCOMPRESSED and stored in UNCOMPRESSED):
        data = frames_module.read_frames(row["uri"], info, numbers)
    else:
        try:
            data = frames_module.transcode_frames(row["uri"], info, numbers, target)
        except FrameError as exc:
            raise not_acceptable(str(exc)) from exc
    part_type = f"{media_type}; transfer-syntax={target}"
    if not is_multipart and len(data) == 1:
        return Response(data[0], media_type=part_type)
    boundary = multipart.new_boundary()
    body = b"".join(multipart.stream(boundary, ((part_type, [d], None) for d in data)))
    return Response(body, media_type=multipart.content_type(media_type, boundary, target))


def bulkdata(request: Any, row: dict[str, Any], offset: int, length: int) -> Any:
    from starlette.responses import Response

    from voxlake.dicom.frames import read_bulk

    size = row.get("size")
    if offset < 0 or length < 0 or (size is not None and not row["uri"].startswith("zip://")
                                    and offset + length > size):
        raise not_found(f"bytes {offset}+{length} are not in instance {row['SOPInstanceUID']}")
    if not any(r.part_type in _OCTET_TYPES for r in _ranges(request) or [MediaRange("*/*")]):
        raise not_acceptable("bulk data is application/octet-stream")
    deflated = row.get("TransferSyntaxUID") == "1.2.840.10008.1.2.1.99"
    data = read_bulk(row["uri"], offset, length, deflated=deflated)
    if any(r.media_type == "application/octet-stream" for r in _ranges(request)[:1]):
        return Response(data, media_type="application/octet-stream")
    boundary = multipart.new_boundary()
    body = b"".join(multipart.stream(boundary, [("application/octet-stream", [data], None)]))
    return Response(body, media_type=multipart.content_type("application/octet-stream", boundary))


# -- rendered and thumbnail --------------------------------------------------------------------


def rendered_type(request: Any) -> str:
    ranges = _ranges(request) or [MediaRange("image/jpeg")]
    for r in ranges:
        for media_type in _RENDERED_TYPES:
            if r.matches(media_type) or (r.media_type in ("*/*", "image/*") and not r.multipart):
                return media_type
    raise not_acceptable(f"rendered images are {' or '.join(_RENDERED_TYPES)}")


def render_options(request: Any) -> dict[str, Any]:
    """``window``, ``viewport`` and ``quality`` query parameters (PS3.18 8.3.5.1)."""
    q = request.query_params
    options: dict[str, Any] = {}
    try:
        if w := q.get("window"):
            parts = [p.strip() for p in w.split(",")]
            if len(parts) not in (2, 3):
                raise ValueError
            options["window"] = (float(parts[0]), float(parts[1]), parts[2] if len(parts) == 3 else "LINEAR")
    except ValueError:
        raise bad_request(f"window must be center,width[,function], not {q.get('window')!r}") from None
    try:
        if v := q.get("viewport"):
            parts = [p.strip() for p in v.split(",")]
            if len(parts) != 2:
                raise ValueError
            options["viewport"] = (int(parts[0]), int(parts[1]))
    except ValueError:
        raise bad_request(f"viewport must be vw,vh (source rectangles are not supported), "
                          f"not {q.get('viewport')!r}") from None
    if (quality := q.get("quality")) is not None:
        try:
            options["quality"] = int(quality)
        except ValueError:
            raise bad_request(f"quality must be an integer 1-100, not {quality!r}") from None
    return options


def _pixel_rows(state: Any, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pixel = [r for r in rows if r.get("pixel_data_offset") is not None]
    if not pixel:
        raise not_found("no instance here has pixel data to render")
    return pixel


def rendered(request: Any, state: Any, rows: list[dict[str, Any]], numbers: list[int] | None) -> Any:
    """One image for one single-frame instance or one frame; multipart/related of images otherwise."""
    from starlette.responses import Response

    from voxlake.dicom.render import render

    media_type = rendered_type(request)
    options = render_options(request)
    images = []
    for row in _pixel_rows(state, rows):
        info = state.pixel_info(row)
        for n in numbers or range(1, info.number_of_frames + 1):
            if n > info.number_of_frames:
                raise not_found(f"instance {row['SOPInstanceUID']} has no frame {n}")
            try:
                images.append(render(row["uri"], info, n, media_type=media_type, **options))
            except InvalidArgumentError as exc:
                raise bad_request(str(exc)) from exc
    if len(images) == 1:
        return Response(images[0], media_type=media_type)
    boundary = multipart.new_boundary()
    body = b"".join(multipart.stream(boundary, ((media_type, [i], None) for i in images)))
    return Response(body, media_type=multipart.content_type(media_type, boundary))


def thumbnail(request: Any, state: Any, rows: list[dict[str, Any]], number: int | None) -> Any:
    """A small image of the middle instance (of the first series with pixels) or of one frame."""
    from starlette.responses import Response

    from voxlake.dicom.render import thumbnail as make_thumbnail

    media_type = rendered_type(request)
    pixel = _pixel_rows(state, rows)
    first_series = [r for r in pixel if r["SeriesInstanceUID"] == pixel[0]["SeriesInstanceUID"]]
    row = first_series[len(first_series) // 2]
    info = state.pixel_info(row)
    if number is not None and number > info.number_of_frames:
        raise not_found(f"instance {row['SOPInstanceUID']} has no frame {number}")
    kwargs: dict[str, Any] = {"media_type": media_type}
    viewport = render_options(request).get("viewport")
    if viewport:
        kwargs["size"] = max(viewport)
    image = make_thumbnail(row["uri"], info, number, **kwargs)
    return Response(image, media_type=media_type, headers={"Cache-Control": "max-age=3600"})


# -- routes ------------------------------------------------------------------------------------


def router() -> Any:
    """The WADO-RS routes, relative to the DICOMweb root."""
    from fastapi import APIRouter, Request
    from starlette.responses import Response

    r = APIRouter()

    def state_of(request: Request) -> Any:
        return request.app.state.server

    def rows(request: Request, study: str, series: str | None = None, sop: str | None = None) -> list[dict[str, Any]]:
        urls.check_uid(study, "StudyInstanceUID")
        if series is not None:
            urls.check_uid(series, "SeriesInstanceUID")
        if sop is not None:
            urls.check_uid(sop, "SOPInstanceUID")
        return state_of(request).instance_rows(study, series, sop)

    def meta(request: Request, found: list[dict[str, Any]], instance: bool = False) -> Response:
        from voxlake.server.qido import check_accept

        check_accept(request)
        state = state_of(request)
        base = urls.dicomweb_base(request, state.settings.dicomweb_root)
        body = metadata_module.metadata(state, found, base, instance=instance)
        return Response(body, media_type="application/dicom+json")

    @r.get("/studies/{study}")
    def retrieve_study(request: Request, study: str) -> Response:
        return retrieve(request, rows(request, study))

    @r.get("/studies/{study}/series/{series}")
    def retrieve_series(request: Request, study: str, series: str) -> Response:
        return retrieve(request, rows(request, study, series))

    @r.get("/studies/{study}/series/{series}/instances/{sop}")
    def retrieve_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return retrieve(request, rows(request, study, series, sop))

    @r.get("/studies/{study}/metadata")
    def study_metadata(request: Request, study: str) -> Response:
        return meta(request, rows(request, study))

    @r.get("/studies/{study}/series/{series}/metadata")
    def series_metadata(request: Request, study: str, series: str) -> Response:
        return meta(request, rows(request, study, series))

    @r.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
    def instance_metadata(request: Request, study: str, series: str, sop: str) -> Response:
        return meta(request, rows(request, study, series, sop), instance=True)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}")
    def retrieve_frames(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        numbers = frame_numbers(frame_list)
        return frames(request, state_of(request), rows(request, study, series, sop)[0], numbers)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{offset}/{length}")
    def retrieve_bulkdata(request: Request, study: str, series: str, sop: str, offset: int, length: int) -> Response:
        return bulkdata(request, rows(request, study, series, sop)[0], offset, length)

    @r.get("/studies/{study}/rendered")
    def rendered_study(request: Request, study: str) -> Response:
        return rendered(request, state_of(request), rows(request, study), None)

    @r.get("/studies/{study}/series/{series}/rendered")
    def rendered_series(request: Request, study: str, series: str) -> Response:
        return rendered(request, state_of(request), rows(request, study, series), None)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
    def rendered_instance(request: Request, study: str, series: str, sop: str) -> Response:
        return rendered(request, state_of(request), rows(request, study, series, sop), None)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/rendered")
    def rendered_frames(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        numbers = frame_numbers(frame_list)
        return rendered(request, state_of(request), rows(request, study, series, sop), numbers)

    @r.get("/studies/{study}/thumbnail")
    def study_thumbnail(request: Request, study: str) -> Response:
        return thumbnail(request, state_of(request), rows(request, study), None)

    @r.get("/studies/{study}/series/{series}/thumbnail")
    def series_thumbnail(request: Request, study: str, series: str) -> Response:
        return thumbnail(request, state_of(request), rows(request, study, series), None)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
    def instance_thumbnail(request: Request, study: str, series: str, sop: str) -> Response:
        return thumbnail(request, state_of(request), rows(request, study, series, sop), None)

    @r.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}/thumbnail")
    def frame_thumbnail(request: Request, study: str, series: str, sop: str, frame_list: str) -> Response:
        numbers = frame_numbers(frame_list)
        if len(numbers) != 1:
            raise DicomWebError(400, "a thumbnail is of one frame")
        return thumbnail(request, state_of(request), rows(request, study, series, sop), numbers[0])

    return r
