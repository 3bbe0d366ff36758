"""The Insights and Report pages driven headless with Streamlit's AppTest on the tiny model."""

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from data.io import write_tables
from model.checkpoint import load

APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py")
INSIGHTS = "views/insights.py"


@pytest.fixture()
def app(monkeypatch, tiny_model, tiny_shop, tmp_path_factory):
    data = tmp_path_factory.mktemp("shop-data")
    write_tables(tiny_shop, data)
    monkeypatch.setenv("WHYREC_MODEL", str(tiny_model))
    monkeypatch.setenv("WHYREC_DATA", str(data))
    return AppTest.from_file(APP, default_timeout=180)


SMALL = {"users": "20", "k": "2", "pairs": "10", "steps": "8"}  # a small sample: the tiny model in seconds


def open_insights(at, **params) -> AppTest:
    for name, value in {**SMALL, **params}.items():
        at.query_params[name] = value
    at.switch_page(INSIGHTS).run()
    assert not at.exception, at.exception
    return at


def importance_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Exact SHAP values"))


def subheaders(at) -> list[str]:
    return [h.value for h in at.subheader]


def test_insights_shows_every_section(app):
    at = open_insights(app)
    assert not at.error
    assert subheaders(at) == ["Ranking quality beside the baselines", "Which behaviour features matter",
                              "Words that drive recommendations, by category", "Data quality"]
    titles = [json.loads(chart.proto.spec)["layout"]["title"]["text"] for chart in at.get("plotly_chart")]
    assert any(t.startswith("Behaviour features by importance") for t in titles)
    assert any("beeswarm" in t for t in titles)
    assert any(t.startswith("Words that drive") for t in titles)
    assert "The model beside its baselines" in titles  # the validation figures of the checkpoint
    words = next(t.value for t in at.dataframe if "word" in t.value.columns)
    assert len(words) and set(words["share"]) <= set(words["share"].clip(0, 1))
    metrics = next(t.value for t in at.dataframe if "NDCG@10" in t.value.columns)
    assert list(metrics["name"][:1]) == ["model"]
    # The tiny checkpoint holds no baselines: the page says so and how to get them.
    assert any("no baseline figures" in i.value and "python -m model evaluate" in i.value for i in at.info)
    assert [m.label for m in at.metric][:3] == ["Users", "Items", "Events"]
    assert "for 40 recommended items of 20 users" in importance_caption(at)  # the settings from the URL


def test_a_smaller_sample_changes_the_importance_and_the_link(app):
    at = open_insights(app)
    at.slider(key="ins_users").set_value(10).run()
    at.slider(key="ins_k").set_value(1).run()
    at.slider(key="ins_pairs").set_value(20).run()
    assert not at.exception
    assert "for 10 recommended items of 10 users" in importance_caption(at)
    words = next(t.value for t in at.dataframe if "word" in t.value.columns)
    assert words["pairs"].groupby(words["category"]).first().sum() == 20
    assert (at.query_params["users"], at.query_params["k"], at.query_params["pairs"]) == ("10", "1", "20")


def test_settings_in_the_link_that_do_not_fit_fall_back_to_the_defaults(app):
    at = open_insights(app, users="lots", k="1", steps="7")
    assert (at.slider(key="ins_users").value, at.select_slider(key="ins_steps").value) == (100, 16)
    assert at.slider(key="ins_k").value == 1  # the valid ones are kept
    assert not at.error


def test_evaluating_in_the_app_adds_the_baselines(app):
    at = open_insights(app)
    at.number_input(key="ins_eval_users").set_value(20).run()
    at.button(key="ins_evaluate").click().run()
    assert not at.exception
    metrics = next(t.value for t in at.dataframe if "NDCG@10" in t.value.columns)
    assert {"popularity", "item-kNN", "text zero-shot"} <= set(metrics["name"])
    assert set(metrics.loc[metrics["role"] == "baseline", "split"]) == {"test"}
    assert not any("no baseline figures" in i.value for i in at.info)


def test_an_evaluation_report_of_another_checkpoint_is_named_not_used(app, monkeypatch, tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "evaluation.json").write_text(json.dumps({"checkpoint_id": "another", "models": {}}))
    monkeypatch.setenv("WHYREC_MODEL", str(model))
    at = open_insights(app)
    assert any("evaluates checkpoint another" in w.value for w in at.warning)
    assert any("no baseline figures" in i.value for i in at.info)


# ---- computed ahead of time -----------------------------------------------------------------------------------------

AHEAD = {"users": 10, "k": 3, "pairs": 10, "steps": 8}  # importance settings no other test opens


@pytest.fixture(scope="module")
def insights_ahead(tiny_model, tiny_shop, tmp_path_factory):
    """The tiny model's insights for AHEAD, computed ahead of time on the data the app fixture serves."""
    from explain.insights_file import precompute

    data = tmp_path_factory.mktemp("served")
    write_tables(tiny_shop, data)
    return precompute(load(tiny_model, data=str(data)), AHEAD["users"], AHEAD["k"], AHEAD["pairs"], AHEAD["steps"])


@pytest.fixture()
def model_with_insights(monkeypatch, tiny_model, tmp_path, insights_ahead):
    """A copy of the tiny model with the precomputed insights beside it, where the page looks."""
    from explain.insights_file import INSIGHTS_FILE, write_insights

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    monkeypatch.setenv("WHYREC_MODEL", str(model))
    write_insights(insights_ahead, model / INSIGHTS_FILE)
    return model, insights_ahead


