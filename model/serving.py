"""The `Recommender`: one interface over the trained network for the UI, evaluation and the explainers."""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from data.features import FEATURES, FeatureStore, distinct_sorted
from data.schema import Dataset
from data.user_index import UserIndex
from model.encoder import TextEncoder
from model.errors import ModelError
from model.quantize import Int8Transformer
from model.recommender import RecommenderNet
from model.retrieval import ItemGroups, RetrievalConfig, VectorIndex, spread_sample, top_k
from model.sequences import HistoryStore, UserHistory, empty_history, history_from_events, serving_tensors
from model.whatif import checked_overrides, overrides_note

PARTS = ("text", "collaborative", "behaviour")
BEHAVIOUR_BLOCK_ROWS = 4_096  # rows of behaviour features through the head at a time (score_parts)


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    rank: int  # 1-based
    score: float
    title: str
    category: str | None
    brand: str | None
    price: float | None
    parts: dict[str, float] = field(default_factory=dict)  # the additive parts of the score (PARTS)


class Recommendations(list):
    """A ranked list that also says how it was made: which inputs were used and what had to be assumed."""

    def __init__(self, items, *, user_id=None, query=None, mode: str, notes: tuple[str, ...] = (),
                 query_truncated: bool = False):
        super().__init__(items)
        self.user_id = user_id
        self.query = query
        self.mode = mode  # "user", "query", "user+query", "popularity"
        self.notes = notes
        self.query_truncated = query_truncated


@dataclass(frozen=True)
class Context:
    """Everything the score of any item depends on apart from the item: who, what was asked, and when."""

    vector: torch.Tensor  # (D,) user state + query vector; zeros when neither is known
    user_id: str | None
    history: UserHistory
    moment_ns: int  # the moment scored: features use only events before it
    query: str | None
    query_truncated: bool
    mode: str
    notes: tuple[str, ...]
    feature_overrides: tuple[tuple[str, float], ...] = ()  # (feature, value) set by hand for every item (what-if)
    query_vector: torch.Tensor | None = None  # (D,) the query's part of `vector` before scaling, as it was encoded


