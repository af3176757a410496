"""What every benchmark here shares: process-tree sampling, waiting for an idle machine, the machine
description, and rewriting its own ``## `` section of docs/benchmarks.md."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"
DOCS_HEADER = """# Benchmarks

Measured figures, not assertions: each section is written by the benchmark script it names
and rewritten (only that section) each time the script runs.
"""


def tree_sample(proc: Any, cpu: dict[int, float]) -> int:
    """Summed RSS of ``proc`` and its descendants; records each one's CPU seconds so far in ``cpu``."""
    import psutil

    total = 0
    try:
        family = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in family:
        with contextlib.suppress(psutil.Error), p.oneshot():
            total += p.memory_info().rss
            t = p.cpu_times()
            cpu[p.pid] = t.user + t.system
    return total


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting for I/O) since boot."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


def wait_for_idle(max_wait: float, threshold: float = 10.0) -> float:
    """Wait until the machine is nearly idle (other work would skew the figures); seconds waited."""
    import psutil

    t0 = time.perf_counter()
    quiet = 0
    while quiet < 3 and time.perf_counter() - t0 < max_wait:  # three quiet seconds in a row
        quiet = quiet + 1 if psutil.cpu_percent(interval=1.0) < threshold else 0
    return time.perf_counter() - t0


def nproc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def fmt(x: float | None, digits: int = 1) -> str:
    return "—" if x is None else f"{x:,.{digits}f}"


def met(m: bool | None) -> str:
    return "not measured" if m is None else ("met" if m else "NOT met")


def write_section(path: Path, heading: str, text: str) -> None:
    """Replace the ``heading`` section of ``path`` (up to the next ``## `` heading), or append it."""
    old = path.read_text() if path.exists() else DOCS_HEADER
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:start]) + text + ("\n" + rest if rest else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def post_instances(rest: str, files: list[str], threads: int, label: str = "Orthanc",
                   limit_s: float | None = None) -> tuple[int, int, float]:
    """Upload ``files`` to an Orthanc (``POST {rest}/instances``) from ``threads`` threads, printing
    progress; stops starting new uploads after ``limit_s``. (sent, failed, seconds)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    lock = threading.Lock()
    it = iter(files)
    sent, failed = [0], [0]
    t0 = time.perf_counter()
    step = max(1, len(files) // 10)

    def worker() -> None:
        with httpx.Client(timeout=600) as client:
            while True:
                with lock:
                    if limit_s is not None and time.perf_counter() - t0 > limit_s:
                        return
                    path = next(it, None)
                if path is None:
                    return
                with open(path, "rb") as fh:
                    body = fh.read()
                r = client.post(rest + "/instances", content=body, headers={"Content-Type": "application/dicom"})
                with lock:
                    sent[0] += 1
                    failed[0] += r.status_code != 200
                    if sent[0] % step == 0:
                        el = time.perf_counter() - t0
                        print(f"  {label}: {sent[0]:,} of {len(files):,} in {el:.0f} s ({sent[0] / el:.0f}/s)",
                              flush=True)

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(worker) for _ in range(threads)]:
            f.result()
    return sent[0], failed[0], time.perf_counter() - t0
