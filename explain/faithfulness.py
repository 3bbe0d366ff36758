"""Faithfulness, measured: do the tokens IG ranks highest really move the score, more than random ones do?

Definitions (n = the item's real tokens, word pieces counted singly; [CLS]/[SEP] never move, nor does the item
text's template under a baseline that keeps it, gradients.KEEPS_TEMPLATE). Removing a token
replaces its embedding with the explanation's baseline token ([PAD] by default), keeping the attention mask and
every other input, and the score is recomputed through the score view. s(S) is the score with the tokens in S
removed; top_k are the k tokens with the largest IG values (most positive first); K = min(k_max, n).

    deletion_curve[k]        s(top_k), k = 0..K                        (falls fast when IG is right)
    insertion_curve[k]       s(every token except top_k removed), k = 0..K
    deletion_top3_drop       score - s(the top 3 tokens with positive IG value, fewer if fewer are positive)
    deletion_random3_drop    the same drop for as many tokens drawn at random, averaged over random_draws draws
    deletion_top3_words_drop the drop when the 3 whole words with the largest positive IG values (a word's pieces
                             summed, as the word-level view shows them) lose every piece at once
    deletion_random3_words_drop  the same for as many whole words drawn at random, averaged over the draws
    aopc_comprehensiveness   mean over k = 1..K of score - s(top_k)            (higher: the top tokens matter)
    aopc_sufficiency         mean over k = 1..K of score - s(all but top_k removed)  (lower: they suffice)
    *_random                 the same for random orders, averaged over the draws: the bar to clear

Agreement (on demand, agreement=True): SHAP's Partition explainer over the same tokens, with shap.maskers.Text
over the model's tokenizer masking a token by the same baseline token, gives a second opinion; `spearman` is
the Spearman rank correlation of its token values with IG's (None when either side is constant or n < 3), and
its own `deletion_top3_drop` and `aopc_comprehensiveness`, by the same removal as above, say whether the second
opinion ranks the tokens more faithfully than IG does; `deletion_top3_words_drop` the same for whole words.

History (the past interactions): removing a past item takes away every event on it, and the user state and the
history-derived behaviour features are rebuilt (model.removal), as the What-if page does. d(S) = score - the score
without the past items in S; the credited items are those with the largest positive history values.

    history_top3_drop, history_top1_drop       d(the 3 / the 1 most credited past items)
    history_random3_drop                       d(3 past items drawn at random), averaged over random_draws draws
    history_recent3_drop, history_recent1_drop d(the 3 / the 1 most recently touched past items)
    history_loo3_drop, history_loo1_drop       d(the 3 / the 1 past items whose removal alone lowers the score
                                               most: leave-one-out, the reference)
    history_*_top10                            whether the item is still in the user's top 10 once they are
                                               removed (the share of the draws for random3); None for an
                                               explanation at a past moment

Leave-one-out (a reference for the bench): each removable token's own effect, score - s({token}), from one batch
of removals (a forward pass per token, no gradients), ranked by the same deletion test. It measures exactly what
removing one token from the full text does, where IG's values share out f(x) - f(baseline) along the path from
the baseline.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd
import torch

from data.errors import WhyRecError
from explain.base import Attribution, Explanation
from explain.behaviour import import_shap
from explain.errors import ExplanationError
from explain.gradients import (
    KEEPS_TEMPLATE,
    PATH_THREADS,
    TOKENIZING,
    LockedTokenizer,
    baseline_token_id,
    device_of,
    text_baseline,
)

K_MAX = 10  # the first ten tokens removed: past them an item title is mostly gone
RANDOM_DRAWS = 5  # random orders averaged for the random bar; each costs 2 (k_max + 1) forward rows
TOP = 3  # the headline: the three strongest tokens
MAX_EVALS = 500  # SHAP Partition evaluations; 300-500 settle the ranking of a 64-token item
CHUNK = 64  # masked variants per forward pass


def faithfulness(recommender, explanation: Explanation, *, history: pd.DataFrame | None = None, at=None,
                 k_max: int = K_MAX, random_draws: int = RANDOM_DRAWS, seed: int = 0, agreement: bool = False,
                 max_evals: int = MAX_EVALS) -> dict:
    """Deletion and insertion of the item's top-IG tokens versus random ones; optionally SHAP agreement."""
    if explanation.is_pair:
        raise ExplanationError("faithfulness is measured on one item's explanation; measure A and B separately")
    if explanation.checkpoint_id != recommender.checkpoint_id:
        raise ExplanationError(f"the explanation is of model {explanation.checkpoint_id}, this recommender is "
                               f"{recommender.checkpoint_id}")
    if k_max < 1 or random_draws < 1 or max_evals < 1:
        raise ExplanationError(f"k_max {k_max}, random_draws {random_draws} and max_evals {max_evals} must be "
                               "positive")
    started = time.perf_counter()
    view = _view(recommender, explanation, history, at)
    part = explanation.part("item_tokens")
    tokenizer = recommender.net.encoder.tokenizer
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in view.item_input_ids[0].tolist()])
    positions = [d["position"] for d in part.details]
    if max(positions, default=-1) >= len(pieces) or any(pieces[p] != name for p, name in zip(positions, part.names)):
        raise ExplanationError(f"item '{explanation.item_id}' reads other tokens now than when it was explained")
    result = removal_curves(recommender, view, part, explanation.score, k_max=k_max, random_draws=random_draws,
                            seed=seed)
    result["agreement"] = agreement_with_shap(recommender, view, part, max_evals) if agreement else None
    result.update(history_faithfulness(recommender, explanation, history=history, at=at, random_draws=random_draws,
                                       seed=seed))
    result["seconds"] = time.perf_counter() - started
    return result


