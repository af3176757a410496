"""The server's FastAPI application: DICOMweb (QIDO-RS, WADO-RS, STOW-RS) under ``dicomweb_root``,
WADO-URI at ``/wado``, and the OHIF viewer at ``/``.

Example::

    import uvicorn
    from voxlake.server.app import create_app

    uvicorn.run(create_app("./lake"), host="127.0.0.1", port=8080)

``app.state`` holds ``lake`` (:class:`voxlake.Lake`), ``catalog``
(:class:`voxlake.lake.catalog.Catalog`), ``settings`` (:class:`~voxlake.server.state.ServerSettings`)
and ``server`` (:class:`~voxlake.server.state.ServerState`: ``refresh(force=True)`` after a commit,
``cursor()``, ``instance_rows()``). The catalog is refreshed from the request path at most once per
``refresh_interval`` seconds; see :mod:`voxlake.server.state`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from voxlake.errors import InvalidArgumentError
from voxlake.server.state import ServerSettings, ServerState

if TYPE_CHECKING:
    from fastapi import FastAPI

    from voxlake.lake.lake import Lake

log = logging.getLogger("voxlake.server")

#: Headers a browser on another origin may read (CORS), for paging and negotiation.
_EXPOSED = ["Warning", "Content-Type", "Content-Length", "Content-Location"]


class _UploadLimit:
    """ASGI middleware: 413 for a request whose declared body exceeds ``limit`` bytes, before any
    of it is read. (STOW-RS also counts the bytes of chunked uploads as it reads them.)"""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope.get("headers", ()):
                if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                    from voxlake.server.errors import error_response

                    response = error_response(413, f"request body of {int(value)} bytes exceeds the limit "
                                              f"of {self.limit} bytes (voxlake serve --max-upload-bytes)")
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def create_app(
    lake: str | Lake,
    *,
    dicomweb_root: str = "/dicomweb",
    cors_origins: list[str] | None = None,
    viewer: bool = True,
    max_upload_bytes: int = 4 << 30,
    refresh_interval: float = 1.0,
    qido_max_results: int = 10_000,
    metadata_cache_bytes: int = 512 << 20,
    ai: bool = True,
    registry: Any = None,
    model_idle_seconds: float = 600.0,
    train_every: int | None = None,
) -> FastAPI:
    """The DICOMweb server of ``lake`` (a :class:`voxlake.Lake` or its URI).

    ``dicomweb_root`` is where the DICOMweb API lives (``/dicomweb``); ``cors_origins`` the origins
    browsers on other sites may call it from (``["*"]`` for any; none by default, the viewer being
    same-origin); ``viewer`` serves OHIF at ``/`` when its files are installed (``make viewer``);
    ``max_upload_bytes`` bounds a request body (413 beyond); ``refresh_interval`` is how stale the
    catalog may be, in seconds; ``qido_max_results`` caps one QIDO-RS page; ``metadata_cache_bytes``
    bounds the cache of assembled series metadata. ``ai`` serves the AI endpoints under ``/ai``
    (:mod:`voxlake.server.ai`) with models from ``registry`` (a :class:`voxlake.ai.registry.Registry`;
    default: the user's), unloaded after ``model_idle_seconds`` unused. ``train_every`` N fine-tunes a
    model after every N new final labels (corrections saved in the viewer) of it.
    """
    from fastapi import FastAPI

    import voxlake
    from voxlake.lake import storage
    from voxlake.lake.catalog import Catalog
    from voxlake.server import errors, qido, stow, wado, wado_uri
    from voxlake.server.stow_store import commit_landed

    the_lake = voxlake.open(lake) if isinstance(lake, str) else lake
    root = "/" + dicomweb_root.strip("/")
    settings = ServerSettings(
        dicomweb_root=root,
        cors_origins=tuple(cors_origins or ()),
        viewer=viewer,
        max_upload_bytes=max_upload_bytes,
        refresh_interval=refresh_interval,
        qido_max_results=qido_max_results,
        metadata_cache_bytes=metadata_cache_bytes,
    )
    if storage.is_local(the_lake.uri):
        commit_landed(the_lake)  # what a crash left landed (STOW-RS, C-STORE) but uncommitted
    catalog = Catalog(the_lake.uri)
    catalog.refresh()
    state = ServerState(the_lake, catalog, settings)

    app = FastAPI(title="voxlake DICOMweb", version=voxlake.__version__, docs_url=f"{root}/docs",
                  redoc_url=None, openapi_url=f"{root}/openapi.json")
    app.state.lake = the_lake
    app.state.catalog = catalog
    app.state.settings = settings
    app.state.server = state
    errors.install_handlers(app)

    app.include_router(qido.router(), prefix=root)
    app.include_router(wado.router(), prefix=root)
    app.include_router(wado_uri.router())
    app.include_router(stow.router, prefix=root)
    if ai:
        from voxlake.server import ai as ai_routes

        if train_every is not None and train_every < 1:
            raise InvalidArgumentError(f"train_every must be 1 or more, got {train_every}")
        app.state.ai = ai_routes.AIService(state, registry, model_idle_seconds, train_every)
        app.include_router(ai_routes.router())
        from voxlake.server import monailabel as monailabel_routes

        app.include_router(monailabel_routes.router())  # MONAI Label's REST API (docs/monailabel.md)
        app.router.on_shutdown.append(app.state.ai.close)  # the job in progress finishes its series
        app.state.ai.resume()
    if viewer:
        _mount_viewer(app, root)

    app.add_middleware(_UploadLimit, limit=max_upload_bytes)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST", "PUT"],
                           allow_headers=["*"], expose_headers=_EXPOSED)
    return app


def _mount_viewer(app: Any, root: str) -> None:
    """OHIF at ``/``; a missing viewer is one log line, never a failed start."""
    from voxlake.errors import MissingExtraError
    from voxlake.server import viewer

    try:
        dist = viewer.find_ohif_dist()
    except MissingExtraError as exc:
        log.warning("viewer not served: %s", exc)
        return
    viewer.mount_viewer(app, dist=dist, dicomweb_root=root, wado_uri_root="/wado")
