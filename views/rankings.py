"""Whole-catalog rankings for the Compare and What-if pages: cached, labelled, searched, and how they moved."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from explain.charts import LOWERS, NEUTRAL, RAISES, escape
from model.sequences import EVENT_STRENGTH
from model.whatif import ranking

MOVES = {"up": RAISES, "down": LOWERS, "same": NEUTRAL, "entered": RAISES, "left": LOWERS}  # line colours


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


@st.cache_data(show_spinner=False, max_entries=64)
def cached_history_units(checkpoint_id: str, user_id: str, _recommender) -> pd.DataFrame:
    """`history_units` once per (model, user): the What-if page draws it on every edit."""
    return history_units(_recommender, user_id)


def move_label(row) -> str:
    """▲ 3, ▼ 2, =, or how an item entered or left the top k."""
    if row.status == "entered":
        return "▲ new (was in history)" if pd.isna(row.real_rank) else f"▲ new (was #{int(row.real_rank)})"
    if row.status == "left":
        return "▼ out (in history now)" if pd.isna(row.new_rank) else f"▼ out (now #{int(row.new_rank)})"
    if pd.isna(row.change) or row.change == 0:
        return "="
    return f"▲ {int(row.change)}" if row.change > 0 else f"▼ {int(-row.change)}"


def rank_slope(changes: pd.DataFrame, k: int, sides: tuple[str, str] = ("Real", "What-if")) -> go.Figure:
    """Bump chart: each item's real rank (left) and what-if rank (right); everything beyond k shares one row.

    Items in the what-if top k are named on the right, items that left it on the left (by their real rank).
    `sides` names the two rankings (the Models page: model A and model B).
    """
    outside = k + 1
    figure = go.Figure()
    for row in changes.itertuples():
        ranks = [row.real_rank, row.new_rank]
        y = [outside if pd.isna(r) or r > k else int(r) for r in ranks]
        where = ["in history" if pd.isna(r) else f"#{int(r)}" for r in ranks]
        title = escape(row.title if len(row.title) <= 30 else row.title[:29] + "…")
        text = [title, ""] if row.status == "left" else ["", title]
        figure.add_trace(go.Scatter(
            x=[0, 1], y=y, mode="lines+markers+text", line={"color": MOVES[row.status], "width": 2},
            marker={"size": 9}, text=text, textposition=["middle left", "middle right"], textfont={"size": 11},
            hovertext=[f"{title}<br>{sides[0]}: {where[0]}", f"{title}<br>{sides[1]}: {where[1]} ({row.status})"],
            hoverinfo="text"))
    figure.update_yaxes(autorange="reversed", tickvals=list(range(1, outside + 1)), automargin=True,
                        ticktext=[f"#{r}" for r in range(1, outside)] + [f"below #{k}"], gridcolor="#eeeeee")
    left_labels = bool((changes["status"] == "left").any())
    figure.update_xaxes(range=[-1.3 if left_labels else -0.1, 2.3], tickvals=[0, 1], ticktext=list(sides),
                        showgrid=False, zeroline=False)
    figure.update_layout(title={"text": "How the top ranks moved", "x": 0, "font": {"size": 15}},
                         height=80 + 26 * outside, margin={"l": 10, "r": 10, "t": 40, "b": 10}, plot_bgcolor="white",
                         font={"family": "DejaVu Sans, Arial, sans-serif", "size": 12}, showlegend=False)
    return figure
