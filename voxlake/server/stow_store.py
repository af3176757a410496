"""STOW-RS storage (PS3.18 10.5) without HTTP: check each instance, land it durably, commit once.

:func:`store_instances` takes the PS3.10 files of one request (bytes, one at a time) and

1. checks each with pydicom and with the lake's own parser (what is accepted is what the lake can
   index): a part that fails gets a Failure Reason of PS3.18 Table I.2-2, nothing of it is written;
2. lands the accepted ones in the lake's landing area, ``<lake>/dicom/<Study>/<Series>/<SOP>.dcm``,
   fsynced (:class:`voxlake.net.store.LandingArea`, shared with DIMSE C-STORE);
3. indexes them as ONE ingest run (:func:`voxlake.ingest.run.ingest_units`, as the DIMSE committer
   does), so the whole request becomes visible at once, before the caller answers.

If the commit fails, every instance of the request is reported failed (0x0110, or 0xA700 when the
disk failed) and the files this request added to the landing area are deleted again: the client was
told "not stored", so a later crash-recovery pass must not index them. Files that were already there
(identical bytes sent before) are left alone. A crash between landing and commit leaves landed files
that the DIMSE server's start-up pass (or :func:`commit_landed`) indexes: the client got no answer
then, and a retry of identical bytes adds nothing.

Duplicates (PS3.4 B.4.1 leaves a re-sent SOP Instance UID to the SCP; PS3.18 10.5 defines no
failure for it): identical bytes are Success and add nothing; different bytes under a known SOP
Instance UID are Success and stored as a NEW VERSION (``<SOP>.2.dcm``), which the ``instances`` view
then shows while ``instances_history`` keeps both, exactly as for DIMSE C-STORE. One request may
carry a SOP Instance UID once: a second part with other bytes for it fails with 0x0110, because two
versions indexed in the same run could not be told apart (the later one would not reliably win).

Concurrency: a request holds :func:`landing_lock` (``flock`` on ``<lake>/dicom/.landing.lock``, so
threads and uvicorn worker processes alike) from landing to commit; two STOW requests never index
the same file twice nor delete a file another one committed. The DIMSE committer does not take this
lock yet (voxlake/net is not ours to change): an instance landed by both at once may be indexed by
both runs (two identical rows in ``instances_history``; ``instances`` still shows one).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voxlake.errors import InvalidArgumentError
from voxlake.lake import storage

log = logging.getLogger("voxlake.server.stow")

#: PS3.18 Table I.2-2 Failure Reason values (those STOW-RS uses here).
OUT_OF_RESOURCES = 0xA700
DATA_SET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
#: "Error: Cannot understand" (Cxxx); 0xC210 as the DIMSE server answers for the same files.
CANNOT_UNDERSTAND = 0xC210
TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110
SOP_CLASS_NOT_SUPPORTED = 0x0122

#: The landing area's folder inside the lake (as :data:`voxlake.net.scp.LANDING_FOLDER`).
LANDING_FOLDER = "dicom"

_TAG_RETRIEVE_URL = "00081190"
_TAG_FAILED_SOP_SEQUENCE = "00081198"
_TAG_REFERENCED_SOP_SEQUENCE = "00081199"
_TAG_FAILURE_REASON = "00081197"
_TAG_REFERENCED_SOP_CLASS_UID = "00081150"
_TAG_REFERENCED_SOP_INSTANCE_UID = "00081155"


@dataclass(frozen=True, slots=True)
class StoredInstance:
    """An instance that is in the lake's tables once :func:`store_instances` returns."""

    part: int  # 0-based position in the request
    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str
    series_uid: str
    path: str
    new: bool  # False: these exact bytes were already landed


@dataclass(frozen=True, slots=True)
class FailedInstance:
    """An instance (or an unreadable part: UIDs None) that was not stored, and why."""

    part: int  # 0-based position in the request
    reason: int  # PS3.18 Table I.2-2
    message: str
    sop_class_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(slots=True)
