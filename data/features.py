"""Point-in-time behaviour features of (user, item, moment): their one definition, names, units and meanings."""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass, fields

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import EVENT_TYPES, Dataset


@dataclass(frozen=True)
class FeatureSpec:
    name: str  # column name, e.g. "category_affinity"
    label: str  # what a chart shows, e.g. "Category affinity"
    unit: str  # how to read a value: "share", "log1p(days)", "log1p(count)", "ratio", ...
    meaning: str  # one line for a person
    needs_clock: bool  # meaningless when the dataset's clock is synthetic (order only); then it reads 0


# The one list of behaviour features. Column j of every feature matrix is FEATURES[j]; the model, SHAP and the
# UI read names, units and meanings from here. Counts and durations are log1p'd so every column stays within
# about 0..10 and a small neural head and SHAP see comparable scales.
FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "category_affinity",
        "Category affinity",
        "share",
        "Share of the user's earlier events that were in this item's category, recent events weighing more "
        "(half-life 30 days; 10 events on a synthetic clock).",
        needs_clock=False,
    ),
    FeatureSpec(
        "brand_affinity",
        "Brand affinity",
        "share",
        "Share of the user's earlier events that were on this item's brand, recent events weighing more "
        "(half-life 30 days; 10 events on a synthetic clock).",
        needs_clock=False,
    ),
    FeatureSpec(
        "days_since_category",
        "Days since category",
        "log1p(days)",
        "Days since the user last touched this item's category, capped at 365 (also when never: 5.90).",
        needs_clock=True,
    ),
    FeatureSpec(
        "user_item_views",
        "Earlier views of item",
        "log1p(count)",
        "How often the user viewed this very item before.",
        needs_clock=False,
    ),
    FeatureSpec(
        "user_item_carts",
        "Earlier carts of item",
        "log1p(count)",
        "How often the user put this very item in the cart before.",
        needs_clock=False,
    ),
    FeatureSpec(
        "price_affinity",
        "Price affinity",
        "share",
        "Share of the user's earlier events on items priced within 15% of this item's price, recent events "
        "weighing more (as category affinity); for an item without a price, the share a random priced item of "
        "the catalog would have.",
        needs_clock=False,
    ),
    FeatureSpec(
        "item_popularity",
        "Item popularity",
        "log1p(events)",
        "Events on this item from all users in the 30 days before.",
        needs_clock=True,
    ),
    FeatureSpec(
        "item_conversion",
        "Item conversion",
        "ratio",
        "The item's purchases per view so far, pulled toward the shop-wide rate while it has few views.",
        needs_clock=False,
    ),
    FeatureSpec(
        "user_activity",
        "User activity",
        "log1p(events)",
        "The user's own events in the 30 days before.",
        needs_clock=True,
    ),
    FeatureSpec(
        "item_freshness",
        "Item age",
        "log1p(days)",
        "Days since the item's first event in the shop, capped at 365 (0 for an item nobody has touched yet).",
        needs_clock=True,
    ),
    FeatureSpec(
        "cooccurrence",
        "Co-occurrence",
        "share",
        "Of the times other users went straight to this item from another, the share that came from one of the "
        "user's last 5 items (with 5 pseudo-arrivals from elsewhere, so one arrival is not a certainty).",
        needs_clock=False,
    ),
)
# Bumped whenever a feature's definition changes: a checkpoint records the version and the names it was trained
# on, and loading refuses a model whose behaviour head would read columns it never saw.
# 2: price distance from the user's mean price -> price affinity; co-occurrence as a share of arrivals.
FEATURES_VERSION = 2
FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURES)
# The features about the item alone, the same for every user at a moment (the rest depend on the user too).
ITEM_FEATURES: tuple[str, ...] = ("item_popularity", "item_conversion", "item_freshness")
_COLUMN = {name: j for j, name in enumerate(FEATURE_NAMES)}

