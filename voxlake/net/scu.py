"""The DIMSE client: Verification, Query/Retrieve and Storage SCU (PS3.4 Annex A, C and B).

* :func:`echo` — C-ECHO, to check that a peer answers.
* :func:`find` — C-FIND at one level, with sensible return keys per level (PS3.4 C.6).
* :func:`pull` — C-GET (the instances come back on the same association) or C-MOVE (the peer opens a
  second association to our Storage SCP, a :class:`~voxlake.net.scp.DimseServer`), straight into the
  lake. Received instances go through ``DimseServer.on_c_store`` either way: each is fsynced into the
  landing area before we answer Success, and what was acknowledged is committed as one ingest run at
  the end, even when the peer drops the association midway (nothing half-received is ever kept).
* :func:`push` — C-STORE of the lake instances a SQL ``WHERE`` clause selects, each file sent as it
  is stored (its own transfer syntax, bytes untouched). Only if the peer refuses that transfer syntax
  is the instance decoded and sent as Explicit (or Implicit) VR Little Endian, and the result says so.
  Failures that may pass (no association, association dropped, 0xA7xx out of resources) are retried.

A peer that cannot be reached, or that rejects the association, raises :class:`AssociationError` in
:func:`echo`, :func:`find` and :func:`pull`; :func:`push` records it in every instance's status
instead, so a partial push says exactly what was sent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from voxlake.errors import AssociationError, DimseStatusError, InvalidArgumentError
from voxlake.net._tuning import no_delay, skip_unlogged_identifiers
from voxlake.net.scp import DimseServer, Peer, load_peers

log = logging.getLogger("voxlake.net")

__all__ = [
    "AssociationError",
    "DimseStatusError",
    "InstanceStatus",
    "Level",
    "Method",
    "PullResult",
    "PushResult",
    "echo",
    "find",
    "pull",
    "push",
    "resolve_peer",
]

SUCCESS = 0x0000
#: PS3.4 C.4.2.1.5 / C.4.3.1.4: Pending.
PENDING = (0xFF00, 0xFF01)
#: Transfer syntaxes of the fallback presentation context, in order of preference.
FALLBACK_SYNTAXES = ("1.2.840.10008.1.2.1", "1.2.840.10008.1.2")  # Explicit, Implicit VR Little Endian
#: PS3.8 9.3.2.2: at most 128 presentation contexts per association (odd IDs 1..255).
MAX_CONTEXTS = 128

ProgressCallback = Callable[[int, int], None]  # (done, total)


class Level(StrEnum):
    """Query/Retrieve Level (0008,0052), PS3.4 C.6."""

    PATIENT = "patient"
    STUDY = "study"
    SERIES = "series"
    IMAGE = "image"

    @classmethod
    def parse(cls, value: str | Level) -> Level:
        return _parse(cls, value, "level")


class Model(StrEnum):
    """The Query/Retrieve information model, PS3.4 C.6.1 (Patient Root) and C.6.2 (Study Root)."""

    PATIENT = "patient"
    STUDY = "study"

    @classmethod
    def parse(cls, value: str | Model) -> Model:
        return _parse(cls, value, "model")


class Method(StrEnum):
    """How :func:`pull` retrieves: C-GET (same association) or C-MOVE (to our Storage SCP)."""

    GET = "get"
    MOVE = "move"

    @classmethod
    def parse(cls, value: str | Method) -> Method:
        return _parse(cls, value, "method")


def _parse(cls: Any, value: Any, what: str) -> Any:
    try:
        return cls(value.lower() if isinstance(value, str) else value)
    except ValueError:
        raise InvalidArgumentError(
            f"{what} must be one of {', '.join(m.value for m in cls)}, not {value!r}"
        ) from None


#: Return keys asked for at each level when the caller does not name them (PS3.4 C.6.1.1, C.6.2.1).
DEFAULT_RETURN_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                    "NumberOfPatientRelatedStudies"),
    Level.STUDY: ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
                  "StudyDescription", "PatientName", "PatientID", "ModalitiesInStudy",
                  "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances"),
    Level.SERIES: ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
                   "SeriesDescription", "NumberOfSeriesRelatedInstances"),
    Level.IMAGE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
                  "InstanceNumber"),
}


# -- peers ------------------------------------------------------------------------------------


def resolve_peer(name: str | Peer, peers_path: str | os.PathLike[str] | None = None) -> Peer:
    """The peer called ``name`` in the peers file: ``peers_path``, else ``$VOXLAKE_PEERS``, else
    ``./peers.yaml``."""
    if isinstance(name, Peer):
        return name
    path = peers_path or os.environ.get("VOXLAKE_PEERS") or "peers.yaml"
    if not Path(path).exists():
        raise InvalidArgumentError(
            f"no peers file at {path}; write one ({{{name}: {{host: HOST, port: PORT}}}}) "
            "and pass --peers or set VOXLAKE_PEERS"
        )
    peers = load_peers(path)
    if name not in peers:
        known = ", ".join(sorted(peers)) or "none"
        raise InvalidArgumentError(f"peer {name!r} is not in {path} (known: {known})")
    return peers[name]


# -- C-ECHO -----------------------------------------------------------------------------------


def echo(peer: Peer, *, ae_title: str = "VOXLAKE", timeout: float = 30) -> int:
    """C-ECHO (PS3.4 A.4); returns the peer's status (0x0000 is Success)."""
    from pynetdicom.sop_class import Verification

    ae = _make_ae(ae_title, timeout)
    ae.add_requested_context(Verification)
    with _association(ae, peer) as assoc:
        status = assoc.send_c_echo()
        if "Status" not in status:
            raise AssociationError(f"{_where(peer)} sent no C-ECHO response (association aborted or timed out)")
        return int(status.Status)


