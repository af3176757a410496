"""``voxlake models``, ``voxlake train``, ``voxlake segment`` and ``voxlake labels``: thin layers over
:mod:`voxlake.ai`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

COMMANDS = ("models", "train", "segment", "labels")


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

    t = sub.add_parser("train", help="train phantom-organs on phantoms, or fine-tune a model on the lake's corrections",
                       description="--phantoms DIR trains phantom-organs on synthetic phantoms and registers the "
                       "version. --from-labels fine-tunes the champion of --model on the final labels of --lake "
                       "(readers' corrections), scores it on a fixed held-out set of phantom cases (--heldout, "
                       "needed the first time and fixed from then on), registers it as challenger and promotes "
                       "it to champion only when its held-out Dice is higher.")
    source = t.add_mutually_exclusive_group(required=True)
    source.add_argument("--phantoms", help="folder written by 'voxlake synth phantoms'")
    source.add_argument("--from-labels", action="store_true",
                        help="fine-tune --model's champion on the final labels of --lake")
    t.add_argument("--name", default=None, help="--phantoms: model name (default phantom-organs)")
    t.add_argument("--lake", default=None, help="--from-labels: lake folder or URL")
    t.add_argument("--model", default=None, help="--from-labels: the model whose champion is fine-tuned")
    t.add_argument("--heldout", default=None, metavar="DIR",
                   help="--from-labels: phantom cases the challenger is scored on (the first time; then fixed)")
    t.add_argument("--epochs", type=int, default=None, help="epochs (default 40; --from-labels 20)")
    t.add_argument("--seed", type=int, default=0, help="seed: the same seed and data give the same model")
    t.add_argument("--registry", default=None, help=registry_help)
    t.add_argument("--json", action="store_true", help="print the result as one JSON object")
    t.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)

    s = sub.add_parser("segment", help="segment series of a lake: DICOM SEG, segment_stats and meshes written back",
                       description="Series are chosen by --where (SQL over the instances view) or --rules (a JSON "
                       "rules file); those the model version has done already are skipped. One failing series "
                       "is recorded in segment_errors and the batch goes on. With --auto RULES.json it runs "
                       "beside 'voxlake ingest --watch': each series the rules select is segmented once it is "
                       "complete (no new instance for --quiet-seconds), until Ctrl-C.")
    s.add_argument("--lake", required=True, help="lake folder or URL")
    s.add_argument("--model", default="ct-tissue", help="NAME, NAME@ALIAS or NAME:VERSION (default ct-tissue)")
    choose = s.add_mutually_exclusive_group()
    choose.add_argument("--where", default="Modality = 'CT'", help="SQL condition (default: Modality = 'CT')")
    choose.add_argument("--rules", default=None, help="series-selection rules (JSON file)")
    choose.add_argument("--auto", default=None, metavar="RULES.json",
                        help="on arrival: keep running, segment each series these rules select once complete")
    s.add_argument("--quiet-seconds", type=float, default=None, metavar="N",
                   help="--auto: a series is complete when no instance arrived for N seconds (default 30)")
    s.add_argument("--interval", type=float, default=None, metavar="S",
                   help="--auto: seconds between looks at the lake (default 5)")
    s.add_argument("--once", action="store_true", help="--auto: one pass over the lake, then exit")
    s.add_argument("--engine", choices=["local", "spark"], default="local",
                   help="local (default) or spark: series computed in Spark tasks, committed by this process")
    s.add_argument("--spark-master", default=None,
                   help="Spark master URL for --engine spark (default local[*])")
    s.add_argument("--redo", action="store_true", help="segment again series this model version has done")
    s.add_argument("--nifti", action="store_true", help="also write the label map as NIfTI")
    s.add_argument("--no-meshes", action="store_true", help="no STL surface meshes")
    s.add_argument("--registry", default=None, help=registry_help)
    s.add_argument("--json", action="store_true",
                   help="print the summary as one JSON object (--auto: one object per series, one per line)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    _add_labels(sub, registry_help)


def _add_labels(sub: Any, registry_help: str) -> None:
    lab = sub.add_parser("labels", help="labels from corrected SEGs, and which series to label next")
    lsub = lab.add_subparsers(dest="labels_command", required=True, metavar="ACTION")
    sync = lsub.add_parser("sync", help="turn the lake's new SEGs into rows of the labels table "
                           "(original: the model's; final: a reader's correction, with Dice per label)")
    nxt = lsub.add_parser("next", help="the series to label next: first, random or uncertainty")
    nxt.add_argument("--strategy", choices=["first", "random", "uncertainty"], default="random",
                     help="first (oldest unlabelled), random (away from recently served; default) or "
                     "uncertainty (the model's flip-averaged entropy; needs --model)")
    nxt.add_argument("--model", default=None, help="for uncertainty: NAME, NAME@ALIAS or NAME:VERSION")
    nxt.add_argument("--modality", default="CT", help="candidates' Modality (default CT)")
    nxt.add_argument("--registry", default=None, help=registry_help)
    for p in (sync, nxt):
        p.add_argument("--lake", required=True, help="lake folder or URL")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _labels(args: argparse.Namespace) -> int:
    import re

    import voxlake
    from voxlake.cli.output import print_json
    from voxlake.errors import InvalidArgumentError

    lake = voxlake.open(args.lake)
    lake.versions()  # a missing lake is one clear error
    if args.labels_command == "sync":
        from voxlake.ai.labels import sync_labels

        result = sync_labels(lake)
        for error in result.errors:
            print(f"voxlake: {error['reason']}", file=sys.stderr)
        if args.json:
            print_json(result.summary())
        else:
            print(f"{len(result.synced)} SEGs synced into labels ({len(result.rows)} rows), "
                  f"{len(result.errors)} could not be read")
        return 1 if result.errors else 0
    from voxlake.ai.active import next_case

    if not re.fullmatch(r"[A-Z]{1,16}", args.modality):
        raise InvalidArgumentError(f"--modality must be a DICOM modality such as CT; got {args.modality!r}")
    registry = None
    if args.model is not None:
        from voxlake.ai.registry import Registry

        registry = Registry(args.registry)
    case = next_case(lake, args.strategy, where=f"Modality = '{args.modality}'", model=args.model,
                     registry=registry)
    if args.json:
        print_json(case.to_dict())
    else:
        score = f" (uncertainty {case.score:.4f} by {case.model}:{case.model_version})" if case.score is not None else ""
        print(f"label next: series {case.SeriesInstanceUID} of study {case.StudyInstanceUID}, "
              f"{case.strategy} among {case.candidates}{score}")
    return 0


def run(args: argparse.Namespace) -> int:
    from voxlake.ai.registry import Registry

    if args.command == "labels":
        return _labels(args)

    if args.command == "segment":
        import voxlake

        lake = voxlake.open(args.lake)
        if args.auto is not None:
            if args.engine != "local" or args.spark_master is not None:
                from voxlake.errors import InvalidArgumentError

                raise InvalidArgumentError("--engine spark runs a batch (--where or --rules), not --auto")
            return _auto(args, lake)
        if args.quiet_seconds is not None or args.interval is not None or args.once:
            from voxlake.errors import InvalidArgumentError

            raise InvalidArgumentError("--quiet-seconds, --interval and --once go with --auto RULES.json")
        if args.spark_master is not None and args.engine != "spark":
            from voxlake.errors import InvalidArgumentError

            raise InvalidArgumentError("--spark-master goes with --engine spark")
        lake.versions()  # a missing lake is one clear error, before any model or registry opens
        return _segment(args, lake, Registry(args.registry))
    if args.command == "train":
        _check_train(args)
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
    from voxlake.cli.output import print_json

    def say(message: str) -> None:
        if not args.json:
            print(message, file=sys.stderr, flush=True)

    if args.from_labels:
        return _finetune(args, registry, say)
    from voxlake.ai.train import train_phantom_organs

    name = args.name or "phantom-organs"
    version, metrics = train_phantom_organs(args.phantoms, registry=registry, name=name,
                                            epochs=40 if args.epochs is None else args.epochs,
                                            seed=args.seed, progress=say)
    if args.json:
        print_json({"name": name, "version": version, "metrics": metrics})
    else:
        print(f"registered {name}:{version}: mean Dice {metrics.get('mean_dice', float('nan')):.3f} on the "
              f"held-out phantoms")
    return 0


def _check_train(args: argparse.Namespace) -> None:
    """Options of the other form of ``train`` are one clear error, before the registry opens."""
    from voxlake.errors import InvalidArgumentError

    if args.from_labels:
        if args.name is not None:
            raise InvalidArgumentError("--name goes with --phantoms; --from-labels takes --model NAME")
        missing = [flag for flag, value in (("--lake", args.lake), ("--model", args.model)) if not value]
        if missing:
            raise InvalidArgumentError(f"--from-labels needs {' and '.join(missing)} "
                                       "(voxlake train --from-labels --lake LAKE --model NAME)")
        return
    given = [flag for flag, value in (("--lake", args.lake), ("--model", args.model), ("--heldout", args.heldout))
             if value is not None]
    if given:
        raise InvalidArgumentError(f"{', '.join(given)} go with --from-labels, not --phantoms")


def _finetune(args: argparse.Namespace, registry: Any, say: Any) -> int:
    import voxlake
    from voxlake.ai.finetune import finetune_from_labels
    from voxlake.cli.output import print_json

    lake = voxlake.open(args.lake)
    lake.versions()  # a missing lake is one clear error
    result = finetune_from_labels(lake, registry, args.model, heldout=args.heldout,
                                  epochs=20 if args.epochs is None else args.epochs, seed=args.seed, progress=say)
    if args.json:
        print_json(result.to_dict())
    else:
        print(result.summary())
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
                          redo=args.redo, nifti=args.nifti, meshes=not args.no_meshes, engine=args.engine,
                          spark_master=args.spark_master, on_start=on_start, progress=progress)
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


def _auto(args: argparse.Namespace, lake: Any) -> int:
    """``segment --auto``: one line per series (one JSON object with ``--json``) as it is done."""
    from voxlake.ai.auto import outcome_dict, watch
    from voxlake.ai.registry import Registry
    from voxlake.ai.rules import load_rules
    from voxlake.cli.output import print_json
    from voxlake.errors import InvalidArgumentError

    if args.redo:
        raise InvalidArgumentError("--redo does not go with --auto (it would segment every series at every pass)")
    quiet = 30.0 if args.quiet_seconds is None else args.quiet_seconds
    interval = 5.0 if args.interval is None else args.interval
    rules = load_rules(args.auto)  # a bad rules file is one clear error before anything starts
    if args.once:
        lake.versions()  # a missing lake is one clear error
    elif not lake.exists():
        print(f"voxlake: no lake at {lake.uri} yet; waiting for the first ingest", file=sys.stderr, flush=True)
    registry = Registry(args.registry)

    def on_model(model: Any) -> None:
        print(f"voxlake: segmenting series of {args.auto} with {model.name}:{model.version} once complete "
              f"(no new instance for {quiet:g} s)" + ("" if args.once else "; Ctrl-C to stop"),
              file=sys.stderr, flush=True)

    def progress(outcome: Any, model: Any) -> None:
        if args.json:
            print_json(outcome_dict(outcome, model.name, str(model.version)))
        elif outcome.status == "error":
            print(f"failed {outcome.SeriesInstanceUID} with {model.name}:{model.version}: "
                  f"{outcome.error_class}: {outcome.message}")
        else:
            volumes = ", ".join(f"{k} {v:.0f} ml" for k, v in outcome.volumes_ml.items())
            print(f"segmented {outcome.SeriesInstanceUID} with {model.name}:{model.version} in "
                  f"{sum(outcome.timings.values()):.1f} s: SEG {outcome.SEG}" + (f" ({volumes})" if volumes else ""))
        sys.stdout.flush()

    summary = watch(lake, rules, args.model, quiet_seconds=quiet, interval=interval, once=args.once,
                    progress=progress, on_model=on_model, registry=registry, nifti=args.nifti,
                    meshes=not args.no_meshes)
    counts = f"{summary.segmented} series segmented, {summary.errors} errors (in segment_errors)"
    if args.once:
        if args.json:
            print_json({k: v for k, v in summary.to_dict().items() if k != "series"})
        else:
            print(f"{', '.join(summary.versions)}: {counts}, {summary.seconds:.1f} s")
        return 0 if summary.errors == 0 else 1
    print(f"voxlake: stopped after {summary.passes} passes: {counts}", file=sys.stderr, flush=True)
    return 0
