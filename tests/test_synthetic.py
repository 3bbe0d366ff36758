"""The synthetic shop: seeded, the promised size, and its planted tastes really drive what shoppers do."""

import dataclasses
import json
import re

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.io import load_dataset, write_tables
from data.schema import make_dataset
from data.synthetic import (
    BEST_SELLER_SHARE,
    CATEGORIES,
    CAUSES,
    PRICE_POINT_WIDTH,
    TASTE_CAUSES,
    TIERS,
    WINDOW_END,
    WINDOW_START,
    Simulation,
    event_causes,
    generate,
)

SESSION_BREAK = pd.Timedelta(minutes=20)  # the generator keeps sessions of one shopper 30 minutes apart


@pytest.fixture(scope="module")
def shop():
    return generate()  # the default size, as the demo builds it


@pytest.fixture(scope="module")
def small_shop():
    return generate(n_users=300, n_items=200, seed=7, target_events=8000)


# Large shops draw their shoppers and sessions as arrays, in blocks; forced here at the demo's size, in four blocks.
VECTORISED = Simulation(vectorised_from=0, block_users=512, workers=1)


@pytest.fixture(scope="module")
def vectorised_shop():
    return generate(simulation=VECTORISED)


@pytest.fixture(scope="module", params=["shop", "vectorised_shop"])
def planted_shop(request):
    """The demo shop, then the same size drawn the way large shops are: both must show what was planted."""
    return request.getfixturevalue(request.param)


