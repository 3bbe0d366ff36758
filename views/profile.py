"""The user profile card: recent history with event types and ages, tastes, price band, activity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from data.schema import EVENT_TYPES
from explain.charts import age_label
from model.sequences import age_days
from views.text import md_escape


def user_profile(recommender, user_id: str) -> dict:
    """What the card shows, as data (also used by tests and reports).

    Ages and "the last 30 days" count back from the moment the user's list is scored (the serving moment), the
    clock the explanation's ages read too, not from the user's own last event.
    """
    events = recommender.dataset.user_events(user_id)
    items = recommender.items.set_index("item_id")
    joined = events.join(items[["title", "category", "brand", "price"]], on="item_id")
    moment = recommender.serving_moment(user_id)
    history = recommender.histories.get(user_id)
    recent = []
    if history is not None and len(history):
        for position, code, touched in list(zip(history.item_index, history.event_codes, history.last_touch))[::-1][:8]:
            row = recommender.items.iloc[int(position)]
            recent.append({"title": row.title, "event": EVENT_TYPES[int(code) - 1],
                           "age_days": age_days(moment, int(touched))})
    prices = joined["price"].dropna()
    last_month = events[events["timestamp"] > pd.Timestamp(moment, tz="UTC") - pd.Timedelta(days=30)]
    return {
        "user_id": user_id,
        "events": len(events),
        "items": int(events["item_id"].nunique()),
        "events_last_30_days": len(last_month),
        "first_seen": events["timestamp"].min() if len(events) else None,
        "last_seen": events["timestamp"].max() if len(events) else None,
        "moment": pd.Timestamp(moment, tz="UTC"),
        "top_categories": joined["category"].value_counts().head(3).to_dict(),
        "top_brands": joined["brand"].value_counts().head(3).to_dict(),
        "price_band": (float(np.quantile(prices, 0.1)), float(np.quantile(prices, 0.9))) if len(prices) else None,
        "event_counts": {str(k): int(v) for k, v in events["event"].value_counts().items() if v},
        "recent": recent,
    }


@st.cache_data(show_spinner=False, max_entries=256)
def cached_profile(checkpoint_id: str, user_id: str, _recommender) -> dict:
    """The card's data once per (model, user): it reads only the data, and every rerun of the page draws it."""
    return user_profile(_recommender, user_id)


def profile_card(recommender, user_id: str) -> None:
    profile = cached_profile(recommender.checkpoint_id, user_id, recommender)
    st.markdown(f"**User {md_escape(user_id)}**")
    if not profile["events"]:
        st.caption("No history yet: recommendations fall back to popularity.")
        return
    a, b, c = st.columns(3)
    a.metric("Events", profile["events"])
    b.metric("Items", profile["items"])
    c.metric("Last 30 days", profile["events_last_30_days"])
    tastes = []
    for label, counts in (("Categories", profile["top_categories"]), ("Brands", profile["top_brands"])):
        if counts:
            tastes.append(f"**{label}:** " + ", ".join(f"{md_escape(k)} ({v})" for k, v in counts.items()))
    if profile["price_band"]:
        low, high = profile["price_band"]
        tastes.append(f"**Price band:** {low:,.2f} – {high:,.2f}")
    st.markdown("  \n".join(tastes))
    st.caption(f"Recent history, as of {profile['moment']:%Y-%m-%d %H:%M} UTC (the moment scored)")
    recent = pd.DataFrame(profile["recent"])
    if not recent.empty:
        recent["age"] = recent.pop("age_days").map(age_label)
        st.dataframe(recent, hide_index=True, width="stretch",
                     column_config={"title": st.column_config.TextColumn("Item", width=280),
                                    "event": st.column_config.TextColumn("Event", width=70),
                                    "age": st.column_config.TextColumn("When", width=80)})