class StowResult:
    """What one request did; :meth:`http_status` and :meth:`to_dicom_json` make the response."""

    study_uid: str | None
    stored: list[StoredInstance] = field(default_factory=list)
    failed: list[FailedInstance] = field(default_factory=list)
    run_id: str | None = None

    def http_status(self) -> int:
        """PS3.18 Table 10.5.3-1: 200 all stored, 202 some failed; none stored: 400 when no part was
        understandable DICOM ("bad syntax"), else 409 (conflict, or a mixture of reasons)."""
        if not self.failed:
            return 200
        if self.stored:
            return 202
        if all(_is_cannot_understand(f.reason) for f in self.failed):
            return 400
        return 409

    def to_dicom_json(self, dicomweb_root: str | None) -> dict[str, Any]:
        """The Store Instances Response Module (PS3.18 Annex I) as DICOM JSON; ``dicomweb_root``
        (e.g. ``http://host/dicomweb``) makes the Retrieve URLs, None leaves them empty."""
        root = dicomweb_root.rstrip("/") if dicomweb_root else None
        studies = {s.study_uid for s in self.stored} | ({self.study_uid} if self.study_uid else set())
        study_url = [f"{root}/studies/{next(iter(studies))}"] if root and len(studies) == 1 else []
        body: dict[str, Any] = {_TAG_RETRIEVE_URL: _element("UR", study_url)}
        if self.failed:
            body[_TAG_FAILED_SOP_SEQUENCE] = _element("SQ", [_failed_item(f) for f in self.failed])
        if self.stored:
            body[_TAG_REFERENCED_SOP_SEQUENCE] = _element(
                "SQ", [_referenced_item(s, root) for s in self.stored]
            )
        return body


def store_instances(lake: Any, parts: Iterable[bytes], *, study_uid: str | None = None) -> StowResult:
    """Store the PS3.10 files ``parts`` in ``lake`` as one atomic commit (PS3.18 10.5).

    ``study_uid``: the Study Instance UID of the target resource (``POST /studies/{study}``);
    instances of another study fail with 0xA900. Only local lakes (fsync). Never raises for an
    instance; raises :class:`InvalidArgumentError` for a non-local lake or an invalid ``study_uid``.

    >>> result = store_instances(voxlake.open("./lake"), [open("ct.dcm", "rb").read()])  # doctest: +SKIP
    >>> result.http_status(), [s.sop_instance_uid for s in result.stored]  # doctest: +SKIP
    """
    from voxlake.net.store import LandingArea, valid_uid

    if not storage.is_local(lake.uri):
        raise InvalidArgumentError(f"{lake.uri}: STOW-RS needs a local lake (its landing area is fsynced)")
    if study_uid is not None and not valid_uid(study_uid):
        raise InvalidArgumentError(f"{study_uid!r} is not a valid Study Instance UID (PS3.5 9.1)")
    landing = LandingArea(Path(lake.uri) / LANDING_FOLDER)
    result = StowResult(study_uid=study_uid)
    seen: dict[str, str] = {}  # SOP Instance UID → sha256 of its bytes in this request
    with landing_lock(lake):
        for n, data in enumerate(parts):
            checked = _check(n, data, study_uid)
            if isinstance(checked, FailedInstance):
                log.warning("STOW part %d: %s; 0x%04X", n, checked.message, checked.reason)
                result.failed.append(checked)
                continue
            data, sop_class, study, series, sop = checked
            digest = hashlib.sha256(data).hexdigest()
            if seen.get(sop, digest) != digest:
                result.failed.append(
                    FailedInstance(
                        n,
                        PROCESSING_FAILURE,
                        f"SOP Instance {sop} appears twice in this request with different contents; "
                        "send each version in a request of its own",
                        sop_class,
                        sop,
                    )
                )
                continue
            seen[sop] = digest
            try:
                path, new = landing.store(data, study, series, sop)
            except ValueError as exc:
                result.failed.append(
                    FailedInstance(n, DATA_SET_DOES_NOT_MATCH_SOP_CLASS, str(exc), sop_class, sop)
                )
                continue
            except OSError as exc:
                log.error("STOW part %d, SOP Instance %s: cannot write (%s); 0xA700", n, sop, exc)
                result.failed.append(
                    FailedInstance(n, OUT_OF_RESOURCES, f"cannot write the instance: {exc}", sop_class, sop)
                )
                continue
            result.stored.append(StoredInstance(n, sop_class, sop, study, series, str(path), new))
        if result.stored:
            _commit(lake, landing, result)
    return result


@contextlib.contextmanager
def landing_lock(lake: Any) -> Iterator[None]:
    """Exclusive use of the lake's landing area for landing-and-committing, shared with the DIMSE
    server's committer (:meth:`voxlake.net.store.LandingArea.lock`). Blocks until free."""
    from voxlake.net.store import LandingArea

    with LandingArea(Path(lake.uri) / LANDING_FOLDER).lock():
        yield