AFFINITY_HALF_LIFE_DAYS = 30.0  # a month-old event counts half as much as today's
AFFINITY_HALF_LIFE_EVENTS = 10.0  # on a synthetic clock the same decay counts the user's later events instead
WINDOW_DAYS = 30.0  # popularity and activity look back one month
DAYS_CAP = 365.0  # "a year or more" and "never" read the same, so the value stays bounded
PRICE_WINDOW = math.log(1.15)  # "priced within 15%": |log1p(price) - log1p(other)| at most this
CONVERSION_PRIOR_VIEWS = 10.0  # pseudo-views of the shop-wide rate: an item's own ratio dominates after ~10 views
COOCCURRENCE_RECENT_ITEMS = 5  # the user's last distinct items whose successors are counted
COOCCURRENCE_PRIOR = 5.0  # pseudo-arrivals from elsewhere: an item reached once is not "always reached from here"

_DAY_NS = 86_400 * 10**9
_NEVER = np.iinfo(np.int64).max  # first-event time of an item nobody touched
_NOT_YET = np.iinfo(np.int64).min  # last-touch time of a category the user never touched
_VIEW, _CART, _PURCHASE = (EVENT_TYPES.index(kind) for kind in ("view", "cart", "purchase"))
_ITEM_STATS_CACHE_SIZE = 8  # moments whose whole-catalog item columns and arrivals are kept (at=None is one)


@dataclass(frozen=True)
class _Trail:
    """One user's events in time order (ties in input order), items as catalog positions."""

    item: np.ndarray  # (n,) int64
    time: np.ndarray  # (n,) int64 ns since the epoch, UTC
    kind: np.ndarray  # (n,) int8, index into EVENT_TYPES

    def before(self, t_ns: int) -> _Trail:
        cut = int(np.searchsorted(self.time, t_ns, side="left"))
        return _Trail(self.item[:cut], self.time[:cut], self.kind[:cut])


_EMPTY_TRAIL = _Trail(np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int8))