# -- C-FIND -----------------------------------------------------------------------------------


def find(
    peer: Peer,
    level: str | Level,
    keys: dict[str, Any] | None = None,
    *,
    model: str | Model = "study",
    ae_title: str = "VOXLAKE",
    timeout: float = 30,
) -> list[dict[str, str]]:
    """C-FIND (PS3.4 C.4.1): the matches at ``level``, one dict of attribute keyword → value each.

    ``keys`` are matching keys by keyword (``{"PatientName": "DOE*", "StudyDate": "20240101-"}``);
    the level's :data:`DEFAULT_RETURN_KEYS` are asked for too. Multiple values are joined by ``\\``.

    >>> find(peer, "study", {"PatientName": "DOE*"})  # doctest: +SKIP
    [{'StudyInstanceUID': '1.2.3', 'PatientName': 'DOE^JOHN', ...}]
    """
    level, model = Level.parse(level), Model.parse(model)
    identifier = _identifier(level, keys or {}, DEFAULT_RETURN_KEYS[level])
    sop_class = _model_uid(model, "Find")
    ae = _make_ae(ae_title, timeout)
    ae.add_requested_context(sop_class)
    matches = []
    with _association(ae, peer) as assoc:
        for status, found in assoc.send_c_find(identifier, sop_class):
            code = _status(status)
            if code in PENDING:
                matches.append(_plain(found))
                continue
            _check_final("C-FIND", peer, code)
    return matches


# -- C-GET / C-MOVE ---------------------------------------------------------------------------


@dataclass
class PullResult:
    """What a :func:`pull` did: the peer's final status and sub-operation counts (PS3.4 C.4.2.1.4)."""

    method: str
    status: int | None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    received: int = 0  # C-GET: instances we acknowledged; C-MOVE, temporary server: new files landed
    committed: int = 0  # files handed to the ingest run
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS and self.failed == 0 and self.error is None

    def summary(self) -> str:
        text = (
            f"{self.method.upper()}: {self.completed} completed, {self.failed} failed, {self.warning} warning; "
            f"{self.committed} files committed; final status {_hex(self.status)}"
        )
        return text + (f" ({self.error})" if self.error else "")

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "status": _hex(self.status), "ok": self.ok}


