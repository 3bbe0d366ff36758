"""Explanations: closed-form fakes for IG and SHAP, the explainer contract, completeness, JSON, threads, bad input."""

import json
import math
import threading
import time
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from data.features import FEATURES
from data.schema import item_text_layout
from explain import (
    FLAGS,
    KINDS,
    Attribution,
    BehaviourAttributor,
    Explanation,
    ExplanationError,
    HistoryTokenAttributor,
    PathSettings,
    TokenAttributor,
    explain,
    explain_pair,
)
from explain.__main__ import main
from explain.gradients import integrate, text_baseline, token_entries
from model.sequences import UserHistory
from model.serving import Recommender, ScoreView, score_view, template_positions


def some_user(recommender, min_items: int = 3) -> str:
    return next(u for u in recommender.user_ids if len(recommender.histories[u]) >= min_items)


@pytest.fixture(scope="module")
def top_items(recommender, user):
    return [r.item_id for r in recommender.recommend(user_id=user, k=3)]


@pytest.fixture(scope="module")
def explained(recommender, user, top_items):
    return explain(recommender, top_items[0], user_id=user, query="warm wool sock", n_steps=32)


def served_score(recommender, item_id, user_id=None, query=None, history=None) -> float:
    return float(recommender.score(user_id, query, [item_id], history=history)[0])


# ---- closed-form fakes ------------------------------------------------------------------------------------------

def test_integrated_gradients_of_a_linear_function_are_exact():
    torch.manual_seed(0)
    weights = (torch.randn(1, 5, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64))
    inputs = (torch.randn(1, 5, 4, dtype=torch.float64), torch.randn(1, 3, dtype=torch.float64))
    baselines = (torch.randn(1, 5, 4, dtype=torch.float64), torch.zeros(1, 3, dtype=torch.float64))

    def forward(tokens, vector):
        return (tokens * weights[0]).sum((1, 2)) + (vector * weights[1]).sum(1)

    for method in ("gausslegendre", "riemann_middle", "riemann_left"):
        run = integrate(forward, inputs, baselines, PathSettings(n_steps=4, method=method))
        # IG of a linear function = (x - baseline) * weight, summed over the embedding dimension.
        expected = [((x - b) * w).sum(-1)[0].numpy() for x, b, w in zip(inputs, baselines, weights)]
        for got, want in zip(run.attributions, expected):
            np.testing.assert_allclose(got, want.reshape(-1), rtol=1e-10, atol=1e-12)
        assert run.start == pytest.approx(float(forward(*baselines)[0]), abs=1e-12)
        assert run.end == pytest.approx(float(forward(*inputs)[0]), abs=1e-12)
        assert abs(run.delta) < 1e-10


class _FakeEncoder(nn.Module):
    def __init__(self, tokenizer, hidden: int):
        super().__init__()
        self.tokenizer = tokenizer
        self.embedding = nn.Embedding(len(tokenizer), hidden)

    def word_embeddings(self, input_ids):
        return self.embedding(input_ids)


class _FakeNet(nn.Module):
    """A behaviour head that is linear: exact SHAP values are w_i (x_i - E[x_i])."""

    def __init__(self, encoder, weights):
        super().__init__()
        self.encoder = encoder
        self.weights = torch.as_tensor(weights, dtype=torch.float32)

    def behaviour_score(self, features):
        return features @ self.weights.to(features.dtype) + 0.25


class _FakeFeatures:
    def __init__(self, rows):
        self.rows = rows

    def pair_features(self, user_ids, items, at):
        return self.rows[: len(user_ids)]


class _FakeRecommender:
    checkpoint_id = "fake"

    def __init__(self, net, items, rows):
        self.net, self.items, self.features = net, items, _FakeFeatures(rows)
        self.user_ids = np.array(["u1", "u2"])
        self.item_ids = items["item_id"].to_numpy()

    def behaviour_features(self, context, item_index, history=None, overrides=True):
        return self.features.rows[np.asarray(item_index) + 10]  # the context's own rows: 10.. of the fake store


