"""Behaviour attributions by exact SHAP: which behaviour features (recency, affinity, price fit, ...) moved a score.

The explained function is the model's behaviour head as a function of the raw feature vector,
`recommender.net.behaviour_score`. The background is a seeded sample of feature vectors of random
(user, item) pairs at the serving moment, drawn from the recommender's FeatureStore and cached per recommender
and checkpoint: "compared with a random item for a random user". With the Independent masker the exact
explainer enumerates all 2^F coalitions (F = 11: 2048 of them), so the values are the Shapley values for that
background, and base_value + sum(values) == behaviour_score(features) up to float rounding.
"""

from __future__ import annotations

import math
import sys
import threading
import time
import warnings
import weakref

import numpy as np
import torch

from data.features import FEATURES
from explain.base import Attribution
from explain.errors import ExplanationError
from explain.gradients import device_of

BACKGROUND_SIZE = 100  # background rows; exact SHAP costs 2^F * rows evaluations of a 2-layer head: ~0.1 s
BACKGROUND_SEED = 0  # a fixed draw: the same model explains the same way every time

_backgrounds: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # recommender -> {key: (rows, F) array}
_backgrounds_lock = threading.Lock()
_shap_lock = threading.Lock()


def import_shap():
    """`shap`, imported once; its import trips a matplotlib PendingDeprecationWarning that is no concern of ours."""
    with _shap_lock:  # the filter is process-wide: set it once, not from every thread that explains
        if "shap" not in sys.modules:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=PendingDeprecationWarning, module=r"shap\..*")
                import shap  # noqa: F401
    return sys.modules["shap"]


def background(recommender, size: int = BACKGROUND_SIZE, seed: int = BACKGROUND_SEED) -> np.ndarray:
    """(size, F) float64 feature vectors of random (user, item) pairs at the serving moment; cached."""
    key = (recommender.checkpoint_id, size, seed)
    with _backgrounds_lock:
        cached = _backgrounds.get(recommender, {}).get(key)
    if cached is not None:
        return cached
    users, n_items = recommender.user_ids, len(recommender.item_ids)
    if len(users) == 0 or n_items == 0:
        raise ExplanationError("the behaviour background needs users and items; this recommender has none")
    rng = np.random.default_rng(seed)
    rows = recommender.features.pair_features(rng.choice(users, size), rng.integers(0, n_items, size), None)
    rows = rows.astype(np.float64)
    with _backgrounds_lock:
        _backgrounds.setdefault(recommender, {})[key] = rows
    return rows


class BehaviourAttributor:
    """Exact SHAP values of the behaviour head over its features; one verb, `attribute`.

    `attribute(recommender, context, view)` returns one "behaviour" Attribution: one value per feature
    (named by its label, with its unit, the user's actual value and the background mean in the details).
    """

    method = "shap_exact"
    has_convergence_delta = False  # exact: the gap is float rounding, reported all the same

    def __init__(self, background_size: int = BACKGROUND_SIZE, seed: int = BACKGROUND_SEED) -> None:
        if not 1 <= background_size <= 10_000:
            raise ExplanationError(f"background_size {background_size} must be in 1..10000")
        self.background_size = background_size
        self.seed = seed

    def attribute(self, recommender, context, view) -> tuple[Attribution, ...]:
        shap = import_shap()
        started = time.perf_counter()
        if len(view.features) != len(FEATURES):
            raise ExplanationError(f"the view has {len(view.features)} behaviour features; data.features defines "
                                   f"{len(FEATURES)}")
        rows = background(recommender, self.background_size, self.seed)
        score = behaviour_function(recommender)
        features = np.asarray(view.features, dtype=np.float64)[None]  # (1, F)
        explainer = shap.explainers.Exact(score, shap.maskers.Independent(rows, max_samples=len(rows)))
        result = explainer(features, silent=True)
        values = np.asarray(result.values, dtype=np.float64)[0]  # (F,)
        base = float(np.asarray(result.base_values).reshape(-1)[0])
        gap = base + math.fsum(values) - float(score(features)[0])
        means = rows.mean(0)
        details = [{"feature": spec.name, "unit": spec.unit, "value": float(features[0, j]),
                    "background_mean": float(means[j]), "meaning": spec.meaning, "needs_clock": spec.needs_clock}
                   for j, spec in enumerate(FEATURES)]
        parameters = {"algorithm": "exact", "masker": "independent", "background": "random (user, item) pairs",
                      "background_size": len(rows), "seed": self.seed, "run": "behaviour"}
        return (Attribution("behaviour", tuple(spec.label for spec in FEATURES), tuple(values), base, self.method,
                            parameters, gap, time.perf_counter() - started, tuple(details)),)


def behaviour_function(recommender):
    """(n, F) float64 raw features -> (n,) float64 behaviour part of the score, as SHAP calls it."""
    net, device = recommender.net, device_of(recommender)

    def score(features) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device)
            return net.behaviour_score(x).cpu().numpy()

    return score
