"""Choosers several pages share: for whom to rank (a user, a query or both) and how many items."""

from __future__ import annotations

import streamlit as st

from views.state import audience_from_url
from views.text import md_escape


def top_k_slider(label: str, key: str, n_items: int, *, low: int, high: int, default: int,
                 help: str | None = None) -> int:
    """A "how many items" slider that never offers more items than the catalog holds.

    The page's range low..high is cut to the catalog (a catalog no larger than `low` offers 1..n_items), and the
    start value (`default`, or what session state already holds, e.g. from a link) is moved into it. With one
    item to offer there is nothing to choose: a caption says so and the count is returned.
    """
    high = max(1, min(high, n_items))
    if low >= high:
        low = 1
    current = st.session_state.get(key)
    wanted = default if current is None else int(current)
    clamped = min(max(wanted, low), high)
    if current != clamped:
        st.session_state[key] = clamped
    if low >= high:
        st.caption(f"{label}: {high}, the whole catalog")
        return high
    return st.slider(label, low, high, key=key, help=help)


def audience_picker(prefix: str, user_ids: list[str], *, heading: str, from_link: bool,
                    query_label: str = "Query", user_query_label: str = "Optional: narrow down with a query",
                    personalise: bool = True, empty_query: str | None = None) -> tuple[str | None, str | None]:
    """The "user or query" chooser of the Recommend, Compare and Report pages; returns (user_id, query).

    A radio (`heading`: User or Query), then either a user (searchable) with an optional query that narrows their
    list, or a query with, where `personalise`, an optional user. Widget keys are {prefix}_mode, {prefix}_user,
    {prefix}_user_query, {prefix}_query and {prefix}_personalise. With `from_link` (the page's first visit this
    session, views.state.first_visit) they start from the link's ?user=&query=, and an unknown user in it is
    named. A query comes back stripped; in Query mode an empty one stops the page with the note `empty_query`,
    or, without a note, comes back as "" for the page to refuse. With no users at all, User mode stops the page.
    """
    if from_link:
        unknown = audience_from_url(prefix, st.query_params, user_ids)
        if unknown is not None:
            st.error(f"Unknown user in the link: `{md_escape(unknown)}`. Showing user "
                     f"`{md_escape(st.session_state[f'{prefix}_user'])}` instead; pick another below.")
    mode = st.radio(heading, ["User", "Query"], horizontal=True, key=f"{prefix}_mode")
    placeholder = "e.g. waterproof hiking sock"
    if mode == "User":
        if not user_ids:
            st.error("This data has no users: choose Query instead.")
            st.stop()
        user_id = st.selectbox("User", user_ids, key=f"{prefix}_user", help="Type to search by id")
        narrowing = st.text_input(user_query_label, key=f"{prefix}_user_query", placeholder=placeholder)
        return user_id, narrowing.strip() or None
    query = st.text_input(query_label, key=f"{prefix}_query", placeholder=placeholder).strip()
    user_id = None
    if personalise and user_ids and st.checkbox("Personalise for a user", key=f"{prefix}_personalise"):
        user_id = st.selectbox("User", user_ids, key=f"{prefix}_user", help="Type to search by id")
    if not query and empty_query is not None:
        st.info(empty_query)
        st.stop()
    return user_id, query