@pytest.fixture(scope="module")
def linear_world(tiny_encoder):
    """A ScoreView whose forward is linear in every input, over the tiny tokenizer: IG is known in closed form."""
    from transformers import BertTokenizerFast

    torch.manual_seed(1)
    tokenizer = BertTokenizerFast.from_pretrained(tiny_encoder)
    hidden, dim = 6, 4
    net = _FakeNet(_FakeEncoder(tokenizer, hidden), np.linspace(-1, 1, len(FEATURES)))
    items = pd.DataFrame({"item_id": ["i0", "i1", "i2"], "title": ["red mug", "blue sock", "green hat"]})
    rows = np.random.default_rng(0).normal(size=(40, len(FEATURES)))

    def tokens(text):
        batch = tokenizer([text], return_tensors="pt", return_offsets_mapping=True)
        ids = batch["input_ids"]
        return ids, net.encoder.word_embeddings(ids).detach(), [tuple(map(int, o)) for o in batch["offset_mapping"][0]]

    item_text, template_spans = item_text_layout("waterproof wool socks", "Woolly")
    item_ids, item_embeds, item_offsets = tokens(item_text)
    query_ids, query_embeds, query_offsets = tokens("warm sock")
    weights = {"item": torch.randn(1, item_ids.shape[1], hidden), "query": torch.randn(1, query_ids.shape[1], hidden),
               "history": torch.randn(1, 2, dim), "id": torch.randn(1, dim)}

    def forward(item, query=None, history=None, id_vector=None, kept=1.0):
        out = (item * weights["item"]).sum((1, 2)) + (query * weights["query"]).sum((1, 2))
        out = out + (id_vector * weights["id"]).sum(1)
        return out if history is None else out + kept * (history * weights["history"]).sum((1, 2))  # None: none

    view = ScoreView(
        item_position=0, item_input_ids=item_ids, item_embeds=item_embeds, item_mask=torch.ones_like(item_ids),
        item_offsets=item_offsets, item_text=item_text,
        item_template=template_positions(item_offsets, template_spans), query_input_ids=query_ids,
        query_embeds=query_embeds, query_mask=torch.ones_like(query_ids), query_offsets=query_offsets,
        query_text="warm sock", history_vectors=torch.randn(1, 2, dim), history_index=np.array([1, 2]),
        history_codes={}, id_vector=torch.randn(1, dim), bias=0.125, features=rows[0] + 0.5,
        pad_token_id=tokenizer.pad_token_id, special_tokens=(tokenizer.cls_token_id, tokenizer.sep_token_id),
        forward=forward,
    )
    day = 86_400 * 10**9
    history = UserHistory("u1", np.array([1, 2]), np.array([1, 3]), np.array([0, 5 * day]), np.array([0, 5 * day]))

    class Context:
        moment_ns = 10 * day

    context = Context()
    context.history = history
    return _FakeRecommender(net, items, rows), context, view, weights


def test_token_attributor_on_a_linear_view_matches_closed_form(linear_world):
    recommender, context, view, weights = linear_world
    item, query, collaborative = TokenAttributor(PathSettings(n_steps=3)).attribute(recommender, context, view)
    words = recommender.net.encoder.word_embeddings
    padded = view.pad_baseline(view.item_input_ids, view.item_embeds, words)
    expected_pad = ((view.item_embeds - padded) * weights["item"]).sum(-1)[0].detach().numpy()
    positions = [d["position"] for d in item.details]
    assert positions == list(range(1, view.item_input_ids.shape[1] - 1))  # [CLS] and [SEP] left out
    # The default baseline keeps the template ". Brand: ": its tokens get exactly zero, the words their own effect.
    template = [d["position"] for d in item.details if d["template"]]
    assert [view.item_text[d["start"]:d["end"]] for d in item.details if d["template"]] == [".", "Brand", ":"]
    assert template == list(view.item_template)
    expected_item = np.where(np.isin(np.arange(len(expected_pad)), template), 0.0, expected_pad)
    np.testing.assert_allclose(item.values, expected_item[positions], rtol=1e-5, atol=1e-6)
    assert all(v == 0.0 for v, d in zip(item.values, item.details) if d["template"])
    # Plain [PAD] takes the template away too, and credits it.
    plain = TokenAttributor(PathSettings(n_steps=3, baseline="pad")).attribute(recommender, context, view)[0]
    np.testing.assert_allclose(plain.values, expected_pad[positions], rtol=1e-5, atol=1e-6)
    assert len(query) == view.query_input_ids.shape[1] - 2
    # In a linear world the history adds nothing to what the words add: both runs (history kept, removed) agree,
    # and their halves make the whole.
    assert item.parameters["runs"] == ["history kept", "history removed"]
    assert item.parameters["weights"] == [0.5, 0.5]
    assert collaborative.names == ("item ID vector", "item bias")
    assert collaborative.values[0] == pytest.approx(float((view.id_vector * weights["id"]).sum()), rel=1e-5)
    assert collaborative.values[1] == view.bias
    assert item.base_value == pytest.approx(float(forward_at_baseline(view, words)), abs=1e-5)


def forward_at_baseline(view, words):
    item = text_baseline(view, view.item_input_ids, view.item_embeds, words, "template", None, view.item_template)
    query = view.pad_baseline(view.query_input_ids, view.query_embeds, words)
    return view.forward(item, query, None, torch.zeros_like(view.id_vector))[0]  # no history, no ID


def test_behaviour_attributor_on_a_linear_head_matches_closed_form(linear_world):
    recommender, context, view, _ = linear_world
    (part,) = BehaviourAttributor(background_size=40, background="pairs").attribute(recommender, context, view)
    weights = recommender.net.weights.double().numpy()
    background = recommender.features.rows
    np.testing.assert_allclose(part.values, weights * (view.features - background.mean(0)), rtol=1e-5, atol=1e-6)
    assert part.base_value == pytest.approx(float((background @ weights).mean() + 0.25), abs=1e-6)
    assert part.names == tuple(spec.label for spec in FEATURES)
    assert [d["unit"] for d in part.details] == [spec.unit for spec in FEATURES]
    assert [d["value"] for d in part.details] == pytest.approx(list(view.features))


