"""HTTP errors of the DICOMweb server, and the one place voxlake's exceptions become statuses.

Bodies are one line of JSON (``{"status": 400, "reason": "..."}``) so that a client, a log and a
person read the same reason.
"""

from __future__ import annotations

import logging
from typing import Any

from voxlake.errors import FrameError, InvalidArgumentError, LakeNotFoundError, VoxlakeError

log = logging.getLogger("voxlake.server")


class DicomWebError(Exception):
    """An error answered with ``status`` and a one-line ``reason`` (PS3.18 8.6 status codes)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


def bad_request(reason: str) -> DicomWebError:
    return DicomWebError(400, reason)


def not_found(reason: str) -> DicomWebError:
    return DicomWebError(404, reason)


def not_acceptable(reason: str) -> DicomWebError:
    return DicomWebError(406, reason)


def status_of(exc: BaseException) -> int:
    """The HTTP status of a voxlake exception: bad input 400, no lake 503, else 500."""
    if isinstance(exc, DicomWebError):
        return exc.status
    if isinstance(exc, (InvalidArgumentError, FrameError)):
        return 400
    if isinstance(exc, LakeNotFoundError):
        return 503
    return 500


def error_response(status: int, reason: str, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"status": status, "reason": " ".join(reason.split())}, status_code=status,
                        headers=headers)


def install_handlers(app: Any) -> None:
    """Every error leaves as one line: ours, FastAPI's validation errors, Starlette's, anyone's."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def dicomweb(_request: Any, exc: DicomWebError) -> Any:
        return error_response(exc.status, exc.reason, exc.headers)

    async def voxlake_error(_request: Any, exc: VoxlakeError) -> Any:
        status = status_of(exc)
        if status >= 500:
            log.error("request failed: %s", exc)
        return error_response(status, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    async def validation(_request: Any, exc: RequestValidationError) -> Any:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return error_response(400, f"{where}: {first.get('msg', 'invalid request')}")

    async def http(_request: Any, exc: HTTPException) -> Any:
        return error_response(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    async def unexpected(_request: Any, exc: Exception) -> Any:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}")

    app.add_exception_handler(DicomWebError, dicomweb)
    app.add_exception_handler(VoxlakeError, voxlake_error)
    app.add_exception_handler(RequestValidationError, validation)
    app.add_exception_handler(HTTPException, http)
    app.add_exception_handler(Exception, unexpected)
