"""A query catalog for servers: the lake's ``instances`` (without ``meta``) and its study, series
and patient roll-ups, kept in an embedded DuckDB database and brought up to date incrementally.

Why: a C-FIND or QIDO-RS request must answer in milliseconds. Over the Delta files directly each
query opens every Parquet file of the table (hundreds, one per ingest chunk or network commit) and
recomputes the latest version of every instance; at 100,000 instances that is 300 ms. The catalog
does that work once per new Delta file instead: :meth:`Catalog.refresh` reads only the files added
since the last refresh (of runs that are committed), replaces older versions of the same instances,
and recomputes the roll-ups of the studies, series and patients they touch. Queries then read
compressed in-memory tables.

Tables (each query sees one consistent state, DuckDB's MVCC):

- ``instances``: the columns of the lake's ``instances`` view except ``meta`` and
  ``parse_warnings``, plus ``_file`` (the Parquet file holding the row; see :meth:`Catalog.meta`).
- ``studies``: one row per StudyInstanceUID with the patient and study attributes, ModalitiesInStudy,
  SOPClassesInStudy, NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances, total_bytes and
  last_indexed_at.
- ``series``: one row per SeriesInstanceUID with the series attributes, the study and patient
  attributes of its study, NumberOfSeriesRelatedInstances, frames, total_bytes, last_indexed_at.
- ``patients``: one row per PatientID with NumberOfPatientRelatedStudies/Series/Instances.

Attributes of a study (or series) are taken as ``min()`` over its instances, as in the lake's views,
so a value that differs between instances gives one stable answer.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from voxlake.lake import schema, storage

#: Columns of the lake's instances table that the catalog leaves out (large, or lists of text).
_OMITTED = {"meta", "parse_warnings"}

_STUDY_ATTRIBUTES = [
    "PatientID",
    "PatientName",
    "PatientSex",
    "PatientBirthDate",
    "PatientAge",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "AccessionNumber",
    "InstitutionName",
    "ReferringPhysicianName",
]
_SERIES_ATTRIBUTES = [
    "Modality",
    "SeriesNumber",
    "SeriesDate",
    "SeriesTime",
    "SeriesDescription",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
]


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _mins(names: list[str]) -> str:
    return ", ".join(f"min({_q(n)}) AS {_q(n)}" for n in names)


_MODALITIES = "string_agg(DISTINCT Modality, '\\' ORDER BY Modality)"
_ROLLUPS = {
    "studies": (
        "StudyInstanceUID",
        f"""SELECT StudyInstanceUID, {_mins(_STUDY_ATTRIBUTES)},
            {_MODALITIES} AS ModalitiesInStudy,
            string_agg(DISTINCT SOPClassUID, '\\' ORDER BY SOPClassUID) AS SOPClassesInStudy,
            count(DISTINCT SeriesInstanceUID) AS NumberOfStudyRelatedSeries,
            count(*) AS NumberOfStudyRelatedInstances,
            CAST(sum(size) AS BIGINT) AS total_bytes,
            max(indexed_at) AS last_indexed_at""",
    ),
    "series": (
        "SeriesInstanceUID",
        f"""SELECT SeriesInstanceUID, min(StudyInstanceUID) AS StudyInstanceUID,
            {_mins(_STUDY_ATTRIBUTES)}, {_mins(_SERIES_ATTRIBUTES)},
            count(*) AS NumberOfSeriesRelatedInstances,
            CAST(sum(coalesce(NumberOfFrames, 1)) AS BIGINT) AS frames,
            CAST(sum(size) AS BIGINT) AS total_bytes,
            max(indexed_at) AS last_indexed_at""",
    ),
    "patients": (
        "PatientID",
        f"""SELECT PatientID, {_mins(["PatientName", "PatientSex", "PatientBirthDate"])},
            {_MODALITIES} AS ModalitiesInPatient,
            count(DISTINCT StudyInstanceUID) AS NumberOfPatientRelatedStudies,
            count(DISTINCT SeriesInstanceUID) AS NumberOfPatientRelatedSeries,
            count(*) AS NumberOfPatientRelatedInstances,
            CAST(sum(size) AS BIGINT) AS total_bytes,
            max(indexed_at) AS last_indexed_at""",
    ),
}

#: The key that identifies an instance across versions, as in the lake's ``instances`` view.
_KEY = "coalesce(SOPInstanceUID, uri)"
#: Newest version first, as in the lake's ``instances`` view.
_NEWEST = "indexed_at DESC, uri DESC"


class Catalog:
    """The catalog of one lake. Thread-safe: any thread may query through :meth:`cursor` while
    another refreshes; one refresh runs at a time."""

    def __init__(self, lake_uri: str) -> None:
        import duckdb

        self.uri = lake_uri
        self._db = duckdb.connect()
        # Compressed in memory: about a fifth of the plain in-memory size for these columns.
        self._db.execute("ATTACH ':memory:' AS catalog (COMPRESS)")
        self._db.execute("USE catalog")
        self._columns = [f.name for f in schema.INSTANCES if f.name not in _OMITTED]
        self._lock = threading.Lock()
        self._local = threading.local()
        self._tables: dict[str, Any] = {}  # table name -> deltalake.DeltaTable, kept to update
        self._seen_versions: tuple[int, int] | None = None
        self._loaded: set[str] = set()  # Parquet files of instances whose rows are in the catalog
        self._runs: set[str] = set()  # committed run ids
        self._run_files: set[str] = set()  # ingest_runs files read
        self._file_runs: dict[str, str | None] = {}  # instances file -> its run id (one per file)
        self.version = 0  # bumped by every refresh that changed something
        self._create()

    # -- querying ---------------------------------------------------------------------------

    def cursor(self) -> Any:
        """A DuckDB connection for the calling thread (DuckDB connections are not shared
        between threads)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._db.cursor()
            con.execute("USE catalog")
            self._local.con = con
        return con

    def meta(self, sop_instance_uids: list[str]) -> dict[str, str]:
        """SOPInstanceUID → its header as DICOM JSON text (the latest version), reading only the
        Parquet files that hold them."""
        if not sop_instance_uids:
            return {}
        con = self.cursor()
        rows = con.execute(
            "SELECT _file, SOPInstanceUID, indexed_at, uri FROM instances WHERE SOPInstanceUID IN "
            "(SELECT unnest(?))",
            [list(sop_instance_uids)],
        ).fetchall()
        by_file: dict[str, list[tuple[str, Any, str]]] = defaultdict(list)
        for file, sop, indexed_at, uri in rows:
            by_file[file].append((sop, indexed_at, uri))
        out: dict[str, str] = {}
        for file, wanted in by_file.items():
            versions = {(sop, indexed_at, uri) for sop, indexed_at, uri in wanted}
            table = self._dataset([file]).to_table(
                columns=["SOPInstanceUID", "indexed_at", "uri", "meta"],
                filter=pc.field("SOPInstanceUID").isin([w[0] for w in wanted]),
            )
            for row in table.to_pylist():
                if (row["SOPInstanceUID"], row["indexed_at"], row["uri"]) in versions:
                    out[row["SOPInstanceUID"]] = row["meta"]
        return out

    def _dataset(self, files: list[str]) -> Any:
        """The files as one pyarrow dataset with the full schema (a column that older files lack
        reads as null)."""
        from voxlake.lake.tables import dataset

        return dataset(self.uri, files, schema.INSTANCES)

    def _read(self, files: list[str]) -> pa.Table:
        """The catalog's columns of committed rows of ``files``, with ``_file``."""
        import pyarrow.compute as pc

        by_path = {f.split("://", 1)[1] if "://" in f else f: f for f in files}
        parts = []
        runs = pa.array(sorted(self._runs), pa.string())
        for fragment in self._dataset(files).get_fragments():
            lacking = [n for n, _t, _k in schema.PROMOTED_LATER if n not in fragment.physical_schema.names]
            part = fragment.to_table(
                columns=self._columns + (["meta"] if lacking else []),
                schema=schema.INSTANCES,
                filter=pc.field("run_id").isin(runs),
            )
            if lacking:
                part = _fill_from_meta(part, lacking)
            name = by_path.get(fragment.path, fragment.path)
            parts.append(part.append_column("_file", pa.array([name] * part.num_rows, pa.string())))
        return pa.concat_tables(parts)

    # -- keeping up with the lake --------------------------------------------------------------

    def refresh(self) -> bool:
        """Bring the catalog to the lake's current versions; False (after about a millisecond)
        when nothing was committed since the last call."""
        with self._lock:
            versions = self._versions()
            if versions is None or versions == self._seen_versions:
                return False
            changed = self._update()
            self._seen_versions = versions
            if changed:
                self.version += 1
            return changed

    def close(self) -> None:
        self._db.close()

    def _versions(self) -> tuple[int, int] | None:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        opts = storage.delta_storage_options(self.uri)
        out = []
        for name in ("instances", "ingest_runs"):
            table = self._tables.get(name)
            try:
                if table is None:
                    table = DeltaTable(storage.join(self.uri, name), storage_options=opts)
                    self._tables[name] = table
                else:
                    table.update_incremental()
            except TableNotFoundError:
                return None  # no lake yet: nothing to catalog
            out.append(table.version())
        return out[0], out[1]

    def _create(self) -> None:
        empty = schema.INSTANCES.empty_table().select(self._columns)
        con = self._db
        con.register("_empty", empty)
        con.execute("CREATE TABLE instances AS SELECT *, CAST(NULL AS VARCHAR) AS _file FROM _empty")
        con.unregister("_empty")
        for name, (key, select) in _ROLLUPS.items():
            con.execute(f"CREATE TABLE {name} AS {select} FROM instances GROUP BY {key}")

    def _update(self) -> bool:
        con = self._db.cursor()
        con.execute("USE catalog")
        try:
            return self._update_with(con)
        finally:
            con.close()

    def _update_with(self, con: Any) -> bool:
        runs_table, instances_table = self._tables["ingest_runs"], self._tables["instances"]
        run_files = set(runs_table.file_uris())
        new_run_files = sorted(run_files - self._run_files)
        if new_run_files:
            from voxlake.lake.tables import dataset

            runs = dataset(self.uri, new_run_files, schema.TABLES["ingest_runs"]).to_table(columns=["run_id"])
            self._runs.update(runs.column("run_id").to_pylist())
            self._run_files |= set(new_run_files)
        files = set(instances_table.file_uris())
        removed = self._loaded - files  # compaction (Lake.optimize) rewrote them
        candidates = sorted(f for f in files - self._loaded)
        unknown = [f for f in candidates if f not in self._file_runs]
        if unknown:  # each staged file holds the rows of one run
            by_path = {f.split("://", 1)[1] if "://" in f else f: f for f in unknown}
            for fragment in self._dataset(unknown).get_fragments():
                head = fragment.head(1, columns=["run_id"]).column("run_id").to_pylist()
                self._file_runs[by_path.get(fragment.path, fragment.path)] = head[0] if head else None
        new = [f for f in candidates if self._file_runs.get(f) in self._runs]
        for f in removed:
            self._file_runs.pop(f, None)
        if not new and not removed:
            return False
        cols = ", ".join(_q(c) for c in self._columns)
        con.execute("BEGIN")
        try:
            con.execute("CREATE OR REPLACE TEMP TABLE _gone AS SELECT * FROM instances WHERE false")
            if removed:
                con.execute(
                    "INSERT INTO _gone SELECT * FROM instances WHERE _file IN (SELECT unnest(?))",
                    [sorted(removed)],
                )
                con.execute("DELETE FROM instances WHERE _file IN (SELECT unnest(?))", [sorted(removed)])
            if new:
                rows = self._read(new)
                con.register("_rows", rows)
                con.execute(
                    f"""CREATE OR REPLACE TEMP TABLE _batch AS SELECT {cols}, _file FROM _rows
                    QUALIFY row_number() OVER (PARTITION BY {_KEY} ORDER BY {_NEWEST}) = 1"""
                )
                con.unregister("_rows")
                # Where the catalog already holds a newer version, it stays.
                con.execute(
                    """DELETE FROM _batch WHERE coalesce(SOPInstanceUID, uri) IN (
                        SELECT coalesce(b.SOPInstanceUID, b.uri) FROM _batch b JOIN instances i
                          ON coalesce(i.SOPInstanceUID, i.uri) = coalesce(b.SOPInstanceUID, b.uri)
                        WHERE (i.indexed_at, i.uri) > (b.indexed_at, b.uri))"""
                )
                con.execute(
                    f"INSERT INTO _gone SELECT * FROM instances WHERE {_KEY} IN (SELECT {_KEY} FROM _batch)"
                )
                con.execute(f"DELETE FROM instances WHERE {_KEY} IN (SELECT {_KEY} FROM _batch)")
                con.execute("INSERT INTO instances SELECT * FROM _batch")
            else:
                con.execute("CREATE OR REPLACE TEMP TABLE _batch AS SELECT * FROM instances WHERE false")
            for name, (key, select) in _ROLLUPS.items():
                touched = (
                    f"SELECT coalesce({key}, '') FROM _batch UNION SELECT coalesce({key}, '') FROM _gone"
                )
                con.execute(f"DELETE FROM {name} WHERE coalesce({key}, '') IN ({touched})")
                con.execute(
                    f"INSERT INTO {name} {select} FROM instances "
                    f"WHERE coalesce({key}, '') IN ({touched}) GROUP BY {key}"
                )
            con.execute("DROP TABLE _batch")
            con.execute("DROP TABLE _gone")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self._loaded = (self._loaded - removed) | set(new)
        return True


def _fill_from_meta(part: pa.Table, names: list[str]) -> pa.Table:
    """Rows written before ``names`` were promoted: their values taken from the header, as ingest
    takes them now; ``meta`` is then dropped."""
    import orjson

    values: dict[str, list[Any]] = {n: [] for n in names}
    for text in part.column("meta").to_pylist():
        row = schema.promoted_values(orjson.loads(text), []) if text else {}
        for n in names:
            values[n].append(row.get(n))
    for n in names:
        i = part.schema.get_field_index(n)
        part = part.set_column(i, part.schema.field(i), pa.array(values[n], part.schema.field(i).type))
    return part.drop_columns(["meta"])
