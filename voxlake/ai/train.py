"""Training ``phantom-organs``: the network of :mod:`voxlake.ai.network` on synthetic phantoms
(:func:`voxlake.synth.phantom.generate_phantoms`), logged to an MLflow run and registered.

The recipe, fixed by ``seed``: the last ``holdout`` cases (sorted by folder name) are held out; each
training case is resampled once to the working spacing and kept in memory; an epoch draws
``patches_per_case`` patches per training case on average, the cases drawn so that each contrast
phase gets an equal share (a phase that chance made rare is not learnt less: native-phase kidneys,
32 HU against 170 with contrast, were missed when 3 of 16 cases were native); two in three patches
are centred on a voxel of a label drawn uniformly among the labels present (small organs get seen),
the rest anywhere; Adam on Dice + cross entropy, its rate decayed along a cosine to 2% by the last
step. Held-out cases are scored at their own resolution through the model's ``predict``, as users
run it. Torch runs in deterministic mode while training, so a seed and a thread count give the same
weights.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from voxlake.errors import InvalidArgumentError

if TYPE_CHECKING:
    from voxlake.ai.registry import Registry
    from voxlake.ai.volume import Volume

__all__ = ["FitResult", "PhantomCaseData", "dice_per_label", "fit_network", "load_phantom_case", "phase_weights",
           "prepare_case", "train_phantom_organs"]


@dataclass(frozen=True)
class PhantomCaseData:
    """One phantom read back as users' data is: the CT as a Volume, the truth on the same grid."""

    directory: Path
    volume: Volume
    labels: np.ndarray  # uint8, volume.shape


def load_phantom_case(directory: str | Path) -> PhantomCaseData:
    """Read ``ct/*.dcm`` into a Volume and ``labels.nii.gz`` onto its grid (checked by affine)."""
    import nibabel as nib
    import pydicom

    from voxlake.ai.volume import volume_from_datasets

    directory = Path(directory)
    files = sorted((directory / "ct").glob("*.dcm"))
    if not files:
        raise InvalidArgumentError(f"phantom case {directory}: no ct/*.dcm")
    volume = volume_from_datasets(pydicom.dcmread(f) for f in files)
    image = nib.load(directory / "labels.nii.gz")
    # NIfTI axes are (i, j, k) in RAS; the volume's are (k, j, i) in LPS.
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ image.affine[:, [2, 1, 0, 3]]
    labels = np.asarray(image.dataobj, dtype=np.uint8).transpose(2, 1, 0)
    if labels.shape != volume.shape or not np.allclose(affine, volume.affine, atol=1e-3):
        raise InvalidArgumentError(f"phantom case {directory}: labels.nii.gz does not lie on the CT's grid "
                                   f"(shape {labels.shape} vs {volume.shape})")
    return PhantomCaseData(directory, volume, np.ascontiguousarray(labels))


