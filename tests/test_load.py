"""Concurrent dashboard sessions: each sees its own user, and the same values a session alone sees (bench.load)."""

import asyncio
import shutil
from pathlib import Path

import pytest

from bench.load import differences, measure, pick_users
from bench.load_server import measure as measure_server

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

SERIAL = {"top10": [{"rank": 1, "title": "Red mug", "score": 2.5}, {"rank": 2, "title": "Blue pan", "score": 2.25}],
          "item_1": "i1", "item_2": "i2", "explanation_score": "2.250", "whatif_score": "2.000",
          "whatif_delta": "-0.250", "margin": "+0.250"}


def test_values_that_differ_from_the_serial_session_are_named():
    same = {**SERIAL, "top10": [{**row, "score": row["score"] + 1e-9} for row in SERIAL["top10"]]}
    assert differences(same, SERIAL) == []  # the last float bits may move with the thread count
    swapped = {**SERIAL, "top10": SERIAL["top10"][::-1]}
    assert differences(swapped, SERIAL) == ["top10 differs"]
    rescored = {**SERIAL, "top10": [SERIAL["top10"][0], {**SERIAL["top10"][1], "score": 2.3}]}
    assert differences(rescored, SERIAL) == ["top10 differs"]
    assert differences({**SERIAL, "margin": "+0.251"}, SERIAL) == ["margin: '+0.251' vs serial '+0.250'"]
    assert differences({**SERIAL, "whatif_delta": None}, SERIAL)  # a session that never got that far
    assert differences(SERIAL, {}) == ["no serial reference for this user"]


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_model, tiny_shop):
    from data.io import write_tables

    data = tmp_path_factory.mktemp("load") / "data"
    write_tables(tiny_shop, data)
    return tiny_model, data


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="system Chromium is not installed (.ci/run installs it)")
def test_two_concurrent_sessions_each_see_their_own_user_as_a_serial_session_does(served):
    model, data = served
    users = pick_users(data, 2)[1:]
    levels, reference = asyncio.run(measure(model, data, users, [1, 2], None, {}, ARTIFACTS / "load",
                                            timeout_s=120, log=lambda *_: None))
    serial, concurrent = levels
    for level in levels:
        assert level["errors"] == {}, level["errors"]
        assert level["wrong_user"] == {}, level["wrong_user"]
        assert level["complete_sessions"] == 2
        assert level["cpu_s"]["server"] > 0 and level["cpu_s"]["clients"] > 0
        assert all(level["actions"][action]["n"] == 2 for action in ("recommend", "explain", "whatif", "compare"))
    assert sorted(reference) == sorted(users)
    # The two users see different lists, so a session shown the other's state would differ from the serial run.
    assert serial["distinct_top10_lists"] == 2
    assert all(len(values["top10"]) == 10 and values["whatif_delta"] for values in reference.values())
    assert concurrent["differs_from_serial"] == {}


def test_sessions_over_the_protocol_each_get_their_own_users_list_as_a_serial_session_does(served):
    model, data = served
    picked = pick_users(data, 3)  # the warm-up user and three
    warm_up, users = picked[0], picked[1:]
    levels, reference = asyncio.run(measure_server(model, data, users, [1, 3], warm_up, {}, ARTIFACTS / "load",
                                                   timeout_s=120, think_s=0.0, rounds=2, log=lambda *_: None))
    serial, concurrent = levels
    # The serial level visits each user once, the others `rounds` times; each client opens its first user's link and
    # chooses the next users in the chooser of the session it opened.
    for level, visits, chosen in zip(levels, [3, 6], [2, 3]):
        assert level["errors"] == {} and level["other_user_named"] == {}, level
        assert level["list"]["n"] == level["page"]["n"] == level["visits"] == visits
        assert level["chosen_in_open_session"] == chosen
        assert level["cpu_s"]["server"] > 0 and level["cpu_s"]["clients"] >= 0  # a few ms per visit
        assert level["list"]["p50_s"] <= level["page"]["p50_s"]  # the list comes before the panel under it
    assert sorted(reference) == sorted(users) and all(len(top) == 10 for top in reference.values())
    assert serial["distinct_lists"] == 3  # different users, different lists: a crossed answer would show
    assert concurrent["differs_from_serial"] == {}
    # Every visit a new session, as a new tab on the user's link: the same lists.
    (opened,), _ = asyncio.run(measure_server(model, data, users, [2], warm_up, {}, ARTIFACTS / "load", timeout_s=120,
                                              think_s=0.0, reference=reference, new_sessions=True, log=lambda *_: None))
    assert opened["visits"] == 3 and opened["chosen_in_open_session"] == 0
    assert opened["errors"] == {} and opened["other_user_named"] == {} and opened["differs_from_serial"] == {}
    # A list that is not the serial one is named.
    from bench.load_server import Visit, summarise
    wrong = Visit(users[0], 0.1, 0.2, [(title, score + 1.0) for title, score in reference[users[0]]], {users[0]})
    assert summarise([wrong], reference, 1.0)["differs_from_serial"] == {users[0]: "ranked list differs"}
