#!/usr/bin/env python
"""AI benchmark: seconds from a series UID to its SEG and statistics in the lake, against the model's own
forward pass on the same volume; and the Dice of ``phantom-organs`` on held-out phantoms.

Run by ``make bench``. In one run:

(a) ``ct-tissue`` on the real 134-slice CT and ``phantom-organs`` on a 300-slice synthetic phantom, each
    ingested into a fresh lake: ``voxlake.ai.segment.segment_series`` (meshes off) timed per step —
    load (lake rows → volume), predict (the model on the volume: for ``phantom-organs`` the network's
    sliding-window forward pass with its resampling), record (SEG built and ingested, ``segment_stats``
    appended) — after one warm-up run (imports, caches), median of ``--reps``. voxlake's overhead is
    (load + record) / total. Meshes are timed once apart (step 2).
(b) ``phantom-organs`` (the registry's champion; trained here with the reproducible recipe when the
    registry has none) on ``--holdout`` phantoms of a seed never trained on: Dice per organ against the
    phantoms' own label maps.
(c) With CUDA, (a)'s predict for ``phantom-organs`` on the GPU as well.

The bench reports; it never fails on a target. It prints tables and rewrites the "## AI" section of
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_bench as ib  # the real CT series and the machine description

REPO = common.REPO
DOCS = common.DOCS
SECTION = "## AI"
DEFAULT_WORK = REPO / "bench" / ".work"
TARGET_OVERHEAD = 0.25
TARGET_DICE = 0.90
HOLDOUT_SEED = 9_000  # phantoms of this seed are never trained on
TRAIN_SEED = 0


def _lake_with(work: Path, name: str, files: list[Path]) -> tuple[Any, str]:
    import voxlake

    root = work / name
    shutil.rmtree(root, ignore_errors=True)
    lake = voxlake.open(str(root / "lake"))
    lake.ingest(str(files[0].parent), workers=0)
    [(series,)] = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances WHERE Modality = 'CT'").fetchall()
    return lake, series


def time_series(lake: Any, series: str, model: Any, reps: int) -> dict[str, Any]:
    from voxlake.ai.segment import segment_series

    segment_series(lake, series, model, meshes=False)  # warm-up: imports, page cache, first-call costs
    runs = [segment_series(lake, series, model, meshes=False).timings for _ in range(reps)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    total = sum(med.values())
    return {"steps": med, "total": total, "overhead": (total - med["predict"]) / total,
            "runs": runs}


def time_meshes(lake: Any, series: str, model: Any) -> float:
    from voxlake.ai.segment import segment_series

    t0 = time.perf_counter()
    segment_series(lake, series, model, meshes=True)
    return time.perf_counter() - t0


def phantom_organs(registry: Any, work: Path, epochs: int, cases: int, say: Any) -> tuple[Any, dict[str, Any]]:
    """The champion, trained here first when the registry has none."""
    from voxlake.ai.registry import ModelNotFoundError

    try:
        return registry.load("phantom-organs@champion"), {"trained_here": False}
    except ModelNotFoundError:
        pass
    from voxlake.ai.train import train_phantom_organs
    from voxlake.synth.phantom import generate_phantoms

    folder = work / "train-phantoms"
    shutil.rmtree(folder, ignore_errors=True)
    say(f"training phantom-organs: {cases} phantoms, {epochs} epochs")
    generate_phantoms(folder, cases=cases, seed=TRAIN_SEED, rows=256, columns=256, workers=common.nproc())
    t0 = time.perf_counter()
    version, metrics = train_phantom_organs(folder, registry=registry, epochs=epochs, seed=TRAIN_SEED, progress=say)
    return registry.load(f"phantom-organs:{version}"), {"trained_here": True, "version": version,
                                                         "train_s": time.perf_counter() - t0, "metrics": metrics}


def holdout_dice(model: Any, work: Path, n: int) -> dict[str, Any]:
    from voxlake.ai.train import dice_per_label, load_phantom_case
    from voxlake.synth.phantom import generate_phantoms

    folder = work / "holdout-phantoms"
    marker = folder / "made.json"
    wanted = {"seed": HOLDOUT_SEED, "cases": n}
    if not (marker.exists() and json.loads(marker.read_text()) == wanted):
        shutil.rmtree(folder, ignore_errors=True)
        generate_phantoms(folder, cases=n, seed=HOLDOUT_SEED, rows=256, columns=256, workers=common.nproc())
        marker.write_text(json.dumps(wanted))
    per_case = []
    for case in sorted(folder.glob("case-*")):
        data = load_phantom_case(case)
        prediction = model.predict(data.volume)
        present = sorted(int(v) for v in set(data.labels.ravel().tolist()) - {0} if v in model.labels)
        per_case.append(dice_per_label(data.labels, prediction, present))
    organs: dict[str, list[float]] = {}
    for scores in per_case:
        for value, dice in scores.items():
            organs.setdefault(model.labels[value], []).append(dice)
    means = {name: statistics.mean(v) for name, v in organs.items()}
    return {"cases": len(per_case), "per_organ": means, "mean": statistics.mean(means.values()) if means else None}


def section(info: dict[str, Any], res: dict[str, Any]) -> str:
    lines = [SECTION, "", "Written by `bench/ai_bench.py` (`make bench`); rerun it to refresh this section.", "",
             f"- Date: {info['date']}",
             f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']:.1f} GiB RAM; Python {info['python']}, "
             f"torch {info['torch']}, monai {info['monai']}, highdicom {info['highdicom']}; GPU: {info['gpu']}",
             f"- voxlake: commit `{info['commit']}`", f"- Bench runtime: {res['total_s'] / 60:.1f} min", "",
             "### Method", "",
             "- Each model's series is ingested into a fresh lake; `voxlake.ai.segment.segment_series(lake, series, "
             "model, meshes=False)` runs once to warm up, then "
             f"{res['reps']} times: load (the series read from the lake's index: geometry and rescale from its `instances` rows, "
             "pixels from each file at its indexed offset, sorted and rescaled: `voxlake.ai.volume.load_series`), "
             "predict (the model alone), record "
             "(DICOM SEG built with highdicom as the union of its segments, each segment's frames written from the plane items: "
             "`voxlake.ai.seg.segmentation_file`, byte for byte highdicom's own SEG; landed and ingested into the lake, "
             "`segment_stats` appended). Medians. "
             "Overhead = (load + record) / total. Meshes (STL per label, marching cubes at step 2) are timed once "
             "apart; they are optional.",
             "- `ct-tissue`: thresholds and morphology, no network. `phantom-organs`: the registry's champion "
             "(a small MONAI UNet at 3 mm; sliding window; resampling there and back is part of predict).",
             f"- Dice: `phantom-organs` on {res['dice']['cases'] if res.get('dice') else '—'} phantoms of seed "
             f"{HOLDOUT_SEED} (never trained on), each organ against the phantom's own label map, mean over the cases "
             "that hold it; the mean over organs is the headline.", "",
             "### Series UID → SEG and statistics in the lake", "",
             "| model | series | load s | predict s | record s | total s | overhead | meshes s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for row in res["timing"]:
        s = row["steps"]
        lines.append(f"| {row['model']} | {row['series']} | {s['load']:.2f} | {s['predict']:.2f} | {s['record']:.2f} | "
                     f"{row['total']:.2f} | {row['overhead']:.0%} | {row.get('meshes_s', float('nan')):.2f} |")
    if res.get("dice"):
        lines += ["", "### Dice of phantom-organs on held-out phantoms", "", "| organ | Dice |", "|---|---:|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in sorted(res["dice"]["per_organ"].items())]
        lines.append(f"| **mean** | **{res['dice']['mean']:.3f}** |")
        if res.get("training", {}).get("trained_here"):
            t = res["training"]
            lines += ["", f"- trained here: version {t['version']}, {t['train_s'] / 60:.1f} min, "
                      f"held-out Dice during training {t['metrics'].get('mean_dice', float('nan')):.3f}"]
    lines += ["", "### Targets", "", "| target | measured | |", "|---|---|---|"]
    for t, m, ok in targets(res):
        lines.append(f"| {t} | {m} | {common.met(ok)} |")
    if res.get("foreign_share", 0) > 0.1:
        lines += ["", "### Notes", "", f"- other processes kept the machine {res['foreign_share']:.0%} busy"]
    return "\n".join(lines) + "\n"


def targets(res: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    out = []
    for row in res["timing"]:
        out.append((f"voxlake's overhead under {TARGET_OVERHEAD:.0%} of the total ({row['model']}, {row['series']})",
                    f"{row['overhead']:.0%}", row["overhead"] < TARGET_OVERHEAD))
    dice = res.get("dice")
    out.append((f"phantom-organs mean Dice ≥ {TARGET_DICE} on held-out phantoms",
                f"{dice['mean']:.3f} over {dice['cases']} phantoms" if dice else "not measured",
                dice["mean"] >= TARGET_DICE if dice else None))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="timed runs per model (default 5)")
    p.add_argument("--holdout", type=int, default=10, help="held-out phantoms for Dice (default 10)")
    p.add_argument("--train-cases", type=int, default=24, help="phantoms to train on when there is no champion")
    p.add_argument("--epochs", type=int, default=50, help="epochs when training here (default 50)")
    p.add_argument("--registry", type=Path, default=None, help="model registry (default bench/.work/ai/registry)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--idle-wait", type=float, default=120.0, help="wait up to this long for an idle machine")
    args = p.parse_args(argv)

    import highdicom
    import monai
    import torch

    from voxlake.ai.registry import Registry
    from voxlake.ai.tissue import CTTissueModel
    from voxlake.synth.phantom import generate_phantoms

    t_start = time.perf_counter()
    work = args.work.resolve() / "ai"
    work.mkdir(parents=True, exist_ok=True)
    registry = Registry(args.registry or work / "registry")
    info = ib.machine() | {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "torch": torch.__version__,
                           "monai": monai.__version__, "highdicom": highdicom.__version__,
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"}

    def say(message: str) -> None:
        print(message, flush=True)

    res: dict[str, Any] = {"reps": args.reps, "timing": []}
    model, res["training"] = phantom_organs(registry, work, args.epochs, args.train_cases, say)

    ct_files = sorted(ib.SOURCE_SERIES.glob("*.dcm"))
    phantom_dir = work / "phantom-300"
    if not (phantom_dir / "case-0000" / "labels.nii.gz").exists():
        shutil.rmtree(phantom_dir, ignore_errors=True)
        generate_phantoms(phantom_dir, cases=1, seed=HOLDOUT_SEED + 1, slices=300, slice_thickness=1.5)
    phantom_files = sorted((phantom_dir / "case-0000" / "ct").glob("*.dcm"))

    busy0, wall0, own0 = common.busy_cpu_s(), time.perf_counter(), time.process_time()
    for label, files, the_model in (("real CT, 134 slices", ct_files, CTTissueModel()),
                                    ("phantom, 300 slices", phantom_files, model)):
        common.wait_for_idle(args.idle_wait)
        lake, series = _lake_with(work, the_model.name, files)
        say(f"{the_model.name} on the {label}")
        row = time_series(lake, series, the_model, args.reps) | {"model": f"{the_model.name}:{the_model.version}",
                                                                    "series": label}
        row["meshes_s"] = time_meshes(lake, series, the_model)
        res["timing"].append(row)
        say(f"  total {row['total']:.2f} s, predict {row['steps']['predict']:.2f} s, overhead {row['overhead']:.0%}")
    own = time.process_time() - own0
    res["foreign_share"] = max(0.0, common.busy_cpu_s() - busy0 - own) / ((time.perf_counter() - wall0) * common.nproc())
    say(f"Dice on {args.holdout} held-out phantoms")
    res["dice"] = holdout_dice(model, work, args.holdout)
    say(f"  mean Dice {res['dice']['mean']:.3f}")
    res["total_s"] = time.perf_counter() - t_start
    for t, m, ok in targets(res):
        print(f"target: {t}: {m} — {common.met(ok)}")
    (work / "results.json").write_text(json.dumps({"machine": info, "results": res}, indent=2, default=str) + "\n")
    if not args.no_docs:
        common.write_section(DOCS, SECTION, section(info, res))
        print(f"wrote the {SECTION!r} section of {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
