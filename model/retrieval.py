"""One top-k rule for the whole product: best scores first, seen items masked, ties broken by catalog order."""

from __future__ import annotations

import numpy as np

# Past this many items a FAISS inner-product index answers the dot-product part (see `VectorIndex`).
FAISS_THRESHOLD = 200_000


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
    """Inner-product search over item vectors: exact matrix product, or FAISS for very large catalogs.

    Returns candidates for the dot-product part of the score; callers re-score candidates exactly
    and apply `top_k`, so both paths agree on the items they return.
    """

    def __init__(self, vectors: np.ndarray, use_faiss: bool | None = None) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)  # (N, D)
        self.use_faiss = len(vectors) >= FAISS_THRESHOLD if use_faiss is None else use_faiss
        self._index = None
        if self.use_faiss:
            import faiss

            self._index = faiss.IndexFlatIP(self.vectors.shape[1])
            self._index.add(self.vectors)

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """(D,) -> catalog positions of the k largest inner products, best first."""
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        if self._index is None:
            return top_k(self.vectors @ query[0], k)
        _, found = self._index.search(query, min(k, len(self.vectors)))
        return found[0][found[0] >= 0].astype(np.int64)
