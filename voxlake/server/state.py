"""What every request shares: settings, the catalog (kept fresh), and bounded caches.

Freshness: the catalog is refreshed from the request path, at most once per ``refresh_interval``
seconds (default 1 s) and never by two requests at once — a request that finds a refresh running
answers from the catalog as it is. A refresh with nothing new costs about a millisecond
(:meth:`Catalog.refresh`); so a commit to the lake (an ingest, a STOW) is visible within the interval.
STOW-RS calls :meth:`ServerState.refresh` with ``force=True`` after its commit, so an upload is
visible to the next request. No background thread: nothing runs while nobody asks.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from voxlake.server.errors import not_found

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class ServerSettings:
    """Options of one server, read once at start-up (``app.state.settings``)."""

    dicomweb_root: str = "/dicomweb"
    cors_origins: tuple[str, ...] = ()
    viewer: bool = True
    #: Largest request body accepted (STOW-RS); larger ones get 413 before they are read.
    max_upload_bytes: int = 4 << 30
    refresh_interval: float = 1.0
    #: Most results of one QIDO-RS response; more are offered with a Warning (PS3.18 8.3.4.4).
    qido_max_results: int = 10_000
    metadata_cache_bytes: int = 512 << 20
    pixel_info_cache_entries: int = 100_000
    extra: dict[str, Any] = field(default_factory=dict)


class LRU(Generic[K, V]):
    """A thread-safe LRU cache bounded by the total ``weight`` of its values."""

    def __init__(self, capacity: int, weight: Callable[[V], int] = lambda _v: 1) -> None:
        self.capacity = capacity
        self._weight = weight
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._total = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key: K, value: V) -> None:
        w = self._weight(value)
        if w > self.capacity:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._total -= old[1]
            self._items[key] = (value, w)
            self._total += w
            while self._total > self.capacity:
                _, (_, dropped) = self._items.popitem(last=False)
                self._total -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._total = 0

    def __len__(self) -> int:
        return len(self._items)


class ServerState:
    """The lake, its catalog and the caches of one running server (``app.state.server``)."""

    def __init__(self, lake: Any, catalog: Any, settings: ServerSettings) -> None:
        self.lake = lake
        self.catalog = catalog
        self.settings = settings
        self._refresh_lock = threading.Lock()
        self._last_refresh = -float("inf")
        #: (SeriesInstanceUID, catalog version) → series metadata JSON with a base-URL placeholder.
        self.series_metadata: LRU[tuple[str, int], bytes] = LRU(settings.metadata_cache_bytes, len)
        #: (SOPInstanceUID, catalog version) → PixelInfo, filled by metadata and frame requests.
        self.pixel_infos: LRU[tuple[str, int], Any] = LRU(settings.pixel_info_cache_entries)
        #: (StudyInstanceUID, SeriesInstanceUID, catalog version) → {SOPInstanceUID: catalog row}:
        #: a viewer asks for every frame of a series, and one query per series beats a scan of the
        #: catalog per frame (at 100,000 instances a scan costs more than reading the frame).
        self.series_rows: LRU[tuple[str, str, int], dict[str, dict[str, Any]]] = LRU(256)

    @property
    def version(self) -> int:
        return int(getattr(self.catalog, "version", 0))

    def refresh(self, *, force: bool = False) -> None:
        """Bring the catalog up to date if the interval has passed (or ``force``), unless another
        request is doing it; see the module docstring."""
        now = time.monotonic()
        if not force and now - self._last_refresh < self.settings.refresh_interval:
            return
        if not self._refresh_lock.acquire(blocking=force):
            return
        try:
            self.catalog.refresh()
            self._last_refresh = time.monotonic()
        finally:
            self._refresh_lock.release()

    def cursor(self) -> Any:
        """A catalog cursor for this thread, after a cheap freshness check."""
        self.refresh()
        return self.catalog.cursor()

    # -- lookups -----------------------------------------------------------------------------

    def instance_rows(self, study: str, series: str | None = None, sop: str | None = None) -> list[dict[str, Any]]:
        """The catalog rows of a study, series or instance, in series then instance order; 404 when
        there are none."""
        if series is not None and sop is not None:
            self.refresh()
            key = (study, series, self.version)
            by_sop = self.series_rows.get(key)
            if by_sop is None:
                by_sop = {row["SOPInstanceUID"]: row for row in self._query_rows(study, series, None)}
                self.series_rows.put(key, by_sop)
            if sop not in by_sop:
                raise not_found(f"instance {sop} is not in this lake (study {study})")
            return [by_sop[sop]]
        return self._query_rows(study, series, sop)

    def _query_rows(self, study: str, series: str | None, sop: str | None) -> list[dict[str, Any]]:
        where, params = ["StudyInstanceUID = ?"], [study]
        if series is not None:
            where.append("SeriesInstanceUID = ?")
            params.append(series)
        if sop is not None:
            where.append("SOPInstanceUID = ?")
            params.append(sop)
        cur = self.cursor().execute(
            f"SELECT * EXCLUDE (_file) FROM instances WHERE {' AND '.join(where)} "
            "ORDER BY SeriesNumber NULLS LAST, SeriesInstanceUID, InstanceNumber NULLS LAST, SOPInstanceUID",
            params,
        )
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        if not rows:
            what = (f"instance {sop}" if sop else f"series {series}" if series else f"study {study}")
            raise not_found(f"{what} is not in this lake" + (f" (study {study})" if series or sop else ""))
        return rows

    def pixel_info(self, row: dict[str, Any], meta: str | dict[str, Any] | None = None) -> Any:
        """The :class:`~voxlake.dicom.frames.PixelInfo` of an instance row, cached: frame requests
        of a series opened in a viewer read no Parquet file after its metadata was built."""
        from voxlake.dicom.frames import pixel_info

        key = (row["SOPInstanceUID"], self.version)
        info = self.pixel_infos.get(key)
        if info is None:
            if meta is None:
                meta = self.catalog.meta([row["SOPInstanceUID"]]).get(row["SOPInstanceUID"])
            info = pixel_info({**row, "meta": meta or {}})
            self.pixel_infos.put(key, info)
        return info
