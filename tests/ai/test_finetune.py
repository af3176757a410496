"""Fine-tuning on the readers' corrections: a deliberately weak champion, phantom CTs in a lake
whose true labels come back as ``final`` SEGs (as a reader's corrections would), a fine-tune that
raises the held-out Dice and is promoted, a challenger that does not beat the champion and is kept,
and the held-out set fixed by the first fine-tune. Tiny phantoms and a tiny network: seconds each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("monai")
pytest.importorskip("mlflow")
pytest.importorskip("highdicom")
pytestmark = pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")

import torch  # noqa: E402

import voxlake  # noqa: E402
from voxlake.ai.finetune import (  # noqa: E402
    HELDOUT_TAG,
    SCORE_TAG,
    FinetuneBusyError,
    FinetuneJobs,
    FinetuneResult,
    finals_per_model,
    finetune_from_labels,
    finetune_running,
)
from voxlake.ai.labels import sync_labels  # noqa: E402
from voxlake.ai.registry import Registry  # noqa: E402
from voxlake.ai.service import ModelPool  # noqa: E402
from voxlake.ai.train import load_phantom_case, train_phantom_organs  # noqa: E402
from voxlake.errors import InvalidArgumentError  # noqa: E402
from voxlake.synth.phantom import ORGANS, generate_phantoms  # noqa: E402

torch.set_num_threads(1)
NAME = "organs"
TINY = {"seed": 5, "holdout": 1, "spacing": 8.0, "patch": 32, "patches_per_case": 2, "channels": (8, 16, 32)}
CORRECTED = 4  # cases corrected by the "reader"; two more are the held-out set
EPOCHS = 12


def truth_seg(volume: Any, label_map: np.ndarray, folder: Path, *, names: dict[int, str] | None = None,
              extra: dict[str, np.ndarray] | None = None) -> str:
    """A reader's correction as OHIF saves it: a BINARY SEG (MANUAL segments, Manufacturer OHIF, a new
    series) of ``label_map`` referencing the CT instances, segments labelled with the organ names
    (``names`` overrides some), plus ``extra`` segments by name. Returns its SOP Instance UID."""
    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    names = {o.label: o.name for o in ORGANS.values()} | (names or {})
    present = [v for v in sorted(names) if np.any(label_map == v)]
    masks = [label_map == v for v in present] + list((extra or {}).values())
    labels = [names[v] for v in present] + list(extra or {})
    tissue = Code("85756007", "SCT", "Tissue")
    seg = hd.seg.Segmentation(
        source_images=volume.headers, pixel_array=np.stack(masks, axis=-1).astype(np.uint8),
        segmentation_type="BINARY",
        segment_descriptions=[hd.seg.SegmentDescription(
            segment_number=n, segment_label=label, segmented_property_category=tissue,
            segmented_property_type=tissue, algorithm_type="MANUAL") for n, label in enumerate(labels, start=1)],
        series_instance_uid=generate_uid(), series_number=1000, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="OHIF", manufacturer_model_name="OHIF Viewer", software_versions="3.9",
        device_serial_number="0", content_creator_name="Dr^Reader", content_label="CORRECTED")
    folder.mkdir(parents=True, exist_ok=True)
    seg.save_as(folder / f"{seg.SOPInstanceUID}.dcm", enforce_file_format=True)
    return str(seg.SOPInstanceUID)


def corrected_lake(root: Path, cases: list[Path], *, names: dict[int, str] | None = None) -> voxlake.Lake:
    """A lake of the cases' CTs, each with its true labels stored as a final correction, synced;
    ``names``: segments named wrongly (label value → the name written) in every correction."""
    import pydicom

    from voxlake.ai.volume import load_series

    lake = voxlake.open(str(root / "lake"))
    for case in cases:
        lake.ingest(str(case / "ct"), workers=0)
    for n, case in enumerate(cases):
        series = str(pydicom.dcmread(next((case / "ct").glob("*.dcm")), stop_before_pixels=True).SeriesInstanceUID)
        volume = load_series(lake, series)
        truth = load_phantom_case(case)
        assert np.allclose(truth.volume.affine, volume.affine)  # the truth lies on the lake's grid
        # the first reader also draws a structure the model does not know, and writes LIVER in capitals
        first = n == 0 and names is None
        extra = {"Pancreas": truth.labels == 1} if first else None
        truth_seg(volume, truth.labels, root / "corrections", names={5: "LIVER"} if first else names, extra=extra)
    lake.ingest(str(root / "corrections"), workers=0)
    result = sync_labels(lake)
    assert result.errors == [] and len(result.synced) == len(cases)
    return lake


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("finetune")
    generate_phantoms(root / "phantoms", cases=CORRECTED + 2, seed=2, rows=40, columns=40, slices=(20, 24),
                      slice_thickness=(5.0, 5.0))
    cases = sorted((root / "phantoms").glob("case-*"))
    heldout = root / "heldout"
    heldout.mkdir()
    for case in cases[CORRECTED:]:
        shutil.move(case, heldout / case.name)
    # the weak champion: one epoch on one case
    weak = root / "weak"
    weak.mkdir()
    for case in cases[:2]:
        shutil.copytree(case, weak / case.name)
    registry = Registry(root / "registry")
    version, _ = train_phantom_organs(weak, registry=registry, name=NAME, epochs=1, learning_rate=1e-2, **TINY)
    pool = ModelPool(registry)
    assert pool.get(f"{NAME}@champion").version == version
    return {"root": root, "cases": cases[:CORRECTED], "heldout": heldout, "registry": registry,
            "weak": version, "pool": pool, "lake": corrected_lake(root, cases[:CORRECTED])}


@pytest.fixture(scope="module")
def promoted(world: dict[str, Any]) -> FinetuneResult:
    return finetune_from_labels(world["lake"], world["registry"], NAME, heldout=world["heldout"], epochs=EPOCHS,
                                seed=1)


def test_fine_tuning_on_corrections_raises_the_heldout_dice_and_promotes_the_challenger(world, promoted) -> None:
    registry = world["registry"]
    assert promoted.base_version == world["weak"] and int(promoted.version) == int(world["weak"]) + 1
    assert promoted.train_cases == CORRECTED and len(promoted.series) == CORRECTED
    assert promoted.challenger_dice > promoted.champion_dice + 0.05, promoted.to_dict()
    assert promoted.promoted
    assert promoted.summary() == (f"{NAME}:{promoted.version} promoted to champion: held-out Dice "
                                  f"{promoted.challenger_dice:.2f} > {promoted.champion_dice:.2f} "
                                  f"(version {world['weak']})")
    assert set(promoted.per_label) == {"champion", "challenger"} and "body" in promoted.per_label["challenger"]
    assert promoted.challenger_dice == pytest.approx(np.mean(list(promoted.per_label["challenger"].values())))
    assert promoted.ignored_labels == ["Pancreas"]  # unknown to the model; LIVER matched liver
    assert json.loads(json.dumps(promoted.to_dict()))["version"] == promoted.version

    row = registry.resolve(f"{NAME}@champion")
    assert row.version == promoted.version and set(row.aliases) == {"champion", "challenger"}
    assert registry.load(f"{NAME}@champion").version == promoted.version
    # a pool that served the weak champion serves the new one, without a restart
    assert world["pool"].get(f"{NAME}@champion").version == promoted.version


def test_the_run_records_parameters_loss_scores_and_the_decision(world, promoted) -> None:
    client = world["registry"].client
    run = client.get_run(promoted.run_id)
    assert run.info.run_name == f"fine-tune {NAME}" and run.info.status == "FINISHED"
    params = run.data.params
    assert (params["base_version"], params["epochs"], params["train_cases"]) == (world["weak"], str(EPOCHS),
                                                                                 str(CORRECTED))
    assert params["heldout_path"] == str(world["heldout"].resolve()) and len(params["heldout_sha256"]) == 64
    assert float(params["learning_rate"]) == pytest.approx(1e-2 / 5)  # a fifth of the champion's
    assert [m.step for m in client.get_metric_history(promoted.run_id, "loss")] == list(range(EPOCHS))
    assert run.data.metrics["challenger_mean_dice"] == pytest.approx(promoted.challenger_dice)
    assert run.data.metrics["champion_mean_dice"] == pytest.approx(promoted.champion_dice)
    assert "challenger_dice_body" in run.data.metrics and "champion_dice_body" in run.data.metrics
    assert run.data.tags["voxlake.decision"] == "promoted" and ">" in run.data.tags["voxlake.decision_reason"]
    version = client.get_model_version(NAME, promoted.version)
    metadata = json.loads(version.tags["voxlake.metadata"])
    assert metadata["base_version"] == world["weak"] and metadata["mean_dice"] == round(promoted.challenger_dice, 4)
    # the held-out set is fixed on the model, each version's score cached on it
    fixed = json.loads(client.get_registered_model(NAME).tags[HELDOUT_TAG])
    assert fixed["path"] == str(world["heldout"].resolve()) and fixed["cases"] == 2
    cached = json.loads(client.get_model_version(NAME, world["weak"]).tags[SCORE_TAG])
    assert cached["mean_dice"] == pytest.approx(promoted.champion_dice)


def test_a_challenger_that_does_not_beat_the_champion_is_kept(world, promoted) -> None:
    """No epochs: the challenger has the champion's weights, ties, and a tie does not promote."""
    registry = world["registry"]
    kept = finetune_from_labels(world["lake"], registry, NAME, epochs=0)  # the fixed held-out set
    assert kept.base_version == promoted.version and not kept.promoted
    assert kept.challenger_dice == pytest.approx(kept.champion_dice, abs=1e-12)
    assert kept.champion_dice == pytest.approx(promoted.challenger_dice)  # the cached score
    assert registry.resolve(f"{NAME}@champion").version == promoted.version
    assert registry.resolve(f"{NAME}@challenger").version == kept.version
    assert world["pool"].get(f"{NAME}@champion").version == promoted.version
    assert "kept as challenger" in kept.summary()
    assert registry.client.get_run(kept.run_id).data.tags["voxlake.decision"] == "kept"