HISTORY_KEYS = ("top3", "top1", "random3", "recent3", "recent1", "loo3", "loo1")
RANKED = 10  # "still in the top 10"


def history_faithfulness(recommender, explanation: Explanation, *, history: pd.DataFrame | None = None, at=None,
                         random_draws: int = RANDOM_DRAWS, seed: int = 0) -> dict:
    """The history measures above for one explanation: its credited past items against random, recent and
    leave-one-out ones, each removed as What-if removes them."""
    from explain.explanations import explained_context
    from model.removal import HistoryRemoval

    context = explained_context(recommender, explanation.user_id, explanation.query, history, at=at)
    try:
        position = int(recommender.item_positions([explanation.item_id])[0])
        game = HistoryRemoval(recommender, context, position, history)
    except WhyRecError as exc:
        raise ExplanationError(f"cannot rebuild the explained score: {exc}") from exc
    part = explanation.part("history")
    index = {tuple(player.item_ids): p for p, player in enumerate(game.players)}
    values = np.zeros(len(game))
    for value, detail in zip(part.values if part is not None else (), part.details if part is not None else ()):
        if detail.get("shared"):  # what the history does beyond its items: no past item to remove
            continue
        p = index.get(tuple(detail.get("items") or [detail.get("item_id")]))
        if p is None:
            raise ExplanationError(f"past item {detail.get('item_id')!r} of the explanation is not in the history "
                                   "now; explain again")
        values[p] = value
    events = None
    if at is None and (history is not None or context.user_id is not None):
        events = history if history is not None else recommender.dataset.user_events(context.user_id)
    return history_measures(recommender, game, values, events=events, random_draws=random_draws, seed=seed)


