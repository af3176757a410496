"""MONAI bundles (the model-zoo layout) as registry models, run with their own preprocessing, inferer and
postprocessing.

A bundle directory holds ``configs/inference.json`` (or ``.yaml``), ``configs/metadata.json`` and
``models/model.pt`` (a state_dict for the config's ``network_def``) or ``models/model.ts`` (TorchScript).
Label names come from the metadata: ``network_data_format.outputs.<key>.channel_def`` (channel → name;
channel 0 is the background).

Running one on a :class:`Volume` without files: the config's ``preprocessing`` and ``postprocessing``
are parsed with :class:`monai.bundle.ConfigParser` after their ``LoadImage(d)`` and ``SaveImage(d)``
transforms are taken out; the volume goes in as the image a loader would have produced (a MetaTensor in
(i, j, k) order with its RAS affine), so ``Orientationd``, ``Spacingd`` and ``Invertd`` work as they do
on files. Then the config's ``inferer`` with its network, then its postprocessing, whose ``Invertd``
brings the prediction back to the volume's grid.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.errors import VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.registry import Registry
    from voxlake.ai.volume import Volume

__all__ = ["BundleError", "BundleModel", "bundle_labels", "import_bundle"]

_LOADERS = ("LoadImage", "LoadImaged")
_SAVERS = ("SaveImage", "SaveImaged")
_CHANNEL_FIRST = ("EnsureChannelFirst", "EnsureChannelFirstd", "AddChannel", "AddChanneld")
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class BundleError(VoxlakeError):
    """A bundle directory that does not follow the model-zoo layout, or that fails to run; the message
    names the bundle and the file or config key."""


def _inference_config(path: Path) -> Path:
    for candidate in ("inference.json", "inference.yaml", "inference.yml"):
        if (path / "configs" / candidate).is_file():
            return path / "configs" / candidate
    raise BundleError(f"bundle {path}: configs/inference.json is missing")


def _weights(path: Path) -> Path:
    for candidate in ("model.pt", "model.ts"):
        if (path / "models" / candidate).is_file():
            return path / "models" / candidate
    raise BundleError(f"bundle {path}: models/model.pt (or models/model.ts) is missing")


def _metadata(path: Path) -> dict[str, Any]:
    meta = path / "configs" / "metadata.json"
    if not meta.is_file():
        raise BundleError(f"bundle {path}: configs/metadata.json is missing")
    try:
        return json.loads(meta.read_text())
    except ValueError as exc:
        raise BundleError(f"bundle {path}: configs/metadata.json is not JSON ({exc})") from exc


def _io_keys(meta: dict[str, Any], path: Path) -> tuple[str, str]:
    fmt = meta.get("network_data_format") or {}
    inputs, outputs = fmt.get("inputs") or {}, fmt.get("outputs") or {}
    if not inputs or not outputs:
        raise BundleError(f"bundle {path}: configs/metadata.json has no network_data_format inputs/outputs")
    return next(iter(inputs)), next(iter(outputs))


def bundle_labels(path: str | os.PathLike[str]) -> dict[int, str]:
    """Label value → name from the bundle metadata (``network_data_format.outputs`` → ``channel_def``),
    without the background (channel 0)."""
    path = Path(path)
    meta = _metadata(path)
    _, out_key = _io_keys(meta, path)
    channel_def = meta["network_data_format"]["outputs"][out_key].get("channel_def")
    if not channel_def:
        raise BundleError(f"bundle {path}: metadata output {out_key!r} has no channel_def (label names)")
    labels = {int(k): str(v) for k, v in channel_def.items() if int(k) != 0}
    if not labels:
        raise BundleError(f"bundle {path}: channel_def of {out_key!r} names no label besides background")
    return labels


def import_bundle(registry: Registry, path: str | os.PathLike[str], *, name: str) -> str:
    """Register the bundle directory ``path`` as a new version of ``name``; returns the version."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError(f"bundle {path}: not a directory")
    _inference_config(path)
    weights = _weights(path)
    labels = bundle_labels(path)
    meta = _metadata(path)
    info = {"bundle_name": meta.get("name", path.name), "bundle_version": meta.get("version", ""),
            "monai_version": meta.get("monai_version", ""), "weights": weights.name,
            "source": str(path.resolve())}
    from voxlake.ai.registry import ModelKind

    return registry.register(name, path, kind=ModelKind.BUNDLE, labels=labels, metadata=info)


def _target(item: Any) -> str:
    return str(item.get("_target_", "")).rsplit(".", 1)[-1] if isinstance(item, dict) else ""


