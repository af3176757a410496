"""The model registry: segmentation models as versions of MLflow registered models, with aliases.

Each version is one MLflow run whose artifacts (``model/``) hold what a loader needs: a MONAI bundle
directory (kind ``bundle``) or a voxlake network's weights and config (kind ``network``). The version's
tags say the kind and the labels as JSON, so listing reads no artifact. Models that ship with voxlake and
have no weights (kind ``builtin``: ``ct-tissue``) are not stored at all: every registry lists them
(:data:`BUILTINS`), at their class's ``version`` with the alias ``champion``, and loads them from their
class; their names cannot be registered. So ``ct-tissue``, ``ct-tissue@champion`` and ``ct-tissue:1``
work on an empty registry, and a new rule set is a new class version, not a registry entry.

Where the registry lives: the ``uri`` argument, else ``$VOXLAKE_REGISTRY``, else
``$XDG_DATA_HOME/voxlake/registry`` (``~/.local/share/voxlake/registry``). A folder holds
``registry.db`` (MLflow's SQLite store) and ``artifacts/``; an MLflow URI (``sqlite:///…``,
``http://…``) is used as it is. Never inside a lake: models outlive and serve many lakes.

>>> registry = Registry("./models")  # doctest: +SKIP
>>> version = registry.register("mine", "./mine", kind="network", labels={1: "liver"})  # doctest: +SKIP
>>> registry.set_alias("mine", "champion", version)  # doctest: +SKIP
>>> model = registry.load("mine@champion")  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from voxlake import __version__ as VOXLAKE_VERSION
from voxlake.errors import InvalidArgumentError, MissingExtraError, VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.model import SegmentationModel

__all__ = ["BUILTINS", "Alias", "ModelKind", "ModelNotFoundError", "ModelRow", "Registry", "default_uri",
           "parse_spec"]

REGISTRY_ENV = "VOXLAKE_REGISTRY"
EXPERIMENT = "voxlake-models"
ARTIFACT_PATH = "model"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ModelNotFoundError(VoxlakeError, LookupError):
    """No model, version or alias of that name in the registry; the message names it."""


class ModelKind(StrEnum):
    """How a version's artifacts are loaded."""

    BUILTIN = "builtin"  # a class in voxlake, no artifacts
    BUNDLE = "bundle"  # a MONAI bundle directory (voxlake.ai.bundle)
    NETWORK = "network"  # a voxlake network: weights.pt + config.json (voxlake.ai.network)


class Alias(StrEnum):
    """The aliases a version may carry: the model in use, and the one being evaluated against it."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"


#: Built-in models: name → "module:Class". Their class has ``name`` and ``labels`` and takes no arguments.
BUILTINS: Mapping[str, str] = {"ct-tissue": "voxlake.ai.tissue:CTTissueModel"}


@dataclass(frozen=True)
class ModelRow:
    """One version as ``voxlake models list`` shows it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    kind: str
    labels: dict[int, str]
    created: dt.datetime


def default_uri() -> str:
    """``$VOXLAKE_REGISTRY``, else the per-user data folder (XDG)."""
    if env := os.environ.get(REGISTRY_ENV):
        return env
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data) / "voxlake" / "registry")


def parse_spec(spec: str) -> tuple[str, str | None, str | None]:
    """``name``, ``name@alias`` or ``name:version`` → (name, alias, version)."""
    if "@" in spec:
        name, alias = spec.split("@", 1)
        return name, alias, None
    if ":" in spec:
        name, version = spec.split(":", 1)
        return name, None, version
    return spec, None, None


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidArgumentError(f"model name {name!r} must be letters, digits, '.', '_' or '-' "
                                   "(up to 128, starting with a letter or digit)")
    return name


