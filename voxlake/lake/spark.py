"""The lake's tables and views in a SparkSession, for querying a lake with Spark SQL.

Spark reads the Parquet files of each table's current Delta version, as listed by delta-rs, so
neither delta-spark nor any Spark package is needed; the views are the same SELECTs DuckDB runs
(:func:`voxlake.lake.views.view_definitions`), in Spark's dialect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pyarrow as pa

from voxlake.lake import schema, storage
from voxlake.lake.sql import RAW_NAMES
from voxlake.lake.views import view_definitions

if TYPE_CHECKING:
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType, StructType


def register(lake: Any, spark: SparkSession) -> list[str]:
    """Register the lake's raw tables and views as temp views of ``spark``; returns their names.

    The views are a snapshot: they show the table versions current at this call, as
    ``Lake.connect`` does for DuckDB, until ``register`` is called again. Timestamps are instants
    (``TIMESTAMP``), which Spark shows in ``spark.sql.session.timeZone``: set it to ``UTC`` to
    see the values DuckDB shows. Spark must be able to read the lake's file URIs (for S3: the
    ``s3a`` connector and its credentials).
    """
    from deltalake import DeltaTable

    opts = storage.delta_storage_options(lake.uri)
    names = []
    for table, raw in RAW_NAMES.items():
        struct = spark_schema(schema.TABLES[table])
        files = DeltaTable(storage.join(lake.uri, table), storage_options=opts).file_uris()
        frame = spark.read.schema(struct).parquet(*files) if files else spark.createDataFrame([], struct)
        frame.createOrReplaceTempView(raw)
        names.append(raw)
    for name, select in view_definitions("spark"):
        spark.sql(f"CREATE OR REPLACE TEMPORARY VIEW {name} AS {select}")
        names.append(name)
    return names


def spark_schema(arrow_schema: pa.Schema) -> StructType:
    """The Spark schema of one of the lake's Arrow schemas (only the types the lake uses)."""
    from pyspark.sql.types import StructField, StructType

    return StructType([StructField(f.name, _spark_type(f.type), f.nullable) for f in arrow_schema])


def _spark_type(t: pa.DataType) -> DataType:
    from pyspark.sql import types as st

    if pa.types.is_list(t):
        return st.ArrayType(_spark_type(t.value_type))
    if pa.types.is_timestamp(t):
        # Delta and Spark timestamps are instants; an Arrow timestamp without tz would be TIMESTAMP_NTZ.
        return st.TimestampType() if t.tz else st.TimestampNTZType()
    simple = {
        pa.string(): st.StringType(),
        pa.int64(): st.LongType(),
        pa.int32(): st.IntegerType(),
        pa.float64(): st.DoubleType(),
        pa.bool_(): st.BooleanType(),
        pa.date32(): st.DateType(),
    }
    if t not in simple:
        raise TypeError(f"no Spark type for Arrow type {t}")
    return simple[t]
