"""Models page: two checkpoints (or two scenarios of one backbone) side by side on the same data, and what changed."""

from __future__ import annotations

import time
from urllib.parse import urlencode

import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from explain import Explanation, explain
from explain.changes import explanation_changes
from model.comparison import AGREEMENT_K, compare_metrics, list_agreement, on_same_data, sample_users
from model.whatif import rank_changes
from views.loaders import checkpoint_at, model_dir
from views.pickers import audience_picker, top_k_slider
from views.rankings import cached_ranking, move_label, rank_slope
from views.state import first_visit, remember, restore
from views.text import md_escape

WIDGETS = ("models_a", "models_b", "models_mode", "models_user", "models_user_query", "models_query",
           "models_personalise", "models_k", "models_item", "models_sample")
METRICS = ("NDCG@10", "HR@10", "MRR", f"coverage@{AGREEMENT_K}")
METRIC_USERS = 500  # test users both models rank for the metrics: a fixed sample, so the page never grows with data
EXPLAIN_STEPS = 16  # Integrated Gradients steps per explanation: enough to compare two models, quick on a CPU
CHANGE = st.column_config.NumberColumn("B − A", format="%+.3f", width=80)
VALUE_COLUMNS = {"name": st.column_config.TextColumn("", width=220),
                 "A": st.column_config.NumberColumn("A", format="%+.3f", width=80),
                 "B": st.column_config.NumberColumn("B", format="%+.3f", width=80), "change": CHANGE}


@st.cache_resource(show_spinner=False, max_entries=2)
def served_together(a_id: str, b_id: str, fingerprint: str, _a, _b):
    """Model B served over model A's data (model.comparison.on_same_data), once per pair and data."""
    return on_same_data(_a, _b)


@st.cache_data(show_spinner="Scoring both models on the same test users…", max_entries=16)
def cached_metrics(a_id: str, b_id: str, fingerprint: str, _a, _b) -> dict:
    return compare_metrics(_a, _b, max_users=METRIC_USERS)


@st.cache_data(show_spinner=False, max_entries=16)
def cached_agreement(a_id: str, b_id: str, fingerprint: str, n_users: int, _a, _b) -> pd.DataFrame:
    return list_agreement(_a, _b, sample_users(_a, n_users))


@st.cache_data(show_spinner=False, max_entries=64)
def cached_explanation(checkpoint_id: str, fingerprint: str, item_id: str, user_id, query, _recommender) -> dict:
    started = time.perf_counter()
    explanation = explain(_recommender, item_id, user_id=user_id, query=query, n_steps=EXPLAIN_STEPS, drill_down=0)
    return {"explanation": explanation.to_dict(), "seconds": time.perf_counter() - started}


def describe(recommender) -> str:
    """What a checkpoint is, in one line: full model, scenario adapter over a backbone, or an update of a parent."""
    meta = recommender.metadata
    facts = [f"checkpoint `{md_escape(recommender.checkpoint_id)}`", f"{len(recommender.item_ids):,} items"]
    if "backbone" in meta:
        scenario = meta["backbone"].get("scenario") or "unnamed"
        facts.append(f"scenario *{md_escape(scenario)}* over backbone `{md_escape(meta['backbone']['checkpoint_id'])}`")
    if "lineage" in meta:
        lineage = meta["lineage"]
        facts.append(f"update of `{md_escape(lineage['parent'])}` (generation {int(lineage['generation'])}) on the "
                     f"events since {md_escape(lineage['since'][:10])}")
    if "created" in meta:
        facts.append(f"trained {md_escape(meta['created'][:10])}")
    return " · ".join(facts)


def link(**params) -> str:
    """This page with these query parameters (a shareable comparison)."""
    return "models?" + urlencode({key: value for key, value in params.items() if value})


st.header("Models")
st.caption("Two checkpoints, or two scenarios of one backbone, side by side on the same data: their metrics, "
           "how each user's list moves, and what changed in an explanation.")
