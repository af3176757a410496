#!/usr/bin/env python
"""Synth scale benchmark: how fast ``generate_scale`` writes a header-realistic archive.

Run by ``make bench``. It writes ``--instances`` files (default 1,000,000) into a fresh folder under
``--work`` (default bench/.work/scale) from a template folder (``--from``; default: the real
134-slice CT series and pydicom's test files, side by side), in a subprocess, and measures:

- files/s: files over the subprocess's wall time (start to exit: imports, reading the templates,
  planning and writing included), and over the time until ``sync`` has put every file on disk;
- MB written (file sizes) and disk used (allocated blocks);
- peak RSS: the largest summed RSS of the subprocess and all its descendants (forkserver and
  workers), sampled every 0.1 s with psutil; CPU seconds of all of them; other load on the machine.

The output is deleted afterwards (``--keep`` keeps it). The bench reports; it never fails on a
target. It prints a summary and rewrites the "## Synth scale" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import _common as common  # shared sampling, idle wait, machine facts, docs section

REPO = common.REPO
SHARED = REPO.parent / "shared" / "data"
DEFAULT_SOURCES = (SHARED / "pancreatic-ct-cbct-seg_pyvista" / "series", SHARED / "pydicom" / "test_files")
DEFAULT_WORK = REPO / "bench" / ".work" / "scale"
DOCS = common.DOCS
SECTION = "## Synth scale"
TARGET_FPS = 2000.0
FOREIGN_WARN = 0.05  # share of the machine other processes may use during a run before it is noted



# --- the run, in its own process ------------------------------------------------------------------


def scale_run(out: str, source: str, instances: int, seed: int, workers: int | None, pixels: str) -> int:
    """Write the archive; print one JSON line with the result and when each 5 % was reached."""
    from voxlake.synth.scale import generate_scale

    t0 = time.perf_counter()
    marks: list[tuple[int, float]] = []
    done = 0
    step = max(1, instances // 20)

    def progress(n: int) -> None:
        nonlocal done
        before, done = done, done + n
        if done // step > before // step:
            marks.append((done, round(time.perf_counter() - t0, 3)))
            print(f"  {done:,} files, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    result = generate_scale(
        out, instances=instances, source=source, seed=seed, pixels=pixels, workers=workers, progress=progress
    )
    data = {k: v for k, v in vars(result).items() if k != "skipped"}
    data["skipped"] = len(result.skipped)
    data["marks"] = marks
    print(json.dumps(data))
    return 0


# --- measuring ------------------------------------------------------------------------------------


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak summed RSS of its process tree, CPU, exit status, output."""
    import psutil

    busy0 = common.busy_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=None, text=True, cwd=REPO)
    ps = psutil.Process(proc.pid)
    peak = 0
    cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, common.tree_sample(ps, cpu))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    ours = sum(cpu.values())
    foreign = max(0.0, common.busy_cpu_s() - busy0 - ours)
    return {
        "rc": proc.returncode,
        "wall": wall,
        "peak_mib": peak / 2**20,
        "stdout": out,
        "cpu_s": ours,
        "foreign_cpu_s": foreign,
    }