class Recommender:
    """Ranks the whole catalog for a user, a query or both, and scores chosen items, part by part."""

    def __init__(self, net: RecommenderNet, dataset: Dataset, text_embeddings: torch.Tensor, *,
                 checkpoint_id: str = "untrained", metadata: dict | None = None, device: str | None = None,
                 retrieval: RetrievalConfig | None = None,
                 text_encoder: TextEncoder | Callable[[], TextEncoder] | None = None) -> None:
        # Where the net lives (default: where it already is); every tensor it reads is put there too.
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.net = net.to(self.device).eval()
        # The encoder of the paths without gradients (queries, the catalog): the net's own, or its int8 twin
        # (model.quantize), which may be given as a function that derives it on first use (a user's ranking never
        # encodes anything: a page need not wait for it). Explanations by gradient always read self.net.encoder.
        self._text_encoder = text_encoder if text_encoder is not None else self.net.encoder
        self._text_encoder_lock = threading.Lock()
        self.dataset = dataset
        self.items = dataset.items
        self.text_embeddings = text_embeddings.to(self.device)  # (N, net.item_text_width) item text embeddings
        self.checkpoint_id = checkpoint_id
        self.metadata = metadata or {}
        self.features = FeatureStore(dataset)
        self.retrieval = retrieval or RetrievalConfig()
        self._histories = None
        self._user_index: UserIndex | None = None
        self._candidate_index: VectorIndex | None = None
        self._item_groups: tuple[ItemGroups, ItemGroups] | None = None  # by category, by brand (two-stage)
        self._item_rows: tuple[np.ndarray, ...] | None = None  # the catalog's shown columns as arrays (recommend)
        self._dot_table: tuple[torch.Tensor, float] | None = None  # whole-catalog ranking (_whole_catalog_candidates)
        self._lock = threading.Lock()
        events = dataset.events
        self._last_event_ns = int(events["timestamp"].max().value) if len(events) else 0
        self.refresh_item_vectors()

    # ---- catalog and users -------------------------------------------------------------------

    @property
    def config(self):
        return self.net.config

    @property
    def item_ids(self) -> np.ndarray:
        return self.dataset.item_ids

    @property
    def user_ids(self) -> np.ndarray:
        return self.dataset.user_ids

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in FEATURES)

    @property
    def user_index(self) -> UserIndex:
        """The users for a picker (search by id, recently active, random), built once per dataset."""
        if self._user_index is None:
            self._user_index = UserIndex.from_events(self.dataset.events)
        return self._user_index

    @property
    def histories(self) -> HistoryStore:
        """{user id: UserHistory} for every user of the data, each built when first asked for."""
        if self._histories is None:
            self._histories = HistoryStore(self.user_ids, lambda user_id: self.features.user_trail(user_id, None))
        return self._histories

    def refresh_item_vectors(self) -> None:
        """Cache the item vectors (text and collaborative parts) for whole-catalog ranking."""
        with torch.no_grad():
            index = torch.arange(len(self.item_ids), device=self.device)
            text, ident = self.net.item_parts(self.text_embeddings, index)
            self.item_text_vectors = text.float()  # (N, D)
            self.item_id_vectors = ident.float()  # (N, D)
            self.item_bias_values = self.net.item_biases(index).float()  # (N,)
        # Built again from these vectors when a two-stage ranking, or a whole-catalog one, needs them.
        self._candidate_index = None
        self._item_groups = None
        self._dot_table = None

    def item_positions(self, item_ids) -> np.ndarray:
        positions = [self.dataset.item_position.get(str(i)) for i in item_ids]
        unknown = [str(i) for i, p in zip(item_ids, positions) if p is None]
        if unknown:
            raise ModelError(f"unknown item id(s): {', '.join(unknown[:5])}" + _nearest(unknown[0], self.item_ids))
        return np.asarray(positions, dtype=np.int64)

    def check_user(self, user_id: str) -> None:
        if user_id not in self.histories:
            raise ModelError(f"unknown user '{user_id}'" + _nearest(str(user_id), self.user_ids))

    def history(self, user_id: str) -> UserHistory:
        self.check_user(user_id)
        return self.histories[user_id]

    # ---- context: user state + query -----------------------------------------------------------

    def context(self, user_id: str | None = None, query: str | None = None, *,
                history: pd.DataFrame | None = None, at: pd.Timestamp | None = None,
                feature_overrides: dict[str, float] | None = None, exact: bool = False) -> Context:
        """The context vector for a user (optionally with an edited `history`), a query, or both.

        `feature_overrides` ({feature name: value}, see model.whatif) sets behaviour features to one value for
        every item this context scores; values outside a feature's observed range are refused. `exact` encodes
        the query with the float encoder whatever encoder serves the rankings: what explanations by gradient
        read, so that their parts add up to the score they explain.
        """
        notes: list[str] = []
        overrides = checked_overrides(self, feature_overrides)
        if query is not None and not str(query).strip():
            raise ModelError("the query is empty: type some words, or leave it out to rank for the user")
        if user_id is None and query is None and history is None:
            raise ModelError("give a user, a query, or both")
        if user_id is not None and history is None:
            self.check_user(user_id)
        if at is not None:  # point in time: rebuild from the events before `at`, so nothing later leaks in
            cutoff = pd.Timestamp(at)
            events = history if history is not None else (
                self.dataset.user_events(user_id) if user_id is not None else None)
            history = None if events is None else events[events["timestamp"] < cutoff]
        if history is not None:
            user_history = history_from_events(user_id or "what-if", history, self.dataset.item_position)
        elif user_id is not None:
            user_history = self.history(user_id)
        else:
            user_history = empty_history("anonymous")
        moment = self._moment(at, user_history)
        vector = torch.zeros(self.config.dim, device=self.device)
        if len(user_history):
            tensors = {name: t.to(self.device)
                       for name, t in serving_tensors([user_history], [moment], self.config.max_history).items()}
            with torch.no_grad():
                vector = vector + self._user_state(tensors)[0]
        elif user_id is not None or history is not None:
            notes.append("this user has no history yet: ranking by " + ("the query" if query else "popularity"))
        truncated, query_vector = False, None
        if query is not None:
            query_vector, truncated = self._query_vector(query, self.net.encoder if exact else self.text_encoder)
            vector = vector + query_vector
            if truncated:
                notes.append(f"the query was cut to the encoder's limit of {self.config.max_query_tokens} tokens")
        mode = ("user+query" if query else "user") if len(user_history) else ("query" if query else "popularity")
        with torch.no_grad():
            vector = self.net.scaled_context(vector)
        if overrides:
            notes.append(overrides_note(overrides))
        return Context(vector, user_id, user_history, moment, query, truncated, mode, tuple(notes), overrides,
                       query_vector)

    def _user_state(self, tensors: dict) -> torch.Tensor:
        items = tensors["items"]
        rows = items.clamp(min=0)
        # The history's rows first, then the sum: adding the two (N, D) tables would cost the whole catalog.
        vectors = self.item_text_vectors[rows] + self.item_id_vectors[rows]  # (B, T, D)
        states = self.net.user_states(vectors, tensors["event_codes"], tensors["gap_codes"], tensors["now_codes"])
        return self.net.last_state(states, tensors["lengths"])  # (B, D)

    @property
    def text_encoder(self) -> TextEncoder:
        if not isinstance(self._text_encoder, TextEncoder):
            with self._text_encoder_lock:  # one derivation, however many requests ask at once
                if not isinstance(self._text_encoder, TextEncoder):
                    self._text_encoder = self._text_encoder()
        return self._text_encoder

    @property
    def quantization(self) -> str:
        """How queries and the catalog are encoded here: "int8" or "none" (the float encoder). An int8 encoder
        not derived yet counts as int8: it is what the next query will be encoded with."""
        if not isinstance(self._text_encoder, TextEncoder):
            return "int8"
        return "int8" if isinstance(self._text_encoder.transformer, Int8Transformer) else "none"

    def encode_catalog(self, progress: bool = False) -> torch.Tensor:
        """(N, net.item_text_width) the catalog's text embeddings encoded again by the serving encoder, as the
        checkpoint's cached ones were by the float encoder (a catalog whose texts changed, or a check of int8)."""
        from data.schema import item_texts

        return self.text_encoder.embed(item_texts(self.dataset), self.config.max_item_tokens, progress=progress,
                                       lexical=self.config.lexical_text)

    def reencoded(self, progress: bool = False) -> Recommender:
        """The same model serving the catalog as `encode_catalog` encodes it now (for the int8 encoder: the whole
        path in int8, which `python -m model evaluate --quantize int8` measures)."""
        return self.serving(self.dataset, self.encode_catalog(progress))

    def serving(self, dataset: Dataset, text_embeddings: torch.Tensor | None = None) -> Recommender:
        """The same model (network, settings, serving encoder) over `dataset`, another set of events for the same
        catalog, and `text_embeddings` if given (default: this one's)."""
        return Recommender(self.net, dataset, self.text_embeddings if text_embeddings is None else text_embeddings,
                           checkpoint_id=self.checkpoint_id, metadata=self.metadata, device=str(self.device),
                           retrieval=self.retrieval, text_encoder=self._text_encoder)

    def _query_vector(self, query: str, encoder: TextEncoder) -> tuple[torch.Tensor, bool]:
        batch = encoder.tokenize([query], self.config.max_query_tokens)
        with torch.no_grad():
            embedding = encoder(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            return self.net.query_vector(embedding)[0].float(), bool(batch["truncated"][0])

    def serving_moment(self, user_id: str | None = None) -> int:
        """The moment (ns) a context for this user, or for no user, is scored at: just after the data's last event.
        Ages shown beside a ranking count back from it (model.sequences.age_days)."""
        history = self.histories.get(user_id) if user_id is not None else None
        return self._moment(None, history if history is not None else empty_history("anonymous"))

    def _moment(self, at, history: UserHistory) -> int:
        if at is not None:
            return int(pd.Timestamp(at).value)
        return max(self._last_event_ns, history.end) + 1

    # ---- scores ------------------------------------------------------------------------------

    def behaviour_features(self, context: Context, item_index: np.ndarray | None = None,
                           history: pd.DataFrame | None = None, overrides: bool = True) -> np.ndarray:
        """(N or len(item_index), F) point-in-time features at the context's moment, overrides applied unless
        `overrides` is False (the data's own values, as a what-if explanation compares against)."""
        if context.user_id is None and history is None:
            features = self.features.user_features(None, at=pd.Timestamp(context.moment_ns, tz="UTC"),
                                                   item_index=item_index, history=empty_events())
        else:
            features = self.features.user_features(context.user_id, at=pd.Timestamp(context.moment_ns, tz="UTC"),
                                                   item_index=item_index, history=history)
        for name, value in context.feature_overrides if overrides else ():
            features[:, self.feature_names.index(name)] = value
        return features

    def score_parts(self, context: Context, item_index: np.ndarray | None = None,
                    features: np.ndarray | None = None, history: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
        """The additive parts of the score for these items (default: the whole catalog), each (n,)."""
        index = np.arange(len(self.item_ids)) if item_index is None else np.asarray(item_index, dtype=np.int64)
        if features is None:
            features = self.behaviour_features(context, None if item_index is None else index, history=history)
        if item_index is None:  # the whole catalog: the tables themselves, not a copy of every row
            text, ident, bias = self.item_text_vectors, self.item_id_vectors, self.item_bias_values
        else:
            chosen = torch.as_tensor(index, device=self.device)
            text, ident, bias = (table.index_select(0, chosen)
                                 for table in (self.item_text_vectors, self.item_id_vectors, self.item_bias_values))
        features = torch.as_tensor(features, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            c = context.vector
            parts = {"text": text @ c, "collaborative": ident @ c + bias, "behaviour": self._behaviour_part(features)}
        return {name: value.cpu().numpy().astype(np.float64) for name, value in parts.items()}

    def _behaviour_part(self, features: torch.Tensor) -> torch.Tensor:
        """(n, F) float32 features -> (n,) the behaviour part of the score."""
        with torch.no_grad():
            # In blocks of rows, so that the head's hidden layer stays in cache: at 1M rows it is 640 MB whole.
            # One thread, 1M rows: 0.96 s whole, 0.6 s in blocks of 16,384 rows, 0.1 s in blocks of 4,096.
            return torch.cat([self.net.behaviour_score(block) for block in features.split(BEHAVIOUR_BLOCK_ROWS)])

    def score(self, user_id: str | None = None, query: str | None = None, item_ids=(), *,
              history: pd.DataFrame | None = None, feature_overrides: dict[str, float] | None = None) -> np.ndarray:
        """Scores of the given items, (len(item_ids),) in the order given."""
        if len(item_ids) == 0:
            raise ModelError("no item ids to score")
        positions = self.item_positions(list(item_ids))
        context = self.context(user_id, query, history=history, feature_overrides=feature_overrides)
        return sum(self.score_parts(context, positions, history=history).values())

    def recommend(self, user_id: str | None = None, query: str | None = None, k: int = 10,
                  exclude_seen: bool = True, *, history: pd.DataFrame | None = None,
                  feature_overrides: dict[str, float] | None = None, exact: bool = False) -> Recommendations:
        """The top-k of the whole catalog, best first, with the score's parts for each item.

        Past `retrieval.two_stage_from` items (RetrievalConfig) the catalog is ranked in two stages: a FAISS index
        proposes the items with the largest dot-product part, and only those are scored exactly, behaviour features
        included. `exact` scores the whole catalog whatever its size (the reference the two stages are measured by).
        """
        n_items = len(self.item_ids)
        if not isinstance(k, int | np.integer) or k <= 0:
            raise ModelError(f"k must be a positive whole number, got {k!r}")
        if k > n_items:
            raise ModelError(f"k {k} is larger than the catalog ({n_items} items)")
        context = self.context(user_id, query, history=history, feature_overrides=feature_overrides)
        seen = context.history.item_index if exclude_seen else None
        candidates = None if exact else self.candidates(context, k, seen, history)
        if candidates is None:  # the whole catalog, its top k found by one product per item (see the method)
            candidates = self._whole_catalog_candidates(context, k, seen, history)
        # The candidates, in catalog order, so that top_k's ties still go to the lower catalog position.
        parts = self.score_parts(context, candidates, history=history)
        scores = sum(parts.values())
        rows = top_k(scores, k)
        best = candidates[rows]
        result = [self._recommendation(int(position), rank, float(scores[row]),
                                       {name: float(value[row]) for name, value in parts.items()})
                  for rank, (position, row) in enumerate(zip(best, rows), start=1)]
        notes = context.notes
        if len(best) < k:
            notes = (*notes, f"only {len(best)} items are left once the user's own items are excluded")
        return Recommendations(result, user_id=user_id, query=query, mode=context.mode, notes=notes,
                               query_truncated=context.query_truncated)

    # ---- two-stage ranking -------------------------------------------------------------------

    @property
    def two_stage(self) -> bool:
        """Whether `recommend` ranks this catalog in two stages (RetrievalConfig.two_stage_from)."""
        return len(self.item_ids) >= self.retrieval.two_stage_from

    def candidate_index(self) -> VectorIndex:
        """The FAISS index over [item vector, item bias], built once per set of item vectors.

        Searched with [context, 1], its inner product is the text + collaborative part of the score exactly:
        what it leaves out is only the behaviour part, which the second stage adds.
        """
        with self._lock:
            if self._candidate_index is None:
                self._candidate_index = VectorIndex(self._search_vectors(), self.retrieval.index, self.retrieval)
                # The item-only behaviour features at the serving moment, which every candidate set reads rows of.
                self.features.prepare_item_columns()
            return self._candidate_index

    def item_groups(self) -> tuple[ItemGroups, ItemGroups]:
        """The catalog by category and by brand, with each group's [item vector, item bias] side by side (two-stage
        ranking's related items), built once per set of item vectors."""
        with self._lock:
            if self._item_groups is None:
                vectors = self._search_vectors()
                self._item_groups = (ItemGroups(self.items["category"], vectors),
                                     ItemGroups(self.items["brand"], vectors))
            return self._item_groups

    def _whole_catalog_candidates(self, context: Context, k: int, exclude: np.ndarray | None,
                                  history: pd.DataFrame | None) -> np.ndarray:
        """Catalog positions (ascending) that hold the whole catalog's top k, `exclude` left out: every item is
        scored, with its text and collaborative parts as one product with [context, 1] (one pass over a table of
        [item vector, item bias] instead of two over the text and ID tables), and the items within the float32
        rounding bound of the k-th best are kept, so the exact top k is among them whatever the rounding; the caller
        scores them part by part. A k that asks for most of the catalog (the What-if page ranks everything) takes
        every item left."""
        everything = np.arange(len(self.item_ids))
        n_exclude = 0 if exclude is None else len(exclude)
        if 2 * (k + n_exclude) > len(everything):
            return everything[~np.isin(everything, exclude)] if n_exclude else everything
        table, largest_norm = self._whole_catalog_table()
        c = context.vector.float()
        features = torch.as_tensor(self.behaviour_features(context, None, history=history), dtype=torch.float32,
                                   device=self.device)
        with torch.no_grad():
            dot = table @ torch.cat([c, torch.ones(1, device=self.device)])
            scores = dot.cpu().numpy().astype(np.float64) + self._behaviour_part(features).cpu().numpy()
        if n_exclude:
            scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        # |fl(x . y) - x . y| <= n u sum |x_j y_j| / (1 - n u) for any order of summation (u = 2^-24); the table's
        # rows (text + ID vector, rounded once) and the parts' products each err by no more, so 4 n u |row| |[c, 1]|
        # bounds the difference between this score and the parts' sum twice over.
        bound = 4 * (table.shape[1] + 2) * 2.0 ** -24 * largest_norm * float(torch.linalg.vector_norm(c).item() + 1)
        return np.flatnonzero(scores >= kth - 2 * bound)

    def _whole_catalog_table(self) -> tuple[torch.Tensor, float]:
        """`_dot_vectors`, kept, and the largest sum of an item's text, ID and combined row norms, built once per set
        of item vectors."""
        with self._lock:
            if self._dot_table is None:
                table = self._dot_vectors()
                with torch.no_grad():
                    norms = (torch.linalg.vector_norm(self.item_text_vectors, dim=1)
                             + torch.linalg.vector_norm(self.item_id_vectors, dim=1)
                             + torch.linalg.vector_norm(table, dim=1))
                self._dot_table = (table, float(norms.max().item()) if len(norms) else 0.0)
            return self._dot_table

    def _search_vectors(self) -> np.ndarray:
        return self._dot_vectors().cpu().numpy()

    def _dot_vectors(self) -> torch.Tensor:
        """(N, D + 1) float32: [item vector, item bias], whose product with [context, 1] is the dot-product part."""
        with torch.no_grad():
            return torch.cat([self.item_text_vectors + self.item_id_vectors, self.item_bias_values[:, None]], dim=1)

    def candidates(self, context: Context, k: int, exclude: np.ndarray | None = None,
                   history: pd.DataFrame | None = None) -> np.ndarray | None:
        """Catalog positions (ascending) the second stage scores for this context, `exclude` left out; None when
        the whole catalog is to be scored: a small catalog, a k too close to the catalog's size, or a context with
        neither history nor query (one ranking for every anonymous visitor, which the page caches). `history` is the
        edited history the context was made from, if any (the features of the related items' sample read it)."""
        if not self.two_stage or (not len(context.history) and context.query is None):
            return None  # without history or query the score is bias + item popularity: nothing to search by
        n_items, n_exclude = len(self.item_ids), 0 if exclude is None else len(exclude)
        wanted = max(self.retrieval.candidates, k) + n_exclude  # excluded items may take places in the search
        if wanted > n_items or 2 * (k + n_exclude) > n_items:  # most of the catalog is asked for anyway
            return None
        query = torch.cat([context.vector.float(), torch.ones(1, device=self.device)]).cpu().numpy()  # (D + 1,)
        found = self.candidate_index().search(query, wanted)
        if self.retrieval.related_candidates and len(context.history):
            found = np.concatenate([found, self._related_items(context, query, history)])
        found = distinct_sorted(found)
        if n_exclude:
            found = found[~np.isin(found, exclude)]
        # An approximate index may return fewer than asked; fewer than k would shorten the list: score it whole.
        return found if len(found) >= k else None

    def _related_items(self, context: Context, query: np.ndarray, history: pd.DataFrame | None) -> np.ndarray:
        """Up to retrieval.related_candidates items sharing a category or brand with the history: where the behaviour
        features (category and brand affinity) lift an item most, often from far down the dot-product order.

        When there are more, the best by dot-product part (+ bias) plus the lift their combination of (history
        category or none, history brand or none) gets from the behaviour head: category and brand affinity, days
        since the category and the user's activity are one value per combination, so the exact behaviour part of a
        sample of each combination's items (retrieval.related_samples) estimates it. Only the choice of candidates
        rests on the estimate; every candidate is then scored exactly.
        """
        by_category, by_brand = self.item_groups()
        history_items = context.history.item_index
        categories, brands = by_category.groups_of(history_items), by_brand.groups_of(history_items)
        # An item of one of the history's categories and brands is taken once, with its category.
        brand_items = by_brand.members(brands)
        brand_only = ~np.isin(by_category.codes[brand_items], categories)
        related = np.concatenate([by_category.members(categories), brand_items[brand_only]])
        limit = self.retrieval.related_candidates
        if len(related) <= limit:
            return related
        dot = np.concatenate([by_category.inner_products(categories, query),
                              by_brand.inner_products(brands, query)[brand_only]])
        combination = (by_category.slots(categories, related) * (len(brands) + 1)
                       + by_brand.slots(brands, related))  # (category or none) x (brand or none)
        n_combinations = (len(categories) + 1) * (len(brands) + 1)
        sample = spread_sample(combination, n_combinations, self.retrieval.related_samples)
        features = self.behaviour_features(context, related[sample], history=history)
        with torch.no_grad():
            lift = self.net.behaviour_score(torch.as_tensor(features, device=self.device)).cpu().numpy()
        counts = np.bincount(combination[sample], minlength=n_combinations)
        mean_lift = np.bincount(combination[sample], lift, minlength=n_combinations) / np.maximum(counts, 1)
        return related[np.argpartition(-(dot + mean_lift[combination]), limit - 1)[:limit]]

    def _recommendation(self, position: int, rank: int, score: float, parts: dict[str, float]) -> Recommendation:
        if self._item_rows is None:  # column arrays: a data frame row per item shown costs more than the ranking
            self._item_rows = tuple(self.items[name].to_numpy(dtype=object)
                                    for name in ("item_id", "title", "category", "brand", "price"))
        item_id, title, category, brand, price = (column[position] for column in self._item_rows)
        return Recommendation(
            item_id=str(item_id), rank=rank, score=score, title=str(title),
            category=_text_or_none(category), brand=_text_or_none(brand),
            price=None if pd.isna(price) else float(price), parts=parts,
        )


def _before(history: UserHistory, moment_ns: int) -> UserHistory:
    keep = history.first_touch < moment_ns
    return UserHistory(history.user_id, history.item_index[keep], history.event_codes[keep],
                       history.first_touch[keep], np.minimum(history.last_touch[keep], moment_ns - 1))


def template_positions(offsets, spans) -> tuple[int, ...]:
    """Positions of the tokens whose characters all lie in one of `spans` (special tokens, with no span, never)."""
    return tuple(t for t, (start, end) in enumerate(offsets)
                 if end > start and any(lo <= start and end <= hi for lo, hi in spans))


def empty_events() -> pd.DataFrame:
    """No events, in the contract's columns: a history with every past interaction removed."""
    return pd.DataFrame({"user_id": pd.Series(dtype=object), "item_id": pd.Series(dtype=object),
                         "timestamp": pd.Series(dtype="datetime64[ns, UTC]"),
                         "event": pd.Categorical([], categories=["view", "cart", "purchase", "rating"]),
                         "value": pd.Series(dtype="float64")})


def _text_or_none(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _nearest(wanted: str, known) -> str:
    close = difflib.get_close_matches(wanted, [str(k) for k in known], n=3, cutoff=0.5)
    return f"; nearest known: {', '.join(close)}" if close else ""


@dataclass
class ScoreView:
    """A differentiable view of one (context, item) score, for the explainers: inputs in, score out.

    score = forward(item_embeds, query_embeds, history_vectors, id_vector) + bias + behaviour(features)
    forward covers every input an attribution method walks along; `bias` and the behaviour part do not
    depend on them. forward(..., kept=w) gives w * that + (1 - w) * the same without the history. Tensors carry
    a leading batch dimension of 1 (Captum expands it along its path).
    """

    item_position: int
    item_input_ids: torch.Tensor  # (1, Ti)
    item_embeds: torch.Tensor  # (1, Ti, H) word embeddings of the item's tokens
    item_mask: torch.Tensor  # (1, Ti)
    item_offsets: list[tuple[int, int]]  # character span of each token in `item_text`
    item_text: str
    item_template: tuple[int, ...]  # positions of the tokens of the text's template (field labels, separators)
    query_input_ids: torch.Tensor | None  # (1, Tq)
    query_embeds: torch.Tensor | None  # (1, Tq, H)
    query_mask: torch.Tensor | None
    query_offsets: list[tuple[int, int]]
    query_text: str | None
    history_vectors: torch.Tensor | None  # (1, Th, D) item vectors of the history units used
    history_index: np.ndarray  # (Th,) catalog positions of those units, oldest first
    history_codes: dict[str, torch.Tensor]  # event/gap/now codes and lengths for user_states
    id_vector: torch.Tensor  # (1, D) the item's collaborative vector
    bias: float
    features: np.ndarray  # (F,) the behaviour features at the context's moment
    pad_token_id: int
    special_tokens: tuple[int, ...]  # ids kept in the baseline ([CLS], [SEP])
    forward: object  # (item_embeds, query_embeds, history_vectors, id_vector) -> (B,) dot-product part

    def pad_baseline(self, input_ids: torch.Tensor, embeds: torch.Tensor, word_embeddings) -> torch.Tensor:
        """PAD embeddings everywhere except [CLS]/[SEP], which stay: the documented IG baseline."""
        base_ids = torch.where(torch.isin(input_ids, torch.tensor(self.special_tokens, device=input_ids.device)),
                               input_ids,
                               torch.full_like(input_ids, self.pad_token_id))
        return word_embeddings(base_ids).detach()


def score_view(recommender: Recommender, context: Context, item_position: int,
               history: pd.DataFrame | None = None) -> ScoreView:
    """Build the differentiable view of score(context, item); it reproduces `score_parts` exactly."""
    net, encoder = recommender.net, recommender.net.encoder
    config, device = net.config, recommender.device
    row = recommender.items.iloc[item_position]
    from data.schema import item_text_layout

    text, template_spans = item_text_layout(row.title, _text_or_none(row.brand), _text_or_none(row.category),
                                            _text_or_none(row.description))
    item_batch = dict(encoder.tokenize([text], config.max_item_tokens))
    item_offsets = [tuple(map(int, o)) for o in item_batch["offset_mapping"][0]]
    item_batch.update({name: item_batch[name].to(device) for name in ("input_ids", "attention_mask")})
    word_embeddings = encoder.transformer.get_input_embeddings()
    with torch.no_grad():
        item_embeds = word_embeddings(item_batch["input_ids"]).detach()
    query_ids = query_embeds = query_mask = None
    query_offsets: list = []
    if context.query is not None:
        query_batch = encoder.tokenize([context.query], config.max_query_tokens)
        query_ids, query_mask = query_batch["input_ids"].to(device), query_batch["attention_mask"].to(device)
        query_offsets = [tuple(map(int, o)) for o in query_batch["offset_mapping"][0]]
        with torch.no_grad():
            query_embeds = word_embeddings(query_ids).detach()
    user_history = context.history
    history_vectors, codes = None, {}
    if len(user_history):
        codes = serving_tensors([user_history], [context.moment_ns], config.max_history)
        history_index = codes["items"][0, : int(codes["lengths"][0])].numpy()
        codes = {name: t.to(device) for name, t in codes.items()}
        with torch.no_grad():
            rows = torch.as_tensor(history_index, device=device)
            history_vectors = (recommender.item_text_vectors[rows] + recommender.item_id_vectors[rows]).unsqueeze(0)
    else:
        history_index = np.zeros(0, dtype=np.int64)
    position = torch.tensor([item_position], device=device)
    with torch.no_grad():
        id_vector = net.item_id_vectors(position).detach()  # (1, D)
        bias = float(net.item_biases(position)[0])
    features = recommender.behaviour_features(context, np.array([item_position]), history=history)[0]
    item_mask = item_batch["attention_mask"]

    def forward(item_embeds_in, query_embeds_in=None, history_in=None, id_in=None, kept: float = 1.0) -> torch.Tensor:
        batch = item_embeds_in.shape[0]
        text_embedding = net.item_text_embedding(item_mask.expand(batch, -1), inputs_embeds=item_embeds_in)
        item_vector = net.item_text_vectors(text_embedding)  # (B, D)
        if id_in is not None:
            item_vector = item_vector + id_in
        item_vector = net.normalised_item_vector(item_vector)
        query_vector = torch.zeros_like(item_vector)
        if query_embeds_in is not None:
            query_embedding = encoder(attention_mask=query_mask.expand(batch, -1), inputs_embeds=query_embeds_in)
            query_vector = net.query_vector(query_embedding)
        if history_in is None:
            return (net.scaled_context(query_vector) * item_vector).sum(-1)  # (B,)
        expand = {k: v.expand(batch, *v.shape[1:]) for k, v in codes.items() if k != "items"}
        states = net.user_states(history_in, expand["event_codes"], expand["gap_codes"], expand["now_codes"])
        with_history = (net.scaled_context(net.last_state(states, expand["lengths"]) + query_vector)
                        * item_vector).sum(-1)
        if kept == 1.0:
            return with_history
        # A mix of the score with the history and without it, from one pass through the encoder (explain.tokens).
        return kept * with_history + (1.0 - kept) * (net.scaled_context(query_vector) * item_vector).sum(-1)

    return ScoreView(
        item_position=item_position, item_input_ids=item_batch["input_ids"], item_embeds=item_embeds,
        item_mask=item_mask, item_offsets=item_offsets, item_text=text,
        item_template=template_positions(item_offsets, template_spans), query_input_ids=query_ids,
        query_embeds=query_embeds, query_mask=query_mask,
        query_offsets=query_offsets, query_text=context.query, history_vectors=history_vectors,
        history_index=history_index, history_codes=codes, id_vector=id_vector, bias=bias, features=features,
        pad_token_id=encoder.pad_token_id,
        special_tokens=tuple(int(t) for t in (encoder.tokenizer.cls_token_id, encoder.tokenizer.sep_token_id)
                             if t is not None),
        forward=forward,
    )
