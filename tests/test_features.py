"""Behaviour features: hand-worked values, point-in-time safety, vectorised == per-item reference, neutral defaults."""

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.features import (
    AFFINITY_HALF_LIFE_DAYS,
    AFFINITY_HALF_LIFE_EVENTS,
    CONVERSION_PRIOR_VIEWS,
    COOCCURRENCE_PRIOR,
    COOCCURRENCE_RECENT_ITEMS,
    DAYS_CAP,
    FEATURE_NAMES,
    FEATURES,
    PRICE_WINDOW,
    WINDOW_DAYS,
    FeatureStore,
)
from data.schema import EVENT_TYPES, make_dataset

T0 = pd.Timestamp("2024-03-01", tz="UTC")
DAY = pd.Timedelta(days=1)
COL = {name: j for j, name in enumerate(FEATURE_NAMES)}


def items_frame(rows):
    """rows: (item_id, category, brand, price)"""
    return pd.DataFrame(
        {
            "item_id": [r[0] for r in rows],
            "title": [f"Title {r[0]}" for r in rows],
            "category": pd.Series([r[1] for r in rows], dtype=object),
            "brand": pd.Series([r[2] for r in rows], dtype=object),
            "description": pd.Series([None] * len(rows), dtype=object),
            "price": pd.Series([r[3] for r in rows], dtype="float64"),
        }
    )


def events_frame(rows):
    """rows: (user_id, item_id, timestamp, event)"""
    return pd.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "item_id": [r[1] for r in rows],
            "timestamp": pd.to_datetime([r[2] for r in rows], utc=True),
            "event": pd.Categorical([r[3] for r in rows], categories=EVENT_TYPES),
            "value": np.nan,
        }
    )


def dataset(item_rows, event_rows, synthetic_clock=False):
    return make_dataset(
        items_frame(item_rows), events_frame(event_rows), source="test", format="test", synthetic_clock=synthetic_clock
    )


# A shop small enough to work out by hand. u1: a view, a cart, c view; u2: a view, b view, b purchase.
SHOP_ITEMS = [
    ("a", "mugs", "acme", 10.0),
    ("b", "mugs", "zeta", np.nan),
    ("c", "pans", "forge", 30.0),
    ("d", None, None, 20.0),
]
SHOP_EVENTS = [
    ("u1", "a", T0, "view"),
    ("u1", "a", T0 + DAY, "cart"),
    ("u1", "c", T0 + 2 * DAY, "view"),
    ("u2", "a", T0 + DAY, "view"),
    ("u2", "b", T0 + DAY + pd.Timedelta(hours=1), "view"),
    ("u2", "b", T0 + 3 * DAY, "purchase"),
    ("u3", "a", T0 + 10 * DAY, "view"),  # after every moment asked below
]


@pytest.fixture
def shop():
    return dataset(SHOP_ITEMS, SHOP_EVENTS)


def by_item(store, values):
    return pd.DataFrame(values, columns=list(FEATURE_NAMES), index=store.item_ids)


# ---------------------------------------------------------------------------------------------------------
# The one list of features


def test_every_feature_has_a_unique_name_a_unit_and_a_meaning():
    names = [spec.name for spec in FEATURES]
    assert len(set(names)) == len(names)
    assert tuple(names) == FEATURE_NAMES
    for spec in FEATURES:
        assert spec.name.isidentifier() and spec.label.strip() and spec.unit.strip() and spec.meaning.strip(), spec
    required = {"category_affinity", "brand_affinity", "days_since_category", "user_item_views", "user_item_carts",
                "price_affinity", "item_popularity", "item_conversion", "user_activity", "item_freshness", "cooccurrence"}
    assert required <= set(names)


def test_describe_lists_the_specs(shop):
    described = FeatureStore(shop).describe()
    assert list(described.columns) == ["name", "label", "unit", "meaning", "needs_clock"]
    assert list(described["name"]) == list(FEATURE_NAMES)
    assert described.set_index("name").loc["item_popularity", "needs_clock"]
    assert not described.set_index("name").loc["category_affinity", "needs_clock"]


