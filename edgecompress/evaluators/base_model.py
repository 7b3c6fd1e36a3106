"""Cached base models: trained once per (dataset, model, recipe, seed), keyed by a hash, reused by every trial."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from filelock import FileLock

from edgecompress.errors import EdgeCompressError
from edgecompress.evaluators.data import DataBundle, load_data
from edgecompress.evaluators.models import create_model
from edgecompress.evaluators.structure import STRUCTURE_ATTR, ModelStructure, attach_structure, structure_of
from edgecompress.evaluators.train import ProgressCallback, TrainSettings, accuracy, train_model
from edgecompress.spaces.experiment import ExperimentConfig
from edgecompress.study import artefact_store
from edgecompress.utils import atomic_path, atomic_write_json, cache_dir, seed_everything

FORMAT_VERSION = 1


@dataclass
class BaseModel:
    model: nn.Module
    metrics: dict[str, Any]
    key: str
    path: Path
    reused: bool


def base_dir(exp: ExperimentConfig) -> Path:
    label = exp.model.name.replace(":", "-").replace("/", "-")
    return cache_dir() / f"base-{label}-{exp.dataset.name}-{exp.base_key()}"


def build_model(exp: ExperimentConfig, data: DataBundle, structure: dict[str, Any] | None = None) -> nn.Module:
    """The experiment's model for `data`, with its structure: `structure` as stored with the base model (found
    once, when the base was trained), else discovered at the data's channels and size."""
    model = create_model(exp.model.name, num_classes=data.num_classes, in_chans=data.in_chans,
                         pretrained=exp.model.pretrained, input_size=data.native_size, **exp.model.kwargs)
    if structure is not None:
        setattr(model, STRUCTURE_ATTR, ModelStructure.from_dict(structure))
    else:
        attach_structure(model, data.in_chans, data.native_size, stages=exp.model.stages,
                         ignored_layers=exp.model.ignored_layers)
    return model


def get_base_model(
    exp: ExperimentConfig,
    data: DataBundle | None = None,
    on_step: Callable[[int, int], None] | None = None,
    force: bool = False,
    device: str = "cpu",
    on_progress: ProgressCallback | None = None,
) -> BaseModel:
    """Return the cached base model for `exp`, training it first if no cache entry exists; while it trains,
    `on_step(done, total)` and `on_progress(TrainProgress)` follow it (train.train_model)."""
    data = data or load_data(exp.dataset, exp.seed)  # a data error stops before any cache entry exists
    folder = base_dir(exp)
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder / ".lock")):
        weights, metrics_file = folder / "model.pt", folder / "metrics.json"
        store = artefact_store.store_url()  # a URL store: workers on other machines share the base through it
        if store and not force and not (weights.is_file() and metrics_file.is_file()):
            _fetch_base(store, folder)
        if not force and weights.is_file() and metrics_file.is_file():
            try:
                state = torch.load(weights, map_location="cpu", weights_only=True)
                structure = state.get("structure")
                metrics = json.loads(metrics_file.read_text())
            except Exception as e:  # noqa: BLE001 - corrupt cache entry
                raise EdgeCompressError(f"{folder}: corrupt base-model cache entry ({e}); delete it") from None
            model = build_model(exp, data, structure=structure)
            try:
                model.load_state_dict(state["state_dict"])
            except Exception as e:  # noqa: BLE001 - corrupt cache entry
                raise EdgeCompressError(f"{folder}: corrupt base-model cache entry ({e}); delete it") from None
            return BaseModel(model.eval(), metrics, exp.base_key(), folder, reused=True)
        seed_everything(exp.seed)
        model = build_model(exp, data).to(device)
        settings = TrainSettings.from_recipe(exp.base_training, exp.seed)
        settings.memory_format = exp.device.train_memory_format
        settings.compute_lock = exp.device.exclusive_measurement
        start = time.perf_counter()
        hist = train_model(model, data.train, data.native_size, settings, on_step=on_step, device=device,
                           on_progress=on_progress)
        train_seconds = time.perf_counter() - start
        model = model.cpu().eval()
        metrics = {
            "val_accuracy": accuracy(model, data.val, data.native_size, compute_lock=settings.compute_lock),
            "test_accuracy": accuracy(model, data.test, data.native_size, compute_lock=settings.compute_lock),
            "train_seconds": round(train_seconds, 2),
            "train_accuracy": hist.train_accuracy[-1] if hist.train_accuracy else None,
            "epochs": settings.epochs,
            "model": exp.model.name,
            "dataset": exp.dataset.name,
            "input_size": data.native_size,
            "train_images": len(data.train),
            "key": exp.base_key(),
            "threads": torch.get_num_threads(),
            "memory_format": hist.memory_format,
            "memory_format_reason": hist.memory_format_reason,
        }
        with atomic_path(weights) as tmp:
            torch.save({"format_version": FORMAT_VERSION, "state_dict": model.state_dict(),
                        "structure": structure_of(model).to_dict()}, tmp)
        atomic_write_json(metrics_file, metrics)
        if store:
            _upload_base(store, folder)
        return BaseModel(model, metrics, exp.base_key(), folder, reused=False)


BASE_FILES = ("model.pt", "metrics.json")


def base_uri(store: str, folder: Path) -> str:
    """Where a base-model cache entry lives in a URL artefact store: <store>/cache/<entry name>."""
    return f"{store.rstrip('/')}/cache/{folder.name}"


def _fetch_base(store: str, folder: Path) -> bool:
    """Copy a base model another machine trained and uploaded into the local cache entry `folder` (weights
    first, metrics last: a cache entry counts once both are there). False when the store has none."""
    got = artefact_store.fetch(base_uri(store, folder), cache=folder / ".store")
    if got is None:
        return False
    for name in BASE_FILES:
        with atomic_path(folder / name) as tmp:
            shutil.copyfile(got / name, tmp)
    shutil.rmtree(got, ignore_errors=True)
    return True


def _upload_base(store: str, folder: Path) -> None:
    """Upload the cache entry's weights and metrics (not its lock or latency calibration) to the store."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        for name in BASE_FILES:
            shutil.copyfile(folder / name, Path(tmp) / name)
        artefact_store.upload(Path(tmp), base_uri(store, folder))
