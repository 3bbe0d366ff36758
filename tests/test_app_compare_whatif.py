"""The Compare and What-if pages driven headless with AppTest, checked against the model computed directly."""

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from data.features import FEATURES
from model.checkpoint import load
from model.whatif import edited_history, feature_ranges

APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture()
def app(monkeypatch, tiny_model, shop_data):
    monkeypatch.setenv("WHYREC_MODEL", str(tiny_model))
    monkeypatch.setenv("WHYREC_DATA", str(shop_data))
    return AppTest.from_file(APP, default_timeout=180)


@pytest.fixture(scope="module")
def recommender(tiny_model, shop_data):
    return load(tiny_model, data=str(shop_data))


def open_page(at, page: str, **params) -> AppTest:
    at.run()
    at.switch_page(page)
    at.query_params.clear()
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    return at


def margin(at) -> float:
    (metric,) = [m for m in at.metric if m.label == "Margin (A − B)"]
    return float(metric.value)


def whatif_table(at):
    tables = [t.value for t in at.dataframe if "new_rank" in t.value.columns]
    assert tables, "no what-if ranking on the page"
    return tables[0]


# ---- Compare ------------------------------------------------------------------------------------------------------

def test_compare_shows_the_first_users_top_two_and_the_margin(app, recommender):
    at = open_page(app, "views/compare.py")
    assert not at.error
    user = at.selectbox(key="cmp_user").value
    top = recommender.recommend(user_id=user, k=2)
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == (top[0].item_id, top[1].item_id)
    assert margin(at) == pytest.approx(top[0].score - top[1].score, abs=1e-3)
    charts = [str(chart.proto) for chart in at.get("plotly_chart")]
    assert any("How the margin builds up" in chart for chart in charts)
    shaded = [str(h.proto) for h in at.get("html") if "whyrec-tokens" in str(h.proto)]
    assert len(shaded) >= 2  # A's words and B's words
    assert any(h.value.startswith("Why A ranks above B") for h in at.subheader)
    assert (at.query_params["a"], at.query_params["b"]) == (top[0].item_id, top[1].item_id)
    behaviour = next(t.value for t in at.dataframe if {"A", "B", "margin"} <= set(t.value.columns))
    direct = recommender.behaviour_features(recommender.context(user), recommender.item_positions(
        [top[0].item_id, top[1].item_id]))  # (2, F)
    by_label = behaviour.set_index("feature")
    for j, spec in enumerate(FEATURES):
        assert by_label.loc[spec.label, ["A", "B"]].tolist() == pytest.approx(direct[:, j].tolist(), abs=1e-6)
    words = next(t.value for t in at.dataframe if "word" in t.value.columns)
    assert len(words) and set(words["of"]) <= {"item A", "item B", "the query"}


def test_choosing_another_b_changes_the_margin(app, recommender):
    at = open_page(app, "views/compare.py")
    before = margin(at)
    user, item_a = at.selectbox(key="cmp_user").value, at.selectbox(key="cmp_a").value
    other = at.selectbox(key="cmp_b").options[5]  # labels; the widget takes the id
    item_b = next(i for i in recommender.item_ids if other.endswith(recommender.dataset.item(str(i)).title)
                  and str(i) != item_a)
    at.selectbox(key="cmp_b").set_value(str(item_b)).run()
    assert not at.exception and not at.error
    scores = recommender.score(user, item_ids=[item_a, str(item_b)])
    assert margin(at) == pytest.approx(scores[0] - scores[1], abs=1e-3)
    assert margin(at) != pytest.approx(before, abs=1e-6)
    assert at.query_params["b"] == str(item_b)


def test_the_same_item_twice_says_so(app):
    at = open_page(app, "views/compare.py")
    at.selectbox(key="cmp_b").set_value(at.selectbox(key="cmp_a").value).run()
    assert not at.exception
    assert any("same item" in w.value for w in at.warning)
    assert not [m for m in at.metric if m.label == "Margin (A − B)"]


def test_unknown_item_in_the_link(app, recommender):
    user = str(recommender.user_ids[2])
    at = open_page(app, "views/compare.py", user=user, a="no-such-item", b=str(recommender.item_ids[0]))
    assert any("Unknown item `no\\-such\\-item`" in e.value for e in at.error)
    assert at.selectbox(key="cmp_user").value == user
    assert at.selectbox(key="cmp_a").value == recommender.recommend(user_id=user, k=1)[0].item_id  # the default
    assert at.selectbox(key="cmp_b").value == str(recommender.item_ids[0])  # the valid half of the link is kept
    margin(at)  # the page still compares


