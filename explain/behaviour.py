"""Behaviour attributions by exact SHAP: which behaviour features (recency, affinity, price fit, ...) moved a score.

The explained function is the model's behaviour head as a function of the raw feature vector,
`recommender.net.behaviour_score`. The background says what a value is compared with:

  context (default)  the same context's features for a seeded sample of catalog items, at the same moment:
                     "compared with a random item for this user, now". A ranking explanation asks why this
                     item and not another for the same person: features that are the same for every item of
                     the context (the user's own activity) get exactly 0, and time-dependent features (recency,
                     popularity, item age) are compared at the moment explained, not at another one.
  pairs              feature vectors of random (user, item) pairs at the serving moment, cached per recommender
                     and checkpoint: "compared with a random item for a random user".

What-if overrides are left out of the background: an edited feature is compared with the data's own values.
With the Independent masker the exact explainer enumerates all 2^F coalitions (F = 11: 2048 of them), so the
values are the Shapley values for that background, and base_value + sum(values) == behaviour_score(features) up
to float rounding.
"""

from __future__ import annotations

import functools
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

BACKGROUND_SIZE = 100  # background rows; exact SHAP costs 2^F * rows evaluations of the head: ~0.03 s on a CPU
BACKGROUND_SEED = 0  # a fixed draw: the same model explains the same way every time
BACKGROUNDS = {  # name -> what the values are compared with, as the explanation's parameters say it
    "context": "random items for the same user or query, at the same moment",
    "pairs": "random (user, item) pairs",
}

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


def context_background(recommender, context, size: int = BACKGROUND_SIZE, seed: int = BACKGROUND_SEED,
                       history=None) -> np.ndarray:
    """(size, F) float64: the context's own features for a seeded sample of catalog items, without overrides."""
    n_items = len(recommender.item_ids)
    if n_items == 0:
        raise ExplanationError("the behaviour background needs items; this recommender has none")
    items = np.sort(np.random.default_rng(seed).choice(n_items, min(size, n_items), replace=False))
    rows = recommender.behaviour_features(context, items, history=history, overrides=False)
    return np.asarray(rows, dtype=np.float64)


class BehaviourAttributor:
    """Exact SHAP values of the behaviour head over its features; one verb, `attribute`.

    `attribute(recommender, context, view)` returns one "behaviour" Attribution: one value per feature
    (named by its label, with its unit, the user's actual value and the background mean in the details).
    """

    method = "shap_exact"
    has_convergence_delta = False  # exact: the gap is float rounding, reported all the same

    def __init__(self, background_size: int = BACKGROUND_SIZE, seed: int = BACKGROUND_SEED,
                 background: str = "context") -> None:
        if not 1 <= background_size <= 10_000:
            raise ExplanationError(f"background_size {background_size} must be in 1..10000")
        if background not in BACKGROUNDS:
            raise ExplanationError(f"background '{background}' is not one of {', '.join(BACKGROUNDS)}")
        self.background_size = background_size
        self.seed = seed
        self.background = background

    def attribute(self, recommender, context, view, history=None, features=None) -> tuple[Attribution, ...]:
        """`history`: the edited history a what-if context was built with (None: the user's own); `features`: the
        features to explain instead of the view's (explain() passes the item's features with the history removed,
        and the empty history as `history`, so the background is read the same way)."""
        started = time.perf_counter()
        features = view.features if features is None else features
        if len(features) != len(FEATURES):
            raise ExplanationError(f"the view has {len(features)} behaviour features; data.features defines "
                                   f"{len(FEATURES)}")
        if self.background == "context":
            rows = context_background(recommender, context, self.background_size, self.seed, history)
        else:
            rows = background(recommender, self.background_size, self.seed)
        score = behaviour_function(recommender)
        features = np.asarray(features, dtype=np.float64)[None]  # (1, F)
        values, bases = exact_shap(score, rows, features)
        values, base = values[0], float(bases[0])
        gap = base + math.fsum(values) - float(score(features)[0])
        means = rows.mean(0)
        details = [{"feature": spec.name, "unit": spec.unit, "value": float(features[0, j]),
                    "background_mean": float(means[j]), "meaning": spec.meaning, "needs_clock": spec.needs_clock}
                   for j, spec in enumerate(FEATURES)]
        parameters = {"algorithm": "exact", "masker": "independent", "background": BACKGROUNDS[self.background],
                      "background_size": len(rows), "seed": self.seed, "run": "behaviour"}
        return (Attribution("behaviour", tuple(spec.label for spec in FEATURES), tuple(values), base, self.method,
                            parameters, gap, time.perf_counter() - started, tuple(details)),)


def exact_shap(score, rows: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact Shapley values (n, F) and base values (n,) of `score` at the rows `x` (n, F) against `rows`.

    shap skips re-evaluating a feature whose background values are np.isclose to x's (rtol 1e-5) as if they were
    equal, which leaves sums ~1e-8 off; the masker here skips only values that are equal, so the sum is exact to
    float64 rounding.
    """
    explainer = import_shap().explainers.Exact(score, _equal_masker()(rows, max_samples=len(rows)))
    result = explainer(x, silent=True)
    return np.asarray(result.values, dtype=np.float64), np.asarray(result.base_values, dtype=np.float64).reshape(-1)


@functools.cache
def _equal_masker():
    """shap's Independent masker, skipping only background values equal to the explained ones."""
    shap = import_shap()

    class EqualIndependent(shap.maskers.Independent):
        def invariants(self, x):
            return np.equal(x, self.data)

    return EqualIndependent


def behaviour_function(recommender):
    """(n, F) float64 raw features -> (n,) float64 behaviour part of the score, as SHAP calls it."""
    net, device = recommender.net, device_of(recommender)

    def score(features) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(features), dtype=torch.float64, device=device)
            return net.behaviour_score(x).cpu().numpy()

    return score
