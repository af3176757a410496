"""Fine-tuning a network on the readers' corrections: the champion of a model, trained further on the
``final`` labels of a lake (:func:`voxlake.ai.labels.final_labels`), scored on a fixed held-out set,
registered as ``challenger`` and promoted to ``champion`` only when it scores better.

* Training data: for each source series with a final label, its volume
  (:func:`~voxlake.ai.volume.load_series`) and the latest final SEG decoded onto it
  (:func:`~voxlake.ai.labels.decode_masks`); segments are matched to the model's labels by name
  (case-insensitive, surrounding spaces ignored); segments the model does not know are left out and
  reported (``ignored_labels``).
* Held-out set: a folder of phantom cases with their truth (``case-*/ct`` and ``labels.nii.gz``, as
  ``voxlake synth phantoms`` writes them). The first fine-tune of a model records the folder and a
  SHA-256 of its label files as the registered model's tag ``voxlake.heldout``; later runs use it,
  refuse a folder with other content, and refuse to run when the recorded folder has changed. So
  every run of a model is judged on the same cases. A version's score there is cached as its tag
  ``voxlake.heldout_dice`` (the champion is scored once, not at every run).
* Training: :func:`voxlake.ai.train.fit_network`, the loop that trains ``phantom-organs`` (the same
  patch sampler, Dice + cross entropy, Adam, cosine decay, deterministic torch seeded with ``seed``),
  starting from the champion's weights and config, its patch size and batch from the champion's
  metadata, the rate a fifth of the champion's (2e-3 / 5 for the recipe's).
* Decision: the new version gets the alias ``challenger``; when its mean held-out Dice (over the
  organs the held-out truth holds) is strictly higher than the champion's, ``champion`` moves to it.
  A :class:`~voxlake.ai.service.ModelPool` resolves aliases at each use, so ``NAME@champion``
  inference picks the new version up without a restart.
* Record: one MLflow run ``fine-tune NAME`` with the parameters, the loss per epoch, both scores (mean
  and per organ), the series trained on (``train_series.json``), and the decision as tags
  (``voxlake.decision`` promoted / kept, ``voxlake.decision_reason``); the version's metadata names
  ``base_version`` and ``mean_dice``.

:class:`FinetuneJobs` runs fine-tunes in a background thread for the server, its state in memory and
in ``<lake>/ai/train/<id>.json``. One fine-tune of a lake runs at a time, whoever starts it: each
holds :func:`finetune_lock`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.errors import InvalidArgumentError, VoxlakeError

if TYPE_CHECKING:
    from voxlake.ai.registry import Registry
    from voxlake.lake.lake import Lake

__all__ = ["FinetuneBusyError", "FinetuneJobs", "FinetuneResult", "HeldoutSet", "check_finetune", "finals_per_model",
           "finetune_from_labels", "finetune_lock", "finetune_running", "heldout_set", "train_folder"]

HELDOUT_TAG = "voxlake.heldout"  # on the registered model: the fixed held-out set
SCORE_TAG = "voxlake.heldout_dice"  # on a version: its score on that set
NO_FINALS = "no final labels in the lake: correct a segmentation in the viewer first"
#: The recipe's defaults (voxlake.ai.train.train_phantom_organs), for a champion whose metadata lacks them.
RECIPE = {"patch": 64, "batch_size": 2, "patches_per_case": 4, "learning_rate": 2e-3}


class FinetuneBusyError(VoxlakeError):
    """A fine-tune of the lake is already running (one runs at a time, whoever started it)."""


@dataclass
class FinetuneResult:
    """What :func:`finetune_from_labels` did. ``champion_dice`` and ``challenger_dice``: mean Dice over
    organs on the held-out set; ``per_label``: ``{"champion": {organ: dice}, "challenger": {...}}``."""

    model: str
    base_version: str
    version: str
    promoted: bool
    champion_dice: float
    challenger_dice: float
    per_label: dict[str, dict[str, float]]
    train_cases: int
    run_id: str
    seconds: float
    reason: str = ""
    epochs: int = 0
    heldout: str = ""
    heldout_sha256: str = ""
    series: list[str] = field(default_factory=list)
    ignored_labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: ``phantom-organs:4 promoted to champion: held-out Dice 0.71 > 0.52 (version 3)``."""
        if self.promoted:
            return (f"{self.model}:{self.version} promoted to champion: held-out Dice "
                    f"{self.challenger_dice:.2f} > {self.champion_dice:.2f} (version {self.base_version})")
        return (f"{self.model}:{self.version} kept as challenger: held-out Dice {self.challenger_dice:.2f} "
                f"<= {self.champion_dice:.2f} of the champion (version {self.base_version})")