def test_compare_for_a_query_from_the_link(app, recommender):
    at = open_page(app, "views/compare.py", query="wool sock")
    assert not at.error
    assert at.radio(key="cmp_mode").value == "Query"
    top = recommender.recommend(query="wool sock", k=2)
    assert (at.selectbox(key="cmp_a").value, at.selectbox(key="cmp_b").value) == (top[0].item_id, top[1].item_id)
    assert margin(at) == pytest.approx(top[0].score - top[1].score, abs=1e-3)
    at.text_input(key="cmp_query").input("  ").run()
    assert not at.exception and any("Type a query" in i.value for i in at.info)


# ---- What-if ------------------------------------------------------------------------------------------------------

def test_removing_one_history_item_reranks_as_the_model_does(app, recommender):
    at = open_page(app, "views/whatif.py")
    user = at.selectbox(key="wi_user").value
    k = at.slider(key="wi_k").value
    real = whatif_table(at)
    assert list(real["item_id"]) == [r.item_id for r in recommender.recommend(user_id=user, k=k)]
    removed = at.multiselect(key="wi_remove").options[0]
    removed_id = next(i for i in recommender.dataset.user_events(user)["item_id"].unique()
                      if removed.startswith(recommender.dataset.item(i).title))
    at.multiselect(key="wi_remove").set_value([removed_id]).run()
    assert not at.exception and not at.error
    table = whatif_table(at)
    direct = recommender.recommend(user_id=user, k=k, history=edited_history(recommender, user, remove=[removed_id]))
    assert list(table["item_id"]) == [r.item_id for r in direct]
    np.testing.assert_allclose(table["new_score"], [r.score for r in direct], rtol=1e-6)
    assert list(table["item_id"]) != list(real["item_id"]) or not np.allclose(table["new_score"], real["new_score"])
    assert any(h.value.startswith("Why this score under the edits") for h in at.subheader)


def test_removing_the_whole_history_warns_and_still_ranks(app, recommender):
    at = open_page(app, "views/whatif.py")
    at.multiselect(key="wi_remove").set_value(list(recommender.dataset.user_events(
        at.selectbox(key="wi_user").value)["item_id"].unique())).run()
    assert not at.exception and not at.error
    assert any("removed the whole history" in w.value for w in at.warning)
    table = whatif_table(at)
    assert len(table) == at.slider(key="wi_k").value and np.isfinite(table["new_score"]).all()
    assert any(h.value.startswith("Why this score under the edits") for h in at.subheader)


def test_a_slider_at_its_extreme_gives_finite_scores(app, recommender):
    ranges = feature_ranges(recommender)
    name = next(n for n in ranges.index if ranges.at[n, "high"] - ranges.at[n, "low"] > 1e-6)
    at = open_page(app, "views/whatif.py")
    at.multiselect(key="wi_features").set_value([name]).run()
    high = float(ranges.at[name, "high"])
    at.slider(key=f"wi_value_{name}").set_value(high).run()
    assert not at.exception and not at.error
    table = whatif_table(at)
    assert np.isfinite(table["new_score"]).all()
    user, k = at.selectbox(key="wi_user").value, at.slider(key="wi_k").value
    direct = recommender.recommend(user_id=user, k=k, feature_overrides={name: high})
    np.testing.assert_allclose(table["new_score"], [r.score for r in direct], rtol=1e-5)
    assert any("set by hand" in c.value for c in at.caption)


def test_add_an_item_then_reset_to_the_real_user(app, recommender):
    at = open_page(app, "views/whatif.py")
    user, k = at.selectbox(key="wi_user").value, at.slider(key="wi_k").value
    real = [r.item_id for r in recommender.recommend(user_id=user, k=k)]
    first_title = recommender.dataset.item(real[0]).title
    at.text_input(key="wi_search").input(first_title).run()
    at.selectbox(key="wi_add_item").set_value(real[0])
    at.selectbox(key="wi_add_event").set_value("purchase")
    at.button(key="wi_add_button").click().run()
    at.text_input(key="wi_query").input("wool sock").run()
    assert not at.exception and not at.error
    assert real[0] not in list(whatif_table(at)["item_id"])  # now in the history, so not ranked
    at.button(key="wi_reset").click().run()
    assert not at.exception
    table = whatif_table(at)
    assert list(table["item_id"]) == real
    assert set(table["move"]) == {"="}
    assert at.multiselect(key="wi_remove").value == [] and at.text_input(key="wi_query").value == ""


