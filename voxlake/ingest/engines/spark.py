"""The Spark engine: the same chunks as the local engine, run as tasks of a Spark job.

Each chunk of units becomes one partition of a DataFrame; a ``mapInArrow`` task calls
:func:`~voxlake.ingest.engines.index_and_stage` on it and returns the staged files, which the
driver commits exactly as after a local run. Tasks only stage files that no table version
references yet, so a retried or speculative task costs a few orphan files (``Lake.vacuum`` removes
them), never a duplicate row. Executors read the units and write the lake themselves: both must be
reachable from every executor, and voxlake must be importable in their Python.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from functools import partial
from typing import TYPE_CHECKING

import pyarrow as pa

from voxlake.errors import MissingExtraError
from voxlake.ingest.engines import ChunkResult, chunked, index_and_stage
from voxlake.ingest.sources import Unit
from voxlake.ingest.transform import TransformOptions
from voxlake.lake.commit import StagedFile

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

_UNITS_DDL = "chunk long, uri string, size long, mtime long"
_RESULTS = pa.schema([("staged", pa.string()), ("counts", pa.string()), ("units", pa.int64())])
_RESULTS_DDL = "staged string, counts string, units long"


def _require_pyspark() -> None:
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"the spark engine needs PySpark ({exc}): pip install 'voxlake[spark]'"
        ) from None


def spark_session(master: str | None = None) -> SparkSession:
    """The active SparkSession, or a new quiet one on ``master`` (default ``local[*]``).

    An existing session is used as it is (``master`` is then ignored): Spark allows one per JVM.
    Workers run this interpreter unless ``PYSPARK_PYTHON`` says otherwise, so they import the
    same voxlake as the driver.
    """
    _require_pyspark()
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    # A SparkContext started from Python (not spark-submit) picks its workers' interpreter from
    # PYSPARK_PYTHON alone, else "python3" on PATH, which may lack voxlake.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = (
        SparkSession.builder.master(master or "local[*]")
        .appName("voxlake-ingest")
        .config("spark.pyspark.python", sys.executable)
        .config("spark.pyspark.driver.python", sys.executable)
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    return spark


def run_spark(
    units: list[Unit],
    options: TransformOptions,
    lake_uri: str,
    *,
    master: str | None = None,
    progress: Callable[[ChunkResult], None] | None = None,
) -> list[ChunkResult]:
    """Run the chunks as Spark tasks; results come back in chunk order once the job is done.

    Chunks are sized for the session's default parallelism, as the local engine sizes them for
    its workers, so both engines write the same rows. Nothing to do starts no JVM.
    """
    _require_pyspark()
    if not units:
        return []
    spark = spark_session(master)
    chunks = chunked(units, spark.sparkContext.defaultParallelism)
    # One partition per chunk, as the local engine submits one task per chunk: a slow chunk then
    # delays one task only. (A DataFrame from an Arrow table or a list gets default parallelism.)
    rows = [[(i, u.uri, u.size, u.mtime) for u in chunk] for i, chunk in enumerate(chunks)]
    frame = spark.createDataFrame(
        spark.sparkContext.parallelize(rows, len(rows)).flatMap(lambda chunk: chunk), _UNITS_DDL
    )
    results = []
    for row in frame.mapInArrow(partial(stage_partition, options, lake_uri), _RESULTS_DDL).collect():
        result = ChunkResult(
            staged=[StagedFile.from_json(s) for s in json.loads(row["staged"])],
            counts=json.loads(row["counts"]),
            units=row["units"],
        )
        results.append(result)
        if progress:
            progress(result)
    return results


def stage_partition(
    options: TransformOptions, lake_uri: str, batches: Iterator[pa.RecordBatch]
) -> Iterator[pa.RecordBatch]:
    """The task: one result row per chunk of the partition, whatever batches Spark hands over.

    Module-level (and bound with ``functools.partial``) so Spark pickles it by reference.
    """
    chunks: dict[int, list[Unit]] = {}
    for batch in batches:
        for row in batch.to_pylist():
            chunks.setdefault(row["chunk"], []).append(Unit(row["uri"], row["size"], row["mtime"]))
    for chunk in chunks.values():
        result = index_and_stage(chunk, options, lake_uri)
        yield pa.RecordBatch.from_pylist(
            [
                {
                    "staged": json.dumps([f.to_json() for f in result.staged]),
                    "counts": json.dumps(result.counts),
                    "units": result.units,
                }
            ],
            schema=_RESULTS,
        )