@dataclass(frozen=True)
class HeldoutSet:
    """The fixed held-out set of a model: its folder, the SHA-256 of its label files, its cases."""

    path: Path
    sha256: str
    cases: tuple[Path, ...]


def train_folder(lake_uri: str) -> Path:
    """``<lake>/ai/train`` for a local lake; for an object-store lake, a local state folder."""
    from voxlake.lake import storage

    if storage.is_local(lake_uri):
        return Path(storage.normalize(lake_uri)) / "ai" / "train"
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "voxlake" / "train" / hashlib.sha256(lake_uri.encode()).hexdigest()[:16]


@contextlib.contextmanager
def finetune_lock(lake_uri: str) -> Iterator[None]:
    """Hold the lake's fine-tune lock (``<train folder>/.lock``, an exclusive ``flock``) or raise
    :class:`FinetuneBusyError` at once. Every runner takes it (the CLI, ``POST /ai/train``, MONAI
    Label's ``/train``, in this process or another), so two fine-tunes of one lake never race to
    register a challenger and move ``champion``. The kernel drops the lock when its holder dies."""
    folder = train_folder(lake_uri)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FinetuneBusyError(f"a fine-tune of lake {lake_uri} is running; one runs at a time: "
                                    "try again when it is done") from None
        yield
    finally:
        os.close(fd)


def finetune_running(lake_uri: str) -> bool:
    """Whether a fine-tune of the lake holds :func:`finetune_lock` now (a check for a quick refusal)."""
    try:
        with finetune_lock(lake_uri):
            return False
    except FinetuneBusyError:
        return True


# -- the held-out set -------------------------------------------------------------------------------------


def _hash_heldout(folder: Path) -> HeldoutSet:
    if not folder.is_dir():
        raise InvalidArgumentError(f"held-out set {folder}: not a folder")
    cases = tuple(sorted(p for p in folder.glob("case-*") if (p / "labels.nii.gz").is_file()))
    if not cases:
        raise InvalidArgumentError(f"held-out set {folder}: no case-*/labels.nii.gz; write phantom cases "
                                   f"with `voxlake synth phantoms`")
    digest = hashlib.sha256()
    for case in cases:
        digest.update(case.name.encode() + b"\0")
        digest.update(hashlib.sha256((case / "labels.nii.gz").read_bytes()).digest())
    return HeldoutSet(folder.resolve(), digest.hexdigest(), cases)


def heldout_set(registry: Registry, model: str, heldout: str | os.PathLike[str] | None = None) -> HeldoutSet:
    """The held-out set of ``model``: the one its tag ``voxlake.heldout`` records, else ``heldout``
    (recorded by :func:`finetune_from_labels`). Raises when the first run gives none, when ``heldout``
    differs from the recorded set, or when the recorded folder no longer holds the same labels."""
    tags = registry.client.get_registered_model(model).tags or {}
    recorded = json.loads(tags[HELDOUT_TAG]) if HELDOUT_TAG in tags else None
    if recorded is None:
        if heldout is None:
            raise InvalidArgumentError(f"model {model} has no held-out set yet: pass a folder of phantom cases "
                                       f"(--heldout DIR, written by `voxlake synth phantoms`); every later "
                                       f"fine-tune of {model} is scored on it")
        return _hash_heldout(Path(heldout).expanduser())
    if heldout is not None:
        given = _hash_heldout(Path(heldout).expanduser())
        if given.sha256 != recorded["sha256"]:
            raise InvalidArgumentError(f"model {model} is scored on the held-out set {recorded['path']} "
                                       f"(sha256 {recorded['sha256'][:12]}); {given.path} holds other labels "
                                       f"(sha256 {given.sha256[:12]}): leave --heldout out to use the fixed one")
        return given
    try:
        current = _hash_heldout(Path(recorded["path"]))
    except InvalidArgumentError as exc:
        raise InvalidArgumentError(f"model {model}: its held-out set {recorded['path']} cannot be read "
                                   f"({exc}); pass a copy of it with --heldout") from None
    if current.sha256 != recorded["sha256"]:
        raise InvalidArgumentError(f"model {model}: its held-out set {recorded['path']} changed since it was "
                                   f"fixed (sha256 {recorded['sha256'][:12]}, now {current.sha256[:12]}); "
                                   f"restore it or pass a copy with --heldout")
    return current


