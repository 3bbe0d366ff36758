"""One top-k rule for the whole product (best scores first, seen items masked, ties broken by catalog order), and
the candidate search that lets a large catalog be ranked in two stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from data.features import distinct_sorted
from model.errors import ModelError

INDEX_KINDS = ("exact", "flat", "ivf", "hnsw")


@dataclass(frozen=True)
class RetrievalConfig:
    """How `Recommender.recommend` finds the top k: the whole catalog scored exactly, or, past `two_stage_from`
    items, FAISS candidates by the dot-product part (+ item bias) rescored exactly with the behaviour features.

    Defaults measured on 2 CPU cores with clustered MiniLM-like item vectors (bench/scale_serving.py, docs/model.md).
    """

    two_stage_from: int = 100_000  # catalogs this large rank in two stages; smaller ones are scored whole (exact)
    index: str = "ivf"  # "ivf" builds in seconds at 1M items; "hnsw" searches alike but builds for minutes there;
    #                     "flat" is exact FAISS search (a reference), "exact" a numpy product (for tests)
    candidates: int = 1_000  # items the index proposes per request, rescored exactly
    related_candidates: int = 2_000  # and at most this many items sharing a category or brand with the user's
    #                                  history: the behaviour head lifts those most, from far down the dot-product
    #                                  order. Taken by dot product + the estimated lift of their (category, brand)
    #                                  combination (below); by dot product alone, 1M items needed 10,000 of them
    #                                  for recall@10 0.97 (docs/model.md)
    related_samples: int = 256  # related items whose behaviour part is computed to estimate each combination's
    #                             lift (evenly spread over them, and at least one of every combination)
    ivf_lists: int = 0  # IVF cells; 0 = √N (1M items: 1,000 cells of ~1,000 items)
    ivf_probe: int = 24  # cells searched per request: more is slower and closer to exact
    ivf_train_per_list: int = 64  # k-means trains on a seeded sample of this many items per cell (FAISS wants ≥ 39)
    hnsw_neighbours: int = 32  # HNSW graph degree M
    hnsw_ef_construction: int = 80  # build-time beam: higher builds slower and searches a little better
    hnsw_ef_search: int = 1_000  # search beam; at least `candidates`, or HNSW returns fewer
    seed: int = 0  # the k-means sample

    def __post_init__(self) -> None:
        if self.index not in INDEX_KINDS:
            raise ModelError(f"retrieval.index '{self.index}' is not one of {', '.join(INDEX_KINDS)}")
        if self.related_candidates < 0:
            raise ModelError(f"retrieval.related_candidates {self.related_candidates} must be 0 (none) or more")
        for name in ("two_stage_from", "related_samples", "candidates", "ivf_probe", "ivf_train_per_list",
                     "hnsw_neighbours", "hnsw_ef_construction", "hnsw_ef_search"):
            if getattr(self, name) < 1:
                raise ModelError(f"retrieval.{name} {getattr(self, name)} must be at least 1")
        if self.ivf_lists < 0:
            raise ModelError(f"retrieval.ivf_lists {self.ivf_lists} must be 0 (automatic) or more")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> RetrievalConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ModelError(f"unknown retrieval config keys: {', '.join(unknown)}")
        return cls(**values)


def top_k(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Catalog positions of the k best scores (N,) -> (k,), best first; `exclude` positions never appear.

    Ties go to the lower catalog position, so the item explained is always the item shown.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if exclude is not None and len(exclude):
        scores = scores.copy()
        scores[np.asarray(exclude, dtype=np.int64)] = -np.inf
    available = int(np.isfinite(scores).sum())
    k = min(k, available)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    # argpartition for the candidates, then an exact stable sort among them (descending score, ascending index).
    candidates = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    threshold = scores[candidates].min()
    candidates = np.flatnonzero(scores >= threshold)  # every tie at the boundary competes fairly
    order = np.lexsort((candidates, -scores[candidates]))
    return candidates[order][:k].astype(np.int64)


class VectorIndex:
    """Maximum inner-product search over item vectors: a numpy product ("exact"), or a FAISS index ("flat" is
    exact, "ivf" and "hnsw" approximate), as RetrievalConfig sets it.

    It only proposes candidates: callers score them exactly and apply `top_k`, so whatever the index, the items
    returned are ordered by the one rule.
    """

    def __init__(self, vectors: np.ndarray, kind: str = "exact", config: RetrievalConfig | None = None) -> None:
        config = config or RetrievalConfig()
        if kind not in INDEX_KINDS:
            raise ModelError(f"index kind '{kind}' is not one of {', '.join(INDEX_KINDS)}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
        self.kind = kind
        self.config = config
        self.n_vectors = len(vectors)
        # A FAISS index holds its own copy: keep ours only where the numpy product needs it.
        self.vectors = vectors if kind == "exact" else None
        self._index = None if kind == "exact" else _faiss_index(vectors, kind, config)

    def __len__(self) -> int:
        return self.n_vectors

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """(D,) -> catalog positions of (up to) the k largest inner products, best first."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._index is None:
            return top_k(self.vectors @ query[0], k)
        _, found = self._index.search(query, min(k, self.n_vectors))
        return found[0][found[0] >= 0].astype(np.int64)