def test_a_whatif_link_opens_with_its_edits_and_the_page_keeps_the_link_current(app, recommender):
    user = next(u for u in recommender.user_ids if len(recommender.histories[u]) >= 3)
    history = list(dict.fromkeys(recommender.dataset.user_events(user)["item_id"].astype(str)))
    ranges = feature_ranges(recommender)
    name = next(n for n in ranges.index if ranges.at[n, "high"] - ranges.at[n, "low"] > 1e-6)
    value = float(ranges.at[name, "high"])
    outside = str(recommender.item_ids[-1]) if str(recommender.item_ids[-1]) not in history else history[-1]
    at = open_page(app, "views/whatif.py", user=user, remove=[history[0], "no-such-item"],
                   add=[f"cart:{outside}"], set=[f"{name}:{value!r}"], query="wool sock", k="7")
    assert not at.exception
    (error,) = at.error  # one message naming what was left out, and only that
    said = error.value.replace("\\", "")  # as read, without the Markdown escapes
    assert "remove=no-such-item" in said and history[0] not in said
    assert at.multiselect(key="wi_remove").value == [history[0]]
    assert at.multiselect(key="wi_features").value == [name] and at.slider(key=f"wi_value_{name}").value == value
    assert at.text_input(key="wi_query").value == "wool sock" and at.slider(key="wi_k").value == 7
    edited = edited_history(recommender, user, remove=[history[0]], add=[(outside, "cart")])
    direct = recommender.recommend(user_id=user, query="wool sock", k=7, history=edited,
                                   feature_overrides={name: value})
    table = whatif_table(at)
    assert list(table["item_id"]) == [r.item_id for r in direct]
    assert at.query_params["remove"] == history[0]  # the link now says what the page shows
    assert at.query_params["add"] == f"cart:{outside}" and at.query_params["k"] == "7"
    at.button(key="wi_reset").click().run()
    assert "remove" not in at.query_params and "set" not in at.query_params and "query" not in at.query_params


class _Params(dict):
    """A query string as st.query_params reads it: repeated keys hold lists."""

    def get(self, key, default=None):
        value = super().get(key, default)
        return value[-1] if isinstance(value, list) else value

    def get_all(self, key):
        value = super().get(key, [])
        return list(value) if isinstance(value, list) else [value]


@pytest.mark.parametrize(("params", "said"), [
    ({"add": ["buy:i1"]}, "add=buy:i1: expected EVENT:ITEM"),
    ({"add": ["view:nope"]}, "add=view:nope: expected EVENT:ITEM"),
    ({"set": ["no_feature:1"]}, "set=no_feature:1: 'no_feature' is not a behaviour feature"),
    ({"set": ["price_affinity:abc"]}, "set=price_affinity:abc: the value must be a number from 0 to 5"),
    ({"set": ["price_affinity:nan"]}, "set=price_affinity:nan: the value must be a number"),
    ({"set": ["price_affinity:9"]}, "set=price_affinity:9: the value must be a number from 0 to 5"),
    ({"k": "50"}, "k=50: expected a whole number from 5 to 20"),
    ({"k": "-7"}, "k=-7: expected a whole number"),
])
def test_a_link_part_that_cannot_be_used_is_named_and_left_out(params, said):
    import pandas as pd

    from views.whatif_link import read_link

    ranges = pd.DataFrame({"low": [0.0], "high": [5.0]}, index=["price_affinity"])
    edits = read_link(_Params({**params, "remove": ["i1"]}), ["i1"], ["i1", "i2"], ranges)
    assert len(edits.problems) == 1 and edits.problems[0].startswith(said)
    assert edits.remove == ["i1"] and not edits.add and not edits.values and edits.k is None


def test_write_link_round_trips_through_read_link():
    import pandas as pd

    from views.whatif_link import read_link, write_link

    params = _Params({"user": "u1"})
    write_link(params, ["i1"], [("i2", "cart"), ("i3", "view")], {"price_affinity": 1 / 3}, "wool sock", 12)
    ranges = pd.DataFrame({"low": [0.0], "high": [5.0]}, index=["price_affinity"])
    edits = read_link(params, ["i1"], ["i1", "i2", "i3"], ranges)
    assert (edits.remove, edits.add, edits.values, edits.query, edits.k, edits.problems) == (
        ["i1"], [{"item_id": "i2", "event": "cart"}, {"item_id": "i3", "event": "view"}], {"price_affinity": 1 / 3},
        "wool sock", 12, [])
    write_link(params, [], [], {}, None, 10)
    assert params == {"user": "u1", "k": "10"}


