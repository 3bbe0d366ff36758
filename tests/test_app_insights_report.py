"""The Insights and Report pages driven headless with Streamlit's AppTest on the tiny model."""

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from data.io import write_tables

APP = str(__import__("pathlib").Path(__file__).resolve().parents[1] / "app.py")
INSIGHTS = "views/insights.py"


@pytest.fixture()
def app(monkeypatch, tiny_model, tiny_shop, tmp_path_factory):
    data = tmp_path_factory.mktemp("shop-data")
    write_tables(tiny_shop, data)
    monkeypatch.setenv("WHYREC_MODEL", str(tiny_model))
    monkeypatch.setenv("WHYREC_DATA", str(data))
    return AppTest.from_file(APP, default_timeout=180)


def open_insights(at) -> AppTest:
    at.run()
    at.switch_page(INSIGHTS).run()
    assert not at.exception, at.exception
    return at


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


def test_a_small_sample_changes_the_importance(app):
    at = open_insights(app)
    before = next(c.value for c in at.caption if c.value.startswith("Exact SHAP values"))
    at.slider(key="ins_users").set_value(10).run()
    at.slider(key="ins_k").set_value(2).run()
    at.slider(key="ins_pairs").set_value(10).run()
    assert not at.exception
    after = next(c.value for c in at.caption if c.value.startswith("Exact SHAP values"))
    assert before != after and "for 20 recommended items of 10 users" in after
    words = next(t.value for t in at.dataframe if "word" in t.value.columns)
    assert words["pairs"].groupby(words["category"]).first().sum() == 10


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