def pull(
    lake: Any,
    peer: Peer,
    *,
    study: str | None = None,
    series: str | None = None,
    method: str | Method = "get",
    ae_title: str = "VOXLAKE",
    host: str = "127.0.0.1",
    port: int | None = None,
    server: DimseServer | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
) -> PullResult:
    """Retrieve a study (or one of its series) from ``peer`` into ``lake``.

    ``method="get"``: C-GET; the peer sends the instances back on our association. ``"move"``:
    C-MOVE with ``ae_title`` as the destination, which the peer must know by that title and our
    ``port``; a running ``server`` receives them, else a temporary :class:`DimseServer` listens on
    ``host:port`` (default 11112) for the duration. ``progress(done, total)`` follows the
    sub-operations. Landed instances are committed when the retrieve ends, however it ends.
    """
    method = Method.parse(method)
    if not study:
        raise InvalidArgumentError("pull needs a study (StudyInstanceUID); series narrows it to one series")
    level = Level.SERIES if series else Level.STUDY
    keys = {"StudyInstanceUID": study} | ({"SeriesInstanceUID": series} if series else {})
    identifier = _identifier(level, keys, ())
    if method is Method.GET:
        return _pull_get(lake, peer, identifier, ae_title, progress, timeout)
    return _pull_move(lake, peer, identifier, ae_title, host, port, server, progress, timeout)


def _pull_get(
    lake: Any, peer: Peer, identifier: Any, ae_title: str, progress: ProgressCallback | None, timeout: float
) -> PullResult:
    from pynetdicom import StoragePresentationContexts, build_role, evt
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GetModel

    receiver = DimseServer(lake, ae_title=ae_title)  # never listens: lends us its C-STORE handler
    result = PullResult(method=Method.GET.value, status=None)

    def on_c_store(event: Any) -> int:
        status = receiver.on_c_store(event)
        result.received += status == SUCCESS
        return status

    ae = _make_ae(ae_title, timeout)
    ae.add_requested_context(GetModel)
    # C-GET: we are the Storage SCP on this association (SCP/SCU role selection, PS3.7 D.3.3.4).
    contexts = StoragePresentationContexts[: MAX_CONTEXTS - 1]
    for cx in contexts:
        ae.add_requested_context(cx.abstract_syntax, _RECEIVE_SYNTAXES)
    roles = [build_role(cx.abstract_syntax, scp_role=True) for cx in contexts]
    try:
        with _association(ae, peer, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_c_store)]) as assoc:
            _follow(assoc.send_c_get(identifier, GetModel), result, peer, progress)
    finally:
        result.committed = receiver.commit()
    _finish(result, peer)
    return result


def _pull_move(
    lake: Any,
    peer: Peer,
    identifier: Any,
    ae_title: str,
    host: str,
    port: int | None,
    server: DimseServer | None,
    progress: ProgressCallback | None,
    timeout: float,
) -> PullResult:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MoveModel

    result = PullResult(method=Method.MOVE.value, status=None)
    temporary = server is None
    if server is None:
        server = DimseServer(lake, ae_title=ae_title, host=host, port=11112 if port is None else port)
        server.start()
    destination = server.ae_title
    before = _landed(server)
    try:
        ae = _make_ae(ae_title, timeout)
        ae.add_requested_context(MoveModel)
        with _association(ae, peer) as assoc:
            _follow(assoc.send_c_move(identifier, destination, MoveModel), result, peer, progress)
    finally:
        # The peer has had each C-STORE answered before its final C-MOVE response: all is landed.
        if temporary:
            result.received = _landed(server) - before
            server.stop()  # commits
            result.committed = result.received
        else:
            result.committed = server.commit()
    _finish(result, peer)
    return result


def _landed(server: DimseServer) -> int:
    root = server.landing.root
    return sum(1 for p in root.rglob("*.dcm") if not p.name.startswith(".")) if root.exists() else 0


