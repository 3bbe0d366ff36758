"""The dashboard driven headless with Streamlit's AppTest: every page, the happy path and bad input."""

import threading

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


def ranked_table(at):
    tables = [t.value for t in at.dataframe if "score" in t.value.columns]
    assert tables, "no ranked list on the page"
    return tables[-1]


def test_recommend_for_the_first_user(app):
    app.run()
    assert not app.exception
    assert not app.error
    table = ranked_table(app)
    assert len(table) == 10
    assert list(table["rank"]) == list(range(1, 11))
    assert table["reason"].str.len().min() > 10
    assert app.query_params.get("user")  # the URL carries the view


def test_choose_another_user_and_k(app):
    app.run()
    users = app.selectbox(key="rec_user").options
    app.selectbox(key="rec_user").select(users[3]).run()
    app.slider(key="rec_k").set_value(5).run()
    assert not app.exception
    assert len(ranked_table(app)) == 5
    assert app.query_params["user"] == users[3]


def test_another_user_explains_their_own_top_item_without_a_warning_about_the_last_link(app):
    app.run()
    first_item = app.query_params["item"]
    users = app.selectbox(key="rec_user").options
    app.selectbox(key="rec_user").select(users[3]).run()
    assert not app.exception and not app.warning, [w.value for w in app.warning]
    chooser = app.selectbox(key="explain_item")
    assert chooser.index == 0 and app.query_params["item"] == chooser.value  # the new list's #1, named in the link
    assert first_item  # the first list's #1 was in the link before
    # A link's own item that is not in its list is still named.
    fresh = AppTest.from_file(APP, default_timeout=180)
    fresh.query_params.update({"user": users[3], "item": "no-such-item"})
    fresh.run()
    assert any("no\\-such\\-item" in w.value for w in fresh.warning), [w.value for w in fresh.warning]


def test_an_item_chosen_in_one_users_list_is_not_kept_for_the_next_users(app, tiny_model):
    import os

    from model.checkpoint import load

    recommender = load(tiny_model, data=os.environ["WHYREC_DATA"])
    app.run()
    offered = [u for u in app.selectbox(key="rec_user").options if u in recommender.user_index]
    tops = {u: [r.item_id for r in recommender.recommend(user_id=u, k=10)] for u in offered}
    # Two users the chooser offers whose lists share an item that is not the second user's top item.
    first, second, shared = next((a, b, item) for a in tops for b in tops if a != b
                                 for item in tops[a] if item in tops[b][1:])
    app.selectbox(key="rec_user").select(first).run()
    app.selectbox(key="explain_item").set_value(shared).run()
    assert app.query_params["item"] == shared
    app.selectbox(key="rec_user").select(second).run()
    assert not app.exception
    assert app.selectbox(key="explain_item").value == tops[second][0] == app.query_params["item"]


def test_query_mode(app):
    app.query_params["query"] = "wool sock"
    app.run()
    assert not app.exception
    assert app.radio(key="rec_mode").value == "Query"
    assert len(ranked_table(app)) == 10
    app.text_input(key="rec_query").input("   ").run()
    assert any("Type a query" in i.value for i in app.info)


def test_a_link_to_a_users_narrowed_list_keeps_its_query(app):
    app.run()
    user = app.selectbox(key="rec_user").options[2]
    app.text_input(key="rec_user_query").input("wool sock").run()
    app.selectbox(key="rec_user").select(user).run()
    link = dict(app.query_params)
    assert (link["user"], link["query"]) == (user, "wool sock")
    opened = AppTest.from_file(APP, default_timeout=180)
    opened.query_params.update(link)
    opened.run()
    assert not opened.exception
    assert opened.radio(key="rec_mode").value == "User"
    assert opened.selectbox(key="rec_user").value == user
    assert opened.text_input(key="rec_user_query").value == "wool sock"


def test_unknown_user_in_the_link(app):
    app.query_params["user"] = "no-such-user"
    app.run()
    assert not app.exception
    assert any("Unknown user in the link" in e.value for e in app.error)
    assert len(ranked_table(app)) == 10  # the page still works


def test_missing_model_directory(app, monkeypatch, tmp_path):
    monkeypatch.setenv("WHYREC_MODEL", str(tmp_path / "nowhere"))
    app.run()
    assert not app.exception
    assert any("No model at" in e.value for e in app.error)


