"""Two-stage ranking past a catalog threshold: FAISS candidates, then the exact score on them alone."""

import json
import shutil

import numpy as np
import pytest

from model.checkpoint import load
from model.errors import CheckpointError
from model.retrieval import RetrievalConfig


def ranked(recommendations) -> list[tuple[str, float]]:
    return [(r.item_id, r.score) for r in recommendations]


def served(model, **retrieval):
    return load(model, retrieval=RetrievalConfig(**retrieval))


def test_below_the_threshold_the_whole_catalog_is_scored_and_no_index_is_built(tiny_model, user):
    recommender = served(tiny_model, two_stage_from=10_000)
    assert not recommender.two_stage
    assert recommender.candidates(recommender.context(user), 10) is None
    recommender.recommend(user_id=user, k=10)
    assert recommender._candidate_index is None


def test_past_the_threshold_only_the_candidates_get_behaviour_features(tiny_model, user, monkeypatch):
    recommender = served(tiny_model, two_stage_from=50, index="ivf", candidates=12, ivf_lists=4, ivf_probe=2,
                         related_candidates=0)
    n_items = len(recommender.item_ids)
    assert recommender.two_stage and n_items >= 50
    asked = []
    real = recommender.behaviour_features
    monkeypatch.setattr(recommender, "behaviour_features",
                        lambda context, item_index=None, **kw: asked.append(item_index) or real(context, item_index,
                                                                                                  **kw))
    result = recommender.recommend(user_id=user, k=5)
    assert len(result) == 5 and recommender.candidate_index().kind == "ivf"
    assert len(asked) == 1 and asked[0] is not None and len(asked[0]) <= 12 + len(recommender.histories[user])


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_a_candidate_pool_of_the_whole_catalog_gives_the_exact_ranking(tiny_model, user, exclude_seen):
    n_seen = len(np.unique(load(tiny_model).histories[user].item_index)) if exclude_seen else 0
    exact = load(tiny_model)
    recommender = served(tiny_model, two_stage_from=1, index="flat", candidates=len(exact.item_ids) - n_seen)
    context = recommender.context(user)
    seen = context.history.item_index if exclude_seen else None
    pool = recommender.candidates(context, 10, seen)
    assert pool is not None and len(pool) == len(exact.item_ids) - n_seen  # two stages, over every allowed item
    for query in (None, "red wool sock"):
        two_stage = recommender.recommend(user_id=user, query=query, k=10, exclude_seen=exclude_seen)
        reference = exact.recommend(user_id=user, query=query, k=10, exclude_seen=exclude_seen)
        assert [i for i, _ in ranked(two_stage)] == [i for i, _ in ranked(reference)]
        np.testing.assert_allclose([s for _, s in ranked(two_stage)], [s for _, s in ranked(reference)], rtol=1e-6)


def test_seen_items_never_come_back_from_the_candidates(tiny_model, recommender):
    two_stage = served(tiny_model, two_stage_from=1, index="flat", candidates=3)
    users = [u for u in recommender.user_ids if len(recommender.histories[u]) >= 3][:5]
    for user in users:
        seen = set(recommender.item_ids[recommender.histories[user].item_index])
        shown = {r.item_id for r in two_stage.recommend(user_id=user, k=3)}
        assert len(shown) == 3 and not shown & seen
    # The seen items are asked for on top of the pool, so a pool of 3 still gives 3 unseen items.
    some_seen = any(set(recommender.item_ids[recommender.histories[u].item_index])
                    & {r.item_id for r in two_stage.recommend(user_id=u, k=3, exclude_seen=False)} for u in users)
    assert some_seen  # without the exclusion the user's own items do rank (the tiny model has learnt them)


def test_the_item_shown_scores_as_the_item_explained(tiny_model, user):
    recommender = served(tiny_model, two_stage_from=1, index="ivf", candidates=8, ivf_lists=4, ivf_probe=1)
    result = recommender.recommend(user_id=user, query="blue cotton shirt", k=5)
    scores = recommender.score(user_id=user, query="blue cotton shirt", item_ids=[r.item_id for r in result])
    np.testing.assert_allclose([r.score for r in result], scores, rtol=1e-6)
    assert [r.score for r in result] == sorted((r.score for r in result), reverse=True)
    assert all(abs(sum(r.parts.values()) - r.score) < 1e-9 for r in result)
    # exact=True is the reference: the two stages can only miss items, never score one differently.
    reference = {r.item_id: r.score for r in recommender.recommend(user_id=user, query="blue cotton shirt",
                                                                   k=len(recommender.item_ids) // 4, exact=True)}
    for r in result:
        if r.item_id in reference:
            assert abs(reference[r.item_id] - r.score) < 1e-6


def test_a_k_near_the_catalog_size_or_a_context_without_history_or_query_is_scored_whole(tiny_model, user):
    recommender = served(tiny_model, two_stage_from=1, index="ivf", candidates=4, ivf_lists=4, ivf_probe=1)
    n_items = len(recommender.item_ids)
    assert recommender.candidates(recommender.context(user), n_items // 2 + 1) is None
    assert recommender.candidates(recommender.context(user), 5) is not None
    no_history = recommender.dataset.events.iloc[:0]
    assert recommender.candidates(recommender.context(user, history=no_history), 5) is None
    assert recommender.candidates(recommender.context(user, "red mug", history=no_history), 5) is not None
    everything = recommender.recommend(user_id=user, k=n_items, exclude_seen=False)
    assert len(everything) == n_items


def test_the_checkpoint_can_carry_its_retrieval_settings(tiny_model, tmp_path):
    copy = shutil.copytree(tiny_model, tmp_path / "model")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "retrieval": {"two_stage_from": 7, "index": "hnsw"}}))
    recommender = load(copy)
    assert recommender.retrieval == RetrievalConfig(two_stage_from=7, index="hnsw") and recommender.two_stage
    (copy / "config.json").write_text(json.dumps({**config, "retrieval": {"nlist": 7}}))
    with pytest.raises(CheckpointError, match="retrieval section: unknown retrieval config keys: nlist"):
        load(copy)


