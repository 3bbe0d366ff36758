"""Ranked lists before explanations: while any session is drawing a ranked list, the others' explanation panels
wait for it (a little), so that a person who chose a user sees the list at once whatever the other sessions do.

Every session's script runs in a thread of the one server process, and Python runs one thread at a time: a list
takes tens of milliseconds to draw, an explanation panel as much again from the cache (its charts and a hundred page
elements) and seconds when computed. Taking turns fairly, sixteen sessions at once would make every list wait for
every panel. So a page draws its list inside
`drawing_list()`, and an explanation waits at `after_lists()` while any list is being drawn, at most `MAX_WAIT_S`
each time (a steady stream of lists never starves a panel for long). Waiting sleeps: it gives the list its turn.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

MAX_WAIT_S = 1.0

_drawing = 0
_changed = threading.Condition()


@contextmanager
def drawing_list() -> Iterator[None]:
    """Around the part of a page that draws a ranked list (a stop or an error inside ends it too)."""
    global _drawing
    with _changed:
        _drawing += 1
    try:
        yield
    finally:
        with _changed:
            _drawing -= 1
            _changed.notify_all()


def after_lists(max_wait_s: float = MAX_WAIT_S) -> bool:
    """Wait until no list is being drawn, or `max_wait_s`; True if none was (at once, or by the end)."""
    with _changed:
        return _changed.wait_for(lambda: _drawing == 0, timeout=max_wait_s)


def lists_being_drawn() -> int:
    with _changed:
        return _drawing