def _faiss_index(vectors: np.ndarray, kind: str, config: RetrievalConfig):
    import faiss

    n, width = vectors.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(width)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(width, config.hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = max(config.hnsw_ef_search, config.candidates)
    else:  # ivf
        # Never more cells than items (k-means needs a point per cell); small catalogs get few, coarse cells.
        n_lists = max(1, min(config.ivf_lists or int(np.sqrt(n)), n))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(width), width, n_lists, faiss.METRIC_INNER_PRODUCT)
        sample = np.random.default_rng(config.seed).permutation(n)[: n_lists * config.ivf_train_per_list]
        index.train(vectors[np.sort(sample)])
        index.nprobe = min(config.ivf_probe, n_lists)
    index.add(vectors)
    return index


class ItemGroups:
    """Catalog items grouped by a label (category, brand), with each group's search vectors side by side in memory,
    so that the inner products of whole groups are contiguous matrix-vector products, never a gather of rows.

    Built once per set of item vectors; it holds a copy of them in group order ((N, D) float32).
    """

    def __init__(self, labels, vectors: np.ndarray) -> None:
        codes, names = pd.factorize(pd.Series(labels), use_na_sentinel=True)  # (N,), -1 = no label
        self.codes = codes.astype(np.int64)
        self.n_groups = len(names)
        self.order = np.argsort(self.codes, kind="stable")  # catalog positions grouped by code, -1 first
        self.starts = np.searchsorted(self.codes[self.order], np.arange(self.n_groups + 1))
        self.vectors = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[self.order])  # (N, D) grouped

    def groups_of(self, items: np.ndarray) -> np.ndarray:
        """The groups (codes, ascending) of these catalog positions; unlabelled items have none."""
        groups = distinct_sorted(self.codes[np.asarray(items, dtype=np.int64)])
        return groups[groups >= 0]

    def members(self, groups: np.ndarray) -> np.ndarray:
        """Catalog positions of every item of these groups, group after group."""
        if not len(groups):
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([self.order[self.starts[g]:self.starts[g + 1]] for g in groups])

    def slots(self, groups: np.ndarray, items: np.ndarray) -> np.ndarray:
        """(len(items),) for each item the index of its group in `groups` (ascending codes), len(groups) when its
        group is not one of them or it has none."""
        slot = np.full(self.n_groups + 1, len(groups), dtype=np.int64)  # the last entry answers code -1
        slot[groups] = np.arange(len(groups))
        return slot[self.codes[np.asarray(items, dtype=np.int64)]]

    def inner_products(self, groups: np.ndarray, query: np.ndarray) -> np.ndarray:
        """(len(members(groups)),) each member's vector · query, in the order of `members`."""
        if not len(groups):
            return np.zeros(0, dtype=np.float32)
        query = np.asarray(query, dtype=np.float32)
        return np.concatenate([self.vectors[self.starts[g]:self.starts[g + 1]] @ query for g in groups])



def spread_sample(keys: np.ndarray, n_keys: int, size: int) -> np.ndarray:
    """Indices into `keys` (ascending): about `size` spread evenly over them, plus the first of every key present
    (keys are 0 .. n_keys - 1), so that every key has at least one."""
    n = len(keys)
    first = np.full(n_keys, n, dtype=np.int64)
    np.minimum.at(first, keys, np.arange(n))
    even = np.arange(0, n, max(1, -(-n // size)))
    return distinct_sorted(np.concatenate([first[first < n], even]))