def test_behaviour_attributor_compares_with_the_contexts_own_items(linear_world):
    recommender, context, view, _ = linear_world
    (part,) = BehaviourAttributor().attribute(recommender, context, view)  # the default background
    weights = recommender.net.weights.double().numpy()
    own = recommender.features.rows[10:13]  # the fake context's rows for its three catalog items
    np.testing.assert_allclose(part.values, weights * (view.features - own.mean(0)), rtol=1e-5, atol=1e-6)
    assert part.base_value == pytest.approx(float((own @ weights).mean() + 0.25), abs=1e-6)
    assert part.parameters["background"] == "random items for the same user or query, at the same moment"
    assert part.parameters["background_size"] == 3  # the whole catalog, when it is smaller than the sample


def test_behaviour_values_rank_items_not_users(recommender, user, top_items):
    """Features that are the same for every item of the context (the user's activity) get exactly 0, and a
    what-if override is compared with the data's own values, so the edited feature gets the credit."""
    from data.features import FEATURE_NAMES
    from model.whatif import feature_ranges

    explained = explain(recommender, top_items[0], user_id=user, n_steps=8, drill_down=0)
    part = explained.part("behaviour")
    activity = FEATURE_NAMES.index("user_activity")
    assert part.values[activity] == 0.0
    features = recommender.behaviour_features(recommender.context(user), recommender.item_positions(top_items[:1]))
    column = FEATURE_NAMES.index("price_affinity")
    low, high = feature_ranges(recommender).loc["price_affinity", ["low", "high"]]
    real = float(features[0, column])
    edited = float(high if real - low < high - real else low)  # the far end of what the data shows
    overridden = explain(recommender, top_items[0], user_id=user, n_steps=8, drill_down=0,
                         feature_overrides={"price_affinity": edited}).part("behaviour")
    assert overridden.details[column]["value"] == pytest.approx(edited)
    assert overridden.base_value == pytest.approx(part.base_value, abs=1e-12)  # the same background
    assert overridden.values[column] != pytest.approx(part.values[column], abs=1e-9)


def test_token_entries_merge_word_pieces_into_the_words_as_written(recommender):
    tokenizer = recommender.net.encoder.tokenizer
    text = "Zephyra wool-socks, WATERPROOF"
    batch = tokenizer([text], return_tensors="pt", return_offsets_mapping=True)
    entries = token_entries(tokenizer, batch["input_ids"], [tuple(map(int, o)) for o in batch["offset_mapping"][0]],
                            text, (tokenizer.cls_token_id, tokenizer.sep_token_id), tokenizer.pad_token_id)
    words = list(dict.fromkeys((e["word_index"], e["word"]) for e in entries))
    assert [w for _, w in words] == ["Zephyra", "wool", "-", "socks", ",", "WATERPROOF"]
    assert any(e["token"].startswith("##") for e in entries)  # the tiny vocabulary splits "Zephyra"


# ---- the contract every explainer keeps --------------------------------------------------------------------------

EXPLAINERS = [TokenAttributor, HistoryTokenAttributor, BehaviourAttributor]


@pytest.mark.parametrize("explainer_class", EXPLAINERS, ids=lambda c: c.__name__)
def test_every_explainer_keeps_the_contract(explainer_class, recommender, user, top_items):
    explainer = explainer_class()
    public = [name for name in dir(explainer) if not name.startswith("_") and callable(getattr(explainer, name))]
    assert public == ["attribute"]  # one verb
    assert isinstance(explainer_class.method, str) and isinstance(explainer_class.has_convergence_delta, bool)
    context = recommender.context(user, "wool sock")
    view = score_view(recommender, context, int(recommender.item_positions([top_items[0]])[0]))
    parts = explainer.attribute(recommender, context, view)
    assert isinstance(parts, tuple) and parts and all(isinstance(p, Attribution) for p in parts)
    for part in parts:
        assert part.kind in KINDS and part.method == explainer_class.method
        assert len(part.names) == len(part.values) == len(part.details) > 0
        assert all(math.isfinite(v) for v in part.values)
        if not explainer_class.has_convergence_delta:
            assert abs(part.completeness_gap) <= 1e-6


@pytest.fixture(scope="module")
def lexical_model(tiny_encoder, tiny_shop, tmp_path_factory):
    """The tiny shop's model with the lexical channel beside the encoder."""
    from model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("lexical") / "model"
    train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16,
                                           "lexical_text": True, "use_id_embedding": False},
          train_config=TrainConfig(epochs=2, batch_size=16, behaviour_epochs=2), base_model=str(tiny_encoder),
          progress=False, log=lambda *_: None)
    return out


