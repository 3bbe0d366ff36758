"""Compare page: two items for the same user or query side by side, and why A ranks above B, part by part."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from data.features import FEATURES
from explain import Attribution, Explanation
from explain.cache import Cached
from explain.charts import PART_LABELS, legend_html, token_html, waterfall
from views.explanation_panel import STEP_CHOICES, explained_in
from views.loaders import explanation_cache, recommender_or_error
from views.pickers import audience_picker
from views.rankings import cached_ranking, catalog_labels
from views.state import first_visit, remember, restore
from views.text import md_escape

HOW_TO_READ = """
**The margin** is score(A) − score(B): how far A ranks above B (negative: B ranks above A). It splits into the
same parts as one score, each A's minus B's: the **query words**, each **past interaction** and each **behaviour
feature** count once, as the difference they make between the two items; each item's **own words** count on their
own side (A's words add to the margin, B's words subtract from it). The base value is near 0: what is the same for
both items cancels.

**Favours** says which item a contribution pushes up relative to the other. The completeness gap is how far the
parts miss the margin (Integrated Gradients' convergence delta for both items together).
"""
TOP = 8  # rows per contributor table
WIDGETS = ("cmp_mode", "cmp_user", "cmp_user_query", "cmp_query", "cmp_a", "cmp_b", "cmp_steps")


def cached_pair(recommender, item_a: str, item_b: str, user_id, query, n_steps: int) -> Cached:
    """The margin explanation of A over B, computed once for everyone who shares the explanation cache."""
    return explanation_cache().explain_pair(recommender, item_a, item_b, user_id=user_id, query=query,
                                            n_steps=n_steps, drill_down=0)


def side_words(part: Attribution | None, side: str) -> Attribution | None:
    """One item's own words out of a pair's item_tokens, valued by what they add to that item's own score."""
    if part is None:
        return None
    sign = 1.0 if side == "A" else -1.0  # the pair holds B's words negated: they count against the margin
    rows = [i for i, detail in enumerate(part.details) if detail.get("side") == side]
    return Attribution(part.kind, tuple(part.names[i] for i in rows), tuple(sign * part.values[i] for i in rows),
                       part.base_value, part.method, part.parameters, part.completeness_gap, part.seconds,
                       tuple(part.details[i] for i in rows))


def favours(value: float) -> str:
    return "A" if value > 0 else "B" if value < 0 else "neither"


def word_rows(explanation: Explanation) -> pd.DataFrame:
    """The words that moved the margin most, A's and B's and the query's, whole words."""
    rows = []
    for kind in ("item_tokens", "query_tokens"):
        part = explanation.part(kind)
        if part is None or not len(part):
            continue
        for name, value, detail in part.words().top(TOP):
            rows.append({"word": detail.get("word", name),
                         "of": {"A": "item A", "B": "item B"}.get(detail.get("side"), "the query"),
                         "margin": value, "favours": favours(value)})
    frame = pd.DataFrame(rows, columns=["word", "of", "margin", "favours"])
    return frame.reindex(frame["margin"].abs().sort_values(ascending=False).index).head(TOP).reset_index(drop=True)


def history_rows(explanation: Explanation) -> pd.DataFrame:
    part = explanation.part("history")
    rows = [] if part is None else [
        {"item": detail.get("title", name), "event": detail.get("event", ""),
         "days ago": float(detail.get("age_days", 0.0)), "margin": value, "favours": favours(value)}
        for name, value, detail in part.top(TOP)]
    return pd.DataFrame(rows, columns=["item", "event", "days ago", "margin", "favours"])


def behaviour_rows(explanation: Explanation, values: np.ndarray) -> pd.DataFrame:
    """Each behaviour feature's SHAP difference, with its value for A and for B (values: (2, F))."""
    part = explanation.features()
    if part is None or not len(part):
        return pd.DataFrame(columns=["feature", "unit", "A", "B", "margin", "favours"])
    by_label = dict(zip(part.names, part.values))
    frame = pd.DataFrame([{"feature": spec.label, "unit": spec.unit, "A": float(values[0, j]), "B": float(values[1, j]),
                           "margin": by_label.get(spec.label, 0.0), "favours": favours(by_label.get(spec.label, 0.0))}
                          for j, spec in enumerate(FEATURES)])
    return frame.reindex(frame["margin"].abs().sort_values(ascending=False).index).reset_index(drop=True)


MARGIN_COLUMNS = {
    "margin": st.column_config.NumberColumn("For the margin", format="%+.3f", width=110,
                                            help="What this adds to score(A) − score(B)"),
    "favours": st.column_config.TextColumn("Favours", width=70),
}


def item_card(recommender, side: str, item_id: str, rank, score: float, words: Attribution | None) -> None:
    """One item: title, rank, score and its own words shaded by what they add to its score."""
    row = recommender.items.iloc[int(recommender.item_positions([item_id])[0])]
    st.markdown(f"**{side}** · {md_escape(row.title)}")
    facts = [str(v) for v in (row.category, row.brand) if isinstance(v, str) and v]
    if pd.notna(row.price):
        facts.append(f"{float(row.price):,.2f}")
    st.caption(md_escape(" · ".join(facts)) or "no category, brand or price")
    left, right = st.columns(2)
    left.metric("Rank", "in history" if rank is None else f"#{int(rank)}",
                help=None if rank is not None else "The user already has this item: the ranked list leaves it out")
    right.metric("Score", f"{score:.3f}")
    st.html(token_html(words))


st.header("Compare")
st.caption("Two items for the same user or query, side by side: why does A rank above B?")
recommender = recommender_or_error()
if recommender is None:
    st.stop()

params = st.query_params
users = recommender.user_index
catalog = set(recommender.items["item_id"].astype(str))

# The URL carries the comparison (?user=..&query=..&a=..&b=..), so a link reproduces it.
linked = first_visit("cmp_initialised")
if linked:
    bad = []
    for key in ("a", "b"):
        wanted = params.get(key)
        if wanted is not None and wanted not in catalog:
            bad.append(f"item `{md_escape(wanted)}` (as {key.upper()})")
        st.session_state[f"cmp_url_{key}"] = wanted if wanted in catalog else None
    if bad:
        st.error(f"Unknown {' and '.join(bad)} in the link: showing the defaults instead; choose below.")

restore("cmp_saved")
st.session_state.setdefault("cmp_steps", 32)

controls, help_column = st.columns([3, 2], gap="large")
with controls:
    user_id, query = audience_picker("cmp", users, heading="Compare for", from_link=linked,
                                     user_query_label="Optional: with a query", personalise=False,
                                     empty_query="Type a query to compare two items for it.")
with help_column, st.expander("How to read a comparison"):
    st.markdown(HOW_TO_READ)
remember("cmp_saved", WIDGETS)

try:
    ranked = cached_ranking(recommender.checkpoint_id, user_id, query, None, (), recommender)
except WhyRecError as exc:
    st.error(md_escape(exc))
    st.stop()
labels = catalog_labels(recommender, ranked)
options = list(labels)
if len(options) < 2:
    st.error("The catalog has fewer than two items: nothing to compare.")
    st.stop()

# A and B default to the context's #1 and #2; a new user or query starts from its own #1 and #2.
defaults = {"a": options[0], "b": options[1]}
context_key = (user_id, query)
if st.session_state.get("cmp_context") != context_key:
    first_time = "cmp_context" not in st.session_state
    st.session_state.cmp_context = context_key
    for key in ("a", "b"):
        from_url = st.session_state.pop(f"cmp_url_{key}", None) if first_time else None
        st.session_state[f"cmp_{key}"] = from_url or defaults[key]
for key in ("a", "b"):
    st.session_state.setdefault(f"cmp_{key}", defaults[key])

pick_a, pick_b, pick_steps = st.columns([5, 5, 2])
item_a = pick_a.selectbox("Item A", options, format_func=labels.get, key="cmp_a",
                          help="Any catalog item; the list starts with this context's ranking")
item_b = pick_b.selectbox("Item B", options, format_func=labels.get, key="cmp_b")
n_steps = pick_steps.select_slider("IG steps", STEP_CHOICES, key="cmp_steps",
                                   help="Integrated Gradients path steps per item: more is more precise and slower")
remember("cmp_saved", WIDGETS)

wanted = {"user": user_id, "query": query, "a": item_a, "b": item_b}
for key, value in wanted.items():
    if value:
        params[key] = value
    elif key in params:
        del params[key]
params.pop("item", None)  # the Recommend page's item means nothing here

if item_a == item_b:
    st.warning("A and B are the same item: choose two different items to compare.")
    st.stop()

try:
    with st.spinner("Explaining the margin…"):
        found = cached_pair(recommender, item_a, item_b, user_id, query, n_steps)
    context = recommender.context(user_id, query)
    positions = recommender.item_positions([item_a, item_b])
    scores = sum(recommender.score_parts(context, positions).values())  # (2,)
    feature_values = recommender.behaviour_features(context, positions)  # (2, F)
except WhyRecError as exc:
    st.error(md_escape(exc))
    st.stop()
explanation = found.explanation
ranks = dict(zip(ranked["item_id"], ranked["rank"]))
item_tokens = explanation.part("item_tokens")

card_a, card_b = st.columns(2, gap="large")
with card_a, st.container(border=True):
    item_card(recommender, "A", item_a, ranks.get(item_a), float(scores[0]), side_words(item_tokens, "A"))
with card_b, st.container(border=True):
    item_card(recommender, "B", item_b, ranks.get(item_b), float(scores[1]), side_words(item_tokens, "B"))
st.html(f"<div style='font-size:13px'>Each item's words: {legend_html()}</div>")

margin = explanation.score
above, below = ("A", "B") if margin >= 0 else ("B", "A")
st.subheader(f"Why {above} ranks above {below}")
for note in explanation.notes:
    st.caption(md_escape(note))
m1, m2, m3, m4 = st.columns(4)
m1.metric("Margin (A − B)", f"{margin:+.3f}", help="score(A) − score(B): positive when A ranks above B")
m2.metric("Base value", f"{explanation.base_value:+.3f}", help="What is the same for both items cancels: near 0")
m3.metric("Completeness gap", f"{explanation.completeness_gap:.1e}",
          help="base value + parts − margin: how far the parts miss the margin")
explained_in(m4, found, n_steps, per=" per item")
st.plotly_chart(waterfall(explanation), width="stretch", config={"displayModeBar": False})

parts = [p for p in explanation.parts if p.in_total and len(p)]
strongest = max(parts, key=lambda p: abs(p.total), default=None)
if strongest is not None:
    st.markdown(f"The largest part of the margin is **{PART_LABELS[strongest.kind].lower()}** "
                f"({strongest.total:+.3f}, favouring {favours(strongest.total)}).")

st.markdown("**The margin's top contributors**")
words_tab, history_tab, behaviour_tab, id_tab = st.tabs(["Words", "History", "Behaviour features", "Item memory"])
with words_tab:
    st.dataframe(word_rows(explanation), hide_index=True, width="stretch",
                 column_config={"word": st.column_config.TextColumn("Word", width=160),
                                "of": st.column_config.TextColumn("Of", width=80), **MARGIN_COLUMNS})
with history_tab:
    history = history_rows(explanation)
    if history.empty:
        st.info("No history in this context: the history part is empty.")
    else:
        st.caption("The same past interactions pull on both items; here is the difference they make.")
        st.dataframe(history, hide_index=True, width="stretch",
                     column_config={"item": st.column_config.TextColumn("Past interaction", width=260),
                                    "event": st.column_config.TextColumn("Event", width=70),
                                    "days ago": st.column_config.NumberColumn("Days ago", format="%.0f", width=70),
                                    **MARGIN_COLUMNS})
with behaviour_tab:
    st.caption("Each feature's value for A and for B, and the difference its SHAP values make to the margin. "
               "A feature can move the margin even where A and B share its value: the behaviour head is not "
               "linear, so a feature's SHAP value depends on the item's other features too.")
    st.dataframe(behaviour_rows(explanation, feature_values), hide_index=True, width="stretch",
                 column_config={"feature": st.column_config.TextColumn("Feature", width=170),
                                "unit": st.column_config.TextColumn("Unit", width=100),
                                "A": st.column_config.NumberColumn("A", format="%.2f", width=60),
                                "B": st.column_config.NumberColumn("B", format="%.2f", width=60),
                                **MARGIN_COLUMNS})
with id_tab:
    collaborative = explanation.part("collaborative")
    rows = [] if collaborative is None else [{"term": name, "margin": value, "favours": favours(value)}
                                             for name, value in zip(collaborative.names, collaborative.values)]
    st.caption("What the model learned about each item from other shoppers: A's learned terms minus B's.")
    st.dataframe(pd.DataFrame(rows, columns=["term", "margin", "favours"]), hide_index=True, width="stretch",
                 column_config={"term": st.column_config.TextColumn("Term", width=160), **MARGIN_COLUMNS})