params = st.query_params
linked = first_visit("models_initialised")
if linked:
    st.session_state["models_a"] = params.get("model_a") or model_dir()
    st.session_state["models_b"] = params.get("model_b") or ""
restore("models_saved")
pick_a, pick_b = st.columns(2)
a_dir = pick_a.text_input("Model A", key="models_a", help="A checkpoint directory (default: the sidebar's model)")
b_dir = pick_b.text_input("Model B", key="models_b", placeholder="e.g. runs/updated",
                          help="A second checkpoint directory: a retrained or updated model, or another scenario")
remember("models_saved", ("models_a", "models_b"))
for key, value in (("model_a", a_dir), ("model_b", b_dir)):
    if value:
        params[key] = value
    elif key in params:
        del params[key]
if not b_dir.strip():
    st.info("Enter a second model directory to compare with model A.")
    st.stop()

try:
    model_a, own_b = checkpoint_at(a_dir.strip()), checkpoint_at(b_dir.strip())
    model_b = served_together(model_a.checkpoint_id, own_b.checkpoint_id, model_a.dataset.meta.fingerprint, model_a,
                              own_b)
except WhyRecError as exc:
    st.error(f"Cannot compare these models: {md_escape(exc)}")
    st.stop()
ids = (model_a.checkpoint_id, model_b.checkpoint_id, model_a.dataset.meta.fingerprint)
left, right = st.columns(2)
left.markdown(f"**A** · {describe(model_a)}")
right.markdown(f"**B** · {describe(model_b)}")
if model_a.checkpoint_id == model_b.checkpoint_id:
    st.warning("A and B are the same checkpoint: every list and explanation below is identical.")

st.subheader("Metrics on the same split")
try:
    metrics = cached_metrics(*ids, model_a, model_b)
except WhyRecError as exc:
    st.error(md_escape(exc))
    st.stop()
table = pd.DataFrame([{"metric": name, "A": metrics["A"][name], "B": metrics["B"][name],
                       "change": metrics["B"][name] - metrics["A"][name]} for name in METRICS])
st.dataframe(table, hide_index=True, column_config={"metric": st.column_config.TextColumn("Metric", width=120),
                                                    "A": st.column_config.NumberColumn("A", format="%.4f"),
                                                    "B": st.column_config.NumberColumn("B", format="%.4f"),
                                                    "change": st.column_config.NumberColumn("B − A", format="%+.4f")})
st.caption(f"Test moments (each user's last interaction) of {metrics['users']:,} users, the same for both models; "
           f"full-catalog ranking with the user's own items left out, as `python -m model evaluate` scores.")

st.subheader("One user's or query's list")
user_id, query = audience_picker("models", model_a.user_index, heading="Rankings for", from_link=linked,
                                 empty_query="Type a query to see both models' lists for it.")
k = top_k_slider("Top k", "models_k", len(model_a.item_ids), low=5, high=30, default=10)
remember("models_saved", WIDGETS)
for key, value in (("user", user_id), ("query", query)):
    if value:
        params[key] = value
    elif key in params:
        del params[key]
try:
    ranked_a = cached_ranking(model_a.checkpoint_id, user_id, query, None, (), model_a)
    ranked_b = cached_ranking(f"{model_b.checkpoint_id}@{ids[2]}", user_id, query, None, (), model_b)
    changes = rank_changes(ranked_a, ranked_b, k)
except WhyRecError as exc:
    st.error(md_escape(exc))
    st.stop()
moves = changes.assign(move=[move_label(row) for row in changes.itertuples()])
list_column, chart_column = st.columns([3, 2], gap="large")
with list_column:
    st.dataframe(moves[["new_rank", "title", "move", "real_rank", "new_score", "real_score"]], hide_index=True,
                 column_config={"new_rank": st.column_config.NumberColumn("B rank", width=60),
                                "title": st.column_config.TextColumn("Item", width=260),
                                "move": st.column_config.TextColumn("Move from A", width=140),
                                "real_rank": st.column_config.NumberColumn("A rank", width=60),
                                "new_score": st.column_config.NumberColumn("B score", format="%.3f", width=70),
                                "real_score": st.column_config.NumberColumn("A score", format="%.3f", width=70)})
