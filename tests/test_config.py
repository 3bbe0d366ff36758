"""The Streamlit settings the dashboard ships with, as Streamlit itself reads them from the repository root."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def streamlit_config(monkeypatch):
    """Streamlit's options parsed as `streamlit run app.py` parses them when started in the root (make run)."""
    from streamlit import config

    monkeypatch.chdir(ROOT)
    config.get_config_options(force_reparse=True)
    yield config
    monkeypatch.undo()
    config.get_config_options(force_reparse=True)


def test_the_toolbar_is_a_viewers_without_a_deploy_button(streamlit_config):
    assert streamlit_config.get_option("client.toolbarMode") == "viewer"
    assert Path(streamlit_config.get_where_defined("client.toolbarMode")) == ROOT / ".streamlit" / "config.toml"



def test_no_full_garbage_collection_after_every_script_run(streamlit_config):
    # A full collection of the server's objects holds the interpreter for a third of a second, every session's
    # script included (docs/dashboard.md, "Several sessions at once"); Python's own thresholds still collect.
    assert streamlit_config.get_option("runner.postScriptGC") is False
    assert Path(streamlit_config.get_where_defined("runner.postScriptGC")) == ROOT / ".streamlit" / "config.toml"