def test_integrated_gradients_split_the_lexical_channel_exactly(lexical_model):
    # With the encoder's projection at zero, a plain dot product and the user's state held fixed, the item text
    # reaches the score through the lexical channel alone: <context, W mean(word embeddings)>, linear in each
    # token, so IG must equal the closed form (x - baseline) . gradient, the gradient taken once by autograd.
    from model.checkpoint import load

    loaded = load(lexical_model)
    net = loaded.net
    net.config = replace(net.config, temperature=0.0)
    with torch.no_grad():
        net.item_text_proj.weight.zero_()
        net.item_text_proj.bias.zero_()
    served = Recommender(net, loaded.dataset, loaded.text_embeddings, checkpoint_id="t")
    user = some_user(served)
    context = served.context(user_id=user)
    view = score_view(served, context, served.dataset.item_position[served.recommend(user_id=user, k=1)[0].item_id])
    history = view.history_vectors

    def fixed_state(item, query=None, _history=None, id_vector=None):  # the history is no input of the path
        return view.forward(item, query, history.expand(item.shape[0], -1, -1), id_vector)

    fixed = replace(view, history_vectors=None, history_index=np.zeros(0, dtype=np.int64), forward=fixed_state)
    part = TokenAttributor(PathSettings(n_steps=4)).attribute(served, context, fixed)[0]
    x = view.item_embeds.clone().requires_grad_(True)
    fixed_state(x, None, None, view.id_vector).sum().backward()
    words = net.encoder.word_embeddings
    base = text_baseline(view, view.item_input_ids, view.item_embeds, words, "template", None, view.item_template)
    expected = ((view.item_embeds - base) * x.grad).sum(-1)[0].detach().cpu().numpy()
    assert any(abs(v) > 1e-5 for v in part.values)  # the channel carries something to split
    np.testing.assert_allclose(part.values, expected[[d["position"] for d in part.details]], rtol=1e-4, atol=1e-8)


def test_a_lexical_model_adds_up_to_its_served_score(lexical_model):
    from model.checkpoint import load

    lexical = load(lexical_model)
    user = some_user(lexical)
    item = lexical.recommend(user_id=user, k=1)[0].item_id
    e = explain(lexical, item, user_id=user, n_steps=32)
    assert e.score == pytest.approx(served_score(lexical, item, user), abs=1e-6)
    delta = e.part("item_tokens").completeness_gap
    assert abs(e.base_value + e.total - e.score) <= abs(delta) + 1e-4
    assert abs(delta) <= 0.05 * abs(e.score - e.base_value) + 1e-3


# ---- completeness on the tiny model -----------------------------------------------------------------------------

def test_parts_add_up_to_the_models_score(recommender, user, top_items, explained):
    assert explained.score == pytest.approx(served_score(recommender, top_items[0], user, "warm wool sock"), abs=1e-9)
    delta = explained.part("item_tokens").completeness_gap
    assert abs(explained.base_value + explained.total - explained.score) <= abs(delta) + 1e-4
    assert explained.completeness_gap == pytest.approx(explained.base_value + explained.total - explained.score)
    in_total = {p.kind for p in explained.parts if p.in_total}
    assert in_total == {"item_tokens", "query_tokens", "history", "collaborative", "behaviour"}
    assert not explained.part("history_tokens").in_total and not explained.part("behaviour_full").in_total
    # The token runs' parts share one base value and one delta; the explanation's base adds SHAP's.
    joint = [explained.part(k) for k in ("item_tokens", "query_tokens", "collaborative")]
    assert len({(p.base_value, p.completeness_gap) for p in joint}) == 1
    assert explained.base_value == explained.part("item_tokens").base_value + explained.part("behaviour").base_value
    assert abs(explained.part("history").completeness_gap) <= 1e-9  # the shared entry closes the history's sum


@pytest.mark.parametrize("case", ["user", "query", "user+query", "zero baseline", "pad baseline", "riemann"])
def test_completeness_holds_in_every_mode(recommender, user, top_items, case):
    kwargs = {"user": {"user_id": user}, "query": {"query": "red steel pan"},
              "user+query": {"user_id": user, "query": "green cotton shirt"},
              "zero baseline": {"user_id": user, "baseline": "zero"},
              "pad baseline": {"user_id": user, "baseline": "pad"},
              "riemann": {"user_id": user, "method": "riemann_middle", "internal_batch_size": 7}}[case]
    e = explain(recommender, top_items[1], n_steps=40, **kwargs)
    delta = e.part("item_tokens").completeness_gap
    assert abs(e.completeness_gap) <= abs(delta) + 1e-4
    assert abs(delta) <= 0.05 * abs(e.score - e.base_value) + 1e-3  # the path is fine enough at 40 steps
    assert e.part("item_tokens").parameters["baseline"] == kwargs.get("baseline", "template")
    assert set(e.flags) <= set(FLAGS)


def test_a_wrong_part_breaks_the_sum(explained):
    # The sum check can fail: shift one value and the gap shows it.
    item = explained.part("item_tokens")
    shifted = replace(item, values=(item.values[0] + 0.5, *item.values[1:]))
    broken = replace(explained, parts=tuple(shifted if p.kind == "item_tokens" else p for p in explained.parts))
    assert broken.completeness_gap == pytest.approx(explained.completeness_gap + 0.5)


