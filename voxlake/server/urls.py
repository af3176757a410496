"""URLs this server hands out (RetrieveURL, BulkDataURI), right behind reverse proxies; UID checks.

Behind a proxy the client's view of the server is not the socket's: the origin and path prefix come
from ``Forwarded`` (RFC 7239: ``proto``, ``host``) or the de-facto ``X-Forwarded-Proto``,
``X-Forwarded-Host``, ``X-Forwarded-Port`` and ``X-Forwarded-Prefix``, in that order of preference,
then from the request itself. Deploy behind a proxy that sets (or strips) them: a client can only
change the URLs of its own responses with them, never what is read.
"""

from __future__ import annotations

import re
from typing import Any

from voxlake.server.errors import bad_request

#: PS3.5 9.1 UIDs (digits and dots, 64 characters), leniently: real archives hold letters too.
_UID = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,63}")
_TOKEN = re.compile(r"[A-Za-z0-9.:\[\]_-]+")


def check_uid(value: str, what: str = "UID") -> str:
    """``value`` if it can be a UID; a 400 otherwise. UIDs only ever reach parameterised SQL,
    never a path; this keeps odd bytes out of logs and URLs too."""
    if not _UID.fullmatch(value) or ".." in value:
        raise bad_request(f"{what} {value[:80]!r} is not a valid UID (digits and dots, at most 64 characters)")
    return value


def _forwarded(header: str) -> dict[str, str]:
    """The first element of an RFC 7239 ``Forwarded`` header (the proxy nearest the client)."""
    out: dict[str, str] = {}
    first = header.split(",", 1)[0]
    for pair in first.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep:
            out[key.strip().lower()] = value.strip().strip('"')
    return out


def origin_and_prefix(request: Any) -> tuple[str, str]:
    """``("https://host[:port]", "/prefix")`` as the client addressed this server."""
    headers = request.headers
    fwd = _forwarded(headers.get("forwarded", ""))
    proto = fwd.get("proto") or _first(headers.get("x-forwarded-proto")) or request.url.scheme
    host = fwd.get("host") or _first(headers.get("x-forwarded-host"))
    if host:
        port = _first(headers.get("x-forwarded-port"))
        if port and ":" not in host.rsplit("]", 1)[-1] and port not in ("80", "443"):
            host = f"{host}:{port}"
    else:
        host = headers.get("host") or request.url.netloc
    prefix = _first(headers.get("x-forwarded-prefix")) or request.scope.get("root_path", "") or ""
    proto = proto.lower() if proto.lower() in ("http", "https") else "http"
    if not _TOKEN.fullmatch(host):
        host = request.url.netloc  # nothing odd goes into a URL we hand out
    prefix = "/" + "/".join(p for p in prefix.split("/") if p and _TOKEN.fullmatch(p)) if prefix else ""
    return f"{proto}://{host}", prefix.rstrip("/")


def _first(value: str | None) -> str | None:
    return value.split(",", 1)[0].strip() if value else None


def dicomweb_base(request: Any, dicomweb_root: str) -> str:
    """The absolute URL of the DICOMweb root as the client sees it, without a trailing slash."""
    origin, prefix = origin_and_prefix(request)
    return f"{origin}{prefix}{dicomweb_root.rstrip('/')}"


def study_path(study: str) -> str:
    return f"/studies/{study}"


def series_path(study: str, series: str) -> str:
    return f"/studies/{study}/series/{series}"


def instance_path(study: str, series: str, sop: str) -> str:
    return f"/studies/{study}/series/{series}/instances/{sop}"
