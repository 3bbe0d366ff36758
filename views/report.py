"""Report page: one user's (or one query's) top-k with every explanation, downloaded as HTML, PDF or JSON."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from data.errors import WhyRecError
from explain.charts import PART_LABELS
from explain.report import build_report, report_file_name, to_html, to_pdf
from views.loaders import explanation_cache, recommender_or_error
from views.pickers import audience_picker, top_k_slider
from views.state import first_visit
from views.text import md_escape

STEP_CHOICES = (8, 16, 32, 50, 100, 200)
MIME = {"html": "text/html", "pdf": "application/pdf", "json": "application/json"}
LABELS = {"html": "HTML (interactive charts)", "pdf": "PDF (print)", "json": "JSON (every number)"}


def file_name(user_id, query, fmt: str) -> str:
    """whyrec-<user>.html, whyrec-<user>-<query>-<hash>.pdf ...: the subject in the name, always a safe name."""
    subject = " ".join(str(part) for part in (user_id, query) if part)
    return "whyrec-" + report_file_name(subject, fmt)


def _whole(text, default: int) -> int:
    """A positive whole number from the URL, or the default when it is missing or not one."""
    try:
        value = int(str(text))
    except ValueError:
        return default
    return value if value >= 1 else default


def build(recommender, user_id, query, k: int, n_steps: int) -> dict:
    """Build the report with a progress bar and render every format once, so a download never rebuilds it."""
    bar = st.progress(0.0, text="Ranking…")

    def progress(done: int, total: int, label: str) -> None:
        bar.progress(done / max(total, 1) * 0.9, text=f"Explained {done} of {total}: {md_escape(label)}")

    report = build_report(recommender, user_id=user_id, query=query, k=k, n_steps=n_steps, progress=progress,
                          cache=explanation_cache())
    files = {"html": to_html(report).encode("utf-8"), "json": report.to_json().encode("utf-8")}
    bar.progress(0.95, text="Printing the PDF…")
    pdf_error = None
    try:
        files["pdf"] = to_pdf(report)
    except WhyRecError as exc:
        pdf_error = str(exc)
    bar.empty()
    rows = [{"rank": item.rank, "title": item.title, "score": item.score, "base value": item.explanation.base_value,
             **{PART_LABELS[p.kind]: p.total for p in item.explanation.parts if p.in_total and len(p)}}
            for item in report.items]
    return {"settings": (recommender.checkpoint_id, user_id, query, k, n_steps), "files": files,
            "pdf_error": pdf_error, "items": rows, "notes": list(report.notes),
            "seconds": report.provenance.get("seconds", 0.0),
            "from_cache": report.provenance.get("explanations_from_cache", 0)}


st.header("Report")
st.caption("Export a ranked list with the explanation of every item, for a reader who has no dashboard: an "
           "interactive HTML page that works offline, a PDF to print or attach, or JSON with every number.")
recommender = recommender_or_error()
if recommender is None:
    st.stop()

params = st.query_params
users = recommender.user_index

# The URL carries who the report is for, so a link from the Recommend page opens the same report.
linked = first_visit("report_initialised")
if linked:
    st.session_state.rep_k = _whole(params.get("k"), 10)
    steps = _whole(params.get("steps"), 50)
    st.session_state.rep_steps = steps if steps in STEP_CHOICES else 50

left, right = st.columns(2, gap="large")
with left:
    user_id, query = audience_picker("rep", users, heading="Report for", from_link=linked)
with right:
    k = top_k_slider("Items in the report", "rep_k", len(recommender.item_ids), low=1, high=50, default=10)
    n_steps = st.select_slider("IG steps", STEP_CHOICES, key="rep_steps",
                               help="Integrated Gradients path steps per item: more is more precise and slower")

for name, value in {"user": user_id, "query": query, "k": k, "steps": n_steps}.items():
    if value:
        params[name] = str(value)
    elif name in params:
        del params[name]

if st.button("Build report", type="primary", key="rep_build"):
    if query is not None and not query.strip():
        st.error("The query is empty: type some words, or switch to a user.")
    elif user_id is None and query is None:
        st.error("Type a query (or choose a user) to build a report for.")
    else:
        try:
            st.session_state.report_built = build(recommender, user_id, query, k, n_steps)
        except WhyRecError as exc:
            st.error(md_escape(exc))

built = st.session_state.get("report_built")
if built is None:
    st.info("Choose a user or type a query, then build the report: every item is explained once, and the three "
            "files are ready to download.")
    st.stop()

checkpoint_id, built_user, built_query, built_k, built_steps = built["settings"]
said = {"user": built_user, "query": built_query}
subject = " and ".join(f"{what} “{md_escape(value)}”" for what, value in said.items() if value)
st.subheader(f"Top {len(built['items'])} for {subject}")
st.caption(f"{built_steps} Integrated Gradients steps per item · built in {built['seconds']:.1f} s · "
           f"{built['from_cache']} of {len(built['items'])} explanations from the cache, the rest computed · "
           f"checkpoint {checkpoint_id}")
if built["settings"] != (recommender.checkpoint_id, user_id, query, k, n_steps):
    st.caption("The settings above have changed since: build again to export them.")
for note in built["notes"]:
    st.info(md_escape(note))

columns = st.columns(3)
for column, fmt in zip(columns, ("html", "pdf", "json")):
    with column:
        if fmt in built["files"]:
            st.download_button(f"Download {LABELS[fmt]}", built["files"][fmt], file_name=file_name(
                built_user, built_query, fmt), mime=MIME[fmt], key=f"rep_download_{fmt}", on_click="ignore",
                icon=":material/download:", width="stretch")
        else:
            st.error(f"No PDF: {md_escape(built['pdf_error'])}")
st.caption("Each score is its base value plus its parts, as the report explains them:")
st.dataframe(pd.DataFrame(built["items"]), hide_index=True, width="stretch", column_config={
    "rank": st.column_config.NumberColumn("#", width=40),
    "title": st.column_config.TextColumn("Item", width=320),
    "score": st.column_config.NumberColumn("Score", format="%.3f", width=80),
    "base value": st.column_config.NumberColumn("Base value", format="%.3f", width=80),
    **{label: st.column_config.NumberColumn(label, format="%+.3f") for label in PART_LABELS.values()},
})
