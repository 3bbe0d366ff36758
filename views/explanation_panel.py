"""The explanation panel: why one item scored what it did, in parts that add up, with how far to trust it."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from explain import Explanation
from explain.cache import Cached
from explain.charts import behaviour_bars, history_bars, history_token_sections, legend_html, token_html, waterfall
from explain.faithfulness import MAX_EVALS, shap_tokens
from views.loaders import explanation_cache
from views.priority import after_lists
from views.state import forget
from views.text import md_escape

STEP_CHOICES = (8, 16, 32, 50, 100, 200)
HOW_TO_READ = """
**The score** is the model's number for this item and this user (or query); higher ranks higher. It splits
exactly into parts, shown in the waterfall: the **base value** (what an empty input scores), then
**item words** and **query words** (Integrated Gradients over the words the encoder read), **history**
(how much each past interaction pulled the score), **item ID** (what the model learned about this very item
from other shoppers) and **behaviour features** (SHAP values of recency, category, brand and price affinity,
popularity...).

**Colours**: orange raises the score, purple lowers it; a stronger colour is a larger effect. Hover a word or
a bar for its exact value.

**Past interactions** are credited by what removing them does: every event on a past item taken away, and the
user state and the behaviour features computed from the history rebuilt, as the What-if page does. An item's
value averages its removal alone and together with up to two other past items; *the history as a whole* is what
the history does beyond its items one by one (a user state changes little when one item of several goes, a lot
when all go). Beside each item, what removing it alone does to the score, and a button that opens What-if
without it.

