"""The landing area: where received instances become durable files of the lake.

``<lake>/dicom/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. A file is written under
a hidden temporary name (``list_units`` leaves hidden names out, so an ingest never sees it), flushed
and fsynced, then hard-linked to its final name (which fails rather than overwrites) and the folder
fsynced: once :meth:`LandingArea.store` returns, the instance survives a crash or a power loss.
The lake keeps versions, so different bytes under a known SOP Instance UID land beside the old file
(``<SOP>.2.dcm``, ``<SOP>.3.dcm``…); identical bytes sent again add nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: The lock file of :meth:`LandingArea.lock` (hidden: ``list_units`` leaves it out).
LOCK_NAME = ".landing.lock"

#: PS3.5 9.1: digits and dots, at most 64 characters. Anything else could escape the landing area.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def valid_uid(uid: str | None) -> bool:
    return bool(uid) and len(uid) <= 64 and _UID.match(uid) is not None


class LandingArea:
    """The folder of received files; safe for concurrent stores from many threads and processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive committing (and, for STOW-RS, landing-and-committing) across threads and
        processes: ``flock``, each acquisition on its own file description. Without it, the DIMSE
        committer's start-up pass and a STOW-RS request could index the same landed file twice."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            # An unusable landing area fails each store anyway; no lock is needed to find that out.
            log.error("cannot open the landing lock in %s: %s", self.root, exc)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def folder(self, study_uid: str, series_uid: str) -> Path:
        return self.root / study_uid / series_uid

    def versions(self, study_uid: str, series_uid: str, sop_uid: str) -> list[Path]:
        """The files of an instance, oldest first; version n > 1 is ``<SOP>.<n>.dcm``."""
        folder = self.folder(study_uid, series_uid)
        found = []
        n = 1
        while (path := folder / _name(sop_uid, n)).exists():
            found.append(path)
            n += 1
        return found

    def store(self, data: bytes, study_uid: str, series_uid: str, sop_uid: str) -> tuple[Path, bool]:
        """Write ``data`` durably; returns the file and whether it is new (False: these exact bytes
        were already there). Raises ``ValueError`` for a UID that is not a valid UID, ``OSError``
        when the disk fails."""
        for uid in (study_uid, series_uid, sop_uid):
            if not valid_uid(uid):
                raise ValueError(f"{uid!r} is not a valid UID (PS3.5 9.1)")
        folder = self.folder(study_uid, series_uid)
        _makedirs_durably(folder)
        tmp = folder / f".{sop_uid}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as fp:
                fp.write(data)
                fp.flush()
                os.fsync(fp.fileno())
            while True:
                existing = self.versions(study_uid, series_uid, sop_uid)
                for path in existing:
                    if _same_bytes(path, data):
                        return path, False
                final = folder / _name(sop_uid, len(existing) + 1)
                try:
                    # link, unlike rename, never replaces a file another thread has just created.
                    os.link(tmp, final)
                except FileExistsError:
                    continue
                _fsync_dir(folder)
                return final, True
        finally:
            tmp.unlink(missing_ok=True)

    def remove_temporaries(self) -> list[Path]:
        """Delete the temporary files a crash left behind: none of them was acknowledged."""
        removed = []
        if not self.root.exists():
            return removed
        for path in self.root.rglob(".*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
        return removed


def _name(sop_uid: str, version: int) -> str:
    return f"{sop_uid}.dcm" if version == 1 else f"{sop_uid}.{version}.dcm"


def _same_bytes(path: Path, data: bytes) -> bool:
    try:
        if path.stat().st_size != len(data):
            return False
        return path.read_bytes() == data
    except FileNotFoundError:
        return False


def _makedirs_durably(folder: Path) -> None:
    """Create missing folders, fsyncing each parent: a new entry is durable only once its folder is."""
    missing = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
