#!/usr/bin/env python
"""Ingest benchmark: voxlake against the approach most DICOM-indexing tools take.

Run by ``make bench``. On a corpus of at least 20,000 CT-sized files (copies of the real
134-slice CT series with fresh UIDs, one study and patient per copy), in one run, it measures:

(a) the common approach: one process; per file ``pydicom.dcmread(stop_before_pixels=True)``,
    ``Dataset.to_json_dict()``, ``json.dumps``; rows kept in a list and written to one Parquet
    file at the end with pyarrow;
(b) ``voxlake ingest CORPUS --lake FRESH_LAKE --workers N --json --quiet`` for each N in
    ``--workers`` (default 1 and 2), plus ``--no-sha256`` with 1 worker (voxlake hashes every file
    by default; the baseline does not).

Every contender runs as a subprocess, each after the whole corpus has been read once so all
see the same warm page cache. files/s is files over the subprocess's wall time (start to exit);
peak memory is the largest summed RSS of the subprocess and all its descendants, sampled every
0.1 s with psutil. The bench reports; it never fails on a target. It prints a table and
rewrites the "## Ingest" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
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
SOURCE_SERIES = REPO.parent / "shared" / "data" / "pancreatic-ct-cbct-seg_pyvista" / "series"
DEFAULT_WORK = REPO / "bench" / ".work"
DOCS = common.DOCS
SECTION = "## Ingest"
MARKER = "corpus.json"
CORPUS_FORMAT = 1  # bump when the way copies are made changes

TARGET_SPEEDUP_1W = 3.0
TARGET_SCALING_2W = 1.8
TARGET_PEAK_MIB = 1024.0
FOREIGN_WARN = 0.05  # share of the machine other processes may use during a run before it is noted



# --- corpus ------------------------------------------------------------------------------------

_SOURCES: list[tuple[str, Any]] = []


def _load_sources(files: list[str]) -> None:
    import pydicom

    _SOURCES.clear()
    for f in files:
        _SOURCES.append((os.path.basename(f), pydicom.dcmread(f)))


def _write_copy(args: tuple[Path, int]) -> int:
    """Write copy ``index`` of the series: a new patient, study and series, new instance UIDs."""
    import pydicom
    from pydicom.uid import generate_uid

    corpus, index = args
    final = corpus / f"c{index:05d}"
    tmp = corpus / f".c{index:05d}.tmp"  # hidden: never listed if a run is interrupted
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for name, ds in _SOURCES:
        sop = generate_uid()
        ds.PatientID = f"BENCH{index:05d}"
        ds.PatientName = f"Bench^Copy{index:05d}"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        if "FrameOfReferenceUID" in ds:
            ds.FrameOfReferenceUID = frame
        ds.SOPInstanceUID = sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        pydicom.dcmwrite(tmp / name, ds)
    tmp.rename(final)
    return len(_SOURCES)


def _count_files(folder: Path) -> int:
    n = 0
    for _root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        n += sum(1 for f in files if not f.startswith("."))
    return n


def build_corpus(work: Path, want: int) -> tuple[Path, int, float]:
    """The corpus folder, its file count, and the seconds spent making it (0 when reused)."""
    if not SOURCE_SERIES.is_dir():
        sys.exit(
            f"ingest_bench: the source CT series is missing: {SOURCE_SERIES}\n"
            "  (expected the 134-slice pancreatic-ct-cbct-seg series next to the repository, in ../shared/data)"
        )
    sources = sorted(str(p) for p in SOURCE_SERIES.iterdir() if p.is_file() and not p.name.startswith("."))
    if not sources:
        sys.exit(f"ingest_bench: no files in {SOURCE_SERIES}")
    copies = math.ceil(want / len(sources))
    expected = copies * len(sources)
    corpus = work / "corpus"
    marker = work / MARKER
    wanted_marker = {"format": CORPUS_FORMAT, "source": str(SOURCE_SERIES), "copies": copies, "files": expected}
    if marker.exists() and corpus.is_dir():
        try:
            have = json.loads(marker.read_text())
        except ValueError:
            have = {}
        if have == wanted_marker and _count_files(corpus) == expected:
            print(f"corpus: reusing {expected} files in {corpus}", flush=True)
            return corpus, expected, 0.0
    marker.unlink(missing_ok=True)
    corpus.mkdir(parents=True, exist_ok=True)
    for entry in corpus.iterdir():  # leftovers of interrupted runs, copies beyond what is wanted
        keep = entry.name.startswith("c") and entry.name[1:].isdigit() and int(entry.name[1:]) < copies
        if not keep or _count_files(entry) != len(sources):
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    todo = [i for i in range(copies) if not (corpus / f"c{i:05d}").is_dir()]
    print(
        f"corpus: writing {len(todo)} copies of the {len(sources)}-file series"
        f" ({len(todo) * len(sources)} files) to {corpus}",
        flush=True,
    )
    t0 = time.perf_counter()
    if todo:
        import multiprocessing

        procs = min(len(todo), common.nproc())
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(procs, initializer=_load_sources, initargs=(sources,)) as pool:
            done = 0
            for n in pool.imap_unordered(_write_copy, [(corpus, i) for i in todo]):
                done += n
                if done % (len(sources) * 10) == 0 or done == len(todo) * len(sources):
                    print(f"  {done} files, {time.perf_counter() - t0:.0f} s", flush=True)
    os.sync()
    found = _count_files(corpus)
    if found != expected:
        sys.exit(f"ingest_bench: corpus has {found} files, expected {expected}")
    marker.write_text(json.dumps(wanted_marker) + "\n")
    return corpus, expected, time.perf_counter() - t0


def warm_cache(corpus: Path) -> tuple[float, int]:
    """Read every corpus file once so it sits in the page cache; seconds and bytes read."""
    t0 = time.perf_counter()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    total = 0
    for root, dirs, files in os.walk(corpus):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            with open(os.path.join(root, name), "rb", buffering=0) as fh:
                while n := fh.readinto(view):
                    total += n
    return time.perf_counter() - t0, total


# --- (a) the baseline, run in its own process --------------------------------------------------

PROMOTED = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Modality")


def baseline(corpus: str, out: str) -> int:
    """Index ``corpus`` the way most tools do; print one JSON line with what it did."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import pydicom

    t0 = time.perf_counter()
    paths = []
    for root, dirs, files in os.walk(corpus):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        paths.extend(os.path.join(root, f) for f in sorted(files) if not f.startswith("."))
    rows: list[dict[str, Any]] = []
    errors = 0
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            meta = json.dumps(ds.to_json_dict())
        except Exception:
            errors += 1
            continue
        row = {"uri": path, "size": os.path.getsize(path), "meta": meta}
        for keyword in PROMOTED:
            value = ds.get(keyword)
            row[keyword] = None if value is None else str(value)
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, out)
    print(json.dumps({"files": len(paths), "indexed": len(rows), "errors": errors,
                      "seconds": round(time.perf_counter() - t0, 3)}))
    return 0


