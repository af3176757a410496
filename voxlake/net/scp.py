"""The DIMSE server: Verification, Storage (PS3.4 Annex A, B) with durable acknowledgement, and
Query/Retrieve (Annex C: Patient and Study Root FIND, MOVE, GET) answered from the lake.

A C-STORE is answered Success only after the instance is a durable file in the lake's landing area
(see :mod:`voxlake.net.store`). A committer thread indexes the landed files into the tables every
``commit_interval`` seconds, one atomic ingest run per batch; at start-up it indexes whatever a crash
left landed but uncommitted (ingest is incremental by uri, size and mtime, so nothing is added twice).

Handler contracts (as in pynetdicom, PS3.7 9.1):

* ``EVT_C_ECHO``: returns 0x0000 Success.
* ``EVT_C_STORE``: returns 0x0000 Success once the instance is durably landed (or was already there
  with the same bytes); 0xC210 "cannot understand" when the dataset cannot be parsed or is truncated;
  0xA900 "data set does not match SOP Class" when it lacks a valid Study, Series or SOP Instance UID;
  0xA700 "out of resources" when it cannot be written. Each failure is logged with the calling AE
  title and the SOP Instance UID, and leaves no file behind.
* ``EVT_C_FIND``: yields (0xFF00 Pending, identifier) per match, then (0x0000 Success, None);
  (0xFE00 Cancel, None) once the peer cancels; 0xA900 "identifier does not match SOP class" with an
  ErrorComment for a bad level or missing higher-level unique keys; 0xC001 "unable to process"
  when the query fails. Matching and return keys: :mod:`voxlake.net.qr`.
* ``EVT_C_MOVE``: yields the destination's (host, port, {contexts}) from ``peers`` ((None, None):
  0xA801 "move destination unknown"), the number of sub-operations, then (0xFF00, dataset) per
  instance and (0x0000, None); pynetdicom counts completed, failed and warning sub-operations and
  sends 0xB000 when some failed. 0xA900/0xC001 as for C-FIND.
* ``EVT_C_GET``: as C-MOVE without the destination; the C-STOREs go back over the association, on
  the storage contexts the requestor proposed with the SCP role (PS3.7 D.3.3.4).

Queries and retrieves read the lake through a DuckDB connection of their own association thread
(a connection is not thread-safe), over the table versions current when each request arrives: they
neither wait for nor hold up C-STORE and the committer. Instances are sent from their stored files,
with the transfer syntax they were stored in, wherever they are (local files, zip members,
object-store URLs); a file that cannot be read counts as a failed sub-operation.

Unsupported SOP classes and transfer syntaxes are refused at association negotiation (the
presentation context is rejected), unknown calling AE titles too when ``require_known_peers``
(A-ASSOCIATE-RJ, rejected-permanent, reason "calling AE title not recognized", PS3.8 9.3.4).

Only local lakes: the landing area is a folder, and fsync has no object-store equivalent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.uid import AllTransferSyntaxes
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from voxlake.errors import InvalidArgumentError
from voxlake.lake import storage
from voxlake.lake.catalog import Catalog
from voxlake.lake.matching import MatchError
from voxlake.net import qr
from voxlake.net._tuning import no_delay, skip_unlogged_identifiers
from voxlake.net.store import LandingArea

log = logging.getLogger("voxlake.net")

#: PS3.4 B.2.3 C-STORE statuses.
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC210

#: PS3.4 C.4 Query/Retrieve statuses.
PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
MOVE_DESTINATION_UNKNOWN = 0xA801
UNABLE_TO_PROCESS = 0xC001

QUERY_RETRIEVE_SOP_CLASSES = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)

#: At most 128 presentation contexts in an association request (PS3.8 9.3.2.2).
MAX_CONTEXTS = 128

#: The landing area's folder inside the lake.
LANDING_FOLDER = "dicom"


@dataclass(frozen=True, slots=True)
class Peer:
    """A known DICOM application entity."""

    ae_title: str
    host: str
    port: int


def load_peers(path: str | os.PathLike[str]) -> dict[str, Peer]:
    """Read a peers file: YAML ``{AE_TITLE: {host: ..., port: ...}, ...}``.

    >>> load_peers("peers.yaml")  # doctest: +SKIP
    {'ORTHANC': Peer(ae_title='ORTHANC', host='127.0.0.1', port=4242)}
    """
    import yaml

    with open(path, encoding="utf-8") as fp:
        raw = yaml.safe_load(fp) or {}
    if not isinstance(raw, dict):
        raise InvalidArgumentError(f"{path}: expected a mapping of AE titles to {{host, port}}")
    peers = {}
    for title, spec in raw.items():
        if not isinstance(spec, dict) or "host" not in spec or "port" not in spec:
            raise InvalidArgumentError(f"{path}: peer {title!r} needs 'host' and 'port'")
        title = str(title).strip()
        if not 0 < len(title) <= 16:
            raise InvalidArgumentError(f"{path}: AE title {title!r} must be 1 to 16 characters (PS3.5 6.2)")
        peers[title] = Peer(title, str(spec["host"]), int(spec["port"]))
    return peers


class DimseServer:
    """One AE serving the lake over DIMSE; ``start()`` returns at once, ``stop()`` drains and commits.

    >>> with DimseServer(voxlake.open("/data/lake"), port=11112) as server:  # doctest: +SKIP
    ...     server.wait()  # until SIGINT / SIGTERM
    """

    def __init__(
        self,
        lake: Any,
        *,
        ae_title: str = "VOXLAKE",
        host: str = "127.0.0.1",
        port: int = 11112,
        peers: dict[str, Peer] | None = None,
        require_known_peers: bool = False,
        commit_interval: float = 2.0,
        max_associations: int = 16,
    ) -> None:
        if not storage.is_local(lake.uri):
            raise InvalidArgumentError(
                f"{lake.uri}: the DIMSE server needs a local lake (its landing area is fsynced to disk)"
            )
        if require_known_peers and not peers:
            raise InvalidArgumentError("require_known_peers needs peers (see load_peers); none were given")
        if max_associations < 1 or commit_interval <= 0:
            raise InvalidArgumentError("max_associations must be ≥ 1 and commit_interval > 0")
        self.lake = lake
        self.ae_title = ae_title
        self.host = host
        self.port = port
        self.peers = dict(peers or {})
        self.require_known_peers = require_known_peers
        self.commit_interval = commit_interval
        self.landing = LandingArea(Path(lake.uri) / LANDING_FOLDER)
        self.ae = self._make_ae(max_associations)
        self._server: Any = None
        self._committer: threading.Thread | None = None
        self._stopping = threading.Event()
        self._pending: list[str] = []
        self._pending_lock = threading.Lock()
        self._commit_lock = threading.Lock()
        # Lakes (each with its DuckDB connection) lent to one request at a time: a connection is not
        # thread-safe, and opening one per association would cost more than the query.
        self._readers: queue.SimpleQueue[Any] = queue.SimpleQueue()
        # C-FIND, C-MOVE and C-GET read the catalog (milliseconds); only keys that are not promoted
        # columns need the lake's own views.
        self.catalog = Catalog(lake.uri)

    def _make_ae(self, max_associations: int) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.maximum_associations = max_associations
        # Peers send PDUs up to this size: pynetdicom's 16 KiB default splits a CT slice into ~34
        # PDUs, whose decoding dominated C-STORE time; 1 MiB gave +15-27% instances/s (bench).
        ae.maximum_pdu_size = 1 << 20
        ae.add_supported_context(Verification)
        # Every syntax pydicom knows, compressed ones included: data is stored as received. Both
        # roles are accepted so that a C-GET requestor can act as Storage SCP (PS3.7 D.3.3.4).
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, AllTransferSyntaxes, scu_role=True, scp_role=True)
        for sop_class in QUERY_RETRIEVE_SOP_CLASSES:
            ae.add_supported_context(sop_class)
        if self.require_known_peers:
            ae.require_calling_aet = list(self.peers)
        return ae

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> DimseServer:
        """Listen (port 0 picks a free one; see :attr:`port`) and start the committer."""
        removed = self.landing.remove_temporaries()
        if removed:
            log.info("removed %d unacknowledged temporary files from %s", len(removed), self.landing.root)
        skip_unlogged_identifiers()
        handlers = [
            (evt.EVT_C_ECHO, self.on_c_echo),
            (evt.EVT_C_STORE, self.on_c_store),
            (evt.EVT_C_FIND, self.on_c_find),
            (evt.EVT_C_MOVE, self.on_c_move),
            (evt.EVT_C_GET, self.on_c_get),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_CONN_OPEN, no_delay),
        ]
        self._server = self.ae.start_server((self.host, self.port), block=False, evt_handlers=handlers)
        self.port = self._server.server_address[1]
        self._committer = threading.Thread(target=self._commit_loop, name="voxlake-committer", daemon=True)
        self._committer.start()
        log.info(
            "%s listening on %s:%d, landing area %s", self.ae_title, self.host, self.port, self.landing.root
        )
        return self

    def stop(self) -> None:
        """Stop listening, abort open associations, and commit what has landed."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stopping.set()
        if self._committer is not None:
            self._committer.join()
            self._committer = None
        while True:
            try:
                self._readers.get_nowait().close()
            except queue.Empty:
                break

    def wait(self) -> None:
        """Block until SIGINT or SIGTERM (main thread only), then stop."""
        from voxlake._signals import stop_on_signals

        done = threading.Event()
        try:
            with stop_on_signals(done, message="stopping", only_defaults=False):
                done.wait()
        finally:
            self.stop()

    def __enter__(self) -> DimseServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handlers ----------------------------------------------------------------------------

    def on_c_echo(self, event: Any) -> int:
        """C-ECHO (PS3.4 A.4): always Success."""
        return SUCCESS

    def on_c_store(self, event: Any) -> int:
        """C-STORE (PS3.4 B.2.3): land the dataset as received, durably, then answer Success."""
        calling = event.assoc.requestor.ae_title
        requested = str(event.request.AffectedSOPInstanceUID or "")
        data = event.encoded_dataset()
        try:
            study, series, sop = _instance_uids(data)
        except _Unreadable as exc:
            log.warning(
                "C-STORE from %s, SOP Instance %s: cannot understand (%s); 0xC210", calling, requested, exc
            )
            return CANNOT_UNDERSTAND
        if not all((study, series, sop)):
            log.warning(
                "C-STORE from %s, SOP Instance %s: no Study, Series or SOP Instance UID; 0xA900",
                calling,
                requested,
            )
            return DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        if sop != requested:
            log.warning("C-STORE from %s: request names SOP Instance %s, dataset %s", calling, requested, sop)
        try:
            path, new = self.landing.store(data, study, series, sop)
        except ValueError as exc:
            log.warning("C-STORE from %s, SOP Instance %s: %s; 0xA900", calling, requested, exc)
            return DATA_SET_DOES_NOT_MATCH_SOP_CLASS
        except OSError as exc:
            log.error("C-STORE from %s, SOP Instance %s: cannot write (%s); 0xA700", calling, requested, exc)
            return OUT_OF_RESOURCES
        if new:
            with self._pending_lock:
                self._pending.append(str(path))
        log.debug("C-STORE from %s: %s %s", calling, path, "landed" if new else "already landed")
        return SUCCESS

    def on_c_find(self, event: Any) -> Iterator[tuple[Any, Any]]:
        """C-FIND (PS3.4 C.4.1): one pending response per matching entity, from the lake's tables."""
        started = time.perf_counter()
        n = 0
        try:
            identifier = event.identifier
            model = qr.model_for(event.request.AffectedSOPClassUID)
            query = qr.build_find(identifier, model)
            with self._query_connection(query.uses_header) as con:
                matches = [] if con is None else qr.responses(con, query, ae_title=self.ae_title)
                for ds in matches:
                    if event.is_cancelled:
                        yield CANCEL, None
                        return
                    n += 1
                    yield PENDING, ds
        except MatchError as exc:
            yield _failure(event, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)), None
            return
        except Exception as exc:
            log.exception("C-FIND from %s failed", event.assoc.requestor.ae_title)
            yield _failure(event, UNABLE_TO_PROCESS, f"{type(exc).__name__}: {exc}"), None
            return
        log.debug(
            "C-FIND from %s: %d matches in %.1f ms",
            event.assoc.requestor.ae_title,
            n,
            (time.perf_counter() - started) * 1000,
        )
        yield SUCCESS, None

    def on_c_move(self, event: Any) -> Iterator[Any]:
        """C-MOVE (PS3.4 C.4.2): the identified instances, to a destination named in ``peers``."""
        destination = str(event.move_destination or "").strip()
        peer = self.peers.get(destination)
        if peer is None:
            log.warning(
                "C-MOVE from %s: unknown destination %r; 0xA801", event.assoc.requestor.ae_title, destination
            )
            yield None, None
            return
        try:
            matches = self._retrieve(event)
        except _RetrieveFailed as exc:
            # pynetdicom sends a failure only after the destination and one sub-operation.
            yield peer.host, peer.port, {"contexts": [build_context(Verification)]}
            yield 1
            yield exc.status, None
            return
        yield peer.host, peer.port, {"contexts": _storage_contexts(matches)}
        yield from self._send(event, matches)

    def on_c_get(self, event: Any) -> Iterator[Any]:
        """C-GET (PS3.4 C.4.3): the identified instances, back over the requestor's association."""
        try:
            matches = self._retrieve(event)
        except _RetrieveFailed as exc:
            yield 1
            yield exc.status, None
            return
        yield from self._send(event, matches)

    def _retrieve(self, event: Any) -> list[qr.Match]:
        try:
            model = qr.model_for(event.request.AffectedSOPClassUID)
            with self._query_connection(False) as con:
                return [] if con is None else qr.retrieve(con, event.identifier, model)
        except MatchError as exc:
            raise _RetrieveFailed(_failure(event, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))) from exc
        except Exception as exc:
            log.exception("retrieve for %s failed", event.assoc.requestor.ae_title)
            raise _RetrieveFailed(_failure(event, UNABLE_TO_PROCESS, f"{type(exc).__name__}: {exc}")) from exc

    def _send(self, event: Any, matches: list[qr.Match]) -> Iterator[Any]:
        """The sub-operations: each stored file, read as it is; one that cannot be read fails alone."""
        from pydicom import dcmread

        from voxlake.dicom.frames import open_uri

        yield len(matches)
        for match in matches:
            if event.is_cancelled:
                yield CANCEL, None
                return
            try:
                with open_uri(match.uri) as fp:  # a path, a zip member or an object-store URL
                    dataset = dcmread(fp)
            except Exception as exc:
                log.warning("cannot send SOP Instance %s from %s: %s", match.sop_instance_uid, match.uri, exc)
                # pynetdicom counts a pending result that is not a dataset as a failed sub-operation.
                yield PENDING, match.uri
                continue
            yield PENDING, dataset
        yield SUCCESS, None

    @contextlib.contextmanager
    def _query_connection(self, header: bool) -> Iterator[Any]:
        """The catalog (brought up to date), or with ``header`` the lake's own views."""
        if header:
            with self._reader() as con:
                yield con
            return
        self.catalog.refresh()
        yield self.catalog.cursor()

    @contextlib.contextmanager
    def _reader(self) -> Iterator[Any]:
        """A DuckDB connection over the current table versions, for this request alone; None while
        the lake has no tables. Each is a Lake of its own, apart from the committer's."""
        from voxlake.errors import LakeNotFoundError
        from voxlake.lake.lake import Lake

        try:
            lake = self._readers.get_nowait()
        except queue.Empty:
            lake = Lake(self.lake.uri)
        try:
            try:
                con = lake.connect()
            except LakeNotFoundError:
                con = None
            yield con
        finally:
            self._readers.put(lake)

    def _on_aborted(self, event: Any) -> None:
        log.warning(
            "association with %s aborted; its unacknowledged instances were not kept",
            event.assoc.requestor.ae_title,
        )

    def _on_rejected(self, event: Any) -> None:
        log.warning(
            "association from %s (%s) rejected", event.assoc.requestor.ae_title, event.assoc.requestor.address
        )

    # -- committing --------------------------------------------------------------------------

    def commit(self, *, everything: bool = False) -> int:
        """Index the files landed since the last commit (``everything``: the whole landing area) as
        one run; returns the number of files handed to the run. Safe to call from any thread."""
        from voxlake.ingest.run import ingest_units
        from voxlake.ingest.sources import Unit, list_units

        with self._commit_lock, self.landing.lock():
            with self._pending_lock:
                paths, self._pending = self._pending, []
            try:
                if everything:
                    units = list(list_units(str(self.landing.root))) if self.landing.root.exists() else []
                else:
                    units = []
                    for p in paths:
                        try:
                            st = os.stat(p)
                        except FileNotFoundError:
                            log.warning("%s was landed but is gone; not committed", p)
                            continue
                        units.append(Unit(p, st.st_size, st.st_mtime_ns // 1000))
                if units:
                    summary = ingest_units(self.lake, str(self.landing.root), units, workers=0)
                    if summary.committed:
                        log.info(
                            "committed %d instances (%d errors) in run %s",
                            summary.indexed,
                            summary.errors,
                            summary.run_id,
                        )
                return len(units)
            except Exception:
                with self._pending_lock:
                    self._pending[:0] = paths  # tried again at the next interval
                raise

    def _commit_loop(self) -> None:
        everything = True  # first: what a crash left landed but uncommitted
        while True:
            stopping = self._stopping.wait(0 if everything else self.commit_interval)
            try:
                self.commit(everything=everything)
                everything = False
            except Exception:
                log.exception("commit failed; retrying in %.1f s", self.commit_interval)
            try:
                self.catalog.refresh()  # so that queries after a commit rarely wait for it
            except Exception:
                log.exception("catalog refresh failed; queries will retry it")
            if stopping:
                return


class _Unreadable(Exception):
    pass


class _RetrieveFailed(Exception):
    def __init__(self, status: Any) -> None:
        super().__init__(status)
        self.status = status


def _failure(event: Any, status: int, comment: str) -> Any:
    """A failure status dataset with an ErrorComment (at most 64 characters, PS3.7 C.4), logged."""
    from pydicom.dataset import Dataset

    log.warning("%s from %s: %s; 0x%04X", _service(event), event.assoc.requestor.ae_title, comment, status)
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


def _service(event: Any) -> str:
    return {evt.EVT_C_FIND: "C-FIND", evt.EVT_C_MOVE: "C-MOVE", evt.EVT_C_GET: "C-GET"}.get(
        event.event, "DIMSE"
    )


def _storage_contexts(matches: list[qr.Match]) -> list[Any]:
    """Contexts for C-MOVE sub-operations: each SOP class with its stored transfer syntax, plus the
    uncompressed ones pydicom can convert to, as long as they fit in one association request."""
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    wanted: dict[tuple[str, tuple[str, ...]], None] = {}
    for m in matches:
        wanted[(m.sop_class_uid, (m.transfer_syntax_uid,))] = None
    for m in matches:
        wanted[(m.sop_class_uid, (ExplicitVRLittleEndian, ImplicitVRLittleEndian))] = None
    contexts = [build_context(sop_class, list(syntaxes)) for sop_class, syntaxes in wanted]
    if len(contexts) > MAX_CONTEXTS:
        log.warning("%d presentation contexts needed, %d proposed", len(contexts), MAX_CONTEXTS)
    return contexts[:MAX_CONTEXTS]


def _instance_uids(data: bytes) -> tuple[str | None, str | None, str | None]:
    """Study, Series and SOP Instance UID, read with the lake's own parser so that what is accepted
    is what the lake can index."""
    from voxlake.dicom.parser import read_header
    from voxlake.errors import VoxlakeError

    try:
        header = read_header(io.BytesIO(data), size=len(data))
    except VoxlakeError as exc:
        raise _Unreadable(str(exc)) from None
    if header.partial:
        raise _Unreadable("the dataset ends early: " + "; ".join(header.warnings[-1:]))

    def uid(tag: str) -> str | None:
        values = (header.dataset.get(tag) or {}).get("Value") or []
        return str(values[0]).strip() if values and values[0] else None

    return uid("0020000D"), uid("0020000E"), uid("00080018")


def main(argv: list[str] | None = None) -> None:
    """``python -m voxlake.net --lake PATH [--port N] ...``: serve until SIGINT or SIGTERM."""
    import voxlake

    parser = argparse.ArgumentParser(prog="python -m voxlake.net", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", required=True)
    parser.add_argument("--ae-title", default="VOXLAKE")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11112)
    parser.add_argument("--peers", help="YAML file of known peers")
    parser.add_argument("--require-known-peers", action="store_true")
    parser.add_argument("--commit-interval", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    server = DimseServer(
        voxlake.open(args.lake),
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        peers=load_peers(args.peers) if args.peers else None,
        require_known_peers=args.require_known_peers,
        commit_interval=args.commit_interval,
    )
    server.start()
    print(f"listening on {server.host}:{server.port}", flush=True)
    server.wait()
