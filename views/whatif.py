"""What-if page: edit a real user's history, behaviour features and query; see how the ranking moves, and why.

The edits live in the link (views.whatif_link), so a what-if can be bookmarked and sent.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from data.schema import EVENT_TYPES
from explain.cache import Cached
from explain.charts import age_label
from model.sequences import age_days
from model.whatif import edited_history, feature_ranges, rank_changes
from views.explanation_panel import STEP_CHOICES, explanation_body
from views.loaders import explanation_cache, recommender_or_error
from views.pickers import top_k_slider, user_picker
from views.rankings import (
    cached_history_units,
    cached_ranking,
    event_label,
    move_label,
    rank_slope,
    search_catalog,
)
from views.state import forget, remember, restore
from views.text import md_escape
from views.whatif_link import K_RANGE, read_link, write_link

OVERRIDE_HELP = """A slider sets its feature to **one value for every item in the catalog**, as if, say, this user
had the same category affinity for every category, or every item were as popular as the slider says. Features
you do not pick keep each item's real value. Sliders stay within the range the feature takes in this data
(the catalog, for a sample of users), so the model is never asked about values it has not seen."""
WIDGETS = ("wi_user", "wi_k", "wi_remove", "wi_search", "wi_add_event", "wi_features", "wi_query")
MEAN_SAMPLE_ITEMS = 10_000  # a slider starts at the user's mean over this many items at most (a seeded sample)


def reset_edits() -> None:
    """Back to the real user: no history edits, no features set by hand, no query."""
    st.session_state.wi_remove = []
    st.session_state.wi_added = []
    st.session_state.wi_features = []
    st.session_state.wi_query = ""
    st.session_state.wi_search = ""
    for key in [k for k in st.session_state if str(k).startswith("wi_value_")]:
        del st.session_state[key]
    forget("wi_saved")


def add_item() -> None:
    item_id, event = st.session_state.get("wi_add_item"), st.session_state.get("wi_add_event", "view")
    if item_id:
        st.session_state.wi_added = [*st.session_state.wi_added, {"item_id": item_id, "event": event}]


def cached_whatif_explanation(recommender, item_id: str, user_id, query, history: pd.DataFrame | None,
                              overrides: tuple, n_steps: int) -> Cached:
    """The explanation of one item under the edits: the explanation cache keys by the edits' content."""
    return explanation_cache().explain(recommender, item_id, user_id=user_id, query=query, n_steps=n_steps,
                                       history=history, feature_overrides=dict(overrides) or None, drill_down=0)


@st.fragment
def whatif_explanation(recommender, top: pd.DataFrame, user_id, query, history, overrides: tuple) -> None:
    """Re-explain one item of the what-if ranking under the edits; reruns alone."""
    labels = {row.item_id: f"#{row.rank}  {row.title}" for row in top.itertuples()}
    options = list(labels)
    restore("wi_explain_saved")
    st.session_state.setdefault("wi_steps", 32)
    if st.session_state.get("wi_explain") not in options:
        st.session_state.wi_explain = options[0]
    pick, steps = st.columns([3, 1])
    item_id = pick.selectbox("Explain this item under the edits", options, format_func=labels.get, key="wi_explain")
    n_steps = steps.select_slider("IG steps", STEP_CHOICES, key="wi_steps",
                                  help="Integrated Gradients path steps: more is more precise and slower")
    remember("wi_explain_saved", ("wi_explain", "wi_steps"))
    try:
        with st.spinner("Explaining…"):
            found = cached_whatif_explanation(recommender, item_id, user_id, query, history, overrides, n_steps)
    except WhyRecError as exc:
        st.error(md_escape(exc))
        return
    st.caption("The explanation reads the edited history, the query and the features set by hand, so its parts "
               "add up to the what-if score.")
    explanation_body(recommender, found, n_steps, heading="Why this score under the edits")


st.header("What-if")
st.caption("Start from a real user, change what the model knows about them, and watch the ranking move.")
recommender = recommender_or_error()
if recommender is None:
    st.stop()
users = recommender.user_index
if not len(users):
    st.error("This data has no users: a what-if starts from a real user.")
    st.stop()

link_problems: list[str] = []
if "wi_added" not in st.session_state:  # the page's first visit this session: start from the link
    url_user = st.query_params.get("user")
    st.session_state.wi_user = url_user if url_user in users else users.first()
    reset_edits()
    if url_user is not None and url_user not in users:
        link_problems.append(f"user={url_user}: no such user in this data")
    linked = read_link(st.query_params, recommender.dataset.user_events(st.session_state.wi_user)["item_id"],
                       recommender.item_ids, feature_ranges(recommender))
    st.session_state.update(wi_remove=linked.remove, wi_added=linked.add, wi_features=list(linked.values),
                            wi_query=linked.query, **{f"wi_value_{n}": v for n, v in linked.values.items()})
    if linked.k is not None:
        st.session_state.wi_k = linked.k
    # An item the link came to check (the explanation panel's "What-if without it"): its score is shown first.
    focus = st.query_params.get("item")
    st.session_state.wi_focus = focus if focus in set(map(str, recommender.item_ids)) else None
    link_problems += linked.problems
