"""Which past interactions drove a score: the history units the user state read, and the words inside the top ones.

The history part itself comes from the joint Integrated Gradients run (explain.tokens): each unit's item vector,
as the user state reads it, walks from zero to its value together with every other input, so the units' values
add up with the rest of the score. `history_units` names those units; `HistoryTokenAttributor` drills into a
few of them: a second IG run over the text tokens of the chosen history items, through the encoder and the
model's item vector (`RecommenderNet.item_vectors`) into the user state and the score, everything else held at
its value. It re-explains the text share of those units' values, so it is left out of the total.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from data.schema import EVENT_TYPES
from explain.base import Attribution
from explain.errors import ExplanationError
from explain.gradients import TOKENIZING, PathSettings, device_of, integrate, text_baseline, token_entries
from model.sequences import age_days

DRILL_DOWN_UNITS = 3  # history items opened to their words: the ones a person reads first


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