def _truth_names(case: Path) -> dict[int, str]:
    """Label value → name of a phantom case: its ``labels.json``, else voxlake's phantom organs."""
    try:
        table = json.loads((case / "labels.json").read_text())["labels"]
        return {int(k): str(v["name"]) for k, v in table.items() if int(k) > 0}
    except (OSError, KeyError, ValueError, TypeError, AttributeError):
        from voxlake.synth.phantom import ORGANS

        return {o.label: o.name for o in ORGANS.values()}


def _score(model: Any, heldout: HeldoutSet, say: Callable[[str], None]) -> dict[str, Any]:
    """Mean Dice per organ over the held-out cases holding it (truth mapped to the model's labels by
    name), and their mean: ``{"mean_dice": x, "per_label": {organ: dice}}``."""
    from voxlake.ai.train import dice_per_label, load_phantom_case

    by_name = {_key(n): v for v, n in model.labels.items()}
    scores: dict[int, list[float]] = {v: [] for v in model.labels}
    for directory in heldout.cases:
        case = load_phantom_case(directory)
        lut = np.zeros(256, np.uint8)
        for value, name in _truth_names(directory).items():
            if 0 < value < 256 and _key(name) in by_name:
                lut[value] = by_name[_key(name)]
        truth = lut[case.labels]
        prediction = model.predict(case.volume)
        for value, dice in dice_per_label(truth, prediction, list(model.labels)).items():
            scores[value].append(dice)
    per_label = {model.labels[v]: float(np.mean(s)) for v, s in scores.items() if s}
    if not per_label:
        raise InvalidArgumentError(f"held-out set {heldout.path}: its truth holds none of the labels of "
                                   f"{model.name} ({', '.join(model.labels.values())})")
    mean = float(np.mean(list(per_label.values())))
    say(f"{model.name}:{model.version} on the held-out set: mean Dice {mean:.3f}")
    return {"mean_dice": mean, "per_label": per_label}


def _champion_score(registry: Registry, model: str, version: str, heldout: HeldoutSet,
                    say: Callable[[str], None], loaded: Any = None) -> dict[str, Any]:
    """The held-out score of a version: its cached tag when it was scored on this set, else scored now
    and cached."""
    tags = registry.client.get_model_version(model, version).tags or {}
    if SCORE_TAG in tags:
        cached = json.loads(tags[SCORE_TAG])
        if cached.get("sha256") == heldout.sha256:
            return cached
    score = _score(loaded or registry.load(f"{model}:{version}"), heldout, say) | {"sha256": heldout.sha256}
    registry.client.set_model_version_tag(model, version, SCORE_TAG, json.dumps(score))
    return score


# -- the training data -------------------------------------------------------------------------------------


def _key(label: str) -> str:
    return label.strip().casefold()


def _final_rows(lake: Lake) -> dict[str, list[dict[str, Any]]]:
    from voxlake.ai.labels import final_labels

    rows = final_labels(lake)
    if not rows:
        raise InvalidArgumentError(NO_FINALS)
    by_series: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_series.setdefault(row["SeriesInstanceUID"], []).append(row)
    return by_series


def finals_per_model(lake: Lake, models: Iterable[str] = ()) -> dict[str, int]:
    """Final labels (distinct SEGs with status ``final`` in ``labels``) that count for each model:
    those correcting its runs, plus those correcting no run (drawn from scratch), which count for
    every model of ``models`` (fine-tuning trains on every final label whose segments it knows)."""
    from voxlake.ai.labels import TABLE, _has_table

    if not _has_table(lake, TABLE):
        return {}
    rows = lake.sql("SELECT model, count(DISTINCT SegmentationSOPInstanceUID) FROM labels WHERE status = 'final' "
                    "GROUP BY model").fetchall()
    owned = {str(model): int(n) for model, n in rows if model is not None}
    free = sum(int(n) for model, n in rows if model is None)
    return {name: owned.get(name, 0) + free for name in {*owned, *models} if owned.get(name, 0) + free}


