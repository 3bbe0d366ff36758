"""Past interactions removed: one item's score as if the user had never touched some of their past items.

Removing a past item takes away every event on it; everything that reads the history is then rebuilt from what
is left, exactly as the What-if page does with an edited history: the user state (units, event codes and time
gaps) and the history-derived behaviour features (affinities, days since the category, earlier views and carts,
co-occurrence). Every other user's events stay, so the item's own statistics (popularity, conversion, age) do not
move. `HistoryRemoval` scores many such subsets in one batch: the explainers' removal game
(explain.history) and the faithfulness test of the history (explain.faithfulness) both read it.

The players are the distinct past items in first-touch order. Past `max_players` of them, the oldest are one
player ("earlier items"): the model's user state reads only the last `max_history` units, so they act on the
score through the behaviour features alone, and a game over hundreds of players would cost more than it tells.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from data.schema import EVENT_TYPES
from model.errors import ModelError
from model.sequences import EVENT_STRENGTH, SubsetHistories, history_from_trail

EARLIER = "earlier items"  # the name of the grouped player of the oldest past items


@dataclass(frozen=True)
class Player:
    """One removable part of the history: a past item, or the group of the oldest ones."""

    name: str  # the item's title, or EARLIER
    item_ids: tuple[str, ...]  # the catalog ids it covers (one, except for the group)
    item_index: tuple[int, ...]  # their catalog positions
    events: int  # how many of the user's events it covers
    last_event: str  # the strongest event on it ("view", "cart", ...), or "" for the group
    first_touch_ns: int
    last_touch_ns: int


class HistoryRemoval:
    """score(S): the score of one item for one context with only the past items in S kept, for many S at once."""

    def __init__(self, recommender, context, item_position: int, history: pd.DataFrame | None = None,
                 max_players: int | None = None) -> None:
        self.recommender, self.context, self.history = recommender, context, history
        self.item_position = int(item_position)
        self.moment = pd.Timestamp(context.moment_ns, tz="UTC")
        net = recommender.net
        if context.user_id is None and history is None:
            items = times = kinds = np.zeros(0, dtype=np.int64)
        else:
            items, times, kinds = recommender.features.user_trail(context.user_id, self.moment, history)
        self.items, self.times, self.kinds = items, times, kinds
        max_players = net.config.max_history if max_players is None else int(max_players)
        if max_players < 1:
            raise ModelError(f"max_players {max_players} must be at least 1")
        distinct, first = np.unique(items, return_index=True)
        distinct = distinct[np.argsort(first, kind="stable")]  # first-touch order, oldest first
        grouped = max(0, len(distinct) - max_players + 1) if len(distinct) > max_players else 0
        groups = ([distinct[:grouped]] if grouped else []) + [distinct[j:j + 1] for j in range(grouped, len(distinct))]
        self.event_player = np.zeros(len(items), dtype=np.int64)
        ids = recommender.item_ids
        strength = {EVENT_STRENGTH[kind]: kind for kind in EVENT_TYPES}
        players = []
        for p, group in enumerate(groups):
            on = np.isin(items, group)
            self.event_player[on] = p
            kinds_on = [EVENT_TYPES[int(k)] for k in kinds[on]]
            single = len(group) == 1
            players.append(Player(
                name=str(recommender.items.iloc[int(group[0])].title) if single else EARLIER,
                item_ids=tuple(str(ids[int(i)]) for i in group), item_index=tuple(int(i) for i in group),
                events=int(on.sum()),
                last_event=strength[max(EVENT_STRENGTH[k] for k in kinds_on)] if single else "",
                first_touch_ns=int(times[on].min()), last_touch_ns=int(times[on].max())))
        self.players: tuple[Player, ...] = tuple(players)
        full = history_from_trail(context.user_id or "what-if", items, times, kinds)
        self._subsets = SubsetHistories(full, items, times, kinds)
        unit_player = {int(i): p for p, player in enumerate(players) for i in player.item_index}
        self.unit_player = np.array([unit_player[int(i)] for i in full.item_index], dtype=np.int64)
        device = recommender.device
        self.item_vector = (recommender.item_text_vectors[self.item_position]
                            + recommender.item_id_vectors[self.item_position])  # (D,) as score_parts reads it
        self.bias = float(recommender.item_bias_values[self.item_position])
        self.query_vector = torch.zeros(net.config.dim, device=device)
        if context.query_vector is not None:  # as the context encoded it (int8 or float: see Recommender.context)
            self.query_vector = context.query_vector

    def __len__(self) -> int:
        return len(self.players)

    def keep_masks(self, present: np.ndarray) -> np.ndarray:
        """(M, P) bool players kept -> (M, n_events) bool events kept."""
        present = np.asarray(present, dtype=bool)
        if present.ndim != 2 or present.shape[1] != len(self.players):
            raise ModelError(f"present masks of shape {present.shape}; the history has {len(self.players)} players")
        return present[:, self.event_player]

    def evaluate(self, present: np.ndarray, variants: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> dict:
        """The parts of the score that read the history, for each subset of players kept.

        present: (M, P) bool. variants: (item vector (D,), query vector (D,)) pairs the context is scored against
        (default: the item's and the query's own, as served). Returns "dot": (M, V) float64, ⟨context, item⟩
        for each variant; "behaviour": (M,) float64, the behaviour head on the rebuilt features. The served
        score of subset m is dot[m, 0] + bias + behaviour[m] with the default variant.
        """
        recommender, net = self.recommender, self.recommender.net
        keep = self.keep_masks(present)
        variants = variants or [(self.item_vector, self.query_vector)]
        features = self._features(keep)
        with torch.no_grad():
            states = torch.zeros(len(keep), net.config.dim, device=recommender.device)
            kept_units = np.asarray(present, dtype=bool)[:, self.unit_player]
            if kept_units.any():
                tensors = self._subsets.tensors(kept_units, self.context.moment_ns, net.config.max_history)
                has = (tensors["lengths"] > 0).to(recommender.device)
                tensors = {name: t.to(recommender.device) for name, t in tensors.items()}
                states = torch.where(has[:, None], recommender._user_state(tensors), states)  # (M, D)
            dots = [(net.scaled_context(states + query) @ item).double() for item, query in variants]  # V x (M,)
            behaviour = net.behaviour_score(torch.as_tensor(features, dtype=torch.float32, device=recommender.device))
        return {"dot": torch.stack(dots, 1).cpu().numpy(), "behaviour": behaviour.double().cpu().numpy()}

    def scores(self, present: np.ndarray) -> np.ndarray:
        """(M,) the served score of the item with only the kept players' events."""
        parts = self.evaluate(present)
        return parts["dot"][:, 0] + self.bias + parts["behaviour"]

    def removal_drops(self, removed: list[list[int]]) -> np.ndarray:
        """score - score(without the players in each list): (len(removed),), in one batch."""
        present = np.ones((len(removed) + 1, len(self.players)), dtype=bool)
        for row, players in enumerate(removed, start=1):
            present[row, list(players)] = False
        scores = self.scores(present)
        return scores[0] - scores[1:]

    def _features(self, keep: np.ndarray) -> np.ndarray:
        """(M, F) the item's behaviour features with the kept events only, the context's overrides applied."""
        recommender, context = self.recommender, self.context
        features = recommender.features.user_features_kept(
            context.user_id, self.moment, np.array([self.item_position]), keep, history=self.history)[:, 0, :]
        for name, value in context.feature_overrides:
            features[:, recommender.feature_names.index(name)] = value
        return features