def test_items_sharing_a_category_or_brand_with_the_history_join_the_pool_up_to_their_limit(tiny_model, user):
    recommender = served(tiny_model, two_stage_from=1, index="flat", candidates=1, related_candidates=1_000)
    items, history = recommender.items, recommender.histories[user].item_index
    related = set(np.flatnonzero(items["category"].isin(items["category"].iloc[history].dropna())
                                 | items["brand"].isin(items["brand"].iloc[history].dropna())))
    context = recommender.context(user)
    pool = set(recommender.candidates(context, 1, history).tolist())
    assert related - set(history.tolist()) <= pool and len(pool) <= len(related) + 1
    limited = served(tiny_model, two_stage_from=1, index="flat", candidates=1, related_candidates=3)
    assert len(limited.candidates(limited.context(user), 1)) <= 1 + 3


def test_related_items_are_taken_by_dot_product_plus_their_category_and_brands_lift(tiny_model, user, monkeypatch):
    # A behaviour part of 50 x category affinity: one value per combination of history category and brand, which
    # a sample of every related item (related_samples) estimates exactly. The 3 related items taken must then be
    # the 3 best related items by exact score, where dot product alone takes others.
    recommender = served(tiny_model, two_stage_from=1, index="flat", candidates=1, related_candidates=3,
                         related_samples=10_000)
    column = recommender.feature_names.index("category_affinity")
    monkeypatch.setattr(recommender.net, "behaviour_score", lambda features: 50.0 * features[..., column])
    items, history = recommender.items, recommender.histories[user].item_index
    related = np.flatnonzero(items["category"].isin(items["category"].iloc[history].dropna())
                             | items["brand"].isin(items["brand"].iloc[history].dropna()))
    assert len(related) > 3
    context = recommender.context(user)
    parts = recommender.score_parts(context, related)
    exact = related[np.argsort(-(parts["text"] + parts["collaborative"] + parts["behaviour"]), kind="stable")[:3]]
    by_dot = related[np.argsort(-(parts["text"] + parts["collaborative"]), kind="stable")[:3]]
    assert set(exact.tolist()) != set(by_dot.tolist())  # dot product alone would take other items
    query = np.append(context.vector.numpy(), 1.0).astype(np.float32)
    assert set(recommender._related_items(context, query, None).tolist()) == set(exact.tolist())


def test_an_edited_history_reaches_the_related_items_sample_and_every_score_stays_exact(tiny_model, user,
                                                                                         monkeypatch):
    recommender = served(tiny_model, two_stage_from=1, index="ivf", candidates=4, ivf_lists=4, ivf_probe=1,
                         related_candidates=5, related_samples=3)
    edited = recommender.dataset.user_events(user).iloc[:-1]
    asked = []
    real = recommender.behaviour_features
    monkeypatch.setattr(recommender, "behaviour_features",
                        lambda context, item_index=None, **kw: asked.append(kw.get("history")) or real(
                            context, item_index, **kw))
    result = recommender.recommend(user_id=user, k=5, history=edited)
    assert len(asked) == 2 and all(h is edited for h in asked)  # the related items' sample, then the candidates
    scores = recommender.score(user_id=user, item_ids=[r.item_id for r in result], history=edited)
    np.testing.assert_allclose([r.score for r in result], scores, rtol=1e-6)


def test_the_behaviour_part_in_blocks_of_rows_is_the_part_in_one_block(recommender, user, monkeypatch):
    import model.serving

    context = recommender.context(user)
    whole = recommender.score_parts(context)
    monkeypatch.setattr(model.serving, "BEHAVIOUR_BLOCK_ROWS", 7)  # 80 items: 12 blocks, the last one short
    blocks = recommender.score_parts(context)
    for name in whole:
        np.testing.assert_allclose(blocks[name], whole[name], rtol=1e-6, atol=1e-7)
    subset = recommender.score_parts(context, np.array([3, 70, 5]))
    np.testing.assert_allclose(subset["behaviour"], whole["behaviour"][[3, 70, 5]], rtol=1e-6, atol=1e-7)
