"""What-if support: a user's history edited, behaviour features set by hand, and how the ranking moved.

Three kinds of edit, each a plain input to the one Recommender interface, so the ranking and the explanation
see the same edited user:
  * history: `edited_history` builds the replacement events (`recommend(..., history=...)`, `explain(...)`);
  * behaviour features: `feature_overrides={name: value}` sets a feature to one value for every item scored
    (`Recommender.context` checks them here against `feature_ranges` and keeps them in the Context, so the
    served score, the score view and SHAP all read the overridden features);
  * a query: the ordinary `query` argument.
`ranking` ranks the whole catalog by the one top-k rule, and `rank_changes` lines two rankings up.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from data.features import FEATURE_NAMES, FEATURES, ITEM_FEATURES
from data.schema import EVENT_TYPES
from model.errors import ModelError

RANGE_SAMPLE_USERS = 500  # users whose whole-catalog features make up the observed range (all, when fewer)
RANGE_SEED = 0  # a fixed sample: the same model offers the same slider bounds every time
RANGE_TOLERANCE = 1e-6  # relative: a value this close outside a bound is the bound (float rounding of sliders)
EVENT_COLUMNS = ["user_id", "item_id", "timestamp", "event", "value"]

_ranges: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # recommender -> {checkpoint_id: frame}
_ranges_lock = threading.Lock()


def feature_ranges(recommender) -> pd.DataFrame:
    """The observed range of each behaviour feature; one row per feature, indexed by its name.

    Columns: label, unit, meaning, scope ("item": popularity, conversion, age, the same for every user;
    "user and item" otherwise), low, high. The range is what the feature takes over the whole catalog for a
    seeded sample of up to RANGE_SAMPLE_USERS users at the serving moment: the values the model ranks with.
    Cached per recommender and checkpoint.
    """
    with _ranges_lock:
        cached = _ranges.get(recommender, {}).get(recommender.checkpoint_id)
    if cached is not None:
        return cached
    users = np.asarray(recommender.user_ids)
    if len(users) > RANGE_SAMPLE_USERS:
        users = np.random.default_rng(RANGE_SEED).choice(users, RANGE_SAMPLE_USERS, replace=False)
    low = np.full(len(FEATURES), np.inf)
    high = np.full(len(FEATURES), -np.inf)
    for user_id in users:
        features = recommender.features.user_features(str(user_id))  # (N, F) at the serving moment
        low, high = np.minimum(low, features.min(0)), np.maximum(high, features.max(0))
    if not len(users):  # no users: the item columns still have a range, the user columns read their defaults
        features = recommender.features.user_features(None, history=pd.DataFrame(columns=EVENT_COLUMNS))
        low, high = features.min(0), features.max(0)
    frame = pd.DataFrame({
        "label": [spec.label for spec in FEATURES], "unit": [spec.unit for spec in FEATURES],
        "meaning": [spec.meaning for spec in FEATURES],
        "scope": ["item" if spec.name in ITEM_FEATURES else "user and item" for spec in FEATURES],
        "low": low.astype(np.float64), "high": high.astype(np.float64),
    }, index=pd.Index(FEATURE_NAMES, name="feature"))
    with _ranges_lock:
        _ranges.setdefault(recommender, {})[recommender.checkpoint_id] = frame
    return frame


def checked_overrides(recommender, overrides: Mapping[str, float] | None) -> tuple[tuple[str, float], ...]:
    """(name, value) pairs in FEATURES order, each a known feature set within its observed range.

    A value outside the range by more than float rounding is refused: the model never saw it, so what it
    would say there is extrapolation, not a what-if.
    """
    if not overrides:
        return ()
    if not isinstance(overrides, Mapping):
        raise ModelError(f"feature overrides are a mapping of feature name to value, not {type(overrides).__name__}")
    unknown = [str(name) for name in overrides if name not in FEATURE_NAMES]
    if unknown:
        raise ModelError(f"unknown behaviour feature '{unknown[0]}'; the features are {', '.join(FEATURE_NAMES)}")
    ranges = feature_ranges(recommender)
    checked = []
    for name in FEATURE_NAMES:
        if name not in overrides:
            continue
        value = overrides[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
                or not math.isfinite(value):
            raise ModelError(f"behaviour feature '{name}' must be set to a finite number, not {value!r}")
        low, high = float(ranges.at[name, "low"]), float(ranges.at[name, "high"])
        slack = RANGE_TOLERANCE * max(1.0, abs(low), abs(high))
        if not low - slack <= value <= high + slack:
            raise ModelError(f"behaviour feature '{name}' set to {value:.4g}, outside its observed range "
                             f"{low:.4g} to {high:.4g}; choose a value within it")
        checked.append((name, min(max(float(value), low), high)))
    return tuple(checked)


def overrides_note(overrides: Sequence[tuple[str, float]]) -> str:
    """One line for a person: which features were set by hand, to what, for every item."""
    labels = {spec.name: spec.label for spec in FEATURES}
    return "behaviour features set by hand, the same for every item: " + ", ".join(
        f"{labels[name]} = {value:.3g}" for name, value in overrides)


def edited_history(recommender, user_id: str, *, remove: Sequence[str] = (),
                   add: Sequence[tuple[str, str]] = ()) -> pd.DataFrame:
    """The user's events without the items in `remove` (every event on them), plus `add` as (item_id, event).

    Added events happen just now, in the order given: at the last moment the data knows, so the serving moment
    (and with it every item's popularity and age) stays where it was.
    """
    recommender.check_user(user_id)
    events = recommender.dataset.user_events(user_id)[EVENT_COLUMNS]
    remove = [str(item_id) for item_id in remove]
    if remove:
        recommender.item_positions(remove)  # unknown ids are named, not silently ignored
        events = events[~events["item_id"].astype(str).isin(remove)]
    if not add:
        return events.reset_index(drop=True)
    item_ids = [str(item_id) for item_id, _ in add]
    recommender.item_positions(item_ids)
    kinds = [str(event) for _, event in add]
    bad = [kind for kind in kinds if kind not in EVENT_TYPES]
    if bad:
        raise ModelError(f"event '{bad[0]}' is not one of {', '.join(EVENT_TYPES)}")
    now = recommender.dataset.events["timestamp"].max()
    added = pd.DataFrame({"user_id": str(user_id), "item_id": item_ids,
                          "timestamp": pd.Series([now] * len(add), dtype=recommender.dataset.events["timestamp"].dtype),
                          "event": kinds, "value": np.nan})
    frames = [frame for frame in (events, added) if len(frame)]
    combined = pd.concat(frames, ignore_index=True)
    combined["event"] = pd.Categorical(combined["event"].astype(str), categories=EVENT_TYPES)
    return combined


def ranking(recommender, user_id: str | None = None, query: str | None = None, *,
            history: pd.DataFrame | None = None, feature_overrides: Mapping[str, float] | None = None) -> pd.DataFrame:
    """Every rankable item, best first (the user's own items are left out, as in `recommend`).

    Columns: rank (1-based), item_id, title, category, brand, price, score, part_<name> for each part.
    The frame's `attrs` carry the ranking's mode and notes.
    """
    if history is not None:
        seen = history["item_id"].astype(str).nunique()
    else:
        seen = len(recommender.history(user_id)) if user_id is not None else 0
    result = recommender.recommend(user_id=user_id, query=query, k=max(1, len(recommender.item_ids) - seen),
                                   history=history, feature_overrides=feature_overrides)
    frame = pd.DataFrame([{
        "rank": r.rank, "item_id": r.item_id, "title": r.title, "category": r.category, "brand": r.brand,
        "price": r.price, "score": r.score, **{f"part_{name}": value for name, value in r.parts.items()},
    } for r in result])
    frame.attrs.update(mode=result.mode, notes=list(result.notes))
    return frame


def rank_changes(real: pd.DataFrame, edited: pd.DataFrame, k: int) -> pd.DataFrame:
    """How the top-k moved from the `real` ranking to the `edited` one (both from `ranking`).

    One row per item in either top-k: item_id, title, real_rank, new_rank (<NA> when the item is not ranked,
    i.e. in that history), real_score, new_score, change (real_rank - new_rank: positive moved up) and status:
    "up", "down", "same", "entered" (in the edited top-k only) or "left" (in the real top-k only). Rows follow
    the edited ranking, then the items that left in their real order.
    """
    if not isinstance(k, int | np.integer) or k <= 0:
        raise ModelError(f"k must be a positive whole number, got {k!r}")
    real_rank = real.set_index("item_id")["rank"]
    new_rank = edited.set_index("item_id")["rank"]
    shown = list(dict.fromkeys([*edited["item_id"].head(k), *real["item_id"].head(k)]))
    titles = pd.concat([edited.set_index("item_id")["title"], real.set_index("item_id")["title"]])
    titles = titles[~titles.index.duplicated()]
    frame = pd.DataFrame({"item_id": shown, "title": titles.reindex(shown).to_numpy(),
                          "real_rank": real_rank.reindex(shown).astype("Int64").to_numpy(),
                          "new_rank": new_rank.reindex(shown).astype("Int64").to_numpy(),
                          "real_score": real.set_index("item_id")["score"].reindex(shown).to_numpy(),
                          "new_score": edited.set_index("item_id")["score"].reindex(shown).to_numpy()})
    frame["real_rank"] = frame["real_rank"].astype("Int64")
    frame["new_rank"] = frame["new_rank"].astype("Int64")
    frame["change"] = (frame["real_rank"] - frame["new_rank"]).astype("Int64")
    in_real = frame["real_rank"].le(k).fillna(False).astype(bool)
    in_new = frame["new_rank"].le(k).fillna(False).astype(bool)
    frame["status"] = np.select(
        [in_new & ~in_real, in_real & ~in_new, frame["change"].gt(0).fillna(False).astype(bool),
         frame["change"].lt(0).fillna(False).astype(bool)],
        ["entered", "left", "up", "down"], default="same")
    order = np.lexsort((frame["real_rank"].fillna(np.iinfo(np.int64).max).to_numpy(dtype=np.int64),
                        frame["new_rank"].where(in_new).fillna(np.iinfo(np.int64).max).to_numpy(dtype=np.int64)))
    return frame.iloc[order].reset_index(drop=True)