def test_a_model_being_trained_shows_its_progress_then_the_dashboard(app, monkeypatch, tmp_path, tiny_model):
    import json
    import os
    import shutil

    model = tmp_path / "model"
    progress = {"pid": os.getpid(), "stage": "stage 1", "epoch": 3, "epochs": 10, "step": 0, "steps": 60,
                "fraction": 0.16, "best_epoch": 2, "valid_ndcg": 0.0482}
    (tmp_path / "model.progress.json").write_text(json.dumps(progress))
    monkeypatch.setenv("WHYREC_MODEL", str(model))
    app.run()
    assert not app.exception and not app.error
    assert [i.value for i in app.info if "is being trained" in i.value] == [
        f"The model at `{model}` is being trained: 16% (stage 1 of 2, epoch 3 of at most 10; best validation "
        "NDCG@10 so far 0.0482). This page turns into the dashboard when it is ready."]
    assert not [t for t in app.dataframe if "score" in t.value.columns]
    shutil.copytree(tiny_model, model)  # the training is over and the model moved into place
    app.run()
    assert not app.exception and not app.error
    assert len(ranked_table(app)) == 10


def test_a_preview_is_served_under_a_banner_until_the_model_is_in_place(app, monkeypatch, tmp_path, tiny_model):
    import json
    import os
    import shutil

    model, preview = tmp_path / "model", tmp_path / "model-preview"
    shutil.copytree(tiny_model, preview)
    progress = {"pid": os.getpid(), "stage": "stage 2", "head": 1, "heads": 5, "fraction": 0.76,
                "preview": str(preview), "preview_epoch": 2}
    (tmp_path / "model.progress.json").write_text(json.dumps(progress))
    monkeypatch.setenv("WHYREC_MODEL", str(model))
    app.run()
    assert not app.exception and not app.error
    banners = [i.value for i in app.info if i.value.startswith("**Preview**")]
    assert banners == [f"**Preview** while the model at `{model}` trains: 76% (stage 2 of 2, behaviour head 2 of "
                       "5). Shown meanwhile: its stage-1 checkpoint (epoch 2), which ranks by the words and the "
                       "history alone; its behaviour heads are not trained yet and add 0. The page switches to the "
                       "trained model by itself."]
    assert len(ranked_table(app)) == 10
    shutil.copytree(tiny_model, model)  # the training is over and the model moved into place
    app.run()
    assert not app.exception and not app.error
    assert not [i for i in app.info if i.value.startswith("**Preview**")]
    assert len(ranked_table(app)) == 10


def test_a_training_that_stopped_says_how_to_go_on(app, monkeypatch, tmp_path):
    import json
    import subprocess
    import sys

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    progress = {"pid": int(finished.stdout), "stage": "stage 2", "head": 1, "heads": 5, "fraction": 0.84}
    (tmp_path / "model.progress.json").write_text(json.dumps(progress))
    monkeypatch.setenv("WHYREC_MODEL", str(tmp_path / "model"))
    app.run()
    assert not app.exception
    assert [e.value for e in app.error] == [
        f"The model at `{tmp_path / 'model'}` is not ready: its training stopped at 84% (stage 2 of 2, behaviour "
        "head 2 of 5). To go on, resume it with `python -m model train --resume`."]


def test_data_that_does_not_match_the_model(app, monkeypatch, tmp_path):
    from data.synthetic import generate

    write_tables(generate(n_users=20, n_items=30, seed=11, target_events=500), tmp_path / "other")
    monkeypatch.setenv("WHYREC_DATA", str(tmp_path / "other"))
    app.run()
    assert not app.exception
    assert any("does not match the checkpoint" in e.value for e in app.error)


def test_data_page(app):
    app.run()
    app.switch_page("views/data_overview.py").run()
    assert not app.exception
    assert [m.label for m in app.metric][:3] == ["Users", "Items", "Events"]


