"""The user picker at any number of users: searched on the server, never every id in the browser."""

import pytest
from streamlit.testing.v1 import AppTest

from data.io import write_tables

APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture()
def app(monkeypatch, tiny_model, tiny_shop, tmp_path_factory):
    data = tmp_path_factory.mktemp("shop-data")
    write_tables(tiny_shop, data)
    monkeypatch.setenv("WHYREC_MODEL", str(tiny_model))
    monkeypatch.setenv("WHYREC_DATA", str(data))
    return AppTest.from_file(APP, default_timeout=180)


def test_the_picker_offers_a_bounded_few_and_search_finds_any_user(app, tiny_shop):
    from views.pickers import RANDOM_SHOWN, RECENT_SHOWN

    everyone = [str(u) for u in tiny_shop.user_ids]
    app.run()
    offered = app.selectbox(key="rec_user").options
    assert len(everyone) > 1 + RECENT_SHOWN + RANDOM_SHOWN  # the shop has more users than the picker may send
    assert len(offered) <= 1 + RECENT_SHOWN + RANDOM_SHOWN and set(offered) <= set(everyone)
    wanted = next(u for u in reversed(everyone) if u not in offered)
    app.text_input(key="rec_user_search").input(wanted[-3:]).run()  # a part of the id, not its start
    assert wanted in app.selectbox(key="rec_user").options
    app.selectbox(key="rec_user").select(wanted).run()
    assert not app.exception and app.query_params["user"] == wanted
    app.text_input(key="rec_user_search").input("").run()  # the chosen user stays first when the search is cleared
    assert app.selectbox(key="rec_user").options[0] == wanted and app.selectbox(key="rec_user").value == wanted


def test_a_search_matching_many_users_sends_only_the_first_few(app, monkeypatch, tiny_shop):
    import views.pickers

    monkeypatch.setattr(views.pickers, "MATCHES_SHOWN", 5)
    app.run()
    app.text_input(key="rec_user_search").input("u").run()  # every id starts with u
    offered = app.selectbox(key="rec_user").options
    assert len(offered) <= 1 + 5 < len(tiny_shop.user_ids)
    assert any("the first ones" in c.value for c in app.caption)


def test_random_users_can_be_drawn_again(app):
    from views.pickers import RECENT_SHOWN

    app.run()
    before = app.selectbox(key="rec_user").options[1 + RECENT_SHOWN:]
    app.button(key="rec_user_draw").click().run()
    after = app.selectbox(key="rec_user").options[1 + RECENT_SHOWN:]
    assert before and after and before != after
