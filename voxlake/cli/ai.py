"""``voxlake models``, ``voxlake train`` and ``voxlake segment``: thin layers over :mod:`voxlake.ai`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

COMMANDS = ("models", "train", "segment")


def add_parser(sub: Any) -> None:
    registry_help = "model registry: a folder or MLflow URI (default $VOXLAKE_REGISTRY, else ~/.local/share/voxlake/registry)"

    m = sub.add_parser("models", help="list and import segmentation models (the registry, on MLflow)")
    msub = m.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    ls = msub.add_parser("list", help="every model version with its aliases, kind and labels")
    ls.add_argument("--registry", default=None, help=registry_help)
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    imp = msub.add_parser("import", help="register a MONAI bundle directory (model-zoo layout) as a new version")
    imp.add_argument("path", help="bundle directory: configs/inference.json, configs/metadata.json, models/model.pt|.ts")
    imp.add_argument("--name", required=True, help="model name in the registry")
    imp.add_argument("--alias", default=None, help="also give the new version this alias (champion, challenger)")
    imp.add_argument("--registry", default=None, help=registry_help)
    imp.add_argument("--json", action="store_true", help="print one JSON object")
    imp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    t = sub.add_parser("train", help="train phantom-organs on synthetic phantoms and register the version")
    t.add_argument("--phantoms", required=True, help="folder written by 'voxlake synth phantoms'")
    t.add_argument("--name", default="phantom-organs", help="model name (default phantom-organs)")
    t.add_argument("--epochs", type=int, default=40, help="epochs (default 40)")
    t.add_argument("--seed", type=int, default=0, help="seed: the same seed and phantoms give the same model")
    t.add_argument("--registry", default=None, help=registry_help)
    t.add_argument("--json", action="store_true", help="print the version and metrics as one JSON object")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    s = sub.add_parser("segment", help="segment series of a lake: DICOM SEG, segment_stats and meshes written back",
                       description="Series are chosen by --where (SQL over the instances view) or --rules (a JSON "
                       "rules file); those the model version has done already are skipped. One failing series "
                       "is recorded in segment_errors and the batch goes on.")
    s.add_argument("--lake", required=True, help="lake folder or URL")
    s.add_argument("--model", default="ct-tissue", help="NAME, NAME@ALIAS or NAME:VERSION (default ct-tissue)")
    choose = s.add_mutually_exclusive_group()
    choose.add_argument("--where", default="Modality = 'CT'", help="SQL condition (default: Modality = 'CT')")
    choose.add_argument("--rules", default=None, help="series-selection rules (JSON file)")
    s.add_argument("--redo", action="store_true", help="segment again series this model version has done")
    s.add_argument("--nifti", action="store_true", help="also write the label map as NIfTI")
    s.add_argument("--no-meshes", action="store_true", help="no STL surface meshes")
    s.add_argument("--registry", default=None, help=registry_help)
    s.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    from voxlake.ai.registry import Registry

    if args.command == "segment":
        import voxlake

        lake = voxlake.open(args.lake)
        lake.versions()  # a missing lake is one clear error, before any model or registry opens
        return _segment(args, lake, Registry(args.registry))
    registry = Registry(args.registry)
    if args.command == "models":
        return _models(args, registry)
    return _train(args, registry)


def _models(args: argparse.Namespace, registry: Any) -> int:
    from voxlake.cli.output import print_json

    if args.models_command == "import":
        from voxlake.ai.bundle import import_bundle

        version = import_bundle(registry, args.path, name=args.name)
        if args.alias:
            registry.set_alias(args.name, args.alias, version)
        row = registry.resolve(f"{args.name}:{version}")
        if args.json:
            print_json(_row(row) | ({"alias": args.alias} if args.alias else {}))
        else:
            print(f"registered {args.name}:{version} ({len(row.labels)} labels: "
                  f"{', '.join(row.labels.values())})" + (f" as {args.name}@{args.alias}" if args.alias else ""))
        return 0
    rows = registry.list()
    if args.json:
        print_json({"registry": str(registry), "models": [_row(r) for r in rows]})
        return 0
    print(f"{'model':<24} {'version':<10} {'aliases':<22} {'kind':<9} labels")
    for r in rows:
        labels = ", ".join(r.labels.values())
        print(f"{r.name:<24} {r.version:<10} {','.join(r.aliases) or '-':<22} {r.kind:<9} "
              f"{labels[:60] + ('…' if len(labels) > 60 else '')}")
    return 0


def _row(r: Any) -> dict[str, Any]:
    return {"name": r.name, "version": r.version, "aliases": list(r.aliases), "kind": str(r.kind),
            "labels": {str(k): v for k, v in r.labels.items()}, "created": r.created.isoformat() if r.created else None}


def _train(args: argparse.Namespace, registry: Any) -> int:
    from voxlake.ai.train import train_phantom_organs
    from voxlake.cli.output import print_json

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    version, metrics = train_phantom_organs(args.phantoms, registry=registry, name=args.name, epochs=args.epochs,
                                            seed=args.seed, progress=say)
    if args.json:
        print_json({"name": args.name, "version": version, "metrics": metrics})
    else:
        print(f"registered {args.name}:{version}: mean Dice {metrics.get('mean_dice', float('nan')):.3f} on the "
              f"held-out phantoms")
    return 0


def _segment(args: argparse.Namespace, lake: Any, registry: Any) -> int:
    from voxlake.ai.segment import segment
    from voxlake.cli.output import print_json

    model = registry.load(args.model)
    bar: list[Any] = []

    def on_start(total: int) -> None:
        if not args.quiet and total > 0:
            from tqdm import tqdm

            bar.append(tqdm(total=total, unit="series", desc=f"segment {model.name}", file=sys.stderr,
                            dynamic_ncols=True))

    def progress(outcome: Any) -> None:
        if bar:
            bar[0].update(1)
        if outcome.status == "error" and not args.json:
            print(f"voxlake: series {outcome.SeriesInstanceUID}: {outcome.error_class}: {outcome.message}",
                  file=sys.stderr)

    try:
        summary = segment(lake, model=model, where=None if args.rules else args.where, rules=args.rules,
                          redo=args.redo, nifti=args.nifti, meshes=not args.no_meshes, on_start=on_start,
                          progress=progress)
    finally:
        for b in bar:
            b.close()
    if args.json:
        print_json(summary.to_dict())
    else:
        print(f"{summary.model}:{summary.model_version}: {summary.segmented} series segmented, "
              f"{summary.already_done} done before, {summary.errors} errors (in segment_errors), "
              f"{summary.seconds:.1f} s")
    return 0 if summary.errors == 0 else 1