def history_measures(recommender, game, values: np.ndarray, *, events: pd.DataFrame | None = None,
                     random_draws: int = RANDOM_DRAWS, seed: int = 0) -> dict:
    """The history measures for any values over `game`'s players (model.removal.HistoryRemoval), so the bench
    can hold other attributions to the same test. `events`: the user's events, for the top-10 check (None: none)."""
    n = len(game)
    out = {"history_players": n, "history_removal_effects": [], "history_notes": []}
    if n == 0:
        out.update({f"history_{key}_drop": 0.0 for key in HISTORY_KEYS})
        out.update({f"history_{key}_top10": None for key in ("top3", "random3", "recent3", "loo3")})
        out["history_notes"].append("no past interactions: nothing to remove")
        return out
    rng = np.random.default_rng(seed)
    effects = game.removal_drops([[p] for p in range(n)])  # leave-one-out, one batch
    credited = [int(p) for p in np.argsort(-np.asarray(values), kind="stable") if values[p] > 0]
    if len(credited) < TOP:
        out["history_notes"].append(f"only {len(credited)} past item(s) are credited with a positive value")
    recent = sorted(range(n), key=lambda p: -game.players[p].last_touch_ns)
    loo = [int(p) for p in np.argsort(-effects, kind="stable")]
    draws = [list(rng.choice(n, min(TOP, n), replace=False)) for _ in range(random_draws)]
    sets = {"top3": credited[:TOP], "top1": credited[:1], "recent3": recent[:TOP], "recent1": recent[:1],
            "loo3": loo[:TOP], "loo1": loo[:1]}
    drops = game.removal_drops([*sets.values(), *draws])
    out.update({f"history_{key}_drop": float(drop) for key, drop in zip(sets, drops)})
    out["history_random3_drop"] = float(np.mean(drops[len(sets):]))
    out["history_removal_effects"] = effects.tolist()
    for key, chosen in (("top3", [sets["top3"]]), ("recent3", [sets["recent3"]]), ("loo3", [sets["loo3"]]),
                        ("random3", draws)):
        kept = None if events is None else [still_ranked(recommender, game, events, players) for players in chosen]
        out[f"history_{key}_top10"] = None if kept is None else (kept[0] if key != "random3" else float(np.mean(kept)))
    return out


def still_ranked(recommender, game, events: pd.DataFrame, players) -> bool:
    """Whether the item is still in the top RANKED once every event on these past items is removed."""
    removed = {item for p in players for item in game.players[p].item_ids}
    edited = events[~events["item_id"].astype(str).isin(removed)]
    ranked = recommender.recommend(user_id=game.context.user_id, query=game.context.query,
                                   k=min(RANKED, len(recommender.item_ids)), history=edited)
    return any(row.item_id == recommender.item_ids[game.item_position] for row in ranked)


def removable(part: Attribution) -> list[int]:
    """Indices into `part` of the tokens a removal may take: all but the template where the baseline keeps it."""
    keeps_template = part.parameters.get("baseline") in KEEPS_TEMPLATE
    return [i for i, d in enumerate(part.details) if not (keeps_template and d.get("template"))]


def _removable_part(part: Attribution, kept: list[int], values, **changes) -> Attribution:
    """`part` cut to its removable tokens `kept` (removable()), with `values` for them: IG's own or another method's."""
    return dataclasses.replace(part, names=tuple(part.names[i] for i in kept), values=tuple(values),
                               details=tuple(part.details[i] for i in kept), **changes)


def removal_curves(recommender, view, part: Attribution, score: float, *, k_max: int = K_MAX,
                   random_draws: int = RANDOM_DRAWS, seed: int = 0) -> dict:
    """The deletion and insertion measures above for one item_tokens part of the score `view` reproduces."""
    kept = removable(part)
    positions = np.array([part.details[i]["position"] for i in kept], dtype=np.int64)
    # The word-level view of the removable tokens: a word's pieces summed, as the dashboard shows words.
    words = _removable_part(part, kept, [part.values[i] for i in kept]).words()
    ig_values = np.asarray(part.values, dtype=np.float64)[kept]
    kind = part.parameters["baseline"]
    n = len(positions)
    result = {"score": score, "n_tokens": n, "baseline": kind, "k_max": min(k_max, n),
              "random_draws": random_draws, "seed": seed, "notes": []}
    if n == 0:
        result["notes"].append("the item has no text tokens: nothing to remove")
        result.update(deletion_top3_drop=0.0, deletion_random3_drop=0.0, deletion_top3_words_drop=0.0,
                      deletion_random3_words_drop=0.0, aopc_comprehensiveness=0.0,
                      aopc_sufficiency=0.0, aopc_comprehensiveness_random=0.0, aopc_sufficiency_random=0.0,
                      curves={"deletion": [score], "insertion": [score], "deletion_random": [score],
                              "insertion_random": [score]})
        return result
    scorer = _RemovalScorer(recommender, view, kind, score)
    result.update(_curves(scorer, positions, words, ig_values, min(k_max, n), random_draws, seed, result["notes"]))
    return result


