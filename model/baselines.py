"""Baselines the recommender is measured against: popularity, item-kNN co-occurrence, untuned text similarity.

Every baseline is a scorer with the call shape of `model.evaluate.model_scorer(...)`:
`score(user_ids, histories, moments) -> (B, N)` over the whole catalog, where `histories` are already cut at
their `moments` (ns since the epoch). None of them is trained by gradient: they are what a model has to beat.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from model.errors import ModelError
from model.sequences import UserHistory

# Item-kNN: a history unit `half_life` units back counts half as much as the latest one. Units, not days,
# so it reads the same on a synthetic clock. Validation NDCG@10 by half-life 1 / 2 / 5 / 10 / none: Scientific
# .075 / .079 / .081 / .081 / .079, demo shop .033 / .040 / .050 / .050 / .052, MovieLens .100 / .102 / .095 /
# .088 / .068; 5 is the best or near it everywhere but MovieLens.
KNN_HALF_LIFE_UNITS = 5.0
# Exact ties (items never co-occurring with the history: most of the catalog) are broken by training
# popularity at this scale, far below any co-occurrence difference, so the order is deterministic.
TIE_BREAK_SCALE = 1e-9


def catalog_positions(item_ids: pd.Series, item_position: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """(n,) item ids -> (catalog positions of the known ones, mask of which were known)."""
    positions = item_ids.map(item_position)
    known = positions.notna().to_numpy()
    return positions[known].to_numpy(dtype=np.int64), known


def tie_break_order(counts: np.ndarray) -> np.ndarray:
    """(N,) counts -> (N,) distinct values in [0, 1): higher for more counts, then for the lower catalog position."""
    n = len(counts)
    order = np.lexsort((np.arange(n), -counts))  # best first
    value = np.empty(n, dtype=np.float64)
    value[order] = np.arange(n - 1, -1, -1) / max(n, 1)
    return value


class Popularity:
    """Events on each item from every user strictly before the moment (point in time); ties by catalog order."""

    name = "popularity"

    def __init__(self, events: pd.DataFrame, item_position: dict[str, int]) -> None:
        self.n_items = len(item_position)
        items, known = catalog_positions(events["item_id"], item_position)
        times = events["timestamp"].dt.as_unit("ns").astype("int64").to_numpy()[known]
        # Keys item * (n_moments + 1) + rank(time), sorted: "events of item i before t" for every item at once
        # is one searchsorted of i * (n_moments + 1) + rank(t) (the same trick as data.features).
        self._moments = np.unique(times)  # (n_moments,)
        self._key_base = np.int64(len(self._moments) + 1)
        self._keys = np.sort(items * self._key_base + np.searchsorted(self._moments, times))
        self._item_origin = np.arange(self.n_items, dtype=np.int64) * self._key_base  # (N,)
        self._first_key = np.searchsorted(self._keys, self._item_origin)  # (N,)
        # Counts are whole numbers, so a fraction below 1 orders ties without reordering anything else.
        self._tie_break = tie_break_order(np.zeros(self.n_items))

    def counts(self, moments: Sequence[int]) -> np.ndarray:
        """(B,) moments in ns -> (B, N) events per item strictly before each moment."""
        rank_now = np.searchsorted(self._moments, np.asarray(moments, dtype=np.int64), side="left")  # (B,)
        queries = self._item_origin[None, :] + rank_now[:, None]  # (B, N)
        return np.searchsorted(self._keys, queries) - self._first_key[None, :]

    def __call__(self, user_ids: Sequence[str], histories: Sequence[UserHistory], moments: Sequence[int]) -> np.ndarray:
        return self.counts(moments) + self._tie_break[None, :]  # (B, N)


class ItemKNN:
    """Item-item cosine co-occurrence from training events; a user scores the sum over their history items.

    sim(i, j) = users(i and j) / sqrt(users(i) * users(j)), diagonal zero; score(j) = Σ_h w_h sim(h, j) with
    w_h = 0.5 ** (units back / half_life), so the latest item counts most.
    """

    name = "item-kNN"

    def __init__(self, train_events: pd.DataFrame, item_position: dict[str, int],
                 half_life: float = KNN_HALF_LIFE_UNITS) -> None:
        if half_life <= 0:
            raise ModelError(f"item-kNN half_life {half_life} must be positive")
        self.half_life = float(half_life)
        self.n_items = len(item_position)
        items, known = catalog_positions(train_events["item_id"], item_position)
        users = pd.factorize(train_events["user_id"].to_numpy()[known])[0]
        n_users = int(users.max()) + 1 if len(users) else 0
        touched = sparse.csr_matrix((np.ones(len(items)), (users, items)), shape=(n_users, self.n_items))
        touched.sum_duplicates()
        touched.data[:] = 1.0  # repeated events on one (user, item) are one co-occurrence
        together = (touched.T @ touched).tocsr()  # (N, N) users who touched both
        users_per_item = together.diagonal()  # (N,)
        norm = np.sqrt(np.maximum(users_per_item, 1.0))
        together = (together - sparse.diags(users_per_item)).tocsr()  # an item is no neighbour of itself
        together.eliminate_zeros()
        scale = sparse.diags(1.0 / norm)
        self.similarity = (scale @ together @ scale).tocsr()  # (N, N) cosine, sparse
        self._tie_break = TIE_BREAK_SCALE * tie_break_order(users_per_item)

    def history_weights(self, histories: Sequence[UserHistory]) -> sparse.csr_matrix:
        """(B, N) recency weights of each user's history items."""
        rows, cols, values = [], [], []
        for b, history in enumerate(histories):
            back = np.arange(len(history) - 1, -1, -1, dtype=np.float64)  # 0 = the latest unit
            rows.append(np.full(len(history), b))
            cols.append(history.item_index)
            values.append(0.5 ** (back / self.half_life))
        if not rows:
            return sparse.csr_matrix((0, self.n_items))
        return sparse.csr_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                 shape=(len(histories), self.n_items))

    def __call__(self, user_ids: Sequence[str], histories: Sequence[UserHistory], moments: Sequence[int]) -> np.ndarray:
        scores = (self.history_weights(histories) @ self.similarity).toarray()  # (B, N)
        return scores + self._tie_break[None, :]


class TextSimilarity:
    """Zero-shot: cosine of each item's text embedding with the mean of the history's, from an untuned encoder."""

    name = "text zero-shot"

    def __init__(self, text_embeddings: torch.Tensor | np.ndarray) -> None:
        if torch.is_tensor(text_embeddings):  # the recommender keeps them on its device, maybe a GPU
            text_embeddings = text_embeddings.detach().float().cpu().numpy()
        embeddings = np.asarray(text_embeddings, dtype=np.float32)  # (N, H)
        if embeddings.ndim != 2:
            raise ModelError(f"text embeddings must be (items, dim), got shape {embeddings.shape}")
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        self.embeddings = embeddings / np.maximum(norms, 1e-12)  # (N, H) unit rows
        self.n_items = len(embeddings)

    def __call__(self, user_ids: Sequence[str], histories: Sequence[UserHistory], moments: Sequence[int]) -> np.ndarray:
        profiles = np.zeros((len(histories), self.embeddings.shape[1]), dtype=np.float32)  # (B, H)
        for b, history in enumerate(histories):
            if len(history):
                profiles[b] = self.embeddings[history.item_index].mean(axis=0)
        # The profile's length does not change a user's ranking; normalising makes scores cosines.
        profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
        return (profiles @ self.embeddings.T).astype(np.float64)  # (B, N)
