"""Segmentation on arrival (``voxlake segment --auto``), as a hospital runs it beside ``voxlake ingest
--watch``: a series the rules select is segmented once, when no instance has arrived for the quiet
period; a series that fails waits for new instances; the loop sees what another writer commits."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

import voxlake
from tests.conftest import PYDICOM_FILES, need

pytest.importorskip("highdicom")
pytest.importorskip("scipy")

CT_RULES = {"selections": [{"name": "ct", "conditions": {"Modality": "CT"}}]}


def copy_slices(ct_series: Path, dest: Path, first: int, count: int, *, mr: bool = False) -> Path:
    """Slices [first, first + count) of the real CT into ``dest`` (and the single-slice MR)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in sorted(ct_series.iterdir())[first:first + count]:
        shutil.copy2(p, dest / p.name)
    if mr:
        shutil.copy2(need(PYDICOM_FILES / "MR_small.dcm"), dest / "MR_small.dcm")
    return dest


@pytest.fixture
def src(tmp_path, ct_series) -> Path:
    """10 slices of the real CT and a single-slice MR."""
    return copy_slices(ct_series, tmp_path / "src", 60, 10, mr=True)


@pytest.fixture
def lake(tmp_path, src) -> voxlake.Lake:
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    yield lake
    lake.close()


def ct_uid(lake) -> str:
    [(uid,)] = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances WHERE Modality = 'CT'").fetchall()
    return uid


def recorded_errors(lake) -> list[tuple]:
    """The rows of segment_errors (none while the table does not exist)."""
    from voxlake.errors import QueryError

    try:
        return lake.sql("SELECT SeriesInstanceUID, error_class, message FROM segment_errors").fetchall()
    except QueryError:
        return []


def test_a_just_ingested_series_is_complete_only_after_the_quiet_period(lake):
    from voxlake.ai.auto import complete_series
    from voxlake.ai.tissue import CTTissueModel

    model = CTTissueModel()
    assert complete_series(lake, CT_RULES, model, quiet_seconds=60) == []
    later = datetime.now(UTC) + timedelta(seconds=61)
    assert complete_series(lake, CT_RULES, model, quiet_seconds=60, now=later) == [ct_uid(lake)]  # not the MR


def test_one_pass_segments_the_selected_series_once_and_a_second_pass_does_nothing(lake):
    from voxlake.ai.auto import complete_series, watch
    from voxlake.ai.tissue import CTTissueModel

    model = CTTissueModel()
    first = watch(lake, CT_RULES, model, quiet_seconds=0, once=True, meshes=False)

    assert (first.passes, first.segmented, first.errors, first.versions) == (1, 1, 0, ["ct-tissue:1"])
    [(outcome, name, version)] = first.outcomes
    assert (outcome.SeriesInstanceUID, outcome.status, name, version) == (ct_uid(lake), "segmented", "ct-tissue", "1")
    assert lake.sql("SELECT DISTINCT SeriesInstanceUID FROM segment_stats").fetchall() == [(ct_uid(lake),)]
    assert recorded_errors(lake) == []  # the MR was never tried

    second = watch(lake, CT_RULES, model, quiet_seconds=0, once=True, meshes=False)
    assert (second.segmented, second.errors, list(second.outcomes)) == (0, 0, [])
    assert complete_series(lake, CT_RULES, model, quiet_seconds=0) == []


def test_the_seg_that_a_pass_writes_is_never_an_input_even_to_rules_that_select_every_series(lake):
    from voxlake.ai.auto import complete_series, watch
    from voxlake.ai.tissue import CTTissueModel

    everything = {"selections": [{"name": "all"}]}
    model = CTTissueModel()
    watch(lake, CT_RULES, model, quiet_seconds=0, once=True, meshes=False)
    assert lake.sql("SELECT count(DISTINCT SeriesInstanceUID) FROM instances WHERE Modality = 'SEG'").fetchall() == [(1,)]
    mr = lake.sql("SELECT DISTINCT SeriesInstanceUID FROM instances WHERE Modality = 'MR'").fetchall()[0][0]
    assert complete_series(lake, everything, model, quiet_seconds=0) == [mr]


class Broken:
    """A model that fails on every series, as one out of GPU memory would."""

    name, version, labels = "broken", "1", {1: "body"}

    def predict(self, volume):
        raise RuntimeError("CUDA out of memory")


def test_a_failed_series_is_recorded_once_and_tried_again_only_when_new_instances_arrive(lake, src, ct_series):
    from voxlake.ai.auto import watch

    failed = watch(lake, CT_RULES, Broken(), quiet_seconds=0, once=True)
    assert (failed.segmented, failed.errors) == (0, 1)
    assert recorded_errors(lake) == [(ct_uid(lake), "RuntimeError", "CUDA out of memory")]

    again = watch(lake, CT_RULES, Broken(), quiet_seconds=0, once=True)
    assert again.errors == 0 and recorded_errors(lake) == [(ct_uid(lake), "RuntimeError", "CUDA out of memory")]

    copy_slices(ct_series, src, 70, 2)  # two more slices of the same series arrive
    lake.ingest(str(src), workers=0)
    retried = watch(lake, CT_RULES, Broken(), quiet_seconds=0, once=True)
    assert retried.errors == 1 and len(recorded_errors(lake)) == 2


def run_in_thread(**kwargs):
    from voxlake.ai.auto import watch

    result: list = []
    thread = threading.Thread(target=lambda: result.append(watch(**kwargs)), daemon=True)
    thread.start()
    return thread, result


