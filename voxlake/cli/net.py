"""``voxlake dimse serve`` and ``voxlake pacs echo|find|pull|push``: the lake on a DICOM network."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

#: Matching keys with their own option in ``pacs find``; any other attribute: ``--key KEYWORD=VALUE``.
FIND_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "StudyDate", "StudyInstanceUID", "AccessionNumber",
    "StudyDescription", "ModalitiesInStudy", "SeriesInstanceUID", "Modality", "SOPInstanceUID",
)


def add_parser(sub: Any) -> None:
    d = sub.add_parser("dimse", help="serve the lake over DIMSE (C-ECHO, C-STORE into the lake)")
    dk = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = dk.add_parser("serve", help="listen until SIGINT or SIGTERM; received instances land in the lake")
    s.add_argument("--lake", required=True, help="lake folder (local)")
    s.add_argument("--ae", default="VOXLAKE", help="our AE title (default VOXLAKE)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: all)")
    s.add_argument("--port", type=int, default=11112)
    s.add_argument("--peers", help="YAML peers file (default $VOXLAKE_PEERS, else ./peers.yaml if present)")
    s.add_argument("--require-known-peers", action="store_true", help="reject AE titles not in the peers file")
    s.add_argument("--commit-interval", type=float, default=2.0, help="seconds between commits")
    _common(s)

    p = sub.add_parser("pacs", help="talk to a PACS: echo, find, pull into the lake, push from it")
    pk = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    e = pk.add_parser("echo", help="C-ECHO a peer")
    _peer(e)

    f = pk.add_parser("find", help="C-FIND: query a peer")
    _peer(f)
    f.add_argument("--level", default="study", help="patient, study (default), series or image")
    f.add_argument("--model", default="study", help="query model: study (default) or patient root")
    for keyword in FIND_KEYS:
        f.add_argument(f"--{keyword}", dest=f"key_{keyword}", metavar="VALUE")
    f.add_argument("--key", action="append", default=[], metavar="KEYWORD=VALUE", help="any other attribute")

    g = pk.add_parser("pull", help="C-GET or C-MOVE a study (or series) into the lake")
    _peer(g)
    g.add_argument("--study", required=True, help="StudyInstanceUID")
    g.add_argument("--series", help="SeriesInstanceUID (one series of the study)")
    g.add_argument("--lake", required=True, help="lake folder (local)")
    g.add_argument("--method", default="get", help="get (C-GET, default) or move (C-MOVE to us)")
    g.add_argument("--port", type=int, default=None, help="move: the port the peer knows us by (default 11112)")
    g.add_argument("--host", default="0.0.0.0", help="move: address to listen on (default all)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")

    u = pk.add_parser("push", help="C-STORE lake instances selected by SQL")
    _peer(u)
    u.add_argument("--lake", required=True, help="lake folder")
    u.add_argument("--where", required=True, help="SQL condition on the instances view, e.g. \"Modality='SEG'\"")
    u.add_argument("--retries", type=int, default=2, help="retries of failed instances (default 2)")
    u.add_argument("--quiet", action="store_true", help="no progress bar")


def _peer(p: argparse.ArgumentParser) -> None:
    p.add_argument("peer", help="the peer's AE title, as in the peers file")
    p.add_argument("--peers", help="YAML peers file (default $VOXLAKE_PEERS, else ./peers.yaml)")
    p.add_argument("--ae", default="VOXLAKE", help="our AE title (default VOXLAKE)")
    p.add_argument("--timeout", type=float, default=60, help="seconds to wait for the peer")
    _common(p)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.command == "dimse" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    # pynetdicom logs every rejection and abort at length; voxlake.net says it in one line.
    logging.getLogger("pynetdicom").setLevel(logging.DEBUG if getattr(args, "debug", False) else logging.CRITICAL)
    if args.command == "dimse":
        return _serve(args)
    from voxlake.net.scu import resolve_peer

    peer = resolve_peer(args.peer, args.peers)
    return {"echo": _echo, "find": _find, "pull": _pull, "push": _push}[args.action](args, peer)


def _serve(args: argparse.Namespace) -> int:
    import voxlake
    from voxlake.net import DimseServer, load_peers

    peers_path = args.peers or os.environ.get("VOXLAKE_PEERS") or ("peers.yaml" if Path("peers.yaml").exists() else None)
    server = DimseServer(
        voxlake.open(args.lake), ae_title=args.ae, host=args.host, port=args.port,
        peers=load_peers(peers_path) if peers_path else None,
        require_known_peers=args.require_known_peers, commit_interval=args.commit_interval,
    )
    server.start()
    where = {"ae_title": server.ae_title, "host": server.host, "port": server.port,
             "landing": str(server.landing.root)}
    if args.json:
        _print_json(where)
    else:
        print(f"{server.ae_title} listening on {server.host}:{server.port}, landing into {server.landing.root}",
              flush=True)
    sys.stdout.flush()
    server.wait()
    return 0


def _echo(args: argparse.Namespace, peer: Any) -> int:
    from voxlake.net.scu import echo

    status = echo(peer, ae_title=args.ae, timeout=args.timeout)
    if args.json:
        _print_json({"peer": peer.ae_title, "host": peer.host, "port": peer.port, "status": f"0x{status:04X}"})
    else:
        print(f"{peer.ae_title} at {peer.host}:{peer.port}: C-ECHO status 0x{status:04X}"
              + (" (Success)" if status == 0 else ""))
    return 0 if status == 0 else 1


def _find(args: argparse.Namespace, peer: Any) -> int:
    from voxlake.errors import InvalidArgumentError
    from voxlake.net.scu import find

    keys = {k: getattr(args, f"key_{k}") for k in FIND_KEYS if getattr(args, f"key_{k}") is not None}
    for item in args.key:
        keyword, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgumentError(f"--key needs KEYWORD=VALUE, not {item!r}")
        keys[keyword.strip()] = value
    matches = find(peer, args.level, keys, model=args.model, ae_title=args.ae, timeout=args.timeout)
    if args.json:
        _print_json(matches)
    else:
        import pyarrow as pa

        from voxlake.cli.output import render_table
        from voxlake.net.scu import DEFAULT_RETURN_KEYS, Level

        first = [k for k in DEFAULT_RETURN_KEYS[Level.parse(args.level)] if any(k in m for m in matches)]
        names = list(dict.fromkeys([*first, *(k for m in matches for k in m if k != "QueryRetrieveLevel")]))
        table = pa.table({n: [m.get(n, "") for m in matches] for n in names})
        # 64: a UID is printed whole (PS3.5 9.1), to be pasted into `pacs pull --study`.
        print(render_table(table, max_width=64) if matches else "(0 rows)")
    return 0


def _pull(args: argparse.Namespace, peer: Any) -> int:
    import voxlake
    from voxlake.net.scu import pull

    bar = _Bar("pull", "instances", args.quiet)
    try:
        result = pull(
            voxlake.open(args.lake), peer, study=args.study, series=args.series, method=args.method,
            ae_title=args.ae, host=args.host, port=args.port, progress=bar.update, timeout=args.timeout,
        )
    finally:
        bar.close()
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.summary())
    return 0 if result.ok else 1


def _push(args: argparse.Namespace, peer: Any) -> int:
    import voxlake
    from voxlake.net.scu import push

    bar = _Bar("push", "instances", args.quiet)
    try:
        with voxlake.open(args.lake) as lake:
            result = push(lake, peer, where=args.where, ae_title=args.ae, retries=args.retries,
                          progress=bar.update, timeout=args.timeout)
    finally:
        bar.close()
    if args.json:
        _print_json(result.to_dict())
    else:
        print(result.summary())
    return 0 if result.ok else 1


class _Bar:
    """A tqdm bar on standard error, made at the first report (its total comes from the peer)."""

    def __init__(self, desc: str, unit: str, disabled: bool) -> None:
        self.desc, self.unit, self.disabled = desc, unit, disabled
        self.bar: Any = None

    def update(self, done: int, total: int) -> None:
        if self.disabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=self.unit, desc=self.desc, file=sys.stderr, dynamic_ncols=True)
        if total != self.bar.total:
            self.bar.total = total
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _print_json(obj: Any) -> None:
    from voxlake.cli.output import print_json

    print_json(obj)