**Can I trust it?** *Completeness gap* is how far the parts miss the score (Integrated Gradients' convergence
delta; smaller is better, more steps shrink it). *Deletion test*: removing the 3 words credited most should
lower the score far more than removing 3 random words; if it does, the word credits are faithful to the model.
The same for past interactions: removing the 3 credited most against 3 random, the 3 most recent, and the 3
whose removal alone lowers the score most (leave-one-out: about the most any 3 can do).
"""


def cached_explanation(recommender, item_id: str, **arguments) -> Cached:
    """`explain(recommender, item_id, **arguments)`, computed once for every session and process that share the
    explanation cache (views.loaders.explanation_cache); the result says where it came from."""
    return explanation_cache().explain(recommender, item_id, **arguments)


def cached_checks(recommender, found: Cached) -> Cached:
    """The deletion test of an explanation (computed after the charts are on screen), kept in the same cache as the
    explanations, so every session and process computes it once."""
    return explanation_cache().checks(recommender, found)


def cached_agreement(recommender, explanation_json: dict) -> dict:
    """SHAP Partition's second opinion on the item's words, with its own deletion test (on request: seconds)."""
    explanation = Explanation.from_dict(explanation_json)
    return explanation_cache().checks(recommender, explanation, agreement=True).checks["agreement"]


@st.fragment
def explanation_panel(recommender, ranked, user_id, query) -> None:
    """Choose one of the ranked items and see its explanation; reruns alone, never re-ranks."""
    params = st.query_params
    labels = {row.item_id: f"#{row.rank}  {row.title}" for row in ranked.itertuples()}
    options = list(labels)
    wanted = params.get("item")
    # Another user's or query's list starts at the item the link names, else at its own top item: the item chosen in
    # the last list, even where this one holds it too, was chosen for someone else.
    this_list = [user_id, query]
    if st.session_state.get("explain_item") not in options or st.session_state.get("explain_list") != this_list:
        st.session_state["explain_item"] = wanted if wanted in options else options[0]
    st.session_state["explain_list"] = this_list
    if wanted and wanted not in options and not st.session_state.get("explain_warned"):
        st.session_state["explain_warned"] = True
        st.warning(f"Item `{md_escape(wanted)}` from the link is not in this list; explaining the top item.")
    top, steps_column = st.columns([3, 1])
    item_id = top.selectbox("Explain this item", options, format_func=labels.get, key="explain_item")
    n_steps = steps_column.select_slider("IG steps", STEP_CHOICES, value=50, key="explain_steps",
                                         help="Integrated Gradients path steps: more is more precise and slower")
    params["item"] = item_id
    after_lists()  # another session's list first (views.priority)
    try:
        with st.spinner("Explaining…"):
            found = cached_explanation(recommender, item_id, user_id=user_id, query=query, n_steps=n_steps,
                                       drill_down=0)
    except WhyRecError as exc:
        st.error(str(exc))
        return
    explanation = found.explanation
    explanation_json = explanation.to_dict()
    has_history = explanation_body(recommender, found, n_steps)
    past_items(recommender, explanation, user_id, query)

    if has_history:
        with st.expander("Words inside the top history items (a drill-down, computed on request)"):
            if st.toggle("Compute", key=f"drill_{item_id}", help="A second Integrated Gradients run per history item"):
                with st.spinner("Explaining the history items…"):
                    drilled = cached_explanation(recommender, item_id, user_id=user_id, query=query,
                                                 n_steps=n_steps, drill_down=3)
                st.caption(md_escape(drilled.describe()))
                sections = history_token_sections(drilled.explanation)
                if not sections:
                    st.caption("Nothing to show.")
                for title, fragment in sections:
                    st.markdown(f"*{md_escape(title)}*")
                    st.html(fragment)

    st.markdown("**How far to trust it**")
    after_lists()
    with st.spinner("Running the deletion test…"):
        try:
            checked = cached_checks(recommender, found)
        except WhyRecError as exc:
            st.error(str(exc))
            return
    checks = checked.checks
    f1, f2, f3 = st.columns(3)
    # Whole words, as the shaded text shows them: every piece of a word goes at once.
    top, by_chance = checks["deletion_top3_words_drop"], checks["deletion_random3_words_drop"]
    f1.metric("Drop, top-3 words removed", f"{top:+.3f}")
    f2.metric("Drop, 3 random words removed", f"{by_chance:+.3f}")
    f3.metric("Faithfulness ratio", faithfulness_ratio(top, by_chance),
              help="How much more the score falls when the most-credited words go than when random ones go. "
                   "\"no drop\": removing them did not lower the score; \"random: none\": they lower it, random "
                   "words do not")
    if top <= 0:
        st.caption("Removing the 3 words credited most did not lower this score: read the word credits with care.")
    if checks.get("history_players"):
        h1, h2, h3, h4 = st.columns(4)
        h1.metric("Drop, top-3 past items removed", f"{checks['history_top3_drop']:+.3f}",
                  help=_kept_help(checks, "top3"))
        h2.metric("Drop, 3 random past items", f"{checks['history_random3_drop']:+.3f}",
                  help=_kept_help(checks, "random3"))
        h3.metric("Drop, 3 most recent", f"{checks['history_recent3_drop']:+.3f}", help=_kept_help(checks, "recent3"))
        h4.metric("Drop, leave-one-out top 3", f"{checks['history_loo3_drop']:+.3f}",
                  help="The 3 past items whose removal alone lowers the score most: about the most any 3 can do. "
                       + _kept_help(checks, "loo3"))
    st.caption("Deletion test: " + md_escape(checked.describe()))
    with st.expander("Second opinion: SHAP Partition over the same words (computed on request)"):
        if st.toggle("Compute", key=f"second_{item_id}",
                     help=f"SHAP's Partition explainer, {MAX_EVALS} model calls: several times the explanation's time"):
            second_opinion(recommender, explanation_json, checks)
    with st.expander("How to read this"):
        st.markdown(HOW_TO_READ)


def faithfulness_ratio(top: float, by_chance: float) -> str:
    """How much more the score falls when the credited words go than random ones, in words where a ratio would lie."""
    if top <= 0:
        return "no drop"  # removing the credited words did not lower the score: no ratio can say "faithful"
    if by_chance <= 0:
        return "random: none"  # the credited words lower it, random ones do not
    return f"{top / by_chance:.1f}×"


def _kept_help(checks: dict, key: str) -> str:
    kept = checks.get(f"history_{key}_top10")
    if kept is None:
        return "Every event on those past items removed; the history and its features rebuilt."
    if isinstance(kept, bool):
        return f"Afterwards the item is {'still' if kept else 'no longer'} in the top 10."
    return f"Afterwards the item is still in the top 10 in {kept:.0%} of the draws."


def past_items(recommender, explanation: Explanation, user_id, query, top: int = 5) -> None:
    """The past items credited most, each with what removing it does and a way into What-if without it."""
    part = explanation.part("history")
    entries = [i for i in sorted(range(len(part)), key=lambda i: -abs(part.values[i]))
               if not part.details[i].get("shared")][:top] if part is not None else []
    if not entries:
        return
    st.markdown("**Past interactions, checked by removing them**")
    header = st.columns([5, 2, 2, 2])
    for column, label in zip(header, ("Past item", "Credit", "Removing it alone", "")):
        column.caption(label)
    for i in entries:
        detail = part.details[i]
        row = st.columns([5, 2, 2, 2], vertical_alignment="center")
        row[0].markdown(f"{md_escape(_clip(detail['title'], 60))}  \n"
                        f":gray[{md_escape(detail['event'])}, {detail['age_days']:.0f} d ago]")
        row[1].markdown(f"{part.values[i]:+.3f}")
        row[2].markdown(f"{-detail['removal_effect']:+.3f}")
        if user_id is not None and detail.get("item_id") and row[3].button(
                "What-if without it", key=f"whatif_{explanation.item_id}_{detail['item_id']}",
                icon=":material/tune:", help="Open What-if with every event on this past item removed"):
            open_whatif(user_id, query, detail["item_id"], explanation.item_id)


def open_whatif(user_id: str, query, removed_item: str, item_id: str) -> None:
    """What-if for this user with one past item removed: it reads the link afresh, not an earlier visit's edits."""
    st.session_state.pop("wi_added", None)
    forget("wi_saved")
    link = {"user": user_id, "remove": removed_item, "query": query or None, "item": item_id}
    st.switch_page("views/whatif.py", query_params={key: value for key, value in link.items() if value})


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def second_opinion(recommender, explanation_json: dict, checks: dict) -> None:
    """SHAP Partition's credit for the item's words beside IG's, both judged by the same deletion test."""
    try:
        with st.spinner("Running SHAP Partition…"):
            agreement = cached_agreement(recommender, explanation_json)
    except WhyRecError as exc:
        st.error(str(exc))
        return
    part = Explanation.from_dict(explanation_json).part("item_tokens")
    shap_part = shap_tokens(part, agreement)
    if shap_part is None:
        st.info(md_escape(agreement["note"] or "SHAP Partition gave no values for these words."))
        return
    a, b, c = st.columns(3)
    rho = agreement["spearman"]
    a.metric("Rank agreement (Spearman)", "n/a" if rho is None else f"{rho:+.2f}",
             help="How alike the two rankings of the item's words are: +1 the same order, 0 unrelated"
                  + (f" ({agreement['note']})" if agreement["note"] else ""))
    b.metric("SHAP Partition took", f"{agreement['seconds']:.2f} s", help=f"{agreement['max_evals']} model calls")
    c.metric("Integrated Gradients took", f"{part.seconds:.2f} s",
             help="One run over every input of the score: item and query words, history and item ID")
    measures = (("Top-3 words removed: drop", "deletion_top3_words_drop"),
                ("Top-3 tokens removed: drop", "deletion_top3_drop"),
                ("Deletion curve, 1 to 10 tokens: mean drop (AOPC)", "aopc_comprehensiveness"))
    st.dataframe(pd.DataFrame({"Deletion test": [label for label, _ in measures],
                               "Integrated Gradients": [checks[key] for _, key in measures],
                               "SHAP Partition": [agreement[key] for _, key in measures]}),
                 hide_index=True, width="stretch",
                 column_config={name: st.column_config.NumberColumn(format="%+.3f")
                                for name in ("Integrated Gradients", "SHAP Partition")})
    st.markdown("**SHAP Partition's credit for the item's words**")
    st.html(token_html(shap_part))
    st.caption("Both rankings are judged by the same removal of words: the larger drop belongs to the ranking that "
               "better foresees what taking words away does. SHAP Partition measures such removals directly, at "
               "many model calls; Integrated Gradients' credits are the ones that add up with the other parts to "
               f"the score above. SHAP's values leave {-shap_part.completeness_gap:+.3f} of what they explain on "
               "tokens that never move ([CLS], [SEP], the field labels the baseline keeps).")