# --- measuring a subprocess --------------------------------------------------------------------


def measure(cmd: list[str]) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, peak summed RSS of its process tree, exit status, output."""
    import psutil

    busy0 = common.busy_cpu_s()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    samples = 0
    cpu: dict[int, float] = {}
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak, samples
        while not stop.is_set():
            peak = max(peak, common.tree_sample(ps, cpu))
            samples += 1
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    # CPU seen at the last sample of each process (a process's last < 0.1 s can be missed).
    ours = sum(cpu.values())
    foreign = max(0.0, common.busy_cpu_s() - busy0 - ours)
    return {"cmd": cmd, "rc": proc.returncode, "wall": wall, "peak_mib": peak / 2**20,
            "samples": samples, "stdout": out, "stderr": err, "cpu_s": ours, "foreign_cpu_s": foreign}


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _voxlake_cmd() -> list[str]:
    script = Path(sys.executable).parent / "voxlake"
    return [str(script)] if script.exists() else [sys.executable, "-m", "voxlake"]


# --- the report --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import psutil
    import pyarrow
    import pydicom

    commit = common.git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = bool(common.git("status", "--porcelain", "--", "voxlake"))
    return {
        "nproc": common.nproc(),
        "ram_gib": psutil.virtual_memory().total / 2**30,
        "cpu": common.cpu_model(),
        "python": platform.python_version(),
        "pydicom": pydicom.__version__,
        "pyarrow": pyarrow.__version__,
        "commit": commit + (" (with uncommitted changes under voxlake/)" if dirty else ""),
        "kernel": platform.release(),
    }


def table_rows(results: list[dict[str, Any]]) -> list[list[str]]:
    base = next((r for r in results if r["key"] == "baseline" and r["ok"]), None)
    rows = []
    for r in results:
        fps = r["files"] / r["wall"] if r["ok"] else None
        speedup = fps / (base["files"] / base["wall"]) if base and fps else None
        rows.append([
            r["label"], f"{r['files']:,}", common.fmt(r["wall"]), common.fmt(r.get("own_seconds")),
            common.fmt(fps), "—" if speedup is None else f"{speedup:.2f}x", common.fmt(r["peak_mib"], 0),
            common.fmt(r["cpu_s"]), f"{r['foreign_share']:.0%}",
        ])
    return rows


HEADERS = ["contender", "files", "wall s", "own s", "files/s", "vs (a)", "peak RSS MiB", "CPU s", "other load"]


def text_table(rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]
    line = "  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(out)


def md_table(rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] + ["---:"] * (len(HEADERS) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def targets(results: list[dict[str, Any]]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each target of the issue; met is None when not measured."""
    by = {r["key"]: r for r in results if r["ok"]}

    def fps(key: str) -> float | None:
        r = by.get(key)
        return r["files"] / r["wall"] if r else None

    a, w1, w2 = fps("baseline"), fps("w1"), fps("w2")
    out: list[tuple[str, str, bool | None]] = []
    if a and w1:
        out.append((f"1 worker ≥ {TARGET_SPEEDUP_1W:g}x (a) in files/s", f"{w1 / a:.2f}x",
                    w1 / a >= TARGET_SPEEDUP_1W))
    else:
        out.append((f"1 worker ≥ {TARGET_SPEEDUP_1W:g}x (a) in files/s", "not measured", None))
    if w1 and w2:
        out.append((f"2 workers ≥ {TARGET_SCALING_2W:g}x 1 worker", f"{w2 / w1:.2f}x",
                    w2 / w1 >= TARGET_SCALING_2W))
    else:
        out.append((f"2 workers ≥ {TARGET_SCALING_2W:g}x 1 worker", "not measured", None))
    vox = [r for r in results if r["key"] != "baseline" and r["ok"]]
    if vox:
        worst = max(vox, key=lambda r: r["peak_mib"])
        out.append((f"peak memory under 1 GiB ({TARGET_PEAK_MIB:.0f} MiB), every voxlake run",
                    f"{worst['peak_mib']:.0f} MiB ({worst['label']})", worst["peak_mib"] < TARGET_PEAK_MIB))
    else:
        out.append((f"peak memory under 1 GiB ({TARGET_PEAK_MIB:.0f} MiB)", "not measured", None))
    return out


