"""The SQL views every query sees, written once for DuckDB and Spark SQL.

Raw Delta tables are exposed as ``_instances``, ``_ingest_errors``, ``_ingest_files`` and
``ingest_runs``; the names people query are views over them:

- ``instances_history``: every committed instance row, every version of every instance.
- ``instances``: the latest version of each instance (by SOPInstanceUID; rows without one are
  kept by uri), which is what a re-sent instance updates.
- ``ingest_errors``, ``ingest_files``: rows of committed runs only.
- ``series``, ``studies``, ``patients``: roll-ups of ``instances``.
"""

from __future__ import annotations


def _modalities(dialect: str) -> str:
    if dialect == "spark":
        # concat_ws of no values is '' where string_agg gives NULL; keep DuckDB's NULL.
        return "CASE WHEN count(Modality) > 0 THEN concat_ws('\\\\', array_sort(collect_set(Modality))) END"
    return "string_agg(DISTINCT Modality, '\\' ORDER BY Modality)"


def view_definitions(dialect: str = "duckdb") -> list[tuple[str, str]]:
    """(name, SELECT) pairs in dependency order."""
    from voxlake.lake.schema import INSTANCES

    committed = "run_id IN (SELECT run_id FROM ingest_runs)"
    mods = _modalities(dialect)
    columns = ", ".join(f"`{n}`" if dialect == "spark" else f'"{n}"' for n in INSTANCES.names)
    return [
        ("instances_history", f"SELECT * FROM _instances WHERE {committed}"),
        (
            "instances",
            f"SELECT {columns} FROM (SELECT *, row_number() OVER ("
            "PARTITION BY coalesce(SOPInstanceUID, uri) ORDER BY indexed_at DESC, uri DESC) AS _version_rank "
            "FROM instances_history) AS h WHERE _version_rank = 1",
        ),
        ("ingest_errors", f"SELECT * FROM _ingest_errors WHERE {committed}"),
        ("ingest_files", f"SELECT * FROM _ingest_files WHERE {committed}"),
        (
            "series",
            f"""SELECT SeriesInstanceUID,
                min(StudyInstanceUID) AS StudyInstanceUID,
                min(PatientID) AS PatientID,
                {mods} AS Modality,
                min(SeriesNumber) AS SeriesNumber,
                min(SeriesDescription) AS SeriesDescription,
                min(BodyPartExamined) AS BodyPartExamined,
                min(Manufacturer) AS Manufacturer,
                min(ManufacturerModelName) AS ManufacturerModelName,
                min(coalesce(SeriesDate, StudyDate)) AS first_date,
                max(coalesce(SeriesDate, StudyDate)) AS last_date,
                count(*) AS instances,
                CAST(sum(coalesce(NumberOfFrames, 1)) AS BIGINT) AS frames,
                CAST(sum(size) AS BIGINT) AS total_bytes,
                max(indexed_at) AS last_indexed_at
            FROM instances GROUP BY SeriesInstanceUID""",
        ),
        (
            "studies",
            f"""SELECT StudyInstanceUID,
                min(PatientID) AS PatientID,
                min(PatientName) AS PatientName,
                min(StudyDate) AS StudyDate,
                min(StudyTime) AS StudyTime,
                min(StudyDescription) AS StudyDescription,
                min(AccessionNumber) AS AccessionNumber,
                min(ReferringPhysicianName) AS ReferringPhysicianName,
                {mods} AS ModalitiesInStudy,
                count(DISTINCT SeriesInstanceUID) AS series,
                count(*) AS instances,
                CAST(sum(size) AS BIGINT) AS total_bytes,
                min(coalesce(SeriesDate, StudyDate)) AS first_date,
                max(coalesce(SeriesDate, StudyDate)) AS last_date,
                max(indexed_at) AS last_indexed_at
            FROM instances GROUP BY StudyInstanceUID""",
        ),
        (
            "patients",
            f"""SELECT PatientID,
                min(PatientName) AS PatientName,
                min(PatientSex) AS PatientSex,
                min(PatientBirthDate) AS PatientBirthDate,
                count(DISTINCT StudyInstanceUID) AS studies,
                count(DISTINCT SeriesInstanceUID) AS series,
                count(*) AS instances,
                {mods} AS modalities,
                min(StudyDate) AS first_study_date,
                max(StudyDate) AS last_study_date,
                CAST(sum(size) AS BIGINT) AS total_bytes
            FROM instances GROUP BY PatientID""",
        ),
    ]