def _view(recommender, explanation: Explanation, history, at=None):
    """The explained score's view again; `history` and `at` must be what the explanation was given."""
    from explain.explanations import explained_context
    from model.serving import score_view

    context = explained_context(recommender, explanation.user_id, explanation.query, history, at=at)
    try:
        with TOKENIZING:
            position = int(recommender.item_positions([explanation.item_id])[0])
            return score_view(recommender, context, position, history=history)
    except WhyRecError as exc:
        raise ExplanationError(f"cannot rebuild the explained score: {exc}") from exc


class _ItemForward:
    """forward(item token embeddings) with every other input of the view held at its value; no gradients."""

    def __init__(self, recommender, view) -> None:
        device = device_of(recommender)
        self.view, self.device = view, device
        self.others = (None if view.query_embeds is None else view.query_embeds.to(device),
                       None if view.history_vectors is None else view.history_vectors.to(device),
                       view.id_vector.to(device))

    def __call__(self, item_embeds: torch.Tensor) -> np.ndarray:
        """(V, T, H) -> (V,) float64."""
        out = []
        for chunk in item_embeds.split(CHUNK):
            others = [None if x is None else x.expand(len(chunk), *x.shape[1:]) for x in self.others]
            with torch.no_grad():
                out.append(self.view.forward(chunk, *others).double().cpu())
        return torch.cat(out).numpy()


class _RemovalScorer:
    """s(S): the score with some item tokens replaced by the baseline token, everything else as it was."""

    def __init__(self, recommender, view, kind: str, score: float) -> None:
        encoder = recommender.net.encoder
        self.forward = _ItemForward(recommender, view)
        self.embeds = view.item_embeds.to(self.forward.device)  # (1, T, H)
        self.replacement = text_baseline(view, view.item_input_ids.to(self.forward.device), self.embeds,
                                         encoder.word_embeddings, kind, encoder.tokenizer.mask_token_id,
                                         view.item_template)
        self.score = score

    def scores(self, removed: np.ndarray) -> np.ndarray:
        """(V, T) bool, True = removed -> (V,) scores: the score moved by forward(S) - forward(nothing removed).

        The reference row rides in the same batch, so removing nothing gives the score to the last bit.
        """
        rows = torch.as_tensor(np.concatenate([np.zeros((1, removed.shape[1]), dtype=bool), removed]))
        mask = rows.to(self.forward.device).unsqueeze(-1)  # (V + 1, T, 1)
        with PATH_THREADS:  # a batch of ~140 masked texts: as large as a path run, so as many threads
            values = self.forward(torch.where(mask, self.replacement, self.embeds))
        return self.score + (values[1:] - values[0])


