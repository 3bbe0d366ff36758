"""The Models page driven headless with AppTest, checked against the comparison computed directly."""

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from model.checkpoint import CONFIG, load
from model.comparison import compare_metrics, list_agreement, on_same_data, sample_users
from model.train import TrainConfig, train
from model.whatif import rank_changes, ranking

APP = str(Path(__file__).resolve().parents[1] / "app.py")


@pytest.fixture(scope="module")
def other_model(tmp_path_factory, tiny_shop, tiny_encoder) -> Path:
    out = tmp_path_factory.mktemp("models-page") / "other"
    train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16},
          train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1, seed=1), base_model=str(tiny_encoder),
          progress=False, log=lambda *_: None)
    return out


@pytest.fixture()
def app(monkeypatch, tiny_model, shop_data):
    monkeypatch.setenv("WHYREC_MODEL", str(tiny_model))
    monkeypatch.setenv("WHYREC_DATA", str(shop_data))
    return AppTest.from_file(APP, default_timeout=240)


def open_models(at, **params) -> AppTest:
    at.run()
    at.switch_page("views/models.py")
    at.query_params.clear()
    at.query_params.update(params)
    at.run()
    assert not at.exception, at.exception
    return at


def table_with(at, column: str):
    return next(t.value for t in at.dataframe if column in t.value.columns)


def test_without_a_second_model_the_page_asks_for_one(app, tiny_model):
    at = open_models(app)
    assert at.text_input(key="models_a").value == str(tiny_model)
    assert any("second model directory" in info.value for info in at.info)
    assert not at.error


def test_two_models_side_by_side(app, tiny_model, other_model, shop_data):
    at = open_models(app, model_b=str(other_model))
    assert not at.error, [e.value for e in at.error]
    a, b = load(tiny_model, data=str(shop_data)), load(other_model, data=str(shop_data))
    b = on_same_data(a, b)
    metrics = table_with(at, "metric").set_index("metric")
    direct = compare_metrics(a, b)
    for side in ("A", "B"):
        assert metrics.loc["NDCG@10", side] == pytest.approx(direct[side]["NDCG@10"])
    user = at.selectbox(key="models_user").value
    changes = rank_changes(ranking(a, user), ranking(b, user), at.slider(key="models_k").value)
    shown = table_with(at, "move")
    assert list(shown["title"]) == list(changes["title"])
    assert list(shown["real_rank"].astype("Int64")) == list(changes["real_rank"].astype("Int64"))
    parts = table_with(at, "name")
    assert list(parts["name"][:2]) == ["Score", "Base value"]
    item = at.selectbox(key="models_item").value
    assert float(parts.loc[0, "A"]) == pytest.approx(a.score(user_id=user, item_ids=[item])[0], abs=1e-4)
    assert float(parts.loc[0, "B"]) == pytest.approx(b.score(user_id=user, item_ids=[item])[0], abs=1e-4)
    overlap = next(m for m in at.metric if m.label.startswith("Overlap@"))
    frame = list_agreement(a, b, sample_users(a, 100))
    assert float(overlap.value) == pytest.approx(frame["overlap"].mean(), abs=0.005)
    links = "\n".join(m.value for m in at.markdown if "changed" in m.value)
    worst = frame.iloc[0]
    assert f"user={worst.user_id}" in links and "model_b=" in links
    assert (at.query_params["model_a"], at.query_params["model_b"], at.query_params["item"]) == (
        str(tiny_model), str(other_model), item)


def test_a_link_opens_the_comparison_for_its_user(app, tiny_model, other_model):
    user = load(tiny_model).user_ids[5]
    at = open_models(app, model_a=str(tiny_model), model_b=str(other_model), user=str(user))
    assert at.text_input(key="models_b").value == str(other_model)
    assert at.selectbox(key="models_user").value == str(user)
    assert not at.error


def test_models_over_another_catalog_are_one_clear_error(app, tiny_model, tiny_shop, tmp_path):
    from data.schema import make_dataset

    items = tiny_shop.items.iloc[:50].reset_index(drop=True)
    events = tiny_shop.events[tiny_shop.events["item_id"].isin(items["item_id"])].reset_index(drop=True)
    fewer = tmp_path / "fewer"
    train(make_dataset(items, events, source="fewer", format="contract"), fewer,
          train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1), backbone=tiny_model,
          progress=False, log=lambda *_: None)
    at = open_models(app, model_b=str(fewer))
    assert len(at.error) == 1 and "Cannot compare these models" in at.error[0].value
    assert not at.dataframe


def test_an_adapter_over_another_backbone_is_one_clear_error(app, tiny_model, other_model, tiny_shop, tmp_path):
    adapter = tmp_path / "adapter"
    train(tiny_shop, adapter, train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1),
          backbone=tiny_model, progress=False, log=lambda *_: None)
    config = json.loads((adapter / CONFIG).read_text())
    config["backbone"]["path"] = str(other_model)  # moved onto another backbone's directory
    (adapter / CONFIG).write_text(json.dumps(config))
    at = open_models(app, model_b=str(adapter))
    assert len(at.error) == 1 and "is an adapter for backbone" in at.error[0].value
    shutil.rmtree(adapter)
