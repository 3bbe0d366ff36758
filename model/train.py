"""Training: stage 1 fits the sequence model over the whole catalog, stage 2 the behaviour head on top.

Stage 1: next-item cross-entropy over every catalog item, every history position at once (SASRec-style),
plus pseudo-queries made of item words so that query mode is trained too.
Stage 2: the behaviour head learns what point-in-time features add to stage 1, by re-ranking the
stage-1 candidates of held-out moments. Both stages keep the best epoch by validation NDCG@10.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from data.features import FEATURES
from data.quality import quality_report
from data.schema import Dataset, item_texts
from data.split import leave_last_out
from model import checkpoint, distributed, scenarios
from model.encoder import TextEncoder, load_encoder, pick_device, resolve_encoder
from model.errors import CheckpointError, ModelError
from model.evaluate import evaluate_scorer, model_scorer
from model.recommender import RecommenderConfig, RecommenderNet, new_behaviour_head
from model.sequences import build_histories, training_tensors
from model.serving import Recommender

STATE = "train_state.json"
BEHAVIOUR_HEADS = 5  # stage 2 is cross-fitted over this many folds of the validation users (fit_behaviour_head)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # an upper bound: early stopping on validation NDCG@10 decides
    patience: int = 3  # epochs without improvement before stopping
    # Users per step, over all processes under torchrun (0: about 60 steps an epoch, 16..128); every history position
    # counts. GPUs take larger batches well (bf16); a larger batch takes fewer steps an epoch.
    batch_size: int = 0
    lr: float = 2e-3
    encoder_lr: float = 3e-5  # lora / full tuning only
    weight_decay: float = 0.01
    query_weight: float = 0.3  # weight of the pseudo-query loss that trains query mode
    min_history: int = 3  # users with fewer distinct items are training-only
    eval_users: int = 2000  # validation users ranked per epoch (a fixed sample; all if fewer)
    behaviour_epochs: int = 40  # stage 2 epochs; each head keeps its best on its own fold of validation users
    # Caps stage 2's (moments x items x features) tensor at ~600 MB. The heads' checks read their moments from it,
    # so this is all stage 2 holds (a single head's check once had a tensor of its own, 1000 users wide).
    behaviour_budget_floats: float = 1.5e8
    time_budget_s: float = 0.0  # stop stage 1 once this much time has passed (0 = no budget)
    seed: int = 0
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ModelError(f"unknown TrainConfig keys: {', '.join(unknown)}")
        return cls(**values)


def pseudo_queries(dataset: Dataset, seed: int) -> list[str]:
    """What a shopper might type for each item: a few of its title words and its category, seeded."""
    rng = np.random.default_rng(seed)
    queries = []
    for title, category in zip(dataset.items["title"], dataset.items["category"]):
        words = [w for w in str(title).split() if len(w) > 2 and not any(ch.isdigit() for ch in w)]
        if not words:
            words = str(title).split() or ["item"]
        take = rng.choice(len(words), size=min(len(words), int(rng.integers(1, 4))), replace=False)
        query = " ".join(words[i] for i in sorted(take))
        if category and rng.random() < 0.5:
            query = f"{query} {str(category).split()[-1]}"
        queries.append(query.lower())
    return queries


def cached_embeddings(encoder: TextEncoder, texts: list[str], max_tokens: int, cache_dir: Path, tag: str,
                      progress: bool, lexical: bool = False) -> torch.Tensor:
    """Frozen-encoder embeddings of many texts, cached on disk by encoder, texts, token limit and channels."""
    key = hashlib.sha256(json.dumps([tag, max_tokens, texts, lexical]).encode()).hexdigest()[:16]
    path = cache_dir / f"{tag}-{key}.safetensors"
    if path.exists():
        return load_file(path)["embeddings"]
    embeddings = encoder.embed(texts, max_tokens, progress=progress, lexical=lexical)
    cache_dir.mkdir(parents=True, exist_ok=True)
    save_file({"embeddings": embeddings.contiguous()}, path)
    return embeddings


class ProgressFile:
    """Where a run stands, rewritten whole (JSON) as it goes, for a dashboard that waits on the model to read.

    `fraction` is of the run's upper bound: stage 1 counts for STAGE1_SHARE spread over its config.epochs (early
    stopping then jumps ahead), stage 2 for the rest, one part per behaviour head. With no path it does nothing.
    """

    # Stage 1's share of a quiet CPU build of the demo model, roughly: five stage-2 heads took it from 103 s to
    # 130 s (README), so stage 2 is about a third. Under load stage 2 is slower (docs/first-run.md).
    STAGE1_SHARE = 0.7

    def __init__(self, path: str | Path | None, epochs: int) -> None:
        self.path = Path(path) if path else None
        self.state = {"pid": os.getpid(), "stage": "preparing", "epochs": epochs, "fraction": 0.0,
                      "started": time.time()}
        self._written = 0.0

    def update(self, *, every: float = 0.0, **fields) -> None:
        """Merge `fields` in and write, unless the last write is younger than `every` seconds."""
        self.state.update(fields)
        state = self.state
        if state["stage"] == "stage 1":
            done = state["epoch"] - 1 + state.get("step", 0) / max(state.get("steps", 1), 1)
            state["fraction"] = self.STAGE1_SHARE * min(done / state["epochs"], 1.0)
        elif state["stage"] == "stage 2":
            state["fraction"] = self.STAGE1_SHARE + (1 - self.STAGE1_SHARE) * state["head"] / state["heads"]
        elif state["stage"] == "done":
            state["fraction"] = 1.0
        now = time.time()
        if self.path is None or now - self._written < every:
            return
        self._written = state["updated"] = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = self.path.with_name(self.path.name + ".tmp")
        staging.write_text(json.dumps(state))
        staging.replace(self.path)  # a reader never sees half a file


class _Interrupt:
    """Turn Ctrl-C / SIGTERM into a clean stop after the current step; the best checkpoint stays."""

    active: _Interrupt | None = None  # the run in progress, so a second signal source (tests, UI) can stop it

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self):
        _Interrupt.active = self
        self._old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
        for s in self._old:
            with contextlib.suppress(ValueError):  # not the main thread (e.g. a test runner thread)
                signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        _Interrupt.active = None
        for s, handler in self._old.items():
            with contextlib.suppress(ValueError):
                signal.signal(s, handler)


def train(dataset: Dataset, out: str | Path, *, model_overrides: dict | None = None,
          train_config: TrainConfig | None = None, base_model: str | None = None, resume: bool = False,
          progress: bool = True, log=print, progress_file: str | Path | None = None,
          preview: str | Path | None = None, preview_after_s: float = 20.0,
          backbone: str | Path | None = None, scenario: str = "", parent: str | Path | None = None) -> dict:
    """Train a recommender on `dataset` and write its best checkpoint to `out`; returns the metrics.

    progress_file: a JSON file kept up to date with where the run stands (ProgressFile), if given.
    preview: where to copy the best stage-1 checkpoint once, after `preview_after_s` seconds of stage 1 (or when
        stage 1 ends, if sooner), so that a dashboard can serve it while the rest trains. Its behaviour heads are
        still neutral (they add 0): it ranks by text and history alone. The progress file names it.
    backbone: a full checkpoint to adapt: `out` becomes a scenario adapter over it (model.scenarios), its network
        shared and frozen, a LoRA adapter and the heads trained; `scenario` names it.
    parent: a checkpoint to bring up to date (warm start): stage 1 goes on from its weights, learning only from the
        moments after its data ends (earlier events are history), and `out` records it as its parent (lineage).
    Either way the encoder is the starting checkpoint's, frozen, and the model's shape is its.

    Under torchrun (model.distributed) every process runs this; stage 1's steps are shared among them, and process 0
    alone evaluates, logs, writes the checkpoint and the progress file, and fits stage 2.
    """
    config = train_config or TrainConfig()
    if not distributed.is_main():
        progress, log, progress_file = False, (lambda *_: None), None
    out = Path(out)
    started = time.perf_counter()
    report = ProgressFile(progress_file, config.epochs)
    report.update()
    torch.manual_seed(config.seed)
    device = distributed.local_device(pick_device(config.device))
    quality_report(dataset).raise_if_blocking()
    split = leave_last_out(dataset, min_history=config.min_history)
    if split.valid.empty:
        raise ModelError(f"no user has {config.min_history} distinct items: nothing to validate on")

    if backbone is not None and parent is not None:
        raise ModelError("a run adapts a backbone or updates a parent, not both")
    origin = Path(backbone if backbone is not None else parent) if (backbone or parent) is not None else None
    origin_config = _origin_config(origin, dataset, adapter=backbone is not None) if origin else None
    base = resolve_encoder(base_model) if origin is None else origin_config.get("base_encoder", "")
    state_path = out / STATE
    # Process 0 decides (and may remove a state it cannot resume from) before the others read anything.
    resuming = distributed.broadcast(resume and _resumable(out, log) if distributed.is_main() else None)
    if resuming:  # a head trained on other behaviour features cannot go on learning on these
        checkpoint.check_features(out, checkpoint.read_config(out))
    # A tuned run resumes from the encoder its checkpoint shipped: the base weights with what the best epoch so far
    # learned merged in. Fresh LoRA adapters start at zero on top of it, so the function is where it was.
    tuned_weights = out / checkpoint.ENCODER
    from_checkpoint = (resuming and (model_overrides or {}).get("encoder_tuning", "frozen") != "frozen"
                       and tuned_weights.is_dir())
    # An interrupted run goes on with the head it was built with (one head, before the folds).
    heads = checkpoint.read_config(out)["model"].get("behaviour_heads", 1) if resuming else BEHAVIOUR_HEADS
    encoder_source = origin / checkpoint.ENCODER if origin else base
    transformer, tokenizer = load_encoder(tuned_weights if from_checkpoint else encoder_source)
    encoder = TextEncoder(transformer, tokenizer).to(device)  # item texts are embedded where training runs
    if origin is None:
        model_config = RecommenderConfig(n_items=len(dataset.items), n_features=len(FEATURES),
                                         text_dim=encoder.hidden_size,
                                         **{"behaviour_heads": heads, **(model_overrides or {})})
    else:  # the starting checkpoint's shape; its encoder ships tuned (merged) if it was, and stays as it is
        model_config = RecommenderConfig.from_dict({"temperature": 0.0, **origin_config["model"],
                                                    "n_items": len(dataset.items), "behaviour_heads": heads,
                                                    "encoder_tuning": "frozen"})
    encoder_tag = Path(base).name if origin is None else f"checkpoint-{origin_config['checkpoint_id']}"
    texts = item_texts(dataset)

    def embed_items() -> torch.Tensor:  # the catalog as the model reads it, by the encoder as it is now (CPU)
        return encoder.embed(texts, model_config.max_item_tokens, lexical=model_config.lexical_text)

    cache_dir = out.parent / f".{out.name}.cache"
    queries = pseudo_queries(dataset, config.seed)
    if from_checkpoint:  # the resumed encoder's own embeddings, kept out of the cache, which holds the base's
        text_embeddings = embed_items()
        query_embeddings = encoder.embed(queries, model_config.max_query_tokens)
    else:
        with distributed.main_first():  # process 0 fills the cache, the others read it
            text_embeddings = cached_embeddings(encoder, texts, model_config.max_item_tokens, cache_dir,
                                                f"items-{encoder_tag}", progress, model_config.lexical_text)
            query_embeddings = cached_embeddings(encoder, queries, model_config.max_query_tokens, cache_dir,
                                                 f"queries-{encoder_tag}", progress)
    net = RecommenderNet(model_config, _tuned(encoder, model_config)).to(device)
    backbone_ref = lineage = None
    since_ns = None  # an update learns from the moments after this one only
    if backbone is not None:
        backbone_ref = {**checkpoint.backbone_reference(origin), "scenario": scenario}
        _start_from(net, origin, dataset, adapter=True)
    elif parent is not None:
        _start_from(net, origin, dataset, adapter=False)
        lineage, since_ns = _lineage(origin, origin_config)
    recommender = Recommender(net, dataset, text_embeddings, checkpoint_id="training")
    histories = training_histories(split.train, dataset.item_position, since_ns)
    if not histories:
        raise ModelError(f"no training moment after {lineage['since']}: the data holds no new events to learn from"
                         if since_ns is not None else "no user has two distinct training items: nothing to learn")
    rng = np.random.default_rng(config.seed)
    batch_size = stage1_batch_size(config, len(histories))
    valid = split.valid
    if since_ns is not None and (valid["timestamp"] >= pd.Timestamp(since_ns, tz="UTC")).any():
        valid = valid[valid["timestamp"] >= pd.Timestamp(since_ns, tz="UTC")]  # an update is judged on what is new
    if len(valid) > config.eval_users:
        valid = valid.sample(config.eval_users, random_state=config.seed)
    log(f"{len(dataset.items)} items, {len(histories)} training users, {len(split.valid)} validation users "
        f"({len(valid)} ranked per epoch), encoder {model_config.encoder_tuning} on {device}{distributed.describe()}")

    history_log: list[dict] = []
    best = {"NDCG@10": -1.0, "epoch": 0}
    if resuming:
        state = json.loads(state_path.read_text())
        checkpoint_weights = load_file(out / checkpoint.WEIGHTS)
        net.load_state_dict(checkpoint_weights, strict=False)
        best, history_log = state["best"], state["log"]
        log(f"resuming after epoch {len(history_log)} (best validation NDCG@10 {best['NDCG@10']:.4f} at epoch "
            f"{best['epoch']})")
    start_epoch = len(history_log)
    # Epochs without improvement so far: a run interrupted once stage 1 had stopped goes straight on to stage 2.
    stale = start_epoch - best["epoch"]
    last_epoch = config.epochs if stale < config.patience else start_epoch

    optimizer = stage1_optimizer(net, config)
    trainable = scenarios.trainable_parameters(net)
    objective = distributed.wrap(Stage1Objective(net))
    world = distributed.world_size()
    train_config_dict = dataclasses.asdict(config)

    def save(metrics: dict) -> str:
        recommender.refresh_item_vectors()
        return checkpoint.save(out, net, dataset, text_embeddings.cpu(), train_config=train_config_dict,
                               metrics=metrics, base_encoder=base, backbone=backbone_ref, lineage=lineage)

    def write_preview() -> None:
        checkpoint.copy_checkpoint(out, preview, skip=(STATE,))
        report.update(preview=str(preview), preview_epoch=best["epoch"])
        log(f"preview: the stage-1 checkpoint of epoch {best['epoch']} copied to {preview}")

    previewed = preview is None
    stage1_started = time.perf_counter()
    # A tuned encoder's trainable weights at the best epoch; a resumed run starts at the best epoch so far.
    best_encoder = _trainable_encoder_weights(net) if from_checkpoint else {}
    with _Interrupt() as interrupt:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            objective.train()
            scenarios.set_merged(net, False)  # an adapter trains as LoRA layers, and is evaluated merged
            # Every process walks the same order (process 0's), each taking its share of every batch.
            order = distributed.broadcast(rng.permutation(len(histories)) if distributed.is_main() else None)
            done = stage1_epoch(net, objective, optimizer, histories, order, batch_size, text_embeddings,
                                query_embeddings, texts, config, device, rng, since_ns, interrupt=interrupt,
                                on_step=lambda step, steps, epoch=epoch: report.update(
                                    stage="stage 1", epoch=epoch, step=step, steps=steps, every=0.5),
                                progress=progress, description=f"epoch {epoch}")
            losses, positions_done, steps_seconds = done.losses, done.positions, done.seconds
            if _tuning(net) and not interrupt.requested:
                text_embeddings = embed_items()
                recommender.text_embeddings = text_embeddings.to(device)
            decision = None
            if distributed.is_main():  # the others wait for its decision
                net.eval()
                scenarios.set_merged(net, True)
                recommender.refresh_item_vectors()
                metrics = evaluate_scorer(model_scorer(recommender, with_behaviour=False), recommender, valid)
                entry = {"epoch": epoch, "loss": float(np.mean(losses)), "valid_NDCG@10": metrics["NDCG@10"],
                         "valid_HR@10": metrics["HR@10"], "seconds": time.perf_counter() - started,
                         "steps_seconds": steps_seconds, "positions": int(positions_done), "processes": world}
                history_log.append(entry)
                log(f"epoch {epoch}: loss {entry['loss']:.4f}, validation NDCG@10 {metrics['NDCG@10']:.4f} "
                    f"HR@10 {metrics['HR@10']:.4f} ({entry['seconds']:.0f} s)")
                if metrics["NDCG@10"] > best["NDCG@10"]:
                    best = {"NDCG@10": metrics["NDCG@10"], "epoch": epoch, "HR@10": metrics["HR@10"]}
                    best_encoder = _trainable_encoder_weights(net)
                    stale = 0
                    save({"stage": 1, "valid": metrics, "log": history_log})
                else:
                    stale += 1
                state_path.write_text(json.dumps({"best": best, "log": history_log}))
                report.update(stage="stage 1", epoch=epoch + 1, step=0, best_epoch=best["epoch"],
                              valid_ndcg=best["NDCG@10"])
                over_budget = config.time_budget_s and time.perf_counter() - stage1_started > config.time_budget_s
                if not previewed and time.perf_counter() - stage1_started >= preview_after_s:
                    write_preview()
                    previewed = True
                if interrupt.requested:
                    log("interrupted: the best checkpoint so far is kept")
                elif over_budget:
                    log(f"time budget of {config.time_budget_s:.0f} s reached")
                decision = {"stop": bool(stale >= config.patience or interrupt.requested or over_budget),
                            "interrupted": interrupt.requested}
            decision = distributed.broadcast(decision)
            if decision["stop"]:
                interrupt.requested = decision["interrupted"]
                break
        if interrupt.requested:  # the progress file stays as it was: a reader sees its writer is gone
            return {"interrupted": True, "best": best}
    del objective  # stage 1's gradients were the last to go through DDP
    if not distributed.is_main():  # stage 2 is process 0's alone (it fits small heads on held-out moments)
        return {"stage": 1, "rank": distributed.rank(), "processes": world}
    if not previewed and best["epoch"]:  # stage 1 ended before the preview was due
        write_preview()

    # Back to the best stage-1 weights, then stage 2 on top of them. The checkpoint holds the rest of the network;
    # a tuned encoder goes back to its best epoch from memory (the checkpoint ships it merged), and the catalog is
    # embedded again with it, so the encoder, its embeddings and the network on top are of one epoch.
    scenarios.set_merged(net, False)
    net.load_state_dict(load_file(out / checkpoint.WEIGHTS), strict=False)
    scenarios.set_merged(net, True)
    if _tuning(net) and best_encoder and best["epoch"] != history_log[-1]["epoch"]:  # else they are of one already
        with torch.no_grad():
            for name, p in net.encoder.named_parameters():
                if name in best_encoder:
                    p.copy_(best_encoder[name])
        text_embeddings = embed_items()
        recommender.text_embeddings = text_embeddings.to(device)
    stage1_seconds = time.perf_counter() - stage1_started
    recommender.refresh_item_vectors()
    stage1_valid = evaluate_scorer(model_scorer(recommender, with_behaviour=False), recommender, split.valid)
    stage2_started = time.perf_counter()
    report.update(stage="stage 2", head=0, heads=net.config.behaviour_heads)
    stage2 = fit_behaviour_head(recommender, split, config, rng, progress=progress, log=log,
                                on_head=lambda done: report.update(stage="stage 2", head=done))
    stage2_valid = evaluate_scorer(model_scorer(recommender, with_behaviour=True), recommender, split.valid)
    log(f"validation NDCG@10: stage 1 {stage1_valid['NDCG@10']:.4f}, with behaviour {stage2_valid['NDCG@10']:.4f}")
    metrics = {
        "stage": 2,
        "valid": stage2_valid,
        "valid_stage1": stage1_valid,
        "behaviour": stage2,
        "log": history_log,
        "best_epoch": best["epoch"],
        "train_seconds": time.perf_counter() - started,
        "stage1_seconds": stage1_seconds,
        "stage2_seconds": time.perf_counter() - stage2_started,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "processes": world,
        "encoder_tuning": model_config.encoder_tuning,
        "data_fingerprint": dataset.meta.fingerprint,
        "trainable_parameters": trainable,
    }
    metrics["checkpoint_id"] = save(metrics)
    state_path.unlink(missing_ok=True)
    report.update(stage="done")
    return metrics


def _origin_config(origin: Path, dataset: Dataset, *, adapter: bool) -> dict:
    """The config of the checkpoint a run starts from, checked whole and fit to start from."""
    config = checkpoint.read_config(origin)
    checkpoint.verify(origin, config)
    checkpoint.check_features(origin, config)
    if "backbone" in config:
        what = "a backbone" if adapter else "a parent to update"
        raise CheckpointError(f"{origin} is a scenario adapter; {what} must be a full checkpoint (its backbone is "
                              f"{config['backbone'].get('path')}): update the backbone, or train the adapter again")
    if not adapter:
        stored = pd.read_parquet(origin / checkpoint.ITEMS, columns=["item_id"])["item_id"].astype(str)
        if list(stored) != list(dataset.items["item_id"]):
            raise CheckpointError(f"{origin}: an update keeps the parent's catalog, and this data has another "
                                  f"({len(dataset.items)} items against {len(stored)}): train a new model on it")
    return config


def _start_from(net: RecommenderNet, origin: Path, dataset: Dataset, *, adapter: bool) -> None:
    """Load the starting checkpoint's network into `net`: all of it (update), or its shared part under a fresh
    LoRA adapter (scenario; the ID rows too when the catalog is the backbone's, item for item)."""
    weights = load_file(origin / checkpoint.WEIGHTS)
    if adapter:
        stored = pd.read_parquet(origin / checkpoint.ITEMS, columns=["item_id"])["item_id"].astype(str)
        same_catalog = list(stored) == list(dataset.items["item_id"])
        net.load_state_dict(scenarios.backbone_weights(weights, same_catalog), strict=False)
        scenarios.add_adapter(net, net.config.lora_rank)
        return
    own = net.state_dict()
    # A parent with another number of behaviour heads has another head width: stage 2 fits the heads anew anyway.
    net.load_state_dict({k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}, strict=False)


def _lineage(parent: Path, config: dict) -> tuple[dict, int]:
    """The lineage an update records (its parent, and theirs), and the moment the parent's data ends (ns)."""
    events = pd.read_parquet(parent / checkpoint.EVENTS, columns=["timestamp"])["timestamp"]
    end = pd.Timestamp(events.max())
    end = end.tz_localize("UTC") if end.tzinfo is None else end.tz_convert("UTC")
    before = config.get("lineage", {})
    lineage = {"parent": config["checkpoint_id"], "parent_path": str(parent.resolve()), "since": end.isoformat(),
               "generation": int(before.get("generation", 0)) + 1,
               "ancestors": [config["checkpoint_id"], *before.get("ancestors", [])]}
    return lineage, int(end.value) + 1  # the parent's last moment is its own: learning starts after it


def _resumable(out: Path, log) -> bool:
    """Whether `out` holds an interrupted run to go on with: its state and the checkpoint of its best epoch.

    Anything else starts from the beginning, with a line that says why, so `--resume` is safe to pass always.
    """
    if not (out / STATE).exists():
        log(f"nothing to resume in {out}: training from the start")
        return False
    try:
        checkpoint.read_config(out)
    except CheckpointError as exc:
        log(f"cannot resume ({exc}): training from the start")
        (out / STATE).unlink()
        return False
    return True


def _tuned(encoder: TextEncoder, config: RecommenderConfig) -> TextEncoder:
    if config.encoder_tuning == "frozen":
        encoder.requires_grad_(False)
    elif config.encoder_tuning == "lora":
        from peft import LoraConfig, get_peft_model

        encoder.requires_grad_(False)
        lora = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, lora_dropout=0.05,
                          target_modules=["query", "value"])
        encoder.transformer = get_peft_model(encoder.transformer, lora)
    return encoder