def explanation_body(recommender, found: Cached, n_steps: int, heading: str = "Why this score") -> bool:
    """One explanation on screen: score, waterfall, words, history and behaviour, and whether it came from the
    cache or was computed; says whether it has history."""
    explanation = found.explanation
    title = recommender.dataset.item(explanation.item_id).title
    after_lists()
    st.subheader(f"{heading}: {md_escape(title)}")
    for note in explanation.notes:
        st.caption(md_escape(note))
    a, b, c, d = st.columns(4)
    a.metric("Score", f"{explanation.score:.3f}")
    b.metric("Base value", f"{explanation.base_value:.3f}")
    c.metric("Completeness gap", f"{explanation.completeness_gap:.1e}",
             help="base value + parts − score: how far the parts miss the score")
    explained_in(d, found, n_steps)
    st.plotly_chart(waterfall(explanation), width="stretch", config={"displayModeBar": False})

    st.markdown("**The item's words**")
    st.html(token_html(explanation.part("item_tokens")))
    if explanation.part("query_tokens") is not None and len(explanation.part("query_tokens")):
        st.markdown("**The query's words**")
        st.html(token_html(explanation.part("query_tokens")))
    st.html(f"<div style='font-size:13px'>{legend_html()}</div>")

    after_lists()
    left, right = st.columns(2)
    history = history_bars(explanation)
    with left:
        if history is None:
            st.info("No history: this score does not depend on past interactions.")
        else:
            st.plotly_chart(history, width="stretch", config={"displayModeBar": False})
    behaviour = behaviour_bars(explanation)
    with right:
        if behaviour is not None:
            st.plotly_chart(behaviour, width="stretch", config={"displayModeBar": False})
            st.caption(behaviour_compared_with(explanation))
    return history is not None


def explained_in(column, found: Cached, n_steps: int, per: str = "") -> None:
    """The time an explanation took to show, and a caption saying whether it came from the cache or was computed."""
    label = "From the cache in" if found.from_cache else "Explained in"
    value = f"{found.seconds * 1000:.0f} ms" if found.seconds < 1 else f"{found.seconds:.2f} s"
    column.metric(label, value, help=f"{n_steps} Integrated Gradients steps{per}. {found.describe()}")
    st.caption(md_escape(found.describe()))


def behaviour_compared_with(explanation) -> str:
    """What the behaviour values are measured against, in words."""
    background = explanation.features().parameters.get("background", "a summarised background")
    return (f"Each feature's value is measured against {background}: what this item has that a typical one "
            "does not.")
