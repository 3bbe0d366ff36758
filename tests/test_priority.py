"""Ranked lists before explanations: a panel waits while another session draws a list, and never for long."""

import threading
import time

import pytest

from views.priority import after_lists, drawing_list, lists_being_drawn


def test_a_panel_waits_until_the_list_being_drawn_is_done():
    started, finished = threading.Event(), threading.Event()
    order = []

    def session_drawing_a_list() -> None:
        with drawing_list():
            started.set()
            finished.wait(5)
            order.append("list drawn")

    other = threading.Thread(target=session_drawing_a_list)
    other.start()
    started.wait(5)
    assert lists_being_drawn() == 1
    threading.Timer(0.2, finished.set).start()
    assert after_lists(max_wait_s=5) is True
    order.append("panel")
    other.join()
    assert order == ["list drawn", "panel"] and lists_being_drawn() == 0


def test_a_panel_waits_no_longer_than_its_limit_and_none_when_no_list_is_drawn():
    assert after_lists(max_wait_s=0) is True  # nothing being drawn: at once
    with drawing_list():
        began = time.perf_counter()
        assert after_lists(max_wait_s=0.1) is False
        assert time.perf_counter() - began < 5  # it gave up (the limit, not a list that ended)


def test_a_list_that_stops_or_fails_is_no_longer_counted():
    with pytest.raises(RuntimeError), drawing_list():
        raise RuntimeError("st.stop() raises too")
    assert lists_being_drawn() == 0
