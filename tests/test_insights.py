"""Global insights: behaviour importance over a sample (additive, the same as one explanation), driving words, metrics."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from data.features import FEATURES
from explain import Attribution, Explanation, ExplanationError, explain
from explain.insight_charts import beeswarm, importance_bars, metrics_bars, swarm_offsets, word_bars
from explain.insights import (
    EVALUATION,
    BehaviourImportance,
    DrivingWords,
    behaviour_importance,
    driving_words,
    item_words,
    metrics_comparison,
    read_evaluation,
    sample_users,
)


@pytest.fixture(scope="module")
def importance(recommender):
    return behaviour_importance(recommender, n_users=12, k=3)


@pytest.fixture(scope="module")
def words(recommender):
    calls = []
    result = driving_words(recommender, n_pairs=6, n_steps=4, progress=lambda *call: calls.append(call))
    return result, calls


# ---- behaviour importance ----------------------------------------------------------------------------------------

def test_importance_rows_are_the_sampled_users_top_items(recommender, importance):
    users = sample_users(recommender, 12)
    assert len(set(users)) == 12 and all(len(recommender.histories[u]) for u in users)
    assert list(importance.user_ids) == [u for u in users for _ in range(3)]
    for user in users[:3]:
        shown = [r.item_id for r in recommender.recommend(user_id=user, k=3)]
        assert [i for u, i in zip(importance.user_ids, importance.item_ids) if u == user] == shown
    assert importance.ranks[:3] == (1, 2, 3)
    assert importance.values.shape == importance.features.shape == (36, len(FEATURES))


def test_importance_is_additive_row_by_row(recommender, importance):
    served = np.concatenate([
        recommender.score_parts(recommender.context(u), recommender.item_positions([i]))["behaviour"]
        for u, i in zip(importance.user_ids, importance.item_ids)])
    np.testing.assert_allclose(importance.scores, served, atol=1e-6)  # the behaviour part of the served score
    gaps = importance.base_values + importance.values.sum(axis=1) - importance.scores
    assert np.abs(gaps).max() <= 1e-5
    assert importance.completeness_gap == pytest.approx(np.abs(gaps).max())
    assert np.abs(importance.values).sum() > 0  # the head is trained: something moves the score


def test_importance_agrees_with_the_explanation_of_one_item(recommender, importance):
    user, item = importance.user_ids[4], importance.item_ids[4]
    # The importance explains every feature as the history sets them: the explanation's behaviour_full drill-down.
    part = explain(recommender, item, user_id=user, n_steps=2, drill_down=0).features()
    np.testing.assert_allclose(importance.values[4], part.values, atol=1e-6)
    np.testing.assert_allclose(importance.features[4], [d["value"] for d in part.details], atol=1e-6)
    assert importance.base_values[4] == pytest.approx(part.base_value, abs=1e-7)


def test_summary_ranks_features_by_mean_absolute_shap(importance):
    summary = importance.summary()
    assert sorted(summary["feature"]) == sorted(spec.name for spec in FEATURES)
    assert list(summary["mean_abs_shap"]) == sorted(summary["mean_abs_shap"], reverse=True)
    j = [spec.name for spec in FEATURES].index(summary["feature"][0])
    assert summary["mean_abs_shap"][0] == pytest.approx(np.abs(importance.values[:, j]).mean())
    assert summary["unit"][0] == FEATURES[j].unit


def test_the_sample_is_seeded_and_nested(recommender):
    assert sample_users(recommender, 20) == sample_users(recommender, 20)
    assert sample_users(recommender, 5) == sample_users(recommender, 20)[:5]
    assert sample_users(recommender, 20, seed=1) != sample_users(recommender, 20)
    assert len(sample_users(recommender, 10_000)) == sum(1 for h in recommender.histories.values() if len(h))


@pytest.mark.parametrize("n_users, k, message", [(0, 3, "number of users 0"), (5, 0, "k 0"), (5, 10_000, "k 10000"),
                                                 (2.5, 3, "number of users 2.5")])
def test_bad_sample_settings_are_refused(recommender, n_users, k, message):
    with pytest.raises(ExplanationError, match=message):
        behaviour_importance(recommender, n_users=n_users, k=k)


def test_progress_reaches_the_end(recommender):
    calls = []
    behaviour_importance(recommender, n_users=4, k=2, progress=lambda *call: calls.append(call))
    done = [d for d, _, _ in calls]
    assert done == sorted(done) and calls[-1][0] == calls[-1][1]


# ---- driving words -----------------------------------------------------------------------------------------------

def token_explanation(words_and_values) -> Explanation:
    """An explanation whose item words are given: [(word, value), ...], one token each."""
    names = [w for w, _ in words_and_values]
    details = [{"position": i + 1, "word_index": i, "word": w} for i, w in enumerate(names)]
    part = Attribution("item_tokens", names, [v for _, v in words_and_values], 0.0, "integrated_gradients", {},
                       details=details)
    return Explanation("i1", "t", "u1", None, "user", "2024-01-01T00:00:00+00:00", "c", 1.0, 0.0, (part,))


def test_item_words_sum_occurrences_and_leave_out_labels_and_punctuation():
    explanation = token_explanation([
        ("Wool", 0.2), ("sock", 0.1), (".", 0.9), ("Brand", 0.8), (":", 0.7), ("Knitly", 0.05), (".", 0.1),
        ("Category", 0.6), (":", 0.5), ("Socks", -0.3), ("wool", 0.15), ("brand", 0.12), ("cold", -0.4),
    ])
    assert item_words(explanation) == [("wool", pytest.approx(0.35)), ("brand", 0.12), ("sock", 0.1)]
    assert item_words(explanation, top=10)[-1] == ("knitly", 0.05)  # negative words never drive
    assert item_words(token_explanation([])) == []


def test_driving_words_come_from_each_items_own_explanation(recommender, words):
    result, _ = words
    assert len(result.pairs) == 6
    users = sample_users(recommender, 6)
    assert list(result.pairs["user_id"]) == users
    for pair in result.pairs.itertuples():
        assert pair.item_id == recommender.recommend(user_id=pair.user_id, k=1)[0].item_id
    first = result.pairs.iloc[0]
    expected = item_words(explain(recommender, first.item_id, user_id=first.user_id, n_steps=4, drill_down=0))
    mine = result.words[result.words["user_id"] == first.user_id]
    assert list(zip(mine["word"], mine["value"])) == [(w, pytest.approx(v)) for w, v in expected]
    assert list(mine["rank"]) == list(range(1, len(mine) + 1))
    categories = recommender.items.set_index("item_id")["category"]
    assert all(categories[i] == c for i, c in zip(result.words["item_id"], result.words["category"]))


def test_words_by_category_count_items_and_shares(words):
    result, _ = words
    table = result.by_category(per_category=50)
    for row in table.itertuples():
        drove = result.words[(result.words["category"] == row.category) & (result.words["word"] == row.word)]
        assert row.items == len(drove)
        assert row.pairs == (result.pairs["category"] == row.category).sum()
        assert row.share == pytest.approx(row.items / row.pairs) and 0 < row.share <= 1
        assert row.mean_value == pytest.approx(drove["value"].mean()) and row.mean_value > 0
    assert table["items"].sum() == len(result.words)
    assert len(result.by_category(per_category=1)) == table["category"].nunique()


def test_words_progress_counts_pairs(words):
    _, calls = words
    assert [(d, t) for d, t, _ in calls] == [(i, 6) for i in range(1, 7)]
    assert [label for _, _, label in calls] == [f"explained {i} / 6 users' top items" for i in range(1, 7)]


def test_importance_progress_says_how_many_users_are_done(recommender):
    calls = []
    behaviour_importance(recommender, n_users=4, k=2, progress=lambda *call: calls.append(call))
    labels = [label for _, _, label in calls]
    assert labels[:4] == [f"ranked {i} / 4 users" for i in range(1, 5)]  # a bar reads "ranked 3 / 4 users"
    assert labels[4:-1] == [f"SHAP values for {i} / 4 users" for i in range(1, 5)]


def test_no_words_give_an_empty_table():
    empty = DrivingWords(pd.DataFrame(columns=["user_id", "item_id", "title", "category", "score"]),
                         pd.DataFrame(columns=["user_id", "item_id", "category", "word", "value", "rank"]))
    assert empty.by_category().empty
    assert word_bars(empty.by_category()) is None


# ---- metrics -----------------------------------------------------------------------------------------------------

EVALUATED = {"checkpoint_id": "abc", "stage": "test", "models": {
    "model": {"NDCG@10": 0.06, "HR@10": 0.12, "MRR": 0.05, "users": 40},
    "popularity": {"NDCG@10": 0.01, "HR@10": 0.03, "MRR": 0.02, "users": 40},
    "item-kNN": {"NDCG@10": 0.05, "HR@10": 0.1, "MRR": 0.04, "users": 40},
}}


def test_metrics_put_the_model_beside_its_baselines():
    frame = metrics_comparison({"valid": {"NDCG@10": 0.07, "HR@10": 0.13, "users": 50}}, EVALUATED)
    assert list(frame["name"]) == ["model", "model", "popularity", "item-kNN"]
    assert list(frame["split"]) == ["validation", "test", "test", "test"]
    assert list(frame["role"]) == ["model", "model", "baseline", "baseline"]
    assert frame.loc[2, "NDCG@10"] == 0.01 and math.isnan(frame.loc[0, "MRR"])
    figure = metrics_bars(frame)
    assert [trace.name for trace in figure.data] == ["model (validation)", "model (test)", "popularity (test)",
                                                     "item-kNN (test)"]
    assert list(figure.data[2].y) == [0.01, 0.03, 0.02]


def test_metrics_without_any_figures_are_an_empty_table(recommender):
    frame = metrics_comparison(None)
    assert frame.empty and "NDCG@10" in frame.columns
    assert metrics_bars(frame) is None
    stored = metrics_comparison(recommender.metadata["metrics"])
    assert set(stored["name"]) == {"model", "model without behaviour"}
    assert stored.loc[0, "NDCG@10"] == recommender.metadata["metrics"]["valid"]["NDCG@10"]


def test_reading_an_evaluation_report(tmp_path):
    assert read_evaluation(tmp_path) is None
    (tmp_path / EVALUATION).write_text(json.dumps(EVALUATED))
    assert read_evaluation(tmp_path, "abc")["models"]["popularity"]["HR@10"] == 0.03
    with pytest.raises(ExplanationError, match=r"evaluates checkpoint abc, but the model is xyz.*python -m model"):
        read_evaluation(tmp_path, "xyz")
    (tmp_path / EVALUATION).write_text("{not json")
    with pytest.raises(ExplanationError, match=f"{EVALUATION}: not a readable evaluation report"):
        read_evaluation(tmp_path)
    (tmp_path / EVALUATION).write_text("[1, 2]")
    with pytest.raises(ExplanationError, match="no 'models' section"):
        read_evaluation(tmp_path)


# ---- charts ------------------------------------------------------------------------------------------------------

def test_beeswarm_has_a_point_per_row_and_feature_and_escapes_titles(importance):
    evil = "<img src=x onerror=alert(1)>"
    figure = beeswarm(importance, {importance.item_ids[0]: evil})
    (points,) = figure.data
    assert len(points.x) == len(importance) * len(FEATURES)
    assert sorted(points.x) == pytest.approx(sorted(importance.values.ravel()))
    assert evil not in "".join(points.hovertext) and "&lt;img src=x onerror=alert(1)&gt;" in points.hovertext[0]
    top = importance.summary()["label"][0]
    assert figure.layout.yaxis.ticktext[0].startswith(top)
    assert min(points.marker.color) >= 0 and max(points.marker.color) <= 1
    bars = importance_bars(importance)
    assert list(bars.data[0].x) == list(importance.summary()["mean_abs_shap"])


def test_swarm_offsets_stack_close_points_apart():
    values = np.array([0.0, 0.0, 0.0, 0.0, 1.0])
    offsets = swarm_offsets(values, bins=10, half_height=0.4)
    assert len(set(offsets[:4])) == 4 and offsets[4] == 0.0
    assert np.abs(offsets).max() <= 0.4
    assert len(swarm_offsets(np.zeros(0))) == 0


def test_empty_importance_has_a_summary():
    empty = BehaviourImportance((), (), (), np.zeros((0, len(FEATURES))), np.zeros((0, len(FEATURES))),
                                np.zeros(0), 0.0)
    assert empty.completeness_gap == 0.0
    assert len(empty.summary()) == len(FEATURES)


# ---- computed ahead of time ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ahead(recommender):
    from explain.insights_file import precompute

    return precompute(recommender, n_users=6, k=2, n_pairs=3, n_steps=4)


def test_precomputed_insights_round_trip_through_the_file(recommender, ahead, tmp_path):
    from explain.insights_file import read_insights, write_insights

    path = write_insights(ahead, tmp_path / "insights.json")
    again = read_insights(path, recommender.checkpoint_id, recommender.dataset.meta.fingerprint)
    importance, words = again.importance_for(6, 2), again.words_for(3, 4)
    for name in ("features", "values", "scores", "base_values"):
        np.testing.assert_array_equal(getattr(importance, name), getattr(ahead.importance, name))
    assert (importance.user_ids, importance.item_ids, importance.ranks) == (
        ahead.importance.user_ids, ahead.importance.item_ids, ahead.importance.ranks)
    pd.testing.assert_frame_equal(words.pairs, ahead.words.pairs)
    pd.testing.assert_frame_equal(words.words, ahead.words.words)
    pd.testing.assert_frame_equal(words.by_category(), ahead.words.by_category())
    assert again.importance_for(7, 2) is None and again.words_for(3, 8) is None  # other settings: not these
    assert read_insights(tmp_path / "none.json", recommender.checkpoint_id, "x") is None


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "Expecting property name"),
    ('{"schema": "whyrec-report"}', "not a precomputed insights file"),
    ("checkpoint", "computed for checkpoint another, but the model is"),
    ("data", "computed on other data"),
    ("rows", "behaviour importance is incomplete"),
])
def test_a_broken_or_foreign_precomputed_file_is_refused_by_name(recommender, ahead, tmp_path, content, message):
    from explain.insights_file import read_insights

    data = ahead.to_dict()
    if content == "checkpoint":
        data["checkpoint_id"] = "another"
    elif content == "data":
        data["data_fingerprint"] = "other"
    elif content == "rows":
        data["importance"]["values"] = data["importance"]["values"][:-1]
    path = tmp_path / "insights.json"
    path.write_text(content if content.startswith("{") else json.dumps(data))
    with pytest.raises(ExplanationError, match=message) as raised:
        read_insights(path, recommender.checkpoint_id, recommender.dataset.meta.fingerprint)
    assert str(path) in str(raised.value) and "python -m explain insights" in str(raised.value)


def test_the_command_line_precomputes_the_insights(recommender, tiny_model, tmp_path, capsys):
    from explain.__main__ import main
    from explain.insights_file import read_insights

    out = tmp_path / "insights.json"
    assert main(["insights", "--model", str(tiny_model), "--users", "6", "--k", "2", "--pairs", "3", "--steps", "4",
                 "--out", str(out), "--no-progress"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    written = read_insights(out, recommender.checkpoint_id, recommender.dataset.meta.fingerprint)
    assert written.settings == {"users": 6, "k": 2, "pairs": 3, "steps": 4, "seed": 0}
    assert main(["insights", "--model", str(tmp_path / "nowhere"), "--no-progress"]) == 2
