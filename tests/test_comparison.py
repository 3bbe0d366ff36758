"""Two models side by side: metrics on one split, list agreement over users, explanation changes part by part."""

import numpy as np
import pytest

from explain import explain
from explain.changes import explanation_changes
from explain.errors import ExplanationError
from model.checkpoint import load
from model.comparison import compare_metrics, list_agreement, on_same_data, sample_users
from model.errors import ModelError
from model.evaluate import evaluate_model
from model.train import TrainConfig, train


@pytest.fixture(scope="module")
def other(tmp_path_factory, tiny_shop, tiny_encoder):
    """A second model of the tiny shop: another seed, one epoch."""
    out = tmp_path_factory.mktemp("other-model") / "model"
    train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16},
          train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1, seed=1), base_model=str(tiny_encoder),
          progress=False, log=lambda *_: None)
    return load(out)


def test_metrics_of_both_models_on_one_split(recommender, other):
    both = compare_metrics(recommender, other, max_users=30)
    alone = evaluate_model(recommender, max_users=30)["models"]["model"]
    assert both["A"]["NDCG@10"] == pytest.approx(alone["NDCG@10"]) and both["users"] == alone["users"] == 30
    assert both["B"]["NDCG@10"] == pytest.approx(evaluate_model(other, max_users=30)["models"]["model"]["NDCG@10"])
    same = compare_metrics(recommender, recommender, max_users=30)
    assert same["A"] == same["B"]


def test_list_agreement_matches_the_two_rankings(recommender, other):
    users = sample_users(recommender, 12)
    assert users == sample_users(recommender, 12) and len(users) == 12
    identical = list_agreement(recommender, recommender, users)
    assert (identical["overlap"] == 1).all() and (identical["changed"] == 0).all()
    assert np.allclose(identical["spearman"], 1.0)
    frame = list_agreement(recommender, other, users)
    assert list(frame["overlap"]) == sorted(frame["overlap"])  # least alike first
    row = frame.iloc[0]
    top_a = {r.item_id for r in recommender.recommend(user_id=row.user_id, k=10)}
    top_b = {r.item_id for r in other.recommend(user_id=row.user_id, k=10)}
    assert row.overlap == pytest.approx(len(top_a & top_b) / 10) and row.changed == len(top_a - top_b)
    assert frame["overlap"].mean() < 1  # two different models do not agree everywhere


def test_models_over_different_catalogs_are_refused(recommender, tiny_shop, tmp_path):
    from data.schema import make_dataset
    from model.serving import Recommender

    items = tiny_shop.items.iloc[:50].reset_index(drop=True)
    events = tiny_shop.events[tiny_shop.events["item_id"].isin(items["item_id"])].reset_index(drop=True)
    smaller = make_dataset(items, events, source="fewer items", format="contract")
    net = type(recommender.net)(recommender.config.__class__(**{**recommender.config.to_dict(), "n_items": 50}),
                                recommender.net.encoder)
    fewer = Recommender(net, smaller, recommender.text_embeddings[:50])
    with pytest.raises(ModelError, match="rank different catalogs"):
        on_same_data(recommender, fewer)


def test_explanation_changes_part_by_part(recommender, other):
    user = next(u for u in recommender.user_ids if len(recommender.histories[u]) >= 3)
    item = recommender.recommend(user_id=user, k=1)[0].item_id
    a = explain(recommender, item, user_id=user, n_steps=8, drill_down=0)
    b = explain(on_same_data(recommender, other), item, user_id=user, n_steps=8, drill_down=0)
    changes = explanation_changes(a, b)
    parts = changes["parts"].set_index("name")
    assert list(changes["parts"]["name"][:2]) == ["Score", "Base value"]
    assert parts.loc["Score", "A"] == pytest.approx(a.score) and parts.loc["Score", "B"] == pytest.approx(b.score)
    assert (changes["parts"]["change"] == changes["parts"]["B"] - changes["parts"]["A"]).all()
    behaviour = changes["behaviour"].set_index("name")
    part = a.features()
    assert behaviour.loc[part.names[0], "A"] == pytest.approx(part.values[0])
    history = changes["history"]
    assert len(history) and history["A"].sum() == pytest.approx(a.part("history").total)
    assert changes["words"]["A"].sum() == pytest.approx(a.part("item_tokens").total)
    same = explanation_changes(a, a)
    assert all((frame["change"] == 0).all() for frame in same.values())
    elsewhere = explain(recommender, recommender.recommend(user_id=user, k=2)[1].item_id, user_id=user, n_steps=8,
                        drill_down=0)
    with pytest.raises(ExplanationError, match="different things"):
        explanation_changes(a, elsewhere)