def _curves(scorer: _RemovalScorer, positions: np.ndarray, words: Attribution, ig_values: np.ndarray, k: int,
            draws: int, seed: int, notes: list[str]) -> dict:
    length = scorer.embeds.shape[1]
    rng = np.random.default_rng(seed)
    ranked = positions[np.argsort(-ig_values, kind="stable")]  # most positive first
    orders = [ranked] + [rng.permutation(positions) for _ in range(draws)]
    top = min(TOP, int((ig_values > 0).sum()))
    if top < TOP:
        notes.append(f"only {top} token(s) have a positive IG value; the top-3 drop removes {top}")
    word_values = np.asarray(words.values, dtype=np.float64)
    top_words = np.argsort(-word_values, kind="stable")[: min(TOP, int((word_values > 0).sum()))]
    word_rows = np.zeros((1 + draws, length), dtype=bool)  # IG's top words, then random ones as many
    for row, chosen in zip(word_rows, [top_words] + [rng.permutation(len(words))[: len(top_words)]
                                                     for _ in range(draws)]):
        for word in chosen:
            row[words.details[word]["positions"]] = True

    def rows(order: np.ndarray) -> np.ndarray:  # (2 (k + 1) + 1, T): deletion of top_0..top_k, insertion, top-3
        out = np.zeros((2 * (k + 1) + 1, length), dtype=bool)
        for j in range(k + 1):
            out[j, order[:j]] = True
            out[k + 1 + j, positions] = True
            out[k + 1 + j, order[:j]] = False
        out[-1, order[:top]] = True
        return out

    every = scorer.scores(np.concatenate([*(rows(order) for order in orders), word_rows]))  # one batch
    scores, word_scores = every[: -len(word_rows)].reshape(len(orders), -1), every[-len(word_rows):]
    deletion, insertion = scores[:, : k + 1], scores[:, k + 1 : -1]  # (1 + draws, k + 1) each
    score = scorer.score
    return {
        "deletion_top3_drop": float(score - scores[0, -1]),
        "deletion_random3_drop": float(np.mean(score - scores[1:, -1])),
        "deletion_top3_words_drop": float(score - word_scores[0]),
        "deletion_random3_words_drop": float(np.mean(score - word_scores[1:])),
        "aopc_comprehensiveness": float(np.mean(score - deletion[0, 1:])),
        "aopc_sufficiency": float(np.mean(score - insertion[0, 1:])),
        "aopc_comprehensiveness_random": float(np.mean(score - deletion[1:, 1:])),
        "aopc_sufficiency_random": float(np.mean(score - insertion[1:, 1:])),
        "curves": {"deletion": deletion[0].tolist(), "insertion": insertion[0].tolist(),
                   "deletion_random": deletion[1:].mean(0).tolist(),
                   "insertion_random": insertion[1:].mean(0).tolist()},
    }


def leave_one_out(recommender, view, part: Attribution) -> dict:
    """Each removable token's own effect, score - s({token}), and its top-3 drops and AOPC by the deletion test."""
    kept = removable(part)
    out = {"method": "leave_one_out", "values": [], "seconds": 0.0, "deletion_top3_drop": None,
           "deletion_top3_words_drop": None, "aopc_comprehensiveness": None}
    if not kept:
        return out
    started = time.perf_counter()
    scorer = _RemovalScorer(recommender, view, part.parameters["baseline"], 0.0)  # scores relative to the input's
    removed = np.zeros((len(kept), scorer.embeds.shape[1]), dtype=bool)
    removed[np.arange(len(kept)), [part.details[i]["position"] for i in kept]] = True
    values = -scorer.scores(removed)
    out.update(values=values.tolist(), seconds=time.perf_counter() - started)
    own = _removable_part(part, kept, values, method="leave_one_out")
    curves = removal_curves(recommender, view, own, 0.0, random_draws=1)
    out.update(deletion_top3_drop=curves["deletion_top3_drop"],
               deletion_top3_words_drop=curves["deletion_top3_words_drop"],
               aopc_comprehensiveness=curves["aopc_comprehensiveness"])
    return out


def shap_tokens(part: Attribution, agreement: dict | None) -> Attribution | None:
    """SHAP Partition's token values from `agreement_with_shap` as a token part beside IG's `part`, for display.

    The same tokens as `part`; those a removal may not take (the template, under a baseline that keeps it) get 0,
    as they do under IG. None when SHAP gave no values. Its completeness gap is agreement["shap_completeness_gap"]:
    base value + these values - the output SHAP explained.
    """
    if not agreement or not agreement.get("shap_values"):
        return None
    values = np.zeros(len(part))
    values[removable(part)] = agreement["shap_values"]
    parameters = {"baseline": part.parameters["baseline"], "max_evals": agreement["max_evals"]}
    return dataclasses.replace(part, values=tuple(values), base_value=agreement["shap_base_value"],
                               method="shap_partition", completeness_gap=agreement["shap_completeness_gap"],
                               seconds=agreement["seconds"], parameters=parameters)


