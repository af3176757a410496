"""Training phantom-organs on tiny synthetic phantoms: the pipeline (prepare, train, score held-out
cases, log to MLflow, register, alias) and the reproducibility of the recipe. Quality is measured by the
benchmark, not here: two epochs on three 40x40 phantoms learn little."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")
pytest.importorskip("mlflow")

import torch

from voxlake.ai.network import PhantomOrgansModel
from voxlake.ai.registry import Registry
from voxlake.ai.train import (
    dice_per_label,
    fit_network,
    load_phantom_case,
    phase_weights,
    train_phantom_organs,
)
from voxlake.errors import InvalidArgumentError
from voxlake.synth.phantom import ORGANS, generate_phantoms

torch.set_num_threads(1)
TINY = {"epochs": 2, "seed": 5, "holdout": 1, "spacing": 8.0, "patch": 32, "patches_per_case": 2,
        "channels": (8, 16, 32)}


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantoms")
    generate_phantoms(out, cases=3, seed=2, rows=40, columns=40, slices=(20, 24), slice_thickness=(5.0, 5.0))
    return out


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def trained(phantoms: Path, registry: Registry) -> tuple[str, dict[str, float]]:
    return train_phantom_organs(phantoms, registry=registry, **TINY)


def test_phantom_labels_are_read_onto_the_ct_volume_grid(phantoms: Path) -> None:
    case = load_phantom_case(phantoms / "case-0000")
    assert case.labels.shape == case.volume.shape
    assert set(np.unique(case.labels).tolist()) <= {0, *ORGANS}
    # the body label holds soft tissue, the background outside it is mostly air
    assert np.median(case.volume.array[case.labels == 1]) > -200
    assert np.median(case.volume.array[case.labels == 0]) < -500


def test_dice_is_one_for_identical_maps_and_skips_labels_absent_from_the_truth() -> None:
    truth = np.zeros((4, 4, 4), np.uint8)
    truth[:2] = 1
    prediction = truth.copy()
    prediction[0] = 0
    assert dice_per_label(truth, truth, [1, 2]) == {1: 1.0}
    assert dice_per_label(truth, prediction, [1]) == {1: pytest.approx(2 * 16 / (32 + 16))}


@pytest.mark.slow
def test_training_registers_a_champion_version_with_logged_metrics(
        trained: tuple[str, dict[str, float]], registry: Registry) -> None:
    version, metrics = trained
    row = registry.resolve("phantom-organs@champion")
    assert row.version == version and row.kind == "network"
    assert row.labels == {o.label: o.name for o in ORGANS.values()}
    assert 0.0 <= metrics["mean_dice"] <= 1.0 and "dice_body" in metrics
    assert metrics["seconds_per_epoch"] > 0
    run_id = registry.client.get_model_version("phantom-organs", version).run_id
    run = registry.client.get_run(run_id)
    assert run.data.params["epochs"] == "2" and run.data.params["seed"] == "5"
    assert run.data.metrics["mean_dice"] == pytest.approx(metrics["mean_dice"])
    history = registry.client.get_metric_history(run_id, "loss")
    assert [m.step for m in history] == [0, 1]
    weights = registry.artifacts("phantom-organs", version) / "weights.pt"
    assert weights.stat().st_size < 5_000_000


@pytest.mark.slow
def test_trained_model_loads_and_predicts_organ_labels_on_the_volume_grid(
        trained: tuple[str, dict[str, float]], registry: Registry, phantoms: Path) -> None:
    model = registry.load("phantom-organs@champion")
    assert isinstance(model, PhantomOrgansModel)
    case = load_phantom_case(phantoms / "case-0002")
    labels = model.predict(case.volume)
    assert labels.shape == case.volume.shape and labels.dtype == np.uint8
    assert set(np.unique(labels).tolist()) <= {0, *ORGANS}


@pytest.mark.slow
def test_same_seed_gives_the_same_weights_and_a_second_version_keeps_the_champion(
        trained: tuple[str, dict[str, float]], registry: Registry, phantoms: Path) -> None:
    version, metrics = trained
    again, metrics_again = train_phantom_organs(phantoms, registry=registry, **TINY)
    assert int(again) == int(version) + 1
    assert registry.resolve("phantom-organs@champion").version == version
    first = torch.load(registry.artifacts("phantom-organs", version) / "weights.pt", weights_only=True)
    second = torch.load(registry.artifacts("phantom-organs", again) / "weights.pt", weights_only=True)
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert metrics_again["mean_dice"] == metrics["mean_dice"]


def test_training_needs_a_held_out_case(tmp_path: Path, registry: Registry) -> None:
    with pytest.raises(InvalidArgumentError, match="at least 2 cases"):
        train_phantom_organs(tmp_path, registry=registry, epochs=1)


def test_each_contrast_phase_gets_an_equal_share_of_the_patches(tmp_path: Path) -> None:
    phases = ["native", "arterial", "portal-venous", "portal-venous", "portal-venous", None]
    for i, phase in enumerate(phases):
        (tmp_path / f"case-{i}").mkdir()
        if phase is not None:
            (tmp_path / f"case-{i}" / "labels.json").write_text(json.dumps({"case": {"phase": phase}}))
    weights = phase_weights(sorted(tmp_path.glob("case-*")))
    share = {p: sum(w for w, q in zip(weights, phases, strict=True) if q == p) for p in set(phases)}
    assert share == {"native": 1.0, "arterial": 1.0, "portal-venous": pytest.approx(1.0), None: 1.0}


def test_case_weights_decide_which_cases_an_epoch_draws_from() -> None:
    """A case with no odds is never drawn: the network trained on case 0 alone equals the one trained
    on [case 0, case 1] with odds (1, 0) and the same number of patches."""
    x = torch.zeros((1, 16, 16, 16))
    y0, y1 = torch.zeros((16, 16, 16), dtype=torch.long), torch.ones((16, 16, 16), dtype=torch.long)
    drawn: list[int] = []

    def build() -> torch.nn.Module:
        net = torch.nn.Conv3d(1, 2, 1)
        net.register_forward_hook(lambda _m, _i, out: drawn.append(out.shape[0]))
        return net

    common = {"epochs": 1, "seed": 3, "patch": 8, "batch_size": 1, "learning_rate": 1e-2, "device": "cpu"}
    only = fit_network(build, [(x, y0)], patches_per_case=4, **common)
    odds = fit_network(build, [(x, y0), (x, y1)], patches_per_case=2, case_weights=[1.0, 0.0], **common)
    for a, b in zip(only.network.parameters(), odds.network.parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(drawn) == 8