def _follow(responses: Iterator[Any], result: PullResult, peer: Peer, progress: ProgressCallback | None) -> None:
    """Read C-GET / C-MOVE responses into ``result``, reporting sub-operation progress."""
    for status, _identifier in responses:
        code = _status(status)
        if code is None:
            result.error = f"{_where(peer)} dropped the association before the retrieve finished"
            continue
        counts = {
            name: int(getattr(status, f"NumberOf{name.title()}Suboperations", None) or 0)
            for name in ("remaining", "completed", "failed", "warning")
        }
        result.completed, result.failed, result.warning = (
            counts["completed"], counts["failed"], counts["warning"]
        )
        if progress is not None:
            done = counts["completed"] + counts["failed"] + counts["warning"]
            progress(done, done + counts["remaining"])
        if code not in PENDING:
            result.status = code


def _finish(result: PullResult, peer: Peer) -> None:
    if result.error:
        log.warning("%s: %s; the %d instances received before are kept", result.method, result.error,
                    result.received)
    elif result.status not in (SUCCESS, 0xB000):
        log.warning("%s from %s ended with status %s (%d failed sub-operations)",
                    result.method.upper(), _where(peer), _hex(result.status), result.failed)


# -- C-STORE ----------------------------------------------------------------------------------


@dataclass
class InstanceStatus:
    """One instance of a :func:`push`: the peer's C-STORE status (None: no response) and why."""

    SOPInstanceUID: str
    uri: str
    status: int | None = None
    attempts: int = 0
    transfer_syntax: str | None = None  # as sent
    error: str | None = None

    @property
    def sent(self) -> bool:
        """Success or Warning (PS3.4 B.2.3): the peer has it."""
        return self.status is not None and (self.status == SUCCESS or self.status & 0xF000 == 0xB000)

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "status": _hex(self.status), "sent": self.sent}


@dataclass
class PushResult:
    """Per-instance outcome of a :func:`push`."""

    instances: list[InstanceStatus] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(i.sent for i in self.instances)

    @property
    def failed(self) -> list[InstanceStatus]:
        return [i for i in self.instances if not i.sent]

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"sent {self.sent} of {len(self.instances)} instances"
        if self.failed:
            first = self.failed[0]
            text += f"; {len(self.failed)} failed (first: {first.SOPInstanceUID}: {first.error or _hex(first.status)})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "failed": len(self.failed), "ok": self.ok,
                "instances": [i.to_dict() for i in self.instances]}


def push(
    lake: Any,
    peer: Peer,
    *,
    where: str,
    ae_title: str = "VOXLAKE",
    retries: int = 2,
    retry_delay: float = 1.0,
    progress: ProgressCallback | None = None,
    timeout: float = 60,
) -> PushResult:
    """C-STORE (PS3.4 B.2) every instance ``SELECT ... FROM instances WHERE <where>`` finds.

    Each file is sent as stored, in its own transfer syntax; if the peer refuses that syntax for the
    SOP class, the instance is decoded and sent as Explicit (or Implicit) VR Little Endian and its
    ``transfer_syntax`` says so. Instances without a response, or answered 0xA7xx (out of
    resources), are tried again up to ``retries`` more times on a new association, ``retry_delay``
    seconds apart. ``progress(done, total)`` counts instances with a final status.
    """
    if retries < 0:
        raise InvalidArgumentError("retries must be ≥ 0")
    rows = lake.sql(
        f"SELECT uri, SOPClassUID, SOPInstanceUID, TransferSyntaxUID FROM instances WHERE {where} "
        "ORDER BY SOPClassUID, TransferSyntaxUID, uri"
    ).fetchall()
    result = PushResult()
    todo: list[tuple[InstanceStatus, str, str | None]] = []
    for uri, sop_class, sop, syntax in rows:
        item = InstanceStatus(SOPInstanceUID=sop or "", uri=uri)
        result.instances.append(item)
        if not sop_class:
            item.error = "no SOP Class UID in the lake row"
        else:
            todo.append((item, sop_class, syntax))
    done = len(result.instances) - len(todo)
    if progress is not None:
        progress(done, len(result.instances))
    for attempt in range(retries + 1):
        if attempt:
            log.info("C-STORE to %s: retrying %d instances (attempt %d of %d)",
                     _where(peer), len(todo), attempt + 1, retries + 1)
            time.sleep(retry_delay)
        for batch in _batches(todo):
            _store_batch(peer, batch, ae_title, timeout)
            for item, *_ in batch:
                if not _retryable(item) or attempt == retries:
                    done += 1
            if progress is not None:
                progress(done, len(result.instances))
        todo = [t for t in todo if _retryable(t[0])]
        if not todo:
            break
    for item in result.failed:
        log.warning("C-STORE to %s: %s not sent: %s", _where(peer), item.SOPInstanceUID,
                    item.error or f"status {_hex(item.status)}")
    return result


