"""Choosers several pages share: for whom to rank (a user, a query or both) and how many items."""

from __future__ import annotations

import streamlit as st

from data.user_index import UserIndex
from views.state import audience_from_url
from views.text import md_escape

# The most user ids one picker ever sends to the browser, whatever the number of users: the chosen one, then search
# matches, or (before any search) the most recently active users and a random few.
MATCHES_SHOWN = 50
RECENT_SHOWN = 10
RANDOM_SHOWN = 10


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


def user_picker(key: str, users: UserIndex, *, label: str = "User", on_change=None,
                help: str | None = None) -> str | None:
    """Choose one user without shipping every id: a search box answered on the server, and a select box of at most
    1 + MATCHES_SHOWN ids (the chosen user first). Before a search it offers the most recently active users and a
    random few ("Draw other users" draws again). The chosen id lives under `key`, as a plain select box's would.

    An id typed or pasted straight into the select box is taken when it is a user, and named in an error otherwise.
    """
    current = st.session_state.get(key)
    if current is not None and current not in users:  # typed into the select box: back to the last user shown
        fallback = st.session_state.get(f"{key}_shown") or users.first()
        st.error(f"No user `{md_escape(current)}` in this data: showing `{md_escape(fallback)}`.")
        current = st.session_state[key] = fallback
    search_column, draw_column = st.columns([4, 1], vertical_alignment="bottom")
    search = search_column.text_input(
        "Find a user", key=f"{key}_search", type="search", live="300ms",
        placeholder=f"part of an id, among {len(users):,} users",
        help="Searched on the server: ids that start with the text first, then ids that contain it").strip()
    if draw_column.button("Draw others", key=f"{key}_draw", help="Offer another random sample of users"):
        st.session_state[f"{key}_seed"] = st.session_state.get(f"{key}_seed", 0) + 1
    if search:
        offered = users.search(search, MATCHES_SHOWN)
        caption = (f"{len(offered)} users whose id contains “{md_escape(search)}”"
                   + (" (the first ones: type more to narrow down)" if len(offered) == MATCHES_SHOWN else "")
                   if offered else f"No user id contains “{md_escape(search)}”.")
    else:
        seed = st.session_state.get(f"{key}_seed", 0)
        offered = users.recently_active(RECENT_SHOWN) + users.random(RANDOM_SHOWN, seed)
        caption = f"The {RECENT_SHOWN} most recently active users, then {RANDOM_SHOWN} at random: search for any other."
    options = list(dict.fromkeys(([current] if current is not None else []) + offered))
    chosen = st.selectbox(label, options, key=key, on_change=on_change, accept_new_options=True,
                          help=help or "Pick one, or paste a user id")
    st.caption(caption)
    st.session_state[f"{key}_shown"] = chosen
    return chosen


def audience_picker(prefix: str, users: UserIndex, *, heading: str, from_link: bool,
                    query_label: str = "Query", user_query_label: str = "Optional: narrow down with a query",
                    personalise: bool = True, empty_query: str | None = None) -> tuple[str | None, str | None]:
    """The "user or query" chooser of the Recommend, Compare and Report pages; returns (user_id, query).

    A radio (`heading`: User or Query), then either a user (`user_picker`: searched on the server) with an optional
    query that narrows their list, or a query with, where `personalise`, an optional user. Widget keys are
    {prefix}_mode, {prefix}_user, {prefix}_user_query, {prefix}_query and {prefix}_personalise. With `from_link`
    (the page's first visit this session, views.state.first_visit) they start from the link's ?user=&query=, and an
    unknown user in it is named. A query comes back stripped; in Query mode an empty one stops the page with the
    note `empty_query`, or, without a note, comes back as "" for the page to refuse. With no users at all, User mode
    stops the page.
    """
    if from_link:
        unknown = audience_from_url(prefix, st.query_params, users)
        if unknown is not None:
            st.error(f"Unknown user in the link: `{md_escape(unknown)}`. Showing user "
                     f"`{md_escape(st.session_state[f'{prefix}_user'])}` instead; pick another below.")
    mode = st.radio(heading, ["User", "Query"], horizontal=True, key=f"{prefix}_mode")
    placeholder = "e.g. waterproof hiking sock"
    if mode == "User":
        if not len(users):
            st.error("This data has no users: choose Query instead.")
            st.stop()
        st.session_state.setdefault(f"{prefix}_user", users.first())
        user_id = user_picker(f"{prefix}_user", users)
        narrowing = st.text_input(user_query_label, key=f"{prefix}_user_query", placeholder=placeholder)
        return user_id, narrowing.strip() or None
    query = st.text_input(query_label, key=f"{prefix}_query", placeholder=placeholder).strip()
    user_id = None
    if personalise and len(users) and st.checkbox("Personalise for a user", key=f"{prefix}_personalise"):
        st.session_state.setdefault(f"{prefix}_user", users.first())
        user_id = user_picker(f"{prefix}_user", users)
    if not query and empty_query is not None:
        st.info(empty_query)
        st.stop()
    return user_id, query