class Registry:
    """Segmentation models on MLflow's model registry (see the module docstring for the location)."""

    def __init__(self, uri: str | os.PathLike[str] | None = None) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as exc:
            raise MissingExtraError("the model registry needs mlflow: pip install 'voxlake[ai]'") from exc
        import logging

        quiet = logging.getLogger("mlflow")
        if quiet.level == logging.NOTSET:  # its store set-up logs at INFO on every new registry
            quiet.setLevel(logging.WARNING)
        raw = str(uri) if uri is not None else default_uri()
        if "://" in raw:
            self.uri = raw
            self.root = Path(raw.removeprefix("sqlite:///")).parent if raw.startswith("sqlite:///") else None
        else:
            self.root = Path(raw).expanduser().resolve()
            self.root.mkdir(parents=True, exist_ok=True)
            self.uri = f"sqlite:///{self.root / 'registry.db'}"
        self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        self._experiment_id: str | None = None

    def __repr__(self) -> str:
        return f"Registry({self.uri!r})"

    @property
    def client(self) -> Any:
        """The MLflow client of this registry, for runs that log more than :meth:`register` does."""
        return self._client

    def experiment_id(self) -> str:
        """The MLflow experiment that holds the runs of registered versions (created on first use)."""
        if self._experiment_id is None:
            found = self._client.get_experiment_by_name(EXPERIMENT)
            if found is not None:
                self._experiment_id = found.experiment_id
            else:
                from mlflow.exceptions import MlflowException

                location = (self.root / "artifacts").as_uri() if self.root is not None else None
                try:
                    self._experiment_id = self._client.create_experiment(EXPERIMENT, artifact_location=location)
                except MlflowException:  # another process created it first
                    self._experiment_id = self._client.get_experiment_by_name(EXPERIMENT).experiment_id
        return self._experiment_id

    def start_run(self, run_name: str) -> str:
        """Start an MLflow run in the registry's experiment; returns its id (end it with
        ``client.set_terminated``)."""
        return self._client.create_run(self.experiment_id(), run_name=run_name).info.run_id

    # ------------------------------------------------------------------------------------------------------
    def register(self, name: str, model_dir_or_artifacts: str | os.PathLike[str] | Mapping[str, Any], *,
                 kind: ModelKind | str, labels: Mapping[int, str],
                 metadata: Mapping[str, Any] | None = None, run_id: str | None = None) -> str:
        """Log the artifacts in a run and register them as a new version of ``name``; returns the version.

        ``model_dir_or_artifacts`` is a directory (logged whole) or a mapping of artifact file name →
        local path. ``metadata`` (JSON-serialisable) is kept as version tags. ``run_id`` logs into an
        existing run (a training run) instead of a new one; a new run is ended here.
        """
        kind = _kind(kind)
        _check_name(name)
        if name in BUILTINS:
            raise InvalidArgumentError(f"model name {name!r} is a built-in model; choose another name")
        if kind is ModelKind.BUILTIN:
            raise InvalidArgumentError(f"model {name!r}: built-in models are not registered; "
                                       f"they are {', '.join(BUILTINS)}")
        label_map = {int(k): str(v) for k, v in labels.items()}
        if not label_map or 0 in label_map:
            raise InvalidArgumentError(f"model {name!r}: labels must map values 1, 2, ... to names "
                                       f"(0 is background), got {dict(labels)}")
        from mlflow.exceptions import MlflowException

        own_run = run_id is None
        run_id = run_id or self.start_run(f"register {name}")
        try:
            self._log_artifacts(run_id, model_dir_or_artifacts)
            self._client.set_tag(run_id, "voxlake.kind", kind.value)
            try:
                self._client.create_registered_model(name)
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            source = f"{self._client.get_run(run_id).info.artifact_uri}/{ARTIFACT_PATH}"
            tags = {"voxlake.kind": kind.value, "voxlake.labels": json.dumps(label_map),
                    "voxlake.metadata": json.dumps(dict(metadata or {}), default=str)}
            mv = self._client.create_model_version(name, source, run_id=run_id, tags=tags)
        except BaseException:
            if own_run:
                self._client.set_terminated(run_id, "FAILED")
            raise
        if own_run:
            self._client.set_terminated(run_id)
        return str(mv.version)

    def _log_artifacts(self, run_id: str, what: str | os.PathLike[str] | Mapping[str, Any]) -> None:
        if isinstance(what, Mapping):
            with tempfile.TemporaryDirectory(prefix="voxlake-artifacts-") as tmp:
                for rel, src in what.items():
                    dst = Path(tmp) / rel
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
                self._client.log_artifacts(run_id, tmp, ARTIFACT_PATH)
            return
        path = Path(what)
        if not path.is_dir():
            raise InvalidArgumentError(f"model artifacts {path}: not a directory")
        self._client.log_artifacts(run_id, str(path), ARTIFACT_PATH)

    def set_alias(self, name: str, alias: Alias | str, version: str | int) -> None:
        """Point ``alias`` (champion, challenger) of ``name`` at ``version``."""
        alias = _alias(alias)
        self._version(name, str(version))  # a clear error when either is missing
        self._client.set_registered_model_alias(name, alias.value, str(version))

    def delete_alias(self, name: str, alias: Alias | str) -> None:
        self._client.delete_registered_model_alias(name, _alias(alias).value)

    def list(self) -> list[ModelRow]:
        """Every version of every model, built-ins first, then by name and version."""
        rows = [self._builtin_row(name) for name in BUILTINS]
        models = sorted(self._client.search_registered_models(), key=lambda m: m.name)
        for model in models:
            aliases: dict[str, list[str]] = {}
            for alias, version in (model.aliases or {}).items():
                aliases.setdefault(str(version), []).append(alias)
            versions = self._client.search_model_versions(f"name='{model.name}'")
            for mv in sorted(versions, key=lambda v: int(v.version)):
                rows.append(_row(mv, tuple(sorted(aliases.get(str(mv.version), [])))))
        return rows

    def resolve(self, spec: str) -> ModelRow:
        """The version that ``name``, ``name@alias`` or ``name:version`` names (``name`` alone: the
        champion, else the latest version)."""
        name, alias, version = parse_spec(spec)
        if name in BUILTINS:
            row = self._builtin_row(name)
            if alias is not None and alias not in row.aliases:
                raise ModelNotFoundError(f"model {name!r} has no alias {alias!r} (built-in: use {name}@champion)")
            if version is not None and version != row.version:
                raise ModelNotFoundError(f"model {name!r} has no version {version!r} "
                                         f"(built-in, version {row.version})")
            return row
        from mlflow.exceptions import MlflowException

        if alias is not None:
            try:
                mv = self._client.get_model_version_by_alias(name, alias)
            except MlflowException:
                self._registered(name)
                raise ModelNotFoundError(f"model {name!r} has no alias {alias!r}; "
                                         f"set one with Registry.set_alias") from None
            return _row(mv, (alias,))
        if version is None:
            model = self._registered(name)
            if Alias.CHAMPION.value in (model.aliases or {}):
                return self.resolve(f"{name}@{Alias.CHAMPION.value}")
            versions = self._client.search_model_versions(f"name='{name}'")
            if not versions:
                raise ModelNotFoundError(f"model {name!r} has no versions")
            version = str(max(int(v.version) for v in versions))
        return _row(self._version(name, version), ())

    def load(self, spec: str) -> SegmentationModel:
        """The model that ``spec`` names, ready to ``predict`` (``name`` alone: the champion, else the
        latest version)."""
        row = self.resolve(spec)
        if row.kind == ModelKind.BUILTIN:
            return _builtin_class(row.name)()
        path = self.artifacts(row.name, row.version)
        if row.kind == ModelKind.BUNDLE:
            from voxlake.ai.bundle import BundleModel

            return BundleModel(path, name=row.name, version=row.version, labels=row.labels)
        if row.kind == ModelKind.NETWORK:
            from voxlake.ai.network import PhantomOrgansModel

            return PhantomOrgansModel.load(path, name=row.name, version=row.version)
        raise ModelNotFoundError(f"model {row.name}:{row.version} has kind {row.kind!r}, "
                                 f"which this voxlake cannot load")

    def artifacts(self, name: str, version: str) -> Path:
        """A local folder with the artifacts of a version: the store's own folder when it is local,
        else a copy cached beside the registry (or in a temporary folder)."""
        mv = self._version(name, version)
        from urllib.parse import unquote, urlparse

        parsed = urlparse(mv.source)
        if parsed.scheme == "file" and Path(unquote(parsed.path)).is_dir():
            return Path(unquote(parsed.path))
        import mlflow.artifacts

        cache = (self.root / "cache" if self.root is not None else Path(tempfile.gettempdir()) / "voxlake-models")
        dst = cache / name / str(version)
        if not (dst / ARTIFACT_PATH).is_dir():
            dst.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst),
                                                tracking_uri=self.uri)
        return dst / ARTIFACT_PATH

    # ------------------------------------------------------------------------------------------------------
    def _registered(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return self._client.get_registered_model(name)
        except MlflowException:
            known = ", ".join([*BUILTINS, *(m.name for m in self._client.search_registered_models())])
            raise ModelNotFoundError(f"no model {name!r} in the registry {self.uri} "
                                     f"(models: {known})") from None

    def _version(self, name: str, version: str) -> Any:
        from mlflow.exceptions import MlflowException

        self._registered(name)
        try:
            return self._client.get_model_version(name, str(version))
        except MlflowException:
            raise ModelNotFoundError(f"model {name!r} has no version {version!r}") from None

    @staticmethod
    def _builtin_row(name: str) -> ModelRow:
        model = _builtin_class(name)()
        return ModelRow(name, str(getattr(model, "version", VOXLAKE_VERSION)), (Alias.CHAMPION.value,),
                        ModelKind.BUILTIN.value, dict(model.labels), dt.datetime.fromtimestamp(0, dt.UTC))


def _builtin_class(name: str) -> Any:
    module, _, cls = BUILTINS[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as exc:
        raise ModelNotFoundError(f"built-in model {name!r}: cannot import {BUILTINS[name]} ({exc})") from exc


def _row(mv: Any, aliases: tuple[str, ...]) -> ModelRow:
    tags = mv.tags or {}
    labels = {int(k): v for k, v in json.loads(tags.get("voxlake.labels", "{}")).items()}
    created = dt.datetime.fromtimestamp(mv.creation_timestamp / 1000, dt.UTC)
    aliases = tuple(sorted(set(aliases) | set(getattr(mv, "aliases", None) or ())))
    return ModelRow(mv.name, str(mv.version), aliases, tags.get("voxlake.kind", ""), labels, created)


def _kind(value: ModelKind | str) -> ModelKind:
    try:
        return ModelKind(value)
    except ValueError:
        raise InvalidArgumentError(f"kind must be one of {', '.join(k.value for k in ModelKind)}; "
                                   f"got {value!r}") from None


def _alias(value: Alias | str) -> Alias:
    try:
        return Alias(value)
    except ValueError:
        raise InvalidArgumentError(f"alias must be one of {', '.join(a.value for a in Alias)}; "
                                   f"got {value!r}") from None