def _retryable(item: InstanceStatus) -> bool:
    if item.sent:
        return False
    return item.status is None or item.status & 0xFF00 == 0xA700


def _batches(todo: list[tuple[InstanceStatus, str, str | None]]) -> Iterator[list[tuple[InstanceStatus, str, str | None]]]:
    """Split into groups whose presentation contexts (one per SOP class and transfer syntax, plus
    one fallback per SOP class) fit one association."""
    batch: list[tuple[InstanceStatus, str, str | None]] = []
    pairs: set[tuple[str, str | None]] = set()
    classes: set[str] = set()
    for entry in todo:
        _, sop_class, syntax = entry
        new_pairs = pairs | {(sop_class, syntax)}
        new_classes = classes | {sop_class}
        if batch and len(new_pairs) + len(new_classes) > MAX_CONTEXTS:
            yield batch
            batch, new_pairs, new_classes = [], {(sop_class, syntax)}, {sop_class}
        batch.append(entry)
        pairs, classes = new_pairs, new_classes
    if batch:
        yield batch


def _store_batch(peer: Peer, batch: list[tuple[InstanceStatus, str, str | None]], ae_title: str,
                 timeout: float) -> None:
    ae = _make_ae(ae_title, timeout)
    for sop_class, syntax in sorted({(c, s) for _, c, s in batch if s}):
        ae.add_requested_context(sop_class, [syntax])
    for sop_class in sorted({c for _, c, _ in batch}):
        ae.add_requested_context(sop_class, list(FALLBACK_SYNTAXES))
    try:
        with _association(ae, peer) as assoc, _chunked_sending():
            accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts}
            for item, sop_class, syntax in batch:
                item.attempts += 1
                if not assoc.is_established:
                    item.status, item.error = None, f"{_where(peer)} dropped the association before it was sent"
                    continue
                _store_one(assoc, item, sop_class, syntax, accepted)
    except AssociationError as exc:
        for item, *_ in batch:
            if not item.sent:
                item.attempts += 1
                item.status, item.error = None, str(exc)
        log.warning("C-STORE: %s", exc)


def _store_one(assoc: Any, item: InstanceStatus, sop_class: str, syntax: str | None,
               accepted: set[tuple[str, str]]) -> None:
    path = _local_path(item.uri)
    try:
        source: Any = path if path is not None else _read(item.uri)  # zip members, object stores
        if syntax and (sop_class, syntax) in accepted:
            item.transfer_syntax = syntax
            response = assoc.send_c_store(source)  # a local file's bytes as stored (chunked sending)
        else:
            fallback = next((ts for ts in FALLBACK_SYNTAXES if (sop_class, ts) in accepted), None)
            if fallback is None:
                item.error = f"the peer accepts SOP class {sop_class} in no transfer syntax we offered"
                return
            log.warning("peer refused transfer syntax %s for %s; sending %s decoded as %s",
                        syntax, sop_class, item.SOPInstanceUID, fallback)
            item.transfer_syntax = fallback
            response = assoc.send_c_store(_decoded(source, fallback))
    except Exception as exc:  # an unreadable file, a codec missing to decode it; or the peer left
        if not assoc.is_established:
            item.status, item.error = None, f"the peer dropped the association before {item.uri} was sent"
            return
        item.error = f"cannot send {item.uri}: {type(exc).__name__}: {exc}"
        return
    item.status = _status(response)
    item.error = None if item.status is not None else "no C-STORE response (association aborted or timed out)"
    if item.status is not None and not item.sent:
        item.error = f"the peer answered {_hex(item.status)}"


def _read(uri: str) -> Any:
    """The dataset of a file that is not a local path, read whole (pixels as stored)."""
    import pydicom

    from voxlake.dicom.frames import open_uri

    with open_uri(uri) as fp:
        return pydicom.dcmread(fp)