def test_a_challenger_made_worse_by_wrong_corrections_is_not_promoted(world, promoted, tmp_path: Path) -> None:
    """Readers who named the body "bone" and the bone "body": the challenger learns it, scores lower on
    the held-out set, and the champion stays."""
    registry = world["registry"]
    swapped = corrected_lake(tmp_path, world["cases"], names={1: "bone", 12: "body"})
    worse = finetune_from_labels(swapped, registry, NAME, epochs=EPOCHS, seed=1)
    assert worse.base_version == promoted.version and not worse.promoted
    assert worse.challenger_dice < worse.champion_dice, worse.to_dict()
    assert worse.per_label["challenger"]["body"] < worse.per_label["champion"]["body"]
    assert registry.resolve(f"{NAME}@champion").version == promoted.version
    assert registry.resolve(f"{NAME}@challenger").version == worse.version
    tags = registry.client.get_run(worse.run_id).data.tags
    assert tags["voxlake.decision"] == "kept" and "<=" in tags["voxlake.decision_reason"]


def test_a_different_heldout_set_is_refused(world, promoted, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(world["cases"][0], other / world["cases"][0].name)
    with pytest.raises(InvalidArgumentError, match="holds other labels"):
        finetune_from_labels(world["lake"], world["registry"], NAME, heldout=other, epochs=0)
    copy = tmp_path / "copy"
    shutil.copytree(world["heldout"], copy)  # the same cases elsewhere: accepted (checked, not run here)
    from voxlake.ai.finetune import heldout_set

    assert heldout_set(world["registry"], NAME, copy).sha256 == heldout_set(world["registry"], NAME).sha256


def test_the_first_fine_tune_of_a_model_needs_a_heldout_set(world, promoted) -> None:
    registry = world["registry"]
    files = registry.artifacts(NAME, world["weak"])
    version = registry.register("fresh", files, kind="network", labels={o.label: o.name for o in ORGANS.values()})
    registry.set_alias("fresh", "champion", version)
    with pytest.raises(InvalidArgumentError, match="no held-out set yet: pass a folder"):
        finetune_from_labels(world["lake"], registry, "fresh")
    with pytest.raises(InvalidArgumentError, match="pass the model's name"):
        finetune_from_labels(world["lake"], registry, f"{NAME}@champion")


def test_a_lake_without_final_labels_is_a_clear_error(world, tmp_path: Path) -> None:
    lake = voxlake.open(str(tmp_path / "lake"))
    lake.ingest(str(world["cases"][0] / "ct"), workers=0)
    with pytest.raises(InvalidArgumentError, match="no final labels in the lake: correct a segmentation"):
        finetune_from_labels(lake, world["registry"], NAME, heldout=world["heldout"])


def test_cli_from_labels_prints_the_result_as_json(world, promoted, capsys) -> None:
    from voxlake.cli.main import main

    registry = world["registry"]
    argv = ["train", "--from-labels", "--lake", world["lake"].uri, "--model", NAME, "--epochs", "0",
            "--registry", str(registry.root)]
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["promoted"] is False and result["base_version"] == promoted.version
    assert result["train_cases"] == CORRECTED
    assert main(argv) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"{NAME}:") and "kept as challenger: held-out Dice" in out[0]
    # errors are one line
    assert main(["train", "--from-labels", "--lake", world["lake"].uri, "--registry", str(registry.root)]) == 1
    assert "--model" in capsys.readouterr().err
    assert main(["train", "--phantoms", str(world["heldout"]), "--lake", world["lake"].uri]) == 1
    assert "--from-labels" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--from-labels", "--phantoms", "x"])


