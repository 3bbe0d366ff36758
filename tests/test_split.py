"""Leave-last-out split: hand-checked cases, ties, min_history, and no leakage against a plain reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.schema import EVENT_TYPES, make_dataset
from data.split import leave_last_out

T0 = pd.Timestamp("2024-03-01", tz="UTC")


def build(rows, item_ids=None):
    """rows: (user_id, item_id, seconds after T0, event) in the order the source file holds them."""
    users, items, seconds, kinds = zip(*rows, strict=True)
    events = pd.DataFrame(
        {
            "user_id": list(users),
            "item_id": list(items),
            "timestamp": pd.to_datetime([T0 + pd.Timedelta(seconds=s) for s in seconds], utc=True),
            "event": pd.Categorical(list(kinds), categories=EVENT_TYPES),
            "value": np.nan,
        }
    )
    ids = sorted(set(items)) if item_ids is None else item_ids
    catalog = pd.DataFrame({"item_id": ids, "title": [f"Product {i}" for i in ids], "price": 1.0})
    return make_dataset(catalog, events, source="test", format="test")


def pairs(frame):
    return list(zip(frame["item_id"], (frame["timestamp"] - T0).dt.total_seconds().astype(int), strict=True))


def test_repeat_events_on_one_item_are_one_interaction():
    dataset = build(
        [
            ("u", "A", 1, "view"),
            ("u", "B", 2, "view"),
            ("u", "B", 3, "cart"),
            ("u", "C", 4, "view"),
            ("u", "C", 5, "purchase"),
            ("u", "D", 6, "view"),
            ("u", "D", 7, "cart"),
            ("u", "D", 8, "purchase"),
        ]
    )
    split = leave_last_out(dataset)
    assert split.test.to_dict("records") == [{"user_id": "u", "item_id": "D", "timestamp": T0 + pd.Timedelta(6, "s")}]
    assert split.valid.to_dict("records") == [{"user_id": "u", "item_id": "C", "timestamp": T0 + pd.Timedelta(4, "s")}]
    assert pairs(split.train) == [("A", 1), ("B", 2), ("B", 3)]
    assert split.history("valid") is split.train
    assert pairs(split.history("test")) == [("A", 1), ("B", 2), ("B", 3), ("C", 4), ("C", 5)]
    assert list(split.train.columns) == ["user_id", "item_id", "timestamp", "event", "value"]


def test_an_item_touched_again_is_not_a_new_distinct_item():
    # A comes back after C and last of all B comes back: neither is a new item, so D is the test item.
    dataset = build(
        [
            ("u", "A", 1, "view"),
            ("u", "B", 2, "view"),
            ("u", "C", 3, "view"),
            ("u", "A", 4, "purchase"),
            ("u", "D", 5, "view"),
            ("u", "B", 6, "purchase"),
        ]
    )
    split = leave_last_out(dataset)
    assert pairs(split.test) == [("D", 5)]
    assert pairs(split.valid) == [("C", 3)]
    assert pairs(split.train) == [("A", 1), ("B", 2)]
    # The later touch of A is before the test moment, so it is history for test; B at 6 is after it.
    assert pairs(split.history("test")) == [("A", 1), ("B", 2), ("C", 3), ("A", 4)]


def test_ties_resolve_by_row_order_and_same_instant_events_are_not_history():
    rows = [("u", "A", 1, "view"), ("u", "B", 2, "view"), ("u", "C", 2, "view"), ("u", "D", 2, "view")]
    split = leave_last_out(build(rows))
    assert pairs(split.test) == [("D", 2)]
    assert pairs(split.valid) == [("C", 2)]
    # B shares the validation instant, so it cannot be shown to come before it.
    assert pairs(split.train) == [("A", 1)]
    assert pairs(split.history("test")) == [("A", 1)]

    reordered = leave_last_out(build([rows[0], rows[3], rows[2], rows[1]]))
    assert pairs(reordered.test) == [("B", 2)]
    assert pairs(reordered.valid) == [("C", 2)]


def test_a_user_whose_history_shares_the_validation_instant_is_not_evaluated():
    rows = [("u", "A", 5, "view"), ("u", "B", 5, "view"), ("u", "C", 5, "view"), ("u", "D", 9, "view")]
    split = leave_last_out(build(rows))
    assert split.valid.empty and split.test.empty
    assert pairs(split.train) == [("A", 5), ("B", 5), ("C", 5), ("D", 9)]


def test_min_history_decides_who_is_evaluated():
    rows = [
        ("two", "A", 1, "view"),
        ("two", "B", 2, "view"),
        ("two", "B", 3, "purchase"),
        ("three", "A", 1, "view"),
        ("three", "B", 2, "view"),
        ("three", "C", 3, "view"),
        ("four", "A", 1, "view"),
        ("four", "B", 2, "view"),
        ("four", "C", 3, "view"),
        ("four", "D", 4, "view"),
    ]
    dataset = build(rows)
    split = leave_last_out(dataset)
    assert split.min_history == 3
    assert split.test["user_id"].tolist() == ["four", "three"]
    assert split.valid["user_id"].tolist() == ["four", "three"]
    two = split.train[split.train["user_id"] == "two"]
    assert pairs(two) == [("A", 1), ("B", 2), ("B", 3)]

    stricter = leave_last_out(dataset, min_history=4)
    assert stricter.test["user_id"].tolist() == ["four"]
    assert pairs(stricter.train[stricter.train["user_id"] == "three"]) == [("A", 1), ("B", 2), ("C", 3)]


@pytest.mark.parametrize("min_history", [2, 0, -1, 2.5, True])
def test_min_history_below_three_is_a_data_error(min_history):
    with pytest.raises(DataError, match="min_history"):
        leave_last_out(build([("u", "A", 1, "view")]), min_history=min_history)


def test_unknown_stage_is_a_data_error():
    split = leave_last_out(build([("u", "A", 1, "view")]))
    with pytest.raises(DataError, match="stage"):
        split.history("train")


def test_no_events_give_an_empty_split():
    empty = build([("u", "A", 1, "view")])
    empty.events = empty.events.iloc[0:0]
    split = leave_last_out(empty)
    assert split.train.empty and split.valid.empty and split.test.empty
    assert list(split.test.columns) == ["user_id", "item_id", "timestamp"]


# ---------------------------------------------------------------------------------------------
# Properties on random data, against a plain per-user loop that states the rule directly.


def random_dataset(seed: int, items: int = 25, events: int = 900):
    rng = np.random.default_rng(seed)
    # Skewed activity gives users with one event and users with dozens; a coarse clock (30 distinct
    # instants) makes ties and repeated items common.
    rows = [
        (f"u{rng.geometric(0.04)}", f"i{rng.integers(items)}", int(rng.integers(30)), str(rng.choice(EVENT_TYPES)))
        for _ in range(events)
    ]
    return build(rows, item_ids=[f"i{i}" for i in range(items)])


def reference_split(dataset, min_history):
    """The rule, one user at a time: targets and the set of row numbers visible before valid and test."""
    valid, test, train_rows, test_rows = {}, {}, set(), set()
    for user, user_events in dataset.events.groupby("user_id", sort=True):
        first_touch = {}
        for item, moment in zip(user_events["item_id"], user_events["timestamp"], strict=True):
            first_touch.setdefault(item, moment)
        distinct = list(first_touch)
        evaluated = False
        if len(distinct) >= 2:
            valid_item, test_item = distinct[-2], distinct[-1]
            seen_before = sum(moment < first_touch[valid_item] for moment in first_touch.values())
            evaluated = seen_before >= min_history - 2
        if evaluated:
            valid[user] = (valid_item, first_touch[valid_item])
            test[user] = (test_item, first_touch[test_item])
            train_rows |= set(user_events.index[user_events["timestamp"] < first_touch[valid_item]])
            test_rows |= set(user_events.index[user_events["timestamp"] < first_touch[test_item]])
        else:
            train_rows |= set(user_events.index)
            test_rows |= set(user_events.index)
    return valid, test, train_rows, test_rows


def as_targets(frame):
    return {row.user_id: (row.item_id, row.timestamp) for row in frame.itertuples()}


def row_numbers(dataset, frame):
    # Events are unique per (user, item, timestamp, event) once duplicates are set aside.
    key = ["user_id", "item_id", "timestamp", "event"]
    numbered = dataset.events.reset_index().merge(frame[key], on=key, how="inner")
    return set(numbered["index"])


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("min_history", [3, 5])
def test_split_matches_the_reference_rule(seed, min_history):
    dataset = random_dataset(seed)
    split = leave_last_out(dataset, min_history=min_history)
    valid, test, train_rows, test_rows = reference_split(dataset, min_history)
    assert 10 < len(test) < dataset.events["user_id"].nunique()  # the sample has both kinds of user
    assert as_targets(split.valid) == valid
    assert as_targets(split.test) == test
    assert row_numbers(dataset, split.train) == train_rows
    assert row_numbers(dataset, split.history("test")) == test_rows
    assert len(split.train) == len(train_rows)


@pytest.mark.parametrize("seed", [3, 4])
def test_nothing_from_the_future_is_visible(seed):
    dataset = random_dataset(seed)
    split = leave_last_out(dataset)
    assert split.valid["user_id"].is_unique and split.test["user_id"].is_unique
    targets = split.valid.merge(split.test, on="user_id", suffixes=("_valid", "_test"))
    assert len(targets) == len(split.test) > 0
    assert (targets["item_id_valid"] != targets["item_id_test"]).all()
    assert (targets["timestamp_valid"] <= targets["timestamp_test"]).all()

    for stage, moment, item_column in (
        ("valid", "timestamp_valid", "item_id_valid"),
        ("test", "timestamp_test", "item_id_test"),
    ):
        history = split.history(stage).merge(targets, on="user_id")
        assert (history["timestamp"] < history[moment]).all(), stage
        # The held-out item is first touched at its moment, so it cannot appear in what came before.
        assert not (history["item_id"] == history[item_column]).any(), stage
    # The validation item is new at its moment but is history once the test moment comes.
    test_history = split.history("test").merge(targets, on="user_id")
    assert (test_history["item_id"] == test_history["item_id_valid"]).groupby(test_history["user_id"]).any().any()

    # Users not evaluated keep every event, and train is always part of the test history.
    others = ~dataset.events["user_id"].isin(split.test["user_id"])
    assert len(split.train[~split.train["user_id"].isin(split.test["user_id"])]) == others.sum()
    assert row_numbers(dataset, split.train) <= row_numbers(dataset, split.history("test"))


def test_split_is_deterministic():
    dataset = random_dataset(7)
    first, second = leave_last_out(dataset), leave_last_out(dataset)
    for name in ("train", "valid", "test"):
        pd.testing.assert_frame_equal(getattr(first, name), getattr(second, name))
    pd.testing.assert_frame_equal(first.history("test"), second.history("test"))


def test_split_does_not_depend_on_file_order_when_timestamps_are_distinct():
    rng = np.random.default_rng(11)
    rows = [(f"u{rng.integers(8)}", f"i{rng.integers(12)}", second, "view") for second in range(300)]
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    one, other = leave_last_out(build(rows)), leave_last_out(build(shuffled))
    pd.testing.assert_frame_equal(one.test, other.test)
    pd.testing.assert_frame_equal(one.valid, other.valid)
    pd.testing.assert_frame_equal(one.train, other.train)
