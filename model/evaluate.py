"""Offline evaluation: full-catalog ranking, leave-last-out, history excluded; the model beside its baselines."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from model.errors import ModelError
from model.retrieval import top_k
from model.sequences import UserHistory, serving_tensors

KS = (5, 10, 20)
COVERAGE_K = 10
MODES = {True: "history_excluded", False: "history_included"}  # exclude_history -> report key
SUMMARY_METRICS = ("NDCG@10", "HR@10", "MRR")
# Scores held at once per scorer: a batch of users shrinks for big catalogs so memory stays ~32 MB per scorer.
MAX_BATCH_SCORES = 1 << 22
SAMPLE_SEED = 0  # which users `max_users` keeps: the same ones every run, so runs compare


def ranks_of_targets(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None) -> np.ndarray:
    """(B, N) scores, (B,) target positions -> (B,) 1-based ranks of the targets among non-excluded items.

    Ties count against the target (an item scoring the same as the target ranks above it), so a constant
    scorer earns nothing. The target itself is never excluded. NaN scores are a scorer's bug: they raise,
    since a NaN compares false with everything and would rank the target first.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if np.isnan(scores).any():
        raise ModelError(f"the scorer returned NaN scores for {int(np.isnan(scores).any(axis=1).sum())} user(s)")
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    competing = np.ones(scores.shape, dtype=bool)  # (B, N) items that can rank above the target
    if exclude is not None:
        for b, seen in enumerate(exclude):
            competing[b, np.asarray(seen, dtype=np.int64)] = False
    competing[rows, targets] = False
    return 1 + ((scores >= target_scores[:, None]) & competing).sum(axis=1)


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K (= Recall@K with one target), NDCG@K and MRR from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out = {}
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = float(hit.mean()) if len(ranks) else 0.0
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1), 0.0).mean()) if len(ranks) else 0.0
    out["MRR"] = float((1.0 / ranks).mean()) if len(ranks) else 0.0
    return out


def coverage(top_lists: Sequence[np.ndarray], n_items: int) -> float:
    """Share of the catalog that appears in at least one user's top list."""
    if not len(top_lists):
        return 0.0
    return float(len(np.unique(np.concatenate([np.asarray(t) for t in top_lists]))) / n_items)


def model_scorer(recommender, with_behaviour: bool = True) -> Callable:
    """A batch scorer over the whole catalog: (users, histories cut at their moments, moments) -> (B, N)."""

    def score(user_ids: Sequence[str], histories: Sequence[UserHistory], moments: Sequence[int]) -> np.ndarray:
        net, device = recommender.net, recommender.device
        tensors = serving_tensors(histories, moments, net.config.max_history)
        tensors = {name: t.to(device) for name, t in tensors.items()}
        with torch.no_grad():
            states = recommender.net.scaled_context(recommender._user_state(tensors))  # (B, D)
            states = states * (tensors["lengths"] > 0).unsqueeze(-1)
            scores = states @ (recommender.item_text_vectors + recommender.item_id_vectors).T
            scores = scores + recommender.item_bias_values  # (B, N)
        scores = scores.cpu().numpy().astype(np.float64)
        if with_behaviour:
            features = np.stack([recommender.features.user_features(user_id, at=pd.Timestamp(moment, tz="UTC"))
                                 for user_id, moment in zip(user_ids, moments)])  # (B, N, F)
            # One head call per batch, not per user: on a busy CPU each small torch call can wait milliseconds
            # for its intra-op threads, which made per-user calls cost ~10 ms for ~0.1 ms of work.
            with torch.no_grad():
                scores += recommender.net.behaviour_score(torch.as_tensor(features, device=device)).cpu().numpy()
        return scores

    return score