def commit_landed(lake: Any) -> int:
    """Index whatever is landed but not committed (after a crash), as the DIMSE server does at
    start-up; returns the number of files handed to the run. Call it when a server starts."""
    from voxlake.ingest.run import ingest_units
    from voxlake.ingest.sources import list_units
    from voxlake.net.store import LandingArea

    landing = LandingArea(Path(lake.uri) / LANDING_FOLDER)
    with landing_lock(lake):
        landing.remove_temporaries()
        units = list(list_units(str(landing.root))) if landing.root.is_dir() else []
        if units:
            ingest_units(lake, str(landing.root), units, workers=0)
    return len(units)


# -- checking -------------------------------------------------------------------------------


def _check(n: int, data: bytes, study_uid: str | None) -> FailedInstance | tuple[bytes, str, str, str, str]:
    """The instance's (bytes to store, SOP Class, Study, Series, SOP Instance UID), or why not."""
    from pydicom import dcmread
    from pydicom.uid import AllTransferSyntaxes

    from voxlake.net.store import valid_uid

    if len(data) < 132 or data[128:132] != b"DICM":
        added = _add_file_meta(data)
        if isinstance(added, str):
            return FailedInstance(n, CANNOT_UNDERSTAND, added)
        data = added
    try:
        ds = dcmread(io.BytesIO(data), stop_before_pixels=True)
        meta = ds.file_meta
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
        sop_class = str(ds.get("SOPClassUID", "") or "").strip()
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        media_class = str(meta.get("MediaStorageSOPClassUID", "") or "").strip()
        media_sop = str(meta.get("MediaStorageSOPInstanceUID", "") or "").strip()
    except Exception as exc:
        return FailedInstance(n, CANNOT_UNDERSTAND, f"not a readable DICOM file: {type(exc).__name__}: {exc}")
    if not syntax:
        return FailedInstance(n, CANNOT_UNDERSTAND, "the File Meta Information has no Transfer Syntax UID")
    if syntax not in AllTransferSyntaxes:
        return FailedInstance(
            n,
            TRANSFER_SYNTAX_NOT_SUPPORTED,
            f"unknown transfer syntax {syntax}",
            sop_class or None,
            sop or None,
        )
    if not sop_class or not sop:
        return FailedInstance(
            n,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "no SOP Class UID or SOP Instance UID",
            sop_class or None,
            sop or None,
        )
    if sop_class not in _storage_sop_classes():
        return FailedInstance(
            n, SOP_CLASS_NOT_SUPPORTED, f"SOP Class {sop_class} is not a storage SOP class", sop_class, sop
        )
    if (media_class and media_class != sop_class) or (media_sop and media_sop != sop):
        return FailedInstance(
            n,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            "the File Meta Information names another SOP Class or Instance than the data set",
            sop_class,
            sop,
        )
    # The lake's own parser has the last word: what it cannot read in full it cannot index.
    from voxlake.dicom.parser import read_header
    from voxlake.errors import VoxlakeError

    try:
        header = read_header(io.BytesIO(data), size=len(data))
    except VoxlakeError as exc:
        return FailedInstance(n, CANNOT_UNDERSTAND, str(exc), sop_class, sop)
    if header.partial:
        return FailedInstance(
            n,
            CANNOT_UNDERSTAND,
            "the data set ends early: " + "; ".join(header.warnings[-1:]),
            sop_class,
            sop,
        )

    def uid(tag: str) -> str:
        values = (header.dataset.get(tag) or {}).get("Value") or []
        return str(values[0]).strip() if values and values[0] else ""

    study, series = uid("0020000D"), uid("0020000E")
    for name, value in (
        ("Study Instance UID", study),
        ("Series Instance UID", series),
        ("SOP Instance UID", sop),
    ):
        if not valid_uid(value):
            return FailedInstance(
                n,
                DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
                f"{name} {value!r} is missing or invalid",
                sop_class,
                sop,
            )
    if study_uid is not None and study != study_uid:
        return FailedInstance(
            n,
            DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
            f"Study Instance UID {study} does not match the target study {study_uid}",
            sop_class,
            sop,
        )
    return data, sop_class, study, series, sop


