#!/usr/bin/env python
"""Active-learning benchmark: the champion's held-out Dice after 0, 2, 5 and 10 corrected phantom cases,
choosing the cases by ``uncertainty`` or by ``random``, and the seconds from a saved correction to a
promoted champion, on this machine's CPU.

Run by ``make bench``. In one run:

1. A deliberately weak ``phantom-organs`` (the reproducible recipe, few epochs on 3 phantoms) is the
   starting champion of two registries, one per strategy, so both start from the same weights.
2. A pool of ``--pool`` phantoms of another seed is ingested into two lakes (one per strategy); the
   held-out set is ``--holdout`` phantoms of a third seed, fixed for every fine-tune.
3. For each strategy, until 2, 5, then 10 cases are corrected: ``voxlake.ai.active.next_case`` picks
   the next series (``uncertainty``: the current champion's flip entropy), the phantom's true organ map
   is stored as a reader's correction (its truth SEG, written as a viewer would: Manufacturer OHIF),
   ingested, and at each checkpoint ``sync_labels`` then ``finetune_from_labels`` fine-tune the
   champion on every final label so far and promote the challenger only when its held-out Dice is
   higher. "Save to champion" is timed from the ingest of the last correction to the end of the
   fine-tune (sync, training, scoring, registering, the decision).

The bench reports; it never fails on a target. It writes ``docs/al_curve.png`` and the "## Active
learning" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common

REPO = common.REPO
SECTION = "## Active learning"
PLOT = REPO / "docs" / "al_curve.png"
DEFAULT_WORK = REPO / "bench" / ".work" / "al"
STEPS = (2, 5, 10)
SEEDS = {"weak": 11, "pool": 12, "holdout": 13}
PHANTOM = {"rows": 128, "columns": 128, "slices": (60, 110), "slice_thickness": (3.0, 5.0)}


def _phantoms(folder: Path, cases: int, seed: int) -> Path:
    from voxlake.synth.phantom import generate_phantoms

    marker = folder / "made.json"
    wanted = {"cases": cases, "seed": seed, **{k: list(v) if isinstance(v, tuple) else v for k, v in PHANTOM.items()}}
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        generate_phantoms(folder, cases=cases, seed=seed, workers=common.nproc(), **PHANTOM)
        marker.write_text(json.dumps(wanted))
    return folder


def _correction(case: Path, out: Path) -> Path:
    """The phantom's truth SEG as a reader's correction (a viewer's SEG is not the model's)."""
    import pydicom
    from pydicom.uid import generate_uid

    ds = pydicom.dcmread(case / "seg.dcm")
    ds.Manufacturer, ds.ContentCreatorName = "OHIF", "Bench^Reader"
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def run_strategy(strategy: str, work: Path, weak_files: dict[str, Path], labels: dict[int, str], pool: Path,
                 holdout: Path, epochs: int, steps: tuple[int, ...], say: Any) -> dict[str, Any]:
    import voxlake
    from voxlake.ai.active import next_case
    from voxlake.ai.finetune import finetune_from_labels
    from voxlake.ai.labels import sync_labels
    from voxlake.ai.registry import Registry

    root = work / strategy
    shutil.rmtree(root, ignore_errors=True)
    registry = Registry(root / "registry")
    version = registry.register("phantom-organs", weak_files, kind="network", labels=labels,
                                metadata={"recipe": "al_bench weak start"})
    registry.set_alias("phantom-organs", "champion", version)
    lake = voxlake.open(str(root / "lake"))
    by_series: dict[str, Path] = {}
    for case in sorted(pool.glob("case-*")):
        lake.ingest(str(case / "ct"), workers=0)
        import pydicom

        first = next(iter(sorted((case / "ct").glob("*.dcm"))))
        by_series[str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID)] = case
    points = []
    corrected: list[str] = []
    for target in (0, *steps):
        t_save = time.perf_counter()
        while len(corrected) < target:
            champion = registry.load("phantom-organs@champion")
            case = next_case(lake, strategy, model=champion if strategy == "uncertainty" else None,
                             seed=len(corrected), sample=len(by_series))
            t_save = time.perf_counter()
            lake.ingest(str(_correction(by_series[case.SeriesInstanceUID], root / "corrections" /
                                        str(len(corrected)))), workers=0)
            corrected.append(case.SeriesInstanceUID)
        if target == 0:
            result = None
        else:
            sync_labels(lake)
            result = finetune_from_labels(lake, registry, "phantom-organs", heldout=holdout, epochs=epochs,
                                          progress=None)
        seconds = time.perf_counter() - t_save
        dice = _champion_dice(registry, holdout) if result is None else (
            result.challenger_dice if result.promoted else result.champion_dice)
        points.append({"cases": target, "dice": dice, "promoted": None if result is None else result.promoted,
                       "save_to_champion_s": None if result is None else seconds,
                       "finetune_s": None if result is None else result.seconds})
        say(f"{strategy}: {target} corrected cases, champion held-out Dice {dice:.3f}"
            + ("" if result is None else f" ({'promoted' if result.promoted else 'kept'}, {seconds:.0f} s "
                                         f"from save to decision)"))
    return {"strategy": strategy, "points": points, "series": corrected}


def _champion_dice(registry: Any, holdout: Path) -> float:
    import statistics

    from voxlake.ai.train import dice_per_label, load_phantom_case

    model = registry.load("phantom-organs@champion")
    per_label: dict[int, list[float]] = {}
    for case in sorted(holdout.glob("case-*")):
        data = load_phantom_case(case)
        for value, d in dice_per_label(data.labels, model.predict(data.volume), sorted(model.labels)).items():
            per_label.setdefault(value, []).append(d)
    return statistics.mean(statistics.mean(v) for v in per_label.values())


def plot(results: list[dict[str, Any]], path: Path, steps: tuple[int, ...]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    for r in results:
        xs = [p["cases"] for p in r["points"]]
        ax.plot(xs, [p["dice"] for p in r["points"]], marker="o", label=r["strategy"])
    ax.set_xlabel("corrected phantom cases")
    ax.set_ylabel("champion mean Dice (held-out)")
    ax.set_xticks([0, *steps])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def section(info: dict[str, Any], results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [SECTION, "", "Written by `bench/al_bench.py` (`make bench`); rerun it to refresh this section.", "",
             f"- Date: {info['date']}", f"- Machine: {info['nproc']} CPUs ({info['cpu']}); GPU: none used",
             f"- voxlake: commit `{info['commit']}`; bench runtime {info['runtime_min']:.1f} min", "",
             "### Method", "",
             f"- Start: a deliberately weak `phantom-organs` ({args.weak_epochs} epochs on 3 phantoms of seed "
             f"{SEEDS['weak']}), the champion of two registries (one per strategy).",
             f"- Pool: {args.pool} phantoms of seed {SEEDS['pool']} ({PHANTOM['rows']}x{PHANTOM['columns']}, "
             f"{PHANTOM['slices'][0]}-{PHANTOM['slices'][1]} slices), ingested into one lake per strategy. "
             f"Held-out set: {args.holdout} phantoms of seed {SEEDS['holdout']}, fixed for every fine-tune.",
             "- Loop: `next_case` picks a series, its true organ map is stored as a reader's correction (a SEG "
             f"written as a viewer would), and at {', '.join(map(str, args.steps))} corrected cases `sync_labels` + "
             f"`finetune_from_labels` ({args.epochs} epochs on every final label so far) run; the challenger "
             "is promoted only when its held-out Dice is higher. The Dice shown is the champion's after the "
             "decision.",
             "- Save to champion: seconds from the ingest of the checkpoint's last correction to the decision "
             "(label sync, fine-tune, held-out scoring of the challenger, registering, the alias).", "",
             "### Held-out Dice of the champion", "", f"![champion Dice by corrected cases]({PLOT.name})", "",
             "| corrected cases | " + " | ".join(r["strategy"] for r in results) + " |",
             "|---:|" + "---:|" * len(results)]
    for i, target in enumerate((0, *args.steps)):
        cells = []
        for r in results:
            p = r["points"][i]
            mark = "" if p["promoted"] is None else (" (promoted)" if p["promoted"] else " (kept)")
            cells.append(f"{p['dice']:.3f}{mark}")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines += ["", "### Seconds from a saved correction to the champion decision (CPU)", "",
              "| corrected cases | " + " | ".join(r["strategy"] for r in results) + " |",
              "|---:|" + "---:|" * len(results)]
    for i, target in enumerate(args.steps, start=1):
        lines.append(f"| {target} | " + " | ".join(f"{r['points'][i]['save_to_champion_s']:.0f}" for r in results)
                     + " |")
    if info.get("foreign_share", 0) > 0.1:
        lines += ["", f"- Other processes kept the machine {info['foreign_share']:.0%} busy: times are pessimistic."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", type=int, default=14, help="phantoms to choose from (default 14)")
    p.add_argument("--holdout", type=int, default=6, help="held-out phantoms (default 6)")
    p.add_argument("--weak-epochs", type=int, default=15, help="epochs of the weak starting model (default 15)")
    p.add_argument("--epochs", type=int, default=10, help="epochs per fine-tune (default 10)")
    p.add_argument("--steps", type=lambda t: tuple(int(v) for v in t.split(",")), default=STEPS,
                   help="corrected-case checkpoints (default 2,5,10)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work/al)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = p.parse_args(argv)

    import tempfile

    import torch

    from voxlake.ai.registry import Registry
    from voxlake.ai.train import train_phantom_organs

    start, cpu0 = time.perf_counter(), common.busy_cpu_s()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    say = print
    weak = _phantoms(work / "weak-phantoms", 3, SEEDS["weak"])
    pool = _phantoms(work / "pool", args.pool, SEEDS["pool"])
    holdout = _phantoms(work / "holdout", args.holdout, SEEDS["holdout"])
    with tempfile.TemporaryDirectory(prefix="al-bench-") as tmp:
        scratch = Registry(Path(tmp) / "registry")
        version, _ = train_phantom_organs(weak, registry=scratch, epochs=args.weak_epochs, holdout=1, seed=0)
        weak_dir = scratch.artifacts("phantom-organs", version)
        files = {f.name: f for f in weak_dir.iterdir() if f.is_file()}
        labels = scratch.resolve(f"phantom-organs:{version}").labels
        say(f"weak start: phantom-organs trained {args.weak_epochs} epochs; torch threads {torch.get_num_threads()}")
        results = [run_strategy(s, work, files, labels, pool, holdout, args.epochs, args.steps, say)
                   for s in ("random", "uncertainty")]
    runtime = time.perf_counter() - start
    info = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "nproc": common.nproc(),
            "cpu": common.cpu_model(), "commit": common.git("rev-parse", "--short", "HEAD"),
            "runtime_min": runtime / 60,
            "foreign_share": max(0.0, (common.busy_cpu_s() - cpu0 - _own_cpu()) / (runtime * common.nproc()))}
    (work / "results.json").write_text(json.dumps({"info": info, "results": results}, indent=1, default=str))
    if not args.no_docs:
        plot(results, PLOT, args.steps)
        common.write_section(common.DOCS, SECTION, section(info, results, args))
        say(f"wrote {PLOT.relative_to(REPO)} and the '{SECTION}' section of docs/benchmarks.md")
    return 0


def _own_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())