def test_explanation_panel_shows_waterfall_words_and_features(app):
    app.run()
    assert not app.exception
    assert any(h.value.startswith("Why this score") for h in app.subheader)
    charts = app.get("plotly_chart")
    assert len(charts) >= 2  # the waterfall and the behaviour features (history too when there is one)
    assert any("whyrec-tokens" in str(h.proto) for h in app.get("html"))
    labels = [m.label for m in app.metric]
    assert {"Score", "Completeness gap", "Drop, top-3 words removed"} <= set(labels)
    assert app.query_params["item"] in app.selectbox(key="explain_item").value  # the URL names the item


def test_second_opinion_puts_shap_partition_beside_ig_under_the_same_deletion_test(app, tiny_model):
    from explain import explain, faithfulness
    from model.checkpoint import load

    app.run()
    item = app.selectbox(key="explain_item").value
    app.toggle(key=f"second_{item}").set_value(True).run()
    assert not app.exception and not app.error
    assert {"Rank agreement (Spearman)", "SHAP Partition took", "Integrated Gradients took"} <= {
        m.label for m in app.metric}
    table = next(t.value for t in app.dataframe if "SHAP Partition" in t.value.columns)
    # The same figures as the API gives for this explanation (50 steps, the panel's default).
    recommender = load(tiny_model)
    explanation = explain(recommender, item, user_id=app.query_params["user"], n_steps=50, drill_down=0)
    measured = faithfulness(recommender, explanation, agreement=True)
    keys = ["deletion_top3_words_drop", "deletion_top3_drop", "aopc_comprehensiveness"]
    assert list(table["Integrated Gradients"]) == pytest.approx([measured[k] for k in keys], abs=1e-6)
    assert list(table["SHAP Partition"]) == pytest.approx([measured["agreement"][k] for k in keys], abs=1e-6)
    shown = [h for h in app.get("html") if "whyrec-tokens" in str(h.proto)]
    assert len(shown) >= 2  # IG's shaded words, then SHAP Partition's


def test_the_warm_up_is_waited_for_at_exit_even_when_a_daemon_thread_starts_it(tiny_model):
    from model.checkpoint import load
    from views.loaders import start_warm_up

    recommender = load(tiny_model)
    started = []
    script = threading.Thread(target=lambda: started.append(start_warm_up(recommender)), daemon=True)  # as Streamlit's
    script.start()
    script.join()
    (warm_up,) = started
    assert not warm_up.daemon  # a daemon thread still in torch when the interpreter finalises aborts the process
    warm_up.join(120)
    assert not warm_up.is_alive()


# ---- ages: one clock, the moment scored ------------------------------------------------------------------------

def a_user_idle_before_the_end(recommender, days: float = 2.0) -> str:
    """A user whose last event is at least `days` before the data's last moment."""
    from model.sequences import age_days

    moment = recommender.serving_moment()
    return next(u for u in recommender.user_ids
                if len(recommender.histories[u]) >= 3 and age_days(moment, recommender.histories[u].end) >= days)


def test_profile_ages_count_from_the_moment_scored(app, recommender):
    from explain.charts import age_label
    from model.sequences import age_days

    user = a_user_idle_before_the_end(recommender)
    moment = recommender.context(user).moment_ns  # the moment the list and its explanations are scored at
    history = recommender.histories[user]
    expected = [age_label(age_days(moment, t)) for t in history.last_touch[::-1][:8]]
    app.query_params["user"] = user
    app.run()
    assert not app.exception and not app.error
    card = next(t.value for t in app.dataframe if "age" in t.value.columns)
    assert list(card["age"]) == expected
    assert "just now" not in expected  # measured from the user's own last event, the first row would say so
    # The explanation's history ages read the same clock.
    explained = recommender.histories[user].last_touch  # a past item's age: from its last event, as on the card
    chart = next(str(c.proto) for c in app.get("plotly_chart") if "Past interactions that mattered" in str(c.proto))
    assert any(age_label(age_days(moment, t)) in chart for t in explained)


def test_whatif_history_ages_count_from_the_moment_scored(app, recommender):
    from explain.charts import age_label
    from model.sequences import age_days

    user = a_user_idle_before_the_end(recommender)
    moment = recommender.context(user).moment_ns
    app.query_params["user"] = user
    app.run()
    app.switch_page("views/whatif.py").run()
    assert not app.exception
    events = recommender.dataset.user_events(user)
    last = events.groupby("item_id")["timestamp"].max()
    labels = app.multiselect(key="wi_remove").options
    assert len(labels) == len(last)
    for item_id, when in last.items():
        title = recommender.dataset.item(item_id).title
        assert any(label.startswith(title) and label.endswith(", " + age_label(age_days(moment, when.value)))
                   for label in labels), (title, labels)