def section(info: dict[str, Any], corpus: dict[str, Any], results: list[dict[str, Any]],
            total_s: float) -> str:
    rows = table_rows(results)
    lines = [
        SECTION,
        "",
        "Written by `bench/ingest_bench.py` (`make bench`); rerun it to refresh this section.",
        "",
        f"- Date: {info['date']}",
        f"- Machine: {info['nproc']} CPUs ({info['cpu']}), {info['ram_gib']:.1f} GiB RAM, "
        f"Linux {info['kernel']}; Python {info['python']}, pydicom {info['pydicom']}, pyarrow {info['pyarrow']}",
        f"- voxlake: commit `{info['commit']}`",
        f"- Corpus: {corpus['files']:,} files, {corpus['bytes'] / 2**30:.1f} GiB: {corpus['copies']} copies of "
        f"the real {corpus['series_files']}-slice CT series (pancreatic-ct-cbct-seg, 512×512 CT images, "
        "about 0.5 MB each), each copy a new patient, study and series with fresh Study, Series, "
        "Frame of Reference and SOP Instance UIDs (MediaStorageSOPInstanceUID too); pixel data kept.",
        f"- Bench runtime: {total_s / 60:.1f} min in all"
        + (f" (corpus written in {corpus['build_s']:.0f} s)" if corpus["build_s"] else " (corpus reused)"),
        "",
        "### Method",
        "",
        "- (a) the approach most tools take, in one process: per file "
        "`pydicom.dcmread(stop_before_pixels=True)`, `to_json_dict()`, `json.dumps`; rows (uri, size, "
        "metadata JSON, PatientID, Study/Series/SOP Instance UID, Modality) kept in a list and written to one "
        "Parquet file with pyarrow at the end. No hashing.",
        "- (b) `voxlake ingest CORPUS --lake LAKE --workers N --json --quiet`, each run into a fresh, empty "
        "lake (deleted between runs). voxlake hashes (SHA-256) every file by default; the "
        "`--no-sha256` row shows the run without it.",
        "- Each contender runs as its own subprocess. Before each run every corpus file is read once, so "
        "every contender starts with the whole corpus in the page cache (it fits in RAM): the figures "
        "measure parsing and writing, not the disk.",
        "- wall s: the subprocess's wall time from start to exit (interpreter start-up and imports "
        "included); files/s = files / wall s; own s: the seconds the tool reports itself "
        "(voxlake's `seconds`, the baseline's loop and Parquet write). vs (a): files/s over (a)'s.",
        "- peak RSS: the largest sum of the resident set sizes of the subprocess and all its descendants "
        "(voxlake's forkserver and worker processes), sampled every 0.1 s with psutil. Shared pages "
        "count once per process, so this over-states what the machine actually spends.",
        "- CPU s: user + system CPU seconds of the contender and all its descendants (CPU s / wall s is the "
        "parallelism it got). other load: CPU time other processes on the machine used during the run, as a "
        "share of all the machine's CPUs over the run. Before each run the bench waits (up to "
        "`--idle-wait`, 2 minutes by default) "
        "for the machine to go idle, and it notes any run where other work took more than "
        f"{FOREIGN_WARN:.0%}.",
        "",
        "### Results",
        "",
        md_table(rows),
        "",
        "### Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {m} | {common.met(ok)} |" for t, m, ok in targets(results)]
    notes = [r for r in results if not r["ok"] or r.get("note")]
    if notes:
        lines += ["", "### Notes", ""]
        for r in notes:
            lines.append(f"- {r['label']}: {r.get('note') or 'failed'}")
    return "\n".join(lines) + "\n"