def test_precomputed_insights_open_at_once(app, monkeypatch, model_with_insights):
    import explain.insights

    def not_here(*args, **kwargs):
        raise AssertionError("computed on the page although it was computed ahead of time")

    monkeypatch.setattr(explain.insights, "behaviour_importance", not_here)
    monkeypatch.setattr(explain.insights, "driving_words", not_here)
    at = open_insights(app, **{name: str(value) for name, value in AHEAD.items()})
    assert not at.error and not at.warning
    assert "for 30 recommended items of 10 users" in importance_caption(at)
    assert sum("Computed ahead of time" in c.value for c in at.caption) == 2  # the importance and the words
    words = next(t.value for t in at.dataframe if "word" in t.value.columns)
    assert words["pairs"].groupby(words["category"]).first().sum() == AHEAD["pairs"]


@pytest.mark.parametrize(("spoil", "named"), [("garbled", "Expecting property name"),
                                              ("another checkpoint", "computed for checkpoint another")])
def test_a_spoiled_precomputed_file_is_named_and_computed_again(app, model_with_insights, spoil, named):
    model, insights = model_with_insights
    path = model / "insights.json"
    if spoil == "garbled":
        path.write_text("{not json")
    else:
        path.write_text(json.dumps({**insights.to_dict(), "checkpoint_id": "another"}))
    at = open_insights(app, **{name: str(value) for name, value in AHEAD.items()})
    assert not at.exception and not at.error
    warnings = [w.value for w in at.warning if "precomputed insights are left out" in w.value]
    assert len(warnings) == 1 and named in warnings[0].replace("\\", "")
    assert "for 30 recommended items of 10 users" in importance_caption(at)  # computed here instead
    assert not any("Computed ahead of time" in c.value for c in at.caption)


# ---- Report ------------------------------------------------------------------------------------------------------

REPORT = "views/report.py"


def open_report(at, **params) -> AppTest:
    for name, value in params.items():
        at.query_params[name] = value
    at.switch_page(REPORT).run()
    assert not at.exception, at.exception
    return at


def build(at, k: int = 2, n_steps: int = 8) -> AppTest:
    at.slider(key="rep_k").set_value(k)
    at.select_slider(key="rep_steps").set_value(n_steps)
    at.button(key="rep_build").click().run()
    assert not at.exception, at.exception
    return at


def test_report_for_a_user_offers_html_pdf_and_json(app, monkeypatch, tiny_model):
    monkeypatch.setenv("BROWSER_PATH", str(tiny_model / "config.json"))  # no browser: the PDF fails, the rest not
    at = open_report(app)
    user = at.selectbox(key="rep_user").value
    assert any("build the report" in i.value for i in at.info)
    build(at)
    assert not at.exception
    assert at.subheader[0].value.startswith(f"Top 2 for user “{user}")
    items = at.dataframe[0].value
    assert list(items["rank"]) == [1, 2]
    parts = items.drop(columns=["rank", "title", "score", "base value"])
    assert {"Item words", "Past interactions", "Item's own behaviour"} <= set(parts.columns) and "Query words" not in parts.columns
    assert (items["score"] - items["base value"] - parts.sum(axis=1)).abs().max() < 1e-2  # they add up
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download HTML (interactive charts)", "Download JSON (every number)"]
    assert any("No PDF" in e.value and "PDF export needs Chromium" in e.value for e in at.error)
    built = at.session_state["report_built"]
    report = json.loads(built["files"]["json"])
    assert [item["item_id"] for item in report["items"]] == [
        r.item_id for r in load(tiny_model, device="cpu").recommend(user_id=user, k=2)]
    assert report["provenance"]["parameters"]["n_steps"] == 8
    assert b"<html" in built["files"]["html"][:200].lower()
    assert at.query_params["user"] == user
    # Changing a setting keeps the built report (and its downloads) until it is built again.
    at.slider(key="rep_k").set_value(3).run()
    assert at.session_state["report_built"]["files"] == built["files"]
    assert any("build again" in c.value for c in at.caption)


def test_report_for_a_query_from_the_link(app, monkeypatch, tiny_model):
    monkeypatch.setenv("BROWSER_PATH", str(tiny_model / "config.json"))
    at = open_report(app, query="wool sock", k="1", steps="16")
    assert at.radio(key="rep_mode").value == "Query"
    assert (at.slider(key="rep_k").value, at.select_slider(key="rep_steps").value) == (1, 16)
    at.button(key="rep_build").click().run()
    assert at.subheader[0].value == "Top 1 for query “wool sock”"
    report = json.loads(at.session_state["report_built"]["files"]["json"])
    assert report["query"] == "wool sock" and report["user_id"] is None


def test_report_bad_input_is_one_message_and_keeps_the_page(app, monkeypatch, tiny_model):
    monkeypatch.setenv("BROWSER_PATH", str(tiny_model / "config.json"))
    at = open_report(app, user="no-such-user", k="many", steps="7")
    assert any("Unknown user in the link" in e.value for e in at.error)
    assert (at.slider(key="rep_k").value, at.select_slider(key="rep_steps").value) == (10, 50)  # the defaults
    at.radio(key="rep_mode").set_value("Query").run()
    at.text_input(key="rep_query").input("   ").run()
    at.button(key="rep_build").click().run()
    assert not at.exception
    assert any("query is empty" in e.value for e in at.error)
    assert "report_built" not in at.session_state


@pytest.mark.skipif(not shutil.which("chromium"), reason="system Chromium is not installed")
def test_report_pdf_with_a_browser(app):
    at = build(open_report(app), k=1)
    pdf = at.session_state["report_built"]["files"]["pdf"]
    assert pdf.startswith(b"%PDF")
    assert [b.proto.label for b in at.get("download_button")][1] == "Download PDF (print)"
