"""Two models side by side on the same data: one split's metrics, and how their top lists differ across users."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from model.errors import ModelError
from model.evaluate import SAMPLE_SEED, model_scorer, rank_scorers
from model.retrieval import top_k

AGREEMENT_K = 10


def on_same_data(a, b):
    """`b` served over `a`'s data (the same events, histories and features), or a ModelError if their catalogs
    differ: rankings over two catalogs cannot be compared item for item."""
    if list(a.item_ids) != list(b.item_ids):
        ours, theirs = set(a.item_ids), set(b.item_ids)
        raise ModelError(f"the two models rank different catalogs ({len(ours)} and {len(theirs)} items, "
                         f"{len(ours & theirs)} shared): compare models of one catalog, e.g. two checkpoints of a "
                         f"lineage or two scenarios over the same items")
    if b.dataset is a.dataset:
        return b
    return b.serving(a.dataset)


def compare_metrics(a, b, *, max_users: int | None = 500, stage: str = "test") -> dict:
    """Both models on the same leave-last-out targets (a fixed sample of `max_users`), full-catalog ranking.

    Returns {"A": metrics, "B": metrics, "users": n, "stage": stage}; metrics as model.evaluate reports them.
    """
    from data.split import leave_last_out

    b = on_same_data(a, b)
    min_history = int(a.metadata.get("train", {}).get("min_history", 3))
    split = leave_last_out(a.dataset, min_history=min_history)
    targets = split.test if stage == "test" else split.valid
    if targets.empty:
        raise ModelError(f"no user has {min_history} distinct items: nothing to evaluate")
    if max_users is not None and max_users < len(targets):
        keep = np.random.default_rng(SAMPLE_SEED).choice(len(targets), max_users, replace=False)
        targets = targets.iloc[np.sort(keep)]
    ranked = rank_scorers({"A": model_scorer(a), "B": model_scorer(b)}, a, targets)[True]
    return {"A": ranked["A"], "B": ranked["B"], "users": ranked["A"]["users"], "stage": stage}


def full_ranks(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(N,) scores -> (N,) 1-based rank of every item under the one top-k rule; seen items get 0 (not ranked)."""
    order = top_k(scores, len(scores), exclude=seen)
    ranks = np.zeros(len(scores), dtype=np.int64)
    ranks[order] = np.arange(1, len(order) + 1)
    return ranks


def list_agreement(a, b, user_ids, *, k: int = AGREEMENT_K) -> pd.DataFrame:
    """Per user, how alike the two models' top-k lists are, least alike first.

    Columns: user_id, overlap (share of A's top k also in B's), changed (items of A's top k not in B's), spearman
    (rank correlation of the items in either top k, by their ranks in each model's whole ranking; NaN if undefined).
    """
    b = on_same_data(a, b)
    rows = []
    for user_id in user_ids:
        context_a, context_b = a.context(user_id), b.context(user_id)
        seen = context_a.history.item_index
        ranks_a = full_ranks(sum(a.score_parts(context_a).values()), seen)
        ranks_b = full_ranks(sum(b.score_parts(context_b).values()), seen)
        top_a = set(np.flatnonzero((ranks_a > 0) & (ranks_a <= k)))
        top_b = set(np.flatnonzero((ranks_b > 0) & (ranks_b <= k)))
        either = sorted(top_a | top_b)
        shown = max(len(top_a), 1)
        correlation = spearmanr(ranks_a[either], ranks_b[either]).statistic if len(either) > 1 else np.nan
        rows.append({"user_id": str(user_id), "overlap": len(top_a & top_b) / shown, "changed": len(top_a - top_b),
                     "spearman": float(correlation)})
    frame = pd.DataFrame(rows, columns=["user_id", "overlap", "changed", "spearman"])
    return frame.sort_values(["overlap", "spearman"], na_position="first", kind="stable").reset_index(drop=True)


def sample_users(recommender, n: int, seed: int = SAMPLE_SEED) -> list[str]:
    """A fixed sample of up to `n` users with a history, the same every time for the same data."""
    users = [u for u in recommender.user_ids if len(recommender.histories[u])]
    if len(users) <= n:
        return [str(u) for u in users]
    keep = np.sort(np.random.default_rng(seed).choice(len(users), n, replace=False))
    return [str(users[i]) for i in keep]