def dice_per_label(truth: np.ndarray, prediction: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label present in ``truth`` (labels absent from the truth are left out)."""
    out = {}
    for value in labels:
        t, p = truth == value, prediction == value
        total = int(t.sum()) + int(p.sum())
        if t.any():
            out[value] = 2.0 * int(np.logical_and(t, p).sum()) / total
    return out


@contextlib.contextmanager
def _deterministic(seed: int) -> Iterator[None]:
    """Seeded, deterministic torch for the duration; the previous mode comes back after."""
    import torch

    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def train_phantom_organs(phantoms_dir: str | Path, *, registry: Registry, name: str = "phantom-organs",
                         epochs: int = 40, seed: int = 0, holdout: int | None = None,
                         spacing: float = 3.0, patch: int = 64, batch_size: int = 2,
                         patches_per_case: int = 4, learning_rate: float = 2e-3,
                         channels: Sequence[int] = (16, 32, 64, 128), balance_phases: bool = True,
                         device: str | None = None,
                         progress: Callable[[str], None] | None = None) -> tuple[str, dict[str, float]]:
    """Train, score on the held-out cases, register; returns (version, metrics).

    ``holdout``: how many cases (the last ones) are scored and never trained on; default a fifth, at
    least one. ``balance_phases``: draw training cases so that each contrast phase (``labels.json``)
    gets an equal share of the patches. ``metrics`` has ``dice_<organ>`` (mean over held-out cases
    that hold the organ), ``mean_dice`` (over organs), ``seconds_per_epoch``, ``final_loss`` (last
    epoch) and ``train_seconds``.
    The version gets the alias ``champion`` when the model has none yet. ``device``: a torch device,
    default CUDA when present, else the CPU (the saved weights load on either).
    """
    import torch

    from voxlake.ai.network import NetworkConfig, PhantomOrgansModel, build_network
    from voxlake.synth.phantom import ORGANS

    say = progress or (lambda _msg: None)
    cases = sorted(p for p in Path(phantoms_dir).glob("case-*") if (p / "labels.nii.gz").is_file())
    if len(cases) < 2:
        raise InvalidArgumentError(f"phantoms {phantoms_dir}: need at least 2 cases (one held out), "
                                   f"found {len(cases)}; write them with `voxlake synth phantoms`")
    holdout = max(1, len(cases) // 5) if holdout is None else holdout
    if not 1 <= holdout < len(cases):
        raise InvalidArgumentError(f"holdout must be between 1 and {len(cases) - 1}, got {holdout}")
    if epochs < 1 or patch % 2 ** (len(channels) - 1):
        raise InvalidArgumentError(f"epochs must be 1 or more and patch a multiple of "
                                   f"{2 ** (len(channels) - 1)}; got {epochs} and {patch}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    train_dirs, test_dirs = cases[:-holdout], cases[-holdout:]
    config = NetworkConfig(labels={o.label: o.name for o in ORGANS.values()}, spacing=(spacing,) * 3,
                           channels=tuple(channels),
                           extra={"recipe": "voxlake.ai.train.train_phantom_organs", "seed": seed})
    params = {"epochs": epochs, "seed": seed, "spacing_mm": spacing, "patch": patch, "batch_size": batch_size,
              "patches_per_case": patches_per_case, "learning_rate": learning_rate, "schedule": "cosine",
              "channels": list(channels), "train_cases": len(train_dirs), "heldout_cases": len(test_dirs),
              "balance_phases": balance_phases,
              "phantoms_dir": str(Path(phantoms_dir).resolve()), "torch_threads": torch.get_num_threads(), "device": device}

    t0 = time.perf_counter()
    data = []
    for d in train_dirs:
        case = load_phantom_case(d)
        data.append(prepare_case(case.volume.array, case.volume.spacing, case.labels, config))
    say(f"prepared {len(data)} training cases in {time.perf_counter() - t0:.1f} s")
    weights = phase_weights(train_dirs) if balance_phases else None

    client = registry.client
    run_id = registry.start_run(f"train {name}")
    try:
        client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])

        def on_epoch(epoch: int, loss: float, seconds: float) -> None:
            client.log_metric(run_id, "loss", loss, step=epoch)
            client.log_metric(run_id, "epoch_seconds", seconds, step=epoch)
            say(f"epoch {epoch + 1}/{epochs}: loss {loss:.4f} ({seconds:.1f} s)")

        fitted = fit_network(lambda: build_network(config), data, epochs=epochs, seed=seed, patch=patch,
                             batch_size=batch_size, patches_per_case=patches_per_case,
                             learning_rate=learning_rate, device=device, on_epoch=on_epoch, case_weights=weights)
        network, epoch_seconds, loss_value = fitted.network, fitted.epoch_seconds, fitted.final_loss
        train_seconds = time.perf_counter() - t0
        model = PhantomOrgansModel(network, config, name=name, version="unregistered")
        metrics = _evaluate(model, test_dirs, config.labels, say)
        metrics |= {"seconds_per_epoch": float(np.mean(epoch_seconds)), "final_loss": loss_value,
                    "train_seconds": train_seconds}
        for key, value in metrics.items():
            client.log_metric(run_id, key, value)
        with tempfile.TemporaryDirectory(prefix="voxlake-train-") as tmp:
            model.network.cpu()
            files = model.save(tmp)
            version = registry.register(name, files, kind="network", labels=config.labels,
                                        metadata={"recipe": "phantom-organs", **params,
                                                  "mean_dice": round(metrics["mean_dice"], 4)},
                                        run_id=run_id)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id)
    if "champion" not in (client.get_registered_model(name).aliases or {}):
        registry.set_alias(name, "champion", version)
    return version, metrics


@dataclass
class FitResult:
    """What :func:`fit_network` trained: the network (on its device, in train mode), the mean loss of
    each epoch and the seconds each took."""

    network: Any
    losses: list[float]
    epoch_seconds: list[float]

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def prepare_case(array: np.ndarray, spacing: Sequence[float], labels: np.ndarray, config: Any) -> tuple[Any, Any]:
    """One training case at the network's working grid: the input (windows, *grid) and the label map
    resampled onto that grid by nearest voxel (int64), as the patch sampler takes them."""
    import torch

    from voxlake.ai.network import resample_labels, to_input

    x = to_input(array, spacing, config)
    y = resample_labels(labels, x.shape[1:])
    return x, torch.from_numpy(y.astype(np.int64))


def fit_network(build: Callable[[], Any], data: Sequence[tuple[Any, Any]], *, epochs: int, seed: int, patch: int,
                batch_size: int, patches_per_case: int, learning_rate: float, device: str,
                on_epoch: Callable[[int, float, float], None] | None = None,
                case_weights: Sequence[float] | None = None) -> FitResult:
    """The recipe's training loop, shared by training from scratch and fine-tuning: in deterministic
    torch seeded with ``seed``, ``build()`` makes the network (a new one, or one with a champion's
    weights), then each epoch draws ``patches_per_case`` patches per case of ``data`` (two in three
    centred on a label), Adam on Dice + cross entropy with the rate decayed along a cosine to 2% by the
    last step. ``on_epoch(epoch, mean loss, seconds)`` after each epoch. ``epochs`` 0 returns the
    network as built. ``case_weights``: draw an epoch's cases with these relative odds (the epoch keeps
    ``patches_per_case`` × cases patches) instead of each case the same number of times."""
    import torch
    from monai.losses import DiceCELoss

    losses: list[float] = []
    epoch_seconds: list[float] = []
    with _deterministic(seed):
        network = build().to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
        steps = epochs * -(-len(data) * patches_per_case // batch_size)
        # cosine decay to 2% of the rate: the last epochs refine instead of jumping about
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=max(1, steps),
                                                              eta_min=0.02 * learning_rate)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        rng = np.random.default_rng(seed)
        for epoch in range(epochs):
            e0 = time.perf_counter()
            network.train()
            batch_losses = []
            if case_weights is None:
                order = [i for i in range(len(data)) for _ in range(patches_per_case)]
                rng.shuffle(order)
            else:
                odds = np.asarray(case_weights, dtype=float)
                order = rng.choice(len(data), size=len(data) * patches_per_case, p=odds / odds.sum()).tolist()
            for b in range(0, len(order), batch_size):
                xs, ys = zip(*(_patch(*data[i], patch, rng) for i in order[b:b + batch_size]), strict=True)
                optimiser.zero_grad()
                x, y = torch.stack(xs).to(device), torch.stack(ys)[:, None].to(device)
                loss = loss_fn(network(x), y)
                loss.backward()
                optimiser.step()
                schedule.step()
                batch_losses.append(loss.item())
            losses.append(float(np.mean(batch_losses)))
            epoch_seconds.append(time.perf_counter() - e0)
            if on_epoch is not None:
                on_epoch(epoch, losses[-1], epoch_seconds[-1])
    return FitResult(network, losses, epoch_seconds)


def phase_weights(case_dirs: Sequence[Path]) -> list[float]:
    """Sampling odds per phantom case that give each contrast phase (``labels.json``'s ``case.phase``) an
    equal share; cases without one form a phase of their own."""
    import json

    phases = []
    for d in case_dirs:
        try:
            phases.append(json.loads((Path(d) / "labels.json").read_text())["case"].get("phase"))
        except (OSError, ValueError, KeyError, TypeError):
            phases.append(None)
    counts = {p: phases.count(p) for p in phases}
    return [1.0 / counts[p] for p in phases]


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value))


def _patch(x: Any, y: Any, size: int, rng: np.random.Generator) -> tuple[Any, Any]:
    """A ``size``³ patch of (x, y), padded with the border when the case is smaller; two in three
    centred on a voxel of a label drawn uniformly among those present."""
    import torch.nn.functional as F

    shape = np.array(y.shape)
    if rng.random() < 2 / 3:
        present = np.unique(y.numpy())
        present = present[present > 0]
        if present.size:
            value = rng.choice(present)
            where = np.argwhere(y.numpy() == value)
            centre = where[rng.integers(len(where))]
        else:
            centre = rng.integers(0, shape)
    else:
        centre = rng.integers(0, shape)
    start = np.clip(centre - size // 2, 0, np.maximum(shape - size, 0))
    sl = tuple(slice(int(s), int(s) + size) for s in start)
    px, py = x[(slice(None), *sl)], y[sl]
    pad = [p for n in reversed(py.shape) for p in (0, size - n)]
    if any(pad):
        px = F.pad(px[None], pad, mode="replicate")[0]
        py = F.pad(py[None, None].float(), pad, mode="replicate")[0, 0].long()
    return px, py


def _evaluate(model: Any, test_dirs: Sequence[Path], labels: dict[int, str],
              say: Callable[[str], None]) -> dict[str, float]:
    """Dice per organ on the held-out cases at full resolution (mean over cases holding the organ)."""
    scores: dict[int, list[float]] = {v: [] for v in labels}
    for d in test_dirs:
        case = load_phantom_case(d)
        prediction = model.predict(case.volume)
        for value, dice in dice_per_label(case.labels, prediction, list(labels)).items():
            scores[value].append(dice)
        say(f"held-out {d.name}: " + ", ".join(f"{labels[v]} {s[-1]:.3f}" for v, s in scores.items() if s))
    metrics = {f"dice_{labels[v]}": float(np.mean(s)) for v, s in scores.items() if s}
    metrics["mean_dice"] = float(np.mean(list(metrics.values()))) if metrics else 0.0
    return metrics
