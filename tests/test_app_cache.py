"""The dashboard and the explanation cache: a second visit's explanation comes from the cache, and says so."""

import pytest
from streamlit.testing.v1 import AppTest

from explain.cache import ExplanationCache
from model.checkpoint import load

APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture()
def cache_dir(monkeypatch, tiny_model, shop_data, tmp_path):
    monkeypatch.setenv("WHYREC_MODEL", str(tiny_model))
    monkeypatch.setenv("WHYREC_DATA", str(shop_data))
    monkeypatch.setenv("WHYREC_CACHE", str(tmp_path / "cache"))  # a directory of its own: nothing cached before
    return tmp_path / "cache"


def visit(page: str | None = None, **params) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)  # a new session each time, as a second browser tab is
    at.query_params.update(params)
    at.run()
    if page is not None:
        at.switch_page(page)
        at.query_params.update(params)
        at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def said(at) -> list[str]:
    return [c.value for c in at.caption if "the cache" in c.value or "Computed in" in c.value]


def explained_in(at) -> str:
    (metric,) = [m.label for m in at.metric if m.label in ("Explained in", "From the cache in")]
    return metric


def test_the_panel_says_computed_then_from_the_cache_on_a_second_visit(cache_dir, tiny_model, shop_data):
    first = visit()
    assert explained_in(first) == "Explained in"
    assert any(c.startswith("Computed in") for c in said(first)), said(first)
    assert any(c.startswith("Deletion test: Computed in") for c in said(first)), said(first)
    user, item = first.query_params["user"], first.query_params["item"]

    second = visit()
    assert explained_in(second) == "From the cache in"
    assert any(c.startswith("From the cache") for c in said(second)), said(second)
    # The deletion test under it too: a new session computes neither again.
    assert any(c.startswith("Deletion test: From the cache") for c in said(second)), said(second)
    assert (second.query_params["user"], second.query_params["item"]) == (user, item)
    # The entry on disk is the one the page showed: another process finds it with the panel's settings.
    recommender = load(tiny_model, data=str(shop_data))
    found = ExplanationCache(cache_dir).explain(recommender, item, user_id=user, query=None, n_steps=50, drill_down=0)
    assert found.source == "disk"
    assert f"{found.explanation.score:.3f}" == next(m.value for m in second.metric if m.label == "Score")


def test_another_setting_is_computed_not_taken_from_the_cache(cache_dir):
    visit()
    fewer_steps = visit()
    fewer_steps.select_slider(key="explain_steps").set_value(16).run()
    assert not fewer_steps.exception
    assert explained_in(fewer_steps) == "Explained in"


def test_compare_says_where_the_margin_came_from(cache_dir):
    first = visit("views/compare.py")
    assert explained_in(first) == "Explained in"
    second = visit("views/compare.py", **{k: first.query_params[k] for k in ("user", "a", "b")})
    assert explained_in(second) == "From the cache in"
    assert any(c.startswith("From the cache") for c in said(second))


def test_a_report_after_the_panel_takes_its_first_item_from_the_cache(cache_dir, monkeypatch, tiny_model):
    monkeypatch.setenv("BROWSER_PATH", str(tiny_model / "config.json"))  # no browser: no PDF, and no wait for one
    visit()  # the Recommend panel explains the first user's #1 at 50 steps
    at = visit("views/report.py")
    at.slider(key="rep_k").set_value(2)
    at.button(key="rep_build").click().run()  # 50 steps, the panel's: #1 is in the cache, #2 is not
    assert not at.exception, at.exception
    assert any("1 of 2 explanations from the cache" in c.value for c in at.caption), [c.value for c in at.caption]
    at.button(key="rep_build").click().run()
    assert any("2 of 2 explanations from the cache" in c.value for c in at.caption)
