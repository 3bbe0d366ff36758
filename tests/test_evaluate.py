"""Ranking metrics on hand-worked ranks, each baseline where the answer is known, evaluate_model end to end."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from data.features import FEATURES
from data.schema import EVENT_TYPES, make_dataset
from data.split import leave_last_out
from model.baselines import ItemKNN, Popularity, TextSimilarity, tie_break_order
from model.errors import ModelError
from model.evaluate import evaluate_model, evaluate_scorer, metrics_from_ranks, ranks_of_targets
from model.sequences import UserHistory, build_histories

T0 = pd.Timestamp("2024-03-01", tz="UTC")
HOUR = pd.Timedelta(hours=1)


def shop(event_rows, item_ids):
    """event_rows: (user_id, item_id, hours after T0, event)."""
    items = pd.DataFrame({"item_id": list(item_ids), "title": [f"Product {i}" for i in item_ids],
                          "category": "tools", "brand": "acme", "description": None, "price": 10.0})
    events = pd.DataFrame({
        "user_id": [r[0] for r in event_rows],
        "item_id": [r[1] for r in event_rows],
        "timestamp": pd.to_datetime([T0 + r[2] * HOUR for r in event_rows], utc=True),
        "event": pd.Categorical([r[3] for r in event_rows], categories=EVENT_TYPES),
        "value": np.nan,
    })
    return make_dataset(items, events, source="test", format="test")


def history_of(*positions):
    index = np.array(positions, dtype=np.int64)
    times = np.arange(len(index), dtype=np.int64)
    return UserHistory("u", index, np.ones(len(index), dtype=np.int64), times, times)


def ns(hours):
    return (T0 + hours * HOUR).value


# ---- metrics ------------------------------------------------------------------------------------------


def test_ndcg_of_rank_one_is_one_and_of_rank_three_is_a_half():
    assert metrics_from_ranks(np.array([1]))["NDCG@10"] == 1.0
    assert metrics_from_ranks(np.array([3]))["NDCG@10"] == pytest.approx(0.5)
    both = metrics_from_ranks(np.array([1, 3, 11]))
    assert both["NDCG@10"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert both["HR@5"] == pytest.approx(2 / 3)
    assert both["HR@10"] == pytest.approx(2 / 3)
    assert both["HR@20"] == pytest.approx(1.0)
    assert both["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)
    assert metrics_from_ranks(np.array([7]))["NDCG@5"] == 0.0
    assert metrics_from_ranks(np.array([7]))["NDCG@10"] == pytest.approx(1 / math.log2(8))


def test_ties_count_against_the_target():
    scores = np.array([[1.0, 1.0, 1.0, 0.0], [0.0, 2.0, 2.0, 2.0]])
    assert ranks_of_targets(scores, np.array([1, 1]), None).tolist() == [3, 3]


def test_excluded_history_items_do_not_count_but_the_target_is_always_ranked():
    scores = np.array([[5.0, 4.0, 3.0, 2.0]])
    assert ranks_of_targets(scores, np.array([2]), None).tolist() == [3]
    assert ranks_of_targets(scores, np.array([2]), [np.array([0])]).tolist() == [2]
    # The target in the excluded set (a repeat purchase) is still ranked, against the others.
    assert ranks_of_targets(scores, np.array([2]), [np.array([0, 2])]).tolist() == [2]
    assert ranks_of_targets(scores, np.array([3]), [np.array([0, 1, 2])]).tolist() == [1]


def test_nan_scores_raise_instead_of_ranking_first():
    with pytest.raises(ModelError, match="NaN"):
        ranks_of_targets(np.array([[1.0, np.nan]]), np.array([1]), None)


# ---- baselines ----------------------------------------------------------------------------------------


def test_tie_break_prefers_counts_then_the_lower_catalog_position():
    order = tie_break_order(np.array([0, 5, 5, 1]))
    assert np.argsort(-order).tolist() == [1, 2, 3, 0]
    assert order.min() >= 0 and order.max() < 1


def test_popularity_counts_only_events_before_the_moment():
    # Before hour 10: A three times, B once. After it B is touched ten times.
    rows = [("u1", "A", 1, "view"), ("u2", "A", 2, "view"), ("u3", "A", 3, "cart"), ("u4", "B", 4, "view")]
    rows += [(f"v{i}", "B", 11 + i, "view") for i in range(10)]
    rows += [("u5", "A", 10, "view")]  # at the very moment: not before it
    dataset = shop(rows, ["A", "B", "C", "D"])
    popularity = Popularity(dataset.events, dataset.item_position)
    assert popularity.counts([ns(10)]).tolist() == [[3, 1, 0, 0]]
    assert popularity.counts([ns(0)]).tolist() == [[0, 0, 0, 0]]
    assert popularity.counts([ns(100)]).tolist() == [[4, 11, 0, 0]]
    scores = popularity(["x", "x"], [history_of(), history_of()], [ns(10), ns(100)])
    assert np.argsort(-scores[0]).tolist() == [0, 1, 2, 3]  # A first; untouched C and D by catalog order
    assert np.argsort(-scores[1]).tolist() == [1, 0, 2, 3]  # later on, B has overtaken A


def test_item_knn_follows_co_occurrence_and_weighs_recent_history_more():
    # A goes with B for two users and with C for one; D goes with F, E with G, equally often.
    rows = [("u1", "A", 1, "view"), ("u1", "B", 2, "view"), ("u2", "A", 1, "view"), ("u2", "B", 2, "view"),
            ("u3", "A", 1, "view"), ("u3", "C", 2, "view"),
            ("u4", "D", 1, "view"), ("u4", "F", 2, "view"), ("u5", "E", 1, "view"), ("u5", "G", 2, "view")]
    dataset = shop(rows, ["A", "B", "C", "D", "E", "F", "G"])
    knn = ItemKNN(dataset.events, dataset.item_position, half_life=1.0)
    a, b, c, d, e, f, g = range(7)
    assert knn.similarity[a, b] == pytest.approx(2 / math.sqrt(3 * 2))
    assert knn.similarity[a, c] == pytest.approx(1 / math.sqrt(3 * 1))
    assert knn.similarity[a, a] == 0.0
    scores = knn(["x", "y"], [history_of(a), history_of(e, d)], [0, 0])
    assert scores[0, b] > scores[0, c] > scores[0, d]
    assert scores[1, f] > scores[1, g] > 0  # D is the latest item, so its neighbour F leads E's neighbour G


def test_item_knn_reads_only_the_events_it_is_given():
    rows = [("u1", "A", 1, "view"), ("u1", "B", 2, "view"), ("u2", "A", 1, "view"), ("u2", "C", 2, "view"),
            ("u2", "C", 3, "purchase")]
    dataset = shop(rows, ["A", "B", "C"])
    train = dataset.events[dataset.events["user_id"] == "u1"]
    knn = ItemKNN(train, dataset.item_position)
    assert knn.similarity[0, 2] == 0.0
    assert knn.similarity[0, 1] == pytest.approx(1.0)


def test_text_similarity_ranks_by_cosine_to_the_mean_of_the_history():
    embeddings = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.6, 0.6]])
    text = TextSimilarity(embeddings * 3.0)  # lengths do not matter: rows are normalised
    scores = text(["x", "y"], [history_of(0), history_of(0, 2)], [0, 0])
    assert np.argsort(-scores[0]).tolist() == [0, 1, 3, 2]
    assert scores[1, 3] == pytest.approx(1.0)  # the mean of A and C points exactly at D
    with pytest.raises(ModelError, match="items, dim"):
        TextSimilarity(np.zeros(3))


# ---- evaluation of scorers and of a whole model -------------------------------------------------------


def sequence_shop():
    """Six users walk the catalog I0 -> I1 -> ... one item an hour, each from a different start."""
    item_ids = [f"I{i}" for i in range(12)]
    rows = []
    for u in range(6):
        for step in range(4 + u % 3):
            rows.append((f"u{u}", item_ids[(u + step) % 12], step + u, "view"))
    return shop(rows, item_ids)


def tiny_recommender(dataset):
    """A Recommender over a tiny random BERT; evaluation never runs the encoder, so no tokenizer is needed."""
    from transformers import BertConfig, BertModel

    from model.encoder import TextEncoder
    from model.recommender import RecommenderConfig, RecommenderNet
    from model.serving import Recommender

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=37))
    config = RecommenderConfig(n_items=len(dataset.items), n_features=len(FEATURES), text_dim=32, dim=16,
                               max_history=8)
    net = RecommenderNet(config, TextEncoder(bert, tokenizer=None))
    embeddings = torch.nn.functional.normalize(torch.randn(len(dataset.items), 32), dim=-1)
    return Recommender(net, dataset, embeddings, checkpoint_id="tiny")


def test_a_perfect_scorer_gets_ndcg_one_and_a_constant_one_nothing():
    dataset = sequence_shop()
    recommender = tiny_recommender(dataset)
    split = leave_last_out(dataset)
    answer = dict(zip(split.test["user_id"], split.test["item_id"].map(dataset.item_position)))
    seen_histories = []

    def perfect(user_ids, histories, moments):
        seen_histories.extend(zip(histories, moments))
        scores = np.zeros((len(user_ids), len(dataset.items)))
        scores[np.arange(len(user_ids)), [answer[u] for u in user_ids]] = 1.0
        return scores

    metrics = evaluate_scorer(perfect, recommender, split.test)
    assert metrics["users"] == len(split.test) == 6
    assert metrics["NDCG@10"] == 1.0 and metrics["MRR"] == 1.0 and metrics["HR@5"] == 1.0
    # Point in time: every history handed to the scorer ends before its moment and lacks the target.
    assert all((h.first_touch < m).all() and (h.last_touch < m).all() for h, m in seen_histories)

    def constant(user_ids, histories, moments):
        return np.zeros((len(user_ids), len(dataset.items)))

    flat = evaluate_scorer(constant, recommender, split.test)
    assert flat["MRR"] < 0.2 and flat["HR@5"] == 0.0


def test_evaluate_model_reports_the_model_and_every_baseline_on_the_same_users():
    dataset = sequence_shop()
    recommender = tiny_recommender(dataset)
    report = evaluate_model(recommender)
    names = {"model", "model without behaviour", "popularity", "item-kNN", "text zero-shot"}
    assert set(report["summary"]) == set(report["models"]) == names
    assert set(report["modes"]) == {"history_excluded", "history_included"}
    assert report["models"] == report["modes"]["history_excluded"]
    assert report["users"] == 6 and report["checkpoint_id"] == "tiny"
    assert report["dataset"]["fingerprint"] == dataset.meta.fingerprint
    for mode in report["modes"].values():
        for metrics in mode.values():
            assert metrics["users"] == 6
            assert 0.0 <= metrics["NDCG@10"] <= metrics["HR@10"] <= 1.0
            assert 0.0 < metrics["coverage@10"] <= 1.0
    # Each walk continues the sequence of the users before it, so co-occurrence finds the next item.
    assert report["summary"]["item-kNN"]["MRR"] > report["summary"]["popularity"]["MRR"] + 0.2
    # Without exclusion the user's own items compete with the target, so no scorer can do better.
    for name in names:
        assert report["modes"]["history_included"][name]["MRR"] <= report["modes"]["history_excluded"][name]["MRR"]
    included = evaluate_model(recommender, exclude_history=False, max_users=3, stage="valid")
    assert included["models"] == included["modes"]["history_included"]
    assert included["users"] == 3 and included["stage"] == "valid"


def test_evaluate_model_refuses_bad_requests():
    dataset = sequence_shop()
    recommender = tiny_recommender(dataset)
    with pytest.raises(ModelError, match="stage"):
        evaluate_model(recommender, stage="train")
    with pytest.raises(ModelError, match="max_users"):
        evaluate_model(recommender, max_users=0)
    other = shop([("u", "Z", 1, "view")], ["Z"])
    with pytest.raises(ModelError, match="catalog"):
        evaluate_model(recommender, other)


def test_histories_of_the_shop_are_what_the_tests_assume():
    dataset = sequence_shop()
    histories = build_histories(dataset.events, dataset.item_position)
    assert len(histories["u0"]) == 4 and len(histories["u2"]) == 6


def test_the_evaluate_command_writes_the_report_of_a_trained_checkpoint(tiny_model, tmp_path, capsys):
    import json

    from model.__main__ import main
    from model.checkpoint import load

    out = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(tiny_model), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    recommender = load(tiny_model)
    assert report["checkpoint_id"] == recommender.checkpoint_id
    assert report["dataset"]["min_history"] == recommender.metadata["train"]["min_history"]
    assert report["users"] == len(leave_last_out(recommender.dataset, report["dataset"]["min_history"]).test)
    assert set(json.loads(capsys.readouterr().out)) == set(report["summary"])
    # Round trip: the stored checkpoint evaluates to the same numbers in-process.
    assert evaluate_model(recommender)["summary"] == report["summary"]


def test_the_text_baseline_uses_the_untuned_encoder_even_after_tuning(tiny_encoder, tmp_path):
    from model.encoder import TextEncoder, load_encoder
    from model.evaluate import untuned_text_embeddings
    from model.recommender import RecommenderConfig, RecommenderNet
    from model.serving import Recommender
    from model.train import item_texts

    dataset = sequence_shop()
    frozen = tiny_recommender(dataset)
    embeddings, note = untuned_text_embeddings(frozen)
    assert torch.equal(embeddings, frozen.text_embeddings) and "frozen" in note

    config = RecommenderConfig(n_items=len(dataset.items), n_features=len(FEATURES), text_dim=32, dim=16,
                               encoder_tuning="full", max_item_tokens=24)
    net = RecommenderNet(config, TextEncoder(*load_encoder(tiny_encoder)))
    tuned = Recommender(net, dataset, torch.zeros(len(dataset.items), 32), metadata={"base_encoder": str(tiny_encoder)})
    embeddings, note = untuned_text_embeddings(tuned)
    expected = TextEncoder(*load_encoder(tiny_encoder)).embed(item_texts(dataset), 24)
    assert torch.allclose(embeddings, expected) and "re-embedded" in note

    lost = Recommender(net, dataset, torch.zeros(len(dataset.items), 32), metadata={"base_encoder": str(tmp_path / "gone")})
    embeddings, note = untuned_text_embeddings(lost)
    assert torch.equal(embeddings, lost.text_embeddings) and "failed" in note

    # A model with the lexical channel keeps the mean word embedding beside the encoder's: the baseline reads the
    # encoder's half only.
    config = RecommenderConfig(n_items=len(dataset.items), n_features=len(FEATURES), text_dim=32, dim=16,
                               lexical_text=True)
    both = torch.randn(len(dataset.items), 64)
    lexical = Recommender(RecommenderNet(config, TextEncoder(*load_encoder(tiny_encoder))), dataset, both)
    embeddings, note = untuned_text_embeddings(lexical)
    assert torch.equal(embeddings, both[:, :32]) and "frozen" in note
