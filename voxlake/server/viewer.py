"""The OHIF v3 viewer served by voxlake's own server, at the web root, configured to its DICOMweb API.

OHIF ships as a prebuilt single-page application (npm ``@ohif/app``, pinned; ``make viewer`` unpacks it
to ``.cache/ohif-<version>/dist``). :func:`mount_viewer` adds to a FastAPI app:

- ``GET /app-config.js``: generated here (never the shipped one, which points at a public demo server):
  one DICOMweb data source on the page's own origin under ``dicomweb_root``, so no CORS is involved
  and the configuration stays right behind a reverse proxy.
- ``GET /<file>``: the files of ``dist`` with explicit MIME types (``.wasm`` must be
  ``application/wasm`` for streaming compilation), ETag revalidation, and long caching of the
  content-hashed bundles; never a file outside ``dist``.
- any other path that does not name a file: ``index.html`` (OHIF routes on the client:
  ``/viewer?StudyInstanceUIDs=…``, ``/segmentation?…``).

Every viewer response carries the cross-origin isolation headers (COOP ``same-origin``, COEP
``require-corp``): the page becomes ``crossOriginIsolated`` (SharedArrayBuffer for OHIF's codec
workers). The DICOMweb responses need nothing for it, being same-origin.

Example::

    app = FastAPI()
    app.include_router(dicomweb_router, prefix="/dicomweb")
    mount_viewer(app, dist=find_ohif_dist())   # last: its catch-all route must come after the API's
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from voxlake.errors import MissingExtraError

__all__ = ["OHIF_DIST_ENV", "OHIF_VERSION", "app_config", "app_config_js", "find_ohif_dist", "mount_viewer"]

OHIF_VERSION = "3.13.2"  # keep in step with OHIF_VERSION in the Makefile
OHIF_DIST_ENV = "VOXLAKE_OHIF_DIST"

_REPO = Path(__file__).resolve().parents[2]
_ISOLATION = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Explicit, so a host's /etc/mime.types cannot change what the browser gets.
_MIME = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm", ".json": "application/json", ".map": "application/json",
    ".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml",
    ".png": "image/png", ".ico": "image/x-icon", ".woff2": "font/woff2", ".woff": "font/woff",
    ".ttf": "font/ttf", ".txt": "text/plain; charset=utf-8", ".onnx": "application/octet-stream",
}
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16,}\.(js|wasm|css)$")  # webpack content hashes: cache forever
_NO_CACHE = "no-cache"


def find_ohif_dist(*, version: str = OHIF_VERSION) -> Path:
    """The unpacked OHIF ``dist`` folder: ``$VOXLAKE_OHIF_DIST``, else ``.cache/ohif-<version>/dist`` in
    the repository or the current folder.

    Raises
    ------
    MissingExtraError
        When none holds an ``index.html``; the message says to run ``make viewer``.
    """
    env = os.environ.get(OHIF_DIST_ENV)
    candidates = [Path(env)] if env else [
        base / ".cache" / f"ohif-{version}" / "dist" for base in dict.fromkeys((_REPO, Path.cwd()))]
    for candidate in candidates:
        if (candidate / "index.html").is_file():
            return candidate.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise MissingExtraError(f"the OHIF viewer {version} was not found at {where}: run `make viewer` "
                            f"(it unpacks @ohif/app@{version}), or set {OHIF_DIST_ENV} to its dist folder")


def app_config(*, dicomweb_root: str = "/dicomweb", wado_uri_root: str | None = None,
               thumbnail_rendering: str = "thumbnail") -> dict[str, Any]:
    """OHIF's ``window.config`` with one DICOMweb data source, as data (roots relative to the origin;
    :func:`app_config_js` prefixes the page's origin at run time)."""
    root = "/" + dicomweb_root.strip("/")
    return {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],  # every mode built into the package: basic viewer, segmentation, …
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "investigationalUseDialog": {"option": "never"},
        "customizationService": {"ohif.tours": {"$set": []}},  # no onboarding tour dimming the page
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "defaultDataSourceName": "voxlake",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "voxlake",
            "configuration": {
                "friendlyName": "voxlake",
                "name": "voxlake",
                "qidoRoot": root,
                "wadoRoot": root,
                "wadoUriRoot": "/" + (wado_uri_root or root).strip("/"),
                "imageRendering": "wadors",
                "thumbnailRendering": thumbnail_rendering,
                "enableStudyLazyLoad": True,
                "supportsWildcard": True,
                "supportsFuzzyMatching": True,
                "qidoSupportsIncludeField": True,
                "supportsReject": False,
                "dicomUploadEnabled": True,
                "omitQuotationForMultipartRequest": True,
                "bulkDataURI": {"enabled": True},
                # OHIF 3.13 stores a SEG as Label Map Segmentation (66.7), RLE Lossless, by default, which
                # voxlake.ai.labels reads (frame by frame: it has no FrameContentSequence for highdicom).
            },
        }],
    }


