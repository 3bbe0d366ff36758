"""The users behind the picker: search by id answered with a bounded list, recently active, random, membership."""

import numpy as np
import pandas as pd

from data.user_index import UserIndex


def index() -> UserIndex:
    ids = ["u10", "U100", "u2", "x-u1", "a1u1", "u1", "b7"]
    last = [5, 9, 1, 3, 3, 7, 0]  # ns of each user's latest event
    return UserIndex(ids, last)


def test_search_gives_prefix_matches_first_then_substring_matches_case_insensitively():
    users = index()
    assert users.search("u1", 10) == ["u1", "u10", "U100", "a1u1", "x-u1"]
    assert users.search("  U1 ", 10) == users.search("u1", 10)
    assert users.search("u1", 2) == ["u1", "u10"]  # bounded, prefix matches first
    assert users.search("zz", 10) == [] and users.search("", 10) == [] and users.search("u", 0) == []


def test_recently_active_and_random_are_bounded_and_seeded():
    users = index()
    assert users.recently_active(3) == ["U100", "u1", "u10"]
    assert users.recently_active(100) == ["U100", "u1", "u10", "a1u1", "x-u1", "u2", "b7"]  # ties in id order
    drawn = users.random(4, seed=1)
    assert len(drawn) == 4 and len(set(drawn)) == 4 and drawn == users.random(4, seed=1)
    assert any(users.random(4, seed=s) != drawn for s in range(2, 6))
    assert sorted(users.random(50, seed=0)) == sorted(users.random(7, seed=3))  # never more than there are


def test_membership_first_user_and_last_activity():
    users = index()
    assert "u2" in users and "u3" not in users and 2 not in users and len(users) == 7
    assert users.first() == "U100"  # id order, as the pages' default has always been
    assert users.last_active_ns("u10") == 5 and users.last_active_ns("nobody") is None
    assert UserIndex([], []).first() is None and "u1" not in UserIndex([], [])


def test_built_from_events_with_each_users_latest_event():
    events = pd.DataFrame({"user_id": ["b", "a", "b", "c"],
                           "timestamp": pd.to_datetime(["2024-01-02", "2024-01-05", "2024-01-09", "2024-01-01"],
                                                       utc=True)})
    users = UserIndex.from_events(events)
    assert users.recently_active(3) == ["b", "a", "c"]
    assert users.last_active_ns("b") == pd.Timestamp("2024-01-09", tz="UTC").value


def test_a_search_over_many_users_stays_bounded():
    users = UserIndex([f"u{i:06d}" for i in range(200_000)], np.arange(200_000))
    found = users.search("u0012", 50)
    assert len(found) == 50 and all(f.startswith("u0012") for f in found)
    assert users.search("99999", 50) == ["u099999", "u199999"]
    assert users.recently_active(2) == ["u199999", "u199998"]


def test_a_users_events_by_binary_search_equal_the_scan_and_unsorted_events_still_work(tiny_shop):
    from dataclasses import replace

    events = tiny_shop.events
    assert events["user_id"].is_monotonic_increasing  # the readers leave events sorted by user
    for user_id in [*tiny_shop.user_ids[:5], tiny_shop.user_ids[-1], "nobody"]:
        expected = events[events["user_id"] == user_id]
        pd.testing.assert_frame_equal(tiny_shop.user_events(user_id), expected)
    shuffled = replace(tiny_shop, events=events.sample(frac=1.0, random_state=0))
    user_id = tiny_shop.user_ids[3]
    pd.testing.assert_frame_equal(shuffled.user_events(user_id),
                                  shuffled.events[shuffled.events["user_id"] == user_id])