class FeatureStore:
    """Built once from a Dataset (or from the events visible for training); answers point-in-time queries.

    A feature of (user, item, t) reads only events with timestamp strictly before t, the user's own and every
    other user's, so adding events at or after t changes nothing at t.

    Structures built here, so that a query is a handful of vectorised numpy calls over the catalog:
      * event times as ranks among the distinct event moments, and per event type the sorted key
        item * (n_moments + 1) + rank: "events of item i before t" for every item at once is one
        np.searchsorted of i * (n_moments + 1) + rank(t), with no overflow at ns resolution;
      * each item's first event time: the first event before t exists exactly when it is before t;
      * consecutive pairs (a -> b) of every user's sequence stamped with the time of b, sorted by (a, time):
        for the user's last items a, the successors seen before t are a prefix of a's row (one searchsorted);
        the user's own pairs are subtracted exactly, so co-occurrence counts other users only;
      * every user's events as a slice of one (user, time)-sorted array.
    Whole-catalog item columns at one moment are cached, since at=None is the same moment for every user.
    """

    def __init__(self, dataset: Dataset, events: pd.DataFrame | None = None):
        events = dataset.events if events is None else events
        missing = [column for column in ("user_id", "item_id", "timestamp", "event") if column not in events]
        if missing:
            raise DataError(f"events lack column(s) {', '.join(missing)}", field=missing[0])
        self.dataset = dataset
        self.clock_is_synthetic: bool = bool(dataset.meta.synthetic_clock)
        self.item_ids: np.ndarray = dataset.item_ids  # fixed catalog order: row i of every result is item i
        self.n_items = len(self.item_ids)
        self._item_lookup = pd.Index(self.item_ids)

        items = dataset.items
        self._item_category, n_categories = _codes(items["category"])  # (n_items,), -1 = no category
        self._item_brand, n_brands = _codes(items["brand"])
        self._n_categories, self._n_brands = n_categories, n_brands
        self._item_log_price = np.log1p(items["price"].to_numpy(dtype=np.float64, na_value=np.nan))  # NaN = unknown

        item = self._positions(events["item_id"])  # (n_events,)
        time = _ns_array(events["timestamp"], "timestamp")
        kind = _kind_codes(events["event"])
        users = events["user_id"]
        if pd.api.types.infer_dtype(users, skipna=False) != "string":  # ids given as numbers: as the strings they are
            users = users.astype(str)
        user_code, user_names = pd.factorize(users, sort=True)

        # Users: one (user, time)-sorted array; lexsort is stable, so same-moment events keep the input order.
        order = np.lexsort((time, user_code))
        user_code, item, time, kind = user_code[order], item[order], time[order], kind[order]
        self._event_item, self._event_time, self._event_kind = item, time, kind
        self._user_row = {str(name): row for row, name in enumerate(user_names)}
        self._user_indptr = np.searchsorted(user_code, np.arange(len(user_names) + 1))
        known = set(self._user_row) | {str(u) for u in dataset.user_ids}
        if dataset.users is not None:
            known |= {str(u) for u in dataset.users["user_id"]}
        self._known_users = known
        self._last_event_ns = int(time.max()) if len(time) else None

        # Items: per event type, keys item * (n_moments + 1) + rank(time), sorted.
        self._moments = distinct_sorted(time)  # (n_moments,) distinct event times, sorted
        rank = np.searchsorted(self._moments, time)
        self._key_base = np.int64(len(self._moments) + 1)
        key = item * self._key_base + rank
        self._all_keys = np.sort(key)
        self._view_keys = np.sort(key[kind == _VIEW])
        self._purchase_keys = np.sort(key[kind == _PURCHASE])
        item_origin = np.arange(self.n_items, dtype=np.int64) * self._key_base
        self._view_origin = np.searchsorted(self._view_keys, item_origin)  # (n_items,) first key of each item
        self._purchase_origin = np.searchsorted(self._purchase_keys, item_origin)
        self._view_ranks = np.sort(rank[kind == _VIEW])  # shop-wide counts before t, for the conversion prior
        self._purchase_ranks = np.sort(rank[kind == _PURCHASE])
        self._first_seen = np.full(self.n_items, _NEVER, dtype=np.int64)
        np.minimum.at(self._first_seen, item, time)

        # Co-occurrence: consecutive (a -> b) of one user, a != b, stamped with b's time, sorted by (a, time).
        same_user = user_code[1:] == user_code[:-1]
        follows = same_user & (item[1:] != item[:-1])
        source, successor, stamp = item[:-1][follows], item[1:][follows], time[1:][follows]
        by_source = np.lexsort((stamp, source))
        self._pair_successor = successor[by_source]
        self._pair_time = stamp[by_source]
        self._pair_indptr = np.searchsorted(source[by_source], np.arange(self.n_items + 1))
        # Arrivals at each item: the same pairs as keys successor * (n_moments + 1) + rank(time), sorted.
        self._arrival_keys = np.sort(successor * self._key_base + np.searchsorted(self._moments, stamp))
        self._arrival_origin = np.searchsorted(self._arrival_keys, item_origin)

        # Price windows: for each item, the share of priced catalog items within PRICE_WINDOW of its price,
        # the price affinity a random priced item would get from one event on it.
        log_price = self._item_log_price
        priced = np.sort(log_price[~np.isnan(log_price)])
        in_window = np.searchsorted(priced, log_price + PRICE_WINDOW, side="right") - np.searchsorted(
            priced, log_price - PRICE_WINDOW, side="left")
        self._price_window_share = np.where(np.isnan(log_price), 0.0, in_window / max(len(priced), 1))
        # The whole catalog's window bounds in price order (unknown prices read as 0, as _price_affinity reads them):
        # a ranking's search of the user's few prices then walks sorted needles, several times faster in numpy than
        # a million random ones, and finds the same positions.
        known_log_price = np.where(np.isnan(log_price), 0.0, log_price)
        self._price_order = np.argsort(known_log_price, kind="stable")
        self._price_window_upper = known_log_price[self._price_order] + PRICE_WINDOW  # (n_items,) non-decreasing
        self._price_window_lower = known_log_price[self._price_order] - PRICE_WINDOW

        self._item_stats_cache: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._cache_lock = threading.Lock()

    # ------------------------------------------------------------------------------------------------------
    # Queries

    def user_features(
        self,
        user_id: str | None,
        at: pd.Timestamp | None = None,
        item_index: np.ndarray | None = None,
        history: pd.DataFrame | None = None,
    ) -> np.ndarray:
        """(n_items or len(item_index), len(FEATURES)) float32. at=None means after the last known event.

        `history` (item_id, timestamp, event) overrides the user's own events (for what-if edits: a user with an
        edited history); global item stats still come from the store, and co-occurrence still leaves out the
        stored user's own pairs. With a history, user_id may be unknown or None (an anonymous visitor, a query).
        """
        items = self._item_selection(item_index)
        if history is not None:
            trail = self._trail_from_frame(history)
        elif user_id is None:
            raise DataError("user_id is None and no history was given; pass one of them", field="user_id")
        else:
            trail = self._stored_trail(user_id)
        own = self._stored_trail(user_id) if user_id is not None and str(user_id) in self._user_row else _EMPTY_TRAIL
        t_ns = self._moment(at, trail)
        out = np.empty((len(items), len(FEATURES)), dtype=np.float32)  # (n, F)
        if item_index is None:
            out[:, _ITEM_COLUMNS] = self._whole_catalog_item_stats(t_ns)
        else:  # rows of the whole catalog's columns when a ranking at this moment has computed them already
            cached = self._cached_item_stats(t_ns)
            out[:, _ITEM_COLUMNS] = cached[items] if cached is not None else self._item_stats(items, np.int64(t_ns))
        out[:, _USER_COLUMNS] = self._user_stats(trail.before(t_ns), own.before(t_ns), t_ns, items,
                                                 whole_catalog=item_index is None)
        return out

    def prepare_item_columns(self, at=None) -> None:
        """Compute and keep the item-only columns (ITEM_FEATURES) of the whole catalog at `at` (None: after the last
        event), so that later queries at that moment read rows of them instead of searching the events again."""
        self._whole_catalog_item_stats(self._moment(at, _EMPTY_TRAIL))

    def user_trail(self, user_id: str | None, at, history: pd.DataFrame | None = None):
        """The user's events strictly before `at` in time order: (item positions, times in ns, event codes).

        `history` replaces the user's own events, as in user_features. The order is the one `user_features_kept`
        reads its masks in.
        """
        trail = self._trail_from_frame(history) if history is not None else self._stored_trail(user_id)
        seen = trail.before(self._moment(at, trail))
        return seen.item, seen.time, seen.kind

    def user_features_kept(self, user_id: str | None, at, item_index: np.ndarray, keep: np.ndarray,
                           history: pd.DataFrame | None = None) -> np.ndarray:
        """(M, len(item_index), F) float32: the features as if the user had only the events `keep[m]` of
        `user_trail(user_id, at, history)` ((M, n_events) bool), every other user's events as they are.

        The removal question ("what if these events had not happened?") for many subsets at once: the item columns
        are computed once, the user columns once per subset, with no data frame in between.
        """
        items = self._item_selection(item_index)
        trail = self._trail_from_frame(history) if history is not None else self._stored_trail(user_id)
        own = self._stored_trail(user_id) if user_id is not None and str(user_id) in self._user_row else _EMPTY_TRAIL
        t_ns = self._moment(at, trail)
        seen, own = trail.before(t_ns), own.before(t_ns)
        keep = np.asarray(keep, dtype=bool)
        if keep.ndim != 2 or keep.shape[1] != len(seen.item):
            raise DataError(f"keep masks of shape {keep.shape}; the user has {len(seen.item)} events before the "
                            "moment", field="keep")
        out = np.empty((len(keep), len(items), len(FEATURES)), dtype=np.float32)  # (M, n, F)
        out[:, :, _ITEM_COLUMNS] = self._item_stats(items, np.int64(t_ns))
        for m, kept in enumerate(keep):
            subset = _Trail(seen.item[kept], seen.time[kept], seen.kind[kept])
            out[m][:, _USER_COLUMNS] = self._user_stats(subset, own, t_ns, items)
        return out

    def pair_features(self, user_ids, item_ids_or_index, ats) -> np.ndarray:
        """(N, F) float32 for training examples: row n is (user_ids[n], item n, ats[n]).

        Items are catalog ids (str) or catalog positions (int). `ats` is one timestamp per row, one timestamp for
        all rows, or None (after the last known event). Item columns are computed for all rows at once; user
        columns once per distinct (user, moment).
        """
        user_ids = np.asarray(user_ids, dtype=object).astype(str)
        n = len(user_ids)
        items = np.asarray(item_ids_or_index)
        if items.ndim != 1 or len(items) != n:
            raise DataError(f"{items.size} items for {n} users; pass one item per example", field="item_ids")
        items = self._item_selection(items) if np.issubdtype(items.dtype, np.integer) else self._positions(items)
        if ats is None or np.ndim(ats) == 0:
            t_ns = np.full(n, self._moment(ats, _EMPTY_TRAIL), dtype=np.int64)
        else:
            t_ns = _ns_array(ats, "at")
            if len(t_ns) != n:
                raise DataError(f"{len(t_ns)} moments for {n} examples; pass one per example", field="at")
        for user_id in np.unique(user_ids):
            if user_id not in self._known_users:
                raise DataError("unknown user", field="user_id", value=user_id)

        out = np.empty((n, len(FEATURES)), dtype=np.float32)  # (N, F)
        out[:, _ITEM_COLUMNS] = self._item_stats(items, t_ns)
        group = pd.DataFrame({"user": user_ids, "t": t_ns}).groupby(["user", "t"], sort=False).indices
        for (user_id, t), rows in group.items():
            seen = self._stored_trail(user_id).before(int(t))
            out[rows[:, None], _USER_COLUMNS] = self._user_stats(seen, seen, int(t), items[rows])
        return out

    def describe(self) -> pd.DataFrame:
        """One row per feature: name, label, unit, meaning, needs_clock."""
        return pd.DataFrame([asdict(spec) for spec in FEATURES], columns=[f.name for f in fields(FeatureSpec)])

    # ------------------------------------------------------------------------------------------------------
    # Item columns: popularity, conversion, freshness. They read every user's events before t.

    def _cached_item_stats(self, t_ns: int) -> np.ndarray | None:
        cached = self._cached_columns(t_ns)
        return cached[0] if cached is not None else None

    def _cached_columns(self, t_ns: int) -> tuple[np.ndarray, np.ndarray] | None:
        with self._cache_lock:
            cached = self._item_stats_cache.get(t_ns)
            if cached is not None:
                self._item_stats_cache.move_to_end(t_ns)
            return cached

    def _whole_catalog_item_stats(self, t_ns: int) -> np.ndarray:
        return self._whole_catalog_columns(t_ns)[0]

    def _whole_catalog_columns(self, t_ns: int) -> tuple[np.ndarray, np.ndarray]:
        """What every user's ranking at t_ns reads of the whole catalog: the item columns (n_items, ITEM_FEATURES)
        and the arrivals at each item before t (co-occurrence's denominators), computed once per moment."""
        cached = self._cached_columns(t_ns)
        if cached is not None:
            return cached
        catalog = np.arange(self.n_items, dtype=np.int64)
        columns = (self._item_stats(catalog, np.int64(t_ns)), self._arrivals(catalog, t_ns))
        for array in columns:
            array.setflags(write=False)  # shared between callers
        with self._cache_lock:
            self._item_stats_cache[t_ns] = columns
            while len(self._item_stats_cache) > _ITEM_STATS_CACHE_SIZE:
                self._item_stats_cache.popitem(last=False)
        return columns

    def _item_stats(self, items: np.ndarray, t_ns: np.ndarray) -> np.ndarray:
        """(n, len(_ITEM_COLUMNS)) for items (n,) at moments t_ns (scalar or (n,))."""
        rank_now = np.searchsorted(self._moments, t_ns, side="left")  # events with rank < rank_now are before t
        origin = items * self._key_base
        views = np.searchsorted(self._view_keys, origin + rank_now) - self._view_origin[items]
        purchases = np.searchsorted(self._purchase_keys, origin + rank_now) - self._purchase_origin[items]
        # Purchases without a logged view still imply one, so trials never fall below purchases.
        shop_purchases = np.searchsorted(self._purchase_ranks, rank_now)
        shop_trials = np.maximum(np.searchsorted(self._view_ranks, rank_now), shop_purchases)
        shop_rate = np.divide(shop_purchases, shop_trials, out=np.zeros(np.shape(shop_trials)), where=shop_trials > 0)
        conversion = (purchases + CONVERSION_PRIOR_VIEWS * shop_rate) / (
            np.maximum(views, purchases) + CONVERSION_PRIOR_VIEWS
        )

        stats = np.zeros((len(items), len(_ITEM_COLUMNS)), dtype=np.float64)
        stats[:, _ITEM_COLUMNS.index(_COLUMN["item_conversion"])] = conversion
        if not self.clock_is_synthetic:
            rank_window = np.searchsorted(self._moments, t_ns - int(WINDOW_DAYS * _DAY_NS), side="left")
            recent = np.searchsorted(self._all_keys, origin + rank_now) - np.searchsorted(
                self._all_keys, origin + rank_window
            )
            first = self._first_seen[items]
            age_days = np.where(first < t_ns, (t_ns - np.minimum(first, t_ns)) / _DAY_NS, 0.0)
            stats[:, _ITEM_COLUMNS.index(_COLUMN["item_popularity"])] = np.log1p(recent)
            stats[:, _ITEM_COLUMNS.index(_COLUMN["item_freshness"])] = np.log1p(np.clip(age_days, 0.0, DAYS_CAP))
        return stats

    # ------------------------------------------------------------------------------------------------------
    # User columns: they read the user's events before t (`seen`) and, for co-occurrence, the other users' pairs.

    def _user_stats(self, seen: _Trail, own_seen: _Trail, t_ns: int, items: np.ndarray,
                    whole_catalog: bool = False) -> np.ndarray:
        """(n, len(_USER_COLUMNS)) for items (n,). `own_seen`: the stored user's events before t, whose pairs
        are taken out of the co-occurrence counts (the same as `seen` unless a what-if history replaced it).
        `whole_catalog`: items are the catalog in order (a ranking of every item)."""
        # Column-major: each feature is written as one contiguous column (row-major writes stride over every row).
        stats = np.zeros((len(items), len(_USER_COLUMNS)), dtype=np.float64, order="F")

        def put(name: str, values) -> None:
            stats[:, _USER_COLUMNS.index(_COLUMN[name])] = values

        if not self.clock_is_synthetic:
            put("days_since_category", np.log1p(DAYS_CAP))
        if len(seen.item) == 0:
            return stats

        # Recency weights, relative to the latest seen event: a share does not change under a common factor,
        # and nothing underflows however old the history is.
        if self.clock_is_synthetic:
            age = np.arange(len(seen.item) - 1, -1, -1, dtype=np.float64)
            weight = 0.5 ** (age / AFFINITY_HALF_LIFE_EVENTS)
        else:
            weight = 0.5 ** ((seen.time[-1] - seen.time) / _DAY_NS / AFFINITY_HALF_LIFE_DAYS)
        seen_category = self._item_category[seen.item]
        for name, item_codes, n_codes, seen_codes in (
            ("category_affinity", self._item_category, self._n_categories, seen_category),
            ("brand_affinity", self._item_brand, self._n_brands, self._item_brand[seen.item]),
        ):
            has_code = seen_codes >= 0
            # One slot past the last code holds 0, so items without a category/brand (code -1) read it.
            share = np.zeros(n_codes + 1)
            share[:n_codes] = np.bincount(seen_codes[has_code], weight[has_code], minlength=n_codes) / weight.sum()
            put(name, share[item_codes[items]])

        if not self.clock_is_synthetic:
            last_touch = np.full(self._n_categories + 1, _NOT_YET, dtype=np.int64)
            has_code = seen_category >= 0
            np.maximum.at(last_touch, seen_category[has_code], seen.time[has_code])
            never = last_touch == _NOT_YET
            gap_days = np.where(never, DAYS_CAP, (t_ns - np.where(never, t_ns, last_touch)) / _DAY_NS)
            put("days_since_category", np.log1p(np.clip(gap_days, 0.0, DAYS_CAP))[self._item_category[items]])
            window_start = t_ns - int(WINDOW_DAYS * _DAY_NS)
            recent = len(seen.time) - int(np.searchsorted(seen.time, window_start, side="left"))
            put("user_activity", np.log1p(recent))

        put("user_item_views", np.log1p(_occurrences(seen.item[seen.kind == _VIEW], items, self.n_items)))
        put("user_item_carts", np.log1p(_occurrences(seen.item[seen.kind == _CART], items, self.n_items)))

        put("price_affinity", self._price_affinity(seen, weight, items, whole_catalog))
        put("cooccurrence", self._cooccurrence(seen, own_seen, t_ns, items, whole_catalog))
        return stats

    def _price_affinity(self, seen: _Trail, weight: np.ndarray, items: np.ndarray,
                        whole_catalog: bool = False) -> np.ndarray:
        """(n,) recency-weighted share of the seen events priced within PRICE_WINDOW of each item's price."""
        seen_log_price = self._item_log_price[seen.item]
        priced = ~np.isnan(seen_log_price)
        order = np.argsort(seen_log_price[priced], kind="stable")
        prices = seen_log_price[priced][order]
        cumulative = np.concatenate([[0.0], np.cumsum(weight[priced][order])])
        item_log_price = self._item_log_price[items]
        unknown = np.isnan(item_log_price)
        if whole_catalog:  # the same searches, in price order, put back in catalog order
            within = np.empty(self.n_items)
            within[self._price_order] = cumulative[
                np.searchsorted(prices, self._price_window_upper, side="right")] - cumulative[
                np.searchsorted(prices, self._price_window_lower, side="left")]
        else:
            x = np.where(unknown, 0.0, item_log_price)
            within = cumulative[np.searchsorted(prices, x + PRICE_WINDOW, side="right")] - cumulative[
                np.searchsorted(prices, x - PRICE_WINDOW, side="left")]
        typical = float(weight[priced] @ self._price_window_share[seen.item[priced]])
        return np.where(unknown, typical, within) / weight.sum()

    def _cooccurrence(self, seen: _Trail, own_seen: _Trail, t_ns: int, items: np.ndarray,
                      whole_catalog: bool = False) -> np.ndarray:
        """(n,) share of other users' arrivals at each item before t that came from the user's last distinct
        items: pairs (a -> item) over a in those items / (all pairs (* -> item) + COOCCURRENCE_PRIOR).

        A raw count would mostly say how popular the item is (everyone arrives at a best-seller); the share says
        how much this user's recent items lead to it."""
        reversed_items = seen.item[::-1]
        distinct, first_at = np.unique(reversed_items, return_index=True)
        recent = distinct[np.argsort(first_at)[:COOCCURRENCE_RECENT_ITEMS]]  # most recent first
        successors = []
        for source in recent:
            lo, hi = self._pair_indptr[source], self._pair_indptr[source + 1]
            cut = lo + np.searchsorted(self._pair_time[lo:hi], t_ns, side="left")
            successors.append(self._pair_successor[lo:cut])
        counts = _occurrences(np.concatenate(successors), items, self.n_items)
        arrivals = self._whole_catalog_columns(t_ns)[1] if whole_catalog else self._arrivals(items, t_ns)
        if len(own_seen.item) > 1:
            # The stored user's own pairs before t, built by the same rule as the store's, are exactly the part
            # of the counts (and of the arrivals) that is not "other users".
            source, successor = own_seen.item[:-1], own_seen.item[1:]
            moved = source != successor
            counts = counts - _occurrences(successor[moved & np.isin(source, recent)], items, self.n_items)
            arrivals = arrivals - _occurrences(successor[moved], items, self.n_items)
        return counts / (arrivals + COOCCURRENCE_PRIOR)

    def _arrivals(self, items: np.ndarray, t_ns: int) -> np.ndarray:
        """(n,) pairs (* -> item) of every user before t, for items (n,)."""
        rank_now = np.searchsorted(self._moments, t_ns, side="left")
        return np.searchsorted(self._arrival_keys, items * self._key_base + rank_now) - self._arrival_origin[items]

    # ------------------------------------------------------------------------------------------------------
    # Lookups and validation

    def _stored_trail(self, user_id: str) -> _Trail:
        user_id = str(user_id)
        row = self._user_row.get(user_id)
        if row is None:
            if user_id not in self._known_users:
                raise DataError("unknown user", field="user_id", value=user_id)
            return _EMPTY_TRAIL  # known to the dataset, but no events visible to this store
        lo, hi = self._user_indptr[row], self._user_indptr[row + 1]
        return _Trail(self._event_item[lo:hi], self._event_time[lo:hi], self._event_kind[lo:hi])

    def _trail_from_frame(self, history: pd.DataFrame) -> _Trail:
        missing = [column for column in ("item_id", "timestamp", "event") if column not in history]
        if missing:
            raise DataError(f"history lacks column(s) {', '.join(missing)}", field=missing[0])
        item = self._positions(history["item_id"])
        time = _ns_array(history["timestamp"], "timestamp")
        kind = _kind_codes(history["event"])
        order = np.argsort(time, kind="stable")
        return _Trail(item[order], time[order], kind[order])

    def _positions(self, item_ids) -> np.ndarray:
        # Looked up once per distinct id (in order of first appearance), then spread over the rows.
        codes, distinct = pd.factorize(np.asarray(item_ids, dtype=object), use_na_sentinel=False)
        distinct = pd.Index(np.asarray(distinct, dtype=object).astype(str))
        positions = self._item_lookup.get_indexer(distinct)
        if (positions < 0).any():
            raise DataError("unknown item", field="item_id", value=str(distinct[int(np.flatnonzero(positions < 0)[0])]))
        return positions.astype(np.int64)[codes]

    def _item_selection(self, item_index) -> np.ndarray:
        if item_index is None:
            return np.arange(self.n_items, dtype=np.int64)
        index = np.asarray(item_index)
        if index.ndim != 1 or not (np.issubdtype(index.dtype, np.integer) or index.size == 0):
            raise DataError("item_index must be a 1-d array of catalog positions", field="item_index")
        index = index.astype(np.int64)
        outside = (index < 0) | (index >= self.n_items)
        if outside.any():
            raise DataError(
                f"catalog position out of range 0..{self.n_items - 1}",
                field="item_index",
                value=int(index[outside][0]),
            )
        return index

    def _moment(self, at, trail: _Trail) -> int:
        """t in ns. at=None: just after the last event the store or the given history knows."""
        if at is not None:
            return _ns_scalar(at)
        last = [t for t in (self._last_event_ns, int(trail.time.max()) if len(trail.time) else None) if t is not None]
        return max(last) + 1 if last else 0