with chart_column:
    st.plotly_chart(rank_slope(changes, k, sides=("A", "B")), width="stretch", config={"displayModeBar": False})

st.subheader("One item's explanation in both models")
titles = dict(zip(changes["item_id"], changes["title"]))
options = list(titles)
if linked and params.get("item") in titles:
    st.session_state["models_item"] = params["item"]
if st.session_state.get("models_item") not in titles:
    st.session_state["models_item"] = options[0]
item_id = st.selectbox("Item", options, key="models_item", format_func=titles.get,
                       help="Any item in either model's top k")
params["item"] = item_id
remember("models_saved", WIDGETS)
try:
    with st.spinner("Explaining the item in both models…"):
        explained_a = Explanation.from_dict(cached_explanation(model_a.checkpoint_id, ids[2], item_id, user_id, query,
                                                               model_a)["explanation"])
        explained_b = Explanation.from_dict(cached_explanation(model_b.checkpoint_id, ids[2], item_id, user_id, query,
                                                               model_b)["explanation"])
    changed = explanation_changes(explained_a, explained_b)
except WhyRecError as exc:
    st.error(md_escape(exc))
    st.stop()
score_change = explained_b.score - explained_a.score
st.markdown(f"Score **{explained_a.score:+.3f}** in A, **{explained_b.score:+.3f}** in B ({score_change:+.3f}). "
            "Each part below, in both models; the largest changes first.")
parts_tab, words_tab, history_tab, behaviour_tab = st.tabs(["Parts", "Words", "Past interactions",
                                                            "Behaviour features"])
for tab, name, empty in ((parts_tab, "parts", "No parts."), (words_tab, "words", "No words to compare."),
                         (history_tab, "history", "No history in this context: neither model reads one."),
                         (behaviour_tab, "behaviour", "No behaviour features.")):
    with tab:
        if changed[name].empty:
            st.info(empty)
        else:
            st.dataframe(changed[name].head(15), hide_index=True, column_config=VALUE_COLUMNS)


@st.fragment
def agreement() -> None:
    """Over a bounded sample of users: how alike the two top-10 lists are, and who changed most."""
    st.subheader(f"Agreement over users (top {AGREEMENT_K})")
    st.session_state.setdefault("models_sample", 100)
    n_users = st.select_slider("Users in the sample", [50, 100, 200, 500], key="models_sample",
                               help="A fixed sample of users with a history; larger is slower")
    try:
        with st.spinner(f"Ranking the catalog for {n_users} users in both models…"):
            frame = cached_agreement(*ids, n_users, model_a, model_b)
    except WhyRecError as exc:
        st.error(md_escape(exc))
        return
    one, two, three = st.columns(3)
    one.metric(f"Overlap@{AGREEMENT_K}", f"{frame['overlap'].mean():.2f}",
               help=f"Share of A's top {AGREEMENT_K} also in B's, averaged over the sample")
    two.metric("Rank correlation", f"{frame['spearman'].mean():.2f}",
               help=f"Spearman's ρ of the items in either top {AGREEMENT_K}, by their ranks in each model")
    three.metric("Users with an identical top 10", f"{(frame['overlap'] == 1).mean():.0%}")
    st.markdown("**The users whose lists changed most** (open one to see their list and explanations above)")
    lines = [f"- [{md_escape(row.user_id)}]({link(model_a=a_dir, model_b=b_dir, user=row.user_id)}): "
             f"{row.changed} of {AGREEMENT_K} items changed, ρ {row.spearman:+.2f}"
             for row in frame.head(10).itertuples()]
    st.markdown("\n".join(lines))


agreement()
