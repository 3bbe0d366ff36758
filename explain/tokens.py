"""Token attributions by Integrated Gradients over the inputs the score's dot product reads besides the history.

The runs walk the item's token embeddings and the query's from their baselines ([PAD] with [CLS]/[SEP] kept, or
another of gradients.BASELINES) and the item's ID vector from zero (no collaborative memory), together. The
history is not walked: its part is the removal game of explain.history. The two share the dot product
⟨context(history, query), item(words, ID)⟩ as the two players of a Shapley game would (an Owen value: the
history's items are players inside one of them): the words' group gets half of what they add with the history
kept and half of what they add with the history removed, so

    history kept:     forward(x; history) - forward(x'; history)      weight 1/2
    history removed:  forward(x; none) - forward(x'; none)            weight 1/2

and the history's group gets the other halves (explain.history). IG is linear in the function it explains, so
one run over the mix 1/2 forward(.; history) + 1/2 forward(.; none) gives both halves at once, through one pass
of the encoder; without a history there is nothing to mix, and the run explains forward(.; none), weight 1.
By completeness the parts below add up to the weighted changes, up to the reported delta:

    item_tokens   one value per item token          query_tokens   one value per query token
    collaborative the ID vector's value, and the item bias

The item bias depends on no input, so it has no attribution to walk: it is listed in the collaborative part
as an exact term of its own (it is the collaborative part's bias in the model's own decomposition), not
hidden in the base value. The base value of these parts is forward(x'; no history): the explanation's start.
"""

from __future__ import annotations

import torch

from explain.base import Attribution
from explain.gradients import PathSettings, device_of, integrate, text_baseline, token_entries

JOINT_KINDS = ("item_tokens", "query_tokens", "collaborative")  # the parts the token runs give
HISTORY_WEIGHT = 0.5  # each run's share when the history is a player beside the words (see the module docstring)


def joint_change(parts) -> float:
    """What the token runs explain, weighted: the sum of their attributions less their delta.

    The collaborative part's second term, the item bias, is exact and no attribution, so only its first (the ID
    vector) counts.
    """
    attributed = sum(parts[kind].total for kind in ("item_tokens", "query_tokens"))
    return attributed + parts["collaborative"].values[0] - parts["item_tokens"].completeness_gap


class TokenAttributor:
    """Integrated Gradients over a score view's words and ID vector, with the history kept and removed.

    `attribute(recommender, context, view)` returns three Attributions, in this order: item_tokens, query_tokens
    (empty without a query) and collaborative. They share one base value (forward at the baseline without
    history) and one convergence delta (the runs' deltas, weighted).
    """

    method = "integrated_gradients"
    has_convergence_delta = True

    def __init__(self, settings: PathSettings | None = None) -> None:
        self.settings = settings or PathSettings()

    def attribute(self, recommender, context, view) -> tuple[Attribution, ...]:
        encoder = recommender.net.encoder
        tokenizer = encoder.tokenizer
        device = device_of(recommender)
        kind, mask_id = self.settings.baseline, tokenizer.mask_token_id

        item_embeds = view.item_embeds.to(device)
        slots = {"item": (item_embeds, text_baseline(view, view.item_input_ids.to(device), item_embeds,
                                                     encoder.word_embeddings, kind, mask_id, view.item_template))}
        if view.query_embeds is not None:
            query_embeds = view.query_embeds.to(device)
            slots["query"] = (query_embeds, text_baseline(view, view.query_input_ids.to(device), query_embeds,
                                                          encoder.word_embeddings, kind, mask_id))
        id_vector = view.id_vector.to(device)
        slots["id"] = (id_vector, torch.zeros_like(id_vector))
        names = list(slots)
        inputs, baselines = [slots[n][0] for n in names], [slots[n][1] for n in names]

        history = None if view.history_vectors is None else view.history_vectors.to(device)
        # Both runs walk the same path through the encoder and differ only in the context they meet at its end, so
        # IG of their weighted mix is the weighted mix of their IGs: one run, one pass through the encoder.
        kept = HISTORY_WEIGHT if history is not None else 1.0

        def forward(*given_inputs: torch.Tensor) -> torch.Tensor:
            given = dict(zip(names, given_inputs))
            batch = given_inputs[0].shape[0]
            if history is None:
                return view.forward(given["item"], given.get("query"), None, given["id"])
            return view.forward(given["item"], given.get("query"), history.expand(batch, -1, -1), given["id"],
                                kept=kept)

        run = integrate(forward, inputs, baselines, self.settings)
        with torch.no_grad():  # the explanation's start: no history, the words and the ID at their baselines
            base = dict(zip(names, baselines))
            start = float(view.forward(base["item"], base.get("query"), None, base["id"])[0])
        attributions = dict(zip(names, run.attributions))
        delta, seconds = run.delta, run.seconds
        runs = ["history kept", "history removed"] if history is not None else ["no history"]
        weights = [kept, 1.0 - kept] if history is not None else [1.0]
        parameters = {**self.settings.parameters(), "run": "words", "joint_inputs": list(JOINT_KINDS),
                      "runs": runs, "weights": weights}

        def part(kind_name, names_, values, details) -> Attribution:
            return Attribution(kind_name, tuple(names_), tuple(values), start, self.method, parameters, delta,
                               seconds, tuple(details))

        item_entries = token_entries(tokenizer, view.item_input_ids, view.item_offsets, view.item_text,
                                     view.special_tokens, view.pad_token_id, view.item_template)
        query_entries = [] if view.query_input_ids is None else token_entries(
            tokenizer, view.query_input_ids, view.query_offsets, view.query_text, view.special_tokens,
            view.pad_token_id)
        return (
            part("item_tokens", [e["token"] for e in item_entries],
                 [attributions["item"][e["position"]] for e in item_entries], item_entries),
            part("query_tokens", [e["token"] for e in query_entries],
                 [attributions["query"][e["position"]] for e in query_entries], query_entries),
            part("collaborative", ["item ID vector", "item bias"], [attributions["id"][0], view.bias],
                 [{"source": "integrated_gradients", "meaning": "the item's learned ID vector against the context"},
                  {"source": "exact", "meaning": "the item's learned bias; it depends on no input"}]),
        )