else:
    restore("wi_saved")

top_row = st.columns([3, 1, 2])
with top_row[0]:
    user_id = user_picker("wi_user", users, label="Start from user", on_change=reset_edits,
                          help="Choosing another user starts again from that user's real data")
with top_row[1]:
    k = top_k_slider("Top k", "wi_k", len(recommender.item_ids), low=K_RANGE[0], high=K_RANGE[1], default=10)
with top_row[2]:
    st.write("")
    st.button("Reset to the real user", key="wi_reset", on_click=reset_edits, icon=":material/restart_alt:",
              help="Drop every edit: the real history, no features set by hand, no query")
st.query_params["user"] = user_id
st.query_params.pop("item", None)
if link_problems:
    st.error("Parts of this link were left out: " + "; ".join(md_escape(p) for p in link_problems) + ".")

units = cached_history_units(recommender.checkpoint_id, user_id, recommender)
titles = dict(zip(recommender.items["item_id"].astype(str), recommender.items["title"].astype(str)))
moment = recommender.serving_moment(user_id)
history_column, features_column = st.columns(2, gap="large")

with history_column, st.container(border=True):
    st.markdown("**History**")
    unit_labels = {row.item_id: f"{row.title} · {event_label(row.event)}, "
                                f"{age_label(age_days(moment, pd.Timestamp(row.last).value))}"
                   for row in units.itertuples()}
    st.multiselect("Remove from the history", list(unit_labels), format_func=unit_labels.get, key="wi_remove",
                   placeholder="Past items to forget (every event on them)",
                   help="The model reads one unit per distinct item; removing one removes all its events")
    st.caption(f"{len(units) - len(st.session_state.wi_remove)} of {len(units)} past items kept.")
    search = st.text_input("Add an item: search the catalog", key="wi_search", placeholder="words of a title, "
                           "brand or category")
    if search.strip():
        found = search_catalog(recommender, search)
        if not found:
            st.info(f"No catalog item matches “{md_escape(search.strip())}”.")
        else:
            pick, kind, add = st.columns([4, 2, 1], vertical_alignment="bottom")
            pick.selectbox("Found", found, format_func=lambda i: titles.get(i, i), key="wi_add_item")
            kind.selectbox("As", EVENT_TYPES, format_func=event_label, key="wi_add_event")
            add.button("Add", key="wi_add_button", on_click=add_item, help="Added items happen just now, in order")
    if st.session_state.wi_added:
        added = pd.DataFrame(st.session_state.wi_added)
        added["title"] = added["item_id"].map(titles)
        st.dataframe(added[["title", "event"]], hide_index=True, width="stretch",
                     column_config={"title": st.column_config.TextColumn("Added just now"),
                                    "event": st.column_config.TextColumn("Event", width=80)})
        st.button("Clear the added items", key="wi_clear_added",
                  on_click=lambda: st.session_state.update(wi_added=[]))

with features_column, st.container(border=True):
    st.markdown("**Behaviour features**")
    ranges = feature_ranges(recommender)
    chosen = st.multiselect("Set by hand, for every item", list(ranges.index), format_func=ranges["label"].get,
                            key="wi_features", help="Pick features to override; the others keep each item's value")
    st.caption(OVERRIDE_HELP)
    overrides: dict[str, float] = {}
    if chosen:
        # (F,) this user's mean over the catalog, or over a seeded sample of MEAN_SAMPLE_ITEMS of a larger one
        n_items = len(recommender.item_ids)
        sample = None if n_items <= MEAN_SAMPLE_ITEMS else np.sort(
            np.random.default_rng(0).choice(n_items, MEAN_SAMPLE_ITEMS, replace=False))
        real_values = recommender.behaviour_features(recommender.context(user_id), sample).mean(0)
    for name in chosen:
        low, high = float(ranges.at[name, "low"]), float(ranges.at[name, "high"])
        label, unit = ranges.at[name, "label"], ranges.at[name, "unit"]
        if high - low < 1e-9:
            st.caption(f"{label} is {low:.3g} everywhere in this data: there is nothing to change.")
            continue
        start = min(max(float(real_values[list(ranges.index).index(name)]), low), high)
        scope = " It is about the item alone, the same for every user." if ranges.at[name, "scope"] == "item" else ""
        st.session_state.setdefault(f"wi_value_{name}", start)
        overrides[name] = st.slider(f"{label} ({unit})", min_value=low, max_value=high,
                                    step=(high - low) / 100, format="%.3f", key=f"wi_value_{name}",
                                    help=f"{ranges.at[name, 'meaning']}{scope} Starts at this user's average "
                                         f"over the catalog; observed range {low:.3g} to {high:.3g}.")
    query = st.text_input("Optional: a query", key="wi_query", placeholder="e.g. waterproof hiking sock")
    query = query.strip() or None
