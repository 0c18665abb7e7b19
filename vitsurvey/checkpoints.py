"""Trained models on disk: the checkpoint file, the training-state file, and the cache that trains a model once.

A checkpoint holds a model's weights, its ViT config (for a ViT), its :class:`TrainResult` and the training
settings that produced it. Its name carries a digest of those settings (:func:`checkpoint_path`), so models
trained differently sit side by side, and it is reused only when the settings match (:func:`load_or_train`).
The settings are the profile fields in :data:`TRAINING_FIELDS`; the same dict keys the training-state file that
lets an interrupted :func:`vitsurvey.train.fit` resume, so a state is never resumed by another training.

Files are loaded tensors-only (``weights_only=True``): a checkpoint found on disk is never allowed to run
code. One that cannot be loaded raises :class:`CheckpointError` naming the file and saying why; the cache sets
it aside as ``<name>.damaged`` and trains again. Writes are atomic and locked
(:func:`vitsurvey.results.write_atomic`).

The training itself is passed in (:func:`load_or_train` takes a function), so this module stays below
:mod:`vitsurvey.train`, which holds the one training loop.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from .models import ViTConfig, VisionTransformer, mixers
from .paths import checkpoints_dir
from .results import write_atomic

if TYPE_CHECKING:
    from .profiles import Profile

__all__ = [
    "CheckpointError", "CheckpointWarning", "TRAINING_FIELDS", "TrainResult", "checkpoint_path", "initialise_from",
    "load_checkpoint", "load_or_train", "load_training_state", "save", "save_training_state", "training_settings",
    "training_state_path",
]


@dataclass
class TrainResult:
    """The record of one training, as :func:`vitsurvey.train.fit` returns it and a checkpoint keeps it."""

    top1: float
    """Final test top-1 accuracy (%)."""
    epochs: int
    train_seconds: float
    train_img_per_s: float
    history: list[dict[str, float]] = field(default_factory=list)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded into the model it should hold: empty, cut off, corrupt, holding
    more than tensors, or saved from a different model."""


class CheckpointWarning(UserWarning):
    """A checkpoint was set aside or could not be written; training went on."""


# --------------------------------------------------------------------------- what a checkpoint is keyed by
TRAINING_FIELDS = ("dataset", "train_samples", "test_samples", "val_samples", "baseline", "epochs", "batch_size",
                   "lr", "weight_decay", "warmup_epochs", "augment", "amp", "seed")
"""The profile fields that decide what training the baseline produces; a checkpoint is reused only if
they match. The teacher's settings replace ``baseline`` by ``teacher_channels``."""


def _config_key(cfg: ViTConfig) -> dict:
    """A ViT config as part of a checkpoint's key. The pooling and token-mixer fields were added to
    ViTConfig later; at their defaults they are left out, so a checkpoint trained before they existed
    keeps its name and is still found."""
    later = ("class_token", "global_pool", "mixer", *mixers.SETTINGS)
    out = asdict(cfg)
    for f in dataclasses.fields(ViTConfig):
        if f.name in later and out[f.name] == f.default:
            del out[f.name]
    return out


def training_settings(profile: Profile, kind: str = "baseline") -> dict:
    """The settings that decide what training ``kind`` (``"baseline"`` or ``"teacher"``) produces under
    ``profile``: the key of its checkpoint, and of a training state :func:`vitsurvey.train.fit` resumes."""
    settings = {k: v for k, v in asdict(profile).items() if k in TRAINING_FIELDS}
    settings["baseline"] = _config_key(profile.baseline)
    if kind == "teacher":
        settings.pop("baseline")
        settings["teacher_channels"] = profile.teacher_channels
    return settings


def checkpoint_path(profile: Profile, kind: str = "baseline") -> Path:
    """Where the profile's trained ``kind`` (``"baseline"`` or ``"teacher"``) is kept: named by profile,
    data set and a digest of the training settings, so models trained differently (e.g. notebook 06's
    many-token baseline) never overwrite each other."""
    settings = json.dumps(training_settings(profile, kind), sort_keys=True, default=str)
    digest = hashlib.sha1(settings.encode()).hexdigest()[:8]
    return checkpoints_dir() / f"{kind}_{profile.name}_{profile.dataset}_{digest}.pt"


def training_state_path(model: str, profile: Profile) -> Path:
    """The training-state file ``python -m vitsurvey train`` writes and resumes from by default: named by the
    model (``mixer:pool`` as ``mixer-pool``), profile and data set."""
    return checkpoints_dir() / f"train_{model.replace(':', '-')}_{profile.name}_{profile.dataset}.pt"


# --------------------------------------------------------------------------- writing and reading files
def save(model: nn.Module, result: TrainResult, path: Path, settings: dict) -> None:
    """Save weights, the ViT config (for a ViT), training record and training settings; atomically and
    under the file's lock (:func:`vitsurvey.results.write_atomic`)."""
    checkpoint = {
        "config": asdict(model.cfg) if isinstance(model, VisionTransformer) else None,
        "state_dict": model.state_dict(),
        "result": asdict(result),
        "trained_with": settings,
    }
    write_atomic(path, lambda f: torch.save(checkpoint, f))


