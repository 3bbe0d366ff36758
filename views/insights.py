"""Insights page: the model across many users — its metrics beside its baselines, which behaviour features matter,
which words drive each category — and the quality of the data it serves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from data.quality import quality_report
from explain.insight_charts import beeswarm, importance_bars, metrics_bars, word_bars
from explain.insights import (
    DEFAULT_K,
    DEFAULT_PAIRS,
    DEFAULT_STEPS,
    DEFAULT_USERS,
    EVALUATE_COMMAND,
    METRICS,
    TOP_WORDS,
    behaviour_importance,
    driving_words,
    metrics_comparison,
    read_evaluation,
)
from explain.insights_file import INSIGHTS_FILE, PRECOMPUTE_COMMAND, PrecomputedInsights, read_insights
from views.loaders import model_dir, recommender_or_error
from views.pickers import top_k_slider
from views.quality import dataset_counts, quality_findings
from views.text import md_escape

STEP_CHOICES = (8, 16, 32, 50)
# The sample settings: URL parameter -> (widget key, lowest, highest, step, default). The URL carries them, so a
# link reproduces the same sample (and a cached one opens at once).
SETTINGS = {
    "users": ("ins_users", 10, 500, 10, DEFAULT_USERS),
    "k": ("ins_k", 1, 20, 1, DEFAULT_K),
    "pairs": ("ins_pairs", 10, 300, 10, DEFAULT_PAIRS),
    "steps": ("ins_steps", STEP_CHOICES[0], STEP_CHOICES[-1], None, DEFAULT_STEPS),
}
EVALUATION_USERS = 500  # an in-app evaluation ranks this many test users: seconds, not minutes
CHART_CONFIG = {"displayModeBar": False}


def settings_from_url() -> None:
    """Once per session: the sample settings from the URL where they are valid, else the defaults."""
    if "insights_initialised" in st.session_state:
        return
    st.session_state.insights_initialised = True
    for name, (key, low, high, step, default) in SETTINGS.items():
        try:
            value = int(st.query_params.get(name, default))
        except ValueError:
            value = default
        fits = value in STEP_CHOICES if step is None else low <= value <= high and (value - low) % step == 0
        st.session_state[key] = value if fits else default


def settings_to_url(**values: int) -> None:
    for name, value in values.items():
        st.query_params[name] = str(value)


def progress_bar(label: str):
    """A progress bar and the `progress(done, total, what)` hook that moves it; returns (its slot, the hook).

    The bar reads "label: what", where explain.insights counts the users done ("ranked 12 / 200 users"). Call
    inside the cached function, so that a cache hit replays the bar and its removal (elements made outside a
    cached function cannot be touched inside it). Moves only on whole percents: few messages to replay.
    """
    slot = st.empty()
    bar = slot.progress(0.0, text=label)
    shown = {"percent": -1}

    def hook(done: int, total: int, what: str) -> None:
        percent = int(100 * done / max(total, 1))
        if percent != shown["percent"]:
            shown["percent"] = percent
            bar.progress(percent / 100, text=f"{label}: {what}")

    return slot, hook


@st.cache_data(show_spinner=False, max_entries=16)
def cached_importance(checkpoint_id: str, fingerprint: str, n_users: int, k: int, _recommender):
    slot, hook = progress_bar("SHAP over the sampled users' top items")
    result = behaviour_importance(_recommender, n_users, k, progress=hook)
    slot.empty()
    return result


@st.cache_data(show_spinner=False, max_entries=16)
def cached_words(checkpoint_id: str, fingerprint: str, n_pairs: int, n_steps: int, _recommender):
    slot, hook = progress_bar("Integrated Gradients over the sampled items' words")
    result = driving_words(_recommender, n_pairs, n_steps=n_steps, progress=hook)
    slot.empty()
    return result


@st.cache_data(show_spinner=False, max_entries=4)
def cached_precomputed(path: str, stamp: float, checkpoint_id: str, fingerprint: str):
    """(the insights precomputed for this checkpoint and data, or None; what is wrong with the file, or None)."""
    try:
        return read_insights(path, checkpoint_id, fingerprint), None
    except WhyRecError as exc:
        return None, str(exc)


def precomputed(recommender) -> PrecomputedInsights | None:
    """The file `python -m explain insights` wrote beside the model, when it fits this model and data; a file that
    does not fit is named in a warning and left out, and the page computes instead."""
    path = Path(model_dir()) / INSIGHTS_FILE
    try:
        stamp = path.stat().st_mtime
    except OSError:
        return None
    insights, problem = cached_precomputed(str(path), stamp, recommender.checkpoint_id,
                                           recommender.dataset.meta.fingerprint)
    if problem:
        st.warning(f"The precomputed insights are left out and computed here instead: {md_escape(problem)}")
    return insights


PRECOMPUTED_NOTE = "Computed ahead of time (`{command}`) for these settings."


@st.cache_data(show_spinner="Ranking the catalog for every evaluated user, with each baseline…", max_entries=8)
def cached_evaluation(checkpoint_id: str, fingerprint: str, max_users: int, _recommender) -> dict:
    from model.evaluate import evaluate_model

    return evaluate_model(_recommender, max_users=max_users)


@st.cache_data(show_spinner="Checking the data…", max_entries=8)
def cached_quality(checkpoint_id: str, fingerprint: str, _recommender) -> tuple[dict, pd.DataFrame]:
    return _recommender.dataset.summary(), quality_report(_recommender.dataset).to_frame()


def metrics_section(recommender) -> None:
    fingerprint = recommender.dataset.meta.fingerprint
    evaluated_here = st.session_state.setdefault("insights_evaluations", {})
    key = (recommender.checkpoint_id, fingerprint)
    evaluation = evaluated_here.get(key)
    if evaluation is None:
        try:
            evaluation = read_evaluation(model_dir(), recommender.checkpoint_id)
        except WhyRecError as exc:
            st.warning(str(exc))
    frame = metrics_comparison(recommender.metadata.get("metrics"), evaluation)
    if not (frame["role"] == "baseline").any():
        offer = st.empty()
        with offer.container():
            command = EVALUATE_COMMAND.format(model=model_dir())
            st.info("This checkpoint holds no baseline figures (popularity, item-kNN, zero-shot text similarity), "
                    f"so the model cannot be compared with them yet. Evaluate it from the command line:\n\n"
                    f"`{command}`\n\nor here, on a sample of test users.")
            left, right = st.columns([1, 2], vertical_alignment="bottom")
            users = left.number_input("Test users to evaluate", 10, 1_000_000, EVALUATION_USERS, step=100,
                                      key="ins_eval_users")
            clicked = right.button("Evaluate against the baselines", key="ins_evaluate")
        if clicked:
            try:
                evaluation = cached_evaluation(recommender.checkpoint_id, fingerprint, int(users), recommender)
            except WhyRecError as exc:
                st.error(str(exc))
            else:
                evaluated_here[key] = evaluation
                frame = metrics_comparison(recommender.metadata.get("metrics"), evaluation)
                offer.empty()
    if frame.empty:
        st.info("This checkpoint holds no metrics.")
        return
    shown = [m for m in METRICS if frame[m].notna().any()]
    st.dataframe(frame[["name", "role", "split", "users", *shown]], hide_index=True, width="stretch",
                 column_config={m: st.column_config.NumberColumn(m, format="%.4f") for m in shown})
    figure = metrics_bars(frame)
    if figure is not None:
        st.plotly_chart(figure, width="stretch", config=CHART_CONFIG)
    st.caption("Validation figures are the checkpoint's own, from training; the others rank the whole catalog for "
               "each evaluated user's held-out last interaction, the model and every baseline on the same users.")


@st.fragment
def importance_section(recommender, ready: PrecomputedInsights | None) -> None:
    left, right = st.columns(2)
    n_users = left.slider("Users sampled", 10, 500, step=10, key="ins_users",
                          help="A seeded sample of users with a history; the same settings give the same sample")
    with right:
        k = top_k_slider("Their top items", "ins_k", len(recommender.item_ids), low=1, high=20, default=DEFAULT_K,
                         help="Each sampled user's top-k recommendations are the rows explained")
    settings_to_url(users=n_users, k=k)
    importance = ready.importance_for(n_users, k) if ready is not None else None
    if importance is None:
        try:
            importance = cached_importance(recommender.checkpoint_id, recommender.dataset.meta.fingerprint, n_users,
                                           k, recommender)
        except WhyRecError as exc:
            st.error(str(exc))
            return
    else:
        st.caption(PRECOMPUTED_NOTE.format(command=PRECOMPUTE_COMMAND.format(model=model_dir())))
    st.caption(f"Exact SHAP values of the behaviour head for {len(importance)} recommended items of "
               f"{importance.parameters['n_users']} users, each against {importance.parameters['background_size']} "
               f"random items for the same user (mean base value {importance.base_values.mean():+.3f}), so features "
               f"that are the same for all of a user's items get 0; largest completeness gap "
               f"{importance.completeness_gap:.1e}.")
    shown = recommender.item_positions(sorted(set(importance.item_ids)))  # the sample's items, not the catalog
    titles = dict(zip(recommender.item_ids[shown], recommender.items["title"].to_numpy()[shown]))
    st.plotly_chart(importance_bars(importance), width="stretch", config=CHART_CONFIG)
    st.plotly_chart(beeswarm(importance, titles), width="stretch", config=CHART_CONFIG)
    with st.expander("How to read the beeswarm"):
        st.markdown("Each dot is one recommended item. Its place on the x axis is how much that feature moved the "
                    "item's score (right raises it, left lowers it); its colour is the feature's value, dark for "
                    "the lowest and yellow for the highest in the sample. Where dots pile up, many items share "
                    "that effect. Hover a dot for the real value and its unit.")


@st.fragment
def words_section(recommender, ready: PrecomputedInsights | None) -> None:
    left, right = st.columns(2)
    n_pairs = left.slider("Users sampled (their top item each)", 10, 300, step=10, key="ins_pairs",
                          help="Each sampled user's top recommendation is explained word by word")
    n_steps = right.select_slider("IG steps", STEP_CHOICES, key="ins_steps",
                                  help="Integrated Gradients path steps: enough to rank words; more is slower")
    settings_to_url(pairs=n_pairs, steps=n_steps)
    words = ready.words_for(n_pairs, n_steps) if ready is not None else None
    if words is None:
        try:
            words = cached_words(recommender.checkpoint_id, recommender.dataset.meta.fingerprint, n_pairs, n_steps,
                                 recommender)
        except WhyRecError as exc:
            st.error(str(exc))
            return
    else:
        st.caption(PRECOMPUTED_NOTE.format(command=PRECOMPUTE_COMMAND.format(model=model_dir())))
    table = words.by_category()
    if table.empty:
        st.info("No item word raised a score in this sample.")
        return
    st.caption(f"The {TOP_WORDS} words credited most in each of {words.parameters['n_pairs']} top items "
               f"(Integrated Gradients, {n_steps} steps), counted per category. Field labels every item has "
               "(Brand:, Category:) and punctuation are left out.")
    figure = word_bars(table)
    if figure is not None:
        st.plotly_chart(figure, width="stretch", config=CHART_CONFIG)
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "category": st.column_config.TextColumn("Category"),
        "word": st.column_config.TextColumn("Word"),
        "items": st.column_config.NumberColumn("Items it drives", help="items with the word among their top words"),
        "pairs": st.column_config.NumberColumn("Items in sample"),
        "share": st.column_config.ProgressColumn("Share", min_value=0.0, max_value=1.0, format="percent"),
        "mean_value": st.column_config.NumberColumn("Mean attribution", format="%+.3f"),
    })


st.header("Insights")
st.caption("How the model behaves across many users, how it measures against simpler recommenders, and what "
           "the data it serves looks like.")
recommender = recommender_or_error()
if recommender is None:
    st.stop()
settings_from_url()
ready = precomputed(recommender)

st.subheader("Ranking quality beside the baselines")
metrics_section(recommender)

st.subheader("Which behaviour features matter")
importance_section(recommender, ready)

st.subheader("Words that drive recommendations, by category")
words_section(recommender, ready)

st.subheader("Data quality")
try:
    summary, findings = cached_quality(recommender.checkpoint_id, recommender.dataset.meta.fingerprint, recommender)
except WhyRecError as exc:
    st.error(str(exc))
else:
    dataset_counts(summary)
    quality_findings(findings)
