"""``voxlake deid``: de-identify a lake (selected by SQL) into a research lake, or files and folders."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="basic", help="confidentiality profile (PS3.15 E.1-1): basic")
    p.add_argument("--option", action="append", default=[], metavar="OPTION",
                   help="a PS3.15 option, repeatable: retain-longitudinal-modified-dates, clean-descriptors, "
                   "retain-uids, retain-safe-private, retain-patient-characteristics, retain-device-identity, "
                   "retain-institution-identity, retain-longitudinal-full-dates, clean-structured-content, "
                   "clean-graphics, clean-pixel-data (OCR and rules: burned-in text blacked out), "
                   "clean-recognizable-visual-features (leaves out what may show the patient: no defacing)")
    p.add_argument("--secret-file", default=None, help="key file you hold (e.g. openssl rand -hex 32 > deid.key)")
    p.add_argument("--recipe", default=None, help="YAML/JSON file overriding actions and listing safe private tags")
    p.add_argument("--allow-burned-in", action="store_true",
                   help="also write images that may hold burned-in text (pixels are NOT cleaned)")
    p.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    p.add_argument("--engine", choices=["local", "spark"], default="local",
                   help="local processes, or Spark tasks (same output; pip install 'voxlake[spark]')")
    p.add_argument("--spark-master", default=None, help="Spark master URL (default local[*])")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("deid", help="de-identify DICOM (PS3.15 profiles) into a research lake or folder",
                       description="De-identify the instances of --lake that match --where into the research "
                       "lake --out. Subcommands: file (files and folders), verify (look for leaks).")
    p.add_argument("--lake", default=None, help="source lake")
    p.add_argument("--where", default="TRUE", help="SQL condition over the instances view")
    p.add_argument("--out", default=None, help="research lake (created)")
    p.add_argument("--mapping", default=None,
                   help="write original → new identifiers to this Parquet file (outside --out); only when given")
    _common(p)
    kinds = p.add_subparsers(dest="deid_command", metavar="SUBCOMMAND")
    f = kinds.add_parser("file", help="de-identify a file (IN OUT) or a folder (IN OUTDIR)")
    f.add_argument("source", help="a DICOM file or a folder")
    f.add_argument("dest", help="output file (for a file) or folder")
    _common(f)
    v = kinds.add_parser("verify", help="look for the source's PHI in de-identified output (headers, bytes, OCR "
                         "of pixels, overlays and icons)")
    v.add_argument("--source", required=True, help="the source: a lake or a folder of DICOM files")
    v.add_argument("--deidentified", required=True,
                   help="the output: a research lake or a folder written by voxlake deid (paired through its "
                   "audit), or any de-identified lake or folder with --pairs")
    v.add_argument("--pairs", default=None, metavar="FILE.json",
                   help="a JSON object mapping each research file to its source file (paths relative to the "
                   "folders, or a lake's instances.uri): output of another tool, judged against the Basic "
                   "Profile and the --options")
    v.add_argument("--option", action="append", default=[], metavar="OPTION",
                   help="with --pairs: a PS3.15 option the other tool applied, repeatable")
    v.add_argument("--secret-file", default=None, help="the run's key file: UIDs and Patient IDs checked exactly")
    v.add_argument("--no-ocr", action="store_true", help="headers, bytes and UIDs only (no Tesseract over the pixels)")
    v.add_argument("--json", action="store_true", help="print the report as one JSON object")
    v.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    import orjson

    from voxlake.cli.output import print_json
    from voxlake.deid.verify import format_report, verify
    from voxlake.errors import InvalidArgumentError

    pairs = None
    if args.pairs:
        try:
            pairs = orjson.loads(Path(args.pairs).read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise InvalidArgumentError(f"--pairs {args.pairs}: cannot read it as JSON ({exc})") from None
        if not isinstance(pairs, dict) or not all(isinstance(k, str) and isinstance(x, str) for k, x in pairs.items()):
            raise InvalidArgumentError(f"--pairs {args.pairs}: must be a JSON object of research file → source file")
    elif args.option:
        raise InvalidArgumentError("--option is for --pairs (voxlake's own output names its options in its audit)")
    report = verify(args.source, args.deidentified, secret=args.secret_file, ocr=not args.no_ocr, pairs=pairs,
                    options=args.option)
    if args.json:
        print_json(report.to_dict())
    else:
        print(format_report(report))
    return 0 if report.passed else 1


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from voxlake.cli.output import print_json
    from voxlake.errors import InvalidArgumentError

    if getattr(args, "deid_command", None) == "verify":
        return _verify(args)
    bars: list[Any] = []

    def on_start(total: int) -> None:
        if not args.quiet and total > 1:
            from tqdm import tqdm

            bars.append(tqdm(total=total, unit="files", desc="deid", file=sys.stderr, dynamic_ncols=True))

    def progress(n: int) -> None:
        if bars:
            bars[0].update(n)

    common = {"secret": args.secret_file, "profile": args.profile, "options": args.option, "recipe": args.recipe,
              "allow_burned_in": args.allow_burned_in}
    try:
        if getattr(args, "deid_command", None) == "file":
            source = Path(args.source)
            if source.is_file():
                from voxlake.deid.run import DeidSummary, deidentify_file

                summary = DeidSummary("-", args.dest)
                summary.add(deidentify_file(source, args.dest, **common))
            else:
                from voxlake.deid.run import deidentify_files

                summary = deidentify_files(source, args.dest, workers=args.workers, engine=args.engine,
                                           spark_master=args.spark_master, progress=progress,
                                           on_start=on_start, **common)
        else:
            if not args.lake or not args.out:
                raise InvalidArgumentError("voxlake deid needs --lake and --out (or: voxlake deid file IN OUT)")
            from voxlake.deid.run import deidentify_lake

            summary = deidentify_lake(args.lake, args.out, where=args.where, mapping=args.mapping,
                                      workers=args.workers, engine=args.engine, spark_master=args.spark_master,
                                      progress=progress, on_start=on_start, **common)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        print_json(summary.to_dict())
    else:
        d = summary.to_dict()
        rate = f", {d['files_per_second']} files/s" if d["files_per_second"] else ""
        print(f"written {summary.written}, excluded {summary.excluded}, errors {summary.errors}, "
              f"not DICOM {summary.skipped} "
              f"of {summary.files} files; {summary.seconds:.1f} s{rate}")
        _print_problems(d["problems"])
    return 0 if summary.errors == 0 else 1


def _print_problems(problems: list[dict[str, str]], examples: int = 3) -> None:
    """Problems summarised by status and reason (the reason's text before any per-file detail in
    parentheses), with a few example files each; --json lists them all."""
    from collections import defaultdict

    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for p in problems:
        groups[(p["status"], p["reason"].split(" (", 1)[0])].append(p["source"])
    for (status, reason), sources in sorted(groups.items(), key=lambda g: -len(g[1])):
        print(f"  {status} {len(sources)}: {reason}")
        for source in sources[:examples]:
            print(f"    {source}")
        if len(sources) > examples:
            print(f"    ... and {len(sources) - examples} more (--json lists every file)")
