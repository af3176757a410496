"""MONAI bundles: imported from a model-zoo directory the tests build (the spleen bundle's config
structure, small networks), registered with labels from their metadata, run on a real DICOM volume with
the bundle's own preprocessing, inferer and postprocessing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("monai")
pytest.importorskip("mlflow")

import pydicom
import torch

from voxlake.ai.bundle import BundleError, BundleModel, bundle_labels, import_bundle
from voxlake.ai.model import SegmentationModel
from voxlake.ai.registry import Registry
from voxlake.ai.volume import volume_from_datasets
from voxlake.synth.phantom import generate_phantoms

torch.set_num_threads(1)


def _inference_config(network_def: dict, pixdim: list[float], a_min: float, a_max: float) -> dict:
    """The spleen_ct_segmentation bundle's inference.json, with a given network and spacing."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "/workspace/data/Task09_Spleen",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": a_min, "a_max": a_max,
             "b_min": 0.0, "b_max": 1.0, "clip": True},
            {"_target_": "EnsureTyped", "keys": "image"},
        ]},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 4},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 4,
                    "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "meta_key_postfix": "meta_dict", "nearest_interp": False, "to_tensor": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "seg",
             "resample": False, "separate_folder": False},
        ]},
        "handlers": [{"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                      "load_dict": {"model": "@network"}}],
        "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                      "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                      "val_handlers": "@handlers", "amp": True},
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@evaluator.run()"],
    }


def _metadata(channel_def: dict[str, str]) -> dict:
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/"
                  "meta_schema_20220324.json",
        "version": "0.1.0", "monai_version": "1.6.1", "name": "voxlake test bundle",
        "task": "test segmentation", "description": "built by voxlake's tests, random or fixed weights",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": [32, 32, 32], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "image"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": len(channel_def),
                                 "spatial_shape": [32, 32, 32], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": channel_def}},
        },
    }


def write_bundle(root: Path, network_def: dict, state_dict: dict, channel_def: dict[str, str], *,
                 pixdim: list[float], a_min: float = -57, a_max: float = 164) -> Path:
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    config = _inference_config(network_def, pixdim, a_min, a_max)
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=2))
    (root / "configs" / "metadata.json").write_text(json.dumps(_metadata(channel_def), indent=2))
    torch.save(state_dict, root / "models" / "model.pt")
    return root


UNET = {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8, 16],
        "strides": [2, 2], "num_res_units": 1, "norm": "batch"}


@pytest.fixture(scope="module")
def unet_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    net = UNet(**{k: v for k, v in UNET.items() if k != "_target_"})
    return write_bundle(tmp_path_factory.mktemp("bundles") / "tiny_unet", UNET, net.state_dict(),
                        {"0": "background", "1": "liver", "2": "spleen"}, pixdim=[6.0, 6.0, 6.0])


@pytest.fixture(scope="module")
def threshold_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1x1x1 convolution whose channel 1 wins where the scaled intensity passes 0.5: HU > 0 with
    a_min -500, a_max 500. Its output is known, so the geometry of the round trip can be checked."""
    conv = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    state = {"weight": torch.tensor([-1.0, 1.0]).reshape(2, 1, 1, 1, 1), "bias": torch.tensor([0.5, -0.5])}
    return write_bundle(tmp_path_factory.mktemp("bundles") / "threshold", conv, state,
                        {"0": "background", "1": "dense"}, pixdim=[4.0, 4.0, 4.0], a_min=-500, a_max=500)


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("phantom")
    generate_phantoms(out, cases=1, seed=3, rows=40, columns=40, slices=(20, 24), slice_thickness=(5.0, 5.0))
    return volume_from_datasets(pydicom.dcmread(f) for f in sorted((out / "case-0000" / "ct").glob("*.dcm")))


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


def test_bundle_labels_come_from_metadata_channel_def_without_background(unet_bundle: Path) -> None:
    assert bundle_labels(unet_bundle) == {1: "liver", 2: "spleen"}


def test_imported_bundle_is_registered_with_its_labels_and_predicts_declared_values(
        unet_bundle: Path, registry: Registry, volume) -> None:
    version = import_bundle(registry, unet_bundle, name="tiny-unet")
    row = registry.resolve(f"tiny-unet:{version}")
    assert (row.kind, row.labels) == ("bundle", {1: "liver", 2: "spleen"})
    model = registry.load(f"tiny-unet:{version}")
    assert isinstance(model, BundleModel) and isinstance(model, SegmentationModel)
    assert (model.name, model.version) == ("tiny-unet", version)
    labels = model.predict(volume)
    assert labels.shape == volume.shape
    assert set(np.unique(labels).tolist()) <= {0, 1, 2}


def test_bundle_prediction_lies_on_the_volume_grid_after_its_own_resampling_and_inversion(
        threshold_bundle: Path, registry: Registry, volume) -> None:
    version = import_bundle(registry, threshold_bundle, name="threshold")
    labels = registry.load(f"threshold:{version}").predict(volume)
    truth = volume.array > 0
    dice = 2 * np.logical_and(labels == 1, truth).sum() / ((labels == 1).sum() + truth.sum())
    # resampled to 4 mm and back: edges differ, a flipped or transposed axis would not come close
    assert dice > 0.85
    flipped = np.flip(truth, axis=0)
    assert 2 * np.logical_and(labels == 1, flipped).sum() / ((labels == 1).sum() + flipped.sum()) < dice


def test_a_bundle_whose_loader_adds_the_channel_gets_a_channel_first_image(threshold_bundle: Path,
                                                                          tmp_path: Path, volume) -> None:
    import shutil

    bundle = shutil.copytree(threshold_bundle, tmp_path / "loader_channel")
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    transforms = config["preprocessing"]["transforms"]
    transforms[0]["ensure_channel_first"] = True
    del transforms[1]  # EnsureChannelFirstd
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    expected = BundleModel(threshold_bundle, name="threshold", version="a").predict(volume)
    np.testing.assert_array_equal(BundleModel(bundle, name="threshold", version="b").predict(volume), expected)


def test_a_bundle_without_weights_is_refused_naming_the_missing_file(tmp_path: Path, unet_bundle: Path,
                                                                    registry: Registry) -> None:
    import shutil

    broken = shutil.copytree(unet_bundle, tmp_path / "broken")
    (broken / "models" / "model.pt").unlink()
    with pytest.raises(BundleError, match=r"models/model\.pt"):
        import_bundle(registry, broken, name="broken")


def test_a_bundle_without_channel_def_is_refused(tmp_path: Path, unet_bundle: Path) -> None:
    import shutil

    broken = shutil.copytree(unet_bundle, tmp_path / "nolabels")
    meta = json.loads((broken / "configs" / "metadata.json").read_text())
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    (broken / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="channel_def"):
        bundle_labels(broken)


@pytest.mark.slow
def test_bundle_runs_on_the_real_ct_series_and_maps_back_to_its_grid(threshold_bundle: Path,
                                                                    ct_volume) -> None:
    model = BundleModel(threshold_bundle, name="threshold", version="test")
    labels = model.predict(ct_volume)
    assert labels.shape == ct_volume.shape
    truth = ct_volume.array > 0
    assert 2 * np.logical_and(labels == 1, truth).sum() / ((labels == 1).sum() + truth.sum()) > 0.8