def disk_usage(folder: Path) -> tuple[int, int, int]:
    """(files, bytes, bytes allocated on disk) under ``folder``, folders' own blocks included."""
    files = size = allocated = 0
    stack = [str(folder)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                allocated += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    files += 1
                    size += st.st_size
    return files, size, allocated


def machine(work: Path) -> dict[str, Any]:
    import psutil
    import pydicom

    commit = common.git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(common.git("status", "--porcelain", "--", "voxlake"))
    fs = "unknown"
    with contextlib.suppress(OSError):
        best = ""
        for part in psutil.disk_partitions(all=True):
            if str(work).startswith(part.mountpoint) and len(part.mountpoint) > len(best):
                best, fs = part.mountpoint, part.fstype
    return {
        "nproc": common.nproc(),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "cpu": common.cpu_model(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "commit": commit + (" (with uncommitted changes under voxlake/)" if dirty else ""),
        "kernel": platform.release(),
        "fs": fs,
    }


# --- the report -----------------------------------------------------------------------------------


def section(info: dict[str, Any], run: dict[str, Any]) -> str:
    r = run["result"]
    files = r["files"]
    fps = files / run["wall"]
    fps_sync = files / (run["wall"] + run["sync_s"])
    curve = ", ".join(f"{n / 1000:,.0f}k at {t:.0f} s" for n, t in r["marks"][3::4])
    met = "met" if fps >= TARGET_FPS else "NOT met"
    lines = [
        SECTION,
        "",
        "Written by `bench/synth_scale_bench.py` (`make bench`); rerun it to refresh this section.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']:.1f} GiB RAM, "
        f"Linux {info['kernel']}, {info['fs']} file system; "
        f"Python {info['python']}, pydicom {info['pydicom']}",
        f"- voxlake: commit `{info['commit']}`",
        f"- Command: `generate_scale(OUT, instances={files:,}, source=TEMPLATES, seed={run['seed']}, "
        f'pixels="{r["pixels"]}", workers={run["workers_label"]})`, what `voxlake synth scale OUT '
        f"--instances {files} --from TEMPLATES` runs",
        f"- Templates: {run['source_label']}: {r['template_instances']:,} usable instances in "
        f"{r['template_series']:,} series of {r['template_studies']:,} studies ({r['skipped']:,} files "
        "left out: big endian, duplicates, not DICOM)",
        f"- Bench runtime: {run['total_s'] / 60:.1f} min in all (deleting the output included)",
        "",
        "### Method",
        "",
        "- `generate_scale` runs in its own subprocess into a fresh, empty folder on the local disk; "
        "files/s = files / the subprocess's wall time from start to exit (interpreter start-up, imports, "
        "reading and serialising the templates, planning and writing all included). The files are then "
        "in the page cache, most not yet on disk: the `sync` column is the `os.sync()` that follows, and "
        "files/s after sync counts it too.",
        '- header-only: `pixels="none"`, files without Pixel Data (what '
        "`dcmread(stop_before_pixels=True)` sees).",
        "- MB written: the files' sizes; disk used: the blocks the file system allocated for them and "
        "their folders.",
        "- peak RSS: the largest sum of the resident set sizes of the subprocess and all its descendants "
        "(forkserver and workers), sampled every 0.1 s with psutil; shared pages count once per process.",
        "- CPU s: user + system CPU seconds of the subprocess and its descendants; other load: CPU time "
        "other processes used during the run, as a share of all the machine's CPUs (the bench first "
        f"waits up to `--idle-wait` for the machine to go idle and notes a run where others took over "
        f"{FOREIGN_WARN:.0%}).",
        "",
        "### Results",
        "",
        "| files | patients | studies | series | wall s | files/s | sync s | files/s after sync "
        "| MB written | disk used GiB | peak RSS MiB | CPU s | other load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {files:,} | {r['patients']:,} | {r['studies']:,} | {r['series']:,} | {run['wall']:,.1f} "
        f"| {fps:,.0f} | {run['sync_s']:,.1f} | {fps_sync:,.0f} | {r['bytes'] / 1e6:,.0f} "
        f"| {run['allocated'] / 2**30:,.2f} | {run['peak_mib']:,.0f} | {run['cpu_s']:,.0f} "
        f"| {run['foreign_share']:.0%} |",
        "",
        f"Progress (files written by then, from the subprocess's start): {curve}.",
        "",
        "### Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
        f"| at least {TARGET_FPS:,.0f} files/s | {fps:,.0f} files/s ({files:,} files) | {met} |",
    ]
    if run["note"]:
        lines += ["", "### Notes", "", f"- {run['note']}"]
    return "\n".join(lines) + "\n"


# --- main -----------------------------------------------------------------------------------------


def _templates(work: Path, source: Path | None) -> tuple[Path, str]:
    """The template folder and how the report names it."""
    if source is not None:
        return source.resolve(), f"`{source}`"
    missing = [str(p) for p in DEFAULT_SOURCES if not p.is_dir()]
    if missing:
        sys.exit(f"synth_scale_bench: template data missing: {', '.join(missing)} (or give --from FOLDER)")
    folder = work / "templates"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for p in DEFAULT_SOURCES:
        (folder / p.parent.name).symlink_to(p, target_is_directory=True)
    return folder, "the real 134-slice CT series (pancreatic-ct-cbct-seg) and pydicom's test files"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--instances", type=int, default=1_000_000, help="files to write (default 1,000,000)")
    p.add_argument(
        "--from", dest="source", type=Path, help="template folder (default: CT series + pydicom files)"
    )
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work/scale)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="keep the output (default: delete it)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        help="before the run, wait up to this many seconds for the machine to go idle (default 120)",
    )
    p.add_argument(
        "--scale-run", nargs=5, metavar=("OUT", "SOURCE", "N", "SEED", "WORKERS"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.scale_run:
        out, source, n, seed, workers = args.scale_run
        return scale_run(
            out, source, int(n), int(seed), None if workers == "default" else int(workers), "none"
        )

    t_start = time.perf_counter()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = machine(work)
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    source, source_label = _templates(work, args.source)
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    free = shutil.disk_usage(work).free
    need = args.instances * 8192  # header-only files take a block or two each
    print(f"free disk {free / 2**30:.1f} GiB; the archive needs roughly {need / 2**30:.1f} GiB", flush=True)
    if free < need * 1.5:
        sys.exit(f"synth_scale_bench: not enough free disk under {work} for {args.instances:,} files")
    os.sync()
    waited = common.wait_for_idle(args.idle_wait)
    workers = "default" if args.workers is None else str(args.workers)
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--scale-run",
        str(out),
        str(source),
        str(args.instances),
        str(args.seed),
        workers,
    ]
    print(
        f"writing {args.instances:,} files to {out}"
        + (f" (waited {waited:.0f} s for the machine to go idle)" if waited >= 5 else ""),
        flush=True,
    )
    m = measure(cmd)
    if m["rc"] != 0:
        sys.exit(f"synth_scale_bench: generate_scale failed with exit status {m['rc']}")
    result = json.loads(m["stdout"].strip().splitlines()[-1])
    t_sync = time.perf_counter()
    os.sync()
    sync_s = time.perf_counter() - t_sync
    files, size, allocated = disk_usage(out)
    note = ""
    if files != result["files"] or files != args.instances:
        note = f"found {files:,} files on disk; generate_scale reported {result['files']:,}"
    foreign_share = m["foreign_cpu_s"] / (m["wall"] * common.nproc())
    if foreign_share > FOREIGN_WARN:
        busy = (
            f"other processes kept the machine {foreign_share:.0%} busy during the run "
            f"({m['foreign_cpu_s']:.0f} CPU s): the figures are pessimistic"
        )
        note = f"{note}; {busy}" if note else busy
    if not args.keep:
        print(f"deleting {out}", flush=True)
        shutil.rmtree(out)
    run = {
        "result": result,
        "wall": m["wall"],
        "sync_s": sync_s,
        "allocated": allocated,
        "bytes": size,
        "peak_mib": m["peak_mib"],
        "cpu_s": m["cpu_s"],
        "foreign_share": foreign_share,
        "note": note,
        "seed": args.seed,
        "workers_label": "None (all cores)" if args.workers is None else args.workers,
        "source_label": source_label,
        "total_s": time.perf_counter() - t_start,
    }
    fps = result["files"] / m["wall"]
    print(
        f"{result['files']:,} files in {m['wall']:.1f} s: {fps:,.0f} files/s; sync {sync_s:.1f} s; "
        f"{size / 1e6:,.0f} MB written, {allocated / 2**30:.2f} GiB on disk; "
        f"peak RSS {m['peak_mib']:.0f} MiB; "
        f"CPU {m['cpu_s']:.0f} s; other load {foreign_share:.0%}" + (f" — {note}" if note else "")
    )
    (work / "results.json").write_text(json.dumps({"machine": info, **run}, indent=2, default=str) + "\n")
    if not args.no_docs:
        common.write_section(DOCS, SECTION, section(info, run))
        print(f"wrote the {SECTION!r} section of {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