def test_http_trigger_runs_one_fine_tune_at_a_time_and_reports_its_result(world, promoted, monkeypatch) -> None:
    import httpx

    from tests.server.conftest import Server
    from voxlake.ai import finetune
    from voxlake.server.app import create_app

    registry, lake = world["registry"], world["lake"]
    real = finetune.finetune_from_labels
    release = threading.Event()

    def held(*args: Any, **kwargs: Any) -> FinetuneResult:
        assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(finetune, "finetune_from_labels", held)
    app = create_app(lake, viewer=False, refresh_interval=0, registry=registry)
    with Server(app) as server, httpx.Client(base_url=server.url, timeout=60) as http:
        r = http.post(f"/ai/train/{NAME}", json={"epochs": 0})
        assert r.status_code == 202, r.text
        started = r.json()
        assert started["status"] == "running" and started["url"].endswith(f"/ai/train/{started['id']}")
        busy = http.post(f"/ai/train/{NAME}")
        assert busy.status_code == 409 and started["id"] in busy.json()["reason"]
        release.set()
        url = started["url"].replace(server.url, "")
        state = http.get(url).json()
        while state["status"] == "running":
            time.sleep(0.1)
            state = http.get(url).json()
        assert state["status"] == "done", state
        assert state["result"]["promoted"] is False and state["result"]["base_version"] == promoted.version
        on_disk = json.loads((Path(lake.uri) / "ai" / "train" / f"{started['id']}.json").read_text())
        assert on_disk["status"] == "done" and on_disk["result"]["version"] == state["result"]["version"]

        assert http.post("/ai/train/no-such-model").status_code == 404
        bad = http.post(f"/ai/train/{NAME}", json={"epochs": "many"})
        assert bad.status_code == 400 and "epochs" in bad.json()["reason"]
        other = http.post(f"/ai/train/{NAME}", json={"heldout": str(world["root"] / "weak")})
        assert other.status_code == 400 and "holds other labels" in other.json()["reason"]
        assert http.get("/ai/train/ffffffffffffffffffffffffffffffff").status_code == 404