def _unreadable(path: Path, exc: BaseException) -> str:
    """Why ``torch.load`` failed, in words (torch's own message advises loading the file unsafely)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    named = re.search(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", str(exc), re.IGNORECASE)
    if isinstance(exc, pickle.UnpicklingError) and named:
        return (f"it holds Python objects beyond tensors, numbers and strings (it names {named.group(1)}), which are "
                "never loaded (loading them can run code); delete it unless you know who wrote it")
    with open(path, "rb") as f:
        zipped = f.read(4) == b"PK\x03\x04"  # torch.save writes a zip archive: this one is damaged
    if zipped or isinstance(exc, EOFError):
        return "it is cut off (a write that did not finish) or corrupt"
    return "it is not a file torch.save wrote, or it is corrupt"


def load_checkpoint(path: Path, build: Callable[[], nn.Module] | None = None) -> tuple[nn.Module, TrainResult, dict]:
    """A saved model, its training record, and the training settings (a dict) that produced it.
    ``build`` makes the empty model to load into (default: the ViT the checkpoint's config describes).

    Only tensors and plain containers are unpickled (``weights_only=True``). A file that cannot be loaded
    raises :class:`CheckpointError` naming it and saying why."""
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch warns about a foreign pickle protocol before failing on it
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"Checkpoint {path} cannot be loaded: {_unreadable(path, exc)}.") from None
    needed = {"state_dict", "result"} | ({"config"} if build is None else set())
    if not isinstance(ckpt, dict) or not needed <= set(ckpt):
        raise CheckpointError(f"Checkpoint {path} is not a vitsurvey checkpoint (it lacks "
                              f"{', '.join(sorted(needed - set(ckpt) if isinstance(ckpt, dict) else needed))}).")
    try:
        model = build() if build is not None else VisionTransformer(ViTConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state_dict"])
        result = TrainResult(**ckpt["result"])
    except (TypeError, ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"Checkpoint {path} does not fit the model it should hold: {first}") from None
    return model.eval(), result, ckpt.get("trained_with", {})


def save_training_state(path: Path, state: dict) -> None:
    """Write the whole state of a training in progress (weights, optimiser, schedule, generator, epoch,
    history, ``trained_with``), atomically: a run killed mid-write leaves the previous epoch's state."""
    write_atomic(Path(path), lambda f: torch.save(state, f))


def load_training_state(path: Path, settings: dict) -> dict:
    """A saved training state, loaded tensors-only; one from another training is refused by name."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"Training state {path} cannot be loaded: {_unreadable(path, exc)}; delete it to "
                              "start the training afresh.") from None
    saved = state.get("trained_with") if isinstance(state, dict) else None
    if saved != settings:
        differ = _differences(saved if isinstance(saved, dict) else {}, settings)
        extend = (" The learning-rate schedule is set by the epochs, so a training cannot be extended: start a new "
                  "one from its weights with --init and another --checkpoint." if "epochs" in differ else "")
        raise CheckpointError(f"Training state {path} was written by a training with other settings "
                              f"({'; '.join(differ.values()) or 'none recorded'}); delete it to start afresh, or resume "
                              f"with the settings that wrote it.{extend}")
    return state


def _differences(then: dict, now: dict, prefix: str = "") -> dict[str, str]:
    """The settings that differ between two training-settings dicts, as "name: then -> now" (nested dicts, such as
    the ViT config, by their fields)."""
    out: dict[str, str] = {}
    for key in sorted(set(then) | set(now), key=str):
        a, b = then.get(key, "unset"), now.get(key, "unset")
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_differences(a, b, f"{prefix}{key}."))
        elif a != b:
            out[f"{prefix}{key}"] = f"{prefix}{key}: {a!r} then, {b!r} now"
    return out


def initialise_from(model: nn.Module, path: Path) -> tuple[int, int]:
    """Load the weights of a training state or checkpoint into ``model`` where names and shapes agree (fine-tuning
    after pre-training on another label set keeps everything but the head); tensors-only loading. Returns how
    many of the model's tensors were loaded, and how many it has."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        weights = saved.get("model") or saved["state_dict"]
    except Exception as exc:  # torch raises many types for a bad file
        raise CheckpointError(f"--init {path} holds no weights this command can read ({type(exc).__name__}).") from None
    own = model.state_dict()
    kept = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    if not kept:
        raise ValueError(f"--init {path} shares no weights with this model; was it trained for another architecture?")
    model.load_state_dict(kept, strict=False)
    return len(kept), len(own)


# --------------------------------------------------------------------------- the cache
def _set_aside(path: Path, why: CheckpointError) -> None:
    """Move an unloadable checkpoint to ``<name>.damaged`` (kept for inspection, never loaded) and warn."""
    aside = path.with_name(path.name + ".damaged")
    try:
        os.replace(path, aside)
        where = f"moved it to {aside.name}"
    except OSError as exc:
        where = f"could not move it aside ({exc.strerror or exc})"
    warnings.warn(f"{why} {where.capitalize()}; training the model again.", CheckpointWarning, stacklevel=4)


def load_or_train(
    kind: str, build: Callable[[], nn.Module], profile: Profile, train: Callable[[], tuple[nn.Module, TrainResult]],
    retrain: bool = False,
) -> tuple[nn.Module, TrainResult]:
    """Load ``kind`` from ``checkpoints/`` if it was trained with these settings, else ``train()`` it (which
    builds, trains and returns the model and its record) and save it.

    A checkpoint that cannot be loaded is set aside and the model retrained; a checkpoint folder that cannot
    be written loses nothing but the cache: the trained model is returned with a warning."""
    path, settings = checkpoint_path(profile, kind), training_settings(profile, kind)
    if path.exists() and not retrain:
        try:
            model, result, trained_by = load_checkpoint(path, build)
        except CheckpointError as exc:
            _set_aside(path, exc)
        else:
            if trained_by == settings:
                return model, result
    model, result = train()
    try:
        save(model.cpu().eval(), result, path, settings)
    except OSError as exc:
        warnings.warn(
            f"The trained {kind} could not be saved to {path} ({exc.strerror or exc}); it is used now but not kept, "
            f"so the next run trains it again. Make {path.parent} writable, or set $VITSURVEY_OUTPUT to a "
            "writable directory.", CheckpointWarning, stacklevel=3)
    return model.cpu().eval(), result