def app_config_js(**options: Any) -> str:
    """``/app-config.js``: :func:`app_config` with the DICOMweb roots made absolute on the page's origin."""
    config = json.dumps(app_config(**options), indent=2)
    return (
        "// Generated by voxlake (voxlake/server/viewer.py); the DICOMweb roots are on this page's origin.\n"
        "window.config = (function () {\n"
        f"  const config = {config};\n"
        "  for (const source of config.dataSources) {\n"
        "    for (const key of ['qidoRoot', 'wadoRoot', 'wadoUriRoot']) {\n"
        "      source.configuration[key] = window.location.origin + source.configuration[key];\n"
        "    }\n"
        "  }\n"
        "  return config;\n"
        "})();\n"
    )


def mount_viewer(app: Any, *, dist: Path, dicomweb_root: str = "/dicomweb", **config: Any) -> None:
    """Serve OHIF from ``dist`` at the root of the FastAPI ``app``, configured for ``dicomweb_root``.

    Call it after the DICOMweb routes are added: its catch-all route must come last. Paths under
    ``dicomweb_root`` that no API route answered get a 404, never the viewer's ``index.html``.
    ``config`` goes to :func:`app_config` (``wado_uri_root``, ``thumbnail_rendering``).
    """
    from starlette.requests import Request
    from starlette.responses import FileResponse, PlainTextResponse, Response

    dist = Path(dist).resolve()
    index = dist / "index.html"
    if not index.is_file():
        raise MissingExtraError(f"no OHIF index.html in {dist}: run `make viewer` or set {OHIF_DIST_ENV}")
    api = dicomweb_root.strip("/")
    config_js = app_config_js(dicomweb_root=dicomweb_root, **config).encode()

    def file_response(request: Request, path: Path) -> Response:
        st = path.stat()
        cache = "public, max-age=31536000, immutable" if _HASHED.search(path.name) else _NO_CACHE
        media = _MIME.get(path.suffix.lower())
        response = FileResponse(path, media_type=media, stat_result=st,
                                headers={**_ISOLATION, "Cache-Control": cache})
        if request.headers.get("if-none-match") == response.headers["etag"]:
            return Response(status_code=304, headers={**_ISOLATION, "ETag": response.headers["etag"],
                                                      "Cache-Control": cache})
        return response

    async def serve(request: Request) -> Response:
        path = request.path_params.get("path", "")
        if path == "app-config.js":
            return Response(config_js, media_type=_MIME[".js"], headers={**_ISOLATION, "Cache-Control": _NO_CACHE})
        if api and (path == api or path.startswith(api + "/")):
            return PlainTextResponse("no such DICOMweb resource", status_code=404)
        target = _inside(dist, path)
        if target is not None:
            return file_response(request, target)
        if _outside(dist, path) or "." in path.rsplit("/", 1)[-1]:  # outside, or a file that is not there
            return PlainTextResponse("not found", status_code=404, headers=_ISOLATION)
        return file_response(request, index)

    # Plain Starlette routes: no FastAPI parameter handling, no OpenAPI entries.
    app.router.add_route("/", serve, methods=["GET", "HEAD"], include_in_schema=False)
    app.router.add_route("/{path:path}", serve, methods=["GET", "HEAD"], include_in_schema=False)


def _inside(root: Path, path: str) -> Path | None:
    """The regular file ``path`` names under ``root`` (symlinks resolved), or None."""
    try:
        candidate = (root / path.lstrip("/")).resolve()
        return candidate if candidate.is_relative_to(root) and candidate.is_file() else None
    except (OSError, ValueError):  # a NUL byte, a name too long
        return None


def _outside(root: Path, path: str) -> bool:
    """Whether ``path`` points out of ``root`` (``..``, an absolute path): answered 404, not the app."""
    try:
        return not (root / path.lstrip("/")).resolve().is_relative_to(root)
    except (OSError, ValueError):
        return True