# --- main --------------------------------------------------------------------------------------


def run_contender(key: str, label: str, cmd: list[str], corpus: Path, files: int, lake: Path | None,
                  expect_voxlake: bool, idle_wait: float) -> dict[str, Any]:
    if lake is not None:
        shutil.rmtree(lake, ignore_errors=True)
    os.sync()
    warm_s, _ = warm_cache(corpus)
    waited = common.wait_for_idle(idle_wait)
    print(f"{label}: cache warmed in {warm_s:.1f} s"
          + (f", waited {waited:.0f} s for the machine to go idle" if waited >= 5 else "")
          + f"; running {' '.join(cmd)}", flush=True)
    m = measure(cmd)
    summary = _last_json(m["stdout"])
    result: dict[str, Any] = {"key": key, "label": label, "files": files, "wall": m["wall"],
                              "peak_mib": m["peak_mib"], "rc": m["rc"], "summary": summary,
                              "own_seconds": summary.get("seconds"), "warm_s": warm_s, "cmd": cmd,
                              "cpu_s": m["cpu_s"], "foreign_cpu_s": m["foreign_cpu_s"]}
    ok = m["rc"] == 0 and bool(summary)
    note = ""
    if not ok:
        note = f"exit status {m['rc']}: {m['stderr'].strip().splitlines()[-1:] or ''}"
    elif expect_voxlake:
        if summary.get("files_seen") != files or summary.get("indexed") != files:
            note = (f"voxlake saw {summary.get('files_seen')} files and indexed {summary.get('indexed')} "
                    f"(skipped {summary.get('skipped')}, errors {summary.get('errors')}) of {files}")
    elif summary.get("indexed") != files:
        note = f"baseline indexed {summary.get('indexed')} of {files} (errors {summary.get('errors')})"
    # Other work on the machine during the run skews the figures: say how much there was.
    foreign_share = m["foreign_cpu_s"] / (m["wall"] * common.nproc())
    result["foreign_share"] = foreign_share
    if foreign_share > FOREIGN_WARN:
        busy = (f"other processes kept the machine {foreign_share:.0%} busy during this run "
                f"({m['foreign_cpu_s']:.0f} CPU s): its figures are pessimistic")
        note = f"{note}; {busy}" if note else busy
    result["ok"], result["note"] = ok, note
    fps = files / m["wall"]
    print(f"{label}: {m['wall']:.1f} s wall, {fps:.1f} files/s, peak {m['peak_mib']:.0f} MiB"
          + (f" — {note}" if note else ""), flush=True)
    if not ok:
        print(m["stderr"][-4000:], file=sys.stderr)
    if lake is not None:
        shutil.rmtree(lake, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=20_000, help="at least this many files (default 20,000)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help="work folder (default bench/.work)")
    p.add_argument("--skip-baseline", action="store_true", help="do not run (a)")
    p.add_argument("--workers", default="1,2", help="voxlake worker counts, comma-separated (default 1,2)")
    p.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    p.add_argument("--idle-wait", type=float, default=120.0,
                   help="before each run, wait up to this many seconds for the machine to go idle (default 120)")
    p.add_argument("--baseline-run", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.baseline_run:
        return baseline(*args.baseline_run)

    t_start = time.perf_counter()
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    info["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(f"voxlake commit {info['commit']}; {info['nproc']} CPUs ({info['cpu']}), "
          f"{info['ram_gib']:.1f} GiB RAM", flush=True)
    corpus, files, build_s = build_corpus(work, args.files)
    series_files = len([f for f in SOURCE_SERIES.iterdir() if f.is_file() and not f.name.startswith(".")])
    _, nbytes = warm_cache(corpus)
    import psutil

    if nbytes > psutil.virtual_memory().total * 0.8:
        print(f"warning: the corpus ({nbytes / 2**30:.1f} GiB) may not fit in the page cache", flush=True)
    corpus_info = {"files": files, "bytes": nbytes, "copies": files // series_files,
                   "series_files": series_files, "build_s": build_s}

    results = []
    if not args.skip_baseline:
        out = work / "baseline.parquet"
        out.unlink(missing_ok=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--baseline-run", str(corpus), str(out)]
        results.append(run_contender("baseline", "(a) dcmread + to_json_dict + json.dumps, 1 process",
                                     cmd, corpus, files, None, expect_voxlake=False,
                                     idle_wait=args.idle_wait))
        out.unlink(missing_ok=True)
    lake = work / "lake"
    vox = _voxlake_cmd()
    runs = [(f"w{n}", f"(b) voxlake ingest, {n} worker{'s' if n != 1 else ''}", [f"--workers={n}"])
            for n in workers]
    if 1 in workers:
        runs.append(("w1-nosha", "(b) voxlake ingest, 1 worker, --no-sha256", ["--workers=1", "--no-sha256"]))
    for key, label, extra in runs:
        cmd = [*vox, "ingest", str(corpus), "--lake", str(lake), *extra, "--json", "--quiet"]
        results.append(run_contender(key, label, cmd, corpus, files, lake, expect_voxlake=True,
                                     idle_wait=args.idle_wait))

    total_s = time.perf_counter() - t_start
    print()
    print(text_table(table_rows(results)))
    print()
    for t, m, ok in targets(results):
        print(f"target: {t}: {m} — {common.met(ok)}")
    print(f"bench runtime: {total_s / 60:.1f} min")
    (work / "results.json").write_text(json.dumps(
        {"machine": info, "corpus": corpus_info, "results": results, "total_s": total_s},
        indent=2, default=str) + "\n")
    if not args.no_docs:
        common.write_section(DOCS, SECTION, section(info, corpus_info, results, total_s))
        print(f"wrote the {SECTION!r} section of {DOCS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