def agreement_with_shap(recommender, view, part: Attribution, max_evals: int = MAX_EVALS) -> dict:
    """SHAP Partition values of the same tokens (Text masker, the baseline token as mask) and their rank agreement."""
    shap = import_shap()
    kept = removable(part)
    positions = np.array([part.details[i]["position"] for i in kept], dtype=np.int64)
    ig_values = np.asarray(part.values, dtype=np.float64)[kept]
    kind, ig_seconds = part.parameters["baseline"], part.seconds
    encoder = recommender.net.encoder
    out = {"method": "shap_partition", "max_evals": max_evals, "ig_seconds": ig_seconds, "spearman": None,
           "shap_values": [], "shap_base_value": None, "shap_completeness_gap": None, "seconds": 0.0,
           "deletion_top3_drop": None, "deletion_top3_words_drop": None, "aopc_comprehensiveness": None, "note": None}
    if len(positions) == 0:
        out["note"] = "no tokens to compare"
        return out
    started = time.perf_counter()
    # The text up to the last token the model kept: re-tokenised, it gives the view's tokens again.
    text = view.item_text[: view.item_offsets[int(positions.max())][1]]
    mask_token = baseline_token_id(view, kind, encoder.tokenizer.mask_token_id)
    tokenizer = LockedTokenizer(encoder.tokenizer)
    masker = shap.maskers.Text(tokenizer, mask_token=mask_token, collapse_mask_token=False, output_type="token_ids")
    if list(tokenizer(text)["input_ids"]) != view.item_input_ids[0].tolist():
        out["note"] = "the tokenizer does not give the model's tokens back from the text; no comparison"
        return out
    forward = _ItemForward(recommender, view)
    # Where the baseline keeps the template, SHAP may not take it away either: its tokens are put back.
    fixed = list(view.item_template) if kind in KEEPS_TEMPLATE else []
    original = view.item_input_ids[0].cpu().numpy()

    def score(token_ids) -> np.ndarray:  # SHAP's masked variants of the token ids, (V, T)
        token_ids = np.array(token_ids, dtype=np.int64)
        if fixed:
            token_ids[:, fixed] = original[fixed]
        with torch.no_grad():
            embeds = encoder.word_embeddings(torch.as_tensor(token_ids, device=forward.device))
        return forward(embeds)

    with PATH_THREADS:  # the same CPU threads as the IG run it is compared with
        result = shap.explainers.Partition(score, masker)([text], max_evals=max_evals, silent=True)
    shap_values = np.asarray(result.values[0], dtype=np.float64)[positions]
    base_value = float(np.asarray(result.base_values).reshape(-1)[0])
    out.update(shap_values=shap_values.tolist(), shap_base_value=base_value, seconds=time.perf_counter() - started)
    # Partition shares out f(input) - f(every token masked) over every position, [CLS]/[SEP] and the template
    # included, though they never move: what the compared tokens' values leave out is their shortfall, as IG's
    # convergence delta is IG's. f is the view's output with every other input held (the score less behaviour).
    out["shap_completeness_gap"] = float(base_value + shap_values.sum() - score(original[None])[0])
    # SHAP's own faithfulness, by the same deletion test as IG's: is the second opinion any better?
    shap_part = _removable_part(part, kept, shap_values, method="shap_partition")
    shap_curves = removal_curves(recommender, view, shap_part, 0.0, random_draws=1)
    out.update(deletion_top3_drop=shap_curves["deletion_top3_drop"],
               deletion_top3_words_drop=shap_curves["deletion_top3_words_drop"],
               aopc_comprehensiveness=shap_curves["aopc_comprehensiveness"])
    if len(positions) < 3 or np.ptp(shap_values) == 0 or np.ptp(ig_values) == 0:
        out["note"] = "too few or constant values for a rank correlation"
    else:
        out["spearman"] = float(pd.Series(ig_values).corr(pd.Series(shap_values), method="spearman"))
    return out