def test_choices_survive_a_visit_to_another_page(app, recommender):
    at = open_page(app, "views/compare.py")
    user = at.selectbox(key="cmp_user").value
    chosen_b = recommender.recommend(user_id=user, k=4)[3].item_id
    at.selectbox(key="cmp_b").set_value(chosen_b).run()
    at.switch_page("views/whatif.py").run()
    removed = str(recommender.dataset.user_events(at.selectbox(key="wi_user").value)["item_id"].iloc[0])
    at.multiselect(key="wi_remove").set_value([removed]).run()
    at.switch_page("views/data_overview.py").run()
    at.switch_page("views/compare.py").run()
    assert not at.exception and not at.warning
    assert at.selectbox(key="cmp_b").value == chosen_b
    at.switch_page("views/whatif.py").run()
    assert not at.exception
    assert at.multiselect(key="wi_remove").value == [removed]


def test_the_bump_chart_escapes_titles_and_places_every_move():
    import pandas as pd

    from model.whatif import rank_changes
    from views.rankings import move_label, rank_slope

    evil = "<img src=x onerror=alert(1)>"
    real = pd.DataFrame({"rank": [1, 2, 3], "item_id": ["a", "b", "c"], "title": [evil, "b", "c"], "score": [3, 2, 1]})
    edited = pd.DataFrame({"rank": [1, 2], "item_id": ["c", "b"], "title": ["c", "b"], "score": [3, 2]})
    changes = rank_changes(real, edited, 2)
    figure = rank_slope(changes, 2)
    texts = [text for trace in figure.data for text in (*trace.text, *trace.hovertext)]
    assert not any("<img" in text for text in texts) and any("&lt;img" in text for text in texts)
    y = {trace.hovertext[0].split("<br>")[0]: list(trace.y) for trace in figure.data}
    assert y["c"] == [3, 1] and y["b"] == [2, 2] and y["&lt;img src=x onerror=alert(1)&gt;"] == [1, 3]  # 3: below #2
    assert [move_label(row) for row in changes.itertuples()] == ["▲ new (was #3)", "=", "▼ out (in history now)"]


# ---- from the Recommend page ------------------------------------------------------------------------------------------

def test_recommend_opens_compare_and_report_on_its_own_list(app, recommender):
    app.run()
    users = app.selectbox(key="rec_user").options
    app.selectbox(key="rec_user").select(users[3]).run()
    app.button(key="rec_to_compare").click().run()
    assert not app.exception, app.exception
    top = recommender.recommend(user_id=users[3], k=2)
    assert app.selectbox(key="cmp_user").value == users[3]  # not the Compare page's default, the first user
    assert (app.selectbox(key="cmp_a").value, app.selectbox(key="cmp_b").value) == (top[0].item_id, top[1].item_id)

    app.switch_page("views/recommend.py").run()
    app.selectbox(key="rec_user").select(users[5]).run()
    app.slider(key="rec_k").set_value(7).run()
    app.button(key="rec_to_report").click().run()
    assert not app.exception, app.exception
    assert (app.selectbox(key="rep_user").value, app.slider(key="rep_k").value) == (users[5], 7)


# ---- the explanation panel's past items against What-if -----------------------------------------------------------

def test_a_credited_past_item_opens_what_if_without_it_and_the_scores_agree(app, recommender):
    from explain import explain

    at = open_page(app, "views/recommend.py")
    user = at.query_params["user"]
    item = at.query_params["item"]
    buttons = [b for b in at.button if str(b.key).startswith(f"whatif_{item}_")]
    assert buttons, "no past item to open in What-if"
    removed = str(buttons[0].key).removeprefix(f"whatif_{item}_")
    explanation = explain(recommender, item, user_id=user, drill_down=0)
    effect = next(d["removal_effect"] for d in explanation.part("history").details if d.get("item_id") == removed)
    buttons[0].click().run()
    assert not at.exception, at.exception
    assert at.multiselect(key="wi_remove").value == [removed]
    (metric,) = [m for m in at.metric if "the item you came from" in m.label]
    # What-if's change of the item's score is the panel's "removing it alone", computed the What-if way.
    assert float(str(metric.delta).split()[0]) == pytest.approx(-effect, abs=2e-3)
    before = recommender.score(user, None, [item])[0]
    after = recommender.score(user, None, [item], history=edited_history(recommender, user, remove=[removed]))[0]
    assert float(metric.value) == pytest.approx(after, abs=2e-3) and after - before == pytest.approx(-effect, abs=1e-5)


@pytest.mark.parametrize(("top", "by_chance", "shown"), [
    (0.6, 0.2, "3.0×"), (-0.3, -0.25, "no drop"), (0.0, 0.1, "no drop"), (0.4, -0.1, "random: none"),
])
def test_the_faithfulness_ratio_never_reads_a_rise_as_faithful(top, by_chance, shown):
    from views.explanation_panel import faithfulness_ratio

    assert faithfulness_ratio(top, by_chance) == shown