class BundleModel:
    """A :class:`~voxlake.ai.model.SegmentationModel` that runs a MONAI bundle directory. The config is
    parsed and the network loaded on the first ``predict``."""

    def __init__(self, path: str | os.PathLike[str], *, name: str, version: str,
                 labels: dict[int, str] | None = None, device: str | None = None) -> None:
        self.path = Path(path)
        self.name = name
        self.version = version
        self.labels = dict(labels) if labels is not None else bundle_labels(self.path)
        self.device = device
        self._parts: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"BundleModel({self.name!r}, version={self.version!r}, path={str(self.path)!r})"

    def _load(self) -> dict[str, Any]:
        if self._parts is not None:
            return self._parts
        import torch
        from monai.bundle import ConfigParser

        label = f"bundle {self.name}:{self.version} ({self.path})"
        meta = _metadata(self.path)
        in_key, out_key = _io_keys(meta, self.path)
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        parser = ConfigParser()
        parser.read_config(str(_inference_config(self.path)))
        parser.read_meta(str(self.path / "configs" / "metadata.json"))
        parser["bundle_root"] = str(self.path)
        parser["device"] = f"$torch.device('{device}')"
        adds_channel = False  # does the preprocessing (without its loader) add the channel axis?
        for key, dropped in (("preprocessing", _LOADERS), ("postprocessing", _SAVERS)):
            if key not in parser:
                raise BundleError(f"{label}: the inference config has no {key!r}")
            if not (isinstance(parser[key], dict) and isinstance(parser[key].get("transforms"), list)):
                raise BundleError(f"{label}: {key!r} of the inference config is not a Compose of transforms")
            kept = [t for t in parser[key]["transforms"] if _target(t) not in dropped]
            adds_channel |= key == "preprocessing" and any(_target(t) in _CHANNEL_FIRST for t in kept)
            parser[f"{key}#transforms"] = kept
        try:
            weights = _weights(self.path)
            if weights.suffix == ".ts":
                network = torch.jit.load(str(weights), map_location=device)
            else:
                network = parser.get_parsed_content("network_def").to(device)
                state = torch.load(weights, map_location=device, weights_only=True)
                if isinstance(state, dict) and isinstance(state.get("model"), dict):
                    state = state["model"]  # a CheckpointSaver file: {"model": state_dict, ...}
                network.load_state_dict(state)
            network.eval()
            self._parts = {
                "pre": parser.get_parsed_content("preprocessing"),
                "inferer": parser.get_parsed_content("inferer"),
                "post": parser.get_parsed_content("postprocessing"),
                "network": network, "device": device, "in": in_key, "out": out_key,
                "adds_channel": adds_channel,
            }
        except BundleError:
            raise
        except Exception as exc:  # anything MONAI's parser or torch raises, named for the user
            raise BundleError(f"{label}: cannot load ({type(exc).__name__}: {exc})") from exc
        return self._parts

    def predict(self, volume: Volume) -> np.ndarray:
        """A label map of ``volume.shape`` (uint8, or uint16 past 255 labels) holding channel indices,
        which are the label values of ``channel_def``."""
        import torch
        from monai.data import MetaTensor

        parts = self._load()
        label = f"bundle {self.name}:{self.version}"
        affine = _LPS_TO_RAS @ np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
        image = torch.from_numpy(np.ascontiguousarray(volume.array.transpose(2, 1, 0), dtype=np.float32))
        # What LoadImage(d) would give: no channel axis for EnsureChannelFirst(d) to add, else channel first.
        meta = {"filename_or_obj": volume.SeriesInstanceUID, "original_affine": affine, "space": "RAS",
                "spatial_shape": np.array(image.shape),
                "original_channel_dim": "no_channel" if parts["adds_channel"] else 0}
        if not parts["adds_channel"]:
            image = image[None]
        data = {parts["in"]: MetaTensor(image, affine=torch.as_tensor(affine), meta=meta)}
        try:
            data = parts["pre"](data)
            with torch.no_grad():
                batch = data[parts["in"]][None].to(parts["device"])
                data[parts["out"]] = parts["inferer"](batch, parts["network"])[0]
            data = parts["post"](data)
        except Exception as exc:
            raise BundleError(f"{label}: failed on series {volume.SeriesInstanceUID} "
                              f"({type(exc).__name__}: {exc})") from exc
        pred = data[parts["out"]]
        pred = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        if pred.ndim == 4:
            pred = pred[0] if pred.shape[0] == 1 else pred.argmax(0)  # no AsDiscreted in the bundle
        out = np.rint(pred).astype(np.uint8 if max(self.labels) < 256 else np.uint16).transpose(2, 1, 0)
        if out.shape != volume.shape:
            raise BundleError(f"{label}: prediction shape {out.shape} differs from the volume's "
                              f"{volume.shape}; its postprocessing must invert the preprocessing (Invertd)")
        unknown = set(np.unique(out).tolist()) - {0, *self.labels}
        if unknown:
            raise BundleError(f"{label}: prediction holds values {sorted(unknown)} that channel_def does not name")
        return np.ascontiguousarray(out)