def test_shap_is_additive_on_the_behaviour_head(recommender, explained):
    part = explained.part("behaviour")
    # SHAP explains the head in float64 (explain.behaviour): additive to float64 rounding, not float32's (~1e-6 of
    # the score), nor to shap's np.isclose tolerance for "unchanged" features (~1e-8: explain.behaviour.exact_shap).
    features = torch.tensor([[d["value"] for d in part.details]], dtype=torch.float64, device=recommender.device)
    with torch.no_grad():
        behaviour = float(recommender.net.behaviour_score(features)[0])
    assert abs(part.base_value + math.fsum(part.values) - behaviour) <= 1e-9
    assert [d["feature"] for d in part.details] == [spec.name for spec in FEATURES]


def test_history_part_names_the_items_and_drills_into_the_top_three(recommender, user, explained):
    history = explained.part("history")
    units = recommender.histories[user]
    assert len(units) <= recommender.config.max_history  # the tiny shop's users: one entry per past item
    items, shared = history.details[:-1], history.details[-1]
    assert shared["shared"] and shared["item_id"] is None and history.names[-1] == "the history as a whole"
    assert {d["item_id"] for d in items} == set(recommender.item_ids[units.item_index])
    assert all(d["event"] in ("view", "cart", "purchase", "rating") and d["age_days"] >= 0 for d in items)
    assert [abs(v) for v in history.values[:-1]] == sorted((abs(v) for v in history.values[:-1]), reverse=True)
    drill = explained.part("history_tokens")
    assert {d["item_id"] for d in drill.details} == {d["item_id"] for d in items[:3]}
    assert drill.parameters["units"] == [d["unit"] for d in items[:3]]


def test_the_drill_down_starts_from_the_same_score(explained):
    # At its input the drill-down's forward is the score view's: the score less the item bias and the behaviour
    # head's output (which the behaviour_full drill-down adds up to, SHAP being exact).
    drill, features = explained.part("history_tokens"), explained.part("behaviour_full")
    drill_end = drill.base_value + drill.total - drill.completeness_gap
    dot = explained.score - explained.part("collaborative").values[1] - (features.base_value + features.total)
    assert drill_end == pytest.approx(dot, abs=1e-4)
    assert drill.base_value != pytest.approx(dot, abs=1e-6)  # blanking the items' words moves the score


def test_words_merge_pieces_and_keep_the_total(explained):
    item = explained.part("item_tokens")
    words = item.words()
    assert words.total == pytest.approx(item.total, abs=1e-9)
    assert len(words) < len(item) and not any(name.startswith("##") for name in words.names)
    text_words = [name for name in words.names if name.isalnum()]
    assert text_words and all(name in explained.item_title or name.lower() in explained.item_title.lower()
                              for name in text_words[:3])
    with pytest.raises(ExplanationError, match="has no words"):
        explained.part("behaviour").words()


def test_terms_sum_every_occurrence_of_a_word(explained):
    item = explained.part("item_tokens")
    words, terms = item.words(), item.terms()
    assert terms.total == pytest.approx(item.total, abs=1e-9)
    folded = [name.casefold() for name in terms.names]
    assert len(folded) == len(set(folded)) and len(terms) <= len(words)
    for name, value, detail in zip(terms.names, terms.values, terms.details):
        same = [v for n, v in zip(words.names, words.values) if n.casefold() == name.casefold()]
        assert value == pytest.approx(sum(same), abs=1e-12) and detail["occurrences"] == len(same)
    # "Wool sock. Brand: WOOL": one term, its three pieces summed; the punctuation stays its own term.
    pieces = [("wo", 0, "Wool", 0.25), ("##ol", 0, "Wool", 0.5), ("sock", 1, "sock", -0.125), (".", 2, ".", 0.0625),
              ("wool", 3, "WOOL", 1.0)]
    made = Attribution("item_tokens", [p[0] for p in pieces], [p[3] for p in pieces], 0.0, "integrated_gradients", {},
                       details=[{"position": i, "word_index": p[1], "word": p[2]} for i, p in enumerate(pieces)])
    merged = made.terms()
    assert merged.names == ("Wool", "sock", ".") and merged.values == (1.75, -0.125, 0.0625)
    assert merged.details[0]["positions"] == [0, 1, 4] and merged.details[0]["occurrences"] == 2


