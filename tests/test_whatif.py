"""What-if support: behaviour features set by hand, edited histories, full rankings and how they moved."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from data.features import FEATURE_NAMES
from explain import explain
from model.errors import ModelError
from model.whatif import ITEM_FEATURES, edited_history, feature_ranges, rank_changes, ranking


@pytest.fixture(scope="module")
def ranges(recommender):
    return feature_ranges(recommender)


def test_feature_ranges_cover_what_users_see(recommender, ranges, user):
    assert list(ranges.index) == list(FEATURE_NAMES)
    assert (ranges["low"] <= ranges["high"]).all()
    seen = recommender.features.user_features(user)  # (N, F) at the serving moment
    assert (seen.min(0) >= ranges["low"].to_numpy() - 1e-6).all()
    assert (seen.max(0) <= ranges["high"].to_numpy() + 1e-6).all()
    assert set(ranges.index[ranges["scope"] == "item"]) == set(ITEM_FEATURES)
    assert feature_ranges(recommender) is ranges  # cached


def test_an_override_changes_the_behaviour_part_exactly_as_the_head_says(recommender, ranges, user):
    name = "category_affinity"
    value = float(ranges.at[name, "low"] + 0.7 * (ranges.at[name, "high"] - ranges.at[name, "low"]))
    real = recommender.context(user)
    edited = recommender.context(user, feature_overrides={name: value})
    features = recommender.behaviour_features(real)  # (N, F)
    assert not np.allclose(features[:, FEATURE_NAMES.index(name)], value)  # the override is a change
    features[:, FEATURE_NAMES.index(name)] = value
    with torch.no_grad():
        expected = recommender.net.behaviour_score(torch.as_tensor(features, device=recommender.device)).double().cpu().numpy()
    before, after = recommender.score_parts(real), recommender.score_parts(edited)
    np.testing.assert_allclose(after["behaviour"], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(after["text"], before["text"])  # only the behaviour part moves
    np.testing.assert_array_equal(after["collaborative"], before["collaborative"])
    assert any("set by hand" in note for note in edited.notes)


def test_recommend_and_score_read_the_overrides(recommender, ranges, user):
    overrides = {"item_popularity": float(ranges.at["item_popularity", "high"])}
    top = recommender.recommend(user_id=user, k=5, feature_overrides=overrides)
    scores = recommender.score(user, item_ids=[r.item_id for r in top], feature_overrides=overrides)
    np.testing.assert_allclose(scores, [r.score for r in top], rtol=1e-6)
    plain = recommender.score(user, item_ids=[r.item_id for r in top])
    assert not np.allclose(scores, plain)


@pytest.mark.parametrize("bound", ["low", "high"])
def test_every_feature_at_its_extreme_gives_finite_scores(recommender, ranges, user, bound):
    overrides = {name: float(ranges.at[name, bound]) for name in FEATURE_NAMES}
    frame = ranking(recommender, user, feature_overrides=overrides)
    assert np.isfinite(frame["score"]).all()
    assert list(frame["rank"]) == list(range(1, len(frame) + 1))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"no_such_feature": 1.0}, "unknown behaviour feature 'no_such_feature'"),
    ({"price_affinity": float("nan")}, "finite number"),
    ({"price_affinity": "high"}, "finite number"),
    ({"price_affinity": 1e6}, "outside its observed range"),
    ({"category_affinity": -0.5}, "outside its observed range"),
])
def test_bad_overrides_are_refused_clearly(recommender, user, overrides, message):
    with pytest.raises(ModelError, match=message):
        recommender.recommend(user_id=user, k=3, feature_overrides=overrides)


def test_a_value_a_rounding_error_outside_is_the_bound(recommender, ranges, user):
    high = float(ranges.at["price_affinity", "high"])
    context = recommender.context(user, feature_overrides={"price_affinity": high * (1 + 1e-9)})
    assert context.feature_overrides == (("price_affinity", high),)


def test_the_explanation_reads_the_overrides_and_adds_up(recommender, ranges, user):
    name = "price_affinity"
    value = float(ranges.at[name, "high"])
    top = recommender.recommend(user_id=user, k=1, feature_overrides={name: value})[0]
    explanation = explain(recommender, top.item_id, user_id=user, n_steps=16, drill_down=0,
                          feature_overrides={name: value})
    assert explanation.score == pytest.approx(top.score, rel=1e-6)
    behaviour = explanation.features()  # every feature as the history sets them: the served behaviour part
    assert behaviour.total == pytest.approx(top.parts["behaviour"] - behaviour.base_value, abs=1e-5)
    own = explanation.part("behaviour")  # in the sum: the features with the history removed, the override kept
    assert own.details[FEATURE_NAMES.index(name)]["value"] == pytest.approx(value)
    assert behaviour.details[FEATURE_NAMES.index(name)]["value"] == pytest.approx(value)
    assert abs(explanation.completeness_gap) < 0.05 * max(1.0, abs(explanation.score))
    assert any("set by hand" in note for note in explanation.notes)


def test_removing_a_history_item_reranks_it_and_the_rest(recommender, user):
    events = recommender.dataset.user_events(user)
    removed = str(events["item_id"].iloc[-1])
    history = edited_history(recommender, user, remove=[removed])
    assert removed not in set(history["item_id"]) and len(history) < len(events)
    real, edited = ranking(recommender, user), ranking(recommender, user, history=history)
    assert removed not in set(real["item_id"]) and removed in set(edited["item_id"])  # no longer "seen"
    direct = recommender.score(user, item_ids=list(edited["item_id"][:5]), history=history)
    np.testing.assert_allclose(edited["score"][:5], direct, rtol=1e-6)
    common = real.set_index("item_id")["score"].reindex(edited["item_id"]).dropna()
    assert not np.allclose(common.to_numpy(), edited.set_index("item_id")["score"][common.index].to_numpy())


def test_an_added_item_is_in_the_history_just_now(recommender, user):
    seen = set(recommender.dataset.user_events(user)["item_id"])
    added = next(str(i) for i in recommender.item_ids if str(i) not in seen)
    history = edited_history(recommender, user, add=[(added, "purchase")])
    assert history["item_id"].iloc[-1] == added and history["event"].iloc[-1] == "purchase"
    assert history["timestamp"].iloc[-1] == recommender.dataset.events["timestamp"].max()
    assert added not in set(ranking(recommender, user, history=history)["item_id"])
    assert recommender.context(user, history=history).moment_ns == recommender.context(user).moment_ns


def test_bad_history_edits_are_named(recommender, user):
    with pytest.raises(ModelError, match="unknown item"):
        edited_history(recommender, user, remove=["no-such-item"])
    with pytest.raises(ModelError, match="unknown item"):
        edited_history(recommender, user, add=[("no-such-item", "view")])
    with pytest.raises(ModelError, match="event 'like' is not one of"):
        edited_history(recommender, user, add=[(str(recommender.item_ids[0]), "like")])
    with pytest.raises(ModelError, match="unknown user"):
        edited_history(recommender, "no-such-user")


def test_removing_the_whole_history_ranks_as_a_cold_start(recommender, user):
    events = recommender.dataset.user_events(user)
    history = edited_history(recommender, user, remove=list(events["item_id"].unique()))
    assert history.empty
    frame = ranking(recommender, user, history=history)
    assert len(frame) == len(recommender.item_ids) and np.isfinite(frame["score"]).all()
    assert frame.attrs["mode"] == "popularity"
    assert any("no history" in note for note in frame.attrs["notes"])
    explanation = explain(recommender, frame["item_id"][0], user_id=user, history=history, n_steps=8, drill_down=0)
    assert "no_history" in explanation.flags
    # float32 parts of a few units can cancel to a score near 0: compare to float32 rounding of the parts
    assert explanation.score == pytest.approx(frame["score"][0], rel=1e-6, abs=1e-6)


def _ranked(ids):
    return pd.DataFrame({"rank": range(1, len(ids) + 1), "item_id": ids, "title": [f"t{i}" for i in ids],
                         "score": np.linspace(1, 0, len(ids))})


def test_rank_changes_marks_moves_entries_and_exits():
    real = _ranked(["a", "b", "c", "d", "e"])
    edited = _ranked(["c", "a", "e", "b"])  # d went into the history: not ranked any more
    changes = rank_changes(real, edited, 3).set_index("item_id")
    assert list(changes.index) == ["c", "a", "e", "b"]  # the edited top 3, then what left, in its real order
    assert changes.loc["c", ["real_rank", "new_rank", "change", "status"]].tolist() == [3, 1, 2, "up"]
    assert changes.loc["a", "status"] == "down" and changes.loc["a", "change"] == -1
    assert changes.loc["e", "status"] == "entered" and changes.loc["e", "real_rank"] == 5
    assert changes.loc["b", "status"] == "left" and changes.loc["b", "new_rank"] == 4
    same = rank_changes(real, real, 2)
    assert list(same["status"]) == ["same", "same"] and (same["change"] == 0).all()
    gone = rank_changes(real, _ranked(["b", "c", "e"]), 2).set_index("item_id")
    assert gone.loc["a", "status"] == "left" and pd.isna(gone.loc["a", "new_rank"])
    with pytest.raises(ModelError, match="positive whole number"):
        rank_changes(real, edited, 0)
    assert math.isfinite(changes["new_score"].sum())
