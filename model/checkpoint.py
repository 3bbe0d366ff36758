"""Checkpoints: a self-describing directory of safetensors and JSON that `load` rebuilds alone."""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from data.errors import DataError
from data.features import FEATURE_NAMES, FEATURES_VERSION
from data.schema import Dataset, make_dataset
from model.encoder import TextEncoder, load_encoder, pick_device
from model.errors import CheckpointError
from model.quantize import int8_encoder, resolve_quantize
from model.recommender import RecommenderConfig, RecommenderNet

FORMAT = "whyrec-checkpoint"
VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
VECTORS = "item_vectors.safetensors"
ITEMS = "items.parquet"
EVENTS = "events.parquet"
ENCODER = "encoder"
METRICS = "metrics.json"


def save(directory: str | Path, net: RecommenderNet, dataset: Dataset, text_embeddings: torch.Tensor, *,
         train_config: dict | None = None, metrics: dict | None = None, base_encoder: str = "") -> str:
    """Write the checkpoint next to `directory` and swap it in whole; returns its checkpoint_id.

    A crash mid-write leaves the previous checkpoint in place: nothing is half-written.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
                   if not k.startswith("encoder.")}
        save_file(weights, staging / WEIGHTS)
        save_file({"text_embeddings": text_embeddings.detach().cpu().float().contiguous()}, staging / VECTORS)
        _save_encoder(net.encoder, staging / ENCODER)
        dataset.items.to_parquet(staging / ITEMS, index=False)
        dataset.events.to_parquet(staging / EVENTS, index=False)
        files = {p.relative_to(staging).as_posix(): _sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
        checkpoint_id = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
        config = {
            "format": FORMAT,
            "version": VERSION,
            "checkpoint_id": checkpoint_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base_encoder": base_encoder,
            "model": net.config.to_dict(),
            "features": {"version": FEATURES_VERSION, "names": list(FEATURE_NAMES)},
            "train": train_config or {},
            "data": {"fingerprint": dataset.meta.fingerprint, "source": dataset.meta.source,
                     "format": dataset.meta.format, "synthetic_clock": dataset.meta.synthetic_clock,
                     "notes": list(dataset.meta.notes)},
            "metrics": metrics or {},
            "files": files,
        }
        (staging / CONFIG).write_text(json.dumps(config, indent=2))
        (staging / METRICS).write_text(json.dumps(metrics or {}, indent=2))
        _swap_in(staging, directory)
        return checkpoint_id
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _save_encoder(encoder: TextEncoder, target: Path) -> None:
    transformer = encoder.transformer
    if hasattr(transformer, "merge_and_unload"):  # LoRA: ship plain merged weights, nothing peft-specific
        import copy

        transformer = copy.deepcopy(transformer).merge_and_unload()
    transformer.save_pretrained(target, safe_serialization=True)
    encoder.tokenizer.save_pretrained(target)


def _swap_in(staging: Path, directory: Path) -> None:
    old = None
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{time.time_ns()}")
        directory.rename(old)
    staging.rename(directory)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_config(directory: str | Path) -> dict:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory (train one with `python -m model train`)")
    path = directory / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; this is not a WhyRec checkpoint directory") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from exc
    if config.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format is {config.get('format')!r}, expected {FORMAT!r}")
    if config.get("version") != VERSION:
        raise CheckpointError(f"{path}: version {config.get('version')!r}; this WhyRec reads version {VERSION}")
    return config


def verify(directory: Path, config: dict) -> None:
    """Every file the checkpoint lists is there, whole and unchanged."""
    for name, expected in config.get("files", {}).items():
        path = directory / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing from the checkpoint")
        if _sha256(path) != expected:
            raise CheckpointError(f"{path}: truncated or corrupted (checksum differs from config.json)")


def check_features(directory: Path, config: dict) -> None:
    """The behaviour features the checkpoint was trained on are the ones this build computes, column for column.

    Checkpoints from before the version was recorded were trained on version 1."""
    trained = config.get("features") or {"version": 1}
    if trained.get("version") != FEATURES_VERSION or list(trained.get("names", FEATURE_NAMES)) != list(FEATURE_NAMES):
        raise CheckpointError(
            f"{directory / CONFIG}: trained on behaviour features version {trained.get('version')!r}; this WhyRec "
            f"computes version {FEATURES_VERSION} ({', '.join(FEATURE_NAMES)}), which its behaviour head would "
            f"misread: retrain it with `python -m model train` (the demo: `make clean demo`)"
        )


def load(directory: str | Path, data: str | Path | None = None, *, device: str = "auto", check: bool = True,
         quantize: str = "none"):
    """Rebuild the `Recommender` from a checkpoint directory; `data` serves other events for the same items.

    device: "auto" (CUDA when present, else the CPU), "cpu" or "cuda".
    quantize: "none" (the float encoder everywhere), "int8" (queries and catalog re-encoding by the int8 encoder
    that model.quantize derives from this checkpoint's, a CPU path) or "auto" (int8 on the CPU, none on CUDA).
    The checkpoint itself is never changed.
    """
    from model.serving import Recommender

    directory = Path(directory)
    config = read_config(directory)
    if check:
        verify(directory, config)
    check_features(directory, config)
    try:
        # Checkpoints from before the cosine top were trained with the plain dot product.
        model_config = RecommenderConfig.from_dict({"temperature": 0.0, **config["model"]})
    except (KeyError, TypeError) as exc:
        raise CheckpointError(f"{directory / CONFIG}: model section is incomplete ({exc})") from exc
    try:
        transformer, tokenizer = load_encoder(directory / ENCODER)
    except Exception as exc:
        raise CheckpointError(f"{directory / ENCODER}: cannot load the encoder ({exc})") from exc
    net = RecommenderNet(model_config, TextEncoder(transformer, tokenizer))
    try:
        weights = load_file(directory / WEIGHTS)
        vectors = load_file(directory / VECTORS)["text_embeddings"]
    except (SafetensorError, OSError, KeyError) as exc:
        raise CheckpointError(f"{directory}: cannot read the weights ({exc})") from exc
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("encoder.")]
    if missing or unexpected:
        raise CheckpointError(f"{directory / WEIGHTS}: does not match config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    dataset = _dataset(directory, config, data)
    if vectors.shape[0] != len(dataset.items) or vectors.shape[0] != model_config.n_items:
        raise CheckpointError(f"{directory / VECTORS}: {vectors.shape[0]} item vectors for "
                              f"{model_config.n_items} items in the model")
    if vectors.ndim != 2 or vectors.shape[1] != net.item_text_width:
        raise CheckpointError(f"{directory / VECTORS}: item text embeddings of width {tuple(vectors.shape[1:])}, "
                              f"the model reads {net.item_text_width}")
    serving_device = pick_device(device)
    text_encoder = None
    if resolve_quantize(quantize, serving_device) == "int8":
        text_encoder = int8_encoder(net.encoder)
    return Recommender(net, dataset, vectors, checkpoint_id=config["checkpoint_id"], metadata=config,
                       device=str(serving_device), text_encoder=text_encoder)


def _dataset(directory: Path, config: dict, data) -> Dataset:
    try:
        items = pd.read_parquet(directory / ITEMS)
        events = pd.read_parquet(directory / EVENTS)
    except Exception as exc:
        raise CheckpointError(f"{directory}: cannot read the item table or events ({exc})") from exc
    stored = make_dataset(items, events, source=config["data"]["source"], format=config["data"]["format"],
                          synthetic_clock=config["data"].get("synthetic_clock", False),
                          notes=config["data"].get("notes", ()))
    if data is None:
        return stored
    from data.io import load_dataset

    try:
        given = load_dataset(data)
    except DataError:
        raise
    if list(given.items["item_id"]) != list(stored.items["item_id"]):
        ours = set(stored.items["item_id"])
        theirs = set(given.items["item_id"])
        raise CheckpointError(
            f"data {data} does not match the checkpoint {directory}: {len(theirs - ours)} items unknown to the "
            f"model, {len(ours - theirs)} model items missing (fingerprint {given.meta.fingerprint}, "
            f"model trained on {config['data']['fingerprint']}); retrain on this data or pick its model"
        )
    return given
