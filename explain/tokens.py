"""Token attributions by Integrated Gradients, run jointly over every input the score's dot product reads.

One run walks all inputs of `ScoreView.forward` at once from their baselines: the item's token embeddings and
the query's ([PAD] with [CLS]/[SEP] kept, or another of gradients.BASELINES), the history units' item vectors
(from zero: no history) and the item's ID vector (from zero: no collaborative memory). By completeness the
attributions over all of them add up to forward(input) - forward(baseline), up to the reported delta, so the
four parts below add up with the behaviour part (SHAP) to the whole score:

    item_tokens   one value per item token          query_tokens   one value per query token
    history       one value per history unit         collaborative  the ID vector's value, and the item bias

The item bias depends on no input, so it has no attribution to walk: it is listed in the collaborative part
as an exact term of its own (it is the collaborative part's bias in the model's own decomposition), not
hidden in the base value.
"""

from __future__ import annotations

import numpy as np
import torch

from explain.base import Attribution
from explain.gradients import PathSettings, device_of, integrate, text_baseline, token_entries
from explain.history import history_units

JOINT_KINDS = ("item_tokens", "query_tokens", "history", "collaborative")  # the parts of one joint run


def joint_change(parts) -> float:
    """f(input) - f(baseline) of the joint run, from its parts (a mapping kind -> Attribution).

    The attributions sum to it plus the run's delta; the collaborative part's second term, the item bias,
    is exact and no attribution, so only its first (the ID vector) counts.
    """
    attributed = sum(parts[kind].total for kind in ("item_tokens", "query_tokens", "history"))
    return attributed + parts["collaborative"].values[0] - parts["item_tokens"].completeness_gap


class TokenAttributor:
    """Integrated Gradients over a score view's inputs, jointly; one verb, `attribute`.

    `attribute(recommender, context, view)` returns four Attributions, in this order: item_tokens,
    query_tokens (empty without a query), history (empty without a history; ordered by |value|) and
    collaborative. They share one run: one base value (forward at the baseline) and one convergence delta.
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
        if view.history_vectors is not None:
            history_vectors = view.history_vectors.to(device)
            slots["history"] = (history_vectors, torch.zeros_like(history_vectors))
        id_vector = view.id_vector.to(device)
        slots["id"] = (id_vector, torch.zeros_like(id_vector))
        names = list(slots)

        def forward(*inputs: torch.Tensor) -> torch.Tensor:
            given = dict(zip(names, inputs))
            return view.forward(given["item"], given.get("query"), given.get("history"), given["id"])

        run = integrate(forward, [slots[n][0] for n in names], [slots[n][1] for n in names], self.settings)
        attributions = dict(zip(names, run.attributions))
        parameters = {**self.settings.parameters(), "run": "joint", "joint_inputs": list(JOINT_KINDS)}

        def part(kind_name, names_, values, details) -> Attribution:
            return Attribution(kind_name, tuple(names_), tuple(values), run.start, self.method, parameters,
                               run.delta, run.seconds, tuple(details))

        item_entries = token_entries(tokenizer, view.item_input_ids, view.item_offsets, view.item_text,
                                     view.special_tokens, view.pad_token_id, view.item_template)
        query_entries = [] if view.query_input_ids is None else token_entries(
            tokenizer, view.query_input_ids, view.query_offsets, view.query_text, view.special_tokens,
            view.pad_token_id)
        units = history_units(recommender, context, view)
        unit_values = attributions.get("history", np.zeros(0))
        order = sorted(range(len(units)), key=lambda t: -abs(unit_values[t]))
        return (
            part("item_tokens", [e["token"] for e in item_entries],
                 [attributions["item"][e["position"]] for e in item_entries], item_entries),
            part("query_tokens", [e["token"] for e in query_entries],
                 [attributions["query"][e["position"]] for e in query_entries], query_entries),
            part("history", [units[t]["title"] or units[t]["item_id"] for t in order],
                 [unit_values[t] for t in order], [units[t] for t in order]),
            part("collaborative", ["item ID vector", "item bias"], [attributions["id"][0], view.bias],
                 [{"source": "integrated_gradients", "meaning": "the item's learned ID vector against the context"},
                  {"source": "exact", "meaning": "the item's learned bias; it depends on no input"}]),
        )