def _add_file_meta(data: bytes) -> bytes | str:
    """A bare data set (no preamble, no File Meta) as a PS3.10 file: the lake stores files, and a
    file needs its Transfer Syntax stated (PS3.10 7.1). Returns the reason when it is not DICOM."""
    from pydicom import dcmread
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        ds = dcmread(io.BytesIO(data), force=True)
        if len(ds) == 0 or "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            return "neither a DICOM file (no DICM prefix) nor a data set with SOP Class and Instance UIDs"
        implicit, little = ds.original_encoding
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.SOPClassUID
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
        ds.file_meta = meta
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()
    except Exception as exc:
        return f"not a readable DICOM data set: {type(exc).__name__}: {exc}"


def _storage_sop_classes() -> frozenset[str]:
    """The SOP classes the DIMSE server stores, so that both doors accept the same objects."""
    from pynetdicom import AllStoragePresentationContexts

    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def _is_cannot_understand(reason: int) -> bool:
    return 0xC000 <= reason <= 0xCFFF and reason != TRANSFER_SYNTAX_NOT_SUPPORTED


# -- committing -----------------------------------------------------------------------------


def _commit(lake: Any, landing: Any, result: StowResult) -> None:
    """One ingest run over the request's landed files; on failure, everything becomes a failure and
    the files this request added are removed (the caller holds :func:`landing_lock`)."""
    from voxlake.ingest.run import ingest_units
    from voxlake.ingest.sources import Unit

    units: dict[str, Unit] = {}
    try:
        for s in result.stored:
            if s.path not in units:
                st = os.stat(s.path)
                units[s.path] = Unit(s.path, st.st_size, st.st_mtime_ns // 1000)
        summary = ingest_units(lake, str(landing.root), list(units.values()), workers=0)
    except Exception as exc:
        disk = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)
        reason = OUT_OF_RESOURCES if disk else PROCESSING_FAILURE
        log.exception("STOW commit failed; %d instances reported 0x%04X", len(result.stored), reason)
        for s in result.stored:
            if s.new:
                _remove(Path(s.path))
        message = f"the instance could not be committed to the lake: {type(exc).__name__}: {exc}"
        result.failed.extend(
            FailedInstance(s.part, reason, message, s.sop_class_uid, s.sop_instance_uid)
            for s in result.stored
        )
        result.stored = []
        return
    result.run_id = summary.run_id if summary.committed else None
    if summary.committed and (summary.errors or summary.skipped):
        _drop_unindexed(lake, result, summary.run_id)


def _drop_unindexed(lake: Any, result: StowResult, run_id: str) -> None:
    """Move instances the run did not index (the lake's transform disagreed with the checks) to the
    failures. Their files stay: ``ingest_files`` and ``ingest_errors`` reference them."""
    import pyarrow.compute as pc

    from voxlake.lake.tables import read_columns

    files = read_columns(lake.uri, "ingest_files", ["uri", "status", "run_id"])
    files = files.filter(pc.equal(files.column("run_id"), run_id))
    status = dict(zip(files.column("uri").to_pylist(), files.column("status").to_pylist(), strict=True))
    kept = []
    for s in result.stored:
        if status.get(s.path, "indexed") == "indexed":
            kept.append(s)
        else:
            result.failed.append(
                FailedInstance(
                    s.part,
                    PROCESSING_FAILURE,
                    f"the lake could not index the instance (ingest_files status {status[s.path]!r})",
                    s.sop_class_uid,
                    s.sop_instance_uid,
                )
            )
    result.stored = kept


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        log.error(
            "cannot remove %s after a failed commit (%s); vacuum or the next recovery pass sees it", path, exc
        )


# -- response -------------------------------------------------------------------------------


def _element(vr: str, values: list[Any]) -> dict[str, Any]:
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _failed_item(f: FailedInstance) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if f.sop_class_uid:
        item[_TAG_REFERENCED_SOP_CLASS_UID] = _element("UI", [f.sop_class_uid])
    if f.sop_instance_uid:
        item[_TAG_REFERENCED_SOP_INSTANCE_UID] = _element("UI", [f.sop_instance_uid])
    item[_TAG_FAILURE_REASON] = _element("US", [f.reason])
    return item


def _referenced_item(s: StoredInstance, root: str | None) -> dict[str, Any]:
    url = (
        [f"{root}/studies/{s.study_uid}/series/{s.series_uid}/instances/{s.sop_instance_uid}"] if root else []
    )
    return {
        _TAG_REFERENCED_SOP_CLASS_UID: _element("UI", [s.sop_class_uid]),
        _TAG_REFERENCED_SOP_INSTANCE_UID: _element("UI", [s.sop_instance_uid]),
        _TAG_RETRIEVE_URL: _element("UR", url),
    }
