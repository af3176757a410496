"""``voxlake serve``: the lake over DICOMweb, with the OHIF viewer, until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from typing import Any


def add_parser(sub: Any) -> None:
    s = sub.add_parser(
        "serve",
        help="serve the lake over DICOMweb (QIDO-RS, WADO-RS, STOW-RS, WADO-URI) and the OHIF viewer",
        description="DICOMweb at http://HOST:PORT/dicomweb, WADO-URI at /wado, OHIF at / (when "
        "installed: make viewer). Binds to 127.0.0.1 unless --host says otherwise.",
    )
    s.add_argument("--lake", required=True, help="lake folder or URL")
    s.add_argument("--create", action="store_true",
                   help="serve an empty lake when there is none at --lake yet (STOW-RS uploads fill it)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    s.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    s.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browsers on ORIGIN (repeatable; '*' for any)")
    s.add_argument("--no-viewer", action="store_true", help="serve the DICOMweb API only")
    s.add_argument("--dicomweb-root", default="/dicomweb", help="path of the DICOMweb API (default /dicomweb)")
    s.add_argument("--max-upload-bytes", type=int, default=4 << 30, help="largest STOW-RS request (default 4 GiB)")
    s.add_argument("--train-every", type=int, default=None, metavar="N",
                   help="fine-tune a model after every N new final labels (corrections saved in the viewer); "
                   "its held-out set must be fixed first (voxlake train --from-labels --heldout DIR)")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Start uvicorn; Ctrl-C (SIGINT) or SIGTERM stops it after the requests in flight."""
    import uvicorn

    from voxlake.errors import LakeNotFoundError
    from voxlake.lake.lake import Lake
    from voxlake.server.app import create_app

    if not args.create and not Lake(args.lake).exists():
        raise LakeNotFoundError(f"no lake at {args.lake} (voxlake ingest makes one; serve --create serves an "
                                "empty one that STOW-RS uploads fill)")

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    app = create_app(args.lake, dicomweb_root=args.dicomweb_root, cors_origins=args.cors_origin,
                     viewer=not args.no_viewer, max_upload_bytes=args.max_upload_bytes, train_every=args.train_every)
    shown = "localhost" if args.host in ("127.0.0.1", "::1") else args.host
    print(f"voxlake: serving {args.lake} at http://{shown}:{args.port}/ "
          f"(DICOMweb: http://{shown}:{args.port}{app.state.settings.dicomweb_root}); Ctrl-C stops",
          flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    # uvicorn re-raises the SIGINT it handled, after a clean shutdown.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    print("voxlake: stopped", file=sys.stderr)
    return 0
