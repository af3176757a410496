"""STOW-RS over HTTP (PS3.18 10.5): ``POST {root}/studies`` and ``POST {root}/studies/{study}``.

The request body is streamed to a spooled temporary file (memory up to 8 MiB, then disk) while its
size is counted against ``max_upload_bytes`` (413 beyond it); the multipart/related
framing is then checked in full before anything is stored (400 when broken), and the parts are
handed one at a time to :func:`voxlake.server.stow_store.store_instances`, in a worker thread.
Memory stays at about one instance.

Statuses (PS3.18 Table 10.5.3-1 and 8.5): 200 all stored; 202 some failed; 409 none stored (a
conflict: unsupported SOP class, study mismatch, storage error, or a mixture); 400 none stored
because no part was understandable DICOM, or broken multipart framing, or an invalid study UID in
the path; 413 body over the limit; 415 a Content-Type other than multipart/related with
type="application/dicom" (STOW is the request's media type: 415, not 406); 406 an Accept header
that excludes application/dicom+json, the only response type offered. The body of 200/202/409
(and of 400 when parts were read) is the Store Instances Response Module as application/dicom+json.
501: the lake is on an object store (the landing area needs fsync).

Only PS3.10 parts (``type="application/dicom"``) are accepted; metadata plus bulk data
(``application/dicom+json``) is answered 415 for now.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from typing import IO, Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from voxlake.errors import InvalidArgumentError
from voxlake.server.stow_store import StowResult, store_instances

#: When the app sets no ``max_upload_bytes``.
DEFAULT_MAX_UPLOAD_BYTES = 2 << 30
#: The spooled body stays in memory up to this size.
SPOOL_MEMORY = 8 << 20
#: Part headers longer than this are broken framing, not DICOM.
MAX_PART_HEADERS = 16 << 10
DICOM_JSON = "application/dicom+json"

router = APIRouter()


class MultipartError(ValueError):
    """The body is not multipart/related as its Content-Type announced."""


@router.post("/studies")
async def store_studies(request: Request) -> Response:
    """Store Instances (PS3.18 10.5), any study."""
    return await _stow(request, None)


@router.post("/studies/{study}")
async def store_study(request: Request, study: str) -> Response:
    """Store Instances of one study: others fail with 0xA900 (PS3.18 10.5.1)."""
    return await _stow(request, study)


async def _stow(request: Request, study: str | None) -> Response:
    from voxlake.net.store import valid_uid

    if not _accepts_dicom_json(request.headers.get("accept")):
        return _error(406, f"the STOW-RS response is {DICOM_JSON}; the Accept header excludes it")
    try:
        boundary = parse_content_type(request.headers.get("content-type"))
    except _Unsupported as exc:
        return _error(415, str(exc))
    except MultipartError as exc:
        return _error(400, str(exc))
    if study is not None and not valid_uid(study):
        return _error(400, f"{study!r} is not a valid Study Instance UID (PS3.5 9.1)")
    limit = _max_upload_bytes(request.app.state)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return _error(413, f"the body ({declared} bytes) is over the limit of {limit} bytes")
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY) as body:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return _error(413, f"the body is over the limit of {limit} bytes")
            body.write(chunk)
        try:
            spans = await run_in_threadpool(part_spans, body, boundary)
        except MultipartError as exc:
            return _error(400, str(exc))
        lake = _lake(request.app.state)
        try:
            result: StowResult = await run_in_threadpool(
                lambda: store_instances(lake, _read_parts(body, spans), study_uid=study)
            )
        except InvalidArgumentError as exc:
            return _error(501, str(exc))
    if result.stored:
        await run_in_threadpool(_refresh, request.app.state)
        ai = getattr(request.app.state, "ai", None)
        if ai is not None and any(i.sop_class_uid in SEGMENTATION_STORAGE for i in result.stored):
            ai.sync_labels_soon()  # a correction saved in the viewer becomes a label
    return Response(
        json.dumps(result.to_dicom_json(_dicomweb_root(request, study))),
        status_code=result.http_status(),
        media_type=DICOM_JSON,
    )



#: Segmentation Storage and Label Map Segmentation Storage (OHIF 3.13's default when it saves)
SEGMENTATION_STORAGE = frozenset({"1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7"})

# -- app state ------------------------------------------------------------------------------
# The app keeps a ServerState on ``app.state.server`` (lake, settings, a throttled catalog refresh);
# a bare app (tests, embedding) may set ``lake``, ``catalog`` and ``max_upload_bytes`` directly.


def _lake(state: Any) -> Any:
    server = getattr(state, "server", None)
    return server.lake if server is not None else state.lake


def _max_upload_bytes(state: Any) -> int:
    for holder in (
        state,
        getattr(state, "settings", None),
        getattr(getattr(state, "server", None), "settings", None),
    ):
        value = getattr(holder, "max_upload_bytes", None)
        if value:
            return int(value)
    return DEFAULT_MAX_UPLOAD_BYTES


def _refresh(state: Any) -> None:
    """So that a QIDO-RS right after the response sees the upload."""
    server = getattr(state, "server", None)
    if server is not None and hasattr(server, "refresh"):
        server.refresh(force=True)
        return
    catalog = getattr(state, "catalog", None)
    if catalog is not None:
        catalog.refresh()


# -- media types ----------------------------------------------------------------------------


class _Unsupported(ValueError):
    pass


def parse_content_type(value: str | None) -> bytes:
    """The boundary of a ``multipart/related; type="application/dicom"`` Content-Type (``type``
    quoted or not; absent is taken as application/dicom). Raises ``_Unsupported`` (415) for any
    other media type, :class:`MultipartError` (400) when the boundary is missing."""
    if not value:
        raise _Unsupported('no Content-Type; STOW-RS takes multipart/related; type="application/dicom"')
    media, params = _parse_header(value)
    if media != "multipart/related":
        raise _Unsupported(
            f'{media} is not supported; STOW-RS takes multipart/related; type="application/dicom"'
        )
    part_type = params.get("type", "application/dicom").lower()
    if part_type != "application/dicom":
        raise _Unsupported(
            f"multipart/related parts of type {part_type} are not supported; only application/dicom "
            "(PS3.10 files) is, not metadata and bulk data"
        )
    boundary = params.get("boundary")
    if not boundary or len(boundary) > 70:
        raise MultipartError("the multipart/related Content-Type has no valid boundary parameter (RFC 2046)")
    return boundary.encode("latin-1")


def _parse_header(value: str) -> tuple[str, dict[str, str]]:
    """``type/subtype; a=b; c="d;e"`` → (lowercased media type, parameters with names lowercased)."""
    media, _, rest = value.partition(";")
    params: dict[str, str] = {}
    i = 0
    while i < len(rest):
        eq = rest.find("=", i)
        if eq < 0:
            break
        name = rest[i:eq].strip(" \t;").lower()
        j = eq + 1
        while j < len(rest) and rest[j] in " \t":
            j += 1
        if j < len(rest) and rest[j] == '"':
            out = []
            j += 1
            while j < len(rest) and rest[j] != '"':
                if rest[j] == "\\" and j + 1 < len(rest):
                    j += 1
                out.append(rest[j])
                j += 1
            params[name] = "".join(out)
            i = rest.find(";", j) + 1 or len(rest)
        else:
            end = rest.find(";", j)
            end = len(rest) if end < 0 else end
            params[name] = rest[j:end].strip()
            i = end + 1
    return media.strip().lower(), params


def _accepts_dicom_json(accept: str | None) -> bool:
    if not accept:
        return True
    for item in accept.split(","):
        media, params = _parse_header(item)
        if params.get("q", "1").strip() in ("0", "0.0", "0.00", "0.000"):
            continue
        if media in (DICOM_JSON, "application/json", "application/*", "*/*"):
            return True
    return False


# -- multipart/related ----------------------------------------------------------------------


def part_spans(fp: IO[bytes], boundary: bytes, *, block: int = 1 << 20) -> list[tuple[int, int, str | None]]:
    """(offset, length, Content-Type) of each part's content in ``fp`` (RFC 2046 5.1), reading it in
    blocks; raises :class:`MultipartError` for broken framing: no delimiter, no closing delimiter,
    unterminated part headers, or no part at all."""
    delimiter = b"\r\n--" + boundary
    positions = _find_all(fp, delimiter, block)  # offsets of "\r\n--boundary" ("-2": body starts with it)
    if not positions:
        raise MultipartError("the body holds no multipart boundary delimiter")
    spans: list[tuple[int, int, str | None]] = []
    for k, pos in enumerate(positions):
        start = pos + len(delimiter)
        fp.seek(start)
        head = fp.read(MAX_PART_HEADERS)
        if head.startswith(b"--"):
            break  # the close delimiter; what follows is the epilogue (RFC 2046)
        if k == len(positions) - 1:
            raise MultipartError("the body ends without the closing multipart delimiter (truncated upload?)")
        line_end = head.find(b"\r\n")
        if line_end < 0 or head[:line_end].strip(b" \t"):
            raise MultipartError("a multipart delimiter is not followed by a line break")
        headers_end = head.find(b"\r\n\r\n", line_end)
        if line_end == head.find(b"\r\n\r\n"):
            headers_end, headers = line_end, b""  # no part headers
        elif headers_end < 0:
            raise MultipartError(
                f"part {len(spans)}: headers are unterminated or over {MAX_PART_HEADERS} bytes"
            )
        else:
            headers = head[line_end + 2 : headers_end]
        content_type = None
        for line in headers.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-type":
                content_type = value.decode("latin-1").strip()
        offset = start + headers_end + 4
        spans.append((offset, positions[k + 1] - offset, content_type))
    if not spans:
        raise MultipartError("the multipart body holds no part")
    return spans


def _find_all(fp: IO[bytes], needle: bytes, block: int) -> list[int]:
    """Offsets of ``needle`` in ``b"\\r\\n" + fp`` minus 2, i.e. in ``fp`` (-2 for a body that
    starts with the delimiter's dashes: RFC 2046 lets the first one go without a line break)."""
    fp.seek(0)
    found = []
    buf, base = b"\r\n", -2  # base: offset in fp of buf[0]
    while True:
        chunk = fp.read(block)
        buf += chunk
        start = 0
        while (i := buf.find(needle, start)) >= 0:
            found.append(base + i)
            start = i + len(needle)
        if not chunk:
            return found
        cut = max(len(buf) - (len(needle) - 1), start)
        base += cut
        buf = buf[cut:]


def _read_parts(fp: IO[bytes], spans: list[tuple[int, int, str | None]]) -> Iterator[bytes]:
    """Each part's content, one at a time; a part declared as something other than application/dicom
    comes through as is and fails as "cannot understand" unless it is a DICOM file after all."""
    for offset, length, _content_type in spans:
        fp.seek(offset)
        yield fp.read(length)


# -- responses ------------------------------------------------------------------------------


def _dicomweb_root(request: Request, study: str | None) -> str:
    """The DICOMweb root URL as the client sees it (the request path less ``/studies[/{study}]``),
    behind reverse proxies too (:func:`voxlake.server.urls.dicomweb_base`), for Retrieve URLs."""
    from voxlake.server.urls import dicomweb_base

    path = request.url.path.rstrip("/")
    suffix = "/studies" + (f"/{study}" if study is not None else "")
    root = path[: -len(suffix)] if path.endswith(suffix) else path
    root_path = (request.scope.get("root_path") or "").rstrip("/")
    if root_path and root.startswith(root_path):
        root = root[len(root_path) :]  # dicomweb_base adds the prefix back
    return dicomweb_base(request, root)


def _error(status: int, message: str) -> Response:
    from voxlake.server.errors import error_response

    return error_response(status, message)


__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "MultipartError", "parse_content_type", "part_spans", "router"]