_ITEM_COLUMNS = [_COLUMN[name] for name in ITEM_FEATURES]
_USER_COLUMNS = [j for j in range(len(FEATURES)) if j not in _ITEM_COLUMNS]


def _occurrences(values: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """(n,) how often each of `items` occurs in `values` (catalog positions)."""
    if len(items) * 8 >= n_items:  # most of the catalog: one bincount is cheapest
        return np.bincount(values, minlength=n_items)[items]
    ordered = np.sort(values)
    return np.searchsorted(ordered, items, side="right") - np.searchsorted(ordered, items, side="left")


def distinct_sorted(values: np.ndarray) -> np.ndarray:
    """np.unique(values) by one sort (np.unique hashes integers first, several times slower on millions)."""
    ordered = np.sort(values)
    return ordered[np.r_[True, ordered[1:] != ordered[:-1]]] if len(ordered) else ordered


def _codes(values: pd.Series) -> tuple[np.ndarray, int]:
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return codes.astype(np.int64), len(uniques)


def _kind_codes(values: pd.Series) -> np.ndarray:
    kinds = pd.Categorical(pd.Series(values).astype(str), categories=EVENT_TYPES)
    if (kinds.codes < 0).any():
        bad = pd.Series(values).astype(str)[kinds.codes < 0].iloc[0]
        raise DataError(f"unknown event type; expected one of {', '.join(EVENT_TYPES)}", field="event", value=bad)
    return kinds.codes.astype(np.int8)


def _ns_array(values, field: str) -> np.ndarray:
    """UTC ns since the epoch; naive timestamps are taken as UTC, the contract's zone."""
    try:
        index = pd.DatetimeIndex(pd.to_datetime(pd.Series(values), utc=True))
    except (TypeError, ValueError) as exc:
        raise DataError(f"not a timestamp ({exc})", field=field) from exc
    if index.isna().any():
        raise DataError("timestamp is missing", field=field)
    return index.as_unit("ns").asi8.astype(np.int64)


def _ns_scalar(at) -> int:
    try:
        moment = pd.Timestamp(at)
    except (TypeError, ValueError) as exc:
        raise DataError("not a timestamp", field="at", value=str(at)) from exc
    if moment is pd.NaT:
        raise DataError("timestamp is missing", field="at")
    moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
    return int(moment.as_unit("ns").value)
