"""Offline evaluation: full-catalog ranking, leave-last-out, history excluded; the model beside its baselines."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from model.sequences import UserHistory, serving_tensors

KS = (5, 10, 20)


def ranks_of_targets(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray] | None) -> np.ndarray:
    """(B, N) scores, (B,) target positions -> (B,) 1-based ranks of the targets among non-excluded items.

    Ties count against the target (an item scoring the same as the target ranks above it), so a constant
    scorer earns nothing.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets]
    if exclude is not None:
        for b, seen in enumerate(exclude):
            seen = np.asarray(seen, dtype=np.int64)
            seen = seen[seen != targets[b]]
            scores[b, seen] = -np.inf
    scores[rows, targets] = -np.inf
    return 1 + (scores >= target_scores[:, None]).sum(axis=1)


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
        net = recommender.net
        tensors = serving_tensors(histories, moments, net.config.max_history)
        with torch.no_grad():
            states = recommender._user_state(tensors)  # (B, D)
            states = states * (tensors["lengths"] > 0).unsqueeze(-1)
            scores = states @ (recommender.item_text_vectors + recommender.item_id_vectors).T
            scores = scores + recommender.item_bias_values  # (B, N)
        scores = scores.numpy().astype(np.float64)
        if with_behaviour:
            for b, (user_id, moment) in enumerate(zip(user_ids, moments)):
                features = recommender.features.user_features(user_id, at=pd.Timestamp(moment, tz="UTC"))
                with torch.no_grad():
                    scores[b] += recommender.net.behaviour_score(torch.as_tensor(features)).numpy()
        return scores

    return score


def evaluate_scorer(scorer: Callable, recommender, targets: pd.DataFrame, *, batch_size: int = 256,
                    exclude_history: bool = True, ks: Sequence[int] = KS, progress: bool = False) -> dict:
    """Rank the whole catalog for each (user_id, item_id, timestamp) target at its moment; return metrics."""
    from tqdm.auto import tqdm

    from model.serving import _before

    position = recommender.dataset.item_position
    targets = targets[targets["item_id"].isin(position) & targets["user_id"].isin(recommender.histories)]
    ranks, tops = [], []
    steps = range(0, len(targets), batch_size)
    for start in tqdm(steps, desc="ranking", unit="batch", disable=not progress, leave=False):
        chunk = targets.iloc[start : start + batch_size]
        moments = [int(pd.Timestamp(t).value) for t in chunk["timestamp"]]
        histories = [_before(recommender.histories[u], m) for u, m in zip(chunk["user_id"], moments)]
        scores = scorer(list(chunk["user_id"]), histories, moments)
        target_index = np.array([position[i] for i in chunk["item_id"]])
        exclude = [h.item_index for h in histories] if exclude_history else None
        ranks.append(ranks_of_targets(scores, target_index, exclude))
        masked = scores.copy()
        if exclude_history:
            for b, h in enumerate(histories):
                masked[b, h.item_index] = -np.inf
        tops.extend(np.argpartition(-masked, 10, axis=1)[:, :10])
    all_ranks = np.concatenate(ranks) if ranks else np.zeros(0)
    metrics = metrics_from_ranks(all_ranks, ks)
    metrics["coverage@10"] = coverage(tops, len(position))
    metrics["users"] = len(all_ranks)
    return metrics