def test_one_fine_tune_of_a_lake_runs_at_a_time_whoever_starts_it(world, tmp_path: Path) -> None:
    """A fine-tune holds the lake's lock: another process's (the CLI's) makes this one refuse at once,
    from the library and from the server's job runner; the lock goes with the process that held it."""
    lake = world["lake"]
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from voxlake.ai.finetune import finetune_lock\n"
        f"with finetune_lock({lake.uri!r}):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert finetune_running(lake.uri)
        with pytest.raises(FinetuneBusyError, match="one runs at a time"):
            finetune_from_labels(lake, world["registry"], NAME, heldout=world["heldout"])
        with pytest.raises(FinetuneBusyError, match="one runs at a time"):
            FinetuneJobs(lake, world["registry"], tmp_path).submit(NAME, heldout=str(world["heldout"]))
    finally:
        holder.kill()
        holder.wait()
    assert not finetune_running(lake.uri)


def test_train_every_n_final_labels_starts_a_fine_tune_once_n_are_new(world, promoted, tmp_path: Path) -> None:
    jobs = FinetuneJobs(world["lake"], world["registry"], tmp_path)
    # the corrections were drawn from scratch (no model run to correct): they count for every model
    assert finals_per_model(world["lake"]) == {}
    assert finals_per_model(world["lake"], [NAME]) == {NAME: CORRECTED}
    assert jobs.train_when_due(CORRECTED + 1) == []  # not yet
    [state] = jobs.train_when_due(CORRECTED, epochs=0)
    assert state["model"] == NAME and state["trigger"] == f"{CORRECTED} new final labels (train every {CORRECTED})"
    assert jobs.wait(state["id"])["status"] == "done"
    assert jobs.train_when_due(1) == []  # none new since that fine-tune started
    with pytest.raises(InvalidArgumentError, match="N must be 1 or more"):
        jobs.train_when_due(0)


def test_a_server_with_train_every_looks_for_due_fine_tunes_after_each_label_sync(world, monkeypatch) -> None:
    from voxlake.ai import finetune
    from voxlake.server.app import create_app

    calls = []
    monkeypatch.setattr(finetune.FinetuneJobs, "train_when_due", lambda _self, every: calls.append(every) or [])
    app = create_app(world["lake"], viewer=False, refresh_interval=0, registry=world["registry"], train_every=3)
    app.state.ai.sync_labels_soon()
    assert app.state.ai.labels_synced.wait(120)
    assert calls == [3]
    with pytest.raises(InvalidArgumentError, match="train_every must be 1 or more"):
        create_app(world["lake"], viewer=False, registry=world["registry"], train_every=0)
