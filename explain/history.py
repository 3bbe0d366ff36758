"""Which past interactions drove a score: their share of what removing them does, and the words inside the top ones.

The history part answers the What-if question. A past interaction is a past item with every event on it; removing
it rebuilds everything that reads the history (model.removal: the user state and the history-derived behaviour
features), as the What-if page does. The value of a past item is its Shapley value in that removal game, so the
values add up exactly to what removing the whole history does. The game is played beside the item's words (see
explain.tokens): the dot product ⟨context(history, query), item(words, ID)⟩ needs both, and the history gets half
of what it adds with the words present and half of what it adds with the words at their baseline (an Owen value,
the history's items players inside the history's group). So for a set S of past items kept,

    v(S) = 1/2 [dot(S; words) + dot(S; baseline words)] + behaviour(features rebuilt from S)
    history = v(all) - v(none) = sum over past items of their Shapley values in v

Shapley values are exact for up to EXACT_PLAYERS past items (every subset, in one batch) and estimated past that
by PERMUTATIONS random orders, each with its reverse (antithetic); either way they add up exactly, since every
order's marginal contributions sum to v(all) - v(none). Beside each value the part keeps the item's measured
removal effect with the words present (score - score without it: what What-if shows when it is removed).

`HistoryTokenAttributor` drills into a few of the past items: a second IG run over their text tokens, through the
encoder and the model's item vector (`RecommenderNet.item_vectors`) into the user state and the score, everything
else held at its value. It re-explains the text share of those units' influence, so it is left out of the total.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from data.schema import EVENT_TYPES
from explain.base import Attribution
from explain.errors import ExplanationError
from explain.gradients import (
    DEFAULT_BASELINE,
    TOKENIZING,
    PathSettings,
    device_of,
    integrate,
    text_baseline,
    token_entries,
)
from model.sequences import age_days

DRILL_DOWN_UNITS = 3  # history items opened to their words: the ones a person reads first
EXACT_PLAYERS = 8  # Shapley values (bench/history.py compares them): up to 2^8 = 256 subsets, exact
PERMUTATIONS = 32  # past that, random orders (16 and their reverses)
REMOVAL_DEPTH = 2  # a past item's value: removed alone and with up to 2 others (the 3 a removal test takes)
SAMPLES = 4  # sets of others per past item and depth, where there are too many subsets to take them all
EXACT_LIMIT = 600  # removal subsets scored in one batch before sampling starts (about 15 past items at depth 2)
SEED = 0  # the same explanation gives the same values
SHARED = "the history as a whole"  # the entry of what no single past item's removal shows


def history_units(recommender, context, view) -> list[dict]:
    """One dict per history unit the view reads, oldest first: item id, title, event, age in days at the moment.

    The age counts from the unit's first touch, the time the model's recency codes read.
    """
    history = context.history
    used = len(view.history_index)
    if used == 0:
        return []
    if not np.array_equal(history.item_index[-used:], view.history_index):
        raise ExplanationError("the score view reads other history items than the context holds; rebuild the view")
    offset = len(history) - used
    units = []
    for t, position in enumerate(view.history_index):
        row = recommender.items.iloc[int(position)]
        code = int(history.event_codes[offset + t])
        units.append({
            "unit": t,
            "item_id": str(row.item_id),
            "title": str(row.title),
            "event": EVENT_TYPES[code - 1] if code > 0 else "unknown",
            "age_days": round(age_days(context.moment_ns, int(history.first_touch[offset + t])), 6),
        })
    return units


def shapley_values(value: Callable[[np.ndarray], np.ndarray], n: int, *, exact_max: int = EXACT_PLAYERS,
                   permutations: int = PERMUTATIONS, seed: int = SEED) -> tuple[np.ndarray, dict]:
    """Shapley values (n,) of the game `value` ((M, n) bool players present -> (M,) float64) and how they were got.

    Exact for n <= exact_max; else the mean marginal contribution over `permutations` random orders, half of them
    the reverses of the other half. Both add up to value(all) - value(none) exactly (up to float rounding).
    """
    if n == 0:
        return np.zeros(0), {"estimator": "none", "evaluations": 0}
    if n <= exact_max:
        masks = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1).astype(bool)  # subset s = bits of s
        v = np.asarray(value(masks), dtype=np.float64)
        size = masks.sum(1)
        # weight of a subset S without i: |S|! (n - |S| - 1)! / n!
        weight = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in range(n)])
        phi = np.empty(n)
        for i in range(n):
            without = np.flatnonzero(~masks[:, i])
            phi[i] = np.sum(weight[size[without]] * (v[without | (1 << i)] - v[without]))
        return phi, {"estimator": "exact", "evaluations": int(2 ** n)}
    if permutations < 2:
        raise ExplanationError(f"permutations {permutations} must be at least 2")
    rng = np.random.default_rng(seed)
    half = [rng.permutation(n) for _ in range(permutations // 2)]
    orders = half + [order[::-1] for order in half]
    prefixes = np.zeros((len(orders), n + 1, n), dtype=bool)  # prefixes[o, j]: the first j players of order o
    for o, order in enumerate(orders):
        for j in range(1, n + 1):
            prefixes[o, j] = prefixes[o, j - 1]
            prefixes[o, j, order[j - 1]] = True
    unique, inverse = np.unique(prefixes.reshape(-1, n), axis=0, return_inverse=True)
    v = np.asarray(value(unique), dtype=np.float64)[inverse.reshape(-1)].reshape(len(orders), n + 1)
    phi = np.zeros(n)
    for o, order in enumerate(orders):
        phi[order] += np.diff(v[o])
    return phi / len(orders), {"estimator": "permutations", "permutations": len(orders), "seed": int(seed),
                               "evaluations": len(unique)}


def removal_values(value: Callable[[np.ndarray], np.ndarray], n: int, *, depth: int = 2, samples: int = 6,
                   exact_limit: int = 1500, seed: int = SEED) -> tuple[np.ndarray, dict]:
    """Each player's removal value (n,): its marginal contribution to the full coalition with k = 0..depth other
    players removed as well, averaged over the sets of k others and then over k (a semivalue that weighs the
    coalitions next to the full one, where a removal test looks). k = 0 is leave-one-out.

    Exact when the subsets with at most depth + 1 players removed number at most `exact_limit`; else `samples`
    random sets of k others per player and k >= 1 (leave-one-out stays exact). These do not add up to
    value(all) - value(none): what they leave is no single player's (see HistoryAttributor).
    """
    from itertools import combinations

    if n == 0:
        return np.zeros(0), {"estimator": "none", "evaluations": 0}
    depth = max(0, min(depth, n - 1))
    subsets = sum(math.comb(n, k) for k in range(depth + 2))
    removed_sets: list[tuple[int, ...]] = [()]
    pairs: list[tuple[int, int, int, int]] = []  # (player, k, set without the player, set with it)
    if subsets <= exact_limit:
        how = {"estimator": "exact"}
        index = {(): 0}
        for k in range(1, depth + 2):
            for removed in combinations(range(n), k):
                index[removed] = len(removed_sets)
                removed_sets.append(removed)
        for i in range(n):
            for k in range(depth + 1):
                for others in combinations([j for j in range(n) if j != i], k):
                    pairs.append((i, k, index[others], index[tuple(sorted((*others, i)))]))
    else:
        how = {"estimator": "sampled", "samples": samples, "seed": int(seed)}
        rng = np.random.default_rng(seed)
        index = {(): 0}

        def place(removed: tuple[int, ...]) -> int:
            if removed not in index:
                index[removed] = len(removed_sets)
                removed_sets.append(removed)
            return index[removed]

        for i in range(n):
            others = np.array([j for j in range(n) if j != i])
            for k in range(depth + 1):
                for _ in range(1 if k == 0 else samples):
                    chosen = tuple(sorted(int(j) for j in rng.choice(others, k, replace=False)))
                    pairs.append((i, k, place(chosen), place(tuple(sorted((*chosen, i))))))
    present = np.ones((len(removed_sets), n), dtype=bool)
    for row, removed in enumerate(removed_sets):
        present[row, list(removed)] = False
    v = np.asarray(value(present), dtype=np.float64)
    sums = np.zeros((n, depth + 1))
    counts = np.zeros((n, depth + 1))
    for i, k, without, with_i in pairs:
        sums[i, k] += v[without] - v[with_i]
        counts[i, k] += 1
    return (sums / counts).mean(1), {**how, "depth": depth, "evaluations": len(removed_sets)}


class HistoryAttributor:
    """The history part: each past item's removal value, and what the history does beyond them; one verb, `attribute`.

    `attribute(recommender, context, view, history=None)` returns one "history" Attribution: one entry per past
    item (its removal value in the game with the words present: removal_values), ordered by |value|, and last one
    entry SHARED, the history's group value (the Owen value of the module docstring) less the items' values: what
    no single past item's removal shows (a user state normalised to unit length changes little when one item of
    several goes, and a lot when all go). The details give each past item's id, title, strongest event, number of
    events, age at the moment scored, its measured removal effect (leave-one-out) and, where the model reads it
    as a unit, its position in the view's history.
    """

    method = "removal_values"
    has_convergence_delta = False  # exact up to float rounding: the shared entry closes the sum

    def __init__(self, baseline: str = DEFAULT_BASELINE, *, depth: int = REMOVAL_DEPTH, samples: int = SAMPLES,
                 exact_limit: int = EXACT_LIMIT, seed: int = SEED) -> None:
        if depth < 0 or samples < 1 or exact_limit < 1:
            raise ExplanationError(f"depth {depth} must be 0 or more, samples {samples} and exact_limit "
                                   f"{exact_limit} positive")
        self.baseline, self.depth, self.samples = baseline, depth, samples
        self.exact_limit, self.seed = exact_limit, seed

    def game(self, recommender, context, view, history=None):
        """The removal game of this score (model.removal.HistoryRemoval) and its Owen group game v (see above)."""
        from model.removal import HistoryRemoval

        game = HistoryRemoval(recommender, context, view.item_position, history)
        variants = [(game.item_vector, game.query_vector), baseline_vectors(recommender, view, self.baseline)]

        def value(present: np.ndarray) -> np.ndarray:
            parts = game.evaluate(present, variants)
            return parts["dot"].mean(1) + parts["behaviour"]

        return game, value

    def attribute(self, recommender, context, view, history=None) -> tuple[Attribution, ...]:
        started = time.perf_counter()
        game, value = self.game(recommender, context, view, history)
        n = len(game)
        values, how = removal_values(game.scores, n, depth=self.depth, samples=self.samples,
                                     exact_limit=self.exact_limit, seed=self.seed)
        ends = value(np.array([[False] * n, [True] * n])) if n else np.zeros(2)
        effects = game.removal_drops([[p] for p in range(n)]) if n else np.zeros(0)
        units = {int(position): u for u, position in enumerate(view.history_index)}
        details = []
        for p, player in enumerate(game.players):
            single = len(player.item_ids) == 1
            details.append({
                "item_id": player.item_ids[0] if single else None, "title": player.name,
                "items": list(player.item_ids), "event": player.last_event, "events": player.events,
                "age_days": round(age_days(context.moment_ns, player.last_touch_ns), 6),
                "removal_effect": float(effects[p]),
                "unit": units.get(player.item_index[0]) if single else None,
            })
        order = sorted(range(n), key=lambda p: -abs(values[p]))
        names = [game.players[p].name for p in order]
        entries = [float(values[p]) for p in order]
        details = [details[p] for p in order]
        if n:
            entries.append(float(ends[1] - ends[0]) - math.fsum(values))
            names.append(SHARED)
            details.append({"item_id": None, "title": SHARED, "items": [], "shared": True,
                            "meaning": "what the history does beyond its past items one by one"})
        gap = math.fsum(entries) - float(ends[1] - ends[0])
        parameters = {"run": "history_removal", "values": "removal values: leave-one-out and with up to "
                      f"{self.depth} other past items removed too, averaged", "group": "owen: half with the "
                      "words, half at their baseline", "baseline": self.baseline, "players": n, **how}
        return (Attribution("history", tuple(names), tuple(entries), float(ends[0]), self.method, parameters, gap,
                            time.perf_counter() - started, tuple(details)),)


def baseline_vectors(recommender, view, baseline: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The item vector and the query vector of the words' baseline (IG's start): (D,) each; no ID vector."""
    net, encoder = recommender.net, recommender.net.encoder
    device = device_of(recommender)
    item_embeds = view.item_embeds.to(device)
    with torch.no_grad():
        item_base = text_baseline(view, view.item_input_ids.to(device), item_embeds, encoder.word_embeddings,
                                  baseline, encoder.tokenizer.mask_token_id, view.item_template)
        text = net.item_text_embedding(view.item_mask.to(device), inputs_embeds=item_base)
        item_vector = net.normalised_item_vector(net.item_text_vectors(text))[0].float()
        query_vector = torch.zeros_like(item_vector)
        if view.query_embeds is not None:
            query_embeds = view.query_embeds.to(device)
            query_base = text_baseline(view, view.query_input_ids.to(device), query_embeds, encoder.word_embeddings,
                                       baseline, encoder.tokenizer.mask_token_id)
            query_vector = net.query_vector(encoder(attention_mask=view.query_mask.to(device),
                                                    inputs_embeds=query_base))[0].float()
    return item_vector, query_vector


