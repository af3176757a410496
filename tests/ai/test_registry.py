"""The model registry on MLflow (SQLite store): versions, aliases, listing, loading by spec, and the
built-in ct-tissue listed and loaded without weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlflow")
pytest.importorskip("monai")

import torch

from voxlake.ai.model import SegmentationModel
from voxlake.ai.network import NetworkConfig, PhantomOrgansModel, build_network
from voxlake.ai.registry import ModelNotFoundError, Registry, default_uri, parse_spec
from voxlake.errors import InvalidArgumentError

torch.set_num_threads(1)
LABELS = {1: "liver", 2: "spleen"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


def _network_files(tmp: Path, seed: int) -> dict[str, Path]:
    torch.manual_seed(seed)
    config = NetworkConfig(labels=LABELS, spacing=(8.0, 8.0, 8.0), channels=(4, 8), roi=(32, 32, 32))
    return PhantomOrgansModel(build_network(config), config, name="x", version="0").save(tmp)


@pytest.fixture(scope="module")
def two_versions(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    first = registry.register("organs", _network_files(tmp_path_factory.mktemp("v1"), 1), kind="network",
                              labels=LABELS, metadata={"note": "first"})
    folder = _network_files(tmp_path_factory.mktemp("v2"), 2)["weights.pt"].parent  # a directory, too
    second = registry.register("organs", folder, kind="network", labels=LABELS)
    return first, second


def test_spec_is_name_name_at_alias_or_name_colon_version() -> None:
    assert parse_spec("organs") == ("organs", None, None)
    assert parse_spec("organs@champion") == ("organs", "champion", None)
    assert parse_spec("organs:3") == ("organs", None, "3")


def test_location_is_the_argument_else_the_environment_else_the_user_data_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VOXLAKE_REGISTRY", str(tmp_path / "env"))
    assert default_uri() == str(tmp_path / "env")
    monkeypatch.delenv("VOXLAKE_REGISTRY")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_uri() == str(tmp_path / "data" / "voxlake" / "registry")


def test_a_folder_registry_keeps_a_sqlite_store_and_artifacts_in_it(registry: Registry,
                                                                     two_versions: tuple[str, str]) -> None:
    assert registry.uri == f"sqlite:///{registry.root / 'registry.db'}"
    assert (registry.root / "registry.db").is_file()
    assert (registry.artifacts("organs", two_versions[0]) / "weights.pt").is_file()
    assert registry.artifacts("organs", two_versions[0]).is_relative_to(registry.root)


def test_registering_again_adds_a_version(two_versions: tuple[str, str]) -> None:
    assert two_versions == ("1", "2")


def test_list_shows_every_version_with_kind_labels_aliases_and_time(registry: Registry,
                                                                    two_versions: tuple[str, str]) -> None:
    registry.set_alias("organs", "champion", "1")
    registry.set_alias("organs", "challenger", "2")
    rows = {(r.name, r.version): r for r in registry.list()}
    assert rows["organs", "1"].aliases == ("champion",)
    assert rows["organs", "2"].aliases == ("challenger",)
    assert rows["organs", "1"].kind == "network" and rows["organs", "1"].labels == LABELS
    assert rows["organs", "1"].created <= rows["organs", "2"].created


def test_load_by_alias_version_or_name_gives_that_version(registry: Registry,
                                                          two_versions: tuple[str, str]) -> None:
    registry.set_alias("organs", "champion", "1")
    registry.set_alias("organs", "challenger", "2")
    assert registry.load("organs@champion").version == "1"
    assert registry.load("organs@challenger").version == "2"
    assert registry.load("organs:2").version == "2"
    assert registry.load("organs").version == "1"  # the champion
    model = registry.load("organs:1")
    assert isinstance(model, SegmentationModel) and model.labels == LABELS


def test_loaded_weights_predict_as_the_saved_network(registry: Registry, two_versions: tuple[str, str],
                                                     tmp_path: Path) -> None:
    files = _network_files(tmp_path, 1)  # the same seed as version 1
    original = PhantomOrgansModel.load(files["weights.pt"].parent, name="organs", version="1")
    array = np.random.default_rng(0).normal(0, 300, (12, 20, 20)).astype(np.float32)
    expected = original.predict_array(array, (5.0, 7.0, 7.0))
    got = registry.load("organs:1").predict_array(array, (5.0, 7.0, 7.0))
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, expected)


def test_missing_model_alias_or_version_raise_errors_naming_them(registry: Registry,
                                                                  two_versions: tuple[str, str]) -> None:
    with pytest.raises(ModelNotFoundError, match="'nothing'"):
        registry.load("nothing")
    registry.delete_alias("organs", "challenger")
    with pytest.raises(ModelNotFoundError, match="'organs' has no alias 'challenger'"):
        registry.load("organs@challenger")
    with pytest.raises(ModelNotFoundError, match="'organs' has no version '9'"):
        registry.load("organs:9")


def test_only_champion_and_challenger_are_aliases(registry: Registry, two_versions: tuple[str, str]) -> None:
    with pytest.raises(InvalidArgumentError, match="champion, challenger"):
        registry.set_alias("organs", "best", "1")


def test_labels_must_name_values_from_one(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="0 is background"):
        registry.register("bad", _network_files(tmp_path, 0), kind="network", labels={0: "bg", 1: "x"})
    with pytest.raises(InvalidArgumentError, match="kind must be one of"):
        registry.register("bad", _network_files(tmp_path, 0), kind="onnx", labels=LABELS)


def test_ct_tissue_is_listed_and_loaded_as_a_builtin_without_weights(registry: Registry) -> None:
    pytest.importorskip("voxlake.ai.tissue")
    row = next(r for r in registry.list() if r.name == "ct-tissue")
    assert row.kind == "builtin" and "champion" in row.aliases and "lungs" in row.labels.values()
    for spec in ("ct-tissue", "ct-tissue@champion", f"ct-tissue:{row.version}"):
        model = registry.load(spec)
        assert model.name == "ct-tissue" and isinstance(model, SegmentationModel)
    with pytest.raises(InvalidArgumentError, match="built-in"):
        registry.register("ct-tissue", {}, kind="network", labels={1: "body"})
