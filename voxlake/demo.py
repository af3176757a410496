"""``make demo``: generate a small synthetic hospital archive, ingest it, and query it.

Runs with zero services: the data comes from ``voxlake synth`` (a cohort of CT, MR, CR/DX and US
studies plus two CT phantoms with organ labels), the lake is a local folder, SQL runs in embedded
DuckDB. ``--source`` ingests a folder of your own instead.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

QUERIES = [
    (
        "Patients",
        "SELECT PatientID, PatientName, PatientSex, PatientBirthDate, studies, series, instances, modalities "
        "FROM patients ORDER BY PatientID LIMIT 10",
    ),
    (
        "Studies by modality",
        "SELECT ModalitiesInStudy, count(*) AS studies, sum(series)::BIGINT AS series, sum(instances)::BIGINT AS instances "
        "FROM studies GROUP BY 1 ORDER BY studies DESC, 1",
    ),
    (
        "Largest series",
        "SELECT Modality, SeriesDescription, BodyPartExamined, instances, total_bytes FROM series "
        "ORDER BY instances DESC LIMIT 5",
    ),
    (
        "Transfer syntaxes",
        "SELECT TransferSyntaxUID, count(*) AS n FROM instances GROUP BY 1 ORDER BY 2 DESC",
    ),
    (
        "Any tag by keyword, into sequences (the segments of each SEG)",
        "SELECT SeriesDescription, dicom_tag(meta, 'SegmentSequence[0].SegmentLabel') AS first_segment, "
        "json_array_length(dicom_json(meta, 'SegmentSequence'), '$.Value') AS segments "
        "FROM instances WHERE Modality = 'SEG'",
    ),
    ("Files that could not be indexed", "SELECT uri, error_class, message FROM ingest_errors LIMIT 5"),
]


def generate(data: Path, *, seed: int) -> None:
    """The demo archive: a 10-patient cohort and two CT phantoms with their label maps."""
    from voxlake.cli.main import main as cli

    for args in (
        ["synth", "cohort", str(data / "cohort"), "--patients", "10", "--seed", str(seed),
         "--max-instances-per-series", "30"],
        ["synth", "phantoms", str(data / "phantoms"), "--cases", "2", "--seed", str(seed), "--slices", "80-120"],
    ):
        print("$ voxlake " + " ".join(args))
        if cli(args):
            raise SystemExit(1)


def main(argv: list[str] | None = None) -> int:
    import voxlake
    from voxlake.cli.main import main as cli
    from voxlake.cli.output import render_table

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--lake", default="demo-lake")
    p.add_argument("--data", default="demo-data", help="where the synthetic archive is written")
    p.add_argument("--source", default=None, help="ingest this folder instead of generating data")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if args.source is None:
        data = Path(args.data)
        if data.exists():
            shutil.rmtree(data)
        generate(data, seed=args.seed)
        source = str(data)
    else:
        source = args.source
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