remember("wi_saved", [*WIDGETS, *(f"wi_value_{name}" for name in chosen)])

removed, added = list(st.session_state.wi_remove), [(a["item_id"], a["event"]) for a in st.session_state.wi_added]
edited = bool(removed or added or overrides or query)
write_link(st.query_params, removed, added, overrides, query, k)
try:
    history = edited_history(recommender, user_id, remove=removed, add=added) if removed or added else None
    real = cached_ranking(recommender.checkpoint_id, user_id, None, None, (), recommender)
    whatif = cached_ranking(recommender.checkpoint_id, user_id, query, history, tuple(overrides.items()), recommender)
except WhyRecError as exc:
    st.error(f"This what-if cannot be ranked: {md_escape(exc)}")
    st.stop()

focus = st.session_state.get("wi_focus")
if focus is not None:
    try:
        before, after = (float(recommender.score(user_id, query, [focus], **edits)[0])
                         for edits in ({}, {"history": history, "feature_overrides": overrides or None}))
    except WhyRecError as exc:
        st.error(f"The item from the link cannot be scored: {md_escape(exc)}")
    else:
        st.metric(f"Score of “{md_escape(titles.get(focus, focus))}”, the item you came from", f"{after:.3f}",
                  delta=f"{after - before:+.3f} against the real history", delta_color="normal",
                  help="The explanation panel's \"removing it alone\" is this change, for one past item removed")

if history is not None and history.empty:
    st.warning("You removed the whole history: the model now sees this user as a new visitor (cold start). "
               "The history part is empty, and the ranking rests on popularity, the behaviour features"
               + (" and the query." if query else "."))
elif not edited:
    st.info("No edits yet: remove or add history items, set a behaviour feature or type a query above.")
for note in whatif.attrs.get("notes", []):
    st.caption(md_escape(note))

changes = rank_changes(real, whatif, k)
top = changes[changes["new_rank"].le(k).fillna(False).astype(bool)].copy()
gone = changes[changes["status"] == "left"].copy()
st.subheader(f"Top {k}: what-if against real")
m1, m2, m3 = st.columns(3)
m1.metric("Entered the top", int((changes["status"] == "entered").sum()))
m2.metric("Moved within it", int(changes["status"].isin(["up", "down"]).sum()))
m3.metric("Largest move", f"{int(top['change'].abs().max()) if top['change'].notna().any() else 0} ranks")

table, chart = st.columns([1, 1], gap="medium")
with table:
    top["move"] = [move_label(row) for row in top.itertuples()]
    st.dataframe(
        top[["new_rank", "move", "title", "new_score", "real_rank", "item_id", "real_score"]], hide_index=True,
        width="stretch",
        column_config={"new_rank": st.column_config.NumberColumn("#", width=35),
                       "move": st.column_config.TextColumn("Move", width=110,
                                                           help="▲ up, ▼ down, = unchanged, against the real ranking"),
                       "title": st.column_config.TextColumn("Item", width=185),
                       "new_score": st.column_config.NumberColumn("Score", format="%.3f", width=60),
                       "real_rank": st.column_config.NumberColumn("Real #", width=55),
                       "item_id": st.column_config.TextColumn("ID", width=60),
                       "real_score": st.column_config.NumberColumn("Real score", format="%.3f", width=75)})
    if len(gone):
        gone["now"] = [move_label(row) for row in gone.itertuples()]
        st.markdown(f"**Left the top {k}**")
        st.dataframe(gone[["real_rank", "title", "now", "item_id"]], hide_index=True, width="stretch",
                     column_config={"real_rank": st.column_config.NumberColumn("Real #", width=60),
                                    "title": st.column_config.TextColumn("Item", width=260),
                                    "now": st.column_config.TextColumn("Now", width=140),
                                    "item_id": st.column_config.TextColumn("ID", width=70)})
with chart:
    st.plotly_chart(rank_slope(changes, k), width="stretch", config={"displayModeBar": False})

if top.empty:
    st.info("Nothing is left to rank: every catalog item is in this history.")
    st.stop()
with st.container(border=True):
    ranked_top = top.rename(columns={"new_rank": "rank"})[["rank", "item_id", "title"]]
    whatif_explanation(recommender, ranked_top, user_id, query, history, tuple(overrides.items()))
