"""Checkpoints: a self-describing directory of safetensors and JSON that `load` rebuilds alone."""

from __future__ import annotations

import functools
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
from model import scenarios
from model.encoder import TextEncoder, load_encoder, pick_device
from model.errors import CheckpointError, ModelError
from model.quantize import int8_encoder, resolve_quantize
from model.recommender import RecommenderConfig, RecommenderNet
from model.retrieval import RetrievalConfig

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
         train_config: dict | None = None, metrics: dict | None = None, base_encoder: str = "",
         backbone: dict | None = None, lineage: dict | None = None) -> str:
    """Write the checkpoint next to `directory` and swap it in whole; returns its checkpoint_id.

    A crash mid-write leaves the previous checkpoint in place: nothing is half-written.
    backbone: for a scenario adapter, {"checkpoint_id", "weights_sha256", "path"} of the backbone it adapts; only
    the adapter and heads are written (model.scenarios), the backbone's network and encoder are read from it.
    lineage: for an updated checkpoint, its parent (see model.train.train's `parent`).
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        if backbone is None:
            weights = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()
                       if not k.startswith("encoder.")}
        else:
            weights = scenarios.adapter_state(net)
        save_file(weights, staging / WEIGHTS)
        save_file({"text_embeddings": text_embeddings.detach().cpu().float().contiguous()}, staging / VECTORS)
        if backbone is None:
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
        if backbone is not None:
            config["backbone"] = backbone
            config["adapter"] = {"rank": net.config.lora_rank, "targets": list(scenarios.ADAPTER_TARGETS),
                                 "heads": list(scenarios.HEAD_PREFIXES), "parameters": sum(map(torch.numel,
                                                                                              weights.values()))}
        if lineage is not None:
            config["lineage"] = lineage
        (staging / CONFIG).write_text(json.dumps(config, indent=2))
        (staging / METRICS).write_text(json.dumps(metrics or {}, indent=2))
        _swap_in(staging, directory)
        return checkpoint_id
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def copy_checkpoint(source: str | Path, directory: str | Path, *, skip: tuple[str, ...] = ()) -> None:
    """Copy the checkpoint at `source` to `directory`, swapped in whole; files named in `skip` stay behind."""
    source, directory = Path(source), Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        shutil.copytree(source, staging, ignore=shutil.ignore_patterns(*skip), dirs_exist_ok=True)
        _swap_in(staging, directory)
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
         retrieval: RetrievalConfig | None = None, backbone: str | Path | None = None,
         quantize: str = "none"):
    """Rebuild the `Recommender` from a checkpoint directory; `data` serves other events for the same items.

    device: "auto" (CUDA when present, else the CPU), "cpu" or "cuda". `retrieval`: how large catalogs are ranked
    (default: config.json's optional "retrieval" section, else RetrievalConfig's defaults).
    A scenario adapter is read over its backbone: the directory it names, or `backbone` if given; a backbone other
    than the one it was trained on is refused. What comes back is a plain Recommender either way.
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
    if retrieval is None:
        try:
            retrieval = RetrievalConfig.from_dict(dict(config.get("retrieval") or {}))
        except (ModelError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{directory / CONFIG}: retrieval section: {exc}") from exc
    adapted = "backbone" in config
    network_dir = find_backbone(directory, config, backbone) if adapted else directory
    if adapted and check:
        verify(network_dir, read_config(network_dir))
    try:
        transformer, tokenizer = load_encoder(network_dir / ENCODER)
    except Exception as exc:
        raise CheckpointError(f"{network_dir / ENCODER}: cannot load the encoder ({exc})") from exc
    net = RecommenderNet(model_config, TextEncoder(transformer, tokenizer))
    try:
        weights = load_file(directory / WEIGHTS)
        vectors = load_file(directory / VECTORS)["text_embeddings"]
        if adapted:
            shared = load_file(network_dir / WEIGHTS)
    except (SafetensorError, OSError, KeyError) as exc:
        raise CheckpointError(f"{directory}: cannot read the weights ({exc})") from exc
    try:
        if adapted:  # the backbone's network, then the adapter and heads on top, merged into a plain net
            net.load_state_dict(scenarios.backbone_weights(shared, same_catalog=False), strict=False)
            scenarios.add_adapter(net, config.get("adapter", {}).get("rank", model_config.lora_rank))
        missing, unexpected = net.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape than config.json describes
        raise CheckpointError(f"{directory / WEIGHTS}: does not match config.json ({str(exc)[:300]})") from exc
    missing = [k for k in missing if not k.startswith("encoder.")]
    if adapted:  # the shared part comes from the backbone; the adapter file must hold all of the rest
        missing = [k for k in missing if k in scenarios.adapter_state(net)]
    if missing or unexpected:
        raise CheckpointError(f"{directory / WEIGHTS}: does not match config.json "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if adapted:
        scenarios.merge_and_unload(net)
    dataset = _dataset(directory, config, data)
    if vectors.shape[0] != len(dataset.items) or vectors.shape[0] != model_config.n_items:
        raise CheckpointError(f"{directory / VECTORS}: {vectors.shape[0]} item vectors for "
                              f"{model_config.n_items} items in the model")
    if vectors.ndim != 2 or vectors.shape[1] != net.item_text_width:
        raise CheckpointError(f"{directory / VECTORS}: item text embeddings of width {tuple(vectors.shape[1:])}, "
                              f"the model reads {net.item_text_width}")
    serving_device = pick_device(device)
    text_encoder = None
    if resolve_quantize(quantize, serving_device) == "int8":  # derived (or read from its cache) at the first query
        text_encoder = functools.partial(int8_encoder, net.encoder)
    return Recommender(net, dataset, vectors, checkpoint_id=config["checkpoint_id"], metadata=config,
                       device=str(serving_device), retrieval=retrieval, text_encoder=text_encoder)


def backbone_reference(directory: str | Path) -> dict:
    """How an adapter names its backbone: checkpoint id, weights checksum and where it was (absolute path)."""
    directory = Path(directory)
    config = read_config(directory)
    if "backbone" in config:
        raise CheckpointError(f"{directory} is itself a scenario adapter; a backbone is a full checkpoint "
                              f"(its backbone is {config['backbone'].get('path')})")
    return {"checkpoint_id": config["checkpoint_id"], "weights_sha256": scenarios.weights_checksum(config),
            "path": str(directory.resolve())}


def find_backbone(directory: Path, config: dict, override: str | Path | None = None) -> Path:
    """The backbone directory an adapter reads, checked to be the one it was trained on (id and weights)."""
    wanted = config["backbone"]
    where = Path(override) if override is not None else Path(wanted.get("path", ""))
    if not where.is_absolute() and override is None:
        where = directory / where
    if not (where / CONFIG).exists():
        raise CheckpointError(f"{directory / CONFIG}: its backbone {wanted.get('checkpoint_id')} is not at {where}; "
                              f"pass the backbone's directory (--base)")
    found = backbone_reference(where)
    if (found["checkpoint_id"], found["weights_sha256"]) != (wanted.get("checkpoint_id"), wanted.get("weights_sha256")):
        raise CheckpointError(
            f"{directory} is an adapter for backbone {wanted.get('checkpoint_id')} (weights "
            f"{str(wanted.get('weights_sha256'))[:12]}), but {where} is backbone {found['checkpoint_id']} (weights "
            f"{found['weights_sha256'][:12]}): load it over the backbone it was trained on, or train it again")
    return where


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