def title_words(title: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", title.lower()))


def assert_same_truth(dataset, other):
    """The same planted truth: tastes, vocabulary and dirt equal, the same cause on every event."""
    truth, other_truth = dict(dataset.ground_truth), dict(other.ground_truth)
    assert {k: v for k, v in truth.items() if k != "event_causes"} == {
        k: v for k, v in other_truth.items() if k != "event_causes"}
    pd.testing.assert_frame_equal(event_causes(dataset), event_causes(other))


def with_items(dataset):
    """Events joined with their item's brand, category and title."""
    return dataset.events.merge(dataset.items[["item_id", "brand", "category", "title"]], on="item_id", how="left")


def test_same_seed_gives_the_same_shop(small_shop):
    again = generate(n_users=300, n_items=200, seed=7, target_events=8000)
    pd.testing.assert_frame_equal(again.items, small_shop.items)
    pd.testing.assert_frame_equal(again.events, small_shop.events)
    assert again.meta.fingerprint == small_shop.meta.fingerprint
    assert_same_truth(again, small_shop)


def test_a_smaller_crowd_shops_in_the_same_catalog_with_the_same_tastes(small_shop):
    fewer = generate(n_users=50, n_items=200, seed=7, target_events=1000)
    pd.testing.assert_frame_equal(fewer.items, small_shop.items)
    assert fewer.ground_truth["users"] == {u: small_shop.ground_truth["users"][u] for u in fewer.ground_truth["users"]}


def test_another_seed_gives_another_shop(small_shop):
    other = generate(n_users=300, n_items=200, seed=8, target_events=8000)
    assert other.meta.fingerprint != small_shop.meta.fingerprint
    assert other.ground_truth["users"] != small_shop.ground_truth["users"]
    assert other.items["title"].tolist() != small_shop.items["title"].tolist()


def test_default_size(planted_shop):
    summary = planted_shop.summary()
    assert summary["users"] == 2000
    assert summary["items"] == 1500
    assert abs(summary["events"] - 60000) < 6000
    assert set(summary["event_types"]) == {"view", "cart", "purchase", "rating"}
    # A funnel: most views go nowhere, fewer carts, fewer purchases.
    counts = summary["event_types"]
    assert counts["view"] > 3 * counts["cart"]
    assert counts["cart"] > counts["purchase"] > 5 * counts["rating"]


def test_size_follows_the_arguments(small_shop):
    assert small_shop.events["user_id"].nunique() == 300
    assert len(small_shop.items) == 200
    assert abs(len(small_shop.events) - 8000) < 1200
    assert small_shop.events.groupby("user_id").size().min() >= 3  # enough to hold out a last and second-to-last


def test_every_category_has_its_own_vocabulary(shop):
    assert len(CATEGORIES) >= 10
    assert shop.items["category"].nunique() >= 10
    vocabulary = shop.ground_truth["vocabulary"]
    brands = vocabulary["brands"]
    words = {w for attributes in vocabulary["attributes"].values() for w in attributes}
    # Brands are single words, unique across the shop, and never also an attribute word.
    assert all(re.fullmatch(r"[A-Z][a-z]+", brand) for brand in brands)
    assert len({b.lower() for b in brands}) == len(brands)
    assert not {b.lower() for b in brands} & words
    for category in vocabulary["attributes"]:
        tiers = {info["tier"] for info in brands.values() if info["category"] == category}
        assert tiers == set(TIERS), category
    item_brand_category = shop.items[["brand", "category"]].drop_duplicates()
    assert all(brands[b]["category"] == c for b, c in item_brand_category.itertuples(index=False))


def test_titles_carry_brand_and_attribute_words(shop):
    for item in shop.items.itertuples():
        assert item.title.split()[0] == item.brand
        assert re.fullmatch(r"[A-Za-z ,]+", item.title), item.title
    attributes_of = shop.ground_truth["vocabulary"]["attributes"]
    has_attribute = [
        bool(title_words(t) & set(attributes_of[c])) for t, c in zip(shop.items["title"], shop.items["category"])
    ]
    assert all(has_attribute)


def test_every_planted_taste_is_a_word_in_some_title(planted_shop):
    in_titles = set().union(*map(title_words, planted_shop.items["title"]))
    users = planted_shop.ground_truth["users"]
    assert sorted(users) == sorted(planted_shop.user_ids)
    for user_id, taste in users.items():
        assert 1 <= len(taste["categories"]) <= 3 and 1 <= len(taste["brands"]) <= 2
        assert 2 <= len(taste["attributes"]) <= 4
        assert all(b.lower() in in_titles for b in taste["brands"]), user_id
        assert all(a in in_titles for a in taste["attributes"]), user_id
        low, high = taste["price_band"]
        assert 0 < low <= high and taste["activity"] > 0


def test_prices_follow_the_brand_tier(shop):
    tier = shop.items["brand"].map(lambda b: shop.ground_truth["vocabulary"]["brands"][b]["tier"])
    median = shop.items.assign(tier=tier).groupby(["category", "tier"])["price"].median().unstack()
    assert (median["budget"] < median["mid"]).mean() >= 0.8
    assert (median["mid"] < median["premium"]).mean() >= 0.8


def test_events_stay_in_the_window_and_each_user_has_a_clear_order(planted_shop):
    times = planted_shop.events["timestamp"]
    assert times.min() >= WINDOW_START and times.max() < WINDOW_END
    # No two events of one shopper share a second, so the order within a user is never a tie-break.
    same_user = planted_shop.events["user_id"].eq(planted_shop.events["user_id"].shift())
    assert (times.diff()[same_user] > pd.Timedelta(0)).all()
    assert times.dt.month.nunique() == 4


def test_view_comes_before_cart_before_purchase_in_a_session(planted_shop):
    events = planted_shop.events
    gap = events.groupby("user_id")["timestamp"].diff()
    session = (gap.isna() | (gap > SESSION_BREAK)).cumsum()
    first = {
        kind: events[events["event"] == kind].assign(session=session).groupby(["session", "item_id"])["timestamp"].min()
        for kind in ("view", "cart", "purchase")
    }
    purchases = first["purchase"]
    carts, views = first["cart"].reindex(purchases.index), first["view"].reindex(purchases.index)
    in_order = (views < carts) & (carts < purchases)
    assert in_order.mean() > 0.8
    assert (views < purchases).mean() > 0.95


def test_purchases_hit_favourite_brands_categories_and_words_far_more_than_chance(planted_shop):
    users = planted_shop.ground_truth["users"]
    purchases = with_items(planted_shop).query("event == 'purchase'")
    words = [title_words(t) for t in planted_shop.items["title"]]
    brand_share = planted_shop.items["brand"].value_counts(normalize=True).to_dict()
    category_share = planted_shop.items["category"].value_counts(normalize=True).to_dict()
    # Chance: the share of the catalog a shopper would hit buying at random.
    chance = {
        u: (
            sum(brand_share[b] for b in taste["brands"]),
            sum(category_share[c] for c in taste["categories"]),
            np.mean([bool(w & set(taste["attributes"])) for w in words]),
        )
        for u, taste in users.items()
    }
    hits = [
        (b in users[u]["brands"], c in users[u]["categories"], bool(title_words(t) & set(users[u]["attributes"])))
        for u, b, c, t in zip(purchases["user_id"], purchases["brand"], purchases["category"], purchases["title"])
    ]
    hit_rate = np.mean(hits, axis=0)
    chance_rate = np.mean([chance[u] for u in purchases["user_id"]], axis=0)
    brand, category, word = hit_rate / chance_rate
    assert brand > 5 and category > 2 and word > 3
    assert hit_rate[1] > 0.6  # most purchases stay on the favourite shelves


def test_tastes_drift_toward_their_end_weights(planted_shop):
    # Events a favourite caused late in the window lean to favourites whose weight grew.
    users = planted_shop.ground_truth["users"]
    causes = event_causes(planted_shop)
    kinds = {"brand": "brands", "category": "categories", "attribute": "attributes"}
    fired = causes[causes["cause"].isin(list(kinds))]
    growth = []
    for user_id, cause, token in zip(fired["user_id"], fired["cause"], fired["token"]):
        taste, kind = users[user_id], kinds[cause]
        k = taste[kind].index(token)
        growth.append(taste["drift"]["end"][kind][k] - taste["drift"]["start"][kind][k])
    growth = pd.Series(growth, index=fired.index)
    month = fired["timestamp"].dt.month
    assert growth[month == 4].mean() > growth[month == 1].mean() + 0.03  # about 0.05 at this size


def test_causes_line_up_with_the_events(planted_shop):
    causes = event_causes(planted_shop)
    assert causes.columns.tolist() == ["user_id", "item_id", "timestamp", "event", "cause", "token"]
    pd.testing.assert_frame_equal(causes[list(planted_shop.events.columns[:4])], planted_shop.events[list(planted_shop.events.columns[:4])])
    assert len(planted_shop.ground_truth["event_causes"]) == len(planted_shop.events)
    assert set(causes["cause"]) == set(CAUSES)
    users = planted_shop.ground_truth["users"]
    item = planted_shop.items.set_index("item_id").loc[causes["item_id"]].reset_index(drop=True)
    for row in pd.concat([causes, item[["brand", "category", "title"]]], axis=1).itertuples():
        if row.cause == "brand":
            assert row.token == row.brand and row.token in users[row.user_id]["brands"]
        elif row.cause == "attribute":
            assert row.token in title_words(row.title) and row.token in users[row.user_id]["attributes"]
        elif row.cause == "category":
            assert row.token == row.category and row.token in users[row.user_id]["categories"]
        elif row.cause == "recency" and row.token is not None:  # a return names the past item: the same item
            assert row.token == row.item_id, row
        else:
            assert row.token is None, row
    returns = causes[(causes["cause"] == "recency") & causes["token"].notna() & (causes["event"] == "view")]
    assert len(returns) > 0
    seen_before = planted_shop.events.reset_index(drop=True).groupby(["user_id", "item_id"]).cumcount() > 0
    assert seen_before[returns.index].all()  # every named return comes back to an item the user touched before
    purchase_causes = causes.loc[causes["event"] == "purchase", "cause"]
    assert 0.65 <= purchase_causes.isin(TASTE_CAUSES).mean() <= 0.85
    views = causes.loc[causes["event"] == "view", "cause"].value_counts(normalize=True)
    assert views["noise"] > 0.05  # not every click means something


def test_price_caused_events_sit_at_the_price_point(planted_shop):
    users = planted_shop.ground_truth["users"]
    caused = event_causes(planted_shop).query("cause == 'price'").merge(planted_shop.items[["item_id", "price"]], on="item_id")
    point = np.array([users[u]["price_point"] for u in caused["user_id"]])
    band = np.array([users[u]["price_band"] for u in caused["user_id"]])
    assert ((band[:, 0] <= point) & (point <= band[:, 1])).all()
    assert (np.abs(np.log(caused["price"] / point)) <= PRICE_POINT_WIDTH + 0.01).mean() > 0.95
    # The rest of a shopper's views spread much wider: the price point is a mark of its own.
    views = event_causes(planted_shop).query("event == 'view' and cause != 'price'").merge(
        planted_shop.items[["item_id", "price"]], on="item_id")
    others = np.abs(np.log(views["price"] / views["user_id"].map(lambda u: users[u]["price_point"])))
    assert (others <= PRICE_POINT_WIDTH).mean() < 0.4
    # They come from any shelf, so a price-driven view is not also a category taste most of the time.
    favourite = [category in users[u]["categories"] for u, category in
                 zip(caused["user_id"], caused["item_id"].map(planted_shop.items.set_index("item_id")["category"]))]
    assert np.mean(favourite) < 0.5


def test_popularity_caused_events_go_to_the_best_sellers(planted_shop):
    caused = event_causes(planted_shop).query("cause == 'popularity' and event == 'view'")
    best_sellers = set(caused["item_id"])
    assert len(best_sellers) <= round(BEST_SELLER_SHARE * len(planted_shop.items))
    # The same few items draw a large share of every cause's views, not only popularity's.
    views = event_causes(planted_shop).query("event == 'view'")
    assert views["item_id"].isin(best_sellers).mean() > 3 * BEST_SELLER_SHARE


def test_causes_follow_their_events_when_reordered(small_shop):
    shuffled = small_shop.events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    causes = event_causes(dataclasses.replace(small_shop, events=shuffled))
    pd.testing.assert_frame_equal(causes.drop(columns=["cause", "token"]), shuffled.drop(columns=["value"]))
    original = event_causes(small_shop).set_index(["user_id", "item_id", "timestamp", "event"])
    moved = causes.set_index(["user_id", "item_id", "timestamp", "event"])
    pd.testing.assert_frame_equal(moved.sort_index(), original.sort_index())


def test_event_causes_refuse_data_without_them(small_shop):
    plain = make_dataset(small_shop.items, small_shop.events, source="test", format="table")
    with pytest.raises(DataError, match="no planted event causes"):
        event_causes(plain)
    truth = {**small_shop.ground_truth, "event_causes": small_shop.ground_truth["event_causes"][1:]}
    with pytest.raises(DataError, match="1 events have no planted cause"):
        event_causes(dataclasses.replace(small_shop, ground_truth=truth))


def test_dirt_is_small_planted_and_listed(planted_shop):
    dirt = planted_shop.ground_truth["dirt"]
    aside = planted_shop.set_aside_events
    assert (aside["reason"] == "duplicate").all() and len(aside) == len(dirt["duplicate_events"]) == 2
    assert [[r.user_id, r.item_id, r.timestamp.isoformat(), r.event] for r in aside.itertuples()] == sorted(
        dirt["duplicate_events"])
    assert planted_shop.items.loc[planted_shop.items["price"].isna(), "item_id"].tolist() == dirt["items_without_price"]
    assert planted_shop.events["item_id"].isin(planted_shop.items["item_id"]).all()
    views = planted_shop.events[planted_shop.events["event"] == "view"].set_index("timestamp")
    views_per_minute = views.groupby("user_id")["item_id"].rolling("60s").count().groupby(level="user_id").max()
    assert views_per_minute[views_per_minute >= 30].index.tolist() == dirt["bot_users"]
    assert views_per_minute.drop(dirt["bot_users"]).max() < 10


@pytest.mark.parametrize("kind", ["csv", "parquet", "jsonl"])
def test_write_then_load_gives_the_same_shop(small_shop, tmp_path, kind):
    write_tables(small_shop, tmp_path, kind=kind)
    loaded = load_dataset(tmp_path)
    pd.testing.assert_frame_equal(loaded.items, small_shop.items)
    pd.testing.assert_frame_equal(loaded.events, small_shop.events)
    assert loaded.meta.fingerprint == small_shop.meta.fingerprint
    assert_same_truth(loaded, small_shop)
    assert (tmp_path / f"event_causes.{kind}").exists() and "event_causes" not in json.loads(
        (tmp_path / "ground_truth.json").read_text())


def test_a_vectorised_shop_written_as_parquet_loads_back_the_same(vectorised_shop, tmp_path):
    write_tables(vectorised_shop, tmp_path, kind="parquet")
    loaded = load_dataset(tmp_path)
    pd.testing.assert_frame_equal(loaded.events, vectorised_shop.events)
    assert loaded.meta.fingerprint == vectorised_shop.meta.fingerprint
    assert_same_truth(loaded, vectorised_shop)


@pytest.mark.parametrize(("argument", "value"), [("n_items", 5), ("n_users", 0), ("seed", -1), ("target_events", 2.5)])
def test_bad_sizes_are_data_errors(argument, value):
    with pytest.raises(DataError, match=argument):
        generate(**{argument: value})


def test_price_affinity_tells_a_price_point_view_from_the_rest_of_the_catalog(shop):
    """The feature the truth bench expects for a price-driven view does see it: at the moment of a late
    price-driven view, the viewed item's price affinity beats most of the catalog's, and by more than a
    brand-driven view's does (a brand is no price point)."""
    from data.features import FEATURE_NAMES, FeatureStore

    store, column = FeatureStore(shop), FEATURE_NAMES.index("price_affinity")
    causes = event_causes(shop).assign(order=lambda f: f.groupby("user_id").cumcount())
    late = causes[(causes["event"] == "view") & (causes["order"] >= 20)]
    rng = np.random.default_rng(0)

    def beaten(cause: str) -> float:
        rows = late[late["cause"] == cause].drop_duplicates("user_id")
        rows = rows.iloc[rng.permutation(len(rows))[:150]]
        shares = []
        for row in rows.itertuples():
            values = store.user_features(row.user_id, at=row.timestamp)[:, column]
            shares.append(float(np.mean(values < values[shop.item_position[row.item_id]])))
        return float(np.mean(shares))

    price, brand = beaten("price"), beaten("brand")
    assert price > 0.7 and price > brand + 0.15, (price, brand)  # measured: 0.79 against 0.53


def test_the_demo_shop_is_the_one_its_model_was_trained_on(shop):
    """The default shop is pinned: a faster generator must draw the very same shop from the same seed."""
    assert shop.meta.fingerprint == "349e0a3cd31b0c1b"


def test_a_ground_truth_file_with_the_causes_inside_still_reads(small_shop, tmp_path):
    """ground_truth.json files written before the causes had their own table keep them as rows of lists."""
    write_tables(small_shop, tmp_path, kind="csv")
    causes = event_causes(small_shop)
    truth = json.loads((tmp_path / "ground_truth.json").read_text())
    truth["event_causes"] = [[r.user_id, r.item_id, r.timestamp.isoformat(), r.event, r.cause, r.token]
                             for r in causes.itertuples()]
    (tmp_path / "ground_truth.json").write_text(json.dumps(truth))
    (tmp_path / "event_causes.csv").unlink()
    pd.testing.assert_frame_equal(event_causes(load_dataset(tmp_path)), causes)


@pytest.mark.parametrize("seed", range(5))
def test_the_generators_shortcuts_draw_what_numpy_draws(seed):
    """The generator's exact forms of numpy's calls give the same values and leave the stream where numpy does."""
    from data.synthetic import _choice_without_replacement, _dirichlets, _quantile_of_sorted, _ScalarDraws

    setup = np.random.default_rng(100 + seed)
    for _ in range(200):
        stream = int(setup.integers(2**32))
        ours, numpys = np.random.default_rng(stream), np.random.default_rng(stream)
        k = int(setup.integers(2, 16))
        size = int(setup.integers(1, min(k, 4) + 1))
        p = setup.dirichlet(np.full(k, float(setup.choice([0.3, 2.0, 6.0]))))
        if np.count_nonzero(p > 0) >= size:
            got = _choice_without_replacement(_ScalarDraws(ours), size, p.tolist())
            assert got == numpys.choice(k, size, replace=False, p=p).tolist()
        sizes = [int(n) for n in setup.integers(1, 4, size=6)]
        last = setup.uniform(0.5, 4.0, size=7)
        expected = [numpys.dirichlet(np.full(n, 2.0)) for n in sizes] + [numpys.dirichlet(last)]
        for got, want in zip(_dirichlets(ours, sizes, last), expected, strict=True):
            assert np.array_equal(got, want)
        assert ours.bit_generator.state == numpys.bit_generator.state
        scalar = _ScalarDraws(ours)
        for low, high in ((15, 120), (5, 40), (0, 86_400), (1, 3), (0, 2**32 - 1)):
            assert (scalar.integers(low, high), scalar.random()) == (int(numpys.integers(low, high)), numpys.random())
        assert ours.bit_generator.state == numpys.bit_generator.state
        values = np.sort(setup.lognormal(3.0, 1.0, size=int(setup.integers(1, 50))).round(2))
        q = float(setup.random())
        assert _quantile_of_sorted(values, q) == np.quantile(values, q)


def test_the_vectorised_shop_is_the_same_whatever_the_number_of_workers():
    """Blocks of shoppers each draw from their own stream: two processes give the shop one gives."""
    def drawn(workers: int):
        return generate(n_users=600, n_items=200, seed=5, target_events=12000,
                        simulation=Simulation(vectorised_from=0, block_users=150, workers=workers))

    alone, shared = drawn(1), drawn(2)
    pd.testing.assert_frame_equal(shared.items, alone.items)
    pd.testing.assert_frame_equal(shared.events, alone.events)
    assert shared.meta.fingerprint == alone.meta.fingerprint
    assert_same_truth(shared, alone)
    assert alone.events["user_id"].nunique() == 600 and abs(len(alone.events) - 12000) < 1500


def test_the_vectorised_path_takes_over_at_its_threshold(small_shop):
    """Below `vectorised_from` a shop is drawn the exact way (same fingerprint); from it on, the array way, in the
    same catalog with other draws."""
    exact = generate(n_users=300, n_items=200, seed=7, target_events=8000, simulation=Simulation(vectorised_from=301))
    assert exact.meta.fingerprint == small_shop.meta.fingerprint
    vectorised = generate(n_users=300, n_items=200, seed=7, target_events=8000,
                          simulation=Simulation(vectorised_from=300))
    pd.testing.assert_frame_equal(vectorised.items, small_shop.items)
    assert vectorised.meta.fingerprint != small_shop.meta.fingerprint
    assert vectorised.events["user_id"].nunique() == 300
    other_seed = generate(n_users=300, n_items=200, seed=8, target_events=8000,
                          simulation=Simulation(vectorised_from=300))
    assert other_seed.meta.fingerprint != vectorised.meta.fingerprint


def test_vectorised_shoppers_follow_the_exact_paths_odds(shop, vectorised_shop):
    """Same model, other draws: the funnel, the cause mix and the events per shopper agree with the exact path's."""
    def shares(dataset, column):
        return event_causes(dataset)[column].value_counts(normalize=True)

    for column in ("event", "cause"):
        exact, vectorised = shares(shop, column), shares(vectorised_shop, column)
        assert (abs(exact - vectorised) < 0.02).all(), (column, exact, vectorised)
    per_user = [d.events.groupby("user_id").size() for d in (shop, vectorised_shop)]
    assert abs(per_user[0].mean() - per_user[1].mean()) < 1.0
    assert per_user[1].min() >= 3
    ratings = [d.events.loc[d.events["event"] == "rating", "value"] for d in (shop, vectorised_shop)]
    assert abs(ratings[0].mean() - ratings[1].mean()) < 0.15 and set(ratings[1]) <= {1.0, 2.0, 3.0, 4.0, 5.0}


@pytest.mark.parametrize(("field", "value"), [("block_users", 0), ("workers", 0), ("workers", 1.5)])
def test_bad_simulation_settings_are_data_errors(field, value):
    with pytest.raises(DataError, match=f"simulation.{field}"):
        generate(n_users=20, simulation=Simulation(vectorised_from=0, **{field: value}))
