"""``voxlake``: ingest DICOM into a lake and query it.

Errors print as one line (``voxlake: error: ...``) with exit status 1; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from voxlake.errors import VoxlakeError


def _parser() -> argparse.ArgumentParser:
    from voxlake import __version__

    p = argparse.ArgumentParser(prog="voxlake", description="The open medical-imaging lakehouse.")
    p.add_argument("--version", action="version", version=f"voxlake {__version__}")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ing = sub.add_parser(
        "ingest",
        help="index DICOM from a folder, file, .zip, DICOMDIR or URL into a lake",
        description="Index every DICOM instance under SOURCE into the lake. Reruns read only "
        "new or changed files; each run commits atomically.",
    )
    ing.add_argument("source", help="folder, file, .zip, DICOMDIR, or fsspec URL (s3://bucket/prefix)")
    ing.add_argument("--lake", required=True, help="lake folder or URL")
    ing.add_argument("--engine", default="local", help="local (process pool, default) or spark")
    ing.add_argument("--workers", type=int, default=None, help="local engine processes (default: all cores)")
    ing.add_argument("--spark-master", default=None, help="Spark master, e.g. local[2] or spark://host:7077")
    ing.add_argument("--watch", action="store_true", help="keep running; index new files as they land")
    ing.add_argument("--interval", type=float, default=1.0, help="--watch: seconds between polls")
    ing.add_argument("--settle", type=float, default=2.0, help="--watch: seconds a file must be unchanged")
    ing.add_argument("--bulk-threshold", type=int, default=1024, help="binary values above this many bytes become BulkDataURIs")
    ing.add_argument("--no-sha256", action="store_true", help="skip hashing (faster; sha256 column left empty)")
    ing.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    ing.add_argument("--quiet", action="store_true", help="no progress bar")
    ing.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    q = sub.add_parser("sql", help="run SQL over the lake (DuckDB)", description="Tables and views: "
                       "instances, instances_history, series, studies, patients, ingest_errors, "
                       "ingest_files, ingest_runs. Macros: dicom_tag(meta, path), dicom_json(meta, path).")
    q.add_argument("query", help="the SQL query")
    q.add_argument("--lake", required=True, help="lake folder or URL")
    q.add_argument("--format", default="table", help="table (default), csv, json or parquet")
    q.add_argument("--output", "-o", default=None, help="write to FILE instead of standard output")
    q.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    from voxlake.cli import synth

    synth.add_parser(sub)
    from voxlake.cli import net

    net.add_parser(sub)
    from voxlake.cli import deid

    deid.add_parser(sub)
    from voxlake.cli import serve

    serve.add_parser(sub)
    from voxlake.cli import ai

    ai.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "ingest":
            return _ingest(args)
        if args.command == "synth":
            from voxlake.cli import synth

            return synth.run(args)
        if args.command == "deid":
            from voxlake.cli import deid

            return deid.run(args)
        if args.command in ("dimse", "pacs"):
            from voxlake.cli import net

            return net.run(args)
        if args.command == "serve":
            from voxlake.cli import serve

            return serve.run(args)
        if args.command in ("models", "train", "segment", "labels"):
            from voxlake.cli import ai

            return ai.run(args)
        return _sql(args)
    except KeyboardInterrupt:
        print("voxlake: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(f"voxlake: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, VoxlakeError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _ingest(args: argparse.Namespace) -> int:
    import voxlake
    from voxlake.ingest.engines import Engine

    engine = Engine.parse(args.engine)
    lake = voxlake.open(args.lake)
    options: dict[str, Any] = {
        "engine": engine,
        "workers": args.workers,
        "spark_master": args.spark_master,
        "bulk_threshold": args.bulk_threshold,
        "sha256": not args.no_sha256,
    }
    bar = _ProgressBar(disabled=args.quiet)
    options["on_start"] = bar.start
    options["on_chunk"] = bar.update
    if args.watch:
        def on_run(summary: Any) -> None:
            bar.close()
            _report(summary, args.json)

        lake.watch(args.source, interval=args.interval, settle=args.settle, on_run=on_run, **options)
        return 0
    summary = lake.ingest(args.source, **options)
    bar.close()
    _report(summary, args.json)
    return 0


def _report(summary: Any, as_json: bool) -> None:
    from voxlake.cli.output import print_json

    if as_json:
        print_json(summary.to_dict())
        return
    rate = summary.files_seen - summary.files_unchanged
    rate_text = f", {rate / summary.seconds:.0f} files/s" if summary.seconds > 0 and rate else ""
    print(
        f"indexed {summary.indexed}, skipped {summary.skipped}, errors {summary.errors}"
        f" (partial {summary.partial}); {summary.files_unchanged} of {summary.files_seen} files unchanged;"
        f" {summary.seconds:.1f} s{rate_text}; run {summary.run_id}"
        + ("" if summary.committed else " (nothing new, no commit)")
    )
    if summary.errors:
        print("  see: voxlake sql --lake LAKE \"SELECT uri, error_class, message FROM ingest_errors\"")


class _ProgressBar:
    """A tqdm bar on standard error, counting files with their rate."""

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled
        self.bar: Any = None
        self.instances = 0

    def start(self, total: int) -> None:
        if self.disabled or total == 0:
            return
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="files", desc="indexing", file=sys.stderr, dynamic_ncols=True)

    def update(self, result: Any) -> None:
        if self.bar is not None:
            self.instances += result.counts["indexed"]
            self.bar.set_postfix(instances=self.instances, refresh=False)
            self.bar.update(result.units)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _sql(args: argparse.Namespace) -> int:
    import voxlake
    from voxlake.cli.output import Format, write_result

    fmt = Format.parse(args.format)
    with voxlake.open(args.lake) as lake:
        table = lake.sql(args.query).arrow()
        write_result(table, fmt, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