def _decoded(source: Any, syntax: str) -> Any:
    import pydicom

    ds = source if isinstance(source, pydicom.Dataset) else pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(syntax)
    return ds


def _local_path(uri: str) -> Path | None:
    if "://" in uri and not uri.startswith("file://"):
        return None
    path = Path(uri.removeprefix("file://"))
    return path if path.is_file() else None


@contextmanager
def _chunked_sending() -> Iterator[None]:
    """Make pynetdicom send a file's dataset bytes as stored instead of decoding and re-encoding."""
    from pynetdicom import _config

    before, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = before


# -- shared -----------------------------------------------------------------------------------

#: What C-GET offers to receive: the uncompressed syntaxes and the common lossless/lossy codecs, so
#: that the peer sends files as it stores them.
_RECEIVE_SYNTAXES = [
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
]


def _make_ae(ae_title: str, timeout: float) -> Any:
    from pynetdicom import AE

    if not 0 < len(ae_title) <= 16:
        raise InvalidArgumentError(f"AE title {ae_title!r} must be 1 to 16 characters (PS3.5 6.2)")
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = min(timeout, 10)
    return ae


@contextmanager
def _association(ae: Any, peer: Peer, **kwargs: Any) -> Iterator[Any]:
    from pynetdicom import evt

    skip_unlogged_identifiers()
    handlers = [*kwargs.pop("evt_handlers", []), (evt.EVT_CONN_OPEN, no_delay)]
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, evt_handlers=handlers, **kwargs)
    if not assoc.is_established:
        if assoc.is_rejected:
            why = "rejected the association (check that it knows our AE title and the SOP classes)"
        else:
            why = _unreachable(peer) or "aborted the association"
        raise AssociationError(f"{_where(peer)} {why}")
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


def _unreachable(peer: Peer) -> str | None:
    """Why the peer's port does not answer, or None when it does (pynetdicom reports both as an abort)."""
    import socket

    try:
        with socket.create_connection((peer.host, peer.port), timeout=5):
            return None
    except OSError as exc:
        return f"could not be reached ({exc.strerror or exc})"


def _where(peer: Peer) -> str:
    return f"{peer.ae_title} at {peer.host}:{peer.port}"


def _status(response: Any) -> int | None:
    return int(response.Status) if response is not None and "Status" in response else None


def _hex(status: int | None) -> str | None:
    return None if status is None else f"0x{status:04X}"


def _check_final(service: str, peer: Peer, code: int | None) -> None:
    if code is None:
        raise AssociationError(f"{_where(peer)} dropped the association during {service}")
    if code != SUCCESS:
        raise DimseStatusError(f"{service} to {_where(peer)} failed with status {_hex(code)}", code)


def _model_uid(model: Model, service: str) -> str:
    from pynetdicom import sop_class

    root = "PatientRoot" if model is Model.PATIENT else "StudyRoot"
    return getattr(sop_class, f"{root}QueryRetrieveInformationModel{service}")


def _identifier(level: Level, keys: dict[str, Any], return_keys: tuple[str, ...]) -> Any:
    from pydicom import Dataset
    from pydicom.datadict import tag_for_keyword

    ds = Dataset()
    ds.QueryRetrieveLevel = level.value.upper()
    for keyword in (*return_keys, *keys):
        if tag_for_keyword(keyword) is None:
            raise InvalidArgumentError(f"{keyword!r} is not a DICOM attribute keyword (PS3.6)")
        value = keys.get(keyword, "")
        setattr(ds, keyword, value if value is not None else "")
    return ds


def _plain(ds: Any) -> dict[str, str]:
    out = {}
    for elem in ds or []:
        if elem.VR == "SQ" or not elem.keyword or elem.keyword in ("SpecificCharacterSet",):
            continue
        value = elem.value
        if value is None or value == "":
            out[elem.keyword] = ""
        elif elem.VM > 1:
            out[elem.keyword] = "\\".join(str(v) for v in value)
        else:
            out[elem.keyword] = str(value)
    return out