def wait_for(condition, seconds: float = 180.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_the_loop_segments_exactly_once_a_series_ingested_after_it_started_and_stops_on_request(tmp_path, src):
    from voxlake.ai.tissue import CTTissueModel

    uri = str(tmp_path / "lake")  # no lake yet: the loop waits for the first ingest
    stop = threading.Event()
    seen: list[tuple[str, str, datetime]] = []  # series, status, when its segmentation began
    thread, result = run_in_thread(
        lake=uri, rules=CT_RULES, model=CTTissueModel(), quiet_seconds=1, interval=0.2, stop=stop, meshes=False,
        progress=lambda outcome, model: seen.append((outcome.SeriesInstanceUID, outcome.status, datetime.now(UTC)
                                                     - timedelta(seconds=sum(outcome.timings.values())))))
    time.sleep(0.5)
    writer = voxlake.open(uri)  # another writer, as ingest --watch would be
    writer.ingest(str(src), workers=0)
    wait_for(lambda: seen)
    time.sleep(1.5)  # more passes: quiet period plus several intervals
    stop.set()
    thread.join(60)

    assert not thread.is_alive()
    [summary] = result
    [(series, status, began)] = seen
    assert (series, status) == (ct_uid(writer), "segmented")
    [(ended_at,)] = writer.sql("SELECT max(ended_at) FROM ingest_runs JOIN instances USING (run_id) "
                               f"WHERE SeriesInstanceUID = '{series}'").fetchall()  # when the CT was committed
    assert began - ended_at >= timedelta(seconds=1)  # not before the series was quiet for a second
    assert writer.sql("SELECT count(DISTINCT run_id) FROM segment_stats").fetchall() == [(1,)]
    assert summary.passes > 3 and summary.segmented == 1


def test_a_registry_alias_is_resolved_at_each_pass_and_a_new_version_loaded_only_when_it_moves(tmp_path, src):
    from voxlake.ai.tissue import CTTissueModel

    class Tissue(CTTissueModel):
        name = "tissue"

        def __init__(self, version: str) -> None:
            self.version = version

    class Registry:
        champion, loads = "1", []

        def resolve(self, spec):
            assert spec == "tissue@champion"
            return SimpleNamespace(name="tissue", version=self.champion, kind="network")

        def load(self, spec):
            self.loads.append(spec)
            return Tissue(spec.split(":")[1])

    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(src), workers=0)
    registry, stop, seen = Registry(), threading.Event(), []
    thread, result = run_in_thread(lake=lake.uri, rules=CT_RULES, model="tissue@champion", registry=registry,
                                   quiet_seconds=0, interval=0.1, stop=stop, meshes=False,
                                   progress=lambda outcome, model: seen.append((outcome.status, model.version)))
    wait_for(lambda: seen)
    time.sleep(0.5)
    assert registry.loads == ["tissue:1"]
    registry.champion = "2"  # promoted while the loop runs
    wait_for(lambda: len(seen) == 2)
    stop.set()
    thread.join(60)

    assert seen == [("segmented", "1"), ("segmented", "2")]  # the new champion catches up on the series
    assert registry.loads == ["tissue:1", "tissue:2"]
    assert result[0].versions == ["tissue:1", "tissue:2"]


def voxlake_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "voxlake", *args], capture_output=True, text=True, check=check,
                          timeout=600)


def test_the_cli_once_prints_one_json_line_per_series_and_a_summary(tmp_path, lake):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(CT_RULES))
    command = ["segment", "--lake", lake.uri, "--auto", str(rules), "--quiet-seconds", "0", "--once", "--json",
               "--no-meshes", "--registry", str(tmp_path / "registry")]
    out = voxlake_cli(*command)

    series, summary = (json.loads(line) for line in out.stdout.splitlines())
    assert (series["SeriesInstanceUID"], series["status"], series["model"]) == (ct_uid(lake), "segmented", "ct-tissue")
    assert series["SEG"] and series["volumes_ml"]["fat"] > 0
    assert (summary["passes"], summary["segmented"], summary["errors"], summary["versions"]) == (1, 1, 0, ["ct-tissue:1"])
    again = [json.loads(line) for line in voxlake_cli(*command).stdout.splitlines()]
    assert [(s["segmented"], s["errors"]) for s in again] == [(0, 0)]


def test_the_cli_runs_until_ctrl_c_and_says_it_stopped(tmp_path, lake):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"selections": [{"name": "pet", "conditions": {"Modality": "PT"}}]}))
    process = subprocess.Popen([sys.executable, "-m", "voxlake", "segment", "--lake", lake.uri, "--auto", str(rules),
                                "--interval", "0.2", "--registry", str(tmp_path / "registry")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = ""
        while "Ctrl-C to stop" not in started:
            line = process.stderr.readline()
            assert line, f"exited early: {process.stderr.read()}"
            started = line
        assert "with ct-tissue:1 once complete (no new instance for 30 s)" in started
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err
    assert out == "" and "voxlake: stopped after" in err and "0 series segmented, 0 errors" in err
    assert "Traceback" not in err


def test_the_cli_options_of_auto_are_checked_in_one_line(tmp_path, lake):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps(CT_RULES))
    alone = voxlake_cli("segment", "--lake", lake.uri, "--once", check=False)
    assert (alone.returncode, alone.stderr.strip()) == (
        1, "voxlake: error: --quiet-seconds, --interval and --once go with --auto RULES.json")
    both = voxlake_cli("segment", "--lake", lake.uri, "--auto", str(rules), "--rules", str(rules), check=False)
    assert both.returncode == 2 and "not allowed with argument --auto" in both.stderr
    missing = voxlake_cli("segment", "--lake", lake.uri, "--auto", str(tmp_path / "nope.json"),
                          "--registry", str(tmp_path / "registry"), check=False)
    assert missing.returncode == 1 and missing.stderr.strip().endswith("cannot read the rules file: No such file or directory")