def _read_seg(lake: Lake, sop: str) -> Any:
    import pydicom

    from voxlake.dicom.frames import open_uri

    found = lake.connect().execute("SELECT uri FROM instances WHERE SOPInstanceUID = ? LIMIT 1", [sop]).fetchall()
    if not found:
        raise InvalidArgumentError(f"final label SEG {sop} is no longer in the lake's instances")
    with open_uri(found[0][0]) as fp:
        return pydicom.dcmread(fp)


def _training_cases(lake: Lake, config: Any, by_series: dict[str, list[dict[str, Any]]],
                    say: Callable[[str], None]) -> tuple[list[tuple[Any, Any]], list[str], list[str]]:
    """(prepared cases, their series, the segment labels the model does not know)."""
    from voxlake.ai.labels import decode_masks
    from voxlake.ai.train import prepare_case
    from voxlake.ai.volume import load_series

    values = {_key(name): value for value, name in config.labels.items()}
    data, series, ignored = [], [], set()
    for uid, rows in by_series.items():
        known = [(values[_key(r["label"])], int(r["SegmentNumber"])) for r in rows if _key(r["label"]) in values]
        ignored.update(r["label"] for r in rows if _key(r["label"]) not in values)
        if not known:
            say(f"series {uid}: none of its final labels is a label of the model; left out")
            continue
        volume = load_series(lake, uid)
        masks = decode_masks(_read_seg(lake, rows[0]["SegmentationSOPInstanceUID"]), volume)
        label_map = np.zeros(volume.shape, np.uint8)
        for value, number in sorted(known):  # higher values (organs) over lower ones (the body)
            if number in masks:
                label_map[masks[number]] = value
        data.append(prepare_case(volume.array, volume.spacing, label_map, config))
        series.append(uid)
        del volume, masks
    if not data:
        raise InvalidArgumentError(f"the final labels of the lake name none of the model's labels "
                                   f"({', '.join(sorted(ignored))} are not among "
                                   f"{', '.join(config.labels.values())})")
    return data, series, sorted(ignored)


# -- the fine-tune -----------------------------------------------------------------------------------------


def _champion(registry: Registry, model: str) -> Any:
    """The champion's row, checked to be a voxlake network."""
    from voxlake.ai.registry import parse_spec

    name, alias, version = parse_spec(model)
    if alias is not None or version is not None:
        raise InvalidArgumentError(f"pass the model's name, not {model!r}: fine-tuning starts from its champion")
    row = registry.resolve(f"{name}@champion")
    if row.kind != "network":
        raise InvalidArgumentError(f"model {name}:{row.version} is of kind {row.kind}: only voxlake networks "
                                   f"(kind network) can be fine-tuned")
    return row


def check_finetune(lake: Lake, registry: Registry, model: str, *,
                   heldout: str | os.PathLike[str] | None = None) -> HeldoutSet:
    """What :func:`finetune_from_labels` checks before it starts (a champion of kind network, a held-out
    set, final labels in the lake), without training: raises the same errors; returns the held-out set."""
    _champion(registry, model)
    found = heldout_set(registry, model, heldout)
    _final_rows(lake)
    return found


def finetune_from_labels(lake: Lake, registry: Registry, model: str, *,
                         heldout: str | os.PathLike[str] | None = None, epochs: int = 20, seed: int = 0,
                         learning_rate: float | None = None, device: str | None = None,
                         progress: Callable[[str], None] | None = None) -> FinetuneResult:
    """Fine-tune the champion of ``model`` on the lake's final labels, score it on the fixed held-out
    set, register it as ``challenger`` and promote it to ``champion`` when its mean held-out Dice is
    strictly higher than the champion's (see the module docstring). ``heldout``: the folder of phantom
    cases, needed on a model's first fine-tune and fixed from then on. ``learning_rate``: default a
    fifth of the champion's. ``epochs`` 0 registers the champion's weights unchanged (a challenger that
    ties, so is not promoted). Raises :class:`FinetuneBusyError` while another fine-tune of the lake
    runs (:func:`finetune_lock`)."""
    with finetune_lock(lake.uri):
        return _finetune(lake, registry, model, heldout=heldout, epochs=epochs, seed=seed,
                         learning_rate=learning_rate, device=device, progress=progress)