# ---- a catalog smaller than the pages' usual k ---------------------------------------------------------------

SMALL_CATALOG = 5


@pytest.fixture(scope="module")
def small_catalog(tmp_path_factory, tiny_encoder, tiny_shop):
    """The tiny shop cut to its five busiest items, and a tiny model trained on it."""
    from data.schema import make_dataset
    from model.train import TrainConfig, train

    root = tmp_path_factory.mktemp("small-catalog")
    keep = tiny_shop.events["item_id"].value_counts().index[:SMALL_CATALOG]
    shop = make_dataset(tiny_shop.items[tiny_shop.items["item_id"].isin(keep)],
                        tiny_shop.events[tiny_shop.events["item_id"].isin(keep)], source="small", format="table")
    write_tables(shop, root / "data")
    train(shop, root / "model", model_overrides={"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16},
          base_model=str(tiny_encoder), train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1),
          progress=False, log=lambda *_: None)
    return root


@pytest.fixture()
def small_app(monkeypatch, small_catalog):
    monkeypatch.setenv("WHYREC_MODEL", str(small_catalog / "model"))
    monkeypatch.setenv("WHYREC_DATA", str(small_catalog / "data"))
    return AppTest.from_file(APP, default_timeout=180)


def test_recommend_on_a_catalog_of_five_items_offers_at_most_five(small_app):
    small_app.run()
    assert not small_app.exception
    assert not small_app.error, [e.value for e in small_app.error]
    slider = small_app.slider(key="rec_k")
    assert slider.max == SMALL_CATALOG and slider.value == SMALL_CATALOG and slider.min >= 1
    assert 0 < len(ranked_table(small_app)) <= SMALL_CATALOG


@pytest.mark.parametrize(("page", "key"), [("views/whatif.py", "wi_k"), ("views/report.py", "rep_k"),
                                           ("views/insights.py", "ins_k")])
def test_every_k_on_a_small_catalog_fits_it_even_from_a_link(small_app, page, key):
    small_app.run()
    small_app.query_params.update({"k": "20", "users": "10", "pairs": "10", "steps": "8"})
    small_app.switch_page(page).run()
    assert not small_app.exception, small_app.exception
    assert not small_app.error, [e.value for e in small_app.error]
    slider = small_app.slider(key=key)
    assert slider.max <= SMALL_CATALOG and slider.value <= SMALL_CATALOG


# ---- one "user or query" picker on the Recommend, Compare and Report pages ----------------------------------------

PICKER_PAGES = [("views/recommend.py", "rec"), ("views/compare.py", "cmp"), ("views/report.py", "rep")]


def open_with_link(app, page: str, **link) -> AppTest:
    app.query_params.update(link)
    app.run()
    if page != "views/recommend.py":
        app.switch_page(page)
        app.query_params.clear()
        app.query_params.update(link)
        app.run()
    assert not app.exception, app.exception
    return app


@pytest.mark.parametrize(("page", "prefix"), PICKER_PAGES)
def test_every_picker_names_an_unknown_user_in_the_link_alike(app, page, prefix):
    at = open_with_link(app, page, user="no-such-user")
    first_user = at.selectbox(key=f"{prefix}_user").options[0]
    assert at.radio(key=f"{prefix}_mode").value == "User"
    assert at.selectbox(key=f"{prefix}_user").value == first_user
    assert [e.value for e in at.error if "Unknown user in the link" in e.value] == [
        f"Unknown user in the link: `no\\-such\\-user`. Showing user `{first_user}` instead; pick another below."]


@pytest.mark.parametrize(("page", "prefix"), PICKER_PAGES)
def test_every_picker_opens_a_query_from_the_link(app, page, prefix):
    at = open_with_link(app, page, query="wool sock")
    assert at.radio(key=f"{prefix}_mode").value == "Query"
    assert at.text_input(key=f"{prefix}_query").value == "wool sock"
    assert not at.error


# ---- the user picker at any number of users: searched on the server, never every id in the browser ----


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
