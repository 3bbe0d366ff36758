"""Recommend page: choose a user or type a query, see the ranked products, open the explanation of one."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from views.explanation_panel import explanation_panel
from views.loaders import recommender_or_error
from views.pickers import audience_picker, top_k_slider
from views.priority import drawing_list
from views.profile import profile_card
from views.state import first_visit, forget
from views.text import md_escape

PART_REASONS = {
    "text": "its text matches {what}",
    "collaborative": "shoppers with a history like {whose} picked it",
    "behaviour": "{whose} recent behaviour points to it",
}
# A model without the ID memory has only the item bias there: how often shoppers picked the item in training.
BIAS_REASON = "shoppers often picked it"


def _reasons(frame: pd.DataFrame) -> list[str]:
    """One line per item from the strongest positive part of its score (the panel has the details)."""
    parts = [c for c in frame.columns if c.startswith("part_")]
    what = "the query" if query else "this user's history"
    whose = "this user's" if user_id else "the"
    reasons = PART_REASONS if recommender.config.use_id_embedding else {**PART_REASONS, "collaborative": BIAS_REASON}
    lines = []
    for _, row in frame.iterrows():
        values = {c.removeprefix("part_"): float(row[c]) for c in parts}
        ranked_parts = sorted(values.items(), key=lambda kv: kv[1], reverse=True)
        name, value = ranked_parts[0]
        line = reasons[name].format(what=what, whose=whose).capitalize() + f" (+{value:.2f})"
        if len(ranked_parts) > 1 and ranked_parts[1][1] > 0.25 * value > 0:
            second = ranked_parts[1][0]
            line += "; " + reasons[second].format(what=what, whose=whose) + f" (+{ranked_parts[1][1]:.2f})"
        lines.append(line)
    return lines


st.header("Recommend")
recommender = recommender_or_error()
if recommender is None:
    st.stop()

params = st.query_params
users = recommender.user_index


@st.cache_data(show_spinner="Ranking the catalog…", max_entries=256)
def ranked(checkpoint_id: str, user_id, query, k: int, _recommender) -> tuple[pd.DataFrame, tuple, str]:
    result = _recommender.recommend(user_id=user_id, query=query, k=k)
    frame = pd.DataFrame([{
        "rank": r.rank, "item_id": r.item_id, "title": r.title, "category": r.category, "brand": r.brand,
        "price": r.price, "score": r.score, **{f"part_{name}": value for name, value in r.parts.items()},
    } for r in result])
    return frame, tuple(result.notes), result.mode


def ranked_list(user_id, query, k: int) -> pd.DataFrame:
    """The ranked list's notes, heading and grid; returns the list."""
    try:
        frame, notes, _ = ranked(recommender.checkpoint_id, user_id, query, k, recommender)
    except WhyRecError as exc:
        st.error(str(exc))
        st.stop()
    for note in notes:
        st.info(note)
    frame["reason"] = _reasons(frame)
    st.subheader(f"Top {len(frame)}" + (f" for “{md_escape(query)}”" if query else ""))
    low, high = float(frame["score"].min()), float(frame["score"].max())
    st.dataframe(
        frame[["rank", "title", "category", "brand", "price", "score", "reason"]],
        hide_index=True, width="stretch",
        column_config={
            "rank": st.column_config.NumberColumn("#", width=40),
            "title": st.column_config.TextColumn("Item", width=300),
            "category": st.column_config.TextColumn("Category", width=110),
            "brand": st.column_config.TextColumn("Brand", width=110),
            "price": st.column_config.NumberColumn("Price", format="%.2f", width=70),
            "score": st.column_config.ProgressColumn("Score", min_value=min(low, 0.0) if low < 0 else low - 1,
                                                     max_value=high, format="%.2f", width=100),
            "reason": st.column_config.TextColumn("Why, in one line", width=420),
        },
    )
    return frame


# The choice and the list first, with other sessions' explanations waiting (views.priority); the profile card,
# drawn into its column above, and the explanation panel after.
with drawing_list():
    left, right = st.columns([1, 1], gap="large")
    with left:
        # The URL carries the view, so a link reproduces what you see.
        user_id, query = audience_picker("rec", users, heading="Recommend for",
                                         from_link=first_visit("recommend_initialised"),
                                         query_label="What are you looking for?",
                                         empty_query="Type a query to see matching products.")
        k = top_k_slider("How many items", "rec_k", len(recommender.item_ids), low=5, high=50, default=10)
    wanted = {"user": user_id, "query": query}
    if any(params.get(key) != (value or None) for key, value in wanted.items()) and "item" in params:
        del params["item"]  # another list: the link's item was one of the last list's, not an item to warn about
    for key, value in wanted.items():
        if value:
            params[key] = value
        elif key in params:
            del params[key]
    with st.container():
        frame = ranked_list(user_id, query, k)
if user_id is not None:
    with right, st.container(border=True):
        profile_card(recommender, user_id)


def open_page(page: str, initialised: str, saved: str | None, **link) -> None:
    """Open another page on this list: it reads the link afresh, not what it showed on an earlier visit."""
    st.session_state.pop(initialised, None)
    if saved:
        forget(saved)
    st.switch_page(page, query_params={key: str(value) for key, value in link.items() if value})


same = {"user": user_id, "query": query}
compare_link, report_link, _ = st.columns([1, 1, 2])
if len(frame) >= 2 and compare_link.button("Compare #1 and #2", icon=":material/compare_arrows:", key="rec_to_compare",
                                           help="Why does the first item rank above the second?"):
    open_page("views/compare.py", "cmp_initialised", "cmp_saved", **same, a=frame["item_id"].iloc[0],
              b=frame["item_id"].iloc[1])
if report_link.button("Export this list as a report", icon=":material/description:", key="rec_to_report",
                      help="HTML, PDF or JSON, with every explanation"):
    open_page("views/report.py", "report_initialised", None, **same, k=len(frame))

with st.container(border=True):
    explanation_panel(recommender, frame, user_id, query)