def rank_scorers(scorers: Mapping[str, Callable], recommender, targets: pd.DataFrame, *, batch_size: int = 256,
                 modes: Sequence[bool] = (True,), ks: Sequence[int] = KS, progress: bool = False) -> dict:
    """Rank the whole catalog for each (user_id, item_id, timestamp) target at its moment, with every scorer.

    Each batch's histories are cut once and shared by the scorers; each scorer scores a batch once, and the
    ranks for every exclusion mode come from the same scores. Returns {exclude_history: {name: metrics}} and,
    under "seconds", each scorer's scoring time.
    """
    from tqdm.auto import tqdm

    from model.serving import _before

    position = recommender.dataset.item_position
    n_items = len(position)
    targets = targets[targets["item_id"].isin(position) & targets["user_id"].isin(recommender.histories)]
    # Same-moment targets side by side: whole-catalog item features are cached per moment.
    targets = targets.sort_values(["timestamp", "user_id"], kind="stable")
    batch_size = max(1, min(batch_size, MAX_BATCH_SCORES // max(n_items, 1)))
    ranks = {mode: {name: [] for name in scorers} for mode in modes}
    tops = {mode: {name: [] for name in scorers} for mode in modes}
    seconds = dict.fromkeys(scorers, 0.0)
    steps = range(0, len(targets), batch_size)
    for start in tqdm(steps, desc="ranking", unit="batch", disable=not progress, leave=False):
        chunk = targets.iloc[start : start + batch_size]
        user_ids = list(chunk["user_id"])
        moments = [int(pd.Timestamp(t).value) for t in chunk["timestamp"]]
        histories = [_before(recommender.histories[u], m) for u, m in zip(user_ids, moments)]
        target_index = np.array([position[i] for i in chunk["item_id"]], dtype=np.int64)
        seen = [h.item_index for h in histories]
        for name, scorer in scorers.items():
            started = time.perf_counter()
            scores = scorer(user_ids, histories, moments)  # (B, N)
            seconds[name] += time.perf_counter() - started
            if scores.shape != (len(chunk), n_items):
                raise ModelError(f"scorer '{name}' returned shape {scores.shape}, expected {(len(chunk), n_items)}")
            for exclude_history in modes:
                exclude = seen if exclude_history else None
                ranks[exclude_history][name].append(ranks_of_targets(scores, target_index, exclude))
                # The top list the product would show: the one top-k rule, ties by catalog order.
                tops[exclude_history][name].extend(
                    top_k(row, COVERAGE_K, exclude=seen[b] if exclude_history else None) for b, row in enumerate(scores)
                )
    out: dict = {"seconds": seconds}
    for exclude_history in modes:
        out[exclude_history] = {}
        for name in scorers:
            all_ranks = np.concatenate(ranks[exclude_history][name]) if len(targets) else np.zeros(0)
            metrics = metrics_from_ranks(all_ranks, ks)
            metrics[f"coverage@{COVERAGE_K}"] = coverage(tops[exclude_history][name], n_items)
            metrics["users"] = len(all_ranks)
            out[exclude_history][name] = metrics
    return out


def evaluate_scorer(scorer: Callable, recommender, targets: pd.DataFrame, *, batch_size: int = 256,
                    exclude_history: bool = True, ks: Sequence[int] = KS, progress: bool = False) -> dict:
    """Rank the whole catalog for each (user_id, item_id, timestamp) target at its moment; return metrics."""
    result = rank_scorers({"scorer": scorer}, recommender, targets, batch_size=batch_size,
                          modes=(exclude_history,), ks=ks, progress=progress)
    return result[exclude_history]["scorer"]


def baseline_scorers(recommender, train_events: pd.DataFrame, text_embeddings=None) -> dict[str, Callable]:
    """Popularity (point in time, every user's events), item-kNN (from `train_events`), zero-shot text."""
    from model.baselines import ItemKNN, Popularity, TextSimilarity

    position = recommender.dataset.item_position
    baselines = (
        Popularity(recommender.dataset.events, position),
        ItemKNN(train_events, position),
        TextSimilarity(encoder_embeddings(recommender) if text_embeddings is None else text_embeddings),
    )
    return {baseline.name: baseline for baseline in baselines}


def encoder_embeddings(recommender) -> torch.Tensor:
    """(N, text_dim) the encoder's item embeddings: the checkpoint's, less the lexical channel's half if any."""
    return recommender.text_embeddings[:, : recommender.config.text_dim]


def untuned_text_embeddings(recommender) -> tuple[torch.Tensor, str]:
    """(N, text_dim) item embeddings of the base encoder before any tuning, and where they came from.

    A frozen encoder's cached embeddings are those. After LoRA or full tuning the base encoder is loaded
    again (it is local: nothing downloads); if it cannot be, the tuned embeddings stand in, and the note says so.
    """
    tuning = recommender.config.encoder_tuning
    if tuning == "frozen":
        return encoder_embeddings(recommender), "the checkpoint's frozen-encoder item embeddings"
    base = recommender.metadata.get("base_encoder") or None
    try:
        from data.schema import item_texts
        from model.encoder import TextEncoder, load_encoder

        transformer, tokenizer = load_encoder(base)
        embeddings = TextEncoder(transformer, tokenizer).embed(item_texts(recommender.dataset),
                                                               recommender.config.max_item_tokens)
        return embeddings, f"the base encoder {base} re-embedded (the model's encoder was {tuning}-tuned)"
    except ModelError as exc:
        return (encoder_embeddings(recommender),
                f"the {tuning}-tuned encoder's embeddings: the base failed to load ({exc})")


def evaluate_model(recommender, dataset=None, *, stage: str = "test", progress: bool = False,
                   max_users: int | None = None, exclude_history: bool = True, since=None, until=None) -> dict:
    """The recommender and every baseline on the same leave-last-out targets, full-catalog ranking.

    since / until (a time, UTC if naive): only targets in [since, until) count, so a lineage of checkpoints can be
    scored on the same window, e.g. the weeks after the oldest one's data ends.

    `exclude_history` picks the primary mode reported in "summary" and "models"; both modes are always under
    "modes" (they come from the same scores). `dataset` (default: the recommender's) must have its catalog.
    """
    from data.split import STAGES, leave_last_out

    if stage not in STAGES:
        raise ModelError(f"unknown stage '{stage}'; choose one of {', '.join(STAGES)}")
    if max_users is not None and (isinstance(max_users, bool) or max_users < 1):
        raise ModelError(f"max_users must be a positive whole number, got {max_users!r}")
    if dataset is not None and dataset is not recommender.dataset:
        if list(dataset.item_ids) != list(recommender.item_ids):
            raise ModelError(f"dataset {dataset.meta.source} has another catalog than the model "
                             f"({len(dataset.item_ids)} vs {len(recommender.item_ids)} items); retrain on it")
        recommender = recommender.serving(dataset)
    dataset = recommender.dataset
    min_history = int(recommender.metadata.get("train", {}).get("min_history", 3))
    started = time.perf_counter()
    split = leave_last_out(dataset, min_history=min_history)
    targets = split.test if stage == "test" else split.valid
    if targets.empty:
        raise ModelError(f"no user of {dataset.meta.source} has {min_history} distinct items: nothing to evaluate")
    window = {"since": _moment(since, "since"), "until": _moment(until, "until")}
    if window["since"] is not None:
        targets = targets[targets["timestamp"] >= window["since"]]
    if window["until"] is not None:
        targets = targets[targets["timestamp"] < window["until"]]
    if targets.empty:
        raise ModelError(f"no {stage} moment of {dataset.meta.source} falls in the window "
                         f"[{since or 'start'}, {until or 'end'}): nothing to evaluate")
    if max_users is not None and max_users < len(targets):
        keep = np.random.default_rng(SAMPLE_SEED).choice(len(targets), max_users, replace=False)
        targets = targets.iloc[np.sort(keep)]

    text_embeddings, text_source = untuned_text_embeddings(recommender)
    scorers = {
        "model": model_scorer(recommender, with_behaviour=True),
        "model without behaviour": model_scorer(recommender, with_behaviour=False),
        **baseline_scorers(recommender, split.train, text_embeddings),
    }
    ranked = rank_scorers(scorers, recommender, targets, modes=(True, False), progress=progress)
    primary = ranked[exclude_history]
    return {
        "summary": {name: {key: metrics[key] for key in SUMMARY_METRICS} for name, metrics in primary.items()},
        "models": primary,
        "modes": {MODES[mode]: ranked[mode] for mode in (True, False)},
        "exclude_history": exclude_history,
        "stage": stage,
        "window": {name: None if moment is None else moment.isoformat() for name, moment in window.items()},
        "users": primary["model"]["users"],
        "ks": list(KS),
        "dataset": {**_dataset_summary(dataset), "min_history": min_history, "evaluated_users": len(split.test)},
        "checkpoint_id": recommender.checkpoint_id,
        "baselines": {"item-kNN half-life (units)": scorers["item-kNN"].half_life, "item-kNN from": "training events",
                      "popularity from": "every user's events before each moment", "text zero-shot from": text_source},
        "seconds": {"total": time.perf_counter() - started, **ranked["seconds"]},
    }


def _moment(value, name: str) -> pd.Timestamp | None:
    """A window bound as given (a time or its text), as a UTC timestamp; naive times are UTC."""
    if value is None:
        return None
    try:
        moment = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise ModelError(f"{name} {value!r} is not a time (e.g. 2024-03-01 or 2024-03-01T12:00:00Z)") from exc
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")


def _dataset_summary(dataset) -> dict:
    events = dataset.events
    return {"fingerprint": dataset.meta.fingerprint, "source": dataset.meta.source, "format": dataset.meta.format,
            "synthetic_clock": dataset.meta.synthetic_clock, "users": int(events["user_id"].nunique()),
            "items": len(dataset.items), "events": len(events)}