# ---------------------------------------------------------------------------------------------------------
# Values worked out by hand


def test_known_values_for_a_hand_made_shop(shop):
    store = FeatureStore(shop)
    f = by_item(store, store.user_features("u1", at=T0 + 4 * DAY))

    # u1's events are 2, 1 and 0 days older than the latest: weights 2^(-2/30), 2^(-1/30), 1.
    w = [2 ** (-2 / AFFINITY_HALF_LIFE_DAYS), 2 ** (-1 / AFFINITY_HALF_LIFE_DAYS), 1.0]
    assert f.loc["a", "category_affinity"] == pytest.approx((w[0] + w[1]) / sum(w), rel=1e-6)
    assert f.loc["b", "category_affinity"] == pytest.approx((w[0] + w[1]) / sum(w), rel=1e-6)  # also mugs
    assert f.loc["c", "category_affinity"] == pytest.approx(w[2] / sum(w), rel=1e-6)
    assert f.loc["d", "category_affinity"] == 0.0  # no category
    assert f.loc["c", "brand_affinity"] == pytest.approx(w[2] / sum(w), rel=1e-6)
    assert f.loc["b", "brand_affinity"] == 0.0  # zeta: never touched

    assert f.loc["a", "days_since_category"] == pytest.approx(math.log1p(3), rel=1e-6)  # mugs last on day 1
    assert f.loc["c", "days_since_category"] == pytest.approx(math.log1p(2), rel=1e-6)
    assert f.loc["d", "days_since_category"] == pytest.approx(math.log1p(DAYS_CAP), rel=1e-6)

    assert f.loc["a", "user_item_views"] == pytest.approx(math.log(2))
    assert f.loc["a", "user_item_carts"] == pytest.approx(math.log(2))
    assert f.loc["c", "user_item_carts"] == 0.0

    # Prices u1 looked at: 10, 10, 30. Nothing of theirs is within 15% of 20; a at 10 has a's two events.
    assert f.loc["a", "price_affinity"] == pytest.approx((w[0] + w[1]) / sum(w), rel=1e-6)
    assert f.loc["c", "price_affinity"] == pytest.approx(w[2] / sum(w), rel=1e-6)
    assert f.loc["d", "price_affinity"] == 0.0
    # b has no price: the share a random priced item would get. Each of 10, 20, 30 has only itself within 15%.
    assert f.loc["b", "price_affinity"] == pytest.approx(1 / 3, rel=1e-6)

    assert f.loc["a", "item_popularity"] == pytest.approx(math.log1p(3), rel=1e-6)  # u1 view + cart, u2 view
    assert f.loc["b", "item_popularity"] == pytest.approx(math.log1p(2), rel=1e-6)
    assert f.loc["d", "item_popularity"] == 0.0

    # Shop before day 4: 4 views, 1 purchase -> prior 1/4, worth 10 views.
    prior = CONVERSION_PRIOR_VIEWS * 0.25
    assert f.loc["a", "item_conversion"] == pytest.approx(prior / (2 + CONVERSION_PRIOR_VIEWS), rel=1e-6)
    assert f.loc["b", "item_conversion"] == pytest.approx((1 + prior) / (1 + CONVERSION_PRIOR_VIEWS), rel=1e-6)
    assert f.loc["d", "item_conversion"] == pytest.approx(0.25, rel=1e-6)

    assert f.loc["a", "user_activity"] == pytest.approx(math.log1p(3), rel=1e-6)
    assert f.loc["a", "item_freshness"] == pytest.approx(math.log1p(4), rel=1e-6)
    assert f.loc["b", "item_freshness"] == pytest.approx(math.log1p(3 - 1 / 24), rel=1e-6)
    assert f.loc["d", "item_freshness"] == 0.0

    # u1's last items: c, a. Other users arrived at b once, from a; u1's own a -> c does not count.
    assert f.loc["b", "cooccurrence"] == pytest.approx(1 / (1 + COOCCURRENCE_PRIOR))
    assert f.loc["c", "cooccurrence"] == 0.0


