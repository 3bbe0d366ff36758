"""The history part: the removal game against What-if, the value estimators on games with known answers, the part."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from explain import explain, faithfulness
from explain.errors import ExplanationError
from explain.history import SHARED, HistoryAttributor, removal_values, shapley_values
from model.removal import HistoryRemoval, Player
from model.sequences import SubsetHistories, history_from_trail, serving_tensors
from model.serving import score_view
from model.whatif import edited_history


@pytest.fixture(scope="module")
def users(recommender) -> list[str]:
    """Users with at least five distinct past items."""
    return [u for u in recommender.user_ids if len(recommender.histories[u]) >= 5][:3]


def subsets(n: int, count: int, seed: int = 0) -> np.ndarray:
    present = np.random.default_rng(seed).random((count, n)) < 0.6
    present[0], present[1] = True, False  # the whole history, and none of it
    return present


# ---- the removal game is What-if's removal ------------------------------------------------------------------------

@pytest.mark.parametrize("query", [None, "red wool sock"])
def test_removal_scores_are_what_if_scores(recommender, users, query):
    for user in users:
        item = recommender.recommend(user_id=user, query=query, k=1)[0].item_id
        context = recommender.context(user, query)
        game = HistoryRemoval(recommender, context, int(recommender.item_positions([item])[0]))
        present = subsets(len(game), 12)
        scores = game.scores(present)
        for row, kept in zip(present, scores):
            removed = [i for p, player in enumerate(game.players) if not row[p] for i in player.item_ids]
            history = edited_history(recommender, user, remove=removed)
            assert kept == pytest.approx(recommender.score(user, query, [item], history=history)[0], abs=1e-5)


def test_subset_histories_are_the_histories_rebuilt_from_the_kept_events(recommender, users):
    for user in users:
        items, times, kinds = recommender.features.user_trail(user, None)
        full = history_from_trail(user, items, times, kinds)
        subset = SubsetHistories(full, items, times, kinds)
        kept = subsets(len(full), 20, seed=1)
        moment = full.end + 1
        fast = subset.tensors(kept, moment, max_history=4)  # shorter than the histories: the window matters too
        for row, units in enumerate(kept):
            events = np.isin(items, full.item_index[units])
            rebuilt = history_from_trail(user, items[events], times[events], kinds[events])
            slow = serving_tensors([rebuilt], [moment], 4)
            width = slow["items"].shape[1]
            for name in ("items", "event_codes", "gap_codes", "now_codes"):
                assert torch.equal(fast[name][row, :width], slow[name][0]), (name, row)
                assert not fast[name][row, width:].any() or name == "items"
            assert int(fast["lengths"][row]) == int(slow["lengths"][0])


def test_features_of_kept_events_match_an_edited_history(recommender, users):
    user = users[0]
    at = pd.Timestamp(recommender.dataset.events["timestamp"].max()) + pd.Timedelta(seconds=1)
    items, _, _ = recommender.features.user_trail(user, at)
    keep = subsets(len(items), 6, seed=2)
    index = np.arange(len(recommender.item_ids))[:7]
    kept = recommender.features.user_features_kept(user, at, index, keep)
    events = recommender.dataset.user_events(user).sort_values("timestamp", kind="stable")
    for row, mask in enumerate(keep):
        expected = recommender.features.user_features(user, at=at, item_index=index, history=events[mask])
        np.testing.assert_allclose(kept[row], expected, rtol=1e-6, atol=1e-7)


def test_the_oldest_past_items_are_one_player_past_the_limit(recommender, users):
    user = users[0]
    context = recommender.context(user)
    game = HistoryRemoval(recommender, context, 0, max_players=3)
    assert len(game) == 3 and game.players[0].name == "earlier items"
    assert len(game.players[0].item_ids) == len(recommender.histories[user]) - 2
    with pytest.raises(Exception, match="max_players 0"):
        HistoryRemoval(recommender, context, 0, max_players=0)


# ---- the estimators on games whose values are known --------------------------------------------------------------

def additive(weights):
    weights = np.asarray(weights, dtype=np.float64)
    return lambda present: np.asarray(present, dtype=np.float64) @ weights


def test_an_additive_game_is_recovered_exactly_by_every_estimator():
    weights = np.array([0.5, -1.25, 2.0, 0.0, 0.75, 3.0])
    exact, how = shapley_values(additive(weights), 6)
    assert how["estimator"] == "exact" and how["evaluations"] == 64
    np.testing.assert_allclose(exact, weights, atol=1e-12)
    sampled, how = shapley_values(additive(weights), 6, exact_max=3, permutations=8)
    assert how["estimator"] == "permutations"
    np.testing.assert_allclose(sampled, weights, atol=1e-12)  # every order gives an additive game's weights
    for limit in (10_000, 10):  # exact, then sampled
        values, _ = removal_values(additive(weights), 6, exact_limit=limit)
        np.testing.assert_allclose(values, weights, atol=1e-12)


def test_shapley_values_of_a_game_with_known_values():
    # v(S) = 1 when S holds both 0 and 1 (they need each other), plus 3 for player 2: 0.5, 0.5, 3, 0.
    def game(present):
        present = np.asarray(present)
        return (present[:, 0] & present[:, 1]).astype(float) + 3.0 * present[:, 2]

    values, _ = shapley_values(game, 4)
    np.testing.assert_allclose(values, [0.5, 0.5, 3.0, 0.0], atol=1e-12)
    sampled, _ = shapley_values(game, 4, exact_max=0, permutations=64, seed=3)
    assert math.fsum(sampled) == pytest.approx(4.0, abs=1e-12)  # orders telescope: the sum is always exact


def test_removal_values_of_a_redundant_game():
    # v(S) = 1 when S holds 0 or 1 (either will do), else 0. Leave-one-out sees nothing in either; removed with
    # others, each matters when the other is gone too. n = 3, depth 2: player 0's marginal is 0 with nothing else
    # removed, 1/2 with one other removed (only when it is player 1), 1 with both others removed: mean 1/2.
    def game(present):
        present = np.asarray(present)
        return (present[:, 0] | present[:, 1]).astype(float)

    values, how = removal_values(game, 3, depth=2)
    assert how["estimator"] == "exact"
    np.testing.assert_allclose(values, [0.5, 0.5, 0.0], atol=1e-12)
    loo, _ = removal_values(game, 3, depth=0)
    np.testing.assert_allclose(loo, [0.0, 0.0, 0.0], atol=1e-12)


# ---- the part: a fake game whose removal effects are known -------------------------------------------------------

class _AdditiveGame:
    """A removal game with an additive user state: each past item adds its weight, whatever else is there."""

    def __init__(self, weights, shared_jump=0.0):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.shared_jump = shared_jump  # what having any history at all adds, no single item's
        self.players = tuple(Player(f"item {p}", (f"i{p}",), (p,), 1, "view", 0, 10**9 * p)
                             for p in range(len(weights)))
        self.item_vector = self.query_vector = None

    def __len__(self):
        return len(self.players)

    def evaluate(self, present, variants=None):
        present = np.asarray(present, dtype=np.float64)
        value = present @ self.weights + self.shared_jump * (present.sum(1) > 0)
        return {"dot": np.stack([value, value], 1), "behaviour": np.zeros(len(present))}

    def scores(self, present):
        parts = self.evaluate(present)
        return parts["dot"][:, 0] + parts["behaviour"]

    def removal_drops(self, removed):
        present = np.ones((len(removed) + 1, len(self)), dtype=bool)
        for row, players in enumerate(removed, start=1):
            present[row, list(players)] = False
        scores = self.scores(present)
        return scores[0] - scores[1:]


@pytest.mark.parametrize("shared_jump", [0.0, 4.0])
def test_the_history_part_recovers_known_removal_effects(monkeypatch, recommender, users, shared_jump):
    weights = [0.25, -0.5, 1.5, 0.0, 0.125]
    monkeypatch.setattr("model.removal.HistoryRemoval", lambda *args, **kwargs: _AdditiveGame(weights, shared_jump))
    monkeypatch.setattr("explain.history.baseline_vectors", lambda *args: (None, None))
    context = recommender.context(users[0])
    view = score_view(recommender, context, 0)
    (part,) = HistoryAttributor().attribute(recommender, context, view)
    entries = [(v, d) for v, d in zip(part.values, part.details) if not d.get("shared")]
    expected = {f"i{p}": w for p, w in enumerate(weights)}
    assert {d["item_id"]: v for v, d in entries} == pytest.approx(expected, abs=1e-12)
    assert {d["item_id"]: d["removal_effect"] for _, d in entries} == pytest.approx(expected, abs=1e-12)
    assert part.names[-1] == SHARED and part.values[-1] == pytest.approx(shared_jump, abs=1e-12)
    assert math.fsum(part.values) == pytest.approx(sum(weights) + shared_jump, abs=1e-12)
    assert [abs(v) for v in part.values[:-1]] == sorted((abs(v) for v in part.values[:-1]), reverse=True)
    assert abs(part.completeness_gap) <= 1e-12


def test_bad_estimator_settings_are_refused():
    with pytest.raises(ExplanationError, match="depth -1"):
        HistoryAttributor(depth=-1)
    with pytest.raises(ExplanationError, match="permutations 1"):
        shapley_values(additive([1.0] * 12), 12, exact_max=4, permutations=1)


# ---- on the tiny model: the part, its faithfulness, and What-if --------------------------------------------------

def test_credited_past_items_agree_with_removing_them(recommender, users):
    user = users[0]
    item = recommender.recommend(user_id=user, k=1)[0].item_id
    explanation = explain(recommender, item, user_id=user, n_steps=8, drill_down=0)
    history = explanation.part("history")
    served = recommender.score(user, None, [item])[0]
    for detail in history.details:
        if detail.get("shared"):
            continue
        edited = edited_history(recommender, user, remove=[detail["item_id"]])
        alone = served - recommender.score(user, None, [item], history=edited)[0]
        assert detail["removal_effect"] == pytest.approx(alone, abs=1e-5)
    measured = faithfulness(recommender, explanation, random_draws=2)
    credited = [d["item_id"] for v, d in sorted(zip(history.values, history.details), key=lambda e: -e[0])
                if not d.get("shared") and v > 0][:3]
    edited = edited_history(recommender, user, remove=credited)
    assert measured["history_top3_drop"] == pytest.approx(
        served - recommender.score(user, None, [item], history=edited)[0], abs=1e-5)
    assert measured["history_loo1_drop"] == pytest.approx(max(measured["history_removal_effects"]), abs=1e-12)
    assert measured["history_loo3_drop"] >= measured["history_loo1_drop"] - 1e-6 or len(credited) < 3
    top10 = [r.item_id for r in recommender.recommend(user_id=user, k=10, history=edited)]
    assert measured["history_top3_top10"] == (item in top10)
    assert 0.0 <= measured["history_random3_top10"] <= 1.0


def test_a_query_without_a_user_has_no_past_items_to_remove(recommender):
    item = recommender.recommend(query="red mug", k=1)[0].item_id
    explanation = explain(recommender, item, query="red mug", n_steps=4)
    measured = faithfulness(recommender, explanation, random_draws=1)
    assert len(explanation.part("history")) == 0 and measured["history_players"] == 0
    assert measured["history_top3_drop"] == 0.0 and measured["history_top3_top10"] is None


def test_the_removal_values_need_no_more_subsets_than_the_limit(recommender, users):
    context = recommender.context(users[0])
    view = score_view(recommender, context, 0)
    (part,) = HistoryAttributor(exact_limit=5, samples=2).attribute(recommender, context, view)
    assert part.parameters["estimator"] == "sampled" and part.parameters["samples"] == 2
    n = part.parameters["players"]
    assert part.parameters["evaluations"] <= 1 + n + 2 * 2 * 2 * n  # LOO, and two sets a depth per player
    assert abs(part.completeness_gap) <= 1e-9  # sampled or not, the shared entry closes the sum
