"""``voxlake synth``: synthetic data with ground truth (cohorts, CT phantoms, PHI, scale, an adversarial
PHI set)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    p = sub.add_parser("synth", help="generate synthetic DICOM with ground truth")
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")

    c = kinds.add_parser("cohort", help="a small, varied hospital archive (CT, MR, CR/DX, US)")
    c.add_argument("out", help="output folder")
    c.add_argument("--patients", type=int, default=20)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--inject-phi", action="store_true", help="fake PHI everywhere, plus answer_key.{parquet,json}")
    c.add_argument("--max-instances-per-series", type=int, default=60, help="cap on series sizes (default 60)")
    c.add_argument("--matrix", type=int, default=256, help="rows and columns of CT/MR images (default 256)")
    _common(c)

    ph = kinds.add_parser("phantoms", help="CT torso phantoms with organ label maps (NIfTI and DICOM SEG)")
    ph.add_argument("out", help="output folder")
    ph.add_argument("--cases", type=int, default=10)
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--rows", type=int, default=512, help="rows and columns of each slice")
    ph.add_argument("--slices", default="80-300", help="slices per case: N or MIN-MAX")
    ph.add_argument("--thickness", default="1-5", help="slice thickness in mm: T or MIN-MAX")
    ph.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    _common(ph)

    s = kinds.add_parser("scale", help="header-realistic copies of a folder, fast (for benchmarks)")
    s.add_argument("out", help="output folder")
    s.add_argument("--instances", type=int, required=True)
    s.add_argument("--from", dest="source", required=True, help="folder of template DICOM files")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--pixels", default="none", help="none (header-only files, default) or template")
    _common(s)

    a = kinds.add_parser("adversarial", help="one fake patient's PHI planted everywhere de-identification "
                                             "can miss it (14 SOP classes, 6 character sets), with answer_key.json")
    a.add_argument("out", help="output folder")
    a.add_argument("--seed", type=int, default=7)
    _common(a)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print what was written as one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _range(text: str, kind: type) -> Any:
    low, sep, high = text.partition("-")
    return (kind(low), kind(high)) if sep else kind(low)


def run(args: argparse.Namespace) -> int:
    if args.kind == "adversarial":
        return _adversarial(args)
    from tqdm import tqdm

    total = {"scale": getattr(args, "instances", None), "phantoms": getattr(args, "cases", None)}.get(args.kind)
    if args.kind == "cohort":
        from voxlake.synth.cohort import plan_cohort

        total = plan_cohort(
            patients=args.patients, seed=args.seed, transfer_syntaxes=None,
            max_instances_per_series=args.max_instances_per_series,
        ).instances
    unit = {"cohort": "files", "phantoms": "cases", "scale": "files"}[args.kind]
    bars: list[Any] = []  # made at the first file, so bad options fail without a bar

    def progress(n: int) -> None:
        if args.quiet:
            return
        if not bars:
            bars.append(tqdm(total=total, unit=unit, desc=f"synth {args.kind}", file=sys.stderr))
        bars[0].update(n)

    try:
        result = _generate(args, progress)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        from voxlake.cli.output import print_json

        print_json(_jsonable(result))
    else:
        print(result.summary())
    return 0


def _adversarial(args: argparse.Namespace) -> int:
    """About 40 files in a few seconds: no progress bar; the answer key's summary, or with --json its files
    and planted values."""
    from voxlake.synth.adversarial import generate_adversarial, summary

    key = generate_adversarial(args.out, seed=args.seed)
    if args.json:
        from voxlake.cli.output import print_json

        print_json({"out": str(args.out), "seed": args.seed, "answer_key": str(Path(args.out) / "answer_key.json"),
                    "files": len(key["files"]), "sop_classes": sorted({f["sop_class_uid"] for f in key["files"]}),
                    "planted": len(key["planted"]), "must_survive": [r["value"] for r in key["must_survive"]]})
    else:
        print(summary(key))
    return 0


def _generate(args: argparse.Namespace, progress: Any) -> Any:
    out = Path(args.out)
    if args.kind == "cohort":
        from voxlake.synth.cohort import generate_cohort

        hook = None
        if args.inject_phi:
            from voxlake.synth.phi import PhiInjector

            hook = PhiInjector(args.seed)
        result = generate_cohort(
            out,
            patients=args.patients,
            seed=args.seed,
            hook=hook,
            progress=progress,
            max_instances_per_series=args.max_instances_per_series,
            matrix=args.matrix,
        )
        if hook is not None:
            hook.answer_key.write(out / "answer_key")
        return result
    if args.kind == "phantoms":
        from voxlake.synth.phantom import generate_phantoms

        return generate_phantoms(
            out,
            cases=args.cases,
            seed=args.seed,
            rows=args.rows,
            columns=args.rows,
            slices=_range(args.slices, int),
            slice_thickness=_range(args.thickness, float),
            workers=args.workers or _cores(),
            progress=progress,
        )
    from voxlake.synth.scale import generate_scale

    return generate_scale(
        out,
        instances=args.instances,
        source=args.source,
        seed=args.seed,
        pixels=args.pixels,
        workers=args.workers,
        progress=progress,
    )


def _cores() -> int:
    from voxlake.ingest.engines.local import default_workers

    return default_workers()


def _jsonable(result: Any) -> Any:
    if dataclasses.is_dataclass(result):
        data = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    else:
        data = dict(vars(result))
    return {k: _plain(v) for k, v in data.items() if not k.startswith("_")}


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value):
        return _jsonable(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