def test_explain_at_a_moment_reads_only_the_events_before_it(recommender, user):
    events = recommender.dataset.user_events(user).sort_values("timestamp")
    at = events["timestamp"].iloc[len(events) // 2]
    before = events[events["timestamp"] < at]
    item = recommender.recommend(user_id=user, k=1)[0].item_id
    explanation = explain(recommender, item, user_id=user, n_steps=16, drill_down=0, at=at.isoformat())
    assert pd.Timestamp(explanation.moment) == at
    assert {d["item_id"] for d in explanation.part("history").details} - {None} <= set(before["item_id"])
    context = recommender.context(user, at=at)
    position = recommender.item_positions([item])
    assert explanation.score == pytest.approx(sum(recommender.score_parts(context, position).values())[0], abs=1e-9)
    assert explanation.score != pytest.approx(served_score(recommender, item, user), abs=1e-6)
    with pytest.raises(ExplanationError, match="not a moment in time"):
        explain(recommender, item, user_id=user, n_steps=4, at="last tuesday-ish")


def test_path_runs_raise_the_threads_and_put_them_back(monkeypatch):
    monkeypatch.setenv("WHYREC_PATH_THREADS", "2")
    seen = []

    def forward(x):
        seen.append((len(x), torch.get_num_threads()))
        return (x * 3.0).sum(-1).sum(-1)

    torch.set_num_threads(1)
    integrate(forward, [torch.ones(1, 2, 3)], [torch.zeros(1, 2, 3)], PathSettings(n_steps=4))
    assert {threads for rows, threads in seen if rows == 4} == {2}  # the path's batch: 4 points at once
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("WHYREC_PATH_THREADS", "two")
    with pytest.raises(ExplanationError, match="WHYREC_PATH_THREADS"):
        integrate(forward, [torch.ones(1, 2, 3)], [torch.zeros(1, 2, 3)], PathSettings(n_steps=4))
    assert torch.get_num_threads() == 1


def test_a_path_run_beside_another_leaves_the_threads_alone_and_each_thread_gets_its_count_back(monkeypatch):
    """Two sessions explaining at once: only a run alone raises the threads (two runs on two threads each would ask
    four of two cores), and a thread whose run ends first is back to its count at once, whichever run ends last."""
    from explain.gradients import PATH_THREADS

    monkeypatch.setenv("WHYREC_PATH_THREADS", "2")
    torch.set_num_threads(1)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def first() -> None:
        torch.ones(4).sum()  # a parallel op: from here on this thread keeps its own count
        with PATH_THREADS:
            seen["first, alone"] = torch.get_num_threads()
            first_in.set()
            second_in.wait(30)
        seen["first, after"] = torch.get_num_threads()
        first_out.set()

    def second() -> None:
        first_in.wait(30)
        torch.ones(4).sum()
        seen["second, before"] = torch.get_num_threads()
        with PATH_THREADS:
            seen["second, beside the first"] = torch.get_num_threads()
            second_in.set()
            first_out.wait(30)
        seen["second, after"] = torch.get_num_threads()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    later = []
    thread = threading.Thread(target=lambda: later.append(torch.get_num_threads()))
    thread.start()
    thread.join(60)
    assert seen["first, alone"] == 2 and seen["first, after"] == 1
    assert seen["second, beside the first"] == seen["second, after"] == seen["second, before"]
    assert later == [1] and torch.get_num_threads() == 1  # threads started afterwards read the serving count


# ---- JSON ----------------------------------------------------------------------------------------------------------

def test_json_round_trip_is_exact(explained):
    text = explained.to_json()
    again = Explanation.from_json(text)
    assert again == explained
    assert again.to_json() == text
    data = json.loads(text)
    assert data["schema_version"] == 2 and data["schema"] == "whyrec-explanation"
    assert {p["kind"]: p["in_total"] for p in data["parts"]}["history_tokens"] is False
    assert data["completeness_gap"] == explained.completeness_gap


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.update(schema_version=3), "schema_version 3"),
    (lambda d: d.update(schema_version=1), "schema_version 1, from an earlier WhyRec.*explain the item again"),
    (lambda d: d.update(colour="red"), "unknown explanation keys: colour"),
    (lambda d: d["parts"][0].update(in_total=False), "in_total False contradicts"),
    (lambda d: d["parts"][0].update(values=[1.0]), "must be as many"),
    (lambda d: d["parts"][0].update(kind="pixels"), "kind 'pixels'"),
])
def test_json_that_breaks_the_schema_is_refused(explained, change, message):
    data = explained.to_dict()
    change(data)
    with pytest.raises(ExplanationError, match=message):
        Explanation.from_dict(json.loads(json.dumps(data)))


# ---- threads ------------------------------------------------------------------------------------------------------

def test_two_threads_give_the_serial_values(recommender):
    # Item texts and queries are cut at different token limits by one shared tokenizer: a race between the two
    # shows up as a text cut at the wrong length (the next test checks the lock that prevents it directly).
    users = [u for u in recommender.user_ids if len(recommender.histories[u]) >= 3][:2]
    jobs = [(u, [r.item_id for r in recommender.recommend(user_id=u, k=2)]) for u in users]
    serial = [explain_pair(recommender, a, b, user_id=u, query="wool", n_steps=2) for u, (a, b) in jobs]
    for _ in range(3):
        threaded, errors = [None, None], []

        def work(i, threaded=threaded, errors=errors):
            try:
                u, (a, b) = jobs[i]
                threaded[i] = explain_pair(recommender, a, b, user_id=u, query="wool", n_steps=2)
            except Exception as exc:  # surfaced below: an exception in a thread would otherwise vanish
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        for alone, together in zip(serial, threaded):
            assert [p.names for p in alone.parts] == [p.names for p in together.parts]
            assert [p.values for p in alone.parts] == [p.values for p in together.parts]
            assert alone.score == together.score