class HistoryTokenAttributor:
    """Integrated Gradients over the text tokens of chosen history items: the words behind their influence.

    `attribute(recommender, context, view, units=...)` returns one "history_tokens" Attribution (a drill-down,
    not in the total). `units` are positions in the history the view reads (0 = oldest); by default the
    DRILL_DOWN_UNITS most recent ones. explain() passes the units with the largest |history value|.
    """

    method = "integrated_gradients"
    has_convergence_delta = True

    def __init__(self, settings: PathSettings | None = None, *, top: int = DRILL_DOWN_UNITS) -> None:
        self.settings = settings or PathSettings()
        if top < 0:
            raise ExplanationError(f"top {top} must be zero or more")
        self.top = top

    def attribute(self, recommender, context, view, *, units: Sequence[int] | None = None) -> tuple[Attribution, ...]:
        from model.serving import score_view

        used = len(view.history_index)
        chosen = list(range(max(0, used - self.top), used)) if units is None else [int(u) for u in units]
        outside = [u for u in chosen if not 0 <= u < used]
        if outside:
            raise ExplanationError(f"history unit {outside[0]} is outside 0..{used - 1}")
        parameters = {**self.settings.parameters(), "run": "history_tokens", "units": chosen}
        if not chosen:
            return (Attribution("history_tokens", (), (), 0.0, self.method, parameters),)

        net, encoder = recommender.net, recommender.net.encoder
        device = device_of(recommender)
        described = history_units(recommender, context, view)
        # A view of each chosen history item gives its tokens exactly as the model reads item text.
        with TOKENIZING:
            unit_views = [score_view(recommender, context, int(view.history_index[u])) for u in chosen]
        masks = [v.item_mask.to(device) for v in unit_views]
        positions = [torch.tensor([v.item_position], device=device) for v in unit_views]  # (1,) each
        history_vectors = view.history_vectors.to(device)  # (1, Th, D)
        fixed = {"item": view.item_embeds.to(device), "id": view.id_vector.to(device),
                 "query": None if view.query_embeds is None else view.query_embeds.to(device)}

        def forward(*unit_embeds: torch.Tensor) -> torch.Tensor:
            batch = unit_embeds[0].shape[0]
            columns = list(history_vectors.expand(batch, -1, -1).unbind(1))  # Th x (B, D)
            for u, embeds, mask, position in zip(chosen, unit_embeds, masks, positions):
                text = net.item_text_embedding(mask.expand(batch, -1), inputs_embeds=embeds)  # (B, width)
                columns[u] = net.item_vectors(text, position.expand(batch))  # (B, D): the model's item vector
            query = None if fixed["query"] is None else fixed["query"].expand(batch, -1, -1)
            return view.forward(fixed["item"].expand(batch, -1, -1), query, torch.stack(columns, 1),
                                fixed["id"].expand(batch, -1))

        tokenizer = encoder.tokenizer
        inputs = [v.item_embeds.to(device) for v in unit_views]
        baselines = [text_baseline(v, v.item_input_ids.to(device), x, encoder.word_embeddings,
                                   self.settings.baseline, tokenizer.mask_token_id, v.item_template)
                     for v, x in zip(unit_views, inputs)]
        run = integrate(forward, inputs, baselines, self.settings)
        names, values, details = [], [], []
        for u, unit_view, attribution in zip(chosen, unit_views, run.attributions):
            unit = described[u]
            for entry in token_entries(tokenizer, unit_view.item_input_ids, unit_view.item_offsets,
                                       unit_view.item_text, unit_view.special_tokens, unit_view.pad_token_id,
                                       unit_view.item_template):
                names.append(entry["token"])
                values.append(float(attribution[entry["position"]]))
                details.append({**entry, "item_id": unit["item_id"], "title": unit["title"], "unit": u})
        return (Attribution("history_tokens", tuple(names), tuple(values), run.start, self.method, parameters,
                            run.delta, run.seconds, tuple(details)),)
