"""Sources: turn a path or URL into the units an ingest run reads.

A unit is one file in storage: a DICOM file, a .zip archive (whose members, nested archives
included, are read in memory by the transform), a DICOMDIR, or anything else (skipped and counted
by the transform). A unit's identity for incremental runs is (uri, size, mtime).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from voxlake.errors import SourceError
from voxlake.lake import storage


@dataclass(frozen=True, slots=True)
class Unit:
    """One file of a source."""

    uri: str
    size: int
    #: Modification time in microseconds since the Unix epoch (UTC).
    mtime: int


def list_units(source: str) -> Iterator[Unit]:
    """Every unit under ``source``: a directory (recursive), a single file, a DICOMDIR (its
    referenced files too) or any fsspec URL. Hidden files and folders (``.name``) are left out."""
    uri = storage.normalize(source)
    if storage.is_local(uri):
        yield from _list_local(uri)
        return
    fs = storage.filesystem(uri)
    protocol = uri.split("://", 1)[0]
    path = uri.split("://", 1)[1]
    try:
        if fs.isdir(path):
            found = fs.find(path, detail=True)
            for p, info in sorted(found.items()):
                if info.get("type") == "directory" or _hidden(p):
                    continue
                yield Unit(f"{protocol}://{p}", int(info.get("size") or 0), _mtime(info))
            return
        info = fs.info(path)
    except FileNotFoundError:
        raise SourceError(f"{source}: no such file or directory") from None
    except Exception as exc:
        raise SourceError(f"{source}: cannot list ({type(exc).__name__}: {exc})") from None
    yield Unit(uri, int(info.get("size") or 0), _mtime(info))


def _hidden(path: str) -> bool:
    return any(part.startswith(".") for part in path.split("/") if part)


def _list_local(path: str) -> Iterator[Unit]:
    if os.path.isdir(path):
        yield from _walk(path)
        return
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: no such file or directory") from None
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror}") from None
    yield Unit(path, st.st_size, st.st_mtime_ns // 1000)
    if os.path.basename(path).upper() == "DICOMDIR":
        yield from _dicomdir_references(path)


def _walk(root: str) -> Iterator[Unit]:
    """Depth-first, in name order; symbolic links to folders are followed, each real folder once."""
    stack = [root]
    seen: set[str] = set()
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise SourceError(f"{folder}: cannot list ({exc.strerror})") from None
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    subfolders.append(entry.path)
                elif entry.is_file():
                    st = entry.stat()
                    yield Unit(entry.path, st.st_size, st.st_mtime_ns // 1000)
            except OSError:
                continue  # vanished while listing
        stack.extend(reversed(subfolders))


def _dicomdir_references(path: str) -> Iterator[Unit]:
    """The files a DICOMDIR's directory records point at (PS3.10 8.5 File ID)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
        records = ds.get("DirectoryRecordSequence", [])
    except Exception as exc:
        raise SourceError(f"{path}: not a readable DICOMDIR ({exc})") from None
    base = os.path.dirname(path)
    seen: set[str] = set()
    for record in records:
        file_id = record.get("ReferencedFileID")
        if not file_id:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        ref = os.path.join(base, *parts)
        if ref in seen:
            continue
        seen.add(ref)
        try:
            st = os.stat(ref)
        except OSError:
            # Media often upper-cases names; try the names as found on disk.
            ref = _case_insensitive(base, parts)
            if ref is None:
                continue
            st = os.stat(ref)
        yield Unit(ref, st.st_size, st.st_mtime_ns // 1000)


def _case_insensitive(base: str, parts: list[str]) -> str | None:
    current = base
    for part in parts:
        try:
            names = {n.upper(): n for n in os.listdir(current)}
        except OSError:
            return None
        name = names.get(part.upper())
        if name is None:
            return None
        current = os.path.join(current, name)
    return current


def _mtime(info: dict) -> int:
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return int(value.timestamp() * 1_000_000)
        if isinstance(value, (int, float)):
            return int(value * 1_000_000)
        if isinstance(value, str):
            try:
                return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e6)
            except ValueError:
                continue
    return 0


def member_uri(archive_uri: str, member: str) -> str:
    """The fsspec chained URL of a zip member, e.g. ``zip://a/b.dcm::/data/x.zip``."""
    return f"zip://{posixpath.normpath(member)}::{archive_uri}"