def _finetune(lake: Lake, registry: Registry, model: str, *, heldout: str | os.PathLike[str] | None, epochs: int,
              seed: int, learning_rate: float | None, device: str | None,
              progress: Callable[[str], None] | None) -> FinetuneResult:
    import torch

    from voxlake.ai.network import PhantomOrgansModel
    from voxlake.ai.train import _param, fit_network

    say = progress or (lambda _msg: None)
    t0 = time.perf_counter()
    if epochs < 0:
        raise InvalidArgumentError(f"epochs must be 0 or more, got {epochs}")
    row = _champion(registry, model)
    name, base_version = row.name, row.version
    held = heldout_set(registry, name, heldout)
    by_series = _final_rows(lake)
    champion = registry.load(f"{name}:{base_version}")
    config = champion.config
    meta = json.loads((registry.client.get_model_version(name, base_version).tags or {}).get(
        "voxlake.metadata", "{}"))
    recipe = {k: type(v)(meta.get(k, v)) for k, v in RECIPE.items()}
    # a fine-tuned champion records the rate of the recipe it descends from: a fifth of that, not of a fifth
    recipe["learning_rate"] = float(meta.get("recipe_learning_rate", recipe["learning_rate"]))
    rate = recipe["learning_rate"] / 5 if learning_rate is None else float(learning_rate)
    if rate < 0:
        raise InvalidArgumentError(f"learning_rate must be 0 or more, got {rate}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    client = registry.client
    if HELDOUT_TAG not in (client.get_registered_model(name).tags or {}):
        client.set_registered_model_tag(name, HELDOUT_TAG, json.dumps(
            {"path": str(held.path), "sha256": held.sha256, "cases": len(held.cases)}))
        say(f"held-out set of {name} fixed: {held.path} ({len(held.cases)} cases, sha256 {held.sha256[:12]})")
    champion_score = _champion_score(registry, name, base_version, held, say, loaded=champion)

    run_id = registry.start_run(f"fine-tune {name}")
    try:
        data, series, ignored = _training_cases(lake, config, by_series, say)
        if ignored:
            say(f"labels the model does not know, left out: {', '.join(ignored)}")
        say(f"fine-tuning {name}:{base_version} on {len(data)} corrected series for {epochs} epochs")
        params = {"base_version": base_version, "epochs": epochs, "seed": seed, "learning_rate": rate,
                  "schedule": "cosine", **{k: recipe[k] for k in ("patch", "batch_size", "patches_per_case")},
                  "train_cases": len(data), "train_series": len(series), "ignored_labels": ",".join(ignored),
                  "heldout_path": str(held.path), "heldout_sha256": held.sha256, "heldout_cases": len(held.cases),
                  "torch_threads": torch.get_num_threads(), "device": device}
        client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
        client.log_text(run_id, json.dumps(series, indent=1), "train_series.json")
        client.set_tag(run_id, "voxlake.base_version", base_version)

        def on_epoch(epoch: int, loss: float, seconds: float) -> None:
            client.log_metric(run_id, "loss", loss, step=epoch)
            client.log_metric(run_id, "epoch_seconds", seconds, step=epoch)
            say(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({seconds:.1f} s)")

        def build() -> Any:
            return champion.network  # its weights are trained further (scored above, before)

        fitted = fit_network(build, data, epochs=epochs, seed=seed, patch=recipe["patch"],
                             batch_size=recipe["batch_size"], patches_per_case=recipe["patches_per_case"],
                             learning_rate=rate, device=device, on_epoch=on_epoch)
        tuned_config = type(config)(**{**asdict(config), "extra": {
            **config.extra, "recipe": "voxlake.ai.finetune.finetune_from_labels", "seed": seed,
            "base_version": base_version}})
        challenger = PhantomOrgansModel(fitted.network, tuned_config, name=name, version="unregistered")
        score = _score(challenger, held, say)
        metrics = {"champion_mean_dice": champion_score["mean_dice"], "challenger_mean_dice": score["mean_dice"],
                   "mean_dice": score["mean_dice"], "final_loss": fitted.final_loss}
        metrics |= {f"champion_dice_{k}": v for k, v in champion_score["per_label"].items()}
        metrics |= {f"challenger_dice_{k}": v for k, v in score["per_label"].items()}
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        with tempfile.TemporaryDirectory(prefix="voxlake-finetune-") as tmp:
            challenger.network.cpu()
            files = challenger.save(tmp)
            version = registry.register(name, files, kind="network", labels=tuned_config.labels,
                                        metadata={"recipe": "fine-tune", **params,
                                                  "recipe_learning_rate": recipe["learning_rate"],
                                                  "mean_dice": round(score["mean_dice"], 4)},
                                        run_id=run_id)
        client.set_model_version_tag(name, version, SCORE_TAG, json.dumps(score | {"sha256": held.sha256}))
        registry.set_alias(name, "challenger", version)
        # the champion may have moved while this ran: the decision is against the one in place now
        current = registry.resolve(f"{name}@champion").version
        if current != base_version:
            champion_score = _champion_score(registry, name, current, held, say)
        promoted = score["mean_dice"] > champion_score["mean_dice"]
        relation = ">" if promoted else "<="
        reason = (f"held-out Dice {score['mean_dice']:.4f} {relation} {champion_score['mean_dice']:.4f} "
                  f"of champion version {current}")
        if promoted:
            registry.set_alias(name, "champion", version)
        decision = "promoted" if promoted else "kept"
        for key, value in (("voxlake.decision", decision), ("voxlake.decision_reason", reason)):
            client.set_tag(run_id, key, value)
            client.set_model_version_tag(name, version, key, value)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    result = FinetuneResult(
        model=name, base_version=current, version=version, promoted=promoted,
        champion_dice=champion_score["mean_dice"], challenger_dice=score["mean_dice"],
        per_label={"champion": dict(champion_score["per_label"]), "challenger": dict(score["per_label"])},
        train_cases=len(data), run_id=run_id, seconds=time.perf_counter() - t0, reason=reason, epochs=epochs,
        heldout=str(held.path), heldout_sha256=held.sha256, series=series, ignored_labels=ignored)
    say(result.summary())
    return result


# -- background runs for the server ------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class FinetuneJobs:
    """Fine-tunes of one lake run in a background thread, one at a time. A run's state is kept in
    memory and in ``<folder>/<id>.json`` (written atomically): ``id``, ``model``, ``status`` (running,
    done, failed), ``created``, ``finished``, ``progress`` (the last message), ``result``
    (:meth:`FinetuneResult.to_dict`, when done) and ``error`` (one line, when failed). A run found
    ``running`` on disk but not in this process was cut short by a restart: it reads as failed."""

    def __init__(self, lake: Lake, registry: Registry, folder: str | os.PathLike[str]) -> None:
        self.lake = lake
        self.registry = registry
        self.folder = Path(folder)
        self._lock = threading.Lock()
        self._states: dict[str, dict[str, Any]] = {}
        self._thread: threading.Thread | None = None
        self._skipped: dict[str, int] = {}

    def running(self) -> str | None:
        """The id of the fine-tune running now, or None."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return self._thread.name.removeprefix("voxlake-finetune-")
            return None

    def submit(self, model: str, *, epochs: int = 20, heldout: str | None = None, seed: int = 0,
               learning_rate: float | None = None, trigger: str = "request") -> dict[str, Any]:
        """Check what can be checked at once (:func:`check_finetune`), then start the fine-tune in the
        background; returns its state (``trigger`` says why it started). Raises
        :class:`FinetuneBusyError` while one runs."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                running = self._thread.name.removeprefix("voxlake-finetune-")
                raise FinetuneBusyError(f"a fine-tune is running ({running}); one runs at a time: "
                                        "try again when it is done")
            if finetune_running(self.lake.uri):  # started elsewhere: MONAI Label's /train, the CLI
                raise FinetuneBusyError(f"a fine-tune of lake {self.lake.uri} is running; one runs at a time: "
                                        "try again when it is done")
            check_finetune(self.lake, self.registry, model, heldout=heldout)
            state = {"id": uuid.uuid4().hex, "model": model, "status": "running", "created": _now(),
                     "finished": None, "epochs": epochs, "heldout": heldout, "progress": None, "result": None,
                     "error": None, "trigger": trigger}
            self._remember_finals(model)
            self._states[state["id"]] = state
            self._save(state)
            kwargs = {"heldout": heldout, "epochs": epochs, "seed": seed, "learning_rate": learning_rate}
            self._thread = threading.Thread(target=self._run, args=(state, kwargs), daemon=True,
                                            name=f"voxlake-finetune-{state['id']}")
            self._thread.start()
            return dict(state)

    def train_when_due(self, every: int, **options: Any) -> list[dict[str, Any]]:
        """"Train after every N new final labels": start a fine-tune of each network model whose final
        labels (SEGs a reader saved, counted by :func:`finals_per_model`) number at least
        ``every`` more than when its last fine-tune through these jobs started; returns the states
        started. While a fine-tune of the lake runs nothing starts: the next call (the next sync)
        looks again. A model that cannot be fine-tuned yet (no held-out set fixed, not a network)
        is skipped, with the reason logged once per count. ``options`` go to :meth:`submit`."""
        import logging

        if every < 1:
            raise InvalidArgumentError(f"train every N final labels: N must be 1 or more, got {every}")
        started: list[dict[str, Any]] = []
        seen = self._finals_seen()
        for model, count in sorted(finals_per_model(self.lake, self._networks()).items()):
            if count - seen.get(model, 0) < every:
                continue
            try:
                started.append(self.submit(model, trigger=f"{count - seen.get(model, 0)} new final labels "
                                                          f"(train every {every})", **options))
            except FinetuneBusyError:
                break
            except Exception as exc:  # not trainable yet: say so once for this count
                if self._skipped.get(model) != count:
                    self._skipped[model] = count
                    logging.getLogger("voxlake.ai").warning(
                        "train every %d: %s has %d new final labels but cannot be fine-tuned: %s", every, model,
                        count - seen.get(model, 0), str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
        return started

    def _networks(self) -> set[str]:
        """The registry's models of kind network (the ones fine-tuning takes)."""
        return {row.name for row in self.registry.list() if str(row.kind) == "network"}

    def _finals_seen(self) -> dict[str, int]:
        try:
            return {str(k): int(v) for k, v in json.loads((self.folder / ".finals.json").read_text()).items()}
        except (OSError, ValueError, AttributeError):
            return {}

    def _remember_finals(self, model: str) -> None:
        """Record the model's final-label count as its fine-tune starts (``<folder>/.finals.json``)."""
        seen = self._finals_seen()
        seen[model] = finals_per_model(self.lake, [model]).get(model, 0)
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / ".finals.json.tmp"
        tmp.write_text(json.dumps(seen))
        os.replace(tmp, self.folder / ".finals.json")

    def get(self, run: str) -> dict[str, Any]:
        """The state of a fine-tune; :class:`LookupError` (``JobNotFoundError``) when there is none."""
        from voxlake.ai.service import JobNotFoundError

        if not run.isalnum():
            raise JobNotFoundError(f"no fine-tune {run!r}")
        with self._lock:
            if run in self._states:
                return dict(self._states[run])
        try:
            state = json.loads((self.folder / f"{run}.json").read_text())
        except FileNotFoundError:
            raise JobNotFoundError(f"no fine-tune {run!r}") from None
        if state.get("status") == "running":
            state |= {"status": "failed", "error": "interrupted: the server stopped while it ran"}
        return state

    def wait(self, run: str, timeout: float = 600.0) -> dict[str, Any]:
        """The state once done or failed (for scripts and tests)."""
        end = time.monotonic() + timeout
        while True:
            state = self.get(run)
            if state["status"] != "running" or time.monotonic() > end:
                return state
            time.sleep(0.1)

    def _run(self, state: dict[str, Any], kwargs: dict[str, Any]) -> None:
        def progress(message: str) -> None:
            with self._lock:
                state["progress"] = message

        try:
            result = finetune_from_labels(self.lake, self.registry, state["model"], progress=progress, **kwargs)
            update = {"status": "done", "result": result.to_dict(), "progress": result.summary()}
        except Exception as exc:
            text = str(exc).strip().splitlines()
            line = text[0] if text else ""
            if not isinstance(exc, VoxlakeError):
                line = f"{type(exc).__name__}: {line}" if line else type(exc).__name__
            update = {"status": "failed", "error": line}
        with self._lock:
            state.update(update, finished=_now())
            self._save(state)

    def _save(self, state: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{state['id']}.json.tmp"
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.folder / f"{state['id']}.json")