class _OverlapWatch:
    """A tokenizer that records how many threads are inside it at once (and lingers, so overlaps happen)."""

    def __init__(self, tokenizer):
        self._tokenizer, self._lock, self.inside, self.most = tokenizer, threading.Lock(), 0, 0

    def __call__(self, *args, **kwargs):
        with self._lock:
            self.inside += 1
            self.most = max(self.most, self.inside)
        try:
            time.sleep(0.01)
            return self._tokenizer(*args, **kwargs)
        finally:
            with self._lock:
                self.inside -= 1

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def test_explanations_never_tokenize_in_two_threads_at_once(recommender, user, top_items, monkeypatch):
    # The fast tokenizer's truncation limit is shared state that every call resets (see explain.gradients).
    watch = _OverlapWatch(recommender.net.encoder.tokenizer)
    monkeypatch.setattr(recommender.net.encoder, "tokenizer", watch)
    start = threading.Barrier(2)
    errors = []

    def work(query):
        try:
            start.wait()
            explain(recommender, top_items[0], user_id=user, query=query, n_steps=2)
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(q,)) for q in ("wool sock", "warm " * 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and watch.most == 1


# ---- pairs ----------------------------------------------------------------------------------------------------------

def test_pair_explains_the_margin(recommender, user, top_items):
    a, b = top_items[0], top_items[2]
    pair = explain_pair(recommender, a, b, user_id=user, n_steps=32)
    margin = served_score(recommender, a, user) - served_score(recommender, b, user)
    assert pair.score == pytest.approx(margin, abs=1e-9)
    assert abs(pair.completeness_gap) <= abs(pair.part("item_tokens").completeness_gap) + 1e-4
    assert pair.is_pair and pair.versus_item_id == b and "pair" in pair.flags
    items = pair.part("item_tokens")
    assert {name[:3] for name in items.names} == {"A: ", "B: "}
    assert pair.part("behaviour").base_value == 0.0  # the same background on both sides
    single_a = explain(recommender, a, user_id=user, n_steps=32)
    single_b = explain(recommender, b, user_id=user, n_steps=32)
    assert pair.base_value == pytest.approx(single_a.base_value - single_b.base_value, abs=1e-9)
    features_a = dict(zip(single_a.part("behaviour").names, single_a.part("behaviour").values))
    features_b = dict(zip(single_b.part("behaviour").names, single_b.part("behaviour").values))
    contrast = dict(zip(pair.part("behaviour").names, pair.part("behaviour").values))
    assert contrast == pytest.approx({k: features_a[k] - features_b[k] for k in features_a}, abs=1e-9)
    values = [(d["value"], d["value_b"]) for d in pair.part("behaviour").details]  # each item's own feature values
    assert values == [(a["value"], b["value"]) for a, b in zip(single_a.part("behaviour").details,
                                                               single_b.part("behaviour").details)]


def test_pair_of_an_item_with_itself_is_zero(recommender, user, top_items):
    pair = explain_pair(recommender, top_items[0], top_items[0], user_id=user, n_steps=8)
    assert pair.score == 0.0 and pair.base_value == 0.0
    for part in pair.parts:
        assert part.total == pytest.approx(0.0, abs=1e-9)


# ---- bad input ----------------------------------------------------------------------------------------------------

def test_unknown_item_and_user_are_named(recommender, user):
    with pytest.raises(ExplanationError, match="no-such-item"):
        explain(recommender, "no-such-item", user_id=user)
    with pytest.raises(ExplanationError, match="nobody"):
        explain(recommender, recommender.item_ids[0], user_id="nobody")
    with pytest.raises(ExplanationError, match="nobody"):
        explain_pair(recommender, recommender.item_ids[0], recommender.item_ids[1], user_id="nobody")


@pytest.mark.parametrize("n_steps", [0, 10_000, -3, 2.5])
def test_n_steps_outside_the_range_is_refused(recommender, user, n_steps):
    with pytest.raises(ExplanationError, match=r"1\.\.1000"):
        explain(recommender, recommender.item_ids[0], user_id=user, n_steps=n_steps)


def test_bad_settings_are_refused(recommender, user):
    with pytest.raises(ExplanationError, match="baseline 'blank'"):
        explain(recommender, recommender.item_ids[0], user_id=user, baseline="blank")
    with pytest.raises(ExplanationError, match="method 'simpson'"):
        explain(recommender, recommender.item_ids[0], user_id=user, method="simpson")
    with pytest.raises(ExplanationError, match="method 'riemann_trapezoid'"):  # its weights sum to (n - 1) / n
        explain(recommender, recommender.item_ids[0], user_id=user, method="riemann_trapezoid")
    with pytest.raises(ExplanationError, match="at least 2"):
        explain(recommender, recommender.item_ids[0], user_id=user, method="riemann_left", n_steps=1)
    with pytest.raises(ExplanationError, match="query is empty"):
        explain(recommender, recommender.item_ids[0], query="  ")


def test_a_huge_query_is_truncated_and_flagged(recommender, top_items):
    e = explain(recommender, top_items[0], query="warm wool " * 10_000, n_steps=16)
    assert "query_truncated" in e.flags and any("cut" in note for note in e.notes)
    assert len(e.part("query_tokens")) == recommender.config.max_query_tokens - 2  # [CLS] and [SEP] take two
    assert abs(e.completeness_gap) <= abs(e.part("item_tokens").completeness_gap) + 1e-4


def test_a_user_without_history_gets_an_empty_flagged_history_part(recommender, user, top_items):
    empty = recommender.dataset.events.iloc[:0]
    e = explain(recommender, top_items[0], user_id=user, history=empty, n_steps=16)
    assert "no_history" in e.flags and len(e.part("history")) == 0 and e.part("history_tokens") is None
    assert e.score == pytest.approx(served_score(recommender, top_items[0], user, history=empty), abs=1e-9)
    assert abs(e.completeness_gap) <= 1e-4
    anonymous = explain(recommender, top_items[0], query="red mug", n_steps=16)
    assert "no_history" in anonymous.flags and anonymous.user_id is None


def test_an_item_without_text_is_flagged_and_still_adds_up(recommender, user):
    items = recommender.dataset.items.copy()
    items.loc[0, ["title", "brand", "category", "description"]] = ["", None, None, None]
    embeddings = recommender.text_embeddings.clone()
    embeddings[0] = recommender.net.encoder.embed([""], recommender.config.max_item_tokens)[0]
    blank = Recommender(recommender.net, replace(recommender.dataset, items=items), embeddings,
                        checkpoint_id=recommender.checkpoint_id)
    item_id = str(items.item_id[0])
    e = explain(blank, item_id, user_id=user, n_steps=16)
    assert "empty_item_text" in e.flags and len(e.part("item_tokens")) == 0
    assert e.score == pytest.approx(served_score(blank, item_id, user), abs=1e-9)
    assert abs(e.completeness_gap) <= abs(e.part("item_tokens").completeness_gap) + 1e-4


def test_a_history_longer_than_the_model_reads_is_flagged(recommender, user, top_items):
    n = recommender.config.max_history + 5
    items = [i for i in recommender.item_ids if i != top_items[0]][:n]
    what_if = pd.DataFrame({"item_id": items, "event": "view",
                            "timestamp": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC")})
    e = explain(recommender, top_items[0], user_id=user, history=what_if, n_steps=4, drill_down=0)
    # The oldest past items are one entry; with the shared entry, as many entries as the model reads units, plus one.
    history = e.part("history")
    assert "history_truncated" in e.flags and len(history) == recommender.config.max_history + 1
    earlier = next(d for d in history.details if d["title"] == "earlier items")
    assert earlier["items"] == items[:n - recommender.config.max_history + 1] and earlier["unit"] is None
    singles = {d["item_id"] for d in history.details} - {None}
    assert singles == set(items[n - recommender.config.max_history + 1:])
    assert abs(e.completeness_gap) <= abs(e.part("item_tokens").completeness_gap) + 1e-4


def test_attributions_refuse_what_cannot_be_added_up():
    with pytest.raises(ExplanationError, match="non-finite"):
        Attribution("behaviour", ("a",), (float("nan"),), 0.0, "shap_exact", {})
    with pytest.raises(ExplanationError, match="drill_down -1"):
        explain(None, "i", user_id="u", drill_down=-1)


def test_drill_down_refuses_units_outside_the_history(recommender, user, top_items):
    context = recommender.context(user)
    view = score_view(recommender, context, int(recommender.item_positions([top_items[0]])[0]))
    with pytest.raises(ExplanationError, match="outside"):
        HistoryTokenAttributor().attribute(recommender, context, view, units=[999])


# ---- command line ------------------------------------------------------------------------------------------------

def test_cli_prints_a_summary_and_writes_json(tiny_model, recommender, user, top_items, tmp_path, capsys):
    out = tmp_path / "e.json"
    code = main(["item", "--model", str(tiny_model), "--item", top_items[0], "--user", user, "--steps", "8",
                 "--json", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    for heading in ("score", "top item words", "top past items", "the history as a whole", "top behaviour features",
                    "top-3 drop", "top-3 credited drop"):
        assert heading in printed
    assert Explanation.from_json(out.read_text()).item_id == top_items[0]
    code = main(["pair", "--model", str(tiny_model), "--a", top_items[0], "--b", top_items[1], "--query", "mug",
                 "--steps", "8"])
    printed = capsys.readouterr().out
    assert code == 0 and "margin score(A) - score(B)" in printed
    assert "value A " in printed and ", B " in printed  # each item's own feature values


@pytest.mark.parametrize("argv", [
    ["item", "--item", "no-such-item", "--user", "{user}"],
    ["item", "--item", "{item}", "--user", "nobody"],
    ["item", "--item", "{item}"],
    ["item", "--item", "{item}", "--user", "{user}", "--steps", "0"],
    ["pair", "--a", "{item}", "--b", "no-such-item", "--user", "{user}"],
])
def test_cli_bad_input_exits_2_with_one_line(tiny_model, user, top_items, argv, capsys):
    argv = [a.format(user=user, item=top_items[0]) for a in argv]
    assert main([argv[0], "--model", str(tiny_model), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
