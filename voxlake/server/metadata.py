"""WADO-RS metadata (PS3.18 10.4.1.1.2): complete DICOM JSON headers with BulkDataURIs of this server.

The headers come from the catalog's ``meta`` (parsed at ingest), never from the files: a series is
one Parquet read of the files that hold its rows. The assembled JSON of a series is cached per
(SeriesInstanceUID, catalog version), with a placeholder where the base URL goes, so the cache
serves every client and proxy and a new commit invalidates it by itself; a study's metadata is the
concatenation of its series'. Building a series also caches each instance's
:class:`~voxlake.dicom.frames.PixelInfo`, so the frame requests a viewer sends next read no Parquet.

BulkDataURIs (``<file>?offset=N&length=M`` in ``meta``) become absolute URLs of this server:
Pixel Data (and Float / Double Float Pixel Data) of the top-level dataset →
``…/instances/{sop}/frames/1,2,…,N`` (the frames resource, what OHIF and cornerstone read);
any other bulk value → ``…/instances/{sop}/bulkdata/{offset}/{length}``.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import Any

from voxlake.errors import FrameError
from voxlake.server import urls

_PIXEL_TAGS = {"7FE00010", "7FE00008", "7FE00009"}
#: Stands for the DICOMweb base URL in cached JSON; random, so no header value can contain it.
PLACEHOLDER = "voxlake-base-" + secrets.token_hex(12)


def _bulk_path(text: str) -> str | None:
    """``/bulkdata/{offset}/{length}`` of a voxlake BulkDataURI; None if it is not one."""
    from voxlake.dicom.frames import parse_bulk_data_uri

    try:
        _uri, offset, length, _deflated = parse_bulk_data_uri(text)
    except FrameError:
        return None
    return f"/bulkdata/{offset}/{length}"


def rewrite(ds: dict[str, Any], instance_url: str, frames: int, *, top: bool = True) -> None:
    """Point every BulkDataURI of ``ds`` (sequences included) at this server, in place."""
    for tag, elem in ds.items():
        if not isinstance(elem, dict):
            continue
        uri = elem.get("BulkDataURI")
        if uri is not None:
            if top and tag.upper() in _PIXEL_TAGS:
                elem["BulkDataURI"] = f"{instance_url}/frames/{','.join(map(str, range(1, frames + 1)))}"
            else:
                path = _bulk_path(uri)
                if path is None:
                    del elem["BulkDataURI"]  # not ours to serve: say nothing rather than a dead link
                else:
                    elem["BulkDataURI"] = instance_url + path
        elif elem.get("vr") == "SQ":
            for item in elem.get("Value") or []:
                if isinstance(item, dict):
                    rewrite(item, instance_url, frames, top=False)


def _instance_json(state: Any, row: dict[str, Any], meta_text: str) -> bytes:
    import orjson

    ds = orjson.loads(meta_text)
    with contextlib.suppress(FrameError):
        state.pixel_info(row, ds)  # warm the frame path while the header is at hand
    path = urls.instance_path(row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"])
    rewrite(ds, PLACEHOLDER + path, int(row.get("NumberOfFrames") or 1))
    return orjson.dumps(ds)


def _build(state: Any, rows: list[dict[str, Any]]) -> bytes:
    metas = state.catalog.meta([r["SOPInstanceUID"] for r in rows])
    parts = [_instance_json(state, r, metas[r["SOPInstanceUID"]]) for r in rows if r["SOPInstanceUID"] in metas]
    return b",".join(parts)


def series_items(state: Any, series: str, rows: list[dict[str, Any]]) -> bytes:
    """The comma-joined instance headers of a series (no brackets), cached."""
    key = (series, state.version)
    cached = state.series_metadata.get(key)
    if cached is None:
        cached = _build(state, rows)
        state.series_metadata.put(key, cached)
    return cached


def metadata(state: Any, rows: list[dict[str, Any]], base: str, *, instance: bool = False) -> bytes:
    """The metadata JSON array of ``rows`` (one study, series or instance), for ``base``."""
    if instance:
        body = _build(state, rows)
    else:
        by_series: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_series.setdefault(row["SeriesInstanceUID"], []).append(row)
        body = b",".join(p for p in (series_items(state, s, r) for s, r in by_series.items()) if p)
    return (b"[" + body + b"]").replace(PLACEHOLDER.encode(), base.encode())
