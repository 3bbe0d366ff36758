"""Whole-catalog rankings for the Compare and What-if pages, cached per checkpoint and input."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from model.sequences import EVENT_STRENGTH
from model.whatif import ranking


@st.cache_data(show_spinner="Ranking the catalog…", max_entries=64)
def cached_ranking(checkpoint_id: str, user_id, query, history: pd.DataFrame | None, overrides: tuple,
                   _recommender) -> pd.DataFrame:
    """Every rankable item, best first (model.whatif.ranking); `overrides` is ((feature, value), ...)."""
    return ranking(_recommender, user_id, query, history=history, feature_overrides=dict(overrides) or None)


def item_label(rank, title: str) -> str:
    """How an item is named in a chooser: its rank (None: in the history, so not ranked) and its title."""
    where = "in history" if rank is None else f"#{int(rank)}"
    return f"{where}  {title}"


def catalog_labels(recommender, ranked: pd.DataFrame) -> dict[str, str]:
    """item id -> label for every catalog item: ranked ones first in rank order, then the rest (the history)."""
    ranks = dict(zip(ranked["item_id"], ranked["rank"]))
    titles = dict(zip(recommender.items["item_id"].astype(str), recommender.items["title"].astype(str)))
    order = [*ranked["item_id"], *(i for i in titles if i not in ranks)]
    return {item_id: item_label(ranks.get(item_id), titles[item_id]) for item_id in order}


def search_catalog(recommender, text: str, limit: int = 50) -> list[str]:
    """Item ids whose title, brand or category hold every word typed (case-insensitive), catalog order."""
    words = [w for w in str(text).lower().split() if w]
    if not words:
        return []
    items = recommender.items
    haystack = (items["title"].astype(str) + " " + items["brand"].fillna("").astype(str) + " "
                + items["category"].fillna("").astype(str)).str.lower()
    hits = pd.Series(True, index=items.index)
    for word in words:
        hits &= haystack.str.contains(word, regex=False)
    return [str(i) for i in items.loc[hits, "item_id"].head(limit)]


def event_label(event: str) -> str:
    return {"view": "viewed", "cart": "put in the cart", "purchase": "bought", "rating": "rated"}.get(event, event)


def history_units(recommender, user_id: str) -> pd.DataFrame:
    """The user's history one row per distinct item, as the model reads it, most recent first:
    item_id, title, event (the strongest, model.sequences.EVENT_STRENGTH), events (how many), last (when)."""
    events = recommender.dataset.user_events(user_id)
    if events.empty:
        return pd.DataFrame(columns=["item_id", "title", "event", "events", "last"])
    by_strength = {strength: event for event, strength in EVENT_STRENGTH.items()}
    frame = events.assign(item_id=events["item_id"].astype(str),
                          strength=events["event"].astype(str).map(EVENT_STRENGTH))
    grouped = frame.groupby("item_id", sort=False).agg(strength=("strength", "max"), events=("event", "size"),
                                                       last=("timestamp", "max"))
    titles = recommender.items.set_index(recommender.items["item_id"].astype(str))["title"]
    units = pd.DataFrame({"item_id": grouped.index, "title": titles.reindex(grouped.index).fillna("?").to_numpy(),
                          "event": grouped["strength"].map(by_strength).to_numpy(),
                          "events": grouped["events"].to_numpy(), "last": grouped["last"].to_numpy()})
    return units.sort_values("last", ascending=False, kind="stable").reset_index(drop=True)

