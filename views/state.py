"""Page choices that outlive a visit to another page.

Streamlit forgets the value of every widget a run does not draw, so leaving a page would lose its choices. A page
copies its widget values into one plain session-state entry, which is never forgotten (`remember`), and puts them
back before it draws its widgets on the next visit (`restore`). Widgets that get their start value this way take
it from session state (`st.session_state.setdefault`), never from a `value=` argument as well.
"""

from __future__ import annotations

from collections.abc import Iterable

import streamlit as st


def restore(store: str) -> None:
    """Put back the values `remember` saved under `store` for widgets this session has forgotten."""
    for key, value in st.session_state.get(store, {}).items():
        if key not in st.session_state:
            st.session_state[key] = value


def remember(store: str, keys: Iterable[str]) -> None:
    """Save the current values of these widget keys under `store` (keys not drawn this run keep their copy)."""
    saved = dict(st.session_state.get(store, {}))
    saved.update({key: st.session_state[key] for key in keys if key in st.session_state})
    st.session_state[store] = saved


def forget(store: str) -> None:
    """Drop the saved copies, e.g. after a reset, so an old value cannot come back on the next visit."""
    st.session_state.pop(store, None)


def first_visit(flag: str) -> bool:
    """True on a page's first run this session (and again after the flag is dropped, e.g. when another page opens
    it on a new link): the run that reads the page's link."""
    if flag in st.session_state:
        return False
    st.session_state[flag] = True
    return True


def audience_from_url(prefix: str, params, users) -> str | None:
    """Set a page's "for whom" widgets from the link's ?user=&query=, once per session; returns an unknown user.

    `users`: a data.user_index.UserIndex. Keys: {prefix}_mode ("User" unless the link has a query and no user),
    {prefix}_user (the link's user if known, else the first), {prefix}_query, {prefix}_user_query (the query as a
    narrowing of the user's list) and {prefix}_personalise (a query for a known user). A page that lacks one of
    these widgets ignores its key.
    """
    url_user, url_query = params.get("user"), params.get("query") or ""
    known = url_user is not None and url_user in users
    st.session_state[f"{prefix}_mode"] = "Query" if url_query and not url_user else "User"
    st.session_state[f"{prefix}_user"] = url_user if known else users.first()
    st.session_state[f"{prefix}_query"] = url_query
    st.session_state[f"{prefix}_user_query"] = url_query if url_user else ""
    st.session_state[f"{prefix}_personalise"] = bool(known and url_query)
    return url_user if url_user is not None and not known else None
