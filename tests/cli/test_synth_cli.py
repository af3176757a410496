"""`voxlake synth` as a user runs it: deterministic output, a summary, --json, answer keys."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

SMALL_COHORT = ["--patients", "3", "--matrix", "32", "--max-instances-per-series", "3", "--quiet"]


def voxlake(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "voxlake", *args], capture_output=True, text=True, check=check, timeout=600
    )


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_same_seed_writes_the_same_bytes_and_prints_what_it_wrote(tmp_path):
    first = voxlake("synth", "cohort", str(tmp_path / "a"), "--seed", "5", *SMALL_COHORT)
    voxlake("synth", "cohort", str(tmp_path / "b"), "--seed", "5", *SMALL_COHORT)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert str(tmp_path / "a") in first.stdout
    other = voxlake("synth", "cohort", str(tmp_path / "c"), "--seed", "6", *SMALL_COHORT, "--json")
    assert json.loads(other.stdout)["instances"] == len(_digest(tmp_path / "c"))
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")


def test_inject_phi_writes_an_answer_key_beside_the_files(tmp_path):
    out = tmp_path / "phi"
    voxlake("synth", "cohort", str(out), "--seed", "1", "--inject-phi", *SMALL_COHORT)
    key = json.loads((out / "answer_key.json").read_text())
    entries = key["entries"] if isinstance(key, dict) else key
    assert entries and (out / "answer_key.parquet").is_file()
    assert {e["action"] for e in entries} >= {"remove", "replace-consistently", "shift-date"}


def test_phantoms_and_scale_report_what_they_wrote(tmp_path):
    ph = voxlake("synth", "phantoms", str(tmp_path / "ph"), "--cases", "1", "--rows", "64",
                 "--slices", "20", "--thickness", "5", "--quiet", "--json")
    [case] = json.loads(ph.stdout)["cases"]
    assert Path(case["seg_path"]).is_file() and Path(case["nifti_path"]).is_file()
    cohort = tmp_path / "cohort"
    voxlake("synth", "cohort", str(cohort), "--seed", "2", *SMALL_COHORT)
    sc = voxlake("synth", "scale", str(tmp_path / "big"), "--instances", "200", "--from", str(cohort),
                 "--quiet", "--json", "--workers", "1")
    assert json.loads(sc.stdout)["files"] == 200
    assert len(list((tmp_path / "big").rglob("*.dcm"))) == 200


def test_bad_options_are_one_line_errors(tmp_path):
    bad = voxlake("synth", "scale", str(tmp_path / "x"), "--instances", "10", "--from", str(tmp_path / "nope"),
                  check=False)
    assert bad.returncode == 1 and bad.stderr.startswith("voxlake: error:") and "Traceback" not in bad.stderr