def test_events_at_the_moment_itself_are_not_seen(shop):
    store = FeatureStore(shop)
    # u2's purchase of b is exactly at day 3: at day 3 the shop has 4 views and no purchase yet.
    at_purchase = by_item(store, store.user_features("u2", at=T0 + 3 * DAY))
    assert at_purchase.loc["b", "item_conversion"] == 0.0
    assert at_purchase.loc["b", "user_item_views"] == pytest.approx(math.log(2))
    just_after = by_item(store, store.user_features("u2", at=T0 + 3 * DAY + pd.Timedelta(1, "ns")))
    assert just_after.loc["b", "item_conversion"] > 0.0


def test_synthetic_clock_zeroes_what_needs_a_clock_and_decays_by_order():
    store = FeatureStore(dataset(SHOP_ITEMS, SHOP_EVENTS, synthetic_clock=True))
    assert store.clock_is_synthetic
    values = store.user_features("u1", at=T0 + 4 * DAY)
    for spec in FEATURES:
        if spec.needs_clock:
            assert (values[:, COL[spec.name]] == 0).all(), spec.name
    w = [2 ** (-2 / AFFINITY_HALF_LIFE_EVENTS), 2 ** (-1 / AFFINITY_HALF_LIFE_EVENTS), 1.0]
    assert values[0, COL["category_affinity"]] == pytest.approx((w[0] + w[1]) / sum(w), rel=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Point in time


def random_rows(rng, n_items=30, n_users=8, n_events=160, item_prefix="i", user_prefix="u", start=T0, days=60):
    categories = ["mugs", "pans", "cups", None]
    brands = ["acme", "zeta", "forge", None]
    item_rows = [
        (f"{item_prefix}{i}", rng.choice(categories), rng.choice(brands),
         np.nan if rng.random() < 0.2 else float(np.round(rng.lognormal(3, 1), 2)))
        for i in range(n_items)
    ]
    # Whole hours over `days`, so many events share a moment across users and ties are exercised.
    event_rows = [
        (f"{user_prefix}{rng.integers(n_users)}", item_rows[rng.integers(n_items)][0],
         start + pd.Timedelta(hours=int(rng.integers(days * 24))), rng.choice(["view"] * 6 + ["cart", "purchase"]))
        for _ in range(n_events)
    ]
    return item_rows, event_rows


def test_events_at_or_after_t_change_no_feature_at_t():
    rng = np.random.default_rng(0)
    item_rows, event_rows = random_rows(rng)
    base = dataset(item_rows, event_rows)
    moments = [T0 + 20 * DAY, T0 + 41 * DAY + pd.Timedelta(hours=5)]
    users = list(base.user_ids)

    # New items come unpriced: an unpriced item's price affinity reads the catalog's prices, not only events.
    new_items = [(f"new{i}", "mugs", "acme", np.nan) for i in range(5)]
    later = []
    for t in moments[-1:]:
        # The user's own events, other users', brand-new users', events on brand-new items, and events at t exactly.
        for k in range(60):
            user = users[k % len(users)] if k % 3 else f"stranger{k}"
            item = (item_rows + new_items)[int(rng.integers(len(item_rows) + len(new_items)))][0]
            moment = t if k % 5 == 0 else t + pd.Timedelta(hours=int(rng.integers(1, 500)))
            later.append((user, item, moment, rng.choice(["view", "cart", "purchase"])))
    extended = dataset(item_rows + new_items, event_rows + later)

    before, after = FeatureStore(base), FeatureStore(extended)
    old_catalog = np.arange(len(item_rows))
    for t in moments:
        for user in users:
            np.testing.assert_array_equal(
                after.user_features(user, at=t, item_index=old_catalog), before.user_features(user, at=t),
                err_msg=f"{user} at {t}",
            )
        pairs_before = before.pair_features(users, [0] * len(users), [t] * len(users))
        pairs_after = after.pair_features(users, [0] * len(users), [t] * len(users))
        np.testing.assert_array_equal(pairs_after, pairs_before)


def test_an_event_before_t_does_change_features_at_t():
    rng = np.random.default_rng(1)
    item_rows, event_rows = random_rows(rng)
    t = T0 + 30 * DAY
    base_data = dataset(item_rows, event_rows)
    user = base_data.user_ids[0]
    base = FeatureStore(base_data)
    other_user = dataset(item_rows, [*event_rows, ("someone else", "i3", t - pd.Timedelta(hours=1), "view")])
    own = dataset(item_rows, [*event_rows, (user, "i3", t - pd.Timedelta(hours=1), "cart")])

    changed_by_other = FeatureStore(other_user).user_features(user, at=t) != base.user_features(user, at=t)
    assert changed_by_other[3, COL["item_popularity"]]
    assert not changed_by_other[:, COL["user_activity"]].any()
    changed_by_own = FeatureStore(own).user_features(user, at=t) != base.user_features(user, at=t)
    assert changed_by_own[3, COL["user_item_carts"]] and changed_by_own[:, COL["user_activity"]].all()


def test_a_store_of_visible_events_answers_like_the_full_store_before_its_cutoff():
    rng = np.random.default_rng(2)
    full = dataset(*random_rows(rng))
    cutoff = T0 + 25 * DAY
    visible = full.events[full.events["timestamp"] < cutoff]
    training, complete = FeatureStore(full, events=visible), FeatureStore(full)
    for user in full.user_ids:
        np.testing.assert_array_equal(training.user_features(user, at=cutoff), complete.user_features(user, at=cutoff))


# ---------------------------------------------------------------------------------------------------------
# Vectorised == a slow per-item reference written from the definitions


def reference_features(ds, user, item_id, t, synthetic_clock=False):
    """Every feature of (user, item, t) from the FeatureSpec meanings, one event at a time."""
    events = ds.events  # sorted by (user, timestamp), stable: each user's order is the store's order
    rows = [r for r in events.itertuples(index=False) if r.timestamp < t]
    mine = [r for r in rows if r.user_id == user]
    items = ds.items.set_index("item_id")
    category = items["category"].to_dict()
    brand = items["brand"].to_dict()
    log_price = {k: math.log1p(v) for k, v in items["price"].items() if not pd.isna(v)}
    window_start = t - pd.Timedelta(days=WINDOW_DAYS)
    days = lambda delta: delta / pd.Timedelta(days=1)  # noqa: E731
    out = dict.fromkeys(FEATURE_NAMES, 0.0)

    if mine:
        if synthetic_clock:
            weights = [0.5 ** ((len(mine) - 1 - k) / AFFINITY_HALF_LIFE_EVENTS) for k in range(len(mine))]
        else:
            weights = [0.5 ** (days(t - r.timestamp) / AFFINITY_HALF_LIFE_DAYS) for r in mine]
        for name, attribute in (("category_affinity", category), ("brand_affinity", brand)):
            mine_value = attribute[item_id]
            if mine_value is not None:
                out[name] = sum(w for w, r in zip(weights, mine) if attribute[r.item_id] == mine_value) / sum(weights)
    touched = [r.timestamp for r in mine if category[item_id] is not None and category[r.item_id] == category[item_id]]
    gap = days(t - max(touched)) if touched else DAYS_CAP
    out["days_since_category"] = math.log1p(min(gap, DAYS_CAP))
    out["user_item_views"] = math.log1p(sum(r.item_id == item_id and r.event == "view" for r in mine))
    out["user_item_carts"] = math.log1p(sum(r.item_id == item_id and r.event == "cart" for r in mine))
    if mine:
        def within(a, b):
            return abs(log_price[a] - log_price[b]) <= PRICE_WINDOW

        priced = [(w, r.item_id) for w, r in zip(weights, mine) if r.item_id in log_price]
        if item_id in log_price:
            out["price_affinity"] = sum(w for w, seen in priced if within(seen, item_id)) / sum(weights)
        else:  # the expected share of a random priced item
            out["price_affinity"] = float(np.mean([sum(w for w, seen in priced if within(seen, other))
                                                   for other in log_price])) / sum(weights)
    out["item_popularity"] = math.log1p(sum(r.item_id == item_id and r.timestamp >= window_start for r in rows))
    views = sum(r.item_id == item_id and r.event == "view" for r in rows)
    purchases = sum(r.item_id == item_id and r.event == "purchase" for r in rows)
    shop_views = sum(r.event == "view" for r in rows)
    shop_purchases = sum(r.event == "purchase" for r in rows)
    shop_rate = shop_purchases / max(shop_views, shop_purchases) if max(shop_views, shop_purchases) else 0.0
    out["item_conversion"] = (purchases + CONVERSION_PRIOR_VIEWS * shop_rate) / (
        max(views, purchases) + CONVERSION_PRIOR_VIEWS
    )
    out["user_activity"] = math.log1p(sum(r.timestamp >= window_start for r in mine))
    first = [r.timestamp for r in rows if r.item_id == item_id]
    out["item_freshness"] = math.log1p(min(days(t - min(first)), DAYS_CAP)) if first else 0.0

    recent = []
    for r in reversed(mine):
        if r.item_id not in recent:
            recent.append(r.item_id)
    recent = recent[:COOCCURRENCE_RECENT_ITEMS]
    follows = arrivals = 0
    for other in {r.user_id for r in rows} - {user}:
        sequence = [r.item_id for r in rows if r.user_id == other]
        follows += sum(a in recent and b == item_id and a != b for a, b in itertools.pairwise(sequence))
        arrivals += sum(b == item_id and a != b for a, b in itertools.pairwise(sequence))
    out["cooccurrence"] = follows / (arrivals + COOCCURRENCE_PRIOR)

    if synthetic_clock:
        for spec in FEATURES:
            if spec.needs_clock:
                out[spec.name] = 0.0
    return [out[name] for name in FEATURE_NAMES]


@pytest.mark.parametrize("synthetic_clock", [False, True])
def test_vectorised_features_equal_the_per_item_reference(synthetic_clock):
    rng = np.random.default_rng(3)
    ds = dataset(*random_rows(rng, n_items=25, n_users=6, n_events=140), synthetic_clock=synthetic_clock)
    store = FeatureStore(ds)
    # A moment between events, one exactly on an event, and one after all of them.
    moments = [T0 + 17 * DAY + pd.Timedelta(minutes=30), ds.events["timestamp"].iloc[40], T0 + 90 * DAY]
    for user in ds.user_ids[:4]:
        for t in moments:
            expected = np.array([reference_features(ds, user, i, t, synthetic_clock) for i in ds.item_ids])
            np.testing.assert_allclose(store.user_features(user, at=t), expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{user} at {t}")


def test_pair_features_equal_user_features_rows():
    rng = np.random.default_rng(4)
    ds = dataset(*random_rows(rng))
    store = FeatureStore(ds)
    picks = rng.choice(len(ds.events), 40, replace=False)
    users = ds.events["user_id"].to_numpy()[picks]
    items = ds.events["item_id"].to_numpy()[picks]
    moments = ds.events["timestamp"].iloc[picks]
    by_id = store.pair_features(users, items, moments)
    by_position = store.pair_features(users, [ds.item_position[i] for i in items], list(moments))
    np.testing.assert_array_equal(by_id, by_position)
    for n, (user, item, t) in enumerate(zip(users, items, moments)):
        row = store.user_features(user, at=t, item_index=np.array([ds.item_position[item]]))[0]
        np.testing.assert_array_equal(by_id[n], row)
        np.testing.assert_array_equal(by_id[n], store.user_features(user, at=t)[ds.item_position[item]])


# ---------------------------------------------------------------------------------------------------------
# Neutral values, errors, what-if histories


NEUTRAL_USER_VALUES = {
    "category_affinity": 0.0,
    "brand_affinity": 0.0,
    "days_since_category": math.log1p(DAYS_CAP),
    "user_item_views": 0.0,
    "user_item_carts": 0.0,
    "price_affinity": 0.0,
    "user_activity": 0.0,
    "cooccurrence": 0.0,
}


def test_a_user_without_history_gets_neutral_finite_features(shop):
    store = FeatureStore(shop)
    empty_history = events_frame([]).drop(columns="user_id")
    for values in (
        store.user_features("u3", at=T0 + 4 * DAY),  # known, but nothing yet at t
        store.user_features("newcomer", history=empty_history),  # unknown, given an empty history
        store.user_features(None, history=empty_history),  # anonymous (query mode)
        store.user_features("u1", at=T0 - DAY),  # before the shop opened
    ):
        assert values.dtype == np.float32 and values.shape == (4, len(FEATURES))
        assert np.isfinite(values).all()
        for name, neutral in NEUTRAL_USER_VALUES.items():
            np.testing.assert_allclose(values[:, COL[name]], neutral, rtol=1e-6, err_msg=name)


def test_no_feature_is_ever_nan_or_infinite():
    rng = np.random.default_rng(5)
    ds = dataset(*random_rows(rng))
    store = FeatureStore(ds)
    for user in ds.user_ids:
        for t in (None, T0, T0 + 30 * DAY, T0 + 400 * DAY):
            assert np.isfinite(store.user_features(user, at=t)).all(), (user, t)


def test_unknown_user_is_a_data_error_naming_it(shop):
    store = FeatureStore(shop)
    with pytest.raises(DataError, match="nobody-here"):
        store.user_features("nobody-here")
    with pytest.raises(DataError, match="nobody-here"):
        store.pair_features(["u1", "nobody-here"], ["a", "b"], None)
    with pytest.raises(DataError, match="user_id"):
        store.user_features(None)
    with pytest.raises(DataError, match="'zz'"):
        store.pair_features(["u1"], ["zz"], None)


def test_history_override_reads_the_given_events_and_keeps_item_stats(shop):
    store = FeatureStore(shop)
    t = T0 + 4 * DAY
    stored = store.user_features("u1", at=t)
    own = shop.user_events("u1").drop(columns="user_id")
    np.testing.assert_array_equal(store.user_features("u1", at=t, history=own), stored)

    edited = pd.concat([own, events_frame([("u1", "d", T0 + 3 * DAY, "view")]).drop(columns="user_id")])
    what_if = store.user_features("u1", at=t, history=edited)
    d = shop.item_position["d"]
    assert what_if[d, COL["user_item_views"]] == pytest.approx(math.log(2))
    assert stored[d, COL["user_item_views"]] == 0.0
    item_columns = [COL["item_popularity"], COL["item_conversion"], COL["item_freshness"]]
    np.testing.assert_array_equal(what_if[:, item_columns], stored[:, item_columns])

    # A visitor nobody has seen, with one view of a: other users' a -> b shows up as co-occurrence.
    visitor = store.user_features("visitor", at=t, history=events_frame([("x", "a", T0, "view")]).drop(columns="user_id"))
    assert visitor[shop.item_position["b"], COL["cooccurrence"]] == pytest.approx(1 / (1 + COOCCURRENCE_PRIOR))
    # u1's a -> c counts for the visitor, the only arrival at c
    assert visitor[shop.item_position["c"], COL["cooccurrence"]] == pytest.approx(1 / (1 + COOCCURRENCE_PRIOR))


def test_history_with_an_unknown_item_is_a_data_error(shop):
    with pytest.raises(DataError, match="'nope'"):
        FeatureStore(shop).user_features("u1", history=events_frame([("u1", "nope", T0, "view")]))


def test_item_index_selects_rows_of_the_whole_catalog(shop):
    store = FeatureStore(shop)
    whole = store.user_features("u2")
    np.testing.assert_array_equal(store.user_features("u2", item_index=np.array([3, 0])), whole[[3, 0]])
    with pytest.raises(DataError, match="out of range"):
        store.user_features("u2", item_index=np.array([4]))


def test_the_whole_catalog_equals_its_items_asked_for_in_any_order():
    # A ranking of every item takes its own path (price windows searched in price order, arrivals kept per moment);
    # its rows are the very numbers asked for item by item, unpriced items and several moments included.
    rng = np.random.default_rng(8)
    ds = dataset(*random_rows(rng, n_items=40, n_users=7, n_events=220))
    shuffled = rng.permutation(len(ds.item_ids))
    for t in (None, T0 + 17 * DAY + pd.Timedelta(minutes=30), ds.events["timestamp"].iloc[90]):
        for user in ds.user_ids[:5]:
            whole = FeatureStore(ds).user_features(user, at=t)
            asked = FeatureStore(ds).user_features(user, at=t, item_index=shuffled)
            np.testing.assert_array_equal(whole[shuffled], asked, err_msg=f"{user} at {t}")
            store = FeatureStore(ds)  # the second ranking at a moment reads what the first one kept
            store.user_features(ds.user_ids[-1], at=t)
            np.testing.assert_array_equal(store.user_features(user, at=t), whole, err_msg=f"{user} at {t}, kept")


def test_prepared_item_columns_are_read_for_any_items_at_that_moment_and_equal_them(shop, monkeypatch):
    rng = np.random.default_rng(5)
    ds = dataset(*random_rows(rng, n_items=25, n_users=6, n_events=140))
    items = np.array([7, 3, 3, 20])
    fresh = FeatureStore(ds).user_features(ds.user_ids[0], item_index=items)  # searched for these items alone
    store = FeatureStore(ds)
    store.prepare_item_columns()
    monkeypatch.setattr(store, "_item_stats", lambda *a: pytest.fail("searched again at a prepared moment"))
    np.testing.assert_array_equal(store.user_features(ds.user_ids[0], item_index=items), fresh)
    np.testing.assert_array_equal(store.user_features(ds.user_ids[0])[items], fresh)
    # Another moment has not been prepared: it is searched (the patched search says so).
    with pytest.raises(pytest.fail.Exception, match="searched again"):
        store.user_features(ds.user_ids[0], at=T0 + 17 * DAY, item_index=items)


def test_the_order_of_the_given_events_does_not_matter():
    rng = np.random.default_rng(6)
    ds = dataset(*random_rows(rng))
    shuffled = ds.events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    in_order, out_of_order = FeatureStore(ds), FeatureStore(ds, events=shuffled)
    t = T0 + 45 * DAY
    for user in ds.user_ids:
        np.testing.assert_array_equal(out_of_order.user_features(user, at=t), in_order.user_features(user, at=t))


def test_distinct_moments_are_numpys_unique():
    from data.features import distinct_sorted

    rng = np.random.default_rng(0)
    for values in (np.empty(0, np.int64), rng.integers(0, 50, 500), rng.integers(-(2**62), 2**62, 1000)):
        assert np.array_equal(distinct_sorted(values), np.unique(values))


def test_items_are_looked_up_per_distinct_id_and_the_first_unknown_is_named(shop):
    store = FeatureStore(shop)
    ids = list(store.item_ids)
    assert store._positions([ids[2], ids[0], ids[2], ids[1], ids[0]]).tolist() == [2, 0, 2, 1, 0]
    with pytest.raises(DataError, match="missing-one"):
        store._positions([ids[0], "missing-one", "missing-two", ids[1]])
