"""``make demo``: ingest the DICOM files that ship inside pydicom and query them.

Runs with zero services: the lake is a local folder, SQL runs in embedded DuckDB. A synthetic
cohort generator will replace the sample data once it exists.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

QUERIES = [
    ("Instances per modality", "SELECT Modality, count(*) AS instances FROM instances GROUP BY 1 ORDER BY 2 DESC, 1"),
    (
        "Largest series",
        "SELECT SeriesInstanceUID, Modality, instances, total_bytes FROM series ORDER BY instances DESC LIMIT 5",
    ),
    (
        "Transfer syntaxes",
        "SELECT TransferSyntaxUID, count(*) AS n FROM instances GROUP BY 1 ORDER BY 2 DESC LIMIT 8",
    ),
    (
        "Any tag by keyword, into sequences",
        "SELECT uri, dicom_tag(meta, 'ReferencedImageSequence[0].ReferencedSOPInstanceUID') AS ref "
        "FROM instances WHERE ref IS NOT NULL LIMIT 3",
    ),
    ("Files that could not be indexed", "SELECT uri, error_class, message FROM ingest_errors LIMIT 5"),
]


def sample_folder() -> Path:
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def main(argv: list[str] | None = None) -> int:
    import voxlake
    from voxlake.cli.main import main as cli
    from voxlake.cli.output import render_table

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lake", default="demo-lake")
    p.add_argument("--source", default=None, help="folder to ingest (default: pydicom's sample files)")
    args = p.parse_args(argv)
    source = args.source or str(sample_folder())
    if Path(args.lake).exists():
        shutil.rmtree(args.lake)
    print(f"$ voxlake ingest {source} --lake {args.lake}")
    rc = cli(["ingest", source, "--lake", args.lake])
    if rc:
        return rc
    lake = voxlake.open(args.lake)
    for title, query in QUERIES:
        print(f"\n-- {title}\n$ voxlake sql --lake {args.lake} \"{query}\"")
        print(render_table(lake.sql(query).arrow(), max_width=64))
    print(f"\nThe lake is in {args.lake}; try: .venv/bin/voxlake sql --lake {args.lake} \"SELECT * FROM studies\"")
    lake.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