def _tuning(net: RecommenderNet) -> bool:
    return net.config.encoder_tuning != "frozen"


def _trainable_encoder_weights(net: RecommenderNet) -> dict[str, torch.Tensor]:
    """A copy of the encoder's trainable weights (LoRA adapters, or all of them): {} for a frozen encoder."""
    return {name: p.detach().clone() for name, p in net.encoder.named_parameters() if p.requires_grad}


def stage1_optimizer(net: RecommenderNet, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW over what stage 1 trains: the network at config.lr, a tuned encoder at config.encoder_lr (the behaviour
    head is stage 2's)."""
    encoder_params = [p for p in net.encoder.parameters() if p.requires_grad]
    encoder_ids = {id(p) for p in encoder_params}
    head_ids = {id(p) for p in net.behaviour_head.parameters()}
    rest = [p for p in net.parameters() if p.requires_grad and id(p) not in encoder_ids and id(p) not in head_ids]
    groups = [{"params": rest, "lr": config.lr}]
    if encoder_params:
        groups.append({"params": encoder_params, "lr": config.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def training_histories(train_events: pd.DataFrame, item_position: dict[str, int],
                       since_ns: int | None = None) -> list:
    """The histories stage 1 learns from: users with two distinct training items (one transition at least), and
    for an update (`since_ns`) only those whose last item came after it."""
    return [h for h in build_histories(train_events, item_position).values()
            if len(h) >= 2 and (since_ns is None or h.first_touch[-1] >= since_ns)]


def stage1_batch_size(config: TrainConfig, n_histories: int) -> int:
    """Users per step: config.batch_size, or about 60 steps an epoch within 16..128."""
    return config.batch_size or int(np.clip(n_histories // 60, 16, 128))


@dataclass(frozen=True)
class Stage1Pass:
    """What one pass of stage-1 steps did (`stage1_epoch`)."""

    losses: list[float]  # each step's mean loss over the whole batch's positions
    positions: int  # next-item targets trained on, over all processes
    steps: int  # steps taken
    epoch_steps: int  # steps in the whole epoch (more than `steps` when capped or stopped)
    seconds: float  # wall time of the steps alone


def stage1_epoch(net: RecommenderNet, objective: nn.Module, optimizer: torch.optim.Optimizer, histories: list,
                 order: np.ndarray, batch_size: int, text_embeddings: torch.Tensor, query_embeddings: torch.Tensor,
                 texts: list[str], config: TrainConfig, device: torch.device, rng: np.random.Generator,
                 since_ns: int | None = None, *, max_steps: int = 0, interrupt=None, on_step=None,
                 progress: bool = False, description: str = "epoch") -> Stage1Pass:
    """One epoch of stage 1: the histories in `order`, `batch_size` users a step (each process its share of every
    batch under torchrun). `max_steps` stops after that many steps (0: the whole epoch), for timing a part of a very
    large one; `interrupt.requested` on any process stops every process after the same step. `on_step(step, steps)`
    is called before each step."""
    world = distributed.world_size()
    losses, positions_done = [], 0
    # Under several processes a last batch smaller than their number is left out (a few users, once).
    steps = range(0, len(order) - world + 1, batch_size)
    taken = steps[:max_steps] if max_steps > 0 else steps
    started = time.perf_counter()
    for step, start in enumerate(tqdm(taken, desc=description, unit="step", disable=not progress, leave=False)):
        if on_step is not None:
            on_step(step, len(steps))
        batch = distributed.shard([histories[i] for i in order[start : start + batch_size]])
        loss = objective(batch, text_embeddings, query_embeddings, texts, config, device, rng, since_ns)
        positions = _target_positions(batch, net.config.max_history, since_ns)
        # The loss is a mean over this process's positions. Weighted by its share of the whole batch's, the
        # gradients DDP averages are those of the whole batch's mean, as one process would compute them.
        # The same sum says whether any process was asked to stop, so all stop after the same step.
        requested = interrupt.requested if interrupt is not None else False
        loss_sum, all_positions, stop = distributed.totals([loss.item() * positions, positions, requested], device)
        optimizer.zero_grad(set_to_none=True)
        (loss * (positions * world / all_positions)).backward()
        nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        optimizer.step()
        losses.append(loss_sum / all_positions)
        positions_done += all_positions
        if stop:
            if interrupt is not None:
                interrupt.requested = True
            break
    return Stage1Pass(losses, int(positions_done), len(losses), len(steps), time.perf_counter() - started)


class Stage1Objective(nn.Module):
    """Stage 1's loss as a module's forward: DistributedDataParallel averages the gradients of what forward ran."""

    def __init__(self, net: RecommenderNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch, *args) -> torch.Tensor:
        return _stage1_loss(self.net, batch, *args)


def _target_positions(batch, max_history: int, since_ns: int | None) -> int:
    """How many targets `training_tensors` gives `batch` (the last `max_history` transitions of each history, those
    at or after `since_ns` if given): what `_stage1_loss` averages over."""
    if since_ns is None:
        return sum(min(len(h) - 1, max_history) for h in batch)
    return sum(int((h.first_touch[len(h) - min(len(h) - 1, max_history):] >= since_ns).sum()) for h in batch)


def _stage1_loss(net: RecommenderNet, batch, text_embeddings: torch.Tensor, query_embeddings: torch.Tensor,
                 texts: list[str], config: TrainConfig, device: torch.device,
                 rng: np.random.Generator, since_ns: int | None = None) -> torch.Tensor:
    tensors = {k: v.to(device) for k, v in training_tensors(batch, net.config.max_history, since_ns).items()}
    text = text_embeddings.to(device)  # (N, H)
    targets = tensors["targets"]  # (B, T), -1 = padding
    if _tuning(net):
        # Fresh, differentiable embeddings for (some of) this batch's targets; the rest of the catalog
        # comes from the per-epoch cache.
        fresh = torch.unique(targets[targets >= 0])[:64]
        batch_text = net.encoder.tokenize([texts[i] for i in fresh.tolist()],
                                          net.config.max_item_tokens)
        embedded = net.item_text_embedding(batch_text["attention_mask"].to(device), batch_text["input_ids"].to(device))
        text = text.index_copy(0, fresh, embedded.to(text.dtype))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        all_index = torch.arange(len(text), device=device)
        catalog = net.item_vectors(text, all_index)  # (N, D)
        bias = net.item_biases(all_index)  # (N,)
        history = catalog[tensors["items"].clamp(min=0)]  # (B, T, D)
        states = net.user_states(history, tensors["event_codes"], tensors["gap_codes"], tensors["now_codes"])
        logits = net.scaled_context(states) @ catalog.T + bias  # (B, T, N)
        loss = nn.functional.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        if config.query_weight > 0:
            valid = targets >= 0
            wanted = targets[valid]  # (M,)
            query = net.query_vector(query_embeddings.to(device)[wanted])  # (M, D)
            # Half the pseudo-queries come with the user's state, so personalised queries are trained too.
            with_user = torch.as_tensor(rng.random(len(wanted)) < 0.5, device=device).unsqueeze(-1)
            context = net.scaled_context(query + with_user * states[valid])
            query_logits = context @ catalog.T + bias
            loss = loss + config.query_weight * nn.functional.cross_entropy(query_logits.float(), wanted)
    return loss


def returning_views(events: pd.DataFrame, users: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Views of an item the user had touched before, between each user's validation and test moments.

    `users` holds one (user_id, timestamp = validation moment) row per user; the window ends at the user's test
    moment, so the events are held out from stage 1 as the validation items are. Columns: user_id, item_id,
    timestamp.
    """
    start = users.set_index("user_id")["timestamp"]
    end = test.set_index("user_id")["timestamp"]
    window = events[events["user_id"].isin(start.index)]
    moment = window["timestamp"]
    window = window[(moment >= window["user_id"].map(start)) & (moment < window["user_id"].map(end))]
    first_touch = events.groupby(["user_id", "item_id"], sort=False, observed=True)["timestamp"].min()
    views = window[window["event"].astype(str) == "view"]
    touched = first_touch.reindex(pd.MultiIndex.from_frame(views[["user_id", "item_id"]])).to_numpy()
    return views.loc[touched < views["timestamp"].to_numpy(), ["user_id", "item_id", "timestamp"]].reset_index(
        drop=True)


def fit_behaviour_head(recommender: Recommender, split, config: TrainConfig, rng: np.random.Generator, *,
                       progress: bool = True, log=print, on_head=None) -> dict:
    """Stage 2: fit the behaviour head on top of stage 1's scores, at held-out moments (point in time).

    on_head(k), if given, is called as head k starts (k heads done), for a progress display.

    The loss is a softmax over the catalog at each moment: what the user views next. The moments, all held out
    from stage 1, are the validation items' first touches and returns, the views of items seen before that fall
    between a user's validation and test moments. With returns the user's own items compete everywhere, so the
    head learns from data what earlier views and carts of an item say, and how often users come back; without
    them "earlier views/carts of this item" would never be nonzero in training, and the head's response to
    them (and their SHAP values) would be noise. Data with no returns at all keeps the user's items set aside.

    Cross-fitted: the validation users fall into config.behaviour_heads folds, and head k is fitted on the
    moments of the other folds and keeps the epoch that ranks fold k's validation items best (the measure that
    matters, not a proxy). The model's head is the mean of the k heads. One head, fitted on 70% of the users
    and stopped on the rest, followed the luck of that split: between training seeds its stopping epoch ranged
    from 1 to 40, and which feature explained a price-driven view changed with it (README).
    """
    from model.evaluate import metrics_from_ranks, ranks_of_targets
    from model.serving import _before

    net = recommender.net
    n_heads = net.config.behaviour_heads
    scorer = model_scorer(recommender, with_behaviour=False)
    position = recommender.dataset.item_position
    # Stage 1 has fitted its training moments closely, so its scores there are over-confident; the head
    # learns from held-out moments instead (stacking).
    valid = split.valid[split.valid["item_id"].isin(position)][["user_id", "item_id", "timestamp"]]
    returns = returning_views(recommender.dataset.events, valid, split.test)
    returns = returns[returns["item_id"].isin(position)]
    # With returns in the data, every moment is "what the user views next": seen items compete at the new-item
    # moments too, and the head learns how often users come back (calibrated against new items). Without any
    # (reviews, ratings: one event per item), they would only teach the head that seen items never return, which
    # costs ranking (Amazon Scientific, test NDCG@10 0.0841/0.0855 against 0.0808/0.0778 in two refits each), and
    # the items are set aside there.
    set_seen_aside = returns.empty
    moments = pd.concat([valid.assign(first_touch=True), returns.assign(first_touch=False)], ignore_index=True)
    # Whole-catalog softmax, as the ranking is judged: every item competes with the target. The moments are
    # capped so the feature tensor stays within a few hundred MB.
    n_items = len(recommender.item_ids)
    cap = max(1, int(config.behaviour_budget_floats // (n_items * len(FEATURES))))
    if len(moments) > cap:
        moments = moments.iloc[np.sort(rng.choice(len(moments), size=cap, replace=False))].reset_index(drop=True)
    plan = cross_fit(valid["user_id"].to_numpy(), moments["user_id"].to_numpy(), moments["first_touch"].to_numpy(),
                     n_heads, rng)
    if not any(len(fit) and len(check) for fit, check in plan):  # too few users to fit on one and check on another
        return {"examples": 0, "kept": False}
    users = list(moments["user_id"])
    times = [int(pd.Timestamp(t).value) for t in moments["timestamp"]]
    features, offsets, seen = [], [], []
    for start in tqdm(range(0, len(users), 256), desc="behaviour features", disable=not progress, leave=False):
        chunk = slice(start, start + 256)
        hist = [_before(recommender.histories[u], t) for u, t in zip(users[chunk], times[chunk])]
        scores = scorer(users[chunk], hist, times[chunk]).astype(np.float32)  # (b, N)
        for b, (user_id, moment) in enumerate(zip(users[chunk], times[chunk])):
            if set_seen_aside:
                scores[b, hist[b].item_index] = -np.inf
            features.append(recommender.features.user_features(user_id, at=pd.Timestamp(moment, tz="UTC")))
        offsets.append(scores)
        seen.extend(h.item_index for h in hist)
    device = recommender.device
    x = torch.as_tensor(np.stack(features), device=device)  # (E, N, F)
    offset = torch.as_tensor(np.concatenate(offsets), device=device)  # (E, N)
    targets = np.array([position[i] for i in moments["item_id"]])
    labels = torch.as_tensor(targets, device=device)  # (E,)
    flat = x.flatten(0, 1)
    net.feature_mean.copy_(flat.mean(0))
    net.feature_std.copy_(flat.std(0).clamp(min=0.05))  # near-constant columns must not blow up
    x.sub_(net.feature_mean).div_(net.feature_std)  # standardised once, in place: the heads read it every epoch
    net.eval()  # dropout elsewhere stays off; the heads have none

    def neutral_head() -> nn.Sequential:
        return new_behaviour_head(len(FEATURES), net.config.feature_hidden).to(device)

    def fit_one(fit: np.ndarray, check: np.ndarray) -> tuple[nn.Sequential, dict]:
        """One head, fitted on the moments `fit`, keeping the epoch that ranks the moments `check` best."""
        head = neutral_head()
        check = check[:1000]
        check_idx = torch.as_tensor(check, device=device)

        def check_ndcg() -> float:
            with torch.no_grad():
                scores = offset[check_idx] + head(x[check_idx]).squeeze(-1)
            return metrics_from_ranks(ranks_of_targets(scores.cpu().numpy(), targets[check],
                                                       [seen[i] for i in check]))["NDCG@10"]

        optimizer = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
        best_ndcg, best_state, best_epoch = check_ndcg(), None, 0
        stage1_ndcg = best_ndcg
        fit_idx = torch.as_tensor(fit, device=device)
        for epoch in range(1, config.behaviour_epochs + 1):
            order = fit_idx[torch.as_tensor(rng.permutation(len(fit)), device=device)]
            for start in range(0, len(order), 32):  # small batches: a few thousand moments need many steps
                idx = order[start : start + 32]
                loss = nn.functional.cross_entropy(offset[idx] + head(x[idx]).squeeze(-1), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            ndcg = check_ndcg()
            if ndcg > best_ndcg:
                best_ndcg, best_epoch = ndcg, epoch
                best_state = {k: v.clone() for k, v in head.state_dict().items()}
        if best_state is None:  # nothing beat stage 1 alone: this head stays neutral
            head = neutral_head()
        else:
            head.load_state_dict(best_state)
        return head, {"fit": len(fit), "check": len(check), "check_ndcg_stage1": stage1_ndcg,
                      "check_ndcg": best_ndcg, "best_epoch": best_epoch, "kept": best_state is not None}

    heads, folds = [], []
    for k, (fit, check) in enumerate(plan):
        if on_head is not None:
            on_head(k)
        if not len(fit) or not len(check):  # a fold without users to fit on or to check on stays neutral
            heads.append(neutral_head())
            folds.append({"fit": len(fit), "check": len(check), "kept": False})
            continue
        head, report = fit_one(fit, check)
        heads.append(head)
        folds.append(report)
        log(f"behaviour head {k + 1}/{n_heads}: {report['fit']} moments x {n_items} items; held-back validation "
            f"NDCG@10 {report['check_ndcg_stage1']:.4f} -> {report['check_ndcg']:.4f} (epoch {report['best_epoch']})")
    net.set_behaviour_heads(heads)
    return {"examples": len(x), "returns": len(returns), "heads": n_heads, "folds": folds,
            "kept": any(f["kept"] for f in folds)}


def cross_fit(valid_users: np.ndarray, moment_users: np.ndarray, first_touch: np.ndarray, n_heads: int,
              rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """Who fits and who checks each behaviour head: (fit, check) indices into the moments, one pair per head.

    The validation users fall into n_heads folds of (nearly) equal size; head k fits on every moment of the users
    outside fold k and is checked on the first touches of fold k's users, so no head is checked on a user it has
    seen. One head: 30% of the users check it, the rest fit it.
    """
    if n_heads == 1:
        fold = (rng.random(len(valid_users)) >= 0.3).astype(int)
    else:
        fold = rng.permutation(len(valid_users)) % n_heads
    moment_fold = pd.Series(fold, index=valid_users).reindex(moment_users).to_numpy()
    return [(np.flatnonzero(moment_fold != k), np.flatnonzero((moment_fold == k) & first_touch))
            for k in range(n_heads)]
