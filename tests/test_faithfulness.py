"""Faithfulness: deletion/insertion and SHAP agreement, exact on a linear fake, consistent on the tiny model."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from explain import ExplanationError, PathSettings, TokenAttributor, explain, explain_pair, faithfulness
from explain.faithfulness import agreement_with_shap, leave_one_out, removal_curves, shap_tokens
from model.serving import score_view
from tests.test_explain import linear_world  # noqa: F401  (a fixture shared with the explain tests)


@pytest.fixture(scope="module")
def linear_tokens(linear_world):  # noqa: F811
    recommender, context, view, _ = linear_world
    item = TokenAttributor(PathSettings(n_steps=2)).attribute(recommender, context, view)[0]
    with torch.no_grad():
        score = float(view.forward(view.item_embeds, view.query_embeds, view.history_vectors, view.id_vector)[0])
    return recommender, view, item, score


# ---- closed form: on a linear score, removing a token takes away exactly its IG value ----------------------------

def test_removal_on_a_linear_score_takes_away_exactly_the_ig_values(linear_tokens):
    recommender, view, item, score = linear_tokens
    values = np.array([v for v, d in zip(item.values, item.details) if not d["template"]])  # the template stays
    assert len(values) < len(item)
    result = removal_curves(recommender, view, item, score, k_max=4, random_draws=8)
    assert result["n_tokens"] == len(values)
    ranked = np.sort(values)[::-1]
    expected_deletion = score - np.concatenate([[0.0], np.cumsum(ranked[:4])])
    np.testing.assert_allclose(result["curves"]["deletion"], expected_deletion, rtol=1e-5, atol=1e-5)
    expected_insertion = score - values.sum() + np.concatenate([[0.0], np.cumsum(ranked[:4])])
    np.testing.assert_allclose(result["curves"]["insertion"], expected_insertion, rtol=1e-5, atol=1e-5)
    positive = ranked[ranked > 0][:3]
    assert result["deletion_top3_drop"] == pytest.approx(positive.sum(), abs=1e-5)
    assert result["aopc_comprehensiveness"] == pytest.approx(np.mean(np.cumsum(ranked[:4])), abs=1e-5)
    # The top-k carry the largest sum of any k tokens: nothing random can beat them.
    assert result["deletion_top3_drop"] >= result["deletion_random3_drop"]
    assert result["aopc_comprehensiveness"] >= result["aopc_comprehensiveness_random"]
    assert result["aopc_sufficiency"] <= result["aopc_sufficiency_random"]


def test_whole_words_lose_every_piece_and_take_away_their_summed_values(linear_tokens):
    recommender, view, item, score = linear_tokens
    kept = [(v, d) for v, d in zip(item.values, item.details) if not d["template"]]
    words: dict[int, float] = {}
    for value, detail in kept:
        words[detail["word_index"]] = words.get(detail["word_index"], 0.0) + value
    assert len(words) < len(kept)  # some word is in several pieces, so words and tokens differ
    result = removal_curves(recommender, view, item, score, random_draws=8)
    ranked = np.sort(list(words.values()))[::-1]
    assert result["deletion_top3_words_drop"] == pytest.approx(ranked[ranked > 0][:3].sum(), abs=1e-5)
    assert result["deletion_top3_words_drop"] >= result["deletion_random3_words_drop"]
    assert result["deletion_random3_words_drop"] != pytest.approx(result["deletion_random3_drop"], abs=1e-6)


def test_shap_partition_agrees_with_ig_on_a_linear_score(linear_tokens):
    recommender, view, item, _ = linear_tokens
    agreement = agreement_with_shap(recommender, view, item, max_evals=200)
    # An additive score: every Owen value is the token's own effect, which is its IG value. The template is kept
    # by both, so SHAP values the item's own words only.
    words = [v for v, d in zip(item.values, item.details) if not d["template"]]
    np.testing.assert_allclose(agreement["shap_values"], words, rtol=1e-4, atol=1e-5)
    assert agreement["spearman"] == pytest.approx(1.0)
    # Same ranking, same removal: SHAP's own deletion drop is IG's.
    ig = removal_curves(recommender, view, item, 0.0, random_draws=1)
    assert agreement["deletion_top3_drop"] == pytest.approx(ig["deletion_top3_drop"], abs=1e-6)
    assert agreement["deletion_top3_words_drop"] == pytest.approx(ig["deletion_top3_words_drop"], abs=1e-6)


def test_leave_one_out_on_a_linear_score_is_each_tokens_own_ig_value(linear_tokens):
    recommender, view, item, _ = linear_tokens
    measured = leave_one_out(recommender, view, item)
    # Additive score: removing a token alone takes away exactly its IG value; the template is kept.
    words = [v for v, d in zip(item.values, item.details) if not d["template"]]
    np.testing.assert_allclose(measured["values"], words, rtol=1e-4, atol=1e-5)
    ig = removal_curves(recommender, view, item, 0.0, random_draws=1)
    assert measured["deletion_top3_drop"] == pytest.approx(ig["deletion_top3_drop"], abs=1e-6)
    assert measured["deletion_top3_words_drop"] == pytest.approx(ig["deletion_top3_words_drop"], abs=1e-6)
    assert measured["seconds"] > 0


# ---- the tiny model ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def explained(recommender, user):
    item = recommender.recommend(user_id=user, k=1)[0].item_id
    return explain(recommender, item, user_id=user, query="wool sock", n_steps=24)


def test_faithfulness_numbers_are_what_they_say(recommender, user, explained):
    result = faithfulness(recommender, explained, k_max=5, random_draws=4)
    curves = result["curves"]
    assert curves["deletion"][0] == pytest.approx(explained.score, abs=1e-9)
    assert len(curves["deletion"]) == len(curves["insertion"]) == len(curves["deletion_random"]) == 6
    assert result["aopc_comprehensiveness"] == pytest.approx(np.mean(explained.score - np.array(curves["deletion"][1:])))
    # Recompute the top-3 drop independently: [PAD] at the three tokens with the largest positive IG values.
    part = explained.part("item_tokens")
    top = [d["position"] for v, d in sorted(zip(part.values, part.details), key=lambda x: -x[0]) if v > 0][:3]
    context = recommender.context(user, "wool sock")
    view = score_view(recommender, context, int(recommender.item_positions([explained.item_id])[0]))
    padded = view.pad_baseline(view.item_input_ids, view.item_embeds, recommender.net.encoder.word_embeddings)
    removed = view.item_embeds.clone()
    removed[0, top] = padded[0, top]
    with torch.no_grad():
        before, after = (float(view.forward(x, view.query_embeds, view.history_vectors, view.id_vector)[0])
                         for x in (view.item_embeds, removed))
    assert result["deletion_top3_drop"] == pytest.approx(before - after, abs=1e-5)
    assert result["agreement"] is None


def test_agreement_on_demand(recommender, user, explained):
    result = faithfulness(recommender, explained, k_max=3, random_draws=2, agreement=True, max_evals=100)
    agreement = result["agreement"]
    words = [d for d in explained.part("item_tokens").details if not d["template"]]
    assert agreement["method"] == "shap_partition" and len(agreement["shap_values"]) == len(words)
    assert -1.0 <= agreement["spearman"] <= 1.0 and agreement["seconds"] > 0
    # As a token part beside IG's: the same tokens, the template at 0 as under IG, SHAP's values on the rest,
    # and as its gap the shortfall of those values from its base value (every word masked) to what SHAP explained:
    # the view's output with every other input held (the score less its behaviour part).
    context = recommender.context(user, "wool sock")
    view = score_view(recommender, context, int(recommender.item_positions([explained.item_id])[0]))
    with torch.no_grad():
        explained_output = float(view.forward(view.item_embeds, view.query_embeds, view.history_vectors,
                                              view.id_vector)[0])
    item = explained.part("item_tokens")
    shown = shap_tokens(item, agreement)
    assert shown.names == item.names and shown.method == "shap_partition"
    assert [v for v, d in zip(shown.values, shown.details) if d["template"]] == [0.0] * (len(item) - len(words))
    assert [v for v, d in zip(shown.values, shown.details) if not d["template"]] == agreement["shap_values"]
    assert shown.base_value + shown.total - shown.completeness_gap == pytest.approx(explained_output, abs=1e-4)
    assert shap_tokens(item, {**agreement, "shap_values": []}) is None


def test_leave_one_out_values_are_the_drops_of_removing_each_token_alone(recommender, user, explained):
    context = recommender.context(user, "wool sock")
    view = score_view(recommender, context, int(recommender.item_positions([explained.item_id])[0]))
    item = explained.part("item_tokens")
    measured = leave_one_out(recommender, view, item)
    kept = [i for i, d in enumerate(item.details) if not d["template"]]
    own = replace(item, names=tuple(item.names[i] for i in kept), values=tuple(measured["values"]),
                  details=tuple(item.details[i] for i in kept))
    curves = removal_curves(recommender, view, own, explained.score, k_max=1, random_draws=1)
    # The token leave-one-out values most, removed alone, takes away exactly that value.
    assert explained.score - curves["curves"]["deletion"][1] == pytest.approx(max(measured["values"]), abs=1e-5)
    assert np.ptp(measured["values"]) > 0
    # Its deletion curve, ranked by those values, is the one the deletion test draws for them from the score.
    whole = removal_curves(recommender, view, own, explained.score, random_draws=1)
    assert measured["aopc_comprehensiveness"] == pytest.approx(whole["aopc_comprehensiveness"], abs=1e-5)


def test_faithfulness_refuses_what_it_cannot_measure(recommender, user, explained):
    items = recommender.recommend(user_id=user, k=2)
    pair = explain_pair(recommender, items[0].item_id, items[1].item_id, user_id=user, n_steps=4)
    with pytest.raises(ExplanationError, match="one item's explanation"):
        faithfulness(recommender, pair)
    with pytest.raises(ExplanationError, match="model other"):
        faithfulness(recommender, replace(explained, checkpoint_id="other"))
    with pytest.raises(ExplanationError, match="must be positive"):
        faithfulness(recommender, explained, k_max=0)
    tokens = explained.part("item_tokens")
    renamed = replace(tokens, names=("zzz", *tokens.names[1:]))
    changed = replace(explained, parts=tuple(renamed if p.kind == "item_tokens" else p for p in explained.parts))
    with pytest.raises(ExplanationError, match="other tokens"):
        faithfulness(recommender, changed)


def test_an_item_without_tokens_measures_zero(linear_tokens):
    recommender, view, item, score = linear_tokens
    empty = replace(item, names=(), values=(), details=())
    result = removal_curves(recommender, view, empty, score)
    assert result["deletion_top3_drop"] == 0.0 and result["n_tokens"] == 0 and result["notes"]
    assert result["deletion_top3_words_drop"] == 0.0
