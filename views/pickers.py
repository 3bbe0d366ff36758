"""Choosers several pages share: how many items to rank, and (views.pickers.audience_picker) for whom."""

from __future__ import annotations

import streamlit as st


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
